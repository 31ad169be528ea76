"""Envelope encryption at rest, the master key (file or passphrase), and master-key rotation.

Runs on the backend under test. Secrets are stored through unityctl.core.secrets; the database is
then searched byte for byte for the plaintext, which must never be there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine, make_url

from tests.conftest import CLI, Env
from unityctl.core import audit, config, crypto, secrets
from unityctl.core.config import Settings
from unityctl.core.crypto import Keyring
from unityctl.core.db import make_engine, session_scope
from unityctl.core.errors import DecryptionError, MasterKeyError

PLAINTEXTS = [b"correct horse battery staple 1", b"hunter2-but-longer-0002", b"\x00binary\xffsecret-3"]


def database_contains(engine: Engine, needle: bytes) -> bool:
    """True when ``needle`` appears anywhere in the database: raw file bytes (SQLite) and every row."""
    url = make_url(str(engine.url))
    if url.get_backend_name() == "sqlite":
        raw = b""
        for suffix in ("", "-wal", "-journal"):
            path = Path(f"{url.database}{suffix}")
            if path.exists():
                raw += path.read_bytes()
        if needle in raw:
            return True
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        if needle in bytes(value):
                            return True
                    elif value is not None and needle.decode("utf-8", "replace") in str(value):
                        return True
    return False


def _store(env: Env, values: list[bytes] = PLAINTEXTS) -> list[tuple[str, str, str]]:
    refs = []
    with env.session() as session:
        for number, value in enumerate(values, 1):
            secrets.put_secret(session, env.keyring, owner_type="test", owner_id=number, name="password", value=value)
            refs.append(("test", str(number), "password"))
    return refs


def _read_all(env_or_engine: Any, keyring: Keyring, refs: list[tuple[str, str, str]]) -> list[bytes]:
    engine = env_or_engine.engine if isinstance(env_or_engine, Env) else env_or_engine
    with session_scope(engine) as session:
        return [secrets.get_secret(session, keyring, owner_type=t, owner_id=i, name=n) for t, i, n in refs]


def _raw(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.begin() as conn:
        return conn.execute(text(sql), params)


# --- envelope encryption ----------------------------------------------------------------------------

def test_a_secret_round_trips_and_is_never_stored_in_plaintext(env: Env) -> None:
    refs = _store(env)
    assert _read_all(env, env.keyring, refs) == PLAINTEXTS
    for value in PLAINTEXTS:
        assert not database_contains(env.engine, value), value  # type: ignore[arg-type]


def test_replacing_a_secret_uses_a_fresh_data_key_and_nonce(env: Env) -> None:
    refs = _store(env, [b"first value of the secret"])
    before = _raw(env.engine, "SELECT wrapped_key, nonce, ciphertext FROM secret WHERE owner_type = 'test'").one()  # type: ignore[arg-type]
    with env.session() as session:
        secrets.put_secret(session, env.keyring, owner_type="test", owner_id=1, name="password",
                           value=b"second value of the secret")
    after = _raw(env.engine, "SELECT wrapped_key, nonce, ciphertext FROM secret WHERE owner_type = 'test'").one()  # type: ignore[arg-type]
    assert all(bytes(a) != bytes(b) for a, b in zip(before, after))
    assert _read_all(env, env.keyring, refs) == [b"second value of the secret"]
    assert not database_contains(env.engine, b"second value of the secret")  # type: ignore[arg-type]


def test_a_missing_secret_is_reported_by_name(env: Env) -> None:
    with env.session() as session, pytest.raises(DecryptionError, match="test/42/password is missing"):
        secrets.get_secret(session, env.keyring, owner_type="test", owner_id=42, name="password")


@pytest.mark.parametrize("column", ["ciphertext", "nonce", "wrapped_key"])
def test_a_tampered_secret_fails_with_a_decryption_error_naming_the_record(env: Env, column: str) -> None:
    refs = _store(env)
    value = bytes(_raw(env.engine, f"SELECT {column} FROM secret WHERE owner_type = 'test' AND owner_id = '2'").scalar_one())  # type: ignore[arg-type]
    flipped = value[:-1] + bytes([value[-1] ^ 0x01])
    _raw(env.engine, f"UPDATE secret SET {column} = :v WHERE owner_type = 'test' AND owner_id = '2'", v=flipped)  # type: ignore[arg-type]
    with pytest.raises(DecryptionError) as err:
        _read_all(env, env.keyring, refs[1:2])
    assert "test/2/password" in str(err.value)
    assert "tampered" in str(err.value)
    # The other secrets are untouched.
    assert _read_all(env, env.keyring, [refs[0], refs[2]]) == [PLAINTEXTS[0], PLAINTEXTS[2]]


def test_a_ciphertext_copied_to_another_row_fails_to_decrypt(env: Env) -> None:
    refs = _store(env)
    src = _raw(env.engine, "SELECT wrapped_key, nonce, ciphertext FROM secret "  # type: ignore[arg-type]
                           "WHERE owner_type = 'test' AND owner_id = '1'").one()
    _raw(env.engine, "UPDATE secret SET wrapped_key = :w, nonce = :n, ciphertext = :c "  # type: ignore[arg-type]
                     "WHERE owner_type = 'test' AND owner_id = '3'", w=bytes(src[0]), n=bytes(src[1]), c=bytes(src[2]))
    with pytest.raises(DecryptionError, match="test/3/password failed authentication"):
        _read_all(env, env.keyring, refs[2:3])
    assert _read_all(env, env.keyring, refs[:1]) == PLAINTEXTS[:1]


def test_a_secret_moved_to_another_owner_fails_to_decrypt(env: Env) -> None:
    _store(env)
    _raw(env.engine, "UPDATE secret SET owner_id = '99' WHERE owner_type = 'test' AND owner_id = '1'")  # type: ignore[arg-type]
    with pytest.raises(DecryptionError, match="test/99/password"):
        _read_all(env, env.keyring, [("test", "99", "password")])


def test_a_secret_under_another_master_key_is_refused_clearly(env: Env) -> None:
    refs = _store(env)
    other = Keyring(crypto.generate_master_key())
    with pytest.raises(DecryptionError, match="encrypted under master key"):
        _read_all(env, other, refs[:1])


def test_the_keyring_never_shows_its_key() -> None:
    key = crypto.generate_master_key()
    keyring = Keyring(key)
    assert key.hex() not in repr(keyring) and str(key) not in repr(keyring)
    with pytest.raises(MasterKeyError):
        Keyring(b"short")


# --- the master key file ----------------------------------------------------------------------------

def test_a_wrong_master_key_file_gives_one_clear_error(env: Env) -> None:
    settings: Settings = env.settings  # type: ignore[assignment]
    crypto.write_key_file(settings.master_key_file, crypto.generate_master_key())
    with env.session() as session, pytest.raises(MasterKeyError) as err:
        secrets.load_keyring(session, settings)
    assert "wrong master key" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not hex at all\n", b"abcd\n", os.urandom(32)])
def test_a_malformed_master_key_file_gives_one_clear_error(env: Env, content: bytes) -> None:
    settings: Settings = env.settings  # type: ignore[assignment]
    settings.master_key_file.write_bytes(content)
    with env.session() as session, pytest.raises(MasterKeyError) as err:
        secrets.load_keyring(session, settings)
    assert "\n" not in str(err.value)


@dataclass
class Installed:
    """An initialised CLI home, and the same settings/engine from the test's side."""

    cli: CLI
    settings: Settings
    engine: Engine

    def keyring(self, passphrase: str | None = None) -> Keyring:
        with session_scope(self.engine) as session:
            return secrets.load_keyring(session, self.settings, passphrase=passphrase)


