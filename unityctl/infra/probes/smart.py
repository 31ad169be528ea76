"""Parse smartctl JSON output and judge a drive's health.

Inputs are the JSON documents smartctl writes with ``-j`` (``-x -j``, ``-a -j``, ``-jH``,
``-jA``, ``--info -j``, ``--scan -j``) for ATA/SATA, NVMe and SCSI/SAS devices. Parsing never
raises: malformed input gives a :class:`SmartReport` whose ``notes`` say what was wrong.

:func:`judge` turns a report (plus an optional accepted baseline) into a :class:`Verdict`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["passed", "warn", "failed", "standby", "unknown"]

# smartctl(8) "RETURN VALUES": the exit status is a bit mask.
EXIT_BITS: dict[int, str] = {
    0: "command line did not parse",
    1: "device open failed, or device is in a low-power mode",
    2: "a SMART or ATA command to the disk failed, or a SMART data checksum error",
    3: "SMART status check returned DISK FAILING",
    4: "prefail attributes at or below threshold",
    5: "some attributes were at or below threshold in the past",
    6: "the device error log contains records of errors",
    7: "the device self-test log contains records of errors",
}

# NVMe "critical warning" byte of the SMART/Health log page (NVMe base spec, Figure "SMART /
# Health Information Log"). Bit 1 (temperature) is a warning; the others mean the drive is
# unreliable or read-only.
NVME_CRITICAL_BITS: dict[int, str] = {
    0: "available spare below threshold",
    1: "temperature above or below threshold",
    2: "NVM subsystem reliability degraded",
    3: "media placed in read-only mode",
    4: "volatile memory backup device failed",
    5: "persistent memory region unreliable",
}


@dataclass(frozen=True)
class AtaThreshold:
    """When a raw counter of a critical ATA attribute becomes worrying.

    ``warn_at``/``fail_at``: raw value from which the verdict is warn/failed (``None`` = never).
    ``hdd_only``: the attribute means something else on many SSDs, so only judge spinning disks.
    ``hint``: words appended to the reason.
    """

    name: str
    warn_at: int | None
    fail_at: int | None
    hdd_only: bool = False
    hint: str = ""


# Critical ATA attributes and our thresholds.
#
# Why these: Backblaze's public drive-stats analyses ("What SMART Stats Tell Us About Hard
# Drives", 2016, and the yearly drive-stats posts) found that the raw counters of SMART 5, 187,
# 188, 197 and 198 are zero on nearly all working drives and non-zero on a large share of failed
# ones; the annualised failure rate climbs steeply with the first few reallocated/pending
# sectors and keeps climbing with the count. Scrutiny turns the same data into per-value failure
# rates; we keep the idea (any non-zero media counter is worth a look, large counts mean replace)
# with a deliberately small table of our own:
#   * 5/197/198 (reallocated, pending and uncorrectable sectors): media damage. Any non-zero
#     raw -> warn; past a few dozen (197/198) or a hundred (5) remaps the drive is consuming its
#     spares fast -> failed.
#   * 196 (reallocation events): counts remap attempts, and some vendors pack other counters
#     into it; Backblaze did not find it predictive on its own -> warn only (5 judges the damage).
#   * 187 (uncorrectable errors reported to the host): data was lost at least once -> warn;
#     repeated -> failed.
#   * 188 (command timeouts): small numbers are common after power events and cable jiggles,
#     so only a sustained count warns and only a large one fails.
#   * 10 (spin retries) and 201 (soft read errors): HDD mechanics; vendors reuse the ids for
#     unrelated counters on SSDs, so they are judged on rotating drives only.
#   * 184 (end-to-end errors): the drive's internal data path corrupted data: warn at once.
#   * 199 (UDMA CRC errors): link/cable problems, not media -> warn only, never failed.
ATA_CRITICAL: dict[int, AtaThreshold] = {
    5: AtaThreshold("Reallocated_Sector_Ct", 1, 100),
    10: AtaThreshold("Spin_Retry_Count", 1, 10, hdd_only=True),
    184: AtaThreshold("End-to-End_Error", 1, 5),
    187: AtaThreshold("Reported_Uncorrect", 1, 10),
    188: AtaThreshold("Command_Timeout", 10, 100),
    196: AtaThreshold("Reallocated_Event_Count", 1, None),
    197: AtaThreshold("Current_Pending_Sector", 1, 10),
    198: AtaThreshold("Offline_Uncorrectable", 1, 10),
    199: AtaThreshold("UDMA_CRC_Error_Count", 1, None, hint="check the cable"),
    201: AtaThreshold("Soft_Read_Error_Rate", 1, 100, hdd_only=True),
}

_LEADING_INT = re.compile(r"^\s*(\d{1,20})(?:\s|$|h\+)")

HDD_TEMP_WARN_C = 55
SSD_TEMP_WARN_C = 70  # NVMe and SATA SSDs run hotter by design
NVME_USED_WARN_PERCENT = 90
NVME_USED_FAIL_PERCENT = 100
SCSI_DEFECTS_FAIL = 100


@dataclass(frozen=True)
class ScanDevice:
    """One device from ``smartctl --scan -j``: path, ``-d`` type, protocol and display name."""

    name: str
    type: str | None
    protocol: str | None
    info_name: str | None


@dataclass(frozen=True)
class SmartAttribute:
    """One row of the ATA SMART attribute table."""

    id: int
    name: str
    value: int | None
    worst: int | None
    thresh: int | None
    raw: int | None
    raw_string: str
    when_failed: str  # "" | "now" | "past"
    prefailure: bool = False


@dataclass(frozen=True)
class NvmeHealth:
    """The NVMe SMART/Health information log page (the fields unityctl judges or shows)."""

    critical_warning: int | None = None
    temperature: int | None = None
    available_spare: int | None = None
    available_spare_threshold: int | None = None
    percentage_used: int | None = None
    media_errors: int | None = None
    num_err_log_entries: int | None = None
    unsafe_shutdowns: int | None = None
    power_on_hours: int | None = None
    data_units_read: int | None = None
    data_units_written: int | None = None


@dataclass
class SmartReport:
    """Everything unityctl keeps from one smartctl JSON answer.

    ``kind`` is ``ata``, ``nvme``, ``scsi`` or ``unknown`` (from the device protocol).
    ``rotation_rpm`` is 0 for solid-state drives, None when not reported.
    ``smart_passed`` is the drive's own overall-health self-assessment (None when absent).
    ``standby`` is True when smartctl did not wake the drive (``--nocheck=standby``).
    """

    device: str | None = None
    device_type: str | None = None
    protocol: str | None = None
    kind: str = "unknown"
    model: str | None = None
    serial: str | None = None
    wwn: str | None = None
    firmware: str | None = None
    capacity_bytes: int | None = None
    rotation_rpm: int | None = None
    temperature_c: int | None = None
    temperature_limit_c: int | None = None
    power_on_hours: int | None = None
    smart_passed: bool | None = None
    attributes: list[SmartAttribute] = field(default_factory=list)
    nvme_health: NvmeHealth | None = None
    scsi_grown_defects: int | None = None
    scsi_uncorrected_errors: int | None = None
    standby: bool = False
    exit_status: int | None = None
    exit_flags: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def attribute(self, attr_id: int) -> SmartAttribute | None:
        """The attribute with this id, or None."""
        for attr in self.attributes:
            if attr.id == attr_id:
                return attr
        return None

    @property
    def has_health_data(self) -> bool:
        """True when the answer holds anything :func:`judge` can judge."""
        return bool(self.smart_passed is not None or self.attributes or self.nvme_health
                    or self.scsi_grown_defects is not None)


@dataclass(frozen=True)
class Verdict:
    """Health verdict: ``status`` in passed|warn|failed|standby|unknown, reasons in words."""

    status: Status
    reasons: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# small, total helpers: JSON from the field may hold anything
# ---------------------------------------------------------------------------------------------

def _int(value: Any) -> int | None:
    """An int from a JSON value (bools excluded), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 2**63:
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def decode_exit_status(status: int | None) -> list[str]:
    """Words for each bit set in smartctl's exit status (bits 0..7); [] for 0 or None."""
    if status is None or status < 0:
        return []
    return [f"bit {bit}: {text}" for bit, text in EXIT_BITS.items() if status & (1 << bit)]


