"""Parse ZFS pool status: ``zpool list -Hp`` and ``zpool status -p``, and judge each pool.

Both commands are read the way OpenZFS (Linux, FreeBSD) and illumos print them, old and new:
``zpool list`` with or without ``-H`` (tab separated, no header) and ``-p`` (exact numbers), with
or without the CKPOINT/EXPANDSZ/FRAG columns; ``zpool status`` with ``scan:`` or the old
``scrub:`` line, logs/cache/spares/special/dedup groups and trailing notes such as
"cannot open" or "was /dev/sdb1". Nothing here raises on bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

PoolHealth = Literal["ok", "warn", "critical"]

CAP_WARN_PERCENT = 80
CAP_CRITICAL_PERCENT = 90

# Device groups of the config tree that are not data vdevs.
AUX_GROUPS = ("logs", "cache", "spares", "special", "dedup")
# States that mean a device is not doing its job.
BAD_DEVICE_STATES = ("DEGRADED", "FAULTED", "OFFLINE", "UNAVAIL", "REMOVED")
CRITICAL_POOL_STATES = ("FAULTED", "UNAVAIL", "SUSPENDED")

_LIST_COLUMNS: dict[int, list[str]] = {
    # zpool list -H column sets by OpenZFS/illumos generation (columns are fixed without -o).
    11: ["name", "size", "alloc", "free", "ckpoint", "expandsz", "frag", "cap", "dedup", "health", "altroot"],
    10: ["name", "size", "alloc", "free", "expandsz", "frag", "cap", "dedup", "health", "altroot"],
    8: ["name", "size", "alloc", "free", "cap", "dedup", "health", "altroot"],
}
_HEADER_ALIASES = {"allocated": "alloc", "capacity": "cap", "fragmentation": "frag",
                   "dedupratio": "dedup", "expandsize": "expandsz", "checkpoint": "ckpoint"}

_SUFFIX = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5,
           "E": 1024**6}
_NUMBER_RE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<suffix>[BKMGTPE]?)$")
_KEY_RE = re.compile(r"^\s*(?P<key>pool|state|status|action|see|scan|scrub|config|errors|remove|"
                     r"checkpoint|expand|id|vdev_rebuild|rebuild)\s*:\s?(?P<value>.*)$")


def _size(token: str) -> int | None:
    """Bytes/counts from "123", "1.5K", "2.00T" (the non -p forms); None for "-" or junk."""
    m = _NUMBER_RE.match(token.strip())
    if not m:
        return None
    try:
        return int(float(m.group("num")) * _SUFFIX[m.group("suffix")])
    except (OverflowError, ValueError):
        return None


def _percent(token: str) -> int | None:
    token = token.strip().rstrip("%")
    return int(token) if token.isdecimal() else None


def _ratio(token: str) -> float | None:
    try:
        return float(token.strip().rstrip("x"))
    except ValueError:
        return None


@dataclass(frozen=True)
class ZpoolListEntry:
    """One pool row of ``zpool list``: sizes in bytes (None for "-"), percents as ints."""

    name: str
    size: int | None
    alloc: int | None
    free: int | None
    frag_percent: int | None
    cap_percent: int | None
    dedup: float | None
    health: str | None


@dataclass
class ZpoolList:
    """All pools of one ``zpool list`` answer, plus notes on skipped lines."""

    pools: list[ZpoolListEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def pool(self, name: str) -> ZpoolListEntry | None:
        return next((p for p in self.pools if p.name == name), None)


def parse_zpool_list(text: str | bytes) -> ZpoolList:
    """Parse ``zpool list [-H] [-p] [-v]`` into a :class:`ZpoolList` (never raises).

    Columns come from the header line when there is one, otherwise from the column count of
    ``-H`` output. Indented rows of ``-v`` (vdevs and devices) are not pools and are skipped.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    result = ZpoolList()
    columns: list[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.strip() in ("no pools available",):
            continue
        if line[:1] in (" ", "\t") and not ("\t" in line.strip()):
            continue  # -v: vdev or device row, or group label under a pool
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if fields and fields[0] == "NAME":
            columns = [_HEADER_ALIASES.get(c.lower(), c.lower()) for c in fields]
            continue
        if fields and fields[0] in AUX_GROUPS and all(f in ("-", "") for f in fields[1:]):
            continue  # "logs  -  -  -" group label in -v output
        cols = columns or _LIST_COLUMNS.get(len(fields))
        if cols is None or len(fields) < len(cols) - 1:
            result.notes.append(f"unparseable zpool list line: {line.strip()[:60]!r}")
            continue
        row = dict(zip(cols, fields))
        if not row.get("name"):
            continue
        result.pools.append(ZpoolListEntry(
            name=row["name"],
            size=_size(row.get("size", "-")),
            alloc=_size(row.get("alloc", "-")),
            free=_size(row.get("free", "-")),
            frag_percent=_percent(row.get("frag", "-")),
            cap_percent=_percent(row.get("cap", "-")),
            dedup=_ratio(row.get("dedup", "-")),
            health=row.get("health") if row.get("health") not in (None, "-") else None,
        ))
    return result


# ---------------------------------------------------------------------------------------------
# zpool status
# ---------------------------------------------------------------------------------------------

@dataclass
class ZfsDevice:
    """One row of the config tree.

    ``kind`` is ``pool`` (the root row), ``vdev`` (mirror-0, raidz1-0, spare-0, ...) or
    ``disk`` (a leaf). ``group`` is ``data`` or the auxiliary group it sits in (logs, cache,
    spares, special, dedup). Counters are None for rows that have none (spares).
    """

    name: str
    state: str | None
    read: int | None
    write: int | None
    cksum: int | None
    depth: int
    group: str = "data"
    kind: str = "disk"
    parent: str | None = None
    note: str = ""

    @property
    def has_errors(self) -> bool:
        return any(c for c in (self.read, self.write, self.cksum))


@dataclass
class ZfsScan:
    """The ``scan:`` line: what ran (scrub/resilver/none), whether it is running, results."""

    kind: str = "none"  # scrub | resilver | rebuild | none | unknown
    in_progress: bool = False
    percent: float | None = None
    finished_at: str | None = None
    repaired: str | None = None
    errors: int | None = None
    canceled: bool = False
    raw: str = ""


@dataclass
class ZpoolStatus:
    """One pool of ``zpool status``."""

    name: str
    state: str | None = None
    status_text: str = ""
    action_text: str = ""
    see: str = ""
    scan: ZfsScan = field(default_factory=ZfsScan)
    devices: list[ZfsDevice] = field(default_factory=list)
    errors_text: str = ""
    error_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def device(self, name: str) -> ZfsDevice | None:
        return next((d for d in self.devices if d.name == name), None)


@dataclass
class ZpoolStatusReport:
    """All pools of one ``zpool status`` answer."""

    pools: list[ZpoolStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def pool(self, name: str) -> ZpoolStatus | None:
        return next((p for p in self.pools if p.name == name), None)


@dataclass(frozen=True)
class ZfsVerdict:
    """Health of one pool: ok | warn | critical, with reasons in words."""

    status: PoolHealth
    reasons: list[str] = field(default_factory=list)


def parse_zpool_status(text: str | bytes) -> ZpoolStatusReport:
    """Parse ``zpool status [-p] [-v]`` (one or many pools) into a :class:`ZpoolStatusReport`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    report = ZpoolStatusReport()
    pool: ZpoolStatus | None = None
    key: str | None = None
    config_lines: list[str] = []
    scan_parts: list[str] = []

    def finish() -> None:
        if pool is None:
            return
        pool.scan = _parse_scan(" ".join(scan_parts))
        _parse_config(config_lines, pool)

    for raw_line in text.splitlines():
        line = raw_line.rstrip()
        m = _KEY_RE.match(line)
        # Inside config:, a device may be called "status" or "scan": only the keys at the
        # left margin (at most a few spaces) end the tree.
        if m and key == "config" and len(line) - len(line.lstrip()) > 6:
            m = None
        if m:
            key, value = m.group("key"), m.group("value").strip()
            if key == "pool":
                finish()
                pool = ZpoolStatus(name=value)
                report.pools.append(pool)
                config_lines, scan_parts = [], []
                continue
            if pool is None:
                report.notes.append(f"{key}: line before any pool: ignored")
                continue
            if key == "state":
                pool.state = value or None
            elif key == "status":
                pool.status_text = value
            elif key == "action":
                pool.action_text = value
            elif key == "see":
                pool.see = value
            elif key in ("scan", "scrub"):
                key = "scan"
                scan_parts = [value]
            elif key == "errors":
                pool.errors_text = value
            continue
        if pool is None:
            if line.strip() and line.strip() != "no pools available":
                report.notes.append(f"line before any pool ignored: {line.strip()[:60]!r}")
            continue
        if key == "config":
            config_lines.append(raw_line)
        elif key == "scan" and line.strip():
            scan_parts.append(line.strip())
        elif key == "status" and line.strip():
            pool.status_text += " " + line.strip()
        elif key == "action" and line.strip():
            pool.action_text += " " + line.strip()
        elif key == "errors" and line.strip():
            pool.error_files.append(line.strip())
    finish()
    if not report.pools and text.strip() and "no pools available" not in text:
        report.notes.append("unparseable zpool status: no 'pool:' line")
    return report


def _parse_scan(text: str) -> ZfsScan:
    scan = ZfsScan(raw=text)
    low = text.lower()
    if not text or low.startswith("none requested") or low == "none":
        return scan
    if "resilver" in low:
        scan.kind = "resilver"
    elif "scrub" in low:
        scan.kind = "scrub"
    elif "rebuil" in low:
        scan.kind = "rebuild"
    else:
        scan.kind = "unknown"
    scan.in_progress = "in progress" in low
    scan.canceled = "canceled" in low or "cancelled" in low
    pm = re.search(r"(\d+(?:\.\d+)?)%\s*done", text)
    if pm:
        scan.percent = float(pm.group(1))
    em = re.search(r"with (\d+) errors?", text)
    if em:
        scan.errors = int(em.group(1))
    rm = re.search(r"(?:repaired|resilvered)\s+(\S+)", text)
    if rm:
        scan.repaired = rm.group(1)
    if not scan.in_progress:
        dm = re.search(r"\bon\s+(\w{3}\s+\w{3}\s+\d{1,2}\s+[\d:]+\s+\d{4})", text)
        if dm:
            scan.finished_at = " ".join(dm.group(1).split())
    return scan


def _counter(token: str) -> int | None:
    return _size(token)


def _parse_config(lines: list[str], pool: ZpoolStatus) -> None:
    """Build the device list from the config block (indentation gives the tree)."""
    base: int | None = None
    group = "data"
    stack: list[tuple[int, ZfsDevice]] = []
    for raw in lines:
        expanded = raw.expandtabs(8)
        if not expanded.strip():
            continue
        indent = len(expanded) - len(expanded.lstrip())
        parts = expanded.split()
        if parts[0] == "NAME" and "STATE" in parts:
            base = indent
            continue
        if base is None:
            base = indent  # header missing (trimmed output): the first row sets the margin
        depth = max(0, (indent - base) // 2)
        name = parts[0]
        if depth == 0 and name in AUX_GROUPS and len(parts) == 1:
            group = name
            stack = []
            continue
        if depth == 0 and name != pool.name and len(parts) == 1:
            pool.notes.append(f"unrecognised config line: {raw.strip()[:60]!r}")
            continue
        state = parts[1] if len(parts) > 1 else None
        counters: list[int | None] = [None, None, None]
        rest_at = 2
        if len(parts) >= 5:
            parsed = [_counter(p) for p in parts[2:5]]
            if all(c is not None for c in parsed):
                counters = parsed
                rest_at = 5
        note = " ".join(parts[rest_at:])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        if depth == 0 and group == "data":
            kind = "pool"
        else:
            kind = "disk"
        device = ZfsDevice(name=name, state=state, read=counters[0], write=counters[1],
                           cksum=counters[2], depth=depth, group=group, kind=kind,
                           parent=parent.name if parent else None, note=note)
        if parent is not None and parent.kind == "disk":
            parent.kind = "vdev"  # it has children, so it is a mirror/raidz/spare-N
        pool.devices.append(device)
        stack.append((depth, device))


def pool_devices(status: ZpoolStatus) -> list[tuple[str, str, tuple[int, int, int]]]:
    """Leaf devices of a pool as ``(name, state, (read, write, cksum))``, for matching with SMART.

    Spares and other rows without counters report ``(0, 0, 0)``; the state is "" if unknown.
    """
    return [(d.name, d.state or "", (d.read or 0, d.write or 0, d.cksum or 0))
            for d in status.devices if d.kind == "disk"]


_RANK: dict[str, int] = {"ok": 0, "warn": 1, "critical": 2}


def judge_pool(status: ZpoolStatus | None = None, listing: ZpoolListEntry | None = None) -> ZfsVerdict:
    """Judge one pool from its ``zpool status`` entry and/or its ``zpool list`` row.

    critical: pool FAULTED/UNAVAIL/SUSPENDED, capacity >= 90 %, or permanent data errors.
    warn: pool DEGRADED, any device with READ/WRITE/CKSUM errors, an unhealthy log, cache or
    spare device, capacity >= 80 %, or a scrub that found errors. Otherwise ok.
    """
    level = ["ok"]
    reasons: list[str] = []
    state = (status.state if status and status.state else None) or (listing.health if listing else None)
    name = status.name if status else (listing.name if listing else "pool")
    if state in CRITICAL_POOL_STATES:
        level.append("critical")
        reasons.append(f"pool {name} is {state}")
    elif state == "DEGRADED":
        level.append("warn")
        reasons.append(f"pool {name} is DEGRADED")
    elif state is None:
        reasons.append(f"pool {name}: state unknown")

    if status is not None:
        for dev in status.devices:
            if dev.kind == "pool":
                continue
            where = f" in {dev.group}" if dev.group != "data" else ""
            if dev.state in BAD_DEVICE_STATES and dev.kind == "disk":
                note = f" ({dev.note})" if dev.note else ""
                reasons.append(f"device {dev.name}{where} is {dev.state}{note}")
                # An unhealthy log/cache/spare leaves the pool ONLINE: flag it ourselves.
                level.append("warn")
            if dev.has_errors:
                level.append("warn")
                reasons.append(f"device {dev.name}{where} errors: READ {dev.read or 0} "
                               f"WRITE {dev.write or 0} CKSUM {dev.cksum or 0}")
        if status.error_files or "permanent errors" in status.errors_text.lower():
            level.append("critical")
            count = len(status.error_files)
            reasons.append(f"permanent data errors{f' in {count} files' if count else ''}")
        scan = status.scan
        if scan.in_progress:
            pct = f" {scan.percent:g}%" if scan.percent is not None else ""
            reasons.append(f"{scan.kind} in progress{pct}")
        elif scan.errors:
            level.append("warn")
            reasons.append(f"last {scan.kind} found {scan.errors} errors")

    if listing is not None and listing.cap_percent is not None:
        if listing.cap_percent >= CAP_CRITICAL_PERCENT:
            level.append("critical")
            reasons.append(f"pool {name} is {listing.cap_percent}% full")
        elif listing.cap_percent >= CAP_WARN_PERCENT:
            level.append("warn")
            reasons.append(f"pool {name} is {listing.cap_percent}% full")

    worst = max(level, key=lambda s: _RANK[s])
    return ZfsVerdict(worst, reasons)  # type: ignore[arg-type]
