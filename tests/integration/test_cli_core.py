"""CLI conventions: `init`, one JSON document with --json, no ANSI codes off a TTY, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ANSI, CLI, Result
from unityctl import __version__
from unityctl.core import alerts, config, migrate
from unityctl.core.db import make_engine, session_scope

GROUPS = ["creds", "infra", "containers", "alerts", "audit", "db", "config", "daemon", "secrets"]
COMMANDS = ["init", "status", "version"]


@pytest.fixture
def busy(icli: CLI) -> tuple[CLI, int]:
    """An initialised CLI with an alert, a channel and (failed) notification attempts to show."""
    assert icli("alerts", "channels", "add", "hook", "--webhook", "http://127.0.0.1:9/hook").code == 0
    engine = make_engine(config.load().database_url)
    try:
        with session_scope(engine, write=True) as session:
            alert_id = alerts.raise_alert(session, type="server_offline", severity="critical", source_type="server",
                                          source_id="nas", dedup_key="server_offline:nas", message="nas is down").alert.id
    finally:
        engine.dispose()
    # Port 9 (discard) is closed: logged failures.
    assert icli("alerts", "deliver").code == 0
    assert icli("alerts", "channels", "test", "hook").code == 1
    return icli, alert_id  # type: ignore[return-value]


def _json_commands(alert_id: int) -> list[tuple[str, ...]]:
    return [
        ("status",), ("version",), ("config", "show"), ("db", "current"), ("audit", "list"), ("audit", "verify"),
        ("alerts", "list"), ("alerts", "list", "--state", "all"), ("alerts", "show", str(alert_id)),
        ("alerts", "log"), ("alerts", "channels", "list"), ("init",),
    ]


def _one_document(result: Result) -> Any:
    assert result.code == 0, result
    document = json.loads(result.stdout)  # raises on a second document or stray text
    assert result.stdout.strip().startswith(("{", "["))
    assert not ANSI.search(result.stdout + result.stderr)
    return document


def test_every_list_show_and_status_command_prints_exactly_one_json_document(busy: tuple[CLI, int]) -> None:
    cli, alert_id = busy
    for command in _json_commands(alert_id):
        after = _one_document(cli(*command, "--json"))
        before = _one_document(cli("--json", *command))  # the global option works the same
        assert type(after) is type(before), command
    assert _one_document(cli("alerts", "show", str(alert_id), "--json"))["notifications"][0]["status"] == "retry"
    assert _one_document(cli("alerts", "log", "--json"))[0]["channel"] == "hook"
    assert _one_document(cli("version", "--json")) == {"version": __version__}
    assert _one_document(cli("db", "current", "--json"))["current"] == migrate.head_revision()
    assert _one_document(cli("status", "--json"))["alerts"]["open"]["critical"] == 1


def test_json_output_is_one_document_even_when_there_is_nothing_to_list(icli: CLI) -> None:
    for command in (("alerts", "list"), ("alerts", "log"), ("alerts", "channels", "list"),
                    ("audit", "list", "--action", "nothing")):
        assert _one_document(icli(*command, "--json")) == []


@pytest.mark.parametrize("colour_off", ["not a tty", "NO_COLOR", "--no-color"])
def test_no_ansi_escape_codes_when_not_a_tty_or_colour_is_off(busy: tuple[CLI, int], monkeypatch: pytest.MonkeyPatch,
                                                            colour_off: str) -> None:
    cli, alert_id = busy
    prefix: tuple[str, ...] = ()
    if colour_off == "NO_COLOR":
        monkeypatch.setenv("NO_COLOR", "1")
    elif colour_off == "--no-color":
        prefix = ("--no-color",)
    commands = [*_json_commands(alert_id), ("--help",), ("alerts", "--help"), ("alerts", "list", "--bogus"),
                ("alerts", "show", "999"), ("alerts", "ack", str(alert_id)), ("alerts", "channels", "test", "hook")]
    for command in commands:
        result = cli(*prefix, *command)
        assert not ANSI.search(result.stdout), (command, result.stdout)
        assert not ANSI.search(result.stderr), (command, result.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_no_colour_codes_on_a_real_terminal_with_no_color(icli: CLI) -> None:
    import pty

    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"

    def on_a_tty(extra: dict[str, str]) -> str:
        leader, follower = pty.openpty()
        try:
            proc = subprocess.run([sys.executable, "-m", "unityctl", "status"], stdout=follower, stderr=follower,
                                  stdin=subprocess.DEVNULL, env={**env, **extra}, timeout=120)
            os.close(follower)
            follower = -1
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            assert proc.returncode == 0
            return b"".join(chunks).decode(errors="replace")
        finally:
            os.close(leader)
            if follower != -1:
                os.close(follower)

    coloured = on_a_tty({})
    assert ANSI.search(coloured), "on a terminal, the table header is styled (proves this test can see codes)"
    plain = on_a_tty({"NO_COLOR": "1"})
    assert "alerts open" in plain
    assert not ANSI.search(plain), plain


@pytest.mark.parametrize(
    ("command", "code", "fragment"),
    [
        (("alerts", "show", "424242"), 1, "no alert with id 424242"),
        (("alerts", "channels", "remove", "nope"), 1, "no alert channel named 'nope'"),
        (("alerts", "list", "--state", "sideways"), 2, "unknown state"),
        (("audit", "list", "--since", "soon"), 2, "not a duration"),
        (("alerts", "list", "--bogus"), 2, "No such option: --bogus"),
        (("alerts", "show", "not-a-number"), 2, "not-a-number"),
        (("alerts", "snooze"), 2, "Missing argument"),
        (("nosuchgroup",), 2, "No such command"),
        (("alerts", "nosuchcommand"), 2, "No such command"),
        (("--config",), 2, "requires an argument"),
    ],
)
def test_errors_are_one_line_on_stderr_with_exit_code_1_or_2(icli: CLI, command: tuple[str, ...], code: int,
                                                            fragment: str) -> None:
    result = icli(*command)
    assert result.code == code, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unityctl: error: "), lines[0]
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr


def test_an_unexpected_exception_says_so_without_a_traceback_unless_debug(
        icli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    from unityctl.core import status

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom: postgresql://bob:hunter2@db/x\nsecond line")

    monkeypatch.setattr(status, "summary", broken)
    result = icli("status")
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == ["unityctl: unexpected error: RuntimeError: boom: postgresql://bob:***@db/x "
                     "(run with --debug for the traceback)"]
    assert "hunter2" not in result.stderr

    debug = icli("--debug", "status")
    assert debug.code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("unityctl: unexpected error: RuntimeError: boom")


def test_help_lists_every_group_and_command(home: Path) -> None:
    result = CLI()("--help")
    assert result.code == 0
    for name in GROUPS + COMMANDS:
        assert re.search(rf"\b{name}\b", result.stdout), name
    for option in ("--config", "--json", "--quiet", "--verbose", "--debug", "--no-color", "--database-url"):
        assert option in result.stdout
    for group in GROUPS:
        assert CLI()(group, "--help").code == 0, group


def test_running_with_no_arguments_shows_the_help(home: Path) -> None:
    result = CLI()()
    assert "Usage" in result.stdout + result.stderr
    assert "unexpected" not in result.stderr and result.code in (0, 2)


def test_version_prints_the_version(home: Path) -> None:
    result = CLI()("version")
    assert result.code == 0 and result.stdout.strip() == f"unityctl {__version__}"


# --- init ---------------------------------------------------------------------------------------------

def test_init_creates_config_data_dir_master_key_and_schema(cli: CLI, home: Path) -> None:
    result = cli("init", "--json")
    assert result.code == 0, result
    doc = result.json()
    config_file = home / ".config" / "unityctl" / "config.yaml"
    data_dir = home / ".local" / "share" / "unityctl"
    assert doc["config_file"] == str(config_file) and doc["config_created"] is True
    assert doc["data_dir"] == str(data_dir)
    assert doc["revision"] == migrate.head_revision()
    assert doc["master_key"] == "file" and doc["master_key_created"] is True
    assert config_file.exists()
    config.validate_file(config_file)  # the generated file is valid
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "master.key").stat().st_mode) == 0o600
    assert cli("db", "current", "--json").json()["current"] == migrate.head_revision()
    assert cli("status", "--json").code == 0
    assert [r["action"] for r in cli("audit", "list", "--json").json()] == ["core.init"]


def test_init_is_idempotent_and_keeps_the_same_key(cli: CLI, home: Path) -> None:
    assert cli("init").code == 0
    key_file = home / ".local" / "share" / "unityctl" / "master.key"
    config_file = home / ".config" / "unityctl" / "config.yaml"
    config_file.write_text(config_file.read_text() + "\ninfra:\n  max_parallel: 7\n")
    key, settings = key_file.read_bytes(), config_file.read_text()
    again = cli("init", "--json")
    assert again.code == 0, again
    assert again.json()["config_created"] is False and again.json()["master_key_created"] is False
    assert key_file.read_bytes() == key
    assert config_file.read_text() == settings
    assert [r["action"] for r in cli("audit", "list", "--json").json()] == ["core.init"]
    text = cli("init")
    assert text.code == 0 and "(kept)" in text.stdout


def test_init_fixes_a_data_dir_created_too_open(cli: CLI, home: Path) -> None:
    data_dir = home / ".local" / "share" / "unityctl"
    data_dir.mkdir(parents=True, mode=0o755)
    os.chmod(data_dir, 0o755)
    assert cli("init").code == 0
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_init_writes_the_config_where_config_points_even_when_it_does_not_exist_yet(
        cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "elsewhere" / "unityctl.yaml"
    result = cli("--config", target, "init", "--json")
    assert result.code == 0, result
    assert result.json()["config_file"] == str(target) and target.exists()
    assert cli("--config", target, "status", "--json").code == 0
    other = tmp_path / "via-env.yaml"
    monkeypatch.setenv("UNITYCTL_CONFIG", str(other))
    assert cli("init").code == 0 and other.exists()


def test_init_honours_unityctl_data_dir(cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "custom-data"
    monkeypatch.setenv("UNITYCTL_DATA_DIR", str(data_dir))
    result = cli("init", "--json")
    assert result.code == 0, result
    assert result.json()["data_dir"] == str(data_dir)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert (data_dir / "master.key").exists()


def test_quiet_hides_notes_but_not_data_or_errors(icli: CLI) -> None:
    assert "no channels" in icli("alerts", "channels", "list").stderr
    quiet = icli("--quiet", "alerts", "channels", "list")
    assert quiet.code == 0 and quiet.stderr == ""
    assert icli("-q", "status", "--json").json()["alerts"]
    assert icli("-q", "alerts", "show", "5").stderr.startswith("unityctl: error:")


def test_data_goes_to_stdout_and_messages_to_stderr(icli: CLI) -> None:
    added = icli("alerts", "channels", "add", "hook", "--webhook", "http://127.0.0.1:9/x")
    assert added.code == 0 and added.stdout == "" and "channel hook" in added.stderr
    verified = icli("audit", "verify")
    assert verified.stdout == "" and "intact" in verified.stderr
    listed = icli("alerts", "channels", "list")
    assert "hook" in listed.stdout


def test_debug_output_never_shows_a_channels_secret_even_when_delivery_fails(icli) -> None:  # type: ignore[no-untyped-def]
    """--debug turns on unityctl's debug logs; the webhook token must still appear nowhere,
    neither when the channel is added nor when a delivery to a dead port fails and is logged."""
    token = "tok-3f9a1c-super-secret"
    url = f"http://127.0.0.1:9/hook?token={token}"
    added = icli("--debug", "alerts", "channels", "add", "ops", "--webhook", url, "--min-severity", "info")
    assert added.code == 0, added.stderr
    tested = icli("--debug", "alerts", "channels", "test", "ops")
    assert tested.code != 0
    listed = icli("--debug", "alerts", "channels", "list", "--json")
    logged = icli("--debug", "alerts", "log", "--json")
    for result in (added, tested, listed, logged):
        assert token not in result.stdout + result.stderr