def _load(doc: str | bytes | Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Decode the JSON document; return (dict, None) or (None, reason)."""
    if isinstance(doc, Mapping):
        return dict(doc), None
    if isinstance(doc, bytes):
        doc = doc.decode("utf-8", errors="replace")
    if not isinstance(doc, str) or not doc.strip():
        return None, "empty smartctl output"
    try:
        data = json.loads(doc)
    except (ValueError, RecursionError) as exc:
        # smartctl older than 7.0 has no -j and prints text: say so rather than "bad JSON".
        if "smartctl" in doc[:200] and "{" not in doc[:200]:
            return None, "smartctl printed text, not JSON (smartctl 7.0 or newer is needed for -j)"
        return None, f"not JSON: {str(exc)[:80]}"
    if not isinstance(data, dict):
        return None, "JSON is not an object"
    return data, None


def parse_scan(doc: str | bytes | Mapping[str, Any]) -> tuple[list[ScanDevice], list[str]]:
    """Parse ``smartctl --scan -j``: return (devices, notes)."""
    data, err = _load(doc)
    if data is None:
        return [], [f"unparseable smartctl scan: {err}"]
    devices: list[ScanDevice] = []
    notes: list[str] = []
    for entry in _list(data.get("devices")):
        entry = _dict(entry)
        name = _str(entry.get("name"))
        if not name:
            notes.append("scan entry without a device name skipped")
            continue
        devices.append(ScanDevice(name, _str(entry.get("type")), _str(entry.get("protocol")),
                                  _str(entry.get("info_name"))))
    # No "devices" key simply means smartctl found no device (VMs, containers).
    return devices, notes


def _wwn(value: Any) -> str | None:
    """smartctl's WWN object as the usual "naa oui id" hex string (e.g. ``5 0014ee 2b4c1d2a3``)."""
    w = _dict(value)
    naa, oui, ident = _int(w.get("naa")), _int(w.get("oui")), _int(w.get("id"))
    if naa is None or oui is None or ident is None or min(naa, oui, ident) < 0:
        return None
    return f"{naa:x} {oui:06x} {ident:09x}"


def _is_standby(data: dict[str, Any], messages: list[str], exit_status: int | None) -> bool:
    """True when smartctl skipped a sleeping drive (``-n standby``): it exits with bit 1 set and
    says "Device is in STANDBY mode"; newer versions also add a ``power_mode`` object."""
    text = " ".join(messages).upper()
    said = any(word in text for word in ("STANDBY MODE", "SLEEP MODE", "IDLE MODE", "IDLE_A MODE",
                                         "IDLE_B MODE", "IDLE_C MODE", "STANDBY_Y MODE"))
    mode = _str(_dict(data.get("power_mode")).get("name")) or ""
    in_low_power = mode.upper().startswith(("STANDBY", "SLEEP"))
    bit1 = exit_status is not None and exit_status >= 0 and bool(exit_status & 2)
    return said or (in_low_power and (bit1 or "ata_smart_attributes" not in data))


def parse_smart(doc: str | bytes | Mapping[str, Any]) -> SmartReport:
    """Parse one smartctl JSON answer (``-x -j``, ``-a -j``, ``-jH``, ``-jA``, ``--info -j``).

    Takes the JSON text (or an already decoded dict) and returns a :class:`SmartReport`. Fields
    that the answer does not hold stay None/empty; problems are listed in ``notes``.
    """
    report = SmartReport()
    data, err = _load(doc)
    if data is None:
        report.notes.append(f"unparseable smartctl output: {err}")
        return report

    ctl = _dict(data.get("smartctl"))
    report.exit_status = _int(ctl.get("exit_status"))
    report.exit_flags = decode_exit_status(report.exit_status)
    report.messages = [s for s in (_str(_dict(m).get("string")) for m in _list(ctl.get("messages")))
                       if s]

    dev = _dict(data.get("device"))
    report.device = _str(dev.get("name"))
    report.device_type = _str(dev.get("type"))
    report.protocol = _str(dev.get("protocol"))
    proto = (report.protocol or "").upper()
    if proto == "NVME" or "nvme_smart_health_information_log" in data:
        report.kind = "nvme"
    elif proto == "ATA" or "ata_smart_attributes" in data:
        report.kind = "ata"
    elif proto == "SCSI" or "scsi_grown_defect_list" in data:
        report.kind = "scsi"

    report.model = (_str(data.get("model_name")) or _str(data.get("scsi_model_name"))
                    or " ".join(x for x in (_str(data.get("vendor")) or _str(data.get("scsi_vendor")),
                                            _str(data.get("product")) or _str(data.get("scsi_product")))
                                if x) or None)
    report.serial = _str(data.get("serial_number"))
    report.wwn = _wwn(data.get("wwn")) or _str(data.get("logical_unit_id"))
    report.firmware = (_str(data.get("firmware_version")) or _str(data.get("revision"))
                       or _str(data.get("scsi_revision")))
    report.capacity_bytes = (_int(_dict(data.get("user_capacity")).get("bytes"))
                             or _int(data.get("nvme_total_capacity")))
    report.rotation_rpm = _int(data.get("rotation_rate"))
    if report.rotation_rpm is None and report.kind == "nvme":
        report.rotation_rpm = 0
    report.power_on_hours = _int(_dict(data.get("power_on_time")).get("hours"))

    status = data.get("smart_status")
    if isinstance(status, dict) and isinstance(status.get("passed"), bool):
        report.smart_passed = status["passed"]

    _parse_temperature(data, report)
    _parse_ata_attributes(data, report)
    _parse_nvme(data, report)
    _parse_scsi(data, report)

    report.standby = _is_standby(data, report.messages, report.exit_status)
    if report.exit_status is not None and report.exit_status & 1:
        report.notes.append("smartctl did not understand its command line")
    if (report.exit_status is not None and report.exit_status & 2 and not report.standby
            and not report.has_health_data):
        detail = report.messages[0] if report.messages else "device open failed"
        report.notes.append(f"smartctl could not read the device: {detail}")
    return report


def _parse_temperature(data: dict[str, Any], report: SmartReport) -> None:
    temp = _dict(data.get("temperature"))
    current = _int(temp.get("current"))
    if current is not None and current > 0:
        report.temperature_c = current
    else:
        # SAS drives may report 0 in "temperature" and the real value in the environmental page.
        for rep in _dict(data.get("scsi_environmental_reports")).values():
            value = _int(_dict(rep).get("current"))
            if value is not None and value > 0:
                report.temperature_c = value
                break
    limits = [_int(temp.get(k)) for k in ("op_limit_max", "limit_max", "drive_trip",
                                          "critical_limit_max")]
    sct = _dict(_dict(data.get("ata_sct_status")).get("temperature"))
    limits.append(_int(sct.get("op_limit_max")))
    real_limits = [x for x in limits if x is not None and x > 0]
    report.temperature_limit_c = min(real_limits) if real_limits else None


def _parse_ata_attributes(data: dict[str, Any], report: SmartReport) -> None:
    table = _dict(data.get("ata_smart_attributes")).get("table")
    if table is None:
        return
    if not isinstance(table, list):
        report.notes.append("ATA attribute table is not a list")
        return
    for row in table:
        row = _dict(row)
        attr_id = _int(row.get("id"))
        if attr_id is None:
            report.notes.append("ATA attribute without an id skipped")
            continue
        raw = _dict(row.get("raw"))
        raw_string = _str(raw.get("string")) or ""
        # smartctl decodes vendor-packed raws per its drive database: "2725 (151 234 0)" means
        # 2725 for the counter, while raw.value is the whole 48-bit word. Prefer the decoded one.
        lead = _LEADING_INT.match(raw_string)
        raw_value = int(lead.group(1)) if lead else _int(raw.get("value"))
        report.attributes.append(SmartAttribute(
            id=attr_id,
            name=_str(row.get("name")) or f"Attribute_{attr_id}",
            value=_int(row.get("value")),
            worst=_int(row.get("worst")),
            thresh=_int(row.get("thresh")),
            raw=raw_value,
            raw_string=raw_string,
            when_failed=(_str(row.get("when_failed")) or "").strip(),
            prefailure=bool(_dict(row.get("flags")).get("prefailure")),
        ))
    if report.power_on_hours is None:
        attr = report.attribute(9)
        if attr is not None and attr.raw is not None:
            report.power_on_hours = attr.raw


def _parse_nvme(data: dict[str, Any], report: SmartReport) -> None:
    log = data.get("nvme_smart_health_information_log")
    if log is None:
        return
    if not isinstance(log, dict):
        report.notes.append("NVMe health log is not an object")
        return
    report.nvme_health = NvmeHealth(
        critical_warning=_int(log.get("critical_warning")),
        temperature=_int(log.get("temperature")),
        available_spare=_int(log.get("available_spare")),
        available_spare_threshold=_int(log.get("available_spare_threshold")),
        percentage_used=_int(log.get("percentage_used")),
        media_errors=_int(log.get("media_errors")),
        num_err_log_entries=_int(log.get("num_err_log_entries")),
        unsafe_shutdowns=_int(log.get("unsafe_shutdowns")),
        power_on_hours=_int(log.get("power_on_hours")),
        data_units_read=_int(log.get("data_units_read")),
        data_units_written=_int(log.get("data_units_written")),
    )
    if report.temperature_c is None and report.nvme_health.temperature:
        report.temperature_c = report.nvme_health.temperature
    if report.power_on_hours is None:
        report.power_on_hours = report.nvme_health.power_on_hours


def _parse_scsi(data: dict[str, Any], report: SmartReport) -> None:
    if "scsi_grown_defect_list" in data:
        report.scsi_grown_defects = _int(data.get("scsi_grown_defect_list"))
        if report.scsi_grown_defects is None:
            report.notes.append("SCSI grown defect list is not a number")
    log = _dict(data.get("scsi_error_counter_log"))
    if log:
        total = 0
        seen = False
        for direction in ("read", "write", "verify"):
            value = _int(_dict(log.get(direction)).get("total_uncorrected_errors"))
            if value is not None:
                total += value
                seen = True
        report.scsi_uncorrected_errors = total if seen else None


# ---------------------------------------------------------------------------------------------
# verdict
# ---------------------------------------------------------------------------------------------

_RANK: dict[str, int] = {"passed": 0, "warn": 1, "failed": 2}


def _command_timeouts(attr: SmartAttribute) -> int | None:
    """Attribute 188's count. Seagate packs three 16-bit counters into the 48-bit raw value;
    reading it as one number would turn "1 1 1" into 4 billion timeouts."""
    if attr.raw is None:
        return None
    if attr.raw > 0xFFFF:
        return max((attr.raw >> shift) & 0xFFFF for shift in (0, 16, 32))
    return attr.raw


def _baseline_value(baseline: Mapping[int | str, int] | None, key: int | str) -> int | None:
    if not baseline:
        return None
    value = baseline.get(key)
    if value is None and isinstance(key, int):
        value = baseline.get(str(key))
    return _int(value)


def _counter(level: list[str], reasons: list[str], severity: str, text: str, value: int,
             baseline: Mapping[int | str, int] | None, key: int | str) -> None:
    """Record a worrying counter unless the operator accepted this value (or more) already."""
    accepted = _baseline_value(baseline, key)
    if accepted is not None:
        if value <= accepted:
            return
        text = f"{text} (was {accepted})"
    reasons.append(text)
    level.append(severity)


def judge(report: SmartReport, baseline: Mapping[int | str, int] | None = None) -> Verdict:
    """Judge one drive.

    ``baseline`` maps an ATA attribute id (or, for NVMe/SCSI counters, the names
    ``"media_errors"``, ``"scsi_grown_defects"``, ``"scsi_uncorrected_errors"``) to the raw value
    the operator has accepted: a counter equal to (or below) it is not flagged, a rise above it
    is, with "(was N)" in the reason.

    Returns a :class:`Verdict`: ``standby`` for a sleeping drive that was not woken, ``unknown``
    when the answer holds no health data, otherwise the worst of passed/warn/failed with one
    reason per finding.
    """
    if report.standby:
        return Verdict("standby", ["standby, skipped"])
    if not report.has_health_data:
        reasons = [n for n in report.notes] or ["no SMART health data in this answer"]
        return Verdict("unknown", reasons)

    level: list[str] = ["passed"]
    reasons: list[str] = []

    if report.smart_passed is False:
        level.append("failed")
        reasons.append("SMART overall-health self-assessment FAILED")

    hdd = report.rotation_rpm is not None and report.rotation_rpm > 0
    for attr in report.attributes:
        label = f"{attr.id} {attr.name}"
        if attr.when_failed == "now":
            level.append("failed")
            reasons.append(f"{label} failing now (value {attr.value} <= threshold {attr.thresh})")
        elif attr.when_failed == "past":
            level.append("warn")
            reasons.append(f"{label} was below its threshold in the past")
        rule = ATA_CRITICAL.get(attr.id)
        if rule is None or attr.raw is None or (rule.hdd_only and not hdd):
            continue
        value = _command_timeouts(attr) if attr.id == 188 else attr.raw
        if value is None or value <= 0:
            continue
        if rule.fail_at is not None and value >= rule.fail_at:
            severity = "failed"
        elif rule.warn_at is not None and value >= rule.warn_at:
            severity = "warn"
        else:
            continue
        text = f"{label} raw {value}"
        if rule.hint:
            text += f" ({rule.hint})"
        _counter(level, reasons, severity, text, value, baseline, attr.id)

    nvme = report.nvme_health
    if nvme is not None:
        if nvme.critical_warning:
            for bit, words in NVME_CRITICAL_BITS.items():
                if nvme.critical_warning & (1 << bit):
                    level.append("warn" if bit == 1 else "failed")
                    reasons.append(f"NVMe critical warning: {words}")
        if nvme.media_errors:
            _counter(level, reasons, "failed", f"NVMe media errors {nvme.media_errors}",
                     nvme.media_errors, baseline, "media_errors")
        if (nvme.available_spare is not None and nvme.available_spare_threshold
                and nvme.available_spare < nvme.available_spare_threshold):
            level.append("failed")
            reasons.append(f"NVMe available spare {nvme.available_spare}% below threshold "
                           f"{nvme.available_spare_threshold}%")
        if nvme.percentage_used is not None:
            if nvme.percentage_used >= NVME_USED_FAIL_PERCENT:
                level.append("failed")
                reasons.append(f"NVMe percentage used {nvme.percentage_used}% (rated endurance reached)")
            elif nvme.percentage_used >= NVME_USED_WARN_PERCENT:
                level.append("warn")
                reasons.append(f"NVMe percentage used {nvme.percentage_used}%")

    if report.scsi_grown_defects:
        severity = "failed" if report.scsi_grown_defects >= SCSI_DEFECTS_FAIL else "warn"
        _counter(level, reasons, severity, f"SCSI grown defect list {report.scsi_grown_defects}",
                 report.scsi_grown_defects, baseline, "scsi_grown_defects")
    if report.scsi_uncorrected_errors:
        _counter(level, reasons, "warn",
                 f"SCSI uncorrected read/write errors {report.scsi_uncorrected_errors}",
                 report.scsi_uncorrected_errors, baseline, "scsi_uncorrected_errors")

    temp = report.temperature_c
    if temp is not None and temp > 0:
        limit = report.temperature_limit_c
        generic = HDD_TEMP_WARN_C if hdd or (report.kind == "scsi" and report.rotation_rpm is None) \
            else SSD_TEMP_WARN_C
        if limit is not None and temp >= limit:
            level.append("failed")
            reasons.append(f"temperature {temp}C at or above the drive's limit {limit}C")
        elif temp >= generic:
            level.append("warn")
            reasons.append(f"temperature {temp}C (warn at {generic}C)")

    worst = max(level, key=lambda s: _RANK[s])
    return Verdict(worst, reasons)  # type: ignore[arg-type]
