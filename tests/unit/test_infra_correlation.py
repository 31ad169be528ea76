"""Correlation of pool/array members with disks, and the counter rules, as pure functions."""

from __future__ import annotations

import json

import pytest

from unityctl.infra.probes import smart as sm
from unityctl.infra.storage import DiskRef, base_device, critical_counters, judge_disk, match_member


@pytest.mark.parametrize(("name", "disk"), [
    ("sdb", "sdb"),
    ("sdb1", "sdb"),
    ("/dev/sdb2", "sdb"),
    ("sdaa3", "sdaa"),
    ("vdc1", "vdc"),
    ("xvdf2", "xvdf"),
    ("nvme0n1", "nvme0n1"),
    ("nvme0n1p3", "nvme0n1"),
    ("mmcblk0p1", "mmcblk0"),
    ("ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0XXXXXX-part1", "ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0XXXXXX"),
    ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part9", "wwn-0x5000c500a1b2c3d4"),
    ("ada0p3", "ada0"),
    ("c1t1d0s0", "c1t1d0"),
    ("dm-0", "dm-0"),
])
def test_base_device_strips_the_partition_and_the_dev_prefix(name: str, disk: str) -> None:
    assert base_device(name) == disk


DISKS = [
    DiskRef("/dev/sda", "WD-WCC7K0XXXXXX", wwn="5 0014ee 2b4c1d2a3"),
    DiskRef("/dev/sdb", "ZA1B2C3D"),
    DiskRef("/dev/nvme0n1", "S4EUNX0N123456"),
    DiskRef("/dev/sdc", "srv1:/dev/sdc", has_real_serial=False),
]


@pytest.mark.parametrize(("member", "note", "serial"), [
    ("sdb1", "", "ZA1B2C3D"),
    ("sdb", "", "ZA1B2C3D"),
    ("nvme0n1p1", "", "S4EUNX0N123456"),
    ("ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0XXXXXX", "", "WD-WCC7K0XXXXXX"),
    ("ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0XXXXXX-part1", "", "WD-WCC7K0XXXXXX"),
    ("/dev/disk/by-id/ata-ST4000_ZA1B2C3D-part1", "", "ZA1B2C3D"),
    ("nvme-Samsung_SSD_970_EVO_Plus_250GB_S4EUNX0N123456", "", "S4EUNX0N123456"),
    ("wwn-0x50014ee2b4c1d2a3", "", "WD-WCC7K0XXXXXX"),
    ("14592039421153738520", "was /dev/sdb1", "ZA1B2C3D"),
    ("sdc", "", "srv1:/dev/sdc"),
])
def test_a_member_maps_to_its_disk_by_name_wwn_or_serial(member: str, note: str, serial: str) -> None:
    found = match_member(member, DISKS, note)
    assert found is not None and found.serial == serial


def test_a_member_with_no_matching_disk_maps_to_nothing() -> None:
    assert match_member("sdz1", DISKS) is None
    assert match_member("ata-OTHER_DISK_QQQQQQQQ", DISKS) is None


def test_a_placeholder_key_is_never_matched_as_a_serial_substring() -> None:
    assert match_member("by-id-something-srv1:/dev/sdc-x", [DISKS[3]]) is None


def test_the_longest_serial_wins_when_one_serial_contains_another() -> None:
    disks = [DiskRef("/dev/sdx", "ABC123"), DiskRef("/dev/sdy", "ABC1234567")]
    found = match_member("ata-MODEL_ABC1234567", disks)
    assert found is not None and found.serial == "ABC1234567"


def _ata(**raws: int) -> sm.SmartReport:
    table = [{"id": int(k[1:]), "name": sm.ATA_CRITICAL[int(k[1:])].name, "value": 100, "worst": 100,
              "thresh": 0, "when_failed": "", "flags": {}, "raw": {"value": v, "string": str(v)}}
             for k, v in raws.items()]
    return sm.parse_smart(json.dumps({
        "smartctl": {"exit_status": 0}, "device": {"name": "/dev/sda", "protocol": "ATA"},
        "serial_number": "X1", "rotation_rate": 7200, "smart_status": {"passed": True},
        "ata_smart_attributes": {"table": table}}))


def test_counters_are_the_raw_values_of_the_critical_attributes_zero_included() -> None:
    assert critical_counters(_ata(a5=0, a197=8, a188=3)) == {"5": 0, "197": 8, "188": 3}


def test_a_packed_command_timeout_counter_is_decoded_like_judge_does() -> None:
    assert critical_counters(_ata(a188=4295032833))["188"] == 1


def test_a_counter_at_its_baseline_passes_and_a_rise_warns_with_the_old_value() -> None:
    status, reasons, _, increases = judge_disk(_ata(a197=8), baseline={"197": 8}, previous={"197": 8})
    assert (status, reasons, increases) == ("passed", [], {})
    status, reasons, _, increases = judge_disk(_ata(a197=9), baseline={"197": 8}, previous={"197": 8})
    assert status == "warn" and reasons == ["197 Current_Pending_Sector raw 9 (was 8)"]
    assert increases == {"197": (8, 9)}


def test_a_rise_above_an_accepted_value_below_judges_threshold_still_warns() -> None:
    status, reasons, _, _ = judge_disk(_ata(a188=5), baseline={"188": 2}, previous={"188": 2})
    assert status == "warn" and reasons == ["188 Command_Timeout raw 5 (was 2)"]


def test_a_rise_over_the_previous_collection_is_reported_as_an_increase() -> None:
    status, _, counters, increases = judge_disk(_ata(a5=3), baseline={}, previous={"5": 1})
    assert status == "warn" and counters == {"5": 3} and increases == {"5": (1, 3)}
