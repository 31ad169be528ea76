"""The tamper-evident audit log: a hash chain of HMACs over every change.

``mac = HMAC-SHA256(k_audit, prev_mac || canonical_json(row))``. ``k_audit`` is derived (HKDF) from
an audit root secret sealed under the master key, so nobody without the master key can forge or
re-chain rows, and rotating the master key keeps every old MAC valid. Rows are serialised through a
lock on the ``meta`` row ``audit.head`` (a row lock on PostgreSQL, the write lock on SQLite), so two
writers never fork the chain. Old rows can be archived to JSONL files; the archive's last MAC
anchors the chain that stays in the table, so verification works across archive boundaries.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import hmac
import json
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from unityctl.core.crypto import Keyring
from unityctl.core.db import utcnow
from unityctl.core.errors import AuditError
from unityctl.core.models import AuditArchive, AuditEntry, Meta

GENESIS_MAC = "0" * 64
HEAD_KEY = "audit.head"

# Keys whose values are never written into an audit row, whatever a caller passes.
_SECRET_WORDS = ("password", "passphrase", "secret", "private", "token", "key_pem", "hmac")


def actor() -> str:
    """Who is acting: ``OS user@host``."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if any(w in str(k).lower() for w in _SECRET_WORDS) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _ts_text(ts: dt.datetime) -> str:
    return ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(entry: AuditEntry) -> bytes:
    """The exact bytes the MAC covers: every field but id and the MACs, in a fixed JSON form."""
    doc = {
        "seq": entry.seq, "ts": _ts_text(entry.ts), "actor": entry.actor, "action": entry.action,
        "object_type": entry.object_type, "object_id": entry.object_id, "outcome": entry.outcome,
        "details": json.loads(entry.details),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def compute_mac(key: bytes, prev_mac: str, entry: AuditEntry) -> str:
    return hmac.new(key, bytes.fromhex(prev_mac) + canonical(entry), hashlib.sha256).hexdigest()


def audit_key(session: Session, keyring: Keyring, *, create: bool = False) -> bytes:
    """``k_audit``: HKDF-SHA256 of the audit root secret, which is stored encrypted under the master key.

    Deriving from a stored root (rather than from the master key itself) keeps old MACs valid when
    the master key is rotated: rotation re-wraps the root like any other secret.
    """
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from unityctl.core import secrets
    from unityctl.core.errors import DecryptionError

    try:
        root = secrets.get_secret(session, keyring, owner_type="core", owner_id="audit", name="root")
    except DecryptionError:
        exists = session.exec(select(AuditEntry.id).limit(1)).first() is not None
        if not create or exists:
            raise
        root = os.urandom(32)
        secrets.put_secret(session, keyring, owner_type="core", owner_id="audit", name="root", value=root)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"unityctl audit v1").derive(root)


def record(session: Session, keyring: Keyring, *, action: str, object_type: str, object_id: str | int,
           outcome: str = "ok", details: dict[str, Any] | None = None) -> AuditEntry:
    """Append one row to the chain inside the caller's transaction.

    If the row cannot be written the caller's whole transaction fails with it, so a change is
    never made without its audit row. Secret-looking keys in ``details`` are masked.
    Raises AuditError when the chain's head cannot be locked or written.
    """
    try:
        # Take the chain lock first: the UPDATE locks the row (PostgreSQL) / the database (SQLite).
        locked = session.execute(update(Meta).where(Meta.key == HEAD_KEY).values(value=Meta.value)).rowcount
        if not locked:
            session.add(Meta(key=HEAD_KEY, value=json.dumps({"seq": 0, "mac": GENESIS_MAC})))
            session.flush()
        head = json.loads(session.get(Meta, HEAD_KEY, populate_existing=True).value)  # type: ignore[union-attr]
        entry = AuditEntry(
            seq=int(head["seq"]) + 1, ts=utcnow(), actor=actor(), action=action, object_type=object_type,
            object_id=str(object_id), outcome=outcome,
            details=json.dumps(_scrub(details or {}), sort_keys=True, default=str),
            prev_mac=head["mac"], mac="",
        )
        entry.mac = compute_mac(audit_key(session, keyring, create=True), entry.prev_mac, entry)
        session.add(entry)
        meta = session.get(Meta, HEAD_KEY)
        meta.value = json.dumps({"seq": entry.seq, "mac": entry.mac})  # type: ignore[union-attr]
        session.add(meta)
        session.flush()
    except AuditError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here must stop the change
        from unityctl.core.dburl import describe_db_error

        raise AuditError(f"cannot write the audit row for {action}: {describe_db_error(exc)}; "
                         "the change was not made") from None
    return entry


