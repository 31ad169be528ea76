"""The per-invocation context every command uses: options, settings, engine, keyring, sessions.

Everything is created lazily, so ``unityctl version`` loads no config and opens no database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from unityctl.core.config import Settings
    from unityctl.core.crypto import Keyring
    from unityctl.core.output import Output
    from unityctl.core.readdb import ReadConnection


@dataclass
class AppContext:
    config_file: Path | None = None
    database_url: str | None = None
    data_dir: Path | None = None
    json_mode: bool = False
    quiet: bool = False
    verbose: bool = False
    debug: bool = False
    no_color: bool = False
    passphrase: str | None = field(default=None, repr=False)
    # `unityctl init` creates the config file, so a --config FILE that does not exist yet is fine there.
    config_may_be_missing: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)
    _keyring: Keyring | None = field(default=None, repr=False)
    _output: Output | None = field(default=None, repr=False)

    def output(self, json_flag: bool = False) -> Output:
        """The output for this command; a command's own ``--json`` adds to the global one."""
        if json_flag and not self.json_mode:
            self.json_mode = True
            self._output = None
        if self._output is None:
            from unityctl.core.output import Output

            self._output = Output(json_mode=self.json_mode, quiet=self.quiet, verbose=self.verbose,
                                  no_color=self.no_color)
        return self._output

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from unityctl.core import config

            overrides: dict[tuple[str, ...], Any] = {}
            if self.database_url:
                overrides[("database", "url")] = self.database_url
            if self.data_dir:
                overrides[("data_dir",)] = str(self.data_dir)
            self._settings = config.load(self.config_file, overrides=overrides,
                                         missing_ok=self.config_may_be_missing)
        return self._settings

    def engine(self, *, migrated: bool = True) -> Engine:
        """The process's engine; by default refuses a database that is not migrated to head."""
        if self._engine is None:
            from unityctl.core.db import make_engine

            self._engine = make_engine(self.settings.database_url, echo=self.settings.database.echo)
            if migrated:
                from unityctl.core.migrate import require_head

                require_head(self._engine)
        return self._engine

    def get_passphrase(self) -> str | None:
        return self.passphrase or os.environ.get("UNITYCTL_PASSPHRASE") or None

    def keyring(self) -> Keyring:
        """The master key, loaded and checked against the database once per invocation."""
        if self._keyring is None:
            from unityctl.core.db import session_scope
            from unityctl.core.secrets import load_keyring

            with session_scope(self.engine()) as session:
                self._keyring = load_keyring(session, self.settings, passphrase=self.get_passphrase())
        return self._keyring

    @contextmanager
    def connection(self) -> Iterator[ReadConnection]:
        """A read-only connection on the driver alone (no SQLAlchemy), for hot read paths such as
        `infra status`; see :mod:`unityctl.core.readdb`."""
        from unityctl.core.readdb import open_read

        with open_read(self.settings.database_url) as conn:
            yield conn

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """One unit of work. After a write commits, queued notifications are delivered."""
        from unityctl.core.db import NOTIFICATIONS_PENDING, session_scope

        pending = False
        with session_scope(self.engine(), write=write) as session:
            yield session
            pending = bool(session.info.get(NOTIFICATIONS_PENDING))
        if pending:
            self.deliver_notifications()

    def deliver_notifications(self) -> None:
        from unityctl.core.notify import deliver_pending

        report = deliver_pending(self.engine(), self.keyring(), config=self.settings.alerts)
        if report.retry or report.failed:
            self.output().warn(f"{report.retry + report.failed} notification(s) could not be delivered; "
                               "see `unityctl alerts log` (they are retried)")
