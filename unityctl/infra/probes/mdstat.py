"""Parse Linux software RAID status: ``/proc/mdstat`` and ``mdadm --detail``.

``/proc/mdstat`` looks like::

    Personalities : [raid1] [raid6] [raid5] [raid4]
    md127 : active raid5 sdh1[6] sdg1[4] sdf1[3](F) sde1[2] sdd1[1] sdc1[0](S)
          1464725760 blocks level 5, 64k chunk, algorithm 2 [6/5] [UUUUU_]
          [==>..................]  recovery = 12.6% (37043392/292945152) finish=127.5min speed=33440K/sec
          bitmap: 0/30 pages [0KB], 65536KB chunk

    unused devices: <none>

Lines are recognised by their content, not their indentation: some NAS kernels print the
detail lines flush left. Nothing here raises on bad input; the report's ``notes`` say what was
skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

ArrayHealth = Literal["ok", "degraded", "failed", "rebuilding", "inactive"]

LEVELS = ("linear", "multipath", "raid0", "raid1", "raid4", "raid5", "raid6", "raid10", "faulty")
SYNC_ACTIONS = ("recovery", "resync", "check", "reshape", "repair")

# member: name[index] followed by any of (F) failed, (S) spare, (W) write-mostly,
# (R) replacement, (J) journal.
_MEMBER_RE = re.compile(r"^(?P<name>[^\s\[\]]+)\[(?P<index>\d+)\](?P<flags>(?:\([A-Z]\))*)$")
_ARRAY_RE = re.compile(r"^(?P<name>md[\w\-/.]*|[\w\-]+)\s+:\s+(?P<state>active|inactive)\b(?P<rest>.*)$")
_COUNTS_RE = re.compile(r"\[(?P<n>\d+)/(?P<m>\d+)\]")
_MAP_RE = re.compile(r"\[(?P<map>[U_]+)\]")
_BLOCKS_RE = re.compile(r"^(?P<blocks>\d+)\s+blocks\b")
_SUPER_RE = re.compile(r"\bsuper\s+(?P<super>\S+)")
_CHUNK_RE = re.compile(r"(?P<chunk>\d+[kKmM])\s+chunks?\b")
_PROGRESS_RE = re.compile(
    r"(?P<action>recovery|resync|check|reshape|repair)\s*=\s*(?P<pct>\d+(?:\.\d+)?)%"
    r"(?:\s*\((?P<done>\d+)/(?P<total>\d+)\))?"
    r"(?:\s*finish\s*=\s*(?P<finish>\S+))?(?:\s*speed\s*=\s*(?P<speed>\S+))?")
_WAITING_RE = re.compile(r"(?P<action>recovery|resync|check|reshape|repair)\s*=\s*(?P<what>DELAYED|PENDING)")
_BITMAP_RE = re.compile(r"^bitmap:\s*(?P<text>.*)$")


@dataclass(frozen=True)
class MdMember:
    """One member device of an array: name, role index and flags (letters of F/S/W/R/J)."""

    name: str
    index: int
    flags: str = ""

    @property
    def failed(self) -> bool:
        return "F" in self.flags

    @property
    def spare(self) -> bool:
        return "S" in self.flags

    @property
    def write_mostly(self) -> bool:
        return "W" in self.flags

    @property
    def replacement(self) -> bool:
        return "R" in self.flags


@dataclass
class MdArray:
    """One md array as /proc/mdstat describes it.

    ``raid_disks``/``active_disks`` come from ``[n/m]`` and ``status_map`` from ``[UU_]``;
    raid0/linear print neither, so they stay None/"". ``sync_action`` is the running (or
    waiting, see ``sync_waiting``: DELAYED/PENDING) operation; ``sync_progress`` its percent.
    """

    name: str
    state: str  # active | inactive
    level: str | None = None
    read_only: str | None = None  # "read-only" | "auto-read-only"
    members: list[MdMember] = field(default_factory=list)
    blocks: int | None = None
    superblock: str | None = None
    chunk: str | None = None
    raid_disks: int | None = None
    active_disks: int | None = None
    status_map: str = ""
    sync_action: str | None = None
    sync_progress: float | None = None
    sync_finish: str | None = None
    sync_speed: str | None = None
    sync_waiting: str | None = None
    bitmap: str | None = None

    @property
    def degraded(self) -> bool:
        """Fewer working members than the array is built for."""
        if self.raid_disks is not None and self.active_disks is not None:
            if self.active_disks < self.raid_disks:
                return True
        return "_" in self.status_map

    @property
    def missing(self) -> int:
        """How many of the array's slots have no working member."""
        # [n/m] is authoritative: during a reshape that adds a disk the map can show more "_"
        # than there are missing members.
        if self.raid_disks is not None and self.active_disks is not None:
            return max(self.raid_disks - self.active_disks, 0)
        return self.status_map.count("_")

    @property
    def failed_members(self) -> list[MdMember]:
        return [m for m in self.members if m.failed]

    @property
    def spare_members(self) -> list[MdMember]:
        return [m for m in self.members if m.spare]