@dataclass
class VerifyResult:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str = ""
    # Where a verified stretch of the chain ends, for the next stretch to continue from.
    last_seq: int = 0
    last_mac: str = GENESIS_MAC


def _check_chain(rows: Iterable[AuditEntry], key: bytes, *, prev_mac: str, next_seq: int) -> VerifyResult:
    count = 0
    for row in rows:
        count += 1
        if row.seq != next_seq:
            what = "deleted" if row.seq > next_seq else "reordered or duplicated"
            return VerifyResult(False, count, row.seq,
                                f"row seq {row.seq}: expected seq {next_seq} (a row was {what})")
        if row.prev_mac != prev_mac:
            return VerifyResult(False, count, row.seq,
                                f"row seq {row.seq}: does not follow the previous row (deleted or reordered)")
        if not hmac.compare_digest(compute_mac(key, prev_mac, row), row.mac):
            return VerifyResult(False, count, row.seq,
                                f"row seq {row.seq} ({row.action} {row.object_type}/{row.object_id}) was "
                                "edited: its MAC does not match")
        prev_mac, next_seq = row.mac, row.seq + 1
    return VerifyResult(True, count, last_seq=next_seq - 1, last_mac=prev_mac)


def verify(session: Session, keyring: Keyring, *, archives: list[Path] | None = None) -> VerifyResult:
    """Check the whole chain: archives (if given, oldest first), then the table, then the head pointer."""
    if session.exec(select(AuditEntry.id).limit(1)).first() is None and not archives:
        key = b""
    else:
        key = audit_key(session, keyring)
    anchor = session.exec(select(AuditArchive).order_by(col(AuditArchive.last_seq).desc())).first()
    prev_mac, next_seq, total = GENESIS_MAC, 1, 0
    if archives:
        for path in archives:
            result = _check_chain(read_archive(path), key, prev_mac=prev_mac, next_seq=next_seq)
            total += result.rows
            if not result.ok:
                result.reason = f"{path.name}: {result.reason}"
                result.rows = total
                return result
            prev_mac, next_seq = result.last_mac, result.last_seq + 1
        if anchor is not None and (next_seq - 1, prev_mac) != (anchor.last_seq, anchor.last_mac):
            return VerifyResult(False, total, anchor.last_seq,
                                f"the archives end at seq {next_seq - 1}, the table continues after seq "
                                f"{anchor.last_seq}: an archive is missing")
    elif anchor is not None:
        prev_mac, next_seq = anchor.last_mac, anchor.last_seq + 1
    rows = session.exec(select(AuditEntry).order_by(col(AuditEntry.seq), col(AuditEntry.id))).all()
    result = _check_chain(rows, key, prev_mac=prev_mac, next_seq=next_seq)
    result.rows += total
    if not result.ok:
        return result
    head_row = session.get(Meta, HEAD_KEY)
    if head_row is not None:
        head = json.loads(head_row.value)
        if int(head["seq"]) != result.last_seq or head["mac"] != result.last_mac:
            return VerifyResult(False, result.rows, int(head["seq"]),
                                f"the newest rows are missing: the chain's head is seq {head['seq']}, "
                                f"the table ends at seq {result.last_seq}")
    return result


