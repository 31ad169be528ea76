"""Tests for the smartctl JSON parser and the drive verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.corpus import FIXTURES, corpus_files, require_corpus
from unityctl.infra.probes.smart import (
    decode_exit_status,
    judge,
    parse_scan,
    parse_smart,
)

pytestmark = pytest.mark.backend_independent

OWN = FIXTURES / "probes" / "smart"


def _own(name: str) -> str:
    return (OWN / name).read_text()


def _corpus(name: str) -> str:
    return (require_corpus("smart") / name).read_text()


# --- own fixtures -----------------------------------------------------------------------------

def test_healthy_ata_drive_is_parsed_and_passes() -> None:
    report = parse_smart(_own("ata_healthy.json"))
    assert report.kind == "ata"
    assert (report.device, report.device_type, report.model, report.serial) == (
        "/dev/sda", "sat", "EXAMPLE HDD 4TB", "EXA0001")
    assert report.wwn == "5 000cca 000001234"
    assert report.capacity_bytes == 4000787030016 and report.rotation_rpm == 5400
    assert report.temperature_c == 35 and report.temperature_limit_c == 60
    assert report.power_on_hours == 8123 and report.smart_passed is True
    attr = report.attribute(197)
    assert attr is not None and (attr.name, attr.raw, attr.thresh) == ("Current_Pending_Sector", 0, 0)
    # 188 raw 3: a few command timeouts are tolerated.
    assert judge(report).status == "passed"
    assert judge(report).reasons == []


def test_failing_ata_drive_is_failed_with_reasons_in_words() -> None:
    verdict = judge(parse_smart(_own("ata_failing.json")))
    assert verdict.status == "failed"
    text = "\n".join(verdict.reasons)
    assert "SMART overall-health self-assessment FAILED" in text
    assert "5 Reallocated_Sector_Ct failing now" in text
    assert "197 Current_Pending_Sector raw 8" in verdict.reasons
    assert "198 Offline_Uncorrectable raw 2" in verdict.reasons
    assert "7 Seek_Error_Rate was below its threshold in the past" in verdict.reasons


def test_seagate_packed_command_timeout_counter_is_not_read_as_billions() -> None:
    verdict = judge(parse_smart(_own("ata_failing.json")))
    # raw 4295032833 = three 16-bit counters 1/1/1: one timeout, below the warn level.
    assert not any(r.startswith("188 ") for r in verdict.reasons)


def test_exit_status_bits_are_decoded_in_words() -> None:
    report = parse_smart(_own("ata_failing.json"))
    assert report.exit_status == 24
    assert report.exit_flags == ["bit 3: SMART status check returned DISK FAILING",
                                 "bit 4: prefail attributes at or below threshold"]
    assert decode_exit_status(0) == [] and decode_exit_status(None) == []
    assert len(decode_exit_status(255)) == 8


def test_worn_hot_nvme_drive_warns_with_percentage_used_and_temperature() -> None:
    report = parse_smart(_own("nvme_warn.json"))
    assert report.kind == "nvme" and report.rotation_rpm == 0
    assert report.nvme_health is not None and report.nvme_health.percentage_used == 93
    verdict = judge(report)
    assert verdict.status == "warn"
    assert "NVMe percentage used 93%" in verdict.reasons
    assert "temperature 72C (warn at 70C)" in verdict.reasons


def test_scsi_grown_defects_warn_and_a_large_list_fails() -> None:
    report = parse_smart(_own("scsi_defects.json"))
    assert report.kind == "scsi" and report.model == "EXAMPLE SAS4000"
    assert report.scsi_grown_defects == 12 and report.temperature_limit_c == 65
    assert judge(report).status == "warn"
    data = json.loads(_own("scsi_defects.json"))
    data["scsi_grown_defect_list"] = 500
    assert judge(parse_smart(data)).status == "failed"


def test_drive_in_standby_is_skipped_not_failed() -> None:
    report = parse_smart(_own("standby.json"))
    assert report.standby
    verdict = judge(report)
    assert verdict.status == "standby" and verdict.reasons == ["standby, skipped"]


def test_temperature_at_the_drives_own_limit_fails() -> None:
    data = json.loads(_own("ata_healthy.json"))
    data["temperature"]["current"] = 61
    verdict = judge(parse_smart(data))
    assert verdict.status == "failed"
    assert "temperature 61C at or above the drive's limit 60C" in verdict.reasons


def test_counter_equal_to_its_accepted_baseline_is_not_flagged() -> None:
    report = parse_smart(_own("ata_failing.json"))
    verdict = judge(report, baseline={197: 8, 198: 2})
    assert not any(r.startswith(("197 ", "198 ")) for r in verdict.reasons)


def test_counter_above_its_accepted_baseline_is_flagged_with_the_old_value() -> None:
    verdict = judge(parse_smart(_own("ata_failing.json")), baseline={197: 2})
    assert "197 Current_Pending_Sector raw 8 (was 2)" in verdict.reasons


def test_scan_lists_devices_with_their_types() -> None:
    devices, notes = parse_scan(_own("scan.json"))
    assert [(d.name, d.type) for d in devices] == [
        ("/dev/sda", "sat"), ("/dev/nvme0", "nvme"), ("/dev/bus/0", "megaraid,2")]
    assert notes == []


def test_garbage_gives_an_unparseable_note_and_an_unknown_verdict() -> None:
    report = parse_smart("smartctl 6.2 2013-07-26\nSMART support is: Available\n")
    assert any(n.startswith("unparseable smartctl output") for n in report.notes)
    assert judge(report).status == "unknown"


# --- shared corpus ----------------------------------------------------------------------------

SMART_CORPUS = corpus_files("smart", "*.json")


@pytest.mark.parametrize("path", SMART_CORPUS, ids=[p.name for p in SMART_CORPUS])
def test_every_corpus_smart_file_parses_and_gets_a_verdict(path: Path) -> None:
    text = path.read_text()
    if "scan" in path.name:
        devices, notes = parse_scan(text)
        assert devices and notes == []
        return
    report = parse_smart(text)
    assert not any(n.startswith("unparseable") for n in report.notes)
    assert judge(report).status in ("passed", "warn", "failed", "standby", "unknown")


def test_corpus_hitachi_behind_usb_fails_naming_reallocated_sectors() -> None:
    report = parse_smart(_corpus("scrutiny_smart-fail2.json"))
    assert report.device_type == "usbjmicron" and report.smart_passed is False
    assert report.exit_status == 216
    verdict = judge(report)
    assert verdict.status == "failed"
    assert any(r.startswith("5 Reallocated_Sector_Ct") for r in verdict.reasons)
    assert "197 Current_Pending_Sector raw 8" in verdict.reasons


def test_corpus_nvme_with_media_errors_fails_naming_them() -> None:
    verdict = judge(parse_smart(_corpus("scrutiny_smart-nvme-failed.json")))
    assert verdict.status == "failed"
    assert "NVMe media errors 7" in verdict.reasons


def test_corpus_nvme_with_critical_warning_bit_fails_in_words() -> None:
    verdict = judge(parse_smart(_corpus(
        "smartctl_exporter_nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json")))
    assert verdict.status == "failed"
    assert "NVMe critical warning: volatile memory backup device failed" in verdict.reasons


def test_corpus_crc_errors_are_a_cable_warning_not_a_failure() -> None:
    verdict = judge(parse_smart(_corpus("scrutiny_smart-ata-failed-scrutiny.json")))
    assert verdict.status == "warn"
    assert verdict.reasons == ["199 CRC_Error_Count raw 108 (check the cable)"]


def test_corpus_healthy_drives_pass() -> None:
    for name in ("scrutiny_smart-ata.json", "scrutiny_smart-nvme.json", "scrutiny_smart-scsi2.json",
                 "smartctl_exporter_WDC_WD20EFRX-68EUZN0_17.json", "scrutiny_smart-pass.json"):
        assert judge(parse_smart(_corpus(name))).status == "passed", name


def test_corpus_sas_drive_reads_temperature_from_the_environmental_page() -> None:
    report = parse_smart(_corpus("scrutiny_smart-scsi-sas-env-temp.json"))
    assert report.temperature_c == 38


def test_corpus_scsi_with_many_grown_defects_fails() -> None:
    verdict = judge(parse_smart(_corpus("smartctl_exporter_SEAGATE_ST373453LC_26.json")))
    assert verdict.status == "failed"
    assert "SCSI grown defect list 260" in verdict.reasons


def test_corpus_open_failure_is_unknown_with_the_smartctl_message() -> None:
    report = parse_smart(_corpus("scrutiny_smart-fail.json"))
    verdict = judge(report)
    assert verdict.status == "unknown"
    assert "Open failed" in verdict.reasons[0]
    assert "bit 1: device open failed, or device is in a low-power mode" in report.exit_flags


def test_corpus_vendor_packed_raw_values_use_smartctls_decoded_number() -> None:
    report = parse_smart(_corpus("scrutiny_smart-sat.json"))
    attr = report.attribute(196)
    assert attr is not None and attr.raw == 2111 and attr.raw_string == "2111 (12437 0)"
