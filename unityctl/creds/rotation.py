"""Lock-out-proof key rotation: ``keys rotate KEY [--server S ...] [--resume] [--dry-run]``.

Why nobody gets locked out, per server:

1. the new key is generated ONCE for the whole rotation and committed (encrypted) before it is
   placed anywhere, so a crash can never leave a server trusting a key we lost;
2. the new line is added next to the old one (compare-and-swap write);
3. a FRESH connection that offers ONLY the new key (no agent, no ~/.ssh look-ups: the executor
   never uses them) logs in and runs a command;
4. only then is the old line removed. Until step 3 succeeds, unityctl itself keeps reaching the
   server with the credential it had (the old key when the server's login key is the one being
   rotated); the server's login switches to the new key only after it was proven there.

A server where any step fails keeps its old key (a new line that was added but not proven is
taken away again when possible), is reported, and its deployment is marked ``out_of_date`` with
the rotation's id; ``keys rotate KEY --resume`` later finishes exactly those servers with the same
new key. The name moves to the new key when the rotation starts; the old key is renamed
``<name>.old-<id>`` and becomes ``retired`` once no server carries it any more.

Two rotations of one key cannot run at once: a PostgreSQL advisory lock (``pg_try_advisory_lock``
on a hash of the key id), or on SQLite a lock row in ``meta`` whose dead owner is detected.

This service takes the engine rather than one session: it needs three transactions (commit the
new key; SSH work outside any transaction, so SQLite's write lock is not held for minutes; record
the results) and a lock that outlives them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from unityctl.core import audit
from unityctl.core.config import SSHConfig
from unityctl.core.crypto import Keyring
from unityctl.core.db import is_postgres, release_if_unwritten, session_scope, utcnow
from unityctl.core.errors import SSHError, StateError, UnityctlError, UsageError
from unityctl.core.models import Meta
from unityctl.core.ssh import SSHAuthenticationError, SSHExecutor, Target
from unityctl.creds import authorized_keys as ak
from unityctl.creds import distribution
from unityctl.creds import keys as keys_svc
from unityctl.creds import servers as servers_svc
from unityctl.creds import sshkeys
from unityctl.creds.models import KeyDeployment, KeyRotation, ServerCredential, SSHKey


# --- the lock ----------------------------------------------------------------------------------


def _lock_number(key_id: int) -> int:
    digest = hashlib.sha256(f"unityctl.creds.rotation.ssh_key.{key_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def rotation_lock(engine: Engine, key_id: int, label: str) -> Iterator[None]:
    """Hold the rotation lock of one key. Raises StateError when another rotation holds it."""
    busy = StateError(f"a rotation of key {label} is already running; wait for it to finish "
                      "(or run `keys rotate --resume` afterwards)")
    if is_postgres(engine):
        number = _lock_number(key_id)
        conn = engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:n)"), {"n": number}).scalar()
            conn.commit()
            if not got:
                raise busy
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:n)"), {"n": number})
                conn.commit()
        finally:
            conn.close()
        return
    # SQLite: a lock row. The owner (host, pid) is recorded so a crashed holder's row is taken over.
    row_key = f"lock.rotation.ssh_key.{key_id}"
    me = {"host": socket.gethostname(), "pid": os.getpid(), "at": utcnow().isoformat()}
    with session_scope(engine, write=True) as session:
        row = session.get(Meta, row_key)
        if row is not None:
            try:
                owner = json.loads(row.value)
            except ValueError:
                owner = {}
            stale = owner.get("host") == me["host"] and not _pid_alive(int(owner.get("pid", 0)))
            if not stale:
                raise busy
            row.value = json.dumps(me)
        else:
            row = Meta(key=row_key, value=json.dumps(me))
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise busy from None
    try:
        yield
    finally:
        with session_scope(engine, write=True) as session:
            row = session.get(Meta, row_key)
            if row is not None and json.loads(row.value).get("pid") == me["pid"]:
                session.delete(row)


# --- per-server work (worker threads; no database) ------------------------------------------------


@dataclass
class _Plan:
    """What one worker needs for one server (secrets in memory only)."""

    server: str
    login: Target
    proof: Target
    login_is_old_key: bool
    options: str | None


@dataclass
class ServerOutcome:
    server: str
    status: str = "failed"  # rotated | failed | would rotate
    step: str = ""
    error: str | None = None
    new_line_added: bool = False
    new_key_proven: bool = False
    new_line_withdrawn: bool = False
    old_line_removed: bool = False
    old_line_foreign: bool = False
    diff: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _msg(exc: BaseException) -> str:
    return exc.message if isinstance(exc, UnityctlError) else f"{type(exc).__name__}: unexpected error"


def _rotate_one(ex: SSHExecutor, plan: _Plan, *, old_fp: str, new_fp: str, new_public: str, name: str) -> ServerOutcome:
    out = ServerOutcome(server=plan.server)
    login = plan.login
    out.step = "connect"
    try:
        ex.run(login, "true")
    except SSHAuthenticationError as exc:
        # A run interrupted after removing the old line but before recording it: the old login key
        # no longer works there. The new key (already ours) may; it is proven below anyway.
        if not plan.login_is_old_key:
            out.error = _msg(exc)
            return out
        login = plan.proof
        try:
            ex.run(login, "true")
        except SSHError:
            out.error = _msg(exc)
            return out
    except Exception as exc:  # noqa: BLE001 - reported per server
        out.error = _msg(exc)
        return out
    out.step = "add new key"
    try:
        distribution.apply_edit(ex, login, lambda c: ak.add(c, new_public, key_name=name, options=plan.options))
        out.new_line_added = True
        out.step = "prove new key"
        # test_login never uses the pool: a brand-new connection that offers only the new key.
        info = ex.test_login(plan.proof)
        if info.remote_user != plan.proof.user:
            raise StateError(f"server {plan.server}: the new key logged in as {info.remote_user!r}, "
                             f"not {plan.proof.user!r}")
        out.new_key_proven = True
    except Exception as exc:  # noqa: BLE001
        out.error = _msg(exc)
        if out.new_line_added:
            try:
                distribution.apply_edit(ex, login, lambda c: ak.remove(c, fingerprint=new_fp))
                out.new_line_withdrawn = True
            except Exception:  # noqa: BLE001 - the old key still works; resume cleans up
                pass
        return out
    out.step = "remove old key"
    try:
        # Once proven, the new key is the safest way in when the old one is being taken away.
        via = plan.proof if plan.login_is_old_key else login
        before = distribution.read_authorized_keys(ex, via) or b""
        if old_fp in ak.authorized_fingerprints(before) and not any(
                m.fingerprint == old_fp for m in ak.list_managed(before)):
            out.old_line_foreign = True
        res = distribution.apply_edit(ex, via, lambda c: ak.remove(c, fingerprint=old_fp))
        out.old_line_removed = res.changed
    except Exception as exc:  # noqa: BLE001
        out.error = _msg(exc)
        return out
    out.step, out.status = "done", "rotated"
    return out


# --- the service ----------------------------------------------------------------------------------


@dataclass
class RotationReport:
    rotation_id: int | None
    old_key: str
    new_key: str
    status: str  # complete | partial | dry-run
    servers: list[ServerOutcome]

    @property
    def failed(self) -> list[ServerOutcome]:
        return [s for s in self.servers if s.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {"rotation_id": self.rotation_id, "old_key": self.old_key, "new_key": self.new_key,
                "status": self.status,
                "servers": [{"server": s.server, "status": s.status, "step": s.step, "error": s.error,
                             "new_line_added": s.new_line_added, "new_key_proven": s.new_key_proven,
                             "new_line_withdrawn": s.new_line_withdrawn, "old_line_removed": s.old_line_removed,
                             "old_line_foreign": s.old_line_foreign, "diff": s.diff}
                            for s in self.servers]}


def _unfinished(session: Session, key: SSHKey) -> KeyRotation | None:
    return session.exec(select(KeyRotation).where(
        (KeyRotation.new_key_id == key.id) | (KeyRotation.old_key_id == key.id),
        KeyRotation.status != "complete").order_by(col(KeyRotation.id).desc())).first()


def _candidates(session: Session, old: SSHKey, only: list[str] | None, *, resume: bool) -> list[ServerCredential]:
    """Servers to move: where the old key's line is live, plus servers logging in with it."""
    found: dict[str, ServerCredential] = {}
    for dep, server in keys_svc.deployments_of(session, old, live_only=True):
        found[server.name] = server
    for server in session.exec(select(ServerCredential).where(ServerCredential.key_id == old.id)).all():
        found.setdefault(server.name, server)
    if only:
        missing = [n for n in only if n not in found]
        if missing:
            raise UsageError(f"key {old.name} is not deployed on {', '.join(missing)}")
        found = {n: found[n] for n in only}
    if not found:
        if resume:
            raise UsageError(f"nothing to resume: no server still carries the old key {old.name}")
        raise UsageError(f"key {old.name} is not deployed anywhere: nothing to rotate")
    return [found[n] for n in sorted(found)]


