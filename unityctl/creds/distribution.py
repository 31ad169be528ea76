"""Putting keys on servers and taking them off: ``keys deploy`` and ``keys revoke``.

Each server's ``~/.ssh/authorized_keys`` is read over SSH (base64, so every byte survives), edited
by the pure functions of :mod:`unityctl.creds.authorized_keys` (only lines carrying our marker
are ever touched) and written back by its compare-and-swap script: atomic rename, modes 700/600,
a lock against concurrent edits, and a refusal when the file changed since it was read. On such a
conflict the edit is re-read and re-applied once.

Servers are handled in parallel by the executor's thread pool; the workers never touch the
database: they return results and the caller's session records them (and one audit row).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, select

from unityctl.core import audit
from unityctl.core.config import SSHConfig
from unityctl.core.crypto import Keyring
from unityctl.core.db import utcnow
from unityctl.core.errors import ParseError, RemoteCommandError, StateError, UnityctlError, UsageError
from unityctl.core.ssh import SSHExecutor, Target
from unityctl.creds import authorized_keys as ak
from unityctl.creds import keys as keys_svc
from unityctl.creds import servers as servers_svc
from unityctl.creds.models import KeyDeployment, ServerCredential, SSHKey

FILE_LABEL = "~/.ssh/authorized_keys"

# Prints "absent", "notfile", or "present" followed by the file in base64 (base64(1) from
# coreutils/busybox, else openssl). base64 keeps CR, odd bytes and a missing final newline intact.
_READ_SCRIPT = r"""
f="$HOME/.ssh/authorized_keys"
if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then echo notfile; exit 0; fi
if [ ! -e "$f" ]; then echo absent; exit 0; fi
echo present
if command -v base64 >/dev/null 2>&1; then base64 < "$f"; else openssl base64 < "$f"; fi
"""
READ_COMMAND = "sh -c '" + _READ_SCRIPT.replace("'", "'\\''") + "'"

Edit = Callable[[bytes], bytes]


@dataclass
class EditResult:
    """What happened to one server's authorized_keys."""

    server: str
    ok: bool = True
    changed: bool = False
    diff: str = ""
    error: str | None = None
    retried: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def read_authorized_keys(executor: SSHExecutor, target: Target) -> bytes | None:
    """The exact bytes of the remote user's authorized_keys, or None when there is none.

    Raises RemoteCommandError (not a regular file, unreadable), the executor's SSH errors.
    """
    result = executor.run(target, READ_COMMAND, check=True)
    head, _, body = result.stdout.partition("\n")
    head = head.strip()
    if head == "absent":
        return None
    if head == "notfile":
        raise RemoteCommandError(f"server {target.label}: {FILE_LABEL} is a symlink or not a regular file; "
                                 "refusing to manage it")
    if head != "present":
        raise ParseError(f"server {target.label}: unexpected answer reading {FILE_LABEL}")
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"server {target.label}: {FILE_LABEL} arrived corrupted") from None


def write_authorized_keys(executor: SSHExecutor, target: Target, *, expected: bytes | None, new: bytes) -> None:
    """Replace authorized_keys with ``new`` if it still is ``expected`` (None: absent).

    Raises StateError (it changed meanwhile: re-read), RemoteCommandError (other failures).
    """
    command = ak.apply_command(expected_sha256=ak.content_sha256(expected),
                               new_sha256=hashlib.sha256(new).hexdigest())
    result = executor.run(target, command, stdin=new, check=False)
    error = ak.apply_error(result.exit_code)
    if error is not None:
        raise type(error)(f"server {target.label}: {error}")


def apply_edit(executor: SSHExecutor, target: Target, edit: Edit, *, dry_run: bool = False) -> EditResult:
    """Read, edit and (unless ``dry_run``) write one server's authorized_keys.

    A compare-and-swap conflict (someone edited the file between our read and write) is retried
    once from a fresh read. Out: :class:`EditResult` with the diff. Raises what the reads/writes
    raise (the batch functions catch it per server).
    """
    outcome = EditResult(server=target.label)
    for attempt in (1, 2):
        before = read_authorized_keys(executor, target)
        after = edit(before or b"")
        if before is not None and after == before or before is None and after == b"":
            outcome.changed, outcome.diff = False, ""
            return outcome
        outcome.changed, outcome.diff = True, ak.diff(before or b"", after, FILE_LABEL)
        if dry_run:
            return outcome
        try:
            write_authorized_keys(executor, target, expected=before, new=after)
            return outcome
        except StateError:
            if attempt == 2:
                raise
            outcome.retried = True
    return outcome  # pragma: no cover - the loop always returns or raises


