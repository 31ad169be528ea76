"""Parse the system sections of a collection, and the whole collection into one report.

Each ``parse_*`` function takes the text of one section of ``collect.sh`` output (which is the
plain output of a file or command: /etc/os-release, ``uname -srm``, /proc/uptime, ...) and
returns a small dataclass with ``notes`` for anything it could not read. None of them raise.

:func:`parse_collection` splits the whole output (see ``sections.py``), runs every parser
(system, SMART, mdstat, ZFS) and gathers per-section notes: a missing tool, a missing
privilege (with the sudoers line that fixes it), or a section that could not be parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from unityctl.infra.probes import mdstat as md
from unityctl.infra.probes import smart as sm
from unityctl.infra.probes import zfs as zf
from unityctl.infra.probes.sections import (
    STATUS_ABSENT,
    STATUS_NEEDS_ROOT,
    STATUS_NOT_INSTALLED,
    Section,
    split_sections,
)

# Filesystems that hold no user data: they are still listed, with ``pseudo=True``, so that a
# caller can show them on request but never alert on a full /run or a 100 % full snap image.
PSEUDO_FS_TYPES = frozenset({
    "tmpfs", "devtmpfs", "overlay", "proc", "sysfs", "squashfs", "devpts", "cgroup", "cgroup2",
    "ramfs", "efivarfs", "nsfs", "autofs", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
    "configfs", "hugetlbfs", "mqueue", "fusectl", "binfmt_misc", "rpc_pipefs", "nfsd",
    "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal", "iso9660", "udf",
})
PSEUDO_SOURCES = frozenset({"tmpfs", "devtmpfs", "overlay", "proc", "udev", "none", "shm", "run",
                            "sysfs", "cgroup", "cgroup2", "overlayfs", "squashfs", "efivarfs"})


# ---------------------------------------------------------------------------------------------
# one parser per system section
# ---------------------------------------------------------------------------------------------

@dataclass
class OsRelease:
    """The os-release fields unityctl shows; every key/value is also kept in ``fields``."""

    id: str | None = None
    name: str | None = None
    pretty_name: str | None = None
    version_id: str | None = None
    version_codename: str | None = None
    id_like: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


_OS_LINE_RE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def _unquote(value: str) -> str:
    """os-release values follow shell quoting: strip one level of quotes and \\-escapes."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
        if value and value[0] != "'":
            value = re.sub(r"\\(.)", r"\1", value)
    return value


def parse_os_release(text: str) -> OsRelease:
    """Parse /etc/os-release (KEY=value lines; comments and junk lines are skipped)."""
    result = OsRelease()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _OS_LINE_RE.match(line)
        if m:
            result.fields[m.group(1)] = _unquote(m.group(2))
    f = result.fields
    result.id = f.get("ID")
    result.name = f.get("NAME")
    result.pretty_name = f.get("PRETTY_NAME")
    result.version_id = f.get("VERSION_ID")
    result.version_codename = f.get("VERSION_CODENAME")
    result.id_like = f.get("ID_LIKE", "").split()
    if not f:
        result.notes.append("unparseable os-release: no KEY=value lines")
    return result


@dataclass
class Kernel:
    """``uname -srm``: kernel name (Linux), release (6.1.0-18-amd64) and machine (x86_64)."""

    name: str | None = None
    release: str | None = None
    machine: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_uname(text: str) -> Kernel:
    """Parse ``uname -srm`` (or the two-line /proc/sys/kernel fallback, which has no machine)."""
    parts = text.split()
    if len(parts) < 2:
        return Kernel(notes=["unparseable uname: expected 'NAME RELEASE MACHINE'"])
    return Kernel(parts[0], parts[1], parts[2] if len(parts) > 2 else None)


