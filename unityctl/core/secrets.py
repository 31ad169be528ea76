"""Encrypted secrets at rest, and the master key's life cycle (set-up, loading, rotation).

Every secret lives in the ``secret`` table as an envelope (see unityctl.core.crypto) whose
associated data is ``owner_type|owner_id|name``: moving a ciphertext to another row fails.
Services call :func:`put_secret` / :func:`get_secret`; nothing else reads that table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from unityctl.core import crypto
from unityctl.core.config import Settings
from unityctl.core.crypto import Envelope, Keyring
from unityctl.core.db import utcnow
from unityctl.core.errors import DecryptionError, MasterKeyError
from unityctl.core.models import Meta, Secret

META_MODE = "kek.mode"
META_KEY_ID = "kek.id"
META_ARGON2 = "kek.argon2"


def _ad(owner_type: str, owner_id: str, name: str) -> bytes:
    return f"unityctl/secret/v1|{owner_type}|{owner_id}|{name}".encode()


def put_secret(session: Session, keyring: Keyring, *, owner_type: str, owner_id: str | int, name: str,
               value: bytes) -> Secret:
    """Store (or replace) one secret, encrypted under a fresh data key."""
    owner_id = str(owner_id)
    env = crypto.seal(keyring, value, _ad(owner_type, owner_id, name))
    row = session.exec(select(Secret).where(Secret.owner_type == owner_type, Secret.owner_id == owner_id,
                                            Secret.name == name)).first()
    if row is None:
        row = Secret(owner_type=owner_type, owner_id=owner_id, name=name, kek_id=keyring.key_id,
                     wrapped_key=env.wrapped_key, nonce=env.nonce, ciphertext=env.ciphertext)
    else:
        row.kek_id, row.wrapped_key, row.nonce, row.ciphertext = (keyring.key_id, env.wrapped_key, env.nonce,
                                                                  env.ciphertext)
        row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return row


def get_secret(session: Session, keyring: Keyring, *, owner_type: str, owner_id: str | int, name: str) -> bytes:
    """Decrypt one secret. Raises DecryptionError naming the record when it fails authentication."""
    owner_id = str(owner_id)
    row = session.exec(select(Secret).where(Secret.owner_type == owner_type, Secret.owner_id == owner_id,
                                            Secret.name == name)).first()
    if row is None:
        raise DecryptionError(f"secret {owner_type}/{owner_id}/{name} is missing")
    return decrypt_row(keyring, row)


def decrypt_row(keyring: Keyring, row: Secret) -> bytes:
    label = f"{row.owner_type}/{row.owner_id}/{row.name}"
    if row.kek_id != keyring.key_id:
        raise DecryptionError(f"secret {label} is encrypted under master key {row.kek_id}, "
                              f"not the loaded key {keyring.key_id}")
    try:
        return crypto.open_envelope(keyring, Envelope(row.wrapped_key, row.nonce, row.ciphertext),
                                    _ad(row.owner_type, row.owner_id, row.name))
    except DecryptionError:
        raise DecryptionError(f"secret {label} failed authentication: it was tampered with or copied "
                              "from another record") from None


def delete_secrets(session: Session, *, owner_type: str, owner_id: str | int) -> int:
    """Delete every secret of one owner; returns how many."""
    rows = session.exec(select(Secret).where(Secret.owner_type == owner_type,
                                             Secret.owner_id == str(owner_id))).all()
    for row in rows:
        session.delete(row)
    return len(rows)


# --- master key -----------------------------------------------------------------------------------

def _meta(session: Session, key: str) -> str | None:
    row = session.get(Meta, key)
    return row.value if row else None


def _set_meta(session: Session, key: str, value: str) -> None:
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    else:
        row.value = value
        session.add(row)


def key_mode(session: Session) -> str | None:
    """"file", "passphrase", or None when the database has no master key yet."""
    return _meta(session, META_MODE)


def _pending_key_file(path: Path) -> Path:
    return path.with_name(path.name + ".new")


@dataclass
class KeySetup:
    keyring: Keyring
    created: bool
    mode: str


def setup_master_key(session: Session, settings: Settings, *, passphrase: str | None = None) -> KeySetup:
    """Create the master key if this database has none; otherwise load it (idempotent).

    Never overwrites an existing key file. With ``passphrase`` the key is derived with Argon2id.
    """
    mode = key_mode(session)
    if mode is not None:
        return KeySetup(load_keyring(session, settings, passphrase=passphrase), created=False, mode=mode)
    path = settings.master_key_file
    if passphrase:
        params = crypto.new_passphrase_params()
        keyring = Keyring(crypto.derive_from_passphrase(passphrase, params), source="passphrase")
        _set_meta(session, META_ARGON2, crypto.params_to_text(params))
        mode = "passphrase"
    else:
        if path.exists():
            keyring = Keyring(crypto.read_key_file(path), source="file")
        else:
            key = crypto.generate_master_key()
            crypto.write_key_file(path, key)
            keyring = Keyring(key, source="file")
        mode = "file"
    _set_meta(session, META_MODE, mode)
    _set_meta(session, META_KEY_ID, keyring.key_id)
    session.flush()
    return KeySetup(keyring, created=True, mode=mode)


def load_keyring(session: Session, settings: Settings, *, passphrase: str | None = None) -> Keyring:
    """Load the master key this database expects and check it against the stored key id.

    Raises MasterKeyError (one line) when it is missing or wrong.
    """
    mode = key_mode(session)
    expected = _meta(session, META_KEY_ID)
    if mode is None or expected is None:
        raise MasterKeyError("this database has no master key yet: run `unityctl init`")
    if mode == "passphrase":
        if not passphrase:
            raise MasterKeyError("this database's master key comes from a passphrase: set UNITYCTL_PASSPHRASE")
        params = crypto.params_from_text(_meta(session, META_ARGON2) or "{}")
        keyring = Keyring(crypto.derive_from_passphrase(passphrase, params), source="passphrase")
        if keyring.key_id != expected:
            raise MasterKeyError("wrong passphrase: it does not derive this database's master key")
        return keyring
    path = settings.master_key_file
    keyring = Keyring(crypto.read_key_file(path), source="file")
    if keyring.key_id == expected:
        return keyring
    # A rotation that committed but was interrupted before renaming the new key file: finish it.
    pending = _pending_key_file(path)
    if pending.exists():
        candidate = Keyring(crypto.read_key_file(pending), source="file")
        if candidate.key_id == expected:
            os.replace(pending, path)
            return candidate
    raise MasterKeyError(f"wrong master key: {path} has key id {keyring.key_id}, this database expects "
                         f"{expected}")


def rotate_master_key(session: Session, settings: Settings, old: Keyring, *, new_passphrase: str | None = None,
                      on_secret: Callable[[Secret], None] | None = None) -> Keyring:
    """Re-wrap every secret's data key under a new master key, in the caller's transaction.

    File mode: the new key is written to ``master.key.new`` first; the caller must call
    :func:`finish_rotation` after committing. If anything fails before the commit the transaction
    rolls back and every secret stays readable with the old key. ``on_secret`` is a hook called
    after each secret (progress reporting; tests use it to interrupt half-way).
    """
    mode = key_mode(session)
    if mode == "passphrase" or new_passphrase:
        if not new_passphrase:
            raise MasterKeyError("this database uses a passphrase: give the new one with --new-passphrase-stdin")
        params = crypto.new_passphrase_params()
        new = Keyring(crypto.derive_from_passphrase(new_passphrase, params), source="passphrase")
        _set_meta(session, META_ARGON2, crypto.params_to_text(params))
        _set_meta(session, META_MODE, "passphrase")
    else:
        new = Keyring(crypto.generate_master_key(), source="file")
        crypto.write_key_file(_pending_key_file(settings.master_key_file), new.master_key)
    for row in session.exec(select(Secret).order_by(Secret.id)).all():
        ad = _ad(row.owner_type, row.owner_id, row.name)
        try:
            row.wrapped_key = crypto.rewrap(old, new, row.wrapped_key, ad)
        except DecryptionError:
            raise DecryptionError(f"secret {row.owner_type}/{row.owner_id}/{row.name} failed authentication "
                                  "during rotation; nothing was changed") from None
        row.kek_id = new.key_id
        row.updated_at = utcnow()
        session.add(row)
        if on_secret is not None:
            on_secret(row)
    _set_meta(session, META_KEY_ID, new.key_id)
    session.flush()
    return new


def finish_rotation(settings: Settings, new: Keyring) -> None:
    """After the rotation committed: put the new key file in place (file mode)."""
    if new.source == "file":
        os.replace(_pending_key_file(settings.master_key_file), settings.master_key_file)


def abandon_rotation(settings: Settings) -> None:
    """After a failed rotation: remove the unused new key file."""
    _pending_key_file(settings.master_key_file).unlink(missing_ok=True)
