"""SSH certificate authority building blocks: CA keys, user/host certificates, KRLs.

Certificates are made with cryptography's ``SSHCertificateBuilder``. Key revocation lists are
made and queried by the real ``ssh-keygen`` (``-k`` / ``-Q``): the KRL format is OpenSSH's own and
sshd is its only consumer, so its own tool is the reference. Nothing here touches a database.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from unityctl.core.errors import ProviderError, UsageError
from unityctl.creds import sshkeys

# Certificates start this much in the past so that a server whose clock lags a little behind
# ours accepts a certificate right after it is issued.
CLOCK_SKEW = timedelta(seconds=60)
DEFAULT_USER_EXTENSIONS: tuple[str, ...] = (
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
)
_MAX_SERIAL = 2**64 - 1
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+)([smhdw])", re.I)
_SSH_KEYGEN_TIMEOUT = 60


@dataclass(frozen=True)
class SignedCert:
    """An issued certificate: the ``*-cert.pub`` line and the facts a service records."""

    cert_line: str
    serial: int
    valid_after: datetime
    valid_before: datetime
    key_id: str
    principals: tuple[str, ...]
    fingerprint: str


def create_ca(comment: str = "unityctl-ca") -> sshkeys.KeyMaterial:
    """Generate a new CA key pair (ed25519).

    Raises: UsageError for a multi-line comment.
    """
    return sshkeys.generate("ed25519", None, comment)


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``30m``, ``8h``, ``7d``, ``1w`` or combinations such as ``1d12h``.

    Out: a positive timedelta. Raises: UsageError with an example of what is accepted.
    """
    cleaned = text.strip()
    hint = f"invalid duration {cleaned[:20]!r}: use a number and a unit s, m, h, d or w (e.g. 8h, 30m, 7d)"
    if not cleaned or _DURATION_RE.sub("", cleaned) != "":
        raise UsageError(hint)
    seconds = sum(int(n) * _DURATION_UNITS[u.lower()] for n, u in _DURATION_RE.findall(cleaned))
    if seconds <= 0:
        raise UsageError(f"invalid duration {cleaned!r}: it must be longer than zero")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise UsageError(f"invalid duration {cleaned[:20]!r}: too long") from None


def sign_user_key(
    ca_private_openssh: str,
    public_line: str,
    *,
    serial: int,
    key_id: str,
    principals: list[str],
    valid_for: timedelta,
    now: datetime | None = None,
    source_address: list[str] | None = None,
    force_command: str | None = None,
    extensions: Iterable[str] = DEFAULT_USER_EXTENSIONS,
    ca_passphrase: bytes | None = None,
) -> SignedCert:
    """Issue a user certificate for ``public_line``.

    In: the CA's OpenSSH private key; the user's ``.pub`` line; serial (0..2^64-1); key id;
    login names (at least one: an empty list would mean "any user"); lifetime; optional
    ``now`` (timezone-aware; default: the current time); critical options ``source-address``
    (CIDR list) and ``force-command``; extensions (default: the five ``permit-*``).
    Out: :class:`SignedCert`; valid from ``now - 60 s`` to ``now + valid_for``.
    Raises: UsageError for bad arguments, ParseError/DecryptionError for a bad CA key or line.
    """
    if not principals:
        raise UsageError("a user certificate needs at least one principal (login name)")
    options: list[tuple[bytes, bytes]] = []
    if force_command is not None:
        if not force_command.strip() or "\n" in force_command or "\x00" in force_command:
            raise UsageError("force-command must be a non-empty single line")
        options.append((b"force-command", force_command.encode()))
    if source_address is not None:
        options.append((b"source-address", _source_addresses(source_address).encode()))
    exts = sorted(set(extensions))
    for ext in exts:
        if not ext or any(c.isspace() or c == "," for c in ext):
            raise UsageError(f"invalid certificate extension {ext[:40]!r}")
    return _sign(
        ca_private_openssh,
        public_line,
        cert_type=serialization.SSHCertificateType.USER,
        serial=serial,
        key_id=key_id,
        principals=principals,
        valid_for=valid_for,
        now=now,
        critical_options=options,
        extensions=exts,
        ca_passphrase=ca_passphrase,
    )


