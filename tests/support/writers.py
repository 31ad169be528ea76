"""A second, impatient writer: what the daemon is while a command does slow outside work.

It inserts a row into ``meta`` over its own driver connection with a 0.5 s lock timeout, so a
command still holding SQLite's write lock (or a PostgreSQL lock on ``meta``) makes it fail.
"""

from __future__ import annotations

from unityctl.core import dburl


def impatient_write(db_url: str, key: str) -> None:
    """Insert ``meta(key, 'x')`` within 0.5 s or raise the driver's lock error."""
    url = dburl.parse(db_url)
    if url.backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(str(url.sqlite_path), timeout=0.5)
        with conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (key,))
        conn.close()
        return
    import psycopg

    kwargs = url.connect_kwargs()
    kwargs["options"] = f"{kwargs.get('options', '')} -clock_timeout=500".strip()  # keeps the test's search_path
    with psycopg.connect(autocommit=True, **kwargs) as conn:  # type: ignore[arg-type]
        conn.execute("INSERT INTO meta (key, value) VALUES (%s, 'x')", (key,))