def _errmsg(exc: BaseException) -> str:
    if isinstance(exc, UnityctlError):
        return exc.message
    return f"{type(exc).__name__}: unexpected error"


def _run_batch(executor: SSHExecutor, jobs: dict[str, tuple[Target, Edit]], *, dry_run: bool,
               max_parallel: int, on_result: Callable[[str, Any], None] | None) -> dict[str, EditResult]:
    targets = [t for t, _e in jobs.values()]
    edits = {name: e for name, (_t, e) in jobs.items()}

    def work(ex: SSHExecutor, target: Target) -> EditResult:
        return apply_edit(ex, target, edits[target.label], dry_run=dry_run)

    raw = executor.run_many(targets, work, max_parallel=max_parallel, on_result=on_result)
    results: dict[str, EditResult] = {}
    for name, value in raw.items():
        if isinstance(value, EditResult):
            results[name] = value
        else:
            results[name] = EditResult(server=name, ok=False, error=_errmsg(value))
    return results


def _resolve_servers(session: Session, names: list[str]) -> list[ServerCredential]:
    if not names:
        raise UsageError("name at least one server")
    seen: dict[str, ServerCredential] = {}
    for name in names:
        if name not in seen:
            seen[name] = servers_svc.get_server(session, name)
    return list(seen.values())


def _deployment(session: Session, key: SSHKey, server: ServerCredential) -> KeyDeployment | None:
    return session.exec(select(KeyDeployment).where(KeyDeployment.key_id == key.id,
                                                    KeyDeployment.server_id == server.id)).first()


def _result_doc(result: EditResult, status: str) -> dict[str, Any]:
    return {"server": result.server, "status": status, "changed": result.changed, "diff": result.diff,
            "error": result.error, **result.extra}


def _audit_batch(session: Session, keyring: Keyring, *, action: str, key: SSHKey, docs: list[dict[str, Any]],
                 extra: dict[str, Any] | None = None) -> str:
    failed = sum(1 for d in docs if d["status"] == "failed")
    outcome = "ok" if not failed else ("failed" if failed == len(docs) else "partial")
    audit.record(session, keyring, action=action, object_type="ssh_key", object_id=key.name, outcome=outcome,
                 details={"fingerprint": key.fingerprint, **(extra or {}),
                          "servers": {d["server"]: d["status"] if not d["error"] else f"failed: {d['error']}"
                                      for d in docs}})
    return outcome


def _targets(session: Session, keyring: Keyring, servers: list[ServerCredential], ssh: SSHConfig | None,
             docs: dict[str, dict[str, Any]]) -> dict[str, Target]:
    """Targets per server; a server whose credentials cannot be decrypted fails on its own."""
    out: dict[str, Target] = {}
    for server in servers:
        try:
            out[server.name] = servers_svc.target_for(session, keyring, server, ssh=ssh)
        except UnityctlError as exc:
            docs[server.name] = {"server": server.name, "status": "failed", "changed": False, "diff": "",
                                 "error": exc.message}
    return out


def deploy_key(session: Session, keyring: Keyring, *, name: str, to: list[str], options: str | None = None,
               dry_run: bool = False, ssh: SSHConfig | None = None, max_parallel: int = 32,
               on_result: Callable[[str, Any], None] | None = None) -> list[dict[str, Any]]:
    """Add the key's marked line to each server's authorized_keys (in parallel).

    Out: one dict per server: ``status`` deployed | unchanged | would change | failed, the diff,
    the error. Foreign lines are never touched. Raises UsageError (bad options, no server),
    NotFoundError, StateError (key not active).
    """
    key = keys_svc.get_key(session, name)
    if key.status != "active":
        raise StateError(f"key {name} is {key.status}: deploy an active key")
    if options is not None:
        ak.validate_options(options)
    public = key.public_key
    servers = _resolve_servers(session, to)
    docs: dict[str, dict[str, Any]] = {}
    targets = _targets(session, keyring, servers, ssh, docs)

    def edit(content: bytes) -> bytes:
        return ak.add(content, public, key_name=key.name, options=options)

    with servers_svc.ssh_executor(session, keyring) as executor:
        results = _run_batch(executor, {n: (t, edit) for n, t in targets.items()}, dry_run=dry_run,
                             max_parallel=max_parallel, on_result=on_result)
    now = utcnow()
    for server in servers:
        if server.name in docs:
            continue
        res = results[server.name]
        if not res.ok:
            servers_svc.record_login(session, server, res.error)
            docs[server.name] = _result_doc(res, "failed")
            continue
        servers_svc.record_login(session, server)
        if dry_run:
            docs[server.name] = _result_doc(res, "would change" if res.changed else "unchanged")
            continue
        docs[server.name] = _result_doc(res, "deployed" if res.changed else "unchanged")
        dep = _deployment(session, key, server) or KeyDeployment(key_id=key.id, server_id=server.id)  # type: ignore[arg-type]
        dep.options, dep.status, dep.last_error, dep.removed_at = options, "deployed", None, None
        if res.changed or dep.deployed_at is None:
            dep.deployed_at = now
        session.add(dep)
    ordered = [docs[s.name] for s in servers]
    if not dry_run:
        _audit_batch(session, keyring, action="creds.keys.deploy", key=key, docs=ordered,
                     extra={"options": options})
    return ordered


