"""Database URLs: the two forms unityctl accepts, parsed without importing SQLAlchemy.

``sqlite:///relative/path``, ``sqlite:////absolute/path`` (``~`` expands), ``sqlite://`` or
``sqlite:///:memory:`` for a throw-away database; ``postgresql+psycopg://user:pass@host:port/db?opt=v``
(``postgresql://`` is read as that: psycopg 3 is the only PostgreSQL driver here). Query options of a
PostgreSQL URL are libpq connection options (``host=/run/postgresql``, ``sslmode=require``), as
SQLAlchemy passes them.

Config validation and the light read connection (:mod:`unityctl.core.readdb`) both parse here, so
loading the config does not pull in SQLAlchemy (a fifth of a second of start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

_EXAMPLES = "sqlite:///path or postgresql+psycopg://user@host/db"
# How long a SQLite connection waits for another writer's lock, on the engine and on the read path.
SQLITE_BUSY_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class DatabaseURL:
    backend: str  # "sqlite" | "postgresql"
    database: str | None = None  # SQLite: the file path (None or ":memory:" in memory); PostgreSQL: dbname
    host: str | None = None
    port: int | None = None
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    query: dict[str, str] = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        return self.backend == "sqlite" and self.database in (None, "", ":memory:")

    @property
    def sqlite_path(self) -> Path:
        if self.backend != "sqlite" or self.in_memory:
            raise ValueError("not a SQLite file URL")
        return Path(self.database or "").expanduser()

    def connect_kwargs(self) -> dict[str, str | int]:
        """psycopg's keyword arguments for a PostgreSQL URL (what SQLAlchemy's dialect passes too)."""
        args: dict[str, str | int] = {"dbname": self.database or "", **self.query}
        for key, value in (("host", self.host), ("port", self.port), ("user", self.user),
                           ("password", self.password)):
            if value not in (None, ""):
                args[key] = value  # type: ignore[assignment]
        return args


def normalize(url: str) -> str:
    """``url`` checked, with ``postgresql://`` spelled ``postgresql+psycopg://`` (SQLAlchemy would
    otherwise pick psycopg2, which is not installed)."""
    parse(url)
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme.lower() == "postgresql" else url


def parse(url: str) -> DatabaseURL:
    """Parse ``url``; ValueError with a one-line reason (never echoing a password) when it is not one."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"must be a URL such as {_EXAMPLES}")
    backend, _, driver = scheme.lower().partition("+")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ValueError(f"unsupported SQLite driver {driver!r}: use sqlite:///path")
        path, _, query = rest.partition("?")
        if path and not path.startswith("/"):
            raise ValueError("a SQLite URL has three slashes before a relative path: sqlite:///path")
        return DatabaseURL("sqlite", database=unquote(path[1:]) or None, query=dict(parse_qsl(query)))
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise ValueError("PostgreSQL needs the psycopg 3 driver: postgresql+psycopg://...")
        parts = urlsplit("postgresql://" + rest)
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the port of the database URL is not a number from 1 to 65535") from None
        return DatabaseURL(
            "postgresql", database=unquote(parts.path.lstrip("/")) or None,
            host=unquote(parts.hostname) if parts.hostname else None, port=port,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            query=dict(parse_qsl(parts.query)))
    raise ValueError(f"unsupported database {backend!r}: use {_EXAMPLES}")


def describe_db_error(exc: BaseException) -> str:
    """One line about a driver error, without the SQL statement or credentials."""
    from unityctl.core.config import redact_url

    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return redact_url(text)
