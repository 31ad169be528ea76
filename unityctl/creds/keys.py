"""SSH key services: generate, import, list, show, export, delete.

Private keys live only in core's ``secret`` table (owner ``ssh_key/<id>``, name ``private``),
encrypted under the master key; the ``ssh_key`` row holds the public half and its facts.
Every mutating function writes its audit row in the caller's transaction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from unityctl.core import audit
from unityctl.core.crypto import Keyring
from unityctl.core.db import utcnow
from unityctl.core.errors import AlreadyExistsError, NotFoundError, StateError, UsageError
from unityctl.creds import authorized_keys, sshkeys
from unityctl.creds.models import KeyDeployment, KeyRotation, ServerCredential, SSHCertificate, SSHKey

SECRET_OWNER = "ssh_key"
SECRET_NAME = "private"
# Deployment states in which the key's line is (or may still be) on the server.
LIVE_DEPLOYMENT = ("deployed", "out_of_date", "failed")


def check_name(name: str) -> str:
    """A key name must fit the authorized_keys marker. Raises UsageError otherwise."""
    authorized_keys.marker(name, "SHA256:" + "A" * 43)
    return name


def get_key(session: Session, name: str) -> SSHKey:
    """The key called ``name``. Raises NotFoundError."""
    key = session.exec(select(SSHKey).where(SSHKey.name == name)).first()
    if key is None:
        raise NotFoundError(f"no SSH key named {name!r} (see `unityctl creds keys list`)")
    return key


def _store(session: Session, keyring: Keyring, *, name: str, material: sshkeys.KeyMaterial, source: str,
           action: str, details: dict[str, Any] | None = None) -> SSHKey:
    check_name(name)
    if session.exec(select(SSHKey.id).where(SSHKey.name == name)).first() is not None:
        raise AlreadyExistsError(f"an SSH key named {name!r} already exists")
    key = SSHKey(name=name, key_type=material.key_type, bits=material.bits,
                 fingerprint=material.fingerprint_sha256, public_key=material.public_openssh,
                 comment=material.comment, weakness=material.weakness, source=source)
    session.add(key)
    session.flush()
    from unityctl.core.secrets import put_secret

    put_secret(session, keyring, owner_type=SECRET_OWNER, owner_id=key.id, name=SECRET_NAME,
               value=material.private_openssh.encode())
    audit.record(session, keyring, action=action, object_type="ssh_key", object_id=name,
                 details={"key_type": key.key_type, "bits": key.bits, "fingerprint": key.fingerprint,
                          "weakness": key.weakness, **(details or {})})
    return key


def generate_key(session: Session, keyring: Keyring, *, name: str, key_type: str = "ed25519",
                 bits: int | None = None, comment: str | None = None) -> SSHKey:
    """Generate and store a key pair; ``comment`` (on the public line) defaults to the key name.

    Raises UsageError (bad type/size/name), AlreadyExistsError.
    """
    check_name(name)
    material = sshkeys.generate(key_type, bits, comment if comment is not None else name)  # type: ignore[arg-type]
    return _store(session, keyring, name=name, material=material, source="generated",
                  action="creds.keys.generate")


def import_key(session: Session, keyring: Keyring, *, name: str, data: bytes, passphrase: bytes | None = None,
               comment: str | None = None) -> SSHKey:
    """Import a private key file (OpenSSH, PEM or DER; encrypted ones need ``passphrase``).

    Raises UsageError (passphrase needed, unsupported), DecryptionError (wrong passphrase),
    ParseError (not a private key), AlreadyExistsError.
    """
    material = sshkeys.load_private(data, passphrase, comment=comment)
    return _store(session, keyring, name=name, material=material, source="imported",
                  action="creds.keys.import", details={"was_encrypted": passphrase is not None})


def private_key_text(session: Session, keyring: Keyring, key: SSHKey) -> str:
    """The decrypted OpenSSH private key (memory only). Raises DecryptionError."""
    from unityctl.core.secrets import get_secret

    return get_secret(session, keyring, owner_type=SECRET_OWNER, owner_id=key.id, name=SECRET_NAME).decode()


def list_keys(session: Session, *, include_retired: bool = True) -> list[SSHKey]:
    """Every key, by name (retired and revoked ones too unless ``include_retired`` is False)."""
    query = select(SSHKey).order_by(SSHKey.name)
    if not include_retired:
        query = query.where(SSHKey.status == "active")
    return list(session.exec(query).all())


def deployments_of(session: Session, key: SSHKey, *, live_only: bool = False) -> list[tuple[KeyDeployment, ServerCredential]]:
    """(deployment, server) pairs of a key, by server name."""
    query = (select(KeyDeployment, ServerCredential)
             .join(ServerCredential, col(ServerCredential.id) == col(KeyDeployment.server_id))
             .where(KeyDeployment.key_id == key.id).order_by(ServerCredential.name))
    if live_only:
        query = query.where(col(KeyDeployment.status).in_(LIVE_DEPLOYMENT))
    return [(d, s) for d, s in session.exec(query).all()]


def last_used(session: Session, key: SSHKey) -> Any:
    """When the key was last seen in use: recorded logins (its own or of servers it reaches)."""
    times = [key.last_used_at]
    for server in session.exec(select(ServerCredential).where(ServerCredential.key_id == key.id)).all():
        times.append(server.last_login_at)
    known = [t for t in times if t is not None]
    return max(known) if known else None


def key_to_dict(session: Session, key: SSHKey, *, detail: bool = False) -> dict[str, Any]:
    """The public facts of a key (never the private half)."""
    live = deployments_of(session, key, live_only=True)
    doc: dict[str, Any] = {
        "name": key.name, "type": key.key_type, "bits": key.bits, "fingerprint": key.fingerprint,
        "comment": key.comment, "status": key.status, "source": key.source, "weak": key.weakness is not None,
        "weakness": key.weakness, "created_at": key.created_at, "last_used_at": last_used(session, key),
        "deployed_to": [s.name for d, s in live if d.status == "deployed"],
        "out_of_date_on": [s.name for d, s in live if d.status == "out_of_date"],
    }
    if detail:
        doc["public_key"] = key.public_key
        doc["deployments"] = [{"server": s.name, "status": d.status, "options": d.options,
                               "deployed_at": d.deployed_at, "removed_at": d.removed_at,
                               "rotation_id": d.rotation_id, "last_error": d.last_error}
                              for d, s in deployments_of(session, key)]
        doc["login_key_of"] = [s.name for s in session.exec(
            select(ServerCredential).where(ServerCredential.key_id == key.id).order_by(ServerCredential.name)).all()]
        replaced = session.get(SSHKey, key.replaced_by_id) if key.replaced_by_id else None
        doc["replaced_by"] = replaced.name if replaced else None
        rotation = session.exec(select(KeyRotation).where(
            (KeyRotation.new_key_id == key.id) | (KeyRotation.old_key_id == key.id))
            .order_by(col(KeyRotation.id).desc())).first()
        doc["last_rotation"] = None if rotation is None else {
            "id": rotation.id, "status": rotation.status, "started_at": rotation.started_at,
            "finished_at": rotation.finished_at}
    return doc


def export_private_file(session: Session, keyring: Keyring, *, name: str, out: Path, force: bool = False,
                        passphrase: bytes | None = None) -> Path:
    """Write the private key to ``out`` (created 0600; refused when it exists unless ``force``).

    Raises UsageError (exists, bad passphrase), NotFoundError, DecryptionError.
    """
    key = get_key(session, name)
    text = private_key_text(session, keyring, key)
    material = sshkeys.load_private(text.encode(), comment=key.comment)
    data = sshkeys.export_private(material, passphrase).encode()
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out} is a directory: give a file name")
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(f"{out} exists: pass --force to overwrite it")
        out.unlink()
    # O_EXCL + 0600 at creation: the key never exists with looser permissions, and a file
    # appearing between the check and the open is not silently overwritten.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(out, 0o600)
    audit.record(session, keyring, action="creds.keys.export", object_type="ssh_key", object_id=name,
                 details={"path": str(out.resolve()), "encrypted": passphrase is not None})
    return out


def delete_key(session: Session, keyring: Keyring, *, name: str) -> None:
    """Delete a key and its encrypted private half.

    Raises StateError while the key is deployed anywhere (revoke it first) or is the login key of a
    server; NotFoundError.
    """
    from unityctl.core.secrets import delete_secrets

    key = get_key(session, name)
    live = deployments_of(session, key, live_only=True)
    if live:
        raise StateError(f"key {name} is still deployed on {', '.join(s.name for _d, s in live)}: "
                         "revoke it first or pass --revoke")
    users = session.exec(select(ServerCredential.name).where(ServerCredential.key_id == key.id)).all()
    if users:
        raise StateError(f"key {name} is the login key of server(s) {', '.join(users)}: "
                         "change or remove those servers first")
    for rotation in session.exec(select(KeyRotation).where(
            (KeyRotation.new_key_id == key.id) | (KeyRotation.old_key_id == key.id))).all():
        if rotation.status != "complete":
            raise StateError(f"key {name} is part of unfinished rotation {rotation.id}: "
                             "finish it with `keys rotate --resume` first")
        session.delete(rotation)
    for dep in session.exec(select(KeyDeployment).where(KeyDeployment.key_id == key.id)).all():
        session.delete(dep)
    for cert in session.exec(select(SSHCertificate).where(SSHCertificate.key_id == key.id)).all():
        cert.key_id = None
        session.add(cert)
    for other in session.exec(select(SSHKey).where(SSHKey.replaced_by_id == key.id)).all():
        other.replaced_by_id = None
        session.add(other)
    session.flush()
    delete_secrets(session, owner_type=SECRET_OWNER, owner_id=key.id)
    details = {"fingerprint": key.fingerprint, "key_type": key.key_type}
    session.delete(key)
    session.flush()
    audit.record(session, keyring, action="creds.keys.delete", object_type="ssh_key", object_id=name,
                 details=details)


def mark_used(key: SSHKey | None) -> None:
    """Remember that a key just authenticated successfully."""
    if key is not None:
        key.last_used_at = utcnow()
