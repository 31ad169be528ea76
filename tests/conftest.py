"""Shared fixtures: a fresh database per test on the backend under test, an isolated home, the CLI.

The backend comes from ``UNITYCTL_TEST_DATABASE_URL``: unset means SQLite (a file per test); a
PostgreSQL URL (``make test`` creates a fresh database per run and drops it after) means each test
gets its own schema in that database. On PostgreSQL, tests that never touch a database are
deselected: they already ran in the SQLite pass.
"""

from __future__ import annotations

import io
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Shared, noisy machines: a slow example is not a failure. Tests that want fewer examples say so.
settings.register_profile("unityctl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("unityctl")

pytest_plugins = ["tests.support.sshd", "tests.support.pebble"]

PG_URL = os.environ.get("UNITYCTL_TEST_DATABASE_URL", "")
BACKEND = "postgresql" if PG_URL.startswith("postgresql") else "sqlite"
DB_FIXTURES = {"db_url", "db_engine"}


def pytest_report_header(config: pytest.Config) -> str:
    return f"unityctl database backend: {BACKEND}" + (f" ({PG_URL})" if PG_URL else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND != "postgresql":
        return
    keep, drop = [], []
    for item in items:
        (keep if DB_FIXTURES & set(getattr(item, "fixturenames", ())) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of the backend under test, removed after the test."""
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path / 'unityctl.db'}"
        return
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    plain = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def db_engine(db_url: str):  # type: ignore[no-untyped-def]
    """An engine on a fresh database migrated to head."""
    from unityctl.core import migrate
    from unityctl.core.db import make_engine

    engine = make_engine(db_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated HOME/XDG tree; no UNITYCTL_* variable from the outside leaks in."""
    for name in list(os.environ):
        if name.startswith("UNITYCTL_") and name not in ("UNITYCTL_TEST_DATABASE_URL", "UNITYCTL_CORPUS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / ".local" / "share"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    (tmp_path / "home").mkdir(exist_ok=True)
    return tmp_path / "home"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):  # type: ignore[no-untyped-def]
        import json

        return json.loads(self.stdout)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CLI:
    """Runs ``unityctl`` in-process with captured stdout/stderr (fast); see tests/e2e for subprocesses."""

    def __call__(self, *args: str, input: str | None = None) -> Result:
        from unityctl.cli import run

        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr, sys.stdin
        sys.stdout, sys.stderr, sys.stdin = out, err, io.StringIO(input or "")
        try:
            code = run([str(a) for a in args])
        finally:
            sys.stdout, sys.stderr, sys.stdin = saved
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> CLI:
    """The CLI against a fresh database (not yet initialised) and an isolated home."""
    monkeypatch.setenv("UNITYCTL_DATABASE_URL", db_url)
    return CLI()


@pytest.fixture
def icli(cli: CLI) -> CLI:
    """The CLI after a successful `unityctl init`."""
    result = cli("init")
    assert result.code == 0, result.stderr
    return cli


@dataclass
class Env:
    """Settings, engine and keyring of an initialised database, for service-level tests."""

    settings: object
    engine: object
    keyring: object

    def session(self, write: bool = True):  # type: ignore[no-untyped-def]
        from unityctl.core.db import session_scope

        return session_scope(self.engine, write=write)  # type: ignore[arg-type]


@pytest.fixture
def env(home: Path, db_url: str) -> Iterator[Env]:
    """An initialised database (schema at head, master key file) and the objects services take."""
    from unityctl.core import config
    from unityctl.core.db import make_engine
    from unityctl.core.setup import initialize

    settings = config.load(environ={"UNITYCTL_DATABASE_URL": db_url, "UNITYCTL_DATA_DIR": str(home / "data")})
    report = initialize(settings, config_file=home / "config.yaml")
    engine = make_engine(db_url)
    yield Env(settings, engine, report.keyring)
    engine.dispose()
