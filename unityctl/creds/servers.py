"""Server logins (ServerCredential): CRUD, the database-backed host key store, targets, login tests.

Host key trust works like OpenSSH's, with the database instead of known_hosts: the first contact
pins the presented key (recorded on every ServerCredential with that host and port, and audited as
``creds.servers.pin_host_key``); a different key later is refused by the executor until
:func:`trust_server` accepts the new one (audited as ``creds.servers.trust``).

The executor's worker threads never touch the database: :class:`DBHostKeyStore` loads the pins
into memory up front and collects first-use pins; the caller's session writes them afterwards
(:func:`ssh_executor` does that when its block ends).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlmodel import Session, col, select

from unityctl.core import audit
from unityctl.core.config import SSHConfig
from unityctl.core.crypto import Keyring
from unityctl.core.db import release_if_unwritten, utcnow
from unityctl.core.errors import (AlreadyExistsError, HostKeyError, NotFoundError, SSHError, StateError,
                                  UsageError)
from unityctl.core.ssh import SSHExecutor, Target, fingerprint_of
from unityctl.creds import keys as keys_svc
from unityctl.creds.models import KeyDeployment, ServerCredential, SSHKey

SECRET_OWNER = "server_credential"
MAX_JUMPS = 8


# --- host keys ----------------------------------------------------------------------------------


class DBHostKeyStore:
    """A :class:`~unityctl.core.ssh.HostKeyStore` over the ``server_credential`` pins.

    Thread-safe and database-free while in use: pins are read at construction; first-use pins
    are kept in :attr:`new_pins` until :meth:`save` writes and audits them in a session.
    """

    def __init__(self, session: Session) -> None:
        self._lock = threading.Lock()
        self._pins: dict[tuple[str, int], str] = {}
        for server in session.exec(select(ServerCredential).where(col(ServerCredential.host_key).is_not(None))).all():
            self._pins.setdefault((server.host, server.port), server.host_key)  # type: ignore[arg-type]
        self.new_pins: list[tuple[str, int, str, str]] = []

    def get(self, host: str, port: int) -> str | None:
        with self._lock:
            return self._pins.get((host, port))

    def pin(self, host: str, port: int, key_type: str, key_b64: str, fingerprint: str) -> None:
        with self._lock:
            self._pins[(host, port)] = f"{key_type} {key_b64}"
            self.new_pins.append((host, port, f"{key_type} {key_b64}", fingerprint))

    def save(self, session: Session, keyring: Keyring) -> int:
        """Record first-use pins on the matching servers, one audit row each; returns how many."""
        with self._lock:
            pins, self.new_pins = self.new_pins, []
        saved = 0
        for host, port, line, fingerprint in pins:
            servers = session.exec(select(ServerCredential).where(
                ServerCredential.host == host, ServerCredential.port == port,
                col(ServerCredential.host_key).is_(None))).all()
            for server in servers:
                server.host_key, server.host_key_fingerprint = line, fingerprint
                server.host_key_pinned_at = utcnow()
                session.add(server)
                audit.record(session, keyring, action="creds.servers.pin_host_key", object_type="server",
                             object_id=server.name, details={"host": host, "port": port,
                                                             "fingerprint": fingerprint, "trust": "first use"})
                saved += 1
        session.flush()
        return saved


@contextmanager
def ssh_executor(session: Session, keyring: Keyring, *, max_sessions: int = 8) -> Iterator[SSHExecutor]:
    """An executor pinning host keys in the database; pins are saved when the block ends.

    A unit of work that has written nothing yet lets go of SQLite's write lock for the SSH work
    (see ``core.db.release_if_unwritten``): what it writes afterwards starts a new transaction."""
    store = DBHostKeyStore(session)
    release_if_unwritten(session)
    executor = SSHExecutor(host_keys=store, max_sessions=max_sessions)
    try:
        yield executor
    finally:
        executor.close()
        store.save(session, keyring)


# --- CRUD ----------------------------------------------------------------------------------------


def get_server(session: Session, name: str) -> ServerCredential:
    """The server called ``name``. Raises NotFoundError."""
    server = session.exec(select(ServerCredential).where(ServerCredential.name == name)).first()
    if server is None:
        raise NotFoundError(f"no server named {name!r} (see `unityctl creds servers list`)")
    return server


def add_server(session: Session, keyring: Keyring, *, name: str, host: str, user: str, port: int = 22,
               key_name: str | None = None, password: str | None = None,
               jump_name: str | None = None) -> ServerCredential:
    """Register a server login (a key by name, or a password stored encrypted).

    Raises UsageError (neither or both of key/password, bad port), NotFoundError (key, jump),
    AlreadyExistsError.
    """
    if (key_name is None) == (password is None):
        raise UsageError("give exactly one of --key KEY or --password-stdin")
    if not 0 < port < 65536:
        raise UsageError(f"invalid port {port}")
    if not name or any(c.isspace() for c in name):
        raise UsageError("a server name must be non-empty without spaces")
    if session.exec(select(ServerCredential.id).where(ServerCredential.name == name)).first() is not None:
        raise AlreadyExistsError(f"a server named {name!r} already exists")
    key = keys_svc.get_key(session, key_name) if key_name is not None else None
    if key is not None and key.status != "active":
        raise StateError(f"key {key.name} is {key.status}: use an active key")
    jump = get_server(session, jump_name) if jump_name is not None else None
    server = ServerCredential(name=name, host=host, port=port, username=user,
                              auth_type="key" if key else "password", key_id=key.id if key else None,
                              jump_id=jump.id if jump else None)
    # A server at an address already pinned (another user on the same host) shares its pin.
    twin = session.exec(select(ServerCredential).where(ServerCredential.host == host, ServerCredential.port == port,
                                                       col(ServerCredential.host_key).is_not(None))).first()
    if twin is not None:
        server.host_key, server.host_key_fingerprint = twin.host_key, twin.host_key_fingerprint
        server.host_key_pinned_at = twin.host_key_pinned_at
    session.add(server)
    session.flush()
    if password is not None:
        from unityctl.core.secrets import put_secret

        put_secret(session, keyring, owner_type=SECRET_OWNER, owner_id=server.id, name="password",
                   value=password.encode())
    audit.record(session, keyring, action="creds.servers.add", object_type="server", object_id=name,
                 details={"host": host, "port": port, "user": user, "auth": server.auth_type,
                          "key": key.name if key else None, "jump": jump.name if jump else None})
    return server


def list_servers(session: Session) -> list[ServerCredential]:
    return list(session.exec(select(ServerCredential).order_by(ServerCredential.name)).all())


def server_to_dict(session: Session, server: ServerCredential, *, detail: bool = False) -> dict[str, Any]:
    """The facts of a server login (never the password or the private key)."""
    key = session.get(SSHKey, server.key_id) if server.key_id else None
    jump = session.get(ServerCredential, server.jump_id) if server.jump_id else None
    doc: dict[str, Any] = {
        "name": server.name, "host": server.host, "port": server.port, "user": server.username,
        "auth": server.auth_type, "key": key.name if key else None, "jump": jump.name if jump else None,
        "host_key_fingerprint": server.host_key_fingerprint, "host_key_pinned_at": server.host_key_pinned_at,
        "last_login_at": server.last_login_at, "last_error": server.last_error,
    }
    if detail:
        rows = session.exec(select(KeyDeployment, SSHKey).join(SSHKey, col(SSHKey.id) == col(KeyDeployment.key_id))
                            .where(KeyDeployment.server_id == server.id).order_by(SSHKey.name)).all()
        doc["deployed_keys"] = [{"key": k.name, "fingerprint": k.fingerprint, "status": d.status,
                                 "deployed_at": d.deployed_at} for d, k in rows]
        doc["host_key"] = server.host_key
    return doc


def remove_server(session: Session, keyring: Keyring, *, name: str, force: bool = False) -> None:
    """Forget a server login (and its encrypted password).

    Raises StateError when it is another server's jump host, or (without ``force``) when keys are
    still deployed there (their lines would stay on the server, unmanaged).
    """
    from sqlalchemy.exc import IntegrityError

    from unityctl.core.secrets import delete_secrets

    server = get_server(session, name)
    users = session.exec(select(ServerCredential.name).where(ServerCredential.jump_id == server.id)).all()
    if users:
        raise StateError(f"server {name} is the jump host of {', '.join(users)}: change or remove them first")
    live = session.exec(select(SSHKey.name).join(KeyDeployment, col(KeyDeployment.key_id) == col(SSHKey.id))
                        .where(KeyDeployment.server_id == server.id,
                               col(KeyDeployment.status).in_(keys_svc.LIVE_DEPLOYMENT))).all()
    if live and not force:
        raise StateError(f"keys {', '.join(sorted(live))} are deployed on {name}: revoke them first, "
                         "or pass --force (their lines then stay on the server)")
    for dep in session.exec(select(KeyDeployment).where(KeyDeployment.server_id == server.id)).all():
        session.delete(dep)
    delete_secrets(session, owner_type=SECRET_OWNER, owner_id=server.id)
    session.delete(server)
    try:
        session.flush()
    except IntegrityError:
        raise StateError(f"server {name} is still used elsewhere (a monitored server?): remove that first") from None
    audit.record(session, keyring, action="creds.servers.remove", object_type="server", object_id=name,
                 details={"host": server.host, "port": server.port, "forced_with_keys": sorted(live)})


# --- targets -------------------------------------------------------------------------------------


def target_for(session: Session, keyring: Keyring, server: ServerCredential, *,
               private_key_pem: str | None = None, certificate: str | None = None,
               ssh: SSHConfig | None = None, _depth: int = 0) -> Target:
    """The :class:`Target` that logs in to ``server`` (jump hosts included), secrets decrypted.

    ``private_key_pem`` overrides the server's own credential (rotation proves a new key with it).
    Raises DecryptionError (wrong master key, tampered secret), StateError (jump loop).
    """
    if _depth > MAX_JUMPS:
        raise StateError(f"server {server.name}: jump hosts form a loop or a chain longer than {MAX_JUMPS}")
    ssh = ssh or SSHConfig()
    jump = None
    if server.jump_id is not None:
        jump_server = session.get(ServerCredential, server.jump_id)
        if jump_server is not None:
            jump = target_for(session, keyring, jump_server, ssh=ssh, _depth=_depth + 1)
    password = None
    if private_key_pem is None:
        if server.auth_type == "key":
            key = session.get(SSHKey, server.key_id) if server.key_id else None
            if key is None:
                raise StateError(f"server {server.name} has no login key")
            private_key_pem = keys_svc.private_key_text(session, keyring, key)
        else:
            from unityctl.core.secrets import get_secret

            password = get_secret(session, keyring, owner_type=SECRET_OWNER, owner_id=server.id,
                                  name="password").decode()
    return Target(host=server.host, port=server.port, user=server.username, private_key_pem=private_key_pem,
                  password=password, certificate=certificate, jump=jump,
                  connect_timeout=float(ssh.connect_timeout), command_timeout=float(ssh.command_timeout),
                  name=server.name)


def record_login(session: Session, server: ServerCredential, error: str | None = None) -> None:
    """Remember the outcome of reaching ``server`` with its own credential."""
    if error is None:
        server.last_login_at, server.last_error = utcnow(), None
        if server.key_id:
            keys_svc.mark_used(session.get(SSHKey, server.key_id))
    else:
        server.last_error = error[:500]
    session.add(server)


def login_test(session: Session, keyring: Keyring, *, name: str, ssh: SSHConfig | None = None) -> dict[str, Any]:
    """A real login: host key fingerprint, latency, remote user.

    Out: a dict with ``ok`` and either the login facts or ``error``. SSH errors are recorded on
    the server (``last_error``) and returned, not raised, so a first-use pin is still saved.
    """
    server = get_server(session, name)
    target = target_for(session, keyring, server, ssh=ssh)
    doc: dict[str, Any] = {"server": name, "host": server.host, "port": server.port, "user": server.username}
    with ssh_executor(session, keyring) as executor:
        try:
            info = executor.test_login(target)
        except SSHError as exc:
            record_login(session, server, str(exc))
            doc.update(ok=False, error=str(exc), host_key_changed=isinstance(exc, HostKeyError))
        else:
            record_login(session, server)
            doc.update(ok=True, remote_user=info.remote_user, host_key_fingerprint=info.host_key_fingerprint,
                       latency_ms=round(info.latency_ms, 1), connect_ms=round(info.connect_ms, 1))
    audit.record(session, keyring, action="creds.servers.test", object_type="server", object_id=name,
                 outcome="ok" if doc["ok"] else "failed",
                 details={k: v for k, v in doc.items() if k in ("ok", "error", "host_key_fingerprint")})
    return doc


class _TrustStore:
    """Delegates to the database pins, except for one address whose presented key it captures."""

    def __init__(self, base: DBHostKeyStore, host: str, port: int) -> None:
        self.base, self.host, self.port = base, host, port
        self.presented: tuple[str, str] | None = None

    def get(self, host: str, port: int) -> str | None:
        if (host, port) == (self.host, self.port):
            return None
        return self.base.get(host, port)

    def pin(self, host: str, port: int, key_type: str, key_b64: str, fingerprint: str) -> None:
        if (host, port) == (self.host, self.port):
            self.presented = (f"{key_type} {key_b64}", fingerprint)
        else:
            self.base.pin(host, port, key_type, key_b64, fingerprint)


def trust_server(session: Session, keyring: Keyring, *, name: str, fingerprint: str | None = None,
                 ssh: SSHConfig | None = None) -> dict[str, Any]:
    """Accept the host key the server presents now (after a legitimate change), like removing the
    known_hosts line in OpenSSH. With ``fingerprint`` the presented key must be that one.

    Out: ``{"server", "old_fingerprint", "new_fingerprint", "login_ok", "login_error"}``.
    Raises HostKeyError (``fingerprint`` given and different), SSHError (server unreachable).
    """
    server = get_server(session, name)
    target = target_for(session, keyring, server, ssh=ssh)
    base = DBHostKeyStore(session)
    store = _TrustStore(base, server.host, server.port)
    release_if_unwritten(session)
    login_error = None
    with SSHExecutor(host_keys=store) as executor:
        try:
            executor.test_login(target)
        except SSHError as exc:
            if store.presented is None:
                raise
            login_error = str(exc)  # the host key was seen; authentication is another matter
    base.save(session, keyring)
    assert store.presented is not None
    line, presented = store.presented
    if fingerprint is not None and fingerprint.strip() != presented:
        raise HostKeyError(f"server {name} presents {presented}, not the expected {fingerprint.strip()}; "
                           "nothing was changed")
    old = server.host_key_fingerprint
    now = utcnow()
    for other in session.exec(select(ServerCredential).where(ServerCredential.host == server.host,
                                                             ServerCredential.port == server.port)).all():
        other.host_key, other.host_key_fingerprint, other.host_key_pinned_at = line, presented, now
        session.add(other)
    if login_error is None:
        record_login(session, server)
    audit.record(session, keyring, action="creds.servers.trust", object_type="server", object_id=name,
                 details={"host": server.host, "port": server.port, "old_fingerprint": old,
                          "new_fingerprint": presented, "login_ok": login_error is None})
    return {"server": name, "old_fingerprint": old, "new_fingerprint": presented,
            "changed": old != presented, "login_ok": login_error is None, "login_error": login_error}


def host_key_line(server: ServerCredential) -> str:
    """The pinned host key as ``type base64``. Raises StateError when the server was never contacted."""
    if not server.host_key:
        raise StateError(f"server {server.name} has no pinned host key yet: run `creds servers test {server.name}`")
    line = server.host_key.strip()
    fingerprint_of(line.split()[1])  # validates the base64
    return line