def rotate_key(engine: Engine, keyring: Keyring, *, name: str, servers: list[str] | None = None,
               resume: bool = False, dry_run: bool = False, ssh: SSHConfig | None = None,
               max_parallel: int = 32, on_result: Callable[[str, Any], None] | None = None) -> RotationReport:
    """Rotate key ``name`` on every server that carries it (or only ``servers``), or ``resume``
    the unfinished rotation of ``name`` (its old or its new name).

    Out: :class:`RotationReport` (the CLI exits 3 when ``failed`` is not empty).
    Raises NotFoundError, UsageError (nothing to rotate/resume), StateError (a rotation of this
    key is running, or one is unfinished and ``resume`` was not asked), DecryptionError.
    """
    with session_scope(engine) as session:
        key = keys_svc.get_key(session, name)
        pending = _unfinished(session, key)
        if resume:
            if pending is None:
                raise UsageError(f"key {name} has no unfinished rotation to resume")
            lock_id = pending.old_key_id
        else:
            if pending is not None:
                raise StateError(f"rotation {pending.id} of key {name} is unfinished: run "
                                 f"`unityctl creds keys rotate {name} --resume` first")
            if key.status != "active":
                raise StateError(f"key {name} is {key.status}: only an active key can be rotated")
            lock_id = key.id  # type: ignore[assignment]
        if dry_run:
            return _dry_run(session, keyring, key, servers, ssh=ssh, max_parallel=max_parallel)

    with rotation_lock(engine, lock_id, name):  # type: ignore[arg-type]
        # Phase A: decide, and commit the new key before it goes anywhere.
        with session_scope(engine, write=True) as session:
            key = keys_svc.get_key(session, name)
            rotation = _unfinished(session, key)
            if resume:
                if rotation is None:
                    raise UsageError(f"key {name} has no unfinished rotation to resume")
                old = session.get(SSHKey, rotation.old_key_id)
                new = session.get(SSHKey, rotation.new_key_id)
                assert old is not None and new is not None
                audit.record(session, keyring, action="creds.keys.rotate.resume", object_type="ssh_key",
                             object_id=new.name, details={"rotation_id": rotation.id, "old_key": old.name})
            else:
                if rotation is not None:
                    raise StateError(f"rotation {rotation.id} of key {name} is unfinished: use --resume")
                old = key
                _candidates(session, old, servers, resume=False)  # fail early, before generating
                material = sshkeys.generate(old.key_type if old.key_type in ("ed25519", "rsa", "ecdsa")  # type: ignore[arg-type]
                                            else "ed25519",
                                            old.bits if old.key_type in ("rsa", "ecdsa") and not old.weakness else None,
                                            old.comment)
                old.name = f"{name}.old-{old.id}"
                session.add(old)
                session.flush()
                new = keys_svc._store(session, keyring, name=name, material=material, source="rotation",
                                      action="creds.keys.rotate.generate", details={"replaces": old.name})
                rotation = KeyRotation(old_key_id=old.id, new_key_id=new.id)  # type: ignore[arg-type]
                session.add(rotation)
                session.flush()
                audit.record(session, keyring, action="creds.keys.rotate.start", object_type="ssh_key",
                             object_id=name, details={"rotation_id": rotation.id, "old_key": old.name,
                                                      "old_fingerprint": old.fingerprint,
                                                      "new_fingerprint": new.fingerprint})
            rotation_id = rotation.id
            old_id, new_id = old.id, new.id
            old_name, new_name = old.name, new.name
            old_fp, new_fp, new_public = old.fingerprint, new.fingerprint, new.public_key
            targets_servers = _candidates(session, old, servers, resume=resume)
            new_private = keys_svc.private_key_text(session, keyring, new)
            options = {d.server_id: d.options for d, _s in keys_svc.deployments_of(session, old)}
            plans: list[_Plan] = []
            early: dict[str, ServerOutcome] = {}
            for server in targets_servers:
                try:
                    plans.append(_Plan(
                        server=server.name,
                        login=servers_svc.target_for(session, keyring, server, ssh=ssh),
                        proof=servers_svc.target_for(session, keyring, server, private_key_pem=new_private, ssh=ssh),
                        login_is_old_key=server.key_id == old_id, options=options.get(server.id)))
                except UnityctlError as exc:
                    early[server.name] = ServerOutcome(server=server.name, step="credentials", error=exc.message)
            store = servers_svc.DBHostKeyStore(session)
        del new_private

        # Phase B: the servers, in parallel, outside any transaction.
        by_name = {p.server: p for p in plans}
        with SSHExecutor(host_keys=store) as executor:
            raw = executor.run_many(
                [p.login for p in plans],
                lambda ex, t: _rotate_one(ex, by_name[t.label], old_fp=old_fp, new_fp=new_fp,
                                          new_public=new_public, name=new_name),
                max_parallel=max_parallel, on_result=on_result)
        outcomes: dict[str, ServerOutcome] = dict(early)
        for label, value in raw.items():
            outcomes[label] = value if isinstance(value, ServerOutcome) else ServerOutcome(
                server=label, step="unexpected", error=_msg(value))

        # Phase C: record what happened.
        with session_scope(engine, write=True) as session:
            store.save(session, keyring)
            rotation = session.get(KeyRotation, rotation_id)
            old = session.get(SSHKey, old_id)
            new = session.get(SSHKey, new_id)
            assert rotation is not None and old is not None and new is not None
            now = utcnow()
            for server in targets_servers:
                server = session.get(ServerCredential, server.id)  # type: ignore[assignment]
                outcome = outcomes[server.name]
                old_dep = session.exec(select(KeyDeployment).where(KeyDeployment.key_id == old_id,
                                                                   KeyDeployment.server_id == server.id)).first()
                new_dep = session.exec(select(KeyDeployment).where(KeyDeployment.key_id == new_id,
                                                                   KeyDeployment.server_id == server.id)).first()
                if outcome.new_key_proven:
                    # Proven on this server: the new line is there and works; unityctl may use it.
                    new_dep = new_dep or KeyDeployment(key_id=new_id, server_id=server.id)  # type: ignore[arg-type]
                    new_dep.status, new_dep.deployed_at, new_dep.rotation_id = "deployed", now, rotation_id
                    new_dep.options = old_dep.options if old_dep else None
                    new_dep.last_error = None
                    session.add(new_dep)
                    if server.key_id == old_id:
                        server.key_id = new_id
                    servers_svc.record_login(session, server)
                    keys_svc.mark_used(new)
                if outcome.status == "rotated":
                    if old_dep is not None:
                        old_dep.status, old_dep.removed_at, old_dep.rotation_id = "removed", now, rotation_id
                        old_dep.last_error = None
                        session.add(old_dep)
                else:
                    old_dep = old_dep or KeyDeployment(key_id=old_id, server_id=server.id,  # type: ignore[arg-type]
                                                       deployed_at=None)
                    old_dep.status, old_dep.rotation_id = "out_of_date", rotation_id
                    old_dep.last_error = f"{outcome.step}: {outcome.error}"[:500]
                    session.add(old_dep)
                    if outcome.step == "connect":
                        servers_svc.record_login(session, server, outcome.error)
                session.add(server)
            session.flush()
            remaining = sorted({s.name for _d, s in keys_svc.deployments_of(session, old, live_only=True)}
                               | set(session.exec(select(ServerCredential.name)
                                                  .where(ServerCredential.key_id == old_id)).all()))
            if remaining:
                rotation.status = "partial"
            else:
                rotation.status, rotation.finished_at = "complete", now
                old.status, old.replaced_by_id = "retired", new_id
                session.add(old)
            session.add(rotation)
            ordered = [outcomes[s.name] for s in targets_servers]
            failed = [o for o in ordered if o.status == "failed"]
            audit.record(session, keyring, action="creds.keys.rotate", object_type="ssh_key", object_id=new_name,
                         outcome="ok" if not failed else ("failed" if len(failed) == len(ordered) else "partial"),
                         details={"rotation_id": rotation_id, "old_key": old_name, "resume": resume,
                                  "status": rotation.status,
                                  "servers": {o.server: "rotated" if o.status == "rotated"
                                              else f"failed at {o.step}: {o.error}" for o in ordered},
                                  "still_on_old_key": remaining})
            status = rotation.status
    return RotationReport(rotation_id=rotation_id, old_key=old_name, new_key=new_name, status=status,
                          servers=ordered)