def revoke_key(session: Session, keyring: Keyring, *, name: str, from_: list[str] | None = None,
               dry_run: bool = False, ssh: SSHConfig | None = None, max_parallel: int = 32,
               on_result: Callable[[str, Any], None] | None = None) -> list[dict[str, Any]]:
    """Remove the key's marked lines from the servers (default: every server it is deployed on).

    Out: per-server dicts as :func:`deploy_key` (``removed`` instead of ``deployed``).
    Raises StateError when the key is how unityctl logs in to one of those servers (revoking it
    would lock unityctl out: change the server's login first), NotFoundError, UsageError.
    """
    key = keys_svc.get_key(session, name)
    if from_:
        servers = _resolve_servers(session, from_)
    else:
        servers = [s for _d, s in keys_svc.deployments_of(session, key, live_only=True)]
        if not servers:
            raise UsageError(f"key {name} is not deployed anywhere: name servers with --from")
    locked_out = [s.name for s in servers if s.key_id == key.id]
    if locked_out:
        raise StateError(f"key {name} is the login key of {', '.join(locked_out)}: revoking it would lock "
                         "unityctl out; give those servers another key first (or rotate the key instead)")
    docs: dict[str, dict[str, Any]] = {}
    targets = _targets(session, keyring, servers, ssh, docs)
    fingerprint = key.fingerprint

    def edit(content: bytes) -> bytes:
        # By fingerprint alone: a line is ours only when its marker names this very key.
        return ak.remove(content, fingerprint=fingerprint)

    with servers_svc.ssh_executor(session, keyring) as executor:
        results = _run_batch(executor, {n: (t, edit) for n, t in targets.items()}, dry_run=dry_run,
                             max_parallel=max_parallel, on_result=on_result)
    now = utcnow()
    for server in servers:
        if server.name in docs:
            continue
        res = results[server.name]
        dep = _deployment(session, key, server)
        if not res.ok:
            servers_svc.record_login(session, server, res.error)
            docs[server.name] = _result_doc(res, "failed")
            if dep is not None and not dry_run:
                dep.last_error = res.error
                session.add(dep)
            continue
        servers_svc.record_login(session, server)
        if dry_run:
            docs[server.name] = _result_doc(res, "would change" if res.changed else "unchanged")
            continue
        docs[server.name] = _result_doc(res, "removed" if res.changed else "absent")
        if dep is not None:
            dep.status, dep.removed_at, dep.last_error = "removed", now, None
            session.add(dep)
    ordered = [docs[s.name] for s in servers]
    if not dry_run:
        _audit_batch(session, keyring, action="creds.keys.revoke", key=key, docs=ordered)
    return ordered


def summary(docs: list[dict[str, Any]], verb: str) -> str:
    """One line such as ``deployed on 4 of 5 servers; failed: s3``."""
    failed = [d["server"] for d in docs if d["status"] == "failed"]
    good = len(docs) - len(failed)
    text = f"{verb} on {good} of {len(docs)} server(s)"
    return text + (f"; failed: {', '.join(failed)}" if failed else "")


def live_servers_of(session: Session, key: SSHKey) -> list[str]:
    """Names of servers where the key's line is (or may still be)."""
    return [s.name for d, s in keys_svc.deployments_of(session, key, live_only=True)]


__all__ = ["EditResult", "apply_edit", "deploy_key", "live_servers_of", "read_authorized_keys", "revoke_key",
           "summary", "write_authorized_keys"]