@dataclass
class MdstatReport:
    """All arrays of one /proc/mdstat, the personalities line and the unused-devices line."""

    personalities: list[str] = field(default_factory=list)
    arrays: list[MdArray] = field(default_factory=list)
    unused_devices: str | None = None
    notes: list[str] = field(default_factory=list)

    def array(self, name: str) -> MdArray | None:
        """The array called ``name`` (e.g. ``md0``), or None."""
        return next((a for a in self.arrays if a.name == name), None)


@dataclass(frozen=True)
class MdVerdict:
    """Health of one array: ok | degraded | failed | rebuilding | inactive, with reasons."""

    status: ArrayHealth
    reasons: list[str] = field(default_factory=list)


def parse_mdstat(text: str | bytes) -> MdstatReport:
    """Parse the text of /proc/mdstat into an :class:`MdstatReport` (never raises)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    report = MdstatReport()
    current: MdArray | None = None
    saw_personalities = False
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        if line.startswith("Personalities"):
            saw_personalities = True
            report.personalities = re.findall(r"\[([^\]]+)\]", line)
            current = None
            continue
        if line.startswith("unused devices"):
            report.unused_devices = line.partition(":")[2].strip() or None
            current = None
            continue
        if line.startswith("read_ahead") or line.startswith("Event:"):
            continue
        m = _ARRAY_RE.match(line)
        if m:
            current = _parse_array_line(m, report)
            report.arrays.append(current)
            continue
        if current is None:
            report.notes.append(f"line outside any array ignored: {line[:60]!r}")
            continue
        if not _parse_detail_line(line, current):
            report.notes.append(f"{current.name}: unrecognised line {line[:60]!r}")
    if not saw_personalities and not report.arrays:
        report.notes.append("unparseable mdstat: no Personalities line and no arrays")
    return report


def _parse_array_line(m: re.Match[str], report: MdstatReport) -> MdArray:
    array = MdArray(name=m.group("name"), state=m.group("state"))
    for token in m.group("rest").split():
        if token in ("(read-only)", "(auto-read-only)"):
            array.read_only = token.strip("()")
        elif token in LEVELS:
            array.level = token
        else:
            mm = _MEMBER_RE.match(token)
            if mm:
                flags = "".join(re.findall(r"\(([A-Z])\)", mm.group("flags")))
                array.members.append(MdMember(mm.group("name"), int(mm.group("index")), flags))
            else:
                report.notes.append(f"{array.name}: unrecognised token {token[:40]!r}")
    return array


def _parse_detail_line(line: str, array: MdArray) -> bool:
    """Fill ``array`` from one detail line; False when the line meant nothing to us."""
    known = False
    bm = _BLOCKS_RE.match(line)
    if bm:
        known = True
        array.blocks = int(bm.group("blocks"))
        sm = _SUPER_RE.search(line)
        if sm:
            array.superblock = sm.group("super")
        cm = _CHUNK_RE.search(line)
        if cm:
            array.chunk = cm.group("chunk")
        counts = _COUNTS_RE.search(line)
        if counts:
            array.raid_disks, array.active_disks = int(counts.group("n")), int(counts.group("m"))
        smap = _MAP_RE.search(line)
        if smap:
            array.status_map = smap.group("map")
        lm = re.search(r"\blevel\s+(\d+)", line)
        if lm and array.level is None:
            array.level = f"raid{lm.group(1)}"
    pm = _PROGRESS_RE.search(line)
    if pm:
        known = True
        array.sync_action = pm.group("action")
        array.sync_progress = float(pm.group("pct"))
        array.sync_finish = pm.group("finish")
        array.sync_speed = pm.group("speed")
    wm = _WAITING_RE.search(line)
    if wm:
        known = True
        array.sync_action = wm.group("action")
        array.sync_waiting = wm.group("what")
    bmp = _BITMAP_RE.match(line)
    if bmp:
        known = True
        array.bitmap = bmp.group("text").strip()
    return known


def _raid10_lost_pair(status_map: str) -> bool:
    """With the default near=2 layout, a raid10 dies when both copies (adjacent slots) are gone."""
    return any(status_map[i:i + 2] == "__" for i in range(0, len(status_map) - 1, 2))


def judge_array(array: MdArray) -> MdVerdict:
    """Judge one array.

    inactive: not running. failed: more members lost than the level tolerates (any for raid0 or
    linear). rebuilding: recovery/resync/reshape under way (or waiting). degraded: missing
    members with no rebuild, or a failed member still listed. ok otherwise (a running "check"
    is mentioned but not a problem).
    """
    reasons: list[str] = []
    failed_names = ", ".join(m.name for m in array.failed_members)
    if array.state == "inactive":
        reasons.append(f"{array.name} is inactive (not assembled or not started)")
        if failed_names:
            reasons.append(f"failed members: {failed_names}")
        return MdVerdict("inactive", reasons)

    level = array.level or ""
    missing = array.missing
    tolerated = {"raid1": (array.raid_disks or 1) - 1, "raid4": 1, "raid5": 1, "raid6": 2,
                 "raid10": 1, "multipath": (array.raid_disks or 1) - 1}.get(level)
    if level in ("raid0", "linear"):
        if array.failed_members or missing:
            reasons.append(f"{level} has no redundancy and lost a member"
                           + (f": {failed_names}" if failed_names else ""))
            return MdVerdict("failed", reasons)
    elif tolerated is not None and missing > 0:
        lost = missing > tolerated and not (level == "raid10" and not _raid10_lost_pair(array.status_map))
        if lost or (array.active_disks == 0):
            reasons.append(f"{array.name} {level} lost {missing} of {array.raid_disks} members "
                           f"(tolerates {tolerated})")
            return MdVerdict("failed", reasons)

    if array.degraded:
        reasons.append(f"{array.name} degraded: {array.active_disks} of {array.raid_disks} members "
                       f"working [{array.status_map}]")
    if failed_names:
        reasons.append(f"failed members: {failed_names}")

    if array.sync_action in ("recovery", "resync", "reshape", "repair"):
        if array.sync_waiting:
            reasons.append(f"{array.sync_action} {array.sync_waiting}")
        else:
            text = f"{array.sync_action} {array.sync_progress:g}%"
            if array.sync_finish:
                text += f", finish in {array.sync_finish}"
            if array.sync_speed:
                text += f" at {array.sync_speed}"
            reasons.append(text)
        return MdVerdict("rebuilding", reasons)
    if array.sync_action == "check":
        reasons.append(f"check {array.sync_waiting or f'{array.sync_progress:g}%'}")

    if array.degraded or failed_names:
        return MdVerdict("degraded", reasons)
    return MdVerdict("ok", reasons)


# ---------------------------------------------------------------------------------------------
# mdadm --detail
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MdadmDevice:
    """One row of the device table at the end of ``mdadm --detail``."""

    number: int | None
    raid_device: int | None
    state: str  # e.g. "active sync", "spare", "faulty", "removed", "spare rebuilding"
    path: str | None


@dataclass
class MdadmDetail:
    """The fields of ``mdadm --detail /dev/mdN`` that unityctl uses."""

    device: str | None = None
    level: str | None = None
    state: str | None = None
    raid_devices: int | None = None
    active_devices: int | None = None
    working_devices: int | None = None
    failed_devices: int | None = None
    spare_devices: int | None = None
    rebuild_percent: int | None = None
    devices: list[MdadmDevice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def state_flags(self) -> list[str]:
        """The comma-separated words of ``State :`` (e.g. ["clean", "degraded"])."""
        return [w.strip() for w in (self.state or "").split(",") if w.strip()]


_DETAIL_INT_FIELDS = {
    "Raid Devices": "raid_devices", "Active Devices": "active_devices",
    "Working Devices": "working_devices", "Failed Devices": "failed_devices",
    "Spare Devices": "spare_devices",
}


def parse_mdadm_detail(text: str | bytes) -> MdadmDetail:
    """Parse ``mdadm --detail`` output into an :class:`MdadmDetail` (never raises)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    detail = MdadmDetail()
    in_table = False
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        if detail.device is None and line.startswith("/dev/") and line.endswith(":"):
            detail.device = line[:-1]
            continue
        if line.startswith("Number") and "RaidDevice" in line:
            in_table = True
            continue
        if in_table:
            row = _parse_device_row(line)
            if row is not None:
                detail.devices.append(row)
            continue
        key, sep, value = line.partition(" : ")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Raid Level":
            detail.level = value
        elif key == "State":
            detail.state = value
        elif key == "Rebuild Status":
            m = re.match(r"(\d+)%", value)
            detail.rebuild_percent = int(m.group(1)) if m else None
        elif key in _DETAIL_INT_FIELDS:
            try:
                setattr(detail, _DETAIL_INT_FIELDS[key], int(value.split()[0]))
            except (ValueError, IndexError):
                detail.notes.append(f"{key} is not a number: {value[:30]!r}")
    if detail.state is None and not detail.devices:
        detail.notes.append("unparseable mdadm --detail output: no State line")
    return detail


def _parse_device_row(line: str) -> MdadmDevice | None:
    parts = line.split()
    if len(parts) < 5:
        return None

    def num(token: str) -> int | None:
        return int(token) if token.isdecimal() else None

    path = parts[-1] if parts[-1].startswith("/") else None
    state_words = parts[4:-1] if path else parts[4:]
    return MdadmDevice(num(parts[0]), num(parts[3]), " ".join(state_words), path)