def sign_host_key(
    ca_private_openssh: str,
    host_public_line: str,
    *,
    serial: int,
    key_id: str,
    principals: list[str],
    valid_for: timedelta,
    now: datetime | None = None,
    ca_passphrase: bytes | None = None,
) -> SignedCert:
    """Issue a host certificate for a server's host key.

    In: as :func:`sign_user_key`; ``principals`` are the host names clients connect to.
    Out: :class:`SignedCert` (no critical options, no extensions: OpenSSH defines none for hosts).
    Raises: UsageError for bad arguments, ParseError/DecryptionError for a bad CA key or line.
    """
    if not principals:
        raise UsageError("a host certificate needs at least one host name")
    for name in principals:
        if not re.fullmatch(r"[A-Za-z0-9*?.:_\[\]-]+", name):
            raise UsageError(f"invalid host name {name[:60]!r} for a host certificate")
    return _sign(
        ca_private_openssh,
        host_public_line,
        cert_type=serialization.SSHCertificateType.HOST,
        serial=serial,
        key_id=key_id,
        principals=principals,
        valid_for=valid_for,
        now=now,
        critical_options=[],
        extensions=[],
        ca_passphrase=ca_passphrase,
    )


def build_krl(
    ca_public_line: str,
    *,
    revoked_serials: list[int],
    revoked_public_keys: list[str],
    workdir: str | os.PathLike[str] | None = None,
) -> bytes:
    """Build an OpenSSH key revocation list with ``ssh-keygen -k``.

    In: the CA's public line (serials are revoked for certificates it signed), serials, and
    public keys or certificates to revoke outright; ``workdir`` is where a private (0700)
    temporary directory is made and removed (default: the system temp dir).
    Out: the binary KRL, for sshd's ``RevokedKeys``.
    Raises: UsageError for bad serials, ParseError for bad key lines, ProviderError when
    ``ssh-keygen`` is missing or fails.
    """
    ca = sshkeys.parse_public(ca_public_line)
    if ca.is_certificate or ca.options is not None:
        raise UsageError("the CA public key must be a plain public key line")
    spec: list[str] = []
    for serial in revoked_serials:
        _check_serial(serial)
        spec.append(f"serial: {serial}")
    for line in revoked_public_keys:
        # Re-rendered from the parsed key so that no options or stray text reach the spec file.
        spec.append(sshkeys.parse_public(line).line)
    with _private_dir(workdir) as tmp:
        (tmp / "ca.pub").write_text(ca.line + "\n")
        (tmp / "spec").write_text("".join(f"{item}\n" for item in spec))
        _ssh_keygen(["-k", "-f", str(tmp / "krl"), "-s", str(tmp / "ca.pub"), str(tmp / "spec")])
        return (tmp / "krl").read_bytes()


def krl_revokes(
    krl_bytes: bytes,
    public_or_cert_line: str,
    *,
    workdir: str | os.PathLike[str] | None = None,
) -> bool:
    """Whether a KRL revokes a key or certificate, as ``ssh-keygen -Q`` (and so sshd) decides.

    Raises: ParseError for a bad line, ProviderError for a corrupt KRL or missing ssh-keygen.
    """
    key = sshkeys.parse_public(public_or_cert_line)
    with _private_dir(workdir) as tmp:
        (tmp / "krl").write_bytes(krl_bytes)
        (tmp / "key.pub").write_text(key.line + "\n")
        result = _ssh_keygen(["-Q", "-f", str(tmp / "krl"), str(tmp / "key.pub")], check=False)
    # ssh-keygen -Q: 0 and "ok" when not revoked, 1 and "REVOKED" when revoked, 255 on errors.
    if result.returncode == 0:
        return False
    if result.returncode == 1 and "REVOKED" in result.stdout:
        return True
    raise ProviderError(f"ssh-keygen -Q failed: {_first_line(result.stderr) or 'unknown error'}")


# --- internals ---------------------------------------------------------------------------------


