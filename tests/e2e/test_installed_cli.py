"""The installed console script, run as a subprocess against a temporary home and the backend under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unityctl import __version__

BIN = Path(sys.executable).parent
UNITYCTL = BIN / "unityctl"
HEAVY = ("docker", "podman", "kubernetes", "certbot", "fabric", "paramiko")


@pytest.fixture
def proc_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    """A clean environment: temporary HOME/XDG, the test database, nothing else from UNITYCTL_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UNITYCTL_", "XDG_")) and k not in ("NO_COLOR", "FORCE_COLOR")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local" / "share"),
               UNITYCTL_DATABASE_URL=db_url)
    return env


def _run(args: list[str], env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          **kwargs)  # type: ignore[call-overload]


def test_the_console_script_is_installed_next_to_the_interpreter() -> None:
    assert UNITYCTL.exists() and os.access(UNITYCTL, os.X_OK), UNITYCTL


def test_installed_unityctl_prints_its_version_and_help(proc_env: dict[str, str]) -> None:
    version = _run([str(UNITYCTL), "version"], proc_env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"unityctl {__version__}"
    as_json = _run([str(UNITYCTL), "version", "--json"], proc_env)
    assert json.loads(as_json.stdout) == {"version": __version__}

    helped = _run([str(UNITYCTL), "--help"], proc_env)
    assert helped.returncode == 0, helped.stderr
    for name in ("init", "status", "version", "creds", "infra", "containers", "alerts", "audit", "db", "config",
                 "daemon"):
        assert name in helped.stdout, name
    assert "\x1b[" not in helped.stdout + helped.stderr


def test_installed_unityctl_initialises_and_reports_status_as_json(proc_env: dict[str, str]) -> None:
    init = _run([str(UNITYCTL), "init", "--json"], proc_env)
    assert init.returncode == 0, init.stderr
    doc = json.loads(init.stdout)
    assert doc["master_key_created"] is True and doc["revision"]
    home = Path(proc_env["HOME"])
    assert (home / ".config" / "unityctl" / "config.yaml").exists()
    assert (home / ".local" / "share" / "unityctl" / "master.key").exists()

    status = _run([str(UNITYCTL), "status", "--json"], proc_env)
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["alerts"]["open"] == {"info": 0, "warning": 0, "critical": 0}
    assert "\x1b[" not in status.stdout + status.stderr

    again = _run([str(UNITYCTL), "init", "--json"], proc_env)
    assert again.returncode == 0 and json.loads(again.stdout)["master_key_created"] is False
    verify = _run([str(UNITYCTL), "audit", "verify"], proc_env)
    assert verify.returncode == 0, verify.stderr


def test_installed_unityctl_errors_are_one_line_with_the_right_exit_code(proc_env: dict[str, str]) -> None:
    uninitialised = _run([str(UNITYCTL), "status"], proc_env)
    assert uninitialised.returncode == 1
    assert uninitialised.stderr.strip().splitlines() == [uninitialised.stderr.strip()]
    assert "unityctl init" in uninitialised.stderr and "Traceback" not in uninitialised.stderr

    usage = _run([str(UNITYCTL), "alerts", "list", "--no-such-option"], proc_env)
    assert usage.returncode == 2
    assert usage.stderr.startswith("unityctl: error: ") and "Traceback" not in usage.stderr


def _imported_modules(args: list[str], env: dict[str, str]) -> set[str]:
    """Top-level module names imported by ``python -m unityctl ARGS`` (from -X importtime)."""
    result = _run([sys.executable, "-X", "importtime", "-m", "unityctl", *args], env)
    assert result.returncode == 0, result.stderr[-2000:]
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and not name.startswith("imported"):
                names.add(name.split(".")[0])
    assert "unityctl" in names and "typer" in names  # the parse found real imports
    return names


@pytest.mark.parametrize("args", [["version"], ["--help"], ["status"], ["status", "--json"]])
def test_quick_commands_import_no_heavy_library(proc_env: dict[str, str], args: list[str]) -> None:
    if args[0] == "status":
        assert _run([str(UNITYCTL), "init"], proc_env).returncode == 0
    imported = _imported_modules(args, proc_env)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_the_import_check_can_see_a_heavy_library(proc_env: dict[str, str]) -> None:
    # The same probe on a module that does import paramiko must report it (the check is not blind).
    result = _run([sys.executable, "-X", "importtime", "-c", "import paramiko"], proc_env)
    assert result.returncode == 0
    assert any(line.rsplit("|", 1)[1].strip() == "paramiko" for line in result.stderr.splitlines()
               if line.startswith("import time:") and "|" in line)
