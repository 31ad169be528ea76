"""Tests for the system section parsers and parse_collection."""

from __future__ import annotations

import pytest

from tests.support.corpus import FIXTURES
from unityctl.infra.probes.sections import format_header
from unityctl.infra.probes.system import (
    parse_collection,
    parse_cpu_count,
    parse_df,
    parse_loadavg,
    parse_meminfo,
    parse_os_release,
    parse_uname,
    parse_uptime,
)

pytestmark = pytest.mark.backend_independent

SAMPLE = FIXTURES / "probes" / "system" / "collection_nonroot.txt"


def test_os_release_values_are_unquoted() -> None:
    rel = parse_os_release('PRETTY_NAME="Example \\"X\\" 3"\nID=example\n# comment\nID_LIKE="debian ubuntu"\njunk\n')
    assert (rel.pretty_name, rel.id, rel.id_like) == ('Example "X" 3', "example", ["debian", "ubuntu"])
    assert rel.notes == []
    assert parse_os_release("").notes


def test_uname_uptime_cpu_and_loadavg_are_read() -> None:
    kernel = parse_uname("Linux 6.1.0-18-amd64 x86_64\n")
    assert (kernel.name, kernel.release, kernel.machine) == ("Linux", "6.1.0-18-amd64", "x86_64")
    assert parse_uname("Linux\n6.1.0\n").machine is None
    assert parse_uptime("350735.47 234388.90\n").seconds == 350735.47
    assert parse_cpu_count("8\n").count == 8
    load = parse_loadavg("0.02 0.06 0.05 2/150 9211\n")
    assert (load.load1, load.load15, load.running, load.total) == (0.02, 0.05, 2, 150)


def test_bad_system_sections_give_unparseable_notes() -> None:
    assert parse_uname("").notes and parse_uptime("abc").notes and parse_uptime("nan").notes
    assert parse_cpu_count("0").notes and parse_loadavg("1 2").notes and parse_meminfo("x").notes


def test_meminfo_derives_used_percent_and_swap() -> None:
    mem = parse_meminfo("MemTotal: 8000000 kB\nMemFree: 1000000 kB\nMemAvailable: 2000000 kB\n"
                        "SwapTotal: 2000000 kB\nSwapFree: 1500000 kB\nHugePages_Total: 0\n")
    assert (mem.total_kb, mem.available_kb, mem.used_kb, mem.used_percent) == (8000000, 2000000, 6000000, 75.0)
    assert (mem.swap_used_kb, mem.swap_used_percent) == (500000, 25.0)
    assert mem.values["HugePages_Total"] == 0


def test_meminfo_without_memavailable_falls_back_to_free_buffers_cached() -> None:
    mem = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
    assert mem.available_kb == 400 and mem.used_percent == 60.0


def test_df_marks_pseudo_filesystems_and_keeps_mount_points_with_spaces() -> None:
    report = parse_collection(SAMPLE.read_text())
    disks = report.disks
    assert disks is not None
    root = disks.at("/")
    assert root is not None and (root.size_kb, root.use_percent, root.fs_type, root.pseudo) == (
        102687672, 84, "ext4", False)
    assert [f.mount for f in disks.real] == ["/", "/srv/media files"]
    assert disks.at("/snap/core20/2015").pseudo and disks.at("/run").pseudo  # type: ignore[union-attr]
    assert "df: /mnt/nfs: Stale file handle" in disks.notes


def test_df_without_mounts_still_flags_pseudo_sources() -> None:
    usage = parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                     "tmpfs 100 0 100 0% /run\n/dev/sda1 1000 10 990 1% /\n")
    assert [(f.mount, f.pseudo, f.fs_type) for f in usage.filesystems] == [("/run", True, None), ("/", False, None)]


def test_collection_report_parses_every_section_of_a_non_root_run() -> None:
    report = parse_collection(SAMPLE.read_text())
    assert report.complete and report.meta["user"] == "alice"
    assert report.os_release is not None and report.os_release.pretty_name == 'Example Linux 3 ("quoted")'
    assert report.kernel is not None and report.kernel.release == "6.1.0-18-amd64"
    assert report.uptime is not None and report.uptime.seconds == 86400.5
    assert report.cpu is not None and report.cpu.count == 4
    assert report.loadavg is not None and report.loadavg.load1 == 1.5
    assert report.memory is not None and report.memory.used_percent == 75.0
    assert report.mdstat is not None and report.mdstat.array("md0").sync_progress == 9.0  # type: ignore[union-attr]
    assert [d.name for d in report.smart_scan] == ["/dev/sda"]
    assert report.sockets_raw == "tcp   LISTEN 0      128          0.0.0.0:22        0.0.0.0:*"
    assert report.processes_raw == "    1 systemd\n  812 sshd"
    assert report.zpool_list is None and report.zpool_status is None


def test_missing_tools_and_missing_privileges_become_notes_in_words() -> None:
    report = parse_collection(SAMPLE.read_text())
    assert report.section_status["zpool_list"] == "not-installed"
    assert report.notes.count("zpool not installed") == 1
    assert ("needs root for mdadm_detail:md0, smart:/dev/sda: add this sudoers line: "
            "alice ALL=(root) NOPASSWD: /usr/sbin/mdadm, /usr/sbin/smartctl") in report.notes
    # A refused section is not parsed as if it were data.
    assert "/dev/sda" not in report.smart and "md0" not in report.mdadm


def test_an_unparseable_section_is_named_in_the_notes() -> None:
    report = parse_collection(SAMPLE.read_text())
    assert any(n.startswith("unparseable section smart:/dev/sdz: not JSON") for n in report.notes)
    assert report.smart["/dev/sdz"].model is None


def test_zpool_without_kernel_module_is_a_state_not_a_parse_error() -> None:
    text = "\n".join([format_header("zpool_status", 1, via="root"),
                      "The ZFS modules are not loaded.", "Try running '/sbin/modprobe zfs' as root to load them.",
                      "@@unityctl:end@@"])
    report = parse_collection(text)
    assert "zfs kernel modules not loaded" in report.notes
    assert report.zpool_status is None
    assert not any(n.startswith("unparseable") for n in report.notes)


def test_collection_of_nothing_reports_that_instead_of_raising() -> None:
    report = parse_collection("")
    assert report.section_status == {} and not report.complete
    assert any("no section headers" in n for n in report.notes)
