"""Storage monitor: turn a parsed collection into stored disks, ZFS pools and md arrays, and alerts.

The collector parses a server's output (:func:`unityctl.infra.probes.system.parse_collection`)
and calls :func:`apply_storage` inside its one write session. This module then

* upserts one :class:`StorageDevice` per disk, keyed by SERIAL NUMBER, so a disk that moves to
  another server keeps its row, its accepted baseline and its alert (a disk without a serial is
  keyed ``<server>:<device>``);
* judges each disk with :func:`unityctl.infra.probes.smart.judge` against its accepted baseline,
  and flags any critical counter that rose above the baseline;
* upserts one :class:`StoragePool` per ZFS pool and md array, mapping every member to its disk
  (``sdb1`` -> ``sdb``; ``ata-WDC_..._WD-XXXX`` -> the disk whose serial it carries;
  ``wwn-0x...`` -> the disk with that WWN);
* raises ``storage_warning`` alerts: one per unhealthy disk, one per unhealthy pool or array. A
  disk that is the reason its pool is unhealthy is named in the POOL's alert ("tank DEGRADED:
  sdb WD-XXXX UNAVAIL, 197 Current_Pending_Sector raw 8") instead of getting a second alert.

The CLI's read and action functions (:func:`list_disks`, :func:`accept_baseline`,
:func:`list_pools`, :func:`start_scrub`) live here too. Nothing here prints.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from unityctl.core import alerts
from unityctl.core.db import utcnow
from unityctl.core.errors import NotFoundError, RemoteCommandError, UsageError
from unityctl.infra.models import MonitoredServer, StorageDevice, StoragePool
from unityctl.infra.probes import mdstat as md
from unityctl.infra.probes import smart as sm
from unityctl.infra.probes import zfs as zf

if TYPE_CHECKING:  # pragma: no cover
    from unityctl.core.config import Settings
    from unityctl.core.crypto import Keyring
    from unityctl.core.ssh import SSHExecutor, Target
    from unityctl.infra.probes.system import CollectionReport

__all__ = [
    "DiskRef",
    "accept_baseline",
    "apply_storage",
    "base_device",
    "critical_counters",
    "disk_key",
    "list_disks",
    "list_pools",
    "match_member",
    "start_scrub",
]

ALERT_TYPE = "storage_warning"
_SEVERITY = {"warn": "warning", "failed": "critical"}
_POOL_SEVERITY = {"warn": "warning", "critical": "critical"}
_RANK = {"info": 0, "warning": 1, "critical": 2}
STANDBY_REASON = "standby, skipped"
_POOL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,254}$")

# md verdict -> (stored health, state word used in messages).
_MD_HEALTH = {"ok": "ok", "rebuilding": "warn", "degraded": "warn", "failed": "critical",
              "inactive": "critical"}


# ---------------------------------------------------------------------------------------------
# pure helpers (unit-tested in tests/unit/test_infra_correlation.py)
# ---------------------------------------------------------------------------------------------

_PART_PATTERNS = (
    re.compile(r"^(?P<disk>(?:nvme\d+n\d+|mmcblk\d+|loop\d+|nbd\d+))p\d+$"),
    re.compile(r"^(?P<disk>(?:[shv]|xv)d[a-z]+)\d+$"),
    re.compile(r"^(?P<disk>.+)-part\d+$"),  # /dev/disk/by-id/...-part1
    re.compile(r"^(?P<disk>(?:ada|da|ad|vtbd)\d+)(?:p\d+|s\d+[a-h]?)$"),  # FreeBSD
    re.compile(r"^(?P<disk>c\d+t\d+d\d+)(?:s\d+|p\d+)$"),  # illumos
)


def base_device(name: str) -> str:
    """The whole-disk name of a device or partition name: ``/dev/sdb1`` -> ``sdb``,
    ``nvme0n1p2`` -> ``nvme0n1``, ``ata-WDC_X_WD-1-part1`` -> ``ata-WDC_X_WD-1``."""
    name = name.strip()
    for prefix in ("/dev/disk/by-id/", "/dev/disk/by-path/", "/dev/disk/by-uuid/", "/dev/disk/by-vdev/",
                   "/dev/disk/by-partuuid/", "/dev/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    for pattern in _PART_PATTERNS:
        m = pattern.match(name)
        if m:
            return m.group("disk")
    return name


def disk_key(device: str) -> str:
    """The device part of a SMART section key (``/dev/sda``; ``/dev/bus/0:megaraid,0`` keeps its type)."""
    return device


def _wwn_hex(wwn: str | None) -> str | None:
    if not wwn:
        return None
    text = wwn.replace(" ", "").lower()
    text = text.removeprefix("0x")
    return text if re.fullmatch(r"[0-9a-f]{8,32}", text) else None


@dataclass
class DiskRef:
    """What correlation knows about one disk of a server: its device name, serial, WWN, verdict."""

    device: str  # as stored: /dev/sda, or /dev/bus/0:megaraid,0
    serial: str
    verdict: str = "unknown"
    reasons: list[str] = field(default_factory=list)
    wwn: str | None = None
    has_real_serial: bool = True

    @property
    def base(self) -> str | None:
        if ":" in self.device.removeprefix("/dev/"):  # a RAID-controller path names no single disk
            return None
        return base_device(self.device)


_WAS_RE = re.compile(r"\bwas\s+(\S+)")


def match_member(name: str, disks: Iterable[DiskRef], note: str = "") -> DiskRef | None:
    """Find the disk behind a pool/array member name.

    Tried in order, for the name and for the path in a ``was /dev/sdb1`` note: the device name
    (partition stripped), a ``wwn-0x...`` id against the disk's WWN, then the longest disk
    serial contained in the name (``ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0XXXXXX`` carries
    ``WD-WCC7K0XXXXXX``). Returns None when nothing matches.
    """
    disks = list(disks)
    names = [name]
    m = _WAS_RE.search(note or "")
    if m:
        names.append(m.group(1))
    for candidate in names:
        base = base_device(candidate)
        for disk in disks:
            if disk.base is not None and disk.base == base:
                return disk
        if base.lower().startswith("wwn-0x"):
            wanted = base[6:].lower()
            for disk in disks:
                have = _wwn_hex(disk.wwn)
                if have and (have == wanted or wanted.startswith(have) or have.startswith(wanted)):
                    return disk
        squashed = base.replace(" ", "_")
        best: DiskRef | None = None
        for disk in disks:
            serial = disk.serial.strip().replace(" ", "_")
            if not disk.has_real_serial or len(serial) < 6:
                continue
            if serial in squashed and (best is None or len(serial) > len(best.serial)):
                best = disk
        if best is not None:
            return best
    return None


def critical_counters(report: sm.SmartReport) -> dict[str, int]:
    """Current raw values of the counters the baseline can accept, keyed as :func:`judge` expects
    (ATA attribute id as a string; ``media_errors``, ``scsi_grown_defects``,
    ``scsi_uncorrected_errors``). Attribute 188 is decoded the way judge() reads it."""
    counters: dict[str, int] = {}
    for attr in report.attributes:
        if attr.id not in sm.ATA_CRITICAL or attr.raw is None:
            continue
        value = sm._command_timeouts(attr) if attr.id == 188 else attr.raw  # noqa: SLF001 - same decoding
        if value is not None:
            counters[str(attr.id)] = value
    if report.nvme_health is not None and report.nvme_health.media_errors is not None:
        counters["media_errors"] = report.nvme_health.media_errors
    if report.scsi_grown_defects is not None:
        counters["scsi_grown_defects"] = report.scsi_grown_defects
    if report.scsi_uncorrected_errors is not None:
        counters["scsi_uncorrected_errors"] = report.scsi_uncorrected_errors
    return counters


def _counter_label(key: str, report: sm.SmartReport | None = None) -> str:
    if key.isdecimal():
        attr = report.attribute(int(key)) if report is not None else None
        rule = sm.ATA_CRITICAL.get(int(key))
        name = attr.name if attr is not None else (rule.name if rule else f"Attribute_{key}")
        return f"{key} {name}"
    return {"media_errors": "NVMe media errors", "scsi_grown_defects": "SCSI grown defect list",
            "scsi_uncorrected_errors": "SCSI uncorrected read/write errors"}.get(key, key)


def _reason_mentions(reason: str, key: str) -> bool:
    """True when a judge() reason is about this counter."""
    if key.isdecimal():
        return reason.startswith(f"{key} ") and " raw " in reason
    return reason.startswith(_counter_label(key))


def judge_disk(report: sm.SmartReport, *, baseline: Mapping[str, int], previous: Mapping[str, int]
               ) -> tuple[str, list[str], dict[str, int], dict[str, tuple[int, int]]]:
    """Judge one awake disk: (verdict, reasons, counters, increases).

    The verdict is :func:`judge`'s, raised to at least ``warn`` when an accepted counter rose
    above its baseline below judge()'s own thresholds (188 accepted at 2, now 5). ``increases``
    maps each counter that rose over the previous collection (or over its baseline, when
    accepted) to (before, now): the caller notifies about those at once.
    """
    verdict = sm.judge(report, baseline)
    status, reasons = verdict.status, list(verdict.reasons)
    counters = critical_counters(report)
    increases: dict[str, tuple[int, int]] = {}
    for key, value in counters.items():
        accepted = baseline.get(key)
        reference = accepted if accepted is not None else previous.get(key)
        if reference is None or value <= reference:
            continue
        increases[key] = (int(reference), value)
        if accepted is not None and not any(_reason_mentions(r, key) for r in reasons):
            reasons.append(f"{_counter_label(key, report)} raw {value} (was {accepted})")
            if status in ("passed", "unknown"):
                status = "warn"
    return status, reasons, counters, increases


# ---------------------------------------------------------------------------------------------
# apply a collection
# ---------------------------------------------------------------------------------------------

def _loads(text: str | None, default: Any) -> Any:
    try:
        value = json.loads(text) if text else default
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _disk_dedup(serial: str) -> str:
    return f"{ALERT_TYPE}:disk:{serial}"


def _pool_dedup(server_id: int | None, kind: str, name: str) -> str:
    return f"{ALERT_TYPE}:pool:{server_id}:{kind}:{name}"


@dataclass
class _DiskState:
    row: StorageDevice
    ref: DiskRef
    increases: dict[str, tuple[int, int]] = field(default_factory=dict)
    seen_awake: bool = False


def _find_device(session: Session, serial: str) -> StorageDevice | None:
    return session.exec(select(StorageDevice).where(StorageDevice.serial == serial)).first()


def _upsert_disks(session: Session, server: MonitoredServer, report: CollectionReport,
                  now: dt.datetime) -> list[_DiskState]:
    states: list[_DiskState] = []
    done: set[str] = set()
    for section_device, smart in report.smart.items():
        device = disk_key(section_device)
        placeholder = f"{server.name}:{device}"
        real_serial = (smart.serial or "").strip()
        if not real_serial and not smart.standby and not smart.has_health_data:
            continue  # unreadable answer: the collector's notes already say why
        if real_serial and real_serial in done:
            continue  # one disk seen twice (multipath, a RAID controller path): judged once
        done.add(real_serial)
        row: StorageDevice | None = None
        if real_serial:
            row = _find_device(session, real_serial)
            if row is None:
                # First time awake: adopt the row a sleeping disk got under its placeholder key.
                row = _find_device(session, placeholder)
                if row is not None:
                    row.serial = real_serial
        else:
            # A sleeping disk often gives no serial: it is the disk last seen at this device.
            row = session.exec(select(StorageDevice).where(
                StorageDevice.server_id == server.id, StorageDevice.device == device)
                .order_by(col(StorageDevice.last_seen_at).desc())).first()
            if row is None:
                row = _find_device(session, placeholder)
        if row is None:
            row = StorageDevice(serial=real_serial or placeholder, first_seen_at=now,
                                verdict="unknown", reasons="[]")
        row.server_id = server.id
        row.device = device
        row.last_seen_at = now
        if smart.model:
            row.model = smart.model[:200]
        if smart.kind != "unknown":
            row.protocol = smart.kind
        if smart.capacity_bytes:
            row.capacity_bytes = smart.capacity_bytes
        state = _DiskState(row, DiskRef(device, row.serial, wwn=smart.wwn,
                                        has_real_serial=bool(real_serial) or ":" not in row.serial))
        if smart.standby:
            # Never woken, never judged: keep what we knew, say why it is not fresh.
            previous = [r for r in _loads(row.reasons, []) if r != STANDBY_REASON]
            if row.verdict in ("unknown", "standby") and not previous:
                row.verdict = "standby"
            row.reasons = _dumps([STANDBY_REASON, *previous])
        else:
            baseline = {str(k): int(v) for k, v in _loads(row.baseline, {}).items()
                        if isinstance(v, int)}
            previous_counters = {str(k): int(v) for k, v in _loads(row.counters, {}).items()
                                 if isinstance(v, int)}
            status, reasons, counters, increases = judge_disk(
                smart, baseline=baseline, previous=previous_counters)
            row.verdict = status
            row.reasons = _dumps(reasons)
            row.counters = _dumps(counters)
            row.temperature_c = smart.temperature_c
            row.power_on_hours = smart.power_on_hours
            state.increases = increases
            state.seen_awake = True
        session.add(row)
        state.ref.verdict = row.verdict
        state.ref.reasons = [r for r in _loads(row.reasons, []) if r != STANDBY_REASON]
        states.append(state)
    session.flush()
    return states


def _member_entry(name: str, state: str, disk: DiskRef | None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "state": state, **extra}
    if disk is not None:
        entry.update({"device": disk.device, "serial": disk.serial if disk.has_real_serial else None,
                      "verdict": disk.verdict, "smart_reasons": disk.reasons})
    else:
        entry.update({"device": None, "serial": None, "verdict": None, "smart_reasons": []})
    return entry


def _member_text(member: dict[str, Any], bad_state: bool) -> str | None:
    """How the pool alert names one member: "sdb WD-XXXX UNAVAIL, 197 ... raw 8" (None: healthy)."""
    smart_bad = member.get("verdict") in ("warn", "failed")
    if not bad_state and not smart_bad:
        return None
    words = [member["name"]]
    if member.get("serial"):
        words.append(member["serial"])
    words.append(member["state"] or "?")
    if any(member.get(k) for k in ("read", "write", "cksum")):
        words.append(f"(READ {member.get('read') or 0} WRITE {member.get('write') or 0} "
                     f"CKSUM {member.get('cksum') or 0})")
    if member.get("note"):
        words.append(f"({member['note']})")
    text = " ".join(words)
    if smart_bad and member.get("smart_reasons"):
        text += ", " + ", ".join(member["smart_reasons"])
    return text


@dataclass
class _PoolState:
    row: StoragePool
    health: str
    state_word: str
    reasons: list[str]
    culprits: list[str]  # texts naming the members at fault
    culprit_serials: list[str]
    worst_disk: str | None  # warn | failed among the named disks


def _zfs_pools(server: MonitoredServer, report: CollectionReport, disks: list[DiskRef],
               now: dt.datetime, existing: dict[tuple[str, str], StoragePool]) -> list[_PoolState]:
    statuses = {p.name: p for p in (report.zpool_status.pools if report.zpool_status else [])}
    listings = {p.name: p for p in (report.zpool_list.pools if report.zpool_list else [])}
    out: list[_PoolState] = []
    for name in sorted(set(statuses) | set(listings)):
        status, listing = statuses.get(name), listings.get(name)
        verdict = zf.judge_pool(status, listing)
        state_word = (status.state if status and status.state else None) or \
            (listing.health if listing else None) or "UNKNOWN"
        members: list[dict[str, Any]] = []
        culprits: list[str] = []
        serials: list[str] = []
        worst: str | None = None
        for dev in (status.devices if status else []):
            if dev.kind != "disk":
                continue
            disk = match_member(dev.name, disks, dev.note)
            entry = _member_entry(dev.name, dev.state or "", disk, group=dev.group, parent=dev.parent,
                                  read=dev.read, write=dev.write, cksum=dev.cksum, note=dev.note)
            members.append(entry)
            bad = (dev.state in zf.BAD_DEVICE_STATES) or dev.has_errors
            text = _member_text(entry, bad)
            if text is not None and (verdict.status != "ok" or entry["verdict"] in ("warn", "failed")):
                culprits.append(text)
                if entry["serial"]:
                    serials.append(entry["serial"])
                if entry["verdict"] in ("warn", "failed"):
                    worst = "failed" if "failed" in (worst, entry["verdict"]) else "warn"
        row = existing.get(("zfs", name)) or StoragePool(server_id=server.id, kind="zfs", name=name)  # type: ignore[arg-type]
        row.state = state_word[:30]
        row.health = verdict.status
        row.level = _zfs_level(status)
        row.capacity_percent = float(listing.cap_percent) if listing and listing.cap_percent is not None else None
        row.fragmentation_percent = (float(listing.frag_percent)
                                     if listing and listing.frag_percent is not None else None)
        row.scan = _dumps(asdict(status.scan) if status else {})
        row.members = _dumps(members)
        row.reasons = _dumps(verdict.reasons)
        row.last_seen_at = now
        out.append(_PoolState(row, verdict.status, state_word, verdict.reasons, culprits, serials, worst))
    return out


def _zfs_level(status: zf.ZpoolStatus | None) -> str:
    """The data vdev types of a pool: "mirror", "raidz2", "mirror+raidz1", or "stripe"."""
    if status is None:
        return ""
    kinds: list[str] = []
    for dev in status.devices:
        if dev.kind == "vdev" and dev.group == "data" and dev.depth == 1:
            kind = re.sub(r"-\d+$", "", dev.name)
            if kind not in kinds:
                kinds.append(kind)
    has_plain = any(d.kind == "disk" and d.group == "data" and d.depth == 1 for d in status.devices)
    if has_plain and "stripe" not in kinds:
        kinds.append("stripe")
    return "+".join(kinds)[:30]


def _md_arrays(server: MonitoredServer, report: CollectionReport, disks: list[DiskRef],
               now: dt.datetime, existing: dict[tuple[str, str], StoragePool]) -> list[_PoolState]:
    out: list[_PoolState] = []
    for array in (report.mdstat.arrays if report.mdstat else []):
        verdict = md.judge_array(array)
        health = _MD_HEALTH.get(verdict.status, "warn")
        if verdict.status == "rebuilding" and not array.degraded and not array.failed_members:
            health = "ok"  # a resync after an unclean shutdown: redundancy is intact
        state_word = verdict.status.upper() if verdict.status != "ok" else "ACTIVE"
        members: list[dict[str, Any]] = []
        culprits: list[str] = []
        serials: list[str] = []
        worst: str | None = None
        for member in array.members:
            disk = match_member(member.name, disks)
            mstate = "FAULTY" if member.failed else ("SPARE" if member.spare else "ACTIVE")
            entry = _member_entry(member.name, mstate, disk, index=member.index, flags=member.flags)
            members.append(entry)
            text = _member_text(entry, member.failed)
            if text is not None and (health != "ok" or entry["verdict"] in ("warn", "failed")):
                culprits.append(text)
                if entry["serial"]:
                    serials.append(entry["serial"])
                if entry["verdict"] in ("warn", "failed"):
                    worst = "failed" if "failed" in (worst, entry["verdict"]) else "warn"
        row = existing.get(("md", array.name)) or StoragePool(server_id=server.id, kind="md", name=array.name)  # type: ignore[arg-type]
        row.state = state_word[:30]
        row.health = health
        row.level = (array.level or "")[:30]
        scan: dict[str, Any] = {}
        if array.sync_action:
            scan = {"kind": array.sync_action, "in_progress": array.sync_waiting is None,
                    "percent": array.sync_progress, "finish": array.sync_finish,
                    "speed": array.sync_speed, "waiting": array.sync_waiting}
        row.scan = _dumps(scan)
        row.members = _dumps(members)
        row.reasons = _dumps(verdict.reasons)
        row.last_seen_at = now
        out.append(_PoolState(row, health, state_word, verdict.reasons, culprits, serials, worst))
    return out


def _pool_message(pool: _PoolState) -> str:
    name = pool.row.name
    if pool.culprits:
        # What the members do not say: capacity, data errors, a resilver or rebuild under way.
        if pool.row.kind == "zfs":
            extra = [r for r in pool.reasons if not r.startswith("device ")
                     and r != f"pool {name} is {pool.state_word}"]
        else:
            extra = [r for r in pool.reasons if r.split(" ", 1)[0] in (*md.SYNC_ACTIONS, "check")]
        return f"{name} {pool.state_word}: " + "; ".join(pool.culprits + extra)
    return f"{name} {pool.state_word}: " + ("; ".join(pool.reasons) or "not healthy")


def _disk_message(row: StorageDevice, server: MonitoredServer, reasons: list[str]) -> str:
    words = "failed" if row.verdict == "failed" else "warning"
    what = f"disk {row.serial} ({server.name}:{row.device}"
    what += f", {row.model})" if row.model else ")"
    return f"{what} SMART {words}: " + (", ".join(reasons) or "no reason given")


def apply_storage(session: Session, *, server: MonitoredServer, report: CollectionReport,
                  settings: Settings, now: dt.datetime) -> None:
    """Store the disks, pools and arrays of one collection and raise/clear their alerts.

    In: the write session, the server (already flushed, with an id), its parsed report, the
    settings (``alerts`` config) and the collection time.
    Effects: StorageDevice rows upserted by serial (moved to this server if seen elsewhere
    before), StoragePool rows upserted by (server, kind, name) and removed when the section that
    lists them ran and no longer does; ``storage_warning`` alerts raised, escalated or cleared.
    Missing tools and refused permissions are the collector's notes, never alerts here.
    Raises: nothing of its own (database errors propagate).
    """
    disk_states = _upsert_disks(session, server, report, now)
    seen_ids = {s.row.id for s in disk_states}
    # Disks stored for this server but absent from this collection still help correlation
    # (a pulled disk shows as UNAVAIL in its pool: its last known serial is what to replace).
    known = [s.ref for s in disk_states]
    for row in session.exec(select(StorageDevice).where(StorageDevice.server_id == server.id)).all():
        if row.id not in seen_ids:
            known.append(DiskRef(row.device, row.serial, row.verdict,
                                 [r for r in _loads(row.reasons, []) if r != STANDBY_REASON],
                                 has_real_serial=not row.serial.startswith(f"{server.name}:")))

    existing = {(p.kind, p.name): p for p in session.exec(
        select(StoragePool).where(StoragePool.server_id == server.id)).all()}
    pools = _zfs_pools(server, report, known, now, existing) + _md_arrays(server, report, known, now, existing)
    for pool in pools:
        session.add(pool.row)
    current = {(p.row.kind, p.row.name) for p in pools}
    zfs_listed = report.zpool_status is not None or report.zpool_list is not None
    md_listed = report.mdstat is not None or report.section_status.get("mdstat") == "absent"
    for (kind, name), row in existing.items():
        if (kind, name) in current:
            continue
        if (kind == "zfs" and zfs_listed) or (kind == "md" and md_listed):
            # Exported, destroyed or stopped: the section ran and no longer lists it.
            alerts.clear_alert(session, dedup_key=_pool_dedup(server.id, kind, name), now=now)
            session.delete(row)
    session.flush()

    # Pool alerts first: a disk named in an open pool alert gets no alert of its own.
    named_in_pool: set[str] = set()
    for pool in pools:
        dedup = _pool_dedup(server.id, pool.row.kind, pool.row.name)
        if pool.health == "ok":
            # A failing member of a healthy pool is said by that disk's own alert.
            alerts.clear_alert(session, dedup_key=dedup, now=now)
            continue
        severity = _POOL_SEVERITY[pool.health]
        if pool.worst_disk:
            disk_severity = _SEVERITY[pool.worst_disk]
            if _RANK[disk_severity] > _RANK[severity]:
                severity = disk_severity
        named_in_pool.update(pool.culprit_serials)
        alerts.raise_alert(
            session, type=ALERT_TYPE, severity=severity, source_type="storage_pool",
            source_id=pool.row.id or 0, dedup_key=dedup, message=_pool_message(pool),
            details={"server": server.name, "kind": pool.row.kind, "pool": pool.row.name,
                     "state": pool.state_word, "health": pool.health, "reasons": pool.reasons,
                     "members": pool.culprits, "serials": pool.culprit_serials},
            config=settings.alerts, now=now)

    for state in disk_states:
        row = state.row
        dedup = _disk_dedup(row.serial)
        if not state.seen_awake or row.verdict in ("standby", "unknown"):
            continue  # no fresh judgement: leave any open alert as it is
        if row.verdict == "passed" or row.serial in named_in_pool:
            alerts.clear_alert(session, dedup_key=dedup, now=now)
            continue
        reasons = _loads(row.reasons, [])
        if state.increases:
            # A counter that grew is news even at the same severity: notify now, not at the
            # next back-off repeat.
            _make_due(session, dedup)
        alerts.raise_alert(
            session, type=ALERT_TYPE, severity=_SEVERITY[row.verdict], source_type="storage_device",
            source_id=row.id or 0, dedup_key=dedup, message=_disk_message(row, server, reasons),
            details={"server": server.name, "device": row.device, "serial": row.serial,
                     "model": row.model, "verdict": row.verdict, "reasons": reasons,
                     "increases": {k: list(v) for k, v in state.increases.items()}},
            config=settings.alerts, now=now)


def _make_due(session: Session, dedup_key: str) -> None:
    from unityctl.core.models import Alert

    alert = session.exec(select(Alert).where(Alert.dedup_key == dedup_key)).first()
    if alert is not None and alert.state == "open":
        alert.last_notified_at = None
        session.add(alert)


# ---------------------------------------------------------------------------------------------
# CLI services
# ---------------------------------------------------------------------------------------------

def _server_names(session: Session) -> dict[int, str]:
    return {s.id: s.name for s in session.exec(select(MonitoredServer)).all() if s.id is not None}


def disk_to_dict(row: StorageDevice, server_name: str | None) -> dict[str, Any]:
    reasons = _loads(row.reasons, [])
    return {
        "id": row.id, "serial": row.serial, "server": server_name, "device": row.device,
        "model": row.model, "protocol": row.protocol, "capacity_bytes": row.capacity_bytes,
        "verdict": row.verdict, "standby": STANDBY_REASON in reasons,
        "reasons": [r for r in reasons if r != STANDBY_REASON],
        "temperature_c": row.temperature_c, "power_on_hours": row.power_on_hours,
        "counters": _loads(row.counters, {}), "baseline": _loads(row.baseline, {}),
        "first_seen_at": row.first_seen_at, "last_seen_at": row.last_seen_at,
    }


def list_disks(session: Session, *, server: str | None = None) -> list[dict[str, Any]]:
    """Every stored disk (or those of ``server``), sorted by server and device.

    Out: dicts with serial, server, device, model, protocol, verdict, reasons, standby,
    temperature, power-on hours, counters and baseline.
    Raises: NotFoundError for an unknown server name.
    """
    names = _server_names(session)
    query = select(StorageDevice)
    if server is not None:
        server_id = next((i for i, n in names.items() if n == server), None)
        if server_id is None:
            raise NotFoundError(f"no monitored server named {server!r}")
        query = query.where(StorageDevice.server_id == server_id)
    rows = session.exec(query).all()
    out = [disk_to_dict(r, names.get(r.server_id) if r.server_id is not None else None) for r in rows]
    return sorted(out, key=lambda d: (d["server"] or "", d["device"], d["serial"]))


def accept_baseline(session: Session, keyring: Keyring, *, serial: str) -> StorageDevice:
    """Accept a disk's current critical counters as normal (``infra disks accept SERIAL``).

    A counter at (or below) its accepted value no longer makes the disk warn; any rise above it
    does again. Reasons that came only from now-accepted counters are dropped at once (the next
    collection re-judges everything); when none is left the verdict becomes passed and the
    disk's alert is resolved. Audited as ``infra.disks.accept``.
    Raises: NotFoundError for an unknown serial; UsageError when the disk has no counters yet.
    """
    from unityctl.core import audit

    row = _find_device(session, serial)
    if row is None and serial.isdecimal():
        row = session.get(StorageDevice, int(serial))
    if row is None:
        raise NotFoundError(f"no disk with serial {serial!r}")
    counters = _loads(row.counters, {})
    if not counters:
        raise UsageError(f"disk {row.serial} has no SMART counters recorded yet: collect it first")
    previous = _loads(row.baseline, {})
    row.baseline = _dumps(counters)
    reasons = _loads(row.reasons, [])
    kept = [r for r in reasons if not any(_reason_mentions(r, k) for k in counters)]
    if len(kept) != len(reasons):
        row.reasons = _dumps(kept)
        if not [r for r in kept if r != STANDBY_REASON] and row.verdict in ("warn", "failed"):
            row.verdict = "passed"
    session.add(row)
    if row.verdict == "passed":
        alerts.clear_alert(session, dedup_key=_disk_dedup(row.serial))
    audit.record(session, keyring, action="infra.disks.accept", object_type="storage_device",
                 object_id=row.serial, outcome="ok",
                 details={"baseline": counters, "previous_baseline": previous})
    session.flush()
    return row


def pool_to_dict(row: StoragePool, server_name: str | None) -> dict[str, Any]:
    return {
        "id": row.id, "server": server_name, "kind": row.kind, "name": row.name, "state": row.state,
        "health": row.health, "level": row.level, "capacity_percent": row.capacity_percent,
        "fragmentation_percent": row.fragmentation_percent, "scan": _loads(row.scan, {}),
        "members": _loads(row.members, []), "reasons": _loads(row.reasons, []),
        "last_seen_at": row.last_seen_at,
    }


def list_pools(session: Session) -> list[dict[str, Any]]:
    """Every ZFS pool and md array, sorted by server, kind and name, members mapped to disks."""
    names = _server_names(session)
    rows = session.exec(select(StoragePool)).all()
    out = [pool_to_dict(r, names.get(r.server_id)) for r in rows]
    return sorted(out, key=lambda d: (d["server"] or "", d["kind"], d["name"]))


def _resolve_target(session: Session, keyring: Keyring, server: MonitoredServer,
                    settings: Settings | None = None) -> Target:
    """The SSH target of a server, built by the servers service from its creds login."""
    from unityctl.infra.servers import target_for_server

    return target_for_server(session, keyring, server, settings=settings)


def start_scrub(session: Session, keyring: Keyring, executor: SSHExecutor | None, *, server_name: str,
                pool: str, target: Target | None = None, timeout: float = 60.0) -> str:
    """Start ``zpool scrub POOL`` on a server (``infra pools scrub SERVER POOL``).

    Runs locally for a ``--local`` server, otherwise over SSH with ``executor`` (``target``
    overrides the server's own login). A non-root login uses ``sudo -n`` when a sudoers rule
    allows the command. Audited as ``infra.pools.scrub`` (outcome failed included: that
    row is committed even though the error then propagates).
    Out: a one-line message. Raises: NotFoundError (server), UsageError (bad pool name, no
    executor), RemoteCommandError (zpool refused: the message carries zpool's first line).
    """
    from unityctl.core import audit

    if not _POOL_NAME_RE.match(pool):
        raise UsageError(f"invalid pool name {pool!r}")
    server = session.exec(select(MonitoredServer).where(MonitoredServer.name == server_name)).first()
    if server is None:
        raise NotFoundError(f"no monitored server named {server_name!r}")
    known = session.exec(select(StoragePool).where(StoragePool.server_id == server.id,
                                                   StoragePool.kind == "zfs",
                                                   StoragePool.name == pool)).first()
    command = f"zpool scrub {shlex.quote(pool)}"
    # Root runs it; otherwise sudo -n when a sudoers rule allows exactly this (it never
    # prompts); otherwise plain zpool, whose own refusal is the message the user sees.
    script = (f"if [ \"$(id -u)\" = 0 ]; then {command}; "
              f"elif command -v sudo >/dev/null 2>&1 && sudo -n -l {command} >/dev/null 2>&1; "
              f"then sudo -n {command}; else {command}; fi")
    if server.local:
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout,
                              check=False)
        code, err = done.returncode, done.stderr
    else:
        if executor is None:
            raise UsageError(f"server {server.name}: scrubbing a remote pool needs an SSH executor")
        target = target or _resolve_target(session, keyring, server)
        result = executor.run(target, script, timeout=timeout, check=False)
        code, err = result.exit_code, result.stderr
    details = {"server": server.name, "pool": pool, "exit_code": code, "known_pool": known is not None}
    if code != 0:
        first = next((line.strip() for line in (err or "").splitlines() if line.strip()), "")
        details["error"] = first[:300]
        audit.record(session, keyring, action="infra.pools.scrub", object_type="storage_pool",
                     object_id=f"{server.name}/{pool}", outcome="failed", details=details)
        # The failed attempt stays on record: the caller's unit of work would roll it back.
        session.commit()
        raise RemoteCommandError(f"server {server.name}: zpool scrub {pool} failed (exit {code})"
                                 + (f": {first}" if first else ""))
    audit.record(session, keyring, action="infra.pools.scrub", object_type="storage_pool",
                 object_id=f"{server.name}/{pool}", outcome="ok", details=details)
    if known is not None:
        scan = _loads(known.scan, {})
        scan.update({"kind": "scrub", "in_progress": True, "requested_at": utcnow().isoformat()})
        known.scan = _dumps(scan)
        session.add(known)
    return f"scrub of {pool} started on {server.name}"
