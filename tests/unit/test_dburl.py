"""Database URLs are parsed without SQLAlchemy; the result must agree with SQLAlchemy's own reading."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from unityctl.core import dburl

AGREE = [
    "sqlite:///relative/unityctl.db",
    "sqlite:////var/lib/unityctl/unityctl.db",
    "postgresql+psycopg://postgres@127.0.0.1:5432/unityctl",
    "postgresql+psycopg://u%40corp:p%40ss%3Aw0rd@db.example:6543/inv%20entory",
    "postgresql+psycopg://u:pw@[::1]:5432/db?sslmode=require&options=-csearch_path%3Dt_1",
    "postgresql+psycopg:///unityctl?host=/run/postgresql",
    "postgresql+psycopg://monitor@db/inventory",
]


@pytest.mark.parametrize("url", AGREE)
def test_parse_agrees_with_sqlalchemy(url: str) -> None:
    ours, theirs = dburl.parse(url), make_url(url)
    assert ours.backend == theirs.get_backend_name()
    assert ours.database == theirs.database
    assert (ours.host, ours.port) == (theirs.host, theirs.port)
    assert (ours.user, ours.password) == (theirs.username, theirs.password)
    assert ours.query == dict(theirs.query)


def test_postgres_connect_kwargs_are_libpq_options() -> None:
    url = dburl.parse("postgresql+psycopg://u:s%2Fcret@h:5433/db?sslmode=require")
    assert url.connect_kwargs() == {"dbname": "db", "host": "h", "port": 5433, "user": "u",
                                    "password": "s/cret", "sslmode": "require"}
    assert "s/cret" not in repr(url)


def test_sqlite_paths() -> None:
    assert str(dburl.parse("sqlite:////abs/x.db").sqlite_path) == "/abs/x.db"
    assert str(dburl.parse("sqlite:///rel/x.db").sqlite_path) == "rel/x.db"
    assert dburl.parse("sqlite:///~/x.db").sqlite_path.is_absolute()
    assert dburl.parse("sqlite://").in_memory and dburl.parse("sqlite:///:memory:").in_memory


def test_plain_postgresql_means_psycopg() -> None:
    assert dburl.normalize("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert dburl.normalize("sqlite:////x.db") == "sqlite:////x.db"


@pytest.mark.parametrize(("url", "message"), [
    ("nonsense", "must be a URL such as"),
    ("mysql://u@h/db", "unsupported database 'mysql'"),
    ("postgresql+psycopg2://u@h/db", "needs the psycopg 3 driver"),
    ("postgresql+psycopg://u:secret@h:99999/db", "port of the database URL"),
    ("sqlite://relative.db", "three slashes"),
])
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        dburl.parse(url)
    assert "secret" not in str(info.value)


@given(st.text(max_size=80) | st.builds(lambda s: "postgresql+psycopg://" + s, st.text(max_size=60))
       | st.builds(lambda s: "sqlite:///" + s, st.text(max_size=60)))
def test_fuzz_parse_gives_a_url_or_value_error(text: str) -> None:
    try:
        url = dburl.parse(text)
    except ValueError:
        return
    assert url.backend in ("sqlite", "postgresql")
