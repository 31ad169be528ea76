"""The one error hierarchy of unityctl.

Every error a user can cause or meet is a subclass of :class:`UnityctlError`. Each class carries an
exit code; ``unityctl.cli`` is the one place that turns an error into one line on stderr and that
exit code. Messages are one line, name what was wrong, and never contain secrets.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_ATTENTION = 4  # "updates available" / "alerts open" / "certificates expiring" when asked


class UnityctlError(Exception):
    """Something went wrong that the user can understand and act on."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str) -> None:
        # Keep messages to one line: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(UnityctlError):
    """The command line asked for something impossible (bad argument, missing option)."""

    exit_code = EXIT_USAGE


class ConfigError(UnityctlError):
    """The configuration file or environment holds an invalid value."""

    exit_code = EXIT_USAGE


class NotFoundError(UnityctlError):
    """A named object (key, server, alert...) does not exist."""


class AlreadyExistsError(UnityctlError):
    """An object with that name already exists."""


class DatabaseError(UnityctlError):
    """The database cannot be reached, is not migrated, or refused a write."""


class MigrationError(DatabaseError):
    """The schema is not where it should be (missing migration, drift between models and migrations)."""


class MasterKeyError(UnityctlError):
    """The master key is missing, wrong, or cannot be derived."""


class DecryptionError(UnityctlError):
    """A stored secret failed authentication: tampered, moved to another row, or wrong key."""


class AuditError(UnityctlError):
    """The audit log cannot be written, or its chain does not verify."""


class ParseError(UnityctlError):
    """Captured output (smartctl, mdstat, zpool, ...) or a server's answer could not be parsed."""


class SSHError(UnityctlError):
    """An SSH connection or remote command failed."""


class SSHAuthenticationError(SSHError):
    """The server refused the supplied key/password (or certificate) for the user."""


class SSHConnectionError(SSHError):
    """The server could not be reached: connection refused, no route, jump host could not forward."""


class SSHTimeoutError(SSHError):
    """The server did not answer in time (TCP connect, SSH banner, authentication or command)."""


class HostKeyError(SSHError):
    """A server presented a host key different from the pinned one (possible man-in-the-middle)."""


class RemoteCommandError(SSHError):
    """A remote command ran but exited non-zero."""


class NotificationError(UnityctlError):
    """A notification channel could not deliver a message."""


class ProviderError(UnityctlError):
    """An external provider (ACME CA, step-ca, registry) refused or failed a request."""


class PartialFailure(UnityctlError):
    """A batch finished with some items failed; the summary says which."""

    exit_code = EXIT_PARTIAL


class StateError(UnityctlError):
    """The request conflicts with the current state (e.g. deleting a key that is still deployed)."""