def _sign(
    ca_private_openssh: str,
    public_line: str,
    *,
    cert_type: serialization.SSHCertificateType,
    serial: int,
    key_id: str,
    principals: list[str],
    valid_for: timedelta,
    now: datetime | None,
    critical_options: list[tuple[bytes, bytes]],
    extensions: list[str],
    ca_passphrase: bytes | None,
) -> SignedCert:
    _check_serial(serial)
    if not key_id.strip() or any(c in key_id for c in "\r\n\x00"):
        raise UsageError("a certificate key id must be a non-empty single line")
    for name in principals:
        if not name or any(c.isspace() or c in ",\x00" for c in name):
            raise UsageError(f"invalid principal {name[:60]!r}: no spaces or commas")
    if valid_for <= timedelta(0):
        raise UsageError("a certificate lifetime must be longer than zero")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise UsageError("'now' must be a timezone-aware datetime")
    ca_key = sshkeys.load_private(ca_private_openssh.encode(), ca_passphrase)
    signer = serialization.load_ssh_private_key(ca_key.private_openssh.encode(), None)
    subject = sshkeys.parse_public(public_line)
    if subject.is_certificate:
        raise UsageError("sign a plain public key, not a certificate")
    if subject.options is not None:
        raise UsageError("sign a .pub line, not an authorized_keys line with options")
    public_key = serialization.load_ssh_public_key(f"{subject.ssh_type} {subject.blob_b64}".encode())
    # SSH certificates count whole seconds since the epoch.
    valid_after = (now - CLOCK_SKEW).replace(microsecond=0)
    valid_before = (now + valid_for).replace(microsecond=0)
    builder = (
        serialization.SSHCertificateBuilder()
        .public_key(public_key)  # type: ignore[arg-type]
        .serial(serial)
        .type(cert_type)
        .key_id(key_id.encode())
        .valid_principals([p.encode() for p in principals])
        .valid_after(int(valid_after.timestamp()))
        .valid_before(int(valid_before.timestamp()))
    )
    for name, value in critical_options:
        builder = builder.add_critical_option(name, value)
    for ext in extensions:
        builder = builder.add_extension(ext.encode(), b"")
    try:
        cert = builder.sign(signer)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot sign with this CA key: {exc}") from None
    line = cert.public_bytes().decode()
    if subject.comment:
        line = f"{line} {subject.comment}"
    return SignedCert(
        cert_line=line,
        serial=serial,
        valid_after=valid_after.astimezone(UTC),
        valid_before=valid_before.astimezone(UTC),
        key_id=key_id,
        principals=tuple(principals),
        fingerprint=subject.fingerprint,
    )


def _check_serial(serial: int) -> None:
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 <= serial <= _MAX_SERIAL:
        raise UsageError(f"a certificate serial must be a whole number from 0 to {_MAX_SERIAL}")


def _source_addresses(addresses: list[str]) -> str:
    if not addresses:
        raise UsageError("source-address needs at least one address or CIDR network")
    for item in addresses:
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise UsageError(f"invalid source address {item[:60]!r}: use an IP or CIDR") from None
    return ",".join(item.strip() for item in addresses)


class _private_dir:
    """A 0700 temporary directory, removed on exit (key files never sit in a shared dir)."""

    def __init__(self, parent: str | os.PathLike[str] | None) -> None:
        self._parent = None if parent is None else os.fspath(parent)
        self._path: Path | None = None

    def __enter__(self) -> Path:
        self._path = Path(tempfile.mkdtemp(prefix="unityctl-krl-", dir=self._parent))
        return self._path

    def __exit__(self, *_exc: object) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)


def _ssh_keygen(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise ProviderError("ssh-keygen is not installed (needed for key revocation lists)")
    try:
        result = subprocess.run(
            [exe, *args],
            capture_output=True,
            text=True,
            timeout=_SSH_KEYGEN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ProviderError("ssh-keygen did not finish in time") from None
    if check and result.returncode != 0:
        raise ProviderError(f"ssh-keygen failed: {_first_line(result.stderr) or 'unknown error'}")
    return result


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_USER_EXTENSIONS",
    "SignedCert",
    "build_krl",
    "create_ca",
    "krl_revokes",
    "parse_duration",
    "sign_host_key",
    "sign_user_key",
]
