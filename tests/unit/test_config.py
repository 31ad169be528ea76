"""Configuration: YAML validated by a typed schema, one-line errors, precedence, redaction, the example file.

These tests touch no database (they run in the SQLite pass only). Bad input is fed through the
real CLI (`unityctl config validate FILE` and `unityctl --config FILE <command>`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tests.conftest import CLI, Result
from unityctl.core import config
from unityctl.core.config import Settings
from unityctl.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
PG_WITH_PASSWORD = "postgresql+psycopg://bob:Sup3rS3cretPw@db.example.org:5432/unityctl"


@pytest.fixture
def run(home: Path) -> CLI:
    """The in-process CLI in an isolated home, with no database configured."""
    return CLI()


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.code != 0, result
    assert result.code == 2, result  # configuration errors are usage errors
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("unityctl: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


# (file text, key path expected in the message, line expected in the message)
BAD_FILES = {
    "invalid yaml": ("database:\n  url: [unclosed\nlogging:\n  level: info\n", "invalid YAML", "line "),
    "unknown key": ("infra:\n  max_parallel: 4\n  max_paralel: 8\n", "infra.max_paralel: unknown key", "(line 3 "),
    "unknown section": ("databse:\n  url: sqlite:////tmp/x.db\n", "databse: unknown key", "(line 1 "),
    "wrong type": ("logging:\n  level: info\ninfra:\n  max_parallel: lots\n", "infra.max_parallel:", "(line 4 "),
    "out of range": ("infra:\n  max_parallel: 0\n", "infra.max_parallel:", "(line 2 "),
    "bad url": ("# the database\n\ndatabase:\n  url: nonsense\n", "database.url: must be a URL such as sqlite:///path", "(line 4 "),
    "unsupported database": ("database:\n  url: mysql://u@h/db\n", "database.url: unsupported database", "(line 2 "),
    "bad duration": ("alerts:\n  repeat_after: soon\n", "alerts.repeat_after: not a duration: 'soon'", "(line 2 "),
    "bad list item": ("creds:\n  expiry_alert_days:\n    - 30\n    - soon\n", "creds.expiry_alert_days.1:", "(line 4 "),
    "bad choice": ("creds:\n  default_key_type: dsa\n", "creds.default_key_type:", "(line 2 "),
    "section not a mapping": ("infra: 5\n", "infra:", "(line 1 "),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_config_validate_reports_a_bad_file_in_one_line_with_key_path_and_line(
        run: CLI, tmp_path: Path, case: str) -> None:
    text, key_message, line = BAD_FILES[case]
    path = _write(tmp_path, text)
    _assert_one_line_error(run("config", "validate", path), key_message, line)


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_any_command_given_a_bad_config_file_fails_in_one_line(run: CLI, tmp_path: Path, case: str) -> None:
    text, key_message, line = BAD_FILES[case]
    path = _write(tmp_path, text)
    _assert_one_line_error(run("--config", path, "config", "show"), key_message, line)
    _assert_one_line_error(run("--config", path, "status", "--json"), key_message, line)


def test_invalid_yaml_names_the_file_and_the_line(run: CLI, tmp_path: Path) -> None:
    path = _write(tmp_path, "logging:\n  level: info\n  : : bad\n")
    line = _assert_one_line_error(run("config", "validate", path), str(path), "invalid YAML")
    assert re.search(r"\(line \d+\)", line), line


def test_a_config_whose_top_level_is_not_a_mapping_is_refused(run: CLI, tmp_path: Path) -> None:
    path = _write(tmp_path, "- just\n- a list\n")
    _assert_one_line_error(run("config", "validate", path), "top level must be a mapping")


def test_the_error_counts_further_problems_on_the_same_line(run: CLI, tmp_path: Path) -> None:
    path = _write(tmp_path, "infra:\n  max_parallel: lots\n  interval: soon\n")
    _assert_one_line_error(run("config", "validate", path), "and 1 more error")


def test_a_missing_config_file_is_one_line_error(run: CLI, tmp_path: Path) -> None:
    _assert_one_line_error(run("config", "validate", tmp_path / "nope.yaml"), "config file not found")
    _assert_one_line_error(run("--config", tmp_path / "nope.yaml", "config", "show"), "config file not found")


def test_unityctl_config_env_var_names_the_file(run: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "infra:\n  max_paralel: 8\n")
    monkeypatch.setenv("UNITYCTL_CONFIG", str(path))
    _assert_one_line_error(run("config", "show"), "infra.max_paralel: unknown key", "(line 2 ")


def test_a_bad_environment_variable_is_named_in_the_error(run: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNITYCTL_INFRA__MAX_PARALLEL", "lots")
    _assert_one_line_error(run("config", "show"), "infra.max_parallel:", "UNITYCTL_INFRA__MAX_PARALLEL")
    monkeypatch.setenv("UNITYCTL_INFRA__MAX_PARALLEL", "8")
    monkeypatch.setenv("UNITYCTL_DATABASE_URL", "nonsense")
    _assert_one_line_error(run("config", "show"), "database.url:", "UNITYCTL_DATABASE_URL")


def test_a_bad_database_url_flag_is_refused(run: CLI) -> None:
    _assert_one_line_error(run("--database-url", "nonsense", "config", "show"), "database.url:")


def test_a_valid_file_validates(run: CLI, tmp_path: Path) -> None:
    path = _write(tmp_path, "infra:\n  max_parallel: 8\nalerts:\n  repeat_after: 2h\n")
    result = run("config", "validate", path)
    assert result.code == 0, result
    assert "valid" in result.stderr
    assert config.validate_file(path).alerts.repeat_after == 7200


def test_config_validate_ignores_the_environment(run: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Validating a file says whether THAT file is good, whatever the shell exports.
    monkeypatch.setenv("UNITYCTL_INFRA__MAX_PARALLEL", "lots")
    path = _write(tmp_path, "infra:\n  max_parallel: 8\n")
    assert run("config", "validate", path).code == 0


# --- precedence -----------------------------------------------------------------------------------

def _show(run: CLI, *args: Any) -> dict[str, Any]:
    result = run(*args, "config", "show", "--json")
    assert result.code == 0, result
    return result.json()


def test_precedence_is_flag_then_env_then_file_then_default(
        run: CLI, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file_db, env_db, flag_db = (f"sqlite:///{tmp_path / name}.db" for name in ("file", "env", "flag"))
    file_dir, env_dir, flag_dir = (tmp_path / name for name in ("file-data", "env-data", "flag-data"))

    default = _show(run)
    xdg_data = home / ".local" / "share" / "unityctl"
    assert default["data_dir"] == str(xdg_data)
    assert default["database"]["url"] == f"sqlite:///{xdg_data / 'unityctl.db'}"
    assert default["infra"]["max_parallel"] == 32
    assert default["source_file"] is None

    path = _write(tmp_path, f"data_dir: {file_dir}\ndatabase:\n  url: {file_db}\ninfra:\n  max_parallel: 4\n")
    from_file = _show(run, "--config", path)
    assert (from_file["database"]["url"], from_file["data_dir"], from_file["infra"]["max_parallel"]) == (
        file_db, str(file_dir), 4)
    assert from_file["source_file"] == str(path)

    monkeypatch.setenv("UNITYCTL_DATABASE_URL", env_db)
    monkeypatch.setenv("UNITYCTL_DATA_DIR", str(env_dir))
    monkeypatch.setenv("UNITYCTL_INFRA__MAX_PARALLEL", "8")
    from_env = _show(run, "--config", path)
    assert (from_env["database"]["url"], from_env["data_dir"], from_env["infra"]["max_parallel"]) == (
        env_db, str(env_dir), 8)

    from_flag = _show(run, "--config", path, "--database-url", flag_db, "--data-dir", flag_dir)
    assert (from_flag["database"]["url"], from_flag["data_dir"]) == (flag_db, str(flag_dir))
    assert from_flag["infra"]["max_parallel"] == 8


def test_the_default_config_file_is_read_from_xdg_config_home(run: CLI, home: Path) -> None:
    xdg = home / ".config" / "unityctl"
    xdg.mkdir(parents=True)
    (xdg / "config.yaml").write_text("infra:\n  max_parallel: 3\n", encoding="utf-8")
    shown = _show(run)
    assert shown["infra"]["max_parallel"] == 3
    assert shown["source_file"] == str(xdg / "config.yaml")


def test_the_data_dir_moves_the_default_database_and_master_key(run: CLI, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNITYCTL_DATA_DIR", str(tmp_path / "d"))
    shown = _show(run)
    assert shown["database"]["url"] == f"sqlite:///{tmp_path / 'd' / 'unityctl.db'}"
    assert shown["master_key"]["file"] == str(tmp_path / "d" / "master.key")


def test_load_applies_flag_overrides_over_env_over_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "alerts:\n  max_attempts: 2\n  retry_after: 1m\n")
    env = {"UNITYCTL_ALERTS__MAX_ATTEMPTS": "3", "UNITYCTL_ALERTS__RETRY_AFTER": "2m"}
    settings = config.load(path, environ=env, overrides={("alerts", "max_attempts"): 4})
    assert settings.alerts.max_attempts == 4
    assert settings.alerts.retry_after == 120
    assert config.load(path, environ={}).alerts.retry_after == 60


def test_an_unknown_unityctl_variable_with_a_section_is_an_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"infra\.max_paralel: unknown key \(from environment variable "
                                          r"UNITYCTL_INFRA__MAX_PARALEL\)"):
        config.load(tmp_path / "absent.yaml", environ={"UNITYCTL_INFRA__MAX_PARALEL": "3"}, missing_ok=True)


# --- redaction ------------------------------------------------------------------------------------

def test_config_show_redacts_the_database_password_in_json_and_text(run: CLI, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, f"database:\n  url: {PG_WITH_PASSWORD}\n")
    for args in (("--config", path), ("--database-url", PG_WITH_PASSWORD)):
        as_json = run(*args, "config", "show", "--json")
        assert as_json.code == 0, as_json
        assert as_json.json()["database"]["url"] == "postgresql+psycopg://bob:***@db.example.org:5432/unityctl"
        as_text = run(*args, "config", "show")
        assert as_text.code == 0, as_text
        assert "bob:***@db.example.org" in as_text.stdout
        for result in (as_json, as_text):
            assert "Sup3rS3cretPw" not in result.stdout + result.stderr
    monkeypatch.setenv("UNITYCTL_DATABASE_URL", PG_WITH_PASSWORD)
    result = run("config", "show")
    assert result.code == 0 and "Sup3rS3cretPw" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:pw@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u:p%40ss@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////var/lib/unityctl.db", "sqlite:////var/lib/unityctl.db"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert config.redact_url(url) == shown


# --- the example file -----------------------------------------------------------------------------

def test_config_example_yaml_loads_and_equals_the_defaults(run: CLI) -> None:
    loaded = config.validate_file(EXAMPLE)
    assert loaded.model_dump() == Settings().model_dump()
    result = run("config", "validate", EXAMPLE)
    assert result.code == 0, result


def _key_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_key_paths(annotation, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def test_config_example_yaml_lists_every_key_of_the_schema_with_a_comment() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    lines = text.splitlines()
    keys = _key_paths(Settings)
    assert len(keys) >= 25  # a sanity check that the walk found the nested sections
    for path in keys:
        node: Any = data
        for part in path:
            assert isinstance(node, dict) and part in node, f"{'.'.join(path)} is missing from {EXAMPLE.name}"
            node = node[part]
        # The key's line has a comment, or the line above it is one.
        indent = "  " * (len(path) - 1)
        number = next(i for i, line in enumerate(lines) if line.startswith(f"{indent}{path[-1]}:")
                      and _under(lines, i, path))
        assert "#" in lines[number] or lines[number - 1].strip().startswith("#"), \
            f"{'.'.join(path)} has no comment in {EXAMPLE.name}"


def _under(lines: list[str], index: int, path: tuple[str, ...]) -> bool:
    """True when line ``index`` sits inside the sections named by ``path[:-1]``."""
    depth = len(path) - 1
    for level in range(depth - 1, -1, -1):
        indent = "  " * level
        for line in reversed(lines[:index]):
            if line.startswith(indent) and not line.startswith(indent + " ") and line.strip() \
                    and not line.strip().startswith("#"):
                if line.strip() != f"{path[level]}:":
                    return False
                break
    return True


def test_config_show_prints_every_key(run: CLI) -> None:
    shown = _show(run)
    for path in _key_paths(Settings):
        node: Any = shown
        for part in path:
            assert part in node, ".".join(path)
            node = node[part]
    assert json.dumps(shown)  # plain data


def test_a_tilde_in_a_path_means_the_home_directory(run: CLI, home: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "data_dir: ~/lab-data\nmaster_key:\n  file: ~/keys/master.key\naudit:\n  archive_dir: ~/arch\n")
    shown = _show(run, "--config", path)
    assert shown["data_dir"] == str(home / "lab-data")
    assert shown["master_key"]["file"] == str(home / "keys" / "master.key")
    assert shown["audit"]["archive_dir"] == str(home / "arch")
    assert shown["database"]["url"] == f"sqlite:///{home / 'lab-data' / 'unityctl.db'}"
    monkeypatch.setenv("UNITYCTL_DATA_DIR", "~/from-env")
    assert _show(run)["data_dir"] == str(home / "from-env")