def entries(session: Session, *, since: dt.datetime | None = None, action: str | None = None,
            object_ref: str | None = None, limit: int | None = None) -> list[AuditEntry]:
    """Rows filtered by time, action (prefix match) and object (``type`` or ``type/id``), oldest first."""
    query = select(AuditEntry)
    if since is not None:
        query = query.where(AuditEntry.ts >= since)
    if action:
        query = query.where(col(AuditEntry.action).startswith(action))
    if object_ref:
        otype, _, oid = object_ref.partition("/")
        query = query.where(AuditEntry.object_type == otype)
        if oid:
            query = query.where(AuditEntry.object_id == oid)
    query = query.order_by(col(AuditEntry.seq).desc())
    if limit:
        query = query.limit(limit)
    return list(reversed(session.exec(query).all()))


def to_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq, "ts": _ts_text(entry.ts), "actor": entry.actor, "action": entry.action,
        "object_type": entry.object_type, "object_id": entry.object_id, "outcome": entry.outcome,
        "details": json.loads(entry.details), "prev_mac": entry.prev_mac, "mac": entry.mac,
    }


def from_dict(data: dict[str, Any]) -> AuditEntry:
    ts = dt.datetime.strptime(data["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    return AuditEntry(seq=int(data["seq"]), ts=ts, actor=data["actor"], action=data["action"],
                      object_type=data["object_type"], object_id=data["object_id"], outcome=data["outcome"],
                      details=json.dumps(data["details"], sort_keys=True), prev_mac=data["prev_mac"],
                      mac=data["mac"])


def export_lines(rows: Iterable[AuditEntry]) -> Iterator[str]:
    """One JSON document per row (JSONL), including the MACs so the export can be verified."""
    for row in rows:
        yield json.dumps(to_dict(row), sort_keys=True)


def read_archive(path: Path) -> Iterator[AuditEntry]:
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield from_dict(json.loads(line))
                    except (ValueError, KeyError, TypeError):
                        raise AuditError(f"{path}: line {number} is not an audit row") from None
    except OSError as exc:
        raise AuditError(f"cannot read audit archive {path}: {exc.__class__.__name__}") from None


def archive(session: Session, keyring: Keyring, *, before: dt.datetime, archive_dir: Path) -> AuditArchive | None:
    """Move rows older than ``before`` into a JSONL file and anchor the chain on its last MAC.

    The chain is verified first (an archive of a broken chain would hide the break). The file is
    written and synced before any row is deleted. Returns None when nothing is old enough.
    """
    check = verify(session, keyring)
    if not check.ok:
        raise AuditError(f"refusing to archive a broken chain: {check.reason}")
    # Only a contiguous prefix of the chain can be archived: if the clock once went backwards, an old
    # row after a newer one stays in the table with it (archiving it would leave a hole in the chain).
    first_recent = session.exec(select(func.min(AuditEntry.seq)).where(AuditEntry.ts >= before)).one()
    query = select(AuditEntry).where(AuditEntry.ts < before)
    if first_recent is not None:
        query = query.where(AuditEntry.seq < first_recent)
    rows = session.exec(query.order_by(col(AuditEntry.seq))).all()
    if not rows:
        return None
    archive_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = archive_dir / f"audit-{rows[0].seq:08d}-{rows[-1].seq:08d}.jsonl"
    data = ("\n".join(export_lines(rows)) + "\n").encode()
    from unityctl.core.paths import write_private_file

    write_private_file(path, data)
    anchor = AuditArchive(first_seq=rows[0].seq, last_seq=rows[-1].seq, last_mac=rows[-1].mac, path=str(path),
                          sha256=hashlib.sha256(data).hexdigest(), rows=len(rows))
    session.add(anchor)
    for row in rows:
        session.delete(row)
    session.flush()
    record(session, keyring, action="audit.archive", object_type="audit", object_id=f"{anchor.first_seq}-{anchor.last_seq}",
           details={"rows": anchor.rows, "file": str(path)})
    return anchor


def archive_files(session: Session) -> list[Path]:
    """The archive files recorded in the database, oldest first."""
    return [Path(a.path) for a in session.exec(select(AuditArchive).order_by(col(AuditArchive.first_seq))).all()]
