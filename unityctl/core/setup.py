"""`unityctl init`: config, data directory, master key and schema, idempotently."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from unityctl.core import audit, migrate, paths, secrets
from unityctl.core.config import Settings
from unityctl.core.crypto import Keyring
from unityctl.core.db import make_engine, session_scope

CONFIG_TEMPLATE = """\
# unityctl configuration. Every key, with its default, is documented in config.example.yaml
# (and docs/configuration.md). Precedence: flag > UNITYCTL_* environment > this file > default.

# database:
#   url: postgresql+psycopg://unityctl@db.example.org/unityctl   # default: SQLite in the data dir
"""


@dataclass
class InitReport:
    config_file: Path
    config_created: bool
    data_dir: Path
    database_url: str
    revision: str | None
    key_mode: str
    key_created: bool
    keyring: Keyring


def initialize(settings: Settings, *, config_file: Path | None, passphrase: str | None = None) -> InitReport:
    """Create what is missing; never overwrite an existing config or master key.

    Raises ConfigError/DatabaseError/MasterKeyError (one line each) when something is in the way.
    """
    config_path = config_file or settings.source_file or paths.default_config_file()
    config_created = False
    if not config_path.exists():
        config_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        config_path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
        config_created = True
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    engine = make_engine(settings.database_url, echo=settings.database.echo)
    try:
        migrate.upgrade(engine)
        with session_scope(engine, write=True) as session:
            key = secrets.setup_master_key(session, settings, passphrase=passphrase)
            if key.created:
                audit.record(session, key.keyring, action="core.init", object_type="database", object_id="main",
                             details={"key_mode": key.mode, "database": settings.database_url.split(":", 1)[0]})
        return InitReport(config_path, config_created, data_dir, settings.database_url,
                          migrate.current_revision(engine), key.mode, key.created, key.keyring)
    finally:
        engine.dispose()