@dataclass
class Uptime:
    """/proc/uptime: seconds since boot and summed idle seconds of all CPUs."""

    seconds: float | None = None
    idle_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def _float(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def parse_uptime(text: str) -> Uptime:
    """Parse /proc/uptime ("12345.67 23456.78")."""
    parts = text.split()
    seconds = _float(parts[0]) if parts else None
    if seconds is None or seconds < 0:
        return Uptime(notes=["unparseable uptime: expected seconds since boot"])
    return Uptime(seconds, _float(parts[1]) if len(parts) > 1 else None)


@dataclass
class CpuCount:
    """Number of online CPUs."""

    count: int | None = None
    notes: list[str] = field(default_factory=list)


def parse_cpu_count(text: str) -> CpuCount:
    """Parse the cpu_count section (one integer)."""
    token = text.strip().split()[0] if text.strip() else ""
    if token.isdecimal() and int(token) > 0:
        return CpuCount(int(token))
    return CpuCount(notes=["unparseable cpu count: expected a positive integer"])


@dataclass
class LoadAvg:
    """/proc/loadavg: 1/5/15-minute load, runnable/total scheduling entities."""

    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    running: int | None = None
    total: int | None = None
    notes: list[str] = field(default_factory=list)


def parse_loadavg(text: str) -> LoadAvg:
    """Parse /proc/loadavg ("0.02 0.06 0.05 2/150 9211")."""
    parts = text.split()
    loads = [_float(p) for p in parts[:3]]
    if len(loads) < 3 or any(x is None for x in loads):
        return LoadAvg(notes=["unparseable loadavg: expected three load averages"])
    result = LoadAvg(loads[0], loads[1], loads[2])
    if len(parts) > 3:
        m = re.match(r"^(\d+)/(\d+)$", parts[3])
        if m:
            result.running, result.total = int(m.group(1)), int(m.group(2))
    return result


@dataclass
class MemInfo:
    """/proc/meminfo in KiB, with derived used/percent values.

    ``available_kb`` is MemAvailable (or MemFree+Buffers+Cached on kernels before 3.14);
    ``used_kb`` = total - available.
    """

    total_kb: int | None = None
    free_kb: int | None = None
    available_kb: int | None = None
    used_kb: int | None = None
    used_percent: float | None = None
    swap_total_kb: int | None = None
    swap_free_kb: int | None = None
    swap_used_kb: int | None = None
    swap_used_percent: float | None = None
    values: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


_MEMINFO_RE = re.compile(r"^([\w()]+):\s+(\d+)(?:\s+kB)?\s*$")


def parse_meminfo(text: str) -> MemInfo:
    """Parse /proc/meminfo ("MemTotal:  24684096 kB" lines)."""
    result = MemInfo()
    for line in text.splitlines():
        m = _MEMINFO_RE.match(line.strip())
        if m:
            result.values[m.group(1)] = int(m.group(2))
    v = result.values
    result.total_kb = v.get("MemTotal")
    result.free_kb = v.get("MemFree")
    if "MemAvailable" in v:
        result.available_kb = v["MemAvailable"]
    elif result.free_kb is not None:
        result.available_kb = result.free_kb + v.get("Buffers", 0) + v.get("Cached", 0)
    if not result.total_kb:
        result.notes.append("unparseable meminfo: no MemTotal")
        return result
    if result.available_kb is not None:
        result.used_kb = max(0, result.total_kb - result.available_kb)
        result.used_percent = round(100.0 * result.used_kb / result.total_kb, 1)
    result.swap_total_kb = v.get("SwapTotal")
    result.swap_free_kb = v.get("SwapFree")
    if result.swap_total_kb is not None and result.swap_free_kb is not None:
        result.swap_used_kb = max(0, result.swap_total_kb - result.swap_free_kb)
        if result.swap_total_kb > 0:
            result.swap_used_percent = round(100.0 * result.swap_used_kb / result.swap_total_kb, 1)
    return result


@dataclass(frozen=True)
class Filesystem:
    """One ``df -P -k`` row, sizes in KiB. ``pseudo`` marks tmpfs/overlay/squashfs and the like."""

    source: str
    mount: str
    fs_type: str | None
    size_kb: int
    used_kb: int
    avail_kb: int
    use_percent: int | None
    pseudo: bool


@dataclass
class DiskUsage:
    """All filesystems of ``df -P -k``."""

    filesystems: list[Filesystem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def real(self) -> list[Filesystem]:
        """Filesystems that hold data (pseudo ones left out)."""
        return [f for f in self.filesystems if not f.pseudo]

    def at(self, mount: str) -> Filesystem | None:
        return next((f for f in self.filesystems if f.mount == mount), None)


def _unescape_mount(path: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def parse_mounts(text: str) -> dict[str, str]:
    """Parse /proc/mounts into ``{mount_point: fs_type}`` (the last mount on a path wins)."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            types[_unescape_mount(parts[1])] = parts[2]
    return types


def parse_df(text: str, mounts_text: str | None = None) -> DiskUsage:
    """Parse ``df -P -k``; with /proc/mounts text the filesystem types are filled in too."""
    result = DiskUsage()
    types = parse_mounts(mounts_text) if mounts_text else {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] == "Filesystem":
            continue
        # The mount point is the rest of the line after five fields (it may hold spaces).
        if len(parts) < 6 or not all(p.isdecimal() for p in parts[1:4]):
            if line.strip().startswith("df:"):
                result.notes.append(line.strip()[:100])  # e.g. "df: /mnt/nfs: Stale file handle"
            else:
                result.notes.append(f"unparseable df line: {line.strip()[:60]!r}")
            continue
        source = parts[0]
        mount = " ".join(parts[5:])
        fs_type = types.get(mount)
        pct = parts[4].rstrip("%")
        size = int(parts[1])
        pseudo = (fs_type in PSEUDO_FS_TYPES if fs_type else False) or source in PSEUDO_SOURCES \
            or (source.startswith("/dev/loop") and mount.startswith("/snap/"))
        result.filesystems.append(Filesystem(source, mount, fs_type, size, int(parts[2]),
                                             int(parts[3]), int(pct) if pct.isdecimal() else None,
                                             pseudo))
    if not result.filesystems and not result.notes:
        result.notes.append("unparseable df: no filesystem rows")
    return result


# ---------------------------------------------------------------------------------------------
# the whole collection
# ---------------------------------------------------------------------------------------------

@dataclass
class CollectionReport:
    """Everything parsed from one run of ``collect.sh``.

    ``section_status`` maps each section name to its collection status (ok, not-installed,
    needs-root, absent). ``smart`` is keyed by device (the section name without ``smart:``),
    ``mdadm`` by array name. ``sockets_raw``/``processes_raw`` are left to ``sockets.py``.
    ``notes`` explain every section that is missing, refused or unparseable.
    """

    meta: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    section_status: dict[str, str] = field(default_factory=dict)
    section_rc: dict[str, int | None] = field(default_factory=dict)
    os_release: OsRelease | None = None
    kernel: Kernel | None = None
    uptime: Uptime | None = None
    cpu: CpuCount | None = None
    loadavg: LoadAvg | None = None
    memory: MemInfo | None = None
    disks: DiskUsage | None = None
    mdstat: md.MdstatReport | None = None
    mdadm: dict[str, md.MdadmDetail] = field(default_factory=dict)
    smart_scan: list[sm.ScanDevice] = field(default_factory=list)
    smart: dict[str, sm.SmartReport] = field(default_factory=dict)
    zpool_list: zf.ZpoolList | None = None
    zpool_status: zf.ZpoolStatusReport | None = None
    sockets_raw: str | None = None
    processes_raw: str | None = None
    db_versions_raw: str | None = None
    notes: list[str] = field(default_factory=list)


def _add_notes(report: CollectionReport, section: str, notes: list[str]) -> None:
    for note in notes:
        if note.startswith("unparseable"):
            reason = note.split(":", 1)[1].strip() if ":" in note else note
            report.notes.append(f"unparseable section {section}: {reason}")
        else:
            report.notes.append(f"{section}: {note}")


def _sudoers_note(report: CollectionReport, refused: list[Section]) -> None:
    bins = sorted({s.attrs["bin"] for s in refused if s.attrs.get("bin")})
    user = report.meta.get("user") or "USER"
    names = ", ".join(s.name for s in refused)
    if bins:
        report.notes.append(f"needs root for {names}: add this sudoers line: "
                            f"{user} ALL=(root) NOPASSWD: {', '.join(bins)}")
    else:
        report.notes.append(f"needs root for {names}")


def parse_collection(text: str | bytes) -> CollectionReport:
    """Parse the whole output of ``collect.sh`` into a :class:`CollectionReport`.

    Never raises: sections that are missing, refused or unparseable leave their field None (or
    empty) and add a note in words.
    """
    split = split_sections(text)
    report = CollectionReport(meta=dict(split.meta), complete=split.complete)
    report.notes.extend(split.notes)
    refused: list[Section] = []
    secs = split.sections

    for name, sec in secs.items():
        report.section_status[name] = sec.status
        report.section_rc[name] = sec.rc
        if sec.status == STATUS_NOT_INSTALLED:
            tool = sec.attrs.get("tool") or name
            if not any(n == f"{tool} not installed" for n in report.notes):
                report.notes.append(f"{tool} not installed")
        elif sec.status == STATUS_NEEDS_ROOT:
            refused.append(sec)
        elif sec.status == STATUS_ABSENT and name != "mdstat":
            # No /proc/mdstat just means no md driver: normal, not worth a note.
            report.notes.append(f"{name}: not present on this machine")
    if refused:
        _sudoers_note(report, refused)

    def usable(name: str) -> Section | None:
        sec = secs.get(name)
        return sec if sec is not None and sec.ran else None

    if (sec := usable("os_release")) is not None:
        report.os_release = parse_os_release(sec.text)
        _add_notes(report, "os_release", report.os_release.notes)
    if (sec := usable("uname")) is not None:
        report.kernel = parse_uname(sec.text)
        _add_notes(report, "uname", report.kernel.notes)
    if (sec := usable("uptime")) is not None:
        report.uptime = parse_uptime(sec.text)
        _add_notes(report, "uptime", report.uptime.notes)
    if (sec := usable("cpu_count")) is not None:
        report.cpu = parse_cpu_count(sec.text)
        _add_notes(report, "cpu_count", report.cpu.notes)
    if (sec := usable("loadavg")) is not None:
        report.loadavg = parse_loadavg(sec.text)
        _add_notes(report, "loadavg", report.loadavg.notes)
    if (sec := usable("meminfo")) is not None:
        report.memory = parse_meminfo(sec.text)
        _add_notes(report, "meminfo", report.memory.notes)
    if (sec := usable("df")) is not None:
        mounts = usable("mounts")
        report.disks = parse_df(sec.text, mounts.text if mounts else None)
        _add_notes(report, "df", report.disks.notes)

    if (sec := usable("mdstat")) is not None:
        report.mdstat = md.parse_mdstat(sec.text)
        _add_notes(report, "mdstat", report.mdstat.notes)
    if (sec := usable("smart_scan")) is not None:
        report.smart_scan, scan_notes = sm.parse_scan(sec.text)
        _add_notes(report, "smart_scan", scan_notes)
    if (sec := usable("zpool_list")) is not None and not _zfs_unavailable(sec, report):
        report.zpool_list = zf.parse_zpool_list(sec.text)
        _add_notes(report, "zpool_list", report.zpool_list.notes)
    if (sec := usable("zpool_status")) is not None and not _zfs_unavailable(sec, report):
        report.zpool_status = zf.parse_zpool_status(sec.text)
        _add_notes(report, "zpool_status", report.zpool_status.notes)

    for name, sec in secs.items():
        if not sec.ran:
            continue
        if name.startswith("smart:"):
            parsed = sm.parse_smart(sec.text)
            report.smart[name[len("smart:"):]] = parsed
            _add_notes(report, name, parsed.notes)
        elif name.startswith("mdadm_detail:"):
            detail = md.parse_mdadm_detail(sec.text)
            report.mdadm[name[len("mdadm_detail:"):]] = detail
            _add_notes(report, name, detail.notes)

    if (sec := secs.get("sockets")) is not None and sec.ran:
        report.sockets_raw = sec.text
    if (sec := secs.get("processes")) is not None and sec.ran:
        report.processes_raw = sec.text
    if (sec := secs.get("db_versions")) is not None and sec.ran:
        report.db_versions_raw = sec.text
    return report


def _zfs_unavailable(sec: Section, report: CollectionReport) -> bool:
    """zpool is installed but the kernel module is not loaded: a state, not a parse error."""
    if sec.rc and "modules are not loaded" in sec.text.lower():
        note = "zfs kernel modules not loaded"
        if note not in report.notes:
            report.notes.append(note)
        return True
    return False