@pytest.fixture
def installed(icli: CLI) -> Iterator[Installed]:
    settings = config.load()
    engine = make_engine(settings.database_url)
    yield Installed(icli, settings, engine)
    engine.dispose()


def _one_error_line(result: Any, *fragments: str) -> None:
    assert result.code == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unityctl: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_the_cli_refuses_a_wrong_master_key_in_one_line(installed: Installed) -> None:
    crypto.write_key_file(installed.settings.master_key_file, crypto.generate_master_key())
    _one_error_line(installed.cli("audit", "verify"), "wrong master key")
    _one_error_line(installed.cli("alerts", "channels", "add", "hook", "--webhook", "http://127.0.0.1:9/x"),
                    "wrong master key")


def test_the_cli_reports_a_missing_master_key_file_in_one_line(installed: Installed) -> None:
    installed.settings.master_key_file.unlink()
    _one_error_line(installed.cli("audit", "verify"), "master key file not found",
                    str(installed.settings.master_key_file))
    # init does not paper over it with a new key (that would orphan every secret).
    _one_error_line(installed.cli("init"), "master key file not found")
    assert not installed.settings.master_key_file.exists()


def test_init_creates_a_private_master_key_and_keeps_it_on_a_second_run(installed: Installed) -> None:
    path = installed.settings.master_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = path.read_bytes()
    assert len(bytes.fromhex(before.decode().strip())) == 32
    again = installed.cli("init", "--json")
    assert again.code == 0, again
    assert again.json()["master_key_created"] is False
    assert path.read_bytes() == before
    assert installed.keyring().master_key == bytes.fromhex(before.decode().strip())


