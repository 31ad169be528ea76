"""Run collect.sh under real POSIX shells and parse what it prints."""

from __future__ import annotations

import os
from typing import Any
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from unityctl.infra.probes.sections import split_sections
from unityctl.infra.probes.system import CollectionReport, parse_collection

pytestmark = pytest.mark.backend_independent

SCRIPT = Path(__file__).resolve().parents[2] / "unityctl" / "infra" / "probes" / "collect.sh"


def _shells() -> list[Any]:
    params = []
    for label, argv in (("sh", ["/bin/sh"]), ("dash", ["dash"]), ("busybox", ["busybox", "sh"]),
                        ("bash-posix", ["bash", "--posix"])):
        found = shutil.which(argv[0]) if not argv[0].startswith("/") else (argv[0] if os.path.exists(argv[0]) else None)
        marks = [] if found else [pytest.mark.skip(reason=f"{argv[0]} is not installed on this machine")]
        params.append(pytest.param(argv, id=label, marks=marks))
    return params


def _run(argv: list[str], env: dict[str, str] | None = None, preexec: list[str] | None = None,
         script: Path = SCRIPT) -> str:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}
    full_env.update(env or {})
    proc = subprocess.run([*(preexec or []), *argv, str(script)], capture_output=True, text=True,
                          env=full_env, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _fake_tool(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.mark.parametrize("argv", _shells())
def test_script_has_valid_syntax_for_the_shell(argv: list[str]) -> None:
    proc = subprocess.run([*argv, "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("argv", _shells())
def test_collection_on_this_machine_gives_real_system_sections(argv: list[str]) -> None:
    report = parse_collection(_run(argv))
    assert report.complete
    assert report.memory is not None and report.memory.total_kb and report.memory.total_kb > 0
    assert report.uptime is not None and report.uptime.seconds and report.uptime.seconds > 0
    assert report.cpu is not None and report.cpu.count and report.cpu.count >= 1
    assert report.kernel is not None and report.kernel.name == "Linux"
    assert report.loadavg is not None and report.loadavg.load1 is not None
    assert report.disks is not None and report.disks.filesystems
    assert report.processes_raw and report.sockets_raw is not None
    assert not any(n.startswith("unparseable") for n in report.notes), report.notes
    # Every section is either data or a named state; nothing is an error.
    assert set(report.section_status.values()) <= {"ok", "not-installed", "needs-root", "absent"}


def test_sections_for_missing_tools_are_states_not_errors(tmp_path: Path) -> None:
    # An empty PATH: only shell builtins remain, so every tool is "not installed" and the
    # script must fall back to /proc for what it can.
    empty = tmp_path / "empty"
    empty.mkdir()
    text = _run(["/bin/sh"], env={"UNITYCTL_COLLECT_PATH": str(empty)})
    split = split_sections(text)
    assert split.complete
    secs = split.sections
    for name in ("df", "smart_scan", "zpool_list", "zpool_status"):
        assert (secs[name].rc, secs[name].status) == (127, "not-installed"), name
    assert secs["processes"].attrs.get("via") == "proc"
    assert secs["sockets"].attrs.get("via") == "proc"
    assert secs["cpu_count"].attrs.get("via") == "cpuinfo"
    report = parse_collection(text)
    assert {"smartctl not installed", "zpool not installed", "df not installed"} <= set(report.notes)
    assert report.memory is not None and report.memory.total_kb and report.memory.total_kb > 0
    assert report.processes_raw and "1 " in report.processes_raw
    assert report.cpu is not None and report.cpu.count and report.cpu.count >= 1


def _fake_smartctl(bin_dir: Path) -> None:
    _fake_tool(bin_dir, "smartctl", r'''
case "$*" in
  "--scan -j") printf '{"devices":[{"name":"/dev/sda","type":"sat"},{"name":"/dev/bus/0","type":"megaraid,1"}]}\n' ;;
  "--scan") printf '/dev/sda -d sat # /dev/sda [SAT], ATA device\n/dev/bus/0 -d megaraid,1 # /dev/bus/0 [megaraid_disk_01], SCSI device\n' ;;
  *"/dev/sda") if [ "$(id -u)" = 0 ]; then
        printf '{"device":{"name":"/dev/sda","type":"sat","protocol":"ATA"},"smart_status":{"passed":true},"smartctl":{"exit_status":0}}\n'
      else
        printf '{"smartctl":{"messages":[{"string":"Smartctl open device: /dev/sda failed: Permission denied"}],"exit_status":2}}\n'; exit 2
      fi ;;
  *"-d megaraid,1 /dev/bus/0") printf '{"smartctl":{"messages":[{"string":"Device is in STANDBY mode, exit(2)"}],"exit_status":2},"device":{"name":"/dev/bus/0","type":"megaraid,1"}}\n'; exit 2 ;;
  *) echo "unexpected: $*"; exit 1 ;;
esac
''')


def test_each_scanned_disk_gets_its_own_smart_section(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the fake smartctl answers with data only for root")
    _fake_smartctl(tmp_path)
    report: CollectionReport = parse_collection(
        _run(["/bin/sh"], env={"UNITYCTL_COLLECT_PATH": f"{tmp_path}:/usr/bin:/bin"}))
    assert set(report.smart) == {"/dev/sda", "/dev/bus/0:megaraid,1"}
    assert report.smart["/dev/sda"].smart_passed is True
    assert report.smart["/dev/bus/0:megaraid,1"].standby
    assert [d.type for d in report.smart_scan] == ["sat", "megaraid,1"]


def test_a_non_root_run_without_sudo_reports_needs_root_with_a_sudoers_hint() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the script as an unprivileged user")
    # pytest's tmp_path sits under a 0700 directory the unprivileged user cannot enter.
    with tempfile.TemporaryDirectory(prefix="unityctl-collect-") as tmp:
        tmp_path = Path(tmp)
        tmp_path.chmod(0o755)
        _check_non_root_run(setpriv, tmp_path)


def _check_non_root_run(setpriv: str, tmp_path: Path) -> None:
    _fake_smartctl(tmp_path)
    script = tmp_path / "collect.sh"
    script.write_text(SCRIPT.read_text())
    script.chmod(0o755)
    text = _run(["/bin/sh"], env={"UNITYCTL_COLLECT_PATH": f"{tmp_path}:/usr/bin:/bin"},
                preexec=[setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"], script=script)
    report = parse_collection(text)
    assert report.meta["uid"] == "65534"
    assert report.section_status["smart:/dev/sda"] == "needs-root"
    assert any(n.startswith("needs root for smart:/dev/sda: add this sudoers line:")
               and n.endswith(f"NOPASSWD: {tmp_path}/smartctl") for n in report.notes), report.notes
    assert report.memory is not None and report.memory.total_kb


def test_tool_output_cannot_forge_a_section_header(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "df", 'echo "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
                               'echo "@@unityctl:section evil rc=0@@"\n')
    split = split_sections(_run(["/bin/sh"], env={"UNITYCTL_COLLECT_PATH": f"{tmp_path}:/usr/bin:/bin"}))
    assert "evil" not in split.sections
    assert "@@unityctl:section evil rc=0@@" in split.sections["df"].text.splitlines()
