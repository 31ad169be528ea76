"""XDG locations of unityctl's config and data (no heavy imports: used at start-up)."""

from __future__ import annotations

import os
from pathlib import Path


def config_home() -> Path:
    """``$XDG_CONFIG_HOME/unityctl`` or ``~/.config/unityctl``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "unityctl"


def data_home() -> Path:
    """``$XDG_DATA_HOME/unityctl`` or ``~/.local/share/unityctl``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "unityctl"


def default_config_file() -> Path:
    return config_home() / "config.yaml"


def write_private_file(path: Path, data: bytes) -> None:
    """Create or replace ``path`` with mode 0600 from the first byte on (never world-readable).

    The file is written beside its final name and renamed over it, so readers never see half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