# --- passphrase-derived key ---------------------------------------------------------------------------

def test_init_with_a_passphrase_derives_the_key_and_writes_no_key_file(
        cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNITYCTL_PASSPHRASE", "a long and winding passphrase")
    result = cli("init", "--passphrase", "--json")
    assert result.code == 0, result
    assert result.json()["master_key"] == "passphrase"
    settings = config.load()
    assert not settings.master_key_file.exists()
    assert not list(settings.resolved_data_dir.glob("master.key*"))

    assert cli("audit", "verify").code == 0
    assert cli("alerts", "channels", "add", "hook", "--webhook", "http://127.0.0.1:9/hook-passphrase-token").code == 0
    engine = make_engine(settings.database_url)
    try:
        assert not database_contains(engine, b"a long and winding passphrase")
        assert not database_contains(engine, b"hook-passphrase-token")
    finally:
        engine.dispose()

    monkeypatch.setenv("UNITYCTL_PASSPHRASE", "not the passphrase")
    _one_error_line(cli("audit", "verify"), "wrong passphrase")
    monkeypatch.delenv("UNITYCTL_PASSPHRASE")
    _one_error_line(cli("audit", "verify"), "UNITYCTL_PASSPHRASE")


def test_init_reads_the_passphrase_from_stdin_when_the_environment_has_none(cli: CLI,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("init", "--passphrase", input="from standard input\n")
    assert result.code == 0, result
    assert not config.load().master_key_file.exists()
    monkeypatch.setenv("UNITYCTL_PASSPHRASE", "from standard input")
    assert cli("audit", "verify").code == 0


def test_rotation_in_passphrase_mode_switches_to_the_new_passphrase(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNITYCTL_PASSPHRASE", "old passphrase")
    assert cli("init", "--passphrase").code == 0
    assert cli("alerts", "channels", "add", "hook", "--webhook", "http://127.0.0.1:9/rot").code == 0
    _one_error_line(cli("secrets", "rotate-master-key"), "--new-passphrase-stdin")
    rotated = cli("secrets", "rotate-master-key", "--new-passphrase-stdin", input="new passphrase\n")
    assert rotated.code == 0, rotated
    _one_error_line(cli("audit", "verify"), "wrong passphrase")
    monkeypatch.setenv("UNITYCTL_PASSPHRASE", "new passphrase")
    assert cli("audit", "verify").code == 0
    settings = config.load()
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as session:
            keyring = secrets.load_keyring(session, settings, passphrase="new passphrase")
            for row in session.exec(__import__("sqlmodel").select(secrets.Secret)).all():
                secrets.decrypt_row(keyring, row)
    finally:
        engine.dispose()


# --- rotation ---------------------------------------------------------------------------------------

def _add_secrets(installed: Installed, count: int = 4) -> list[tuple[str, str, str]]:
    keyring = installed.keyring()
    refs = []
    with session_scope(installed.engine, write=True) as session:
        for number in range(count):
            value = f"rotation-secret-{number}".encode()
            secrets.put_secret(session, keyring, owner_type="test", owner_id=number, name="token", value=value)
            refs.append(("test", str(number), "token"))
    return refs


def test_rotate_master_key_rewraps_every_secret_under_a_new_key_file(installed: Installed) -> None:
    refs = _add_secrets(installed)
    assert installed.cli("alerts", "channels", "add", "hook", "--webhook", "http://127.0.0.1:9/t0k3n").code == 0
    path = installed.settings.master_key_file
    old_bytes, old = path.read_bytes(), installed.keyring()

    result = installed.cli("secrets", "rotate-master-key")
    assert result.code == 0, result
    assert path.read_bytes() != old_bytes
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_name("master.key.new").exists()
    new = installed.keyring()
    assert new.key_id != old.key_id
    assert _read_all(installed.engine, new, refs) == [f"rotation-secret-{n}".encode() for n in range(len(refs))]
    with pytest.raises(DecryptionError):
        _read_all(installed.engine, old, refs[:1])
    with session_scope(installed.engine) as session:
        rows = session.exec(__import__("sqlmodel").select(secrets.Secret)).all()
        assert rows and all(row.kek_id == new.key_id for row in rows)
    verify = installed.cli("audit", "verify")
    assert verify.code == 0, verify
    actions = [row["action"] for row in installed.cli("audit", "list", "--json").json()]
    assert "core.secrets.rotate_master_key" in actions
    # The channel's webhook secret still works after rotation.
    assert installed.cli("alerts", "channels", "list", "--json").code == 0


@pytest.mark.parametrize("after", [1, 3])
def test_a_rotation_interrupted_half_way_leaves_every_secret_readable_with_the_old_key(
        installed: Installed, monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    refs = _add_secrets(installed, count=5)
    path = installed.settings.master_key_file
    old_bytes, old = path.read_bytes(), installed.keyring()
    real = secrets.rotate_master_key
    seen: list[int] = []

    def interrupted(*args: Any, on_secret: Any = None, **kwargs: Any) -> Keyring:
        def hook(row: Any) -> None:
            if on_secret is not None:
                on_secret(row)
            seen.append(row.id)
            if len(seen) == after:
                raise KeyboardInterrupt  # the operator pressed Ctrl-C half-way
        return real(*args, on_secret=hook, **kwargs)

    monkeypatch.setattr(secrets, "rotate_master_key", interrupted)
    result = installed.cli("secrets", "rotate-master-key")
    assert result.code != 0, result
    assert len(seen) == after
    assert "Traceback" not in result.stderr

    assert path.read_bytes() == old_bytes
    assert not path.with_name("master.key.new").exists()
    assert installed.keyring().key_id == old.key_id
    assert _read_all(installed.engine, old, refs) == [f"rotation-secret-{n}".encode() for n in range(len(refs))]
    assert installed.cli("audit", "verify").code == 0

    # And a later rotation, uninterrupted, still works.
    monkeypatch.setattr(secrets, "rotate_master_key", real)
    assert installed.cli("secrets", "rotate-master-key").code == 0
    assert _read_all(installed.engine, installed.keyring(), refs)[0] == b"rotation-secret-0"


def test_a_rotation_that_fails_on_a_tampered_secret_changes_nothing(installed: Installed) -> None:
    refs = _add_secrets(installed, count=3)
    path = installed.settings.master_key_file
    old_bytes, old = path.read_bytes(), installed.keyring()
    _raw(installed.engine, "UPDATE secret SET wrapped_key = :w WHERE owner_type = 'test' AND owner_id = '1'",
         w=os.urandom(60))
    _one_error_line(installed.cli("secrets", "rotate-master-key"), "test/1/token", "nothing was changed")
    assert path.read_bytes() == old_bytes
    assert not path.with_name("master.key.new").exists()
    assert _read_all(installed.engine, old, [refs[0], refs[2]]) == [b"rotation-secret-0", b"rotation-secret-2"]


def test_a_rotation_committed_but_not_renamed_is_finished_when_the_key_is_next_loaded(env: Env) -> None:
    settings: Settings = env.settings  # type: ignore[assignment]
    refs = _store(env)
    path, pending = settings.master_key_file, settings.master_key_file.with_name("master.key.new")
    old_bytes = path.read_bytes()
    with env.session() as session:
        new = secrets.rotate_master_key(session, settings, env.keyring)  # type: ignore[arg-type]
        audit.record(session, new, action="test.rotate", object_type="master_key", object_id=new.key_id)
    # The process died here: committed, but finish_rotation() never renamed the new key file.
    assert pending.exists() and path.read_bytes() == old_bytes

    with env.session() as session:
        loaded = secrets.load_keyring(session, settings)
    assert loaded.key_id == new.key_id
    assert not pending.exists()
    assert bytes.fromhex(path.read_text().strip()) == new.master_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _read_all(env, loaded, refs) == PLAINTEXTS
    with env.session(write=False) as session:
        assert audit.verify(session, loaded).ok


def test_a_rotation_rolled_back_by_the_service_leaves_the_old_key_in_charge(env: Env) -> None:
    settings: Settings = env.settings  # type: ignore[assignment]
    refs = _store(env)

    def boom(_row: Any) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError), env.session() as session:
        secrets.rotate_master_key(session, settings, env.keyring, on_secret=boom)  # type: ignore[arg-type]
    secrets.abandon_rotation(settings)
    assert not settings.master_key_file.with_name("master.key.new").exists()
    with env.session() as session:
        assert secrets.load_keyring(session, settings).key_id == env.keyring.key_id  # type: ignore[attr-defined]
    assert _read_all(env, env.keyring, refs) == PLAINTEXTS  # type: ignore[arg-type]