def _dry_run(session: Session, keyring: Keyring, key: SSHKey, servers: list[str] | None, *,
             ssh: SSHConfig | None, max_parallel: int) -> RotationReport:
    """The per-server diff a rotation would make (with a throwaway stand-in for the new key)."""
    pending = _unfinished(session, key)
    if pending is not None:
        old = session.get(SSHKey, pending.old_key_id)
        new = session.get(SSHKey, pending.new_key_id)
        assert old is not None and new is not None
        new_public, new_name, old_name = new.public_key, new.name, old.name
    else:
        old = key
        stand_in = sshkeys.generate("ed25519", None, key.comment or key.name)
        new_public, new_name, old_name = stand_in.public_openssh, key.name, f"{key.name}.old-{key.id}"
    chosen = _candidates(session, old, servers, resume=pending is not None)
    options = {d.server_id: d.options for d, _s in keys_svc.deployments_of(session, old)}
    edits: dict[str, Any] = {}
    targets: dict[str, Target] = {}
    for server in chosen:
        targets[server.name] = servers_svc.target_for(session, keyring, server, ssh=ssh)
        opts = options.get(server.id)
        edits[server.name] = (lambda o: lambda c: ak.remove(ak.add(c, new_public, key_name=new_name, options=o),
                                                            fingerprint=old.fingerprint))(opts)
    store = servers_svc.DBHostKeyStore(session)
    release_if_unwritten(session)  # a dry run writes nothing: no lock held over the SSH work
    with SSHExecutor(host_keys=store) as ex:
        raw = ex.run_many(list(targets.values()),
                          lambda e, t: distribution.apply_edit(e, t, edits[t.label], dry_run=True),
                          max_parallel=max_parallel)
    outcomes = []
    for name in targets:
        value = raw[name]
        if isinstance(value, distribution.EditResult):
            outcomes.append(ServerOutcome(server=name, status="would rotate", step="dry run", diff=value.diff))
        else:
            outcomes.append(ServerOutcome(server=name, status="failed", step="read", error=_msg(value)))
    return RotationReport(rotation_id=pending.id if pending else None, old_key=old_name, new_key=new_name,
                          status="dry-run", servers=outcomes)
