"""Configuration: a YAML file validated by a typed schema, overridden by env and flags.

Precedence (highest first): command-line flag > ``UNITYCTL_*`` environment > config file > default.
Every validation error is reported as one line naming the key path and the file line, e.g.
``database.url: must be a URL such as sqlite:///path or postgresql+psycopg://user@host/db (line 3)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from unityctl.core import paths
from unityctl.core.durations import parse_seconds
from unityctl.core.errors import ConfigError, UsageError


def _seconds(value: Any) -> int:
    try:
        return parse_seconds(value)
    except UsageError as exc:
        raise ValueError(str(exc)) from None


Seconds = Annotated[int, BeforeValidator(_seconds)]
# `~/...` in the file or the environment means the user's home, as in a shell.
UserPath = Annotated[Path, AfterValidator(lambda path: path.expanduser())]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatabaseConfig(_Section):
    url: str | None = Field(default=None, description="database URL; default SQLite in data_dir")
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from unityctl.core import dburl

        return dburl.normalize(value)


class MasterKeyConfig(_Section):
    file: UserPath | None = Field(default=None, description="master key file; default <data_dir>/master.key")


class AuditConfig(_Section):
    archive_after_days: int = Field(default=365, ge=1)
    archive_dir: UserPath | None = None


class AlertsConfig(_Section):
    repeat_after: Seconds = 3600
    repeat_max: Seconds = 86400
    retry_after: Seconds = 300
    max_attempts: int = Field(default=5, ge=1)
    delivery_timeout: Seconds = 10


class SSHConfig(_Section):
    connect_timeout: Seconds = 10
    command_timeout: Seconds = 60


class CredsConfig(_Section):
    renew_before_days: int = Field(default=30, ge=1)
    expiry_alert_days: list[int] = Field(default_factory=lambda: [30, 14, 7, 1])
    unused_key_days: int = Field(default=90, ge=1)
    default_key_type: Literal["ed25519", "rsa", "ecdsa"] = "ed25519"


class RetentionConfig(_Section):
    raw_days: int = Field(default=7, ge=1)
    hourly_days: int = Field(default=90, ge=1)


class InfraConfig(_Section):
    interval: Seconds = 300
    max_parallel: int = Field(default=32, ge=1, le=1024)
    connect_timeout: Seconds = 10
    command_timeout: Seconds = 120
    filesystem_warning_percent: int = Field(default=85, ge=1, le=100)
    filesystem_critical_percent: int = Field(default=95, ge=1, le=100)
    offline_after_failures: int = Field(default=2, ge=1)
    online_after_successes: int = Field(default=2, ge=1)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "warning"


class Settings(_Section):
    """The whole configuration. ``data_dir`` and ``database.url`` are resolved by :func:`load`."""

    data_dir: UserPath | None = None
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    master_key: MasterKeyConfig = Field(default_factory=MasterKeyConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    ssh: SSHConfig = Field(default_factory=SSHConfig)
    creds: CredsConfig = Field(default_factory=CredsConfig)
    infra: InfraConfig = Field(default_factory=InfraConfig)

    # Resolved by load(): where the settings came from (not a config key).
    source_file: Path | None = Field(default=None, exclude=True)

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else paths.data_home()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.resolved_data_dir / 'unityctl.db'}"

    @property
    def master_key_file(self) -> Path:
        return self.master_key.file or self.resolved_data_dir / "master.key"


# Environment variables with a documented short name; everything else is UNITYCTL_SECTION__KEY.
_ENV_SHORTCUTS = {
    "UNITYCTL_DATABASE_URL": ("database", "url"),
    "UNITYCTL_DATA_DIR": ("data_dir",),
    "UNITYCTL_MASTER_KEY_FILE": ("master_key", "file"),
}
_ENV_NOT_SETTINGS = {"UNITYCTL_CONFIG", "UNITYCTL_PASSPHRASE", "UNITYCTL_CORPUS", "UNITYCTL_TEST_DATABASE_URL"}


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                key = (*prefix, str(index))
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _env_overrides(environ: dict[str, str]) -> list[tuple[tuple[str, ...], Any, str]]:
    """(key path, value, variable name) for every UNITYCTL_* variable that names a setting."""
    found = []
    for name, value in sorted(environ.items()):
        if not name.startswith("UNITYCTL_") or name in _ENV_NOT_SETTINGS:
            continue
        if name in _ENV_SHORTCUTS:
            # Paths and URLs are taken verbatim.
            found.append((_ENV_SHORTCUTS[name], value, name))
        elif "__" in name:
            path = tuple(part.lower() for part in name[len("UNITYCTL_"):].split("__"))
            found.append((path, _parse_env_value(value), name))
    return found


def _parse_env_value(value: str) -> Any:
    # YAML scalars give "5" -> 5, "true" -> True, "[30, 7]" -> list, like the file would.
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _format_error(exc: ValidationError, lines: dict[tuple[str, ...], int], env_names: dict[tuple[str, ...], str],
                  source: str) -> str:
    err = exc.errors()[0]
    path = tuple(str(p) for p in err["loc"])
    dotted = ".".join(path) or "(top level)"
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = err["msg"].removeprefix("Value error, ")
    where = ""
    if path in env_names:
        where = f" (from environment variable {env_names[path]})"
    else:
        for n in range(len(path), 0, -1):
            if path[:n] in lines:
                where = f" (line {lines[path[:n]]} of {source})"
                break
    more = f"; and {len(exc.errors()) - 1} more error(s)" if len(exc.errors()) > 1 else ""
    return f"{dotted}: {message}{where}{more}"


def load(
    config_file: Path | str | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[tuple[str, ...], Any] | None = None,
    require_file: bool = False,
    missing_ok: bool = False,
) -> Settings:
    """Load settings from file, environment and flag overrides.

    ``config_file``: explicit file (flag); else ``$UNITYCTL_CONFIG``; else the XDG default, which may
    be absent (defaults apply). ``overrides``: values from command-line flags, by key path.
    ``missing_ok``: an explicit file that does not exist yet is not an error (``unityctl init`` creates it).
    Raises ConfigError with one line naming the key path and line on any invalid value.
    """
    environ = dict(os.environ if environ is None else environ)
    explicit = config_file or environ.get("UNITYCTL_CONFIG")
    path = Path(explicit).expanduser() if explicit else paths.default_config_file()
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source_file: Path | None = None
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.__class__.__name__}") from None
        try:
            loaded = yaml.safe_load(text)
            lines = _yaml_lines(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}: invalid YAML: {problem}{line}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(loaded).__name__}")
        data = loaded
        source_file = path
    elif (explicit or require_file) and not missing_ok:
        raise ConfigError(f"{path}: config file not found")

    env_names: dict[tuple[str, ...], str] = {}
    for key_path, value, name in _env_overrides(environ):
        _set_path(data, key_path, value)
        env_names[key_path] = name
    for key_path, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, key_path, value)
            env_names.pop(key_path, None)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, lines, env_names, str(path))) from None
    settings.source_file = source_file
    return settings


def validate_file(path: Path | str) -> Settings:
    """Validate one config file on its own (no environment), as ``unityctl config validate`` does."""
    return load(path, environ={}, require_file=True)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with passwords in URLs replaced by ``***``."""
    data = settings.model_dump(mode="json")
    url = data["database"]["url"] or settings.database_url
    data["database"]["url"] = redact_url(url)
    data["data_dir"] = str(settings.resolved_data_dir)
    data["master_key"]["file"] = str(settings.master_key_file)
    return data


def redact_url(url: str) -> str:
    """Hide the password of a URL (``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``)."""
    import re

    return re.sub(r"(://[^:/@\s]+):[^@\s]*@", r"\1:***@", url)


EXAMPLE_FILE_NAME = "config.example.yaml"
