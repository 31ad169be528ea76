"""A second, impatient writer: what the daemon is while a command does slow outside work.

It inserts a row into ``meta`` over its own driver connection with a 0.5 s lock timeout, so a
command still holding SQLite's write lock (or a PostgreSQL lock on ``meta``) makes it fail.
"""

from __future__ import annotations


def impatient_write(db_url: str, key: str) -> None:
    """Insert ``meta(key, 'x')`` within 0.5 s or raise the driver's lock error."""
    if db_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0.5)
        with conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (key,))
        conn.close()
        return
    import psycopg

    base, _, query = db_url.partition("?")
    schema = query.split("%3D", 1)[1]
    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                         options=f"-csearch_path={schema} -clock_timeout=500") as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES (%s, 'x')", (key,))
