"""ACME adapter: issue, renew and revoke TLS certificates with certbot, run in-process.

certbot has no stable Python API, so this module drives its command line entry point
``certbot.main.main([...])``: success returns None, failure raises. Three properties of certbot
shape everything below:

* It takes lock files in its config/work/logs directories and keeps them until the process exits.
  Every call therefore gets its own fresh private ``--config-dir/--work-dir/--logs-dir`` under a
  temporary directory that is removed afterwards, so two processes (the CLI and the daemon, or
  several daemon replicas) never collide, and nothing certbot writes (keys, logs) outlives the call.
* It mutates process-wide state: it installs handlers on the root logger and sets it to DEBUG,
  replaces ``sys.excepthook``, writes to stdout/stderr, reads ``REQUESTS_CA_BUNDLE`` from the
  environment, and installs signal handlers (which Python forbids outside the main thread). Each
  call runs inside a sandbox that captures its output and restores all of that, and calls inside
  one process are serialised by a lock, because that state cannot be shared by two certbot runs
  at once.
* Its errors are exceptions (ACME problem documents, requests errors, certbot errors) with long,
  sometimes multi-line text. They become one-line :class:`ProviderError`\\ s; never a traceback,
  never key material.

certbot is imported inside the functions that need it: it is slow to import and ``unityctl
--help`` must not pay for it. This module never touches the database.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from unityctl.core.errors import ParseError, ProviderError, UsageError
from unityctl.creds.x509info import CertInfo, parse_certificate, split_chain

__all__ = [
    "LETSENCRYPT",
    "LETSENCRYPT_STAGING",
    "REVOCATION_REASONS",
    "SERVER_ALIASES",
    "AcmeRequest",
    "CertbotDirs",
    "IssuedCertificate",
    "certbot_args",
    "issue",
    "renew",
    "resolve_server",
    "revoke",
    "revoke_args",
    "root_fingerprint_matches",
    "step_ca_directory",
]

logger = logging.getLogger(__name__)

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
SERVER_ALIASES: dict[str, str] = {
    "letsencrypt": LETSENCRYPT,
    "letsencrypt-staging": LETSENCRYPT_STAGING,
}
# certbot's own names for RFC 5280 reasons (``certbot revoke --reason``).
REVOCATION_REASONS = ("unspecified", "keycompromise", "affiliationchanged", "superseded",
                      "cessationofoperation")
CHALLENGES = ("http-01",)
MODES = ("standalone", "webroot")
KEY_TYPES = ("ecdsa", "rsa")
# The lineage name inside the private config dir: fixed, so the files are found without guessing
# certbot's naming (first domain, "-0001" suffixes...).
_CERT_NAME = "unityctl"
# Loggers certbot's run emits through; kept away from unityctl's own handlers during a call.
_CERTBOT_LOGGERS = ("certbot", "acme", "josepy", "urllib3", "requests", "parsedatetime",
                    "configobj", "configargparse")
# One certbot run at a time per process: see the module docstring.
_CERTBOT_LOCK = threading.Lock()


def resolve_server(server: str) -> str:
    """Turn an alias ("letsencrypt", "letsencrypt-staging") or URL into an ACME directory URL.

    Raises: UsageError when ``server`` is neither an alias nor an http(s) URL.
    """
    url = SERVER_ALIASES.get(server.strip().lower(), server.strip())
    if not re.match(r"^https?://[^\s/]+", url):
        raise UsageError(
            f"ACME server {server!r} is neither an http(s) directory URL nor one of "
            f"{', '.join(SERVER_ALIASES)}"
        )
    return url


@dataclass
class AcmeRequest:
    """Everything needed to ask an ACME CA for one certificate.

    ``domains``: names on the certificate, the first one is the subject CN. ``server``: directory
    URL or alias (see :data:`SERVER_ALIASES`). ``mode``: "standalone" (certbot answers http-01 on
    ``http_address:http_port`` itself; the port must be reachable as port 80 from the CA) or
    "webroot" (certbot writes the token under ``webroot/.well-known/acme-challenge`` for a running
    web server to serve). ``email``: None registers without one (no expiry mails from the CA).
    ``ca_bundle``: PEM file trusted for the ACME server's own HTTPS (Pebble, step-ca); None uses
    the system store. ``eab_kid``/``eab_hmac``: External Account Binding for CAs that require it;
    the HMAC is a secret and is kept out of ``repr``.

    Raises (at construction): UsageError for impossible combinations.
    """

    domains: Sequence[str]
    server: str = "letsencrypt"
    challenge: str = "http-01"
    mode: str = "standalone"
    http_port: int = 80
    http_address: str = ""
    webroot: str | Path | None = None
    key_type: str = "ecdsa"
    email: str | None = None
    ca_bundle: str | Path | None = None
    eab_kid: str | None = None
    eab_hmac: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.domains = [d.strip() for d in self.domains if d and d.strip()]
        if not self.domains:
            raise UsageError("an ACME request needs at least one domain")
        if self.challenge not in CHALLENGES:
            raise UsageError(f"ACME challenge {self.challenge!r} is not supported "
                             f"(supported: {', '.join(CHALLENGES)})")
        if self.mode not in MODES:
            raise UsageError(f"ACME mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "webroot" and not self.webroot:
            raise UsageError("ACME webroot mode needs a webroot directory")
        if not 0 < int(self.http_port) < 65536:
            raise UsageError(f"http port {self.http_port} is not a TCP port")
        if self.key_type not in KEY_TYPES:
            raise UsageError(f"key type {self.key_type!r} is not one of {', '.join(KEY_TYPES)}")
        if bool(self.eab_kid) != bool(self.eab_hmac):
            raise UsageError("External Account Binding needs both eab_kid and eab_hmac")
        self.server = resolve_server(self.server)


@dataclass(frozen=True)
class CertbotDirs:
    """The private certbot directories of one call."""

    config: Path
    work: Path
    logs: Path

    @classmethod
    def under(cls, root: Path) -> CertbotDirs:
        """The three directories below ``root`` (not created: certbot creates them 0700)."""
        return cls(config=root / "config", work=root / "work", logs=root / "logs")


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate as the CA returned it. ``key_pem`` is secret and kept out of ``repr``."""

    cert_pem: str
    chain_pem: str
    fullchain_pem: str
    key_pem: str = field(repr=False)
    info: CertInfo


def _common_args(server: str, dirs: CertbotDirs) -> list[str]:
    return [
        "--server", server,
        "--config-dir", str(dirs.config),
        "--work-dir", str(dirs.work),
        "--logs-dir", str(dirs.logs),
        "--non-interactive",
        # --quiet makes certbot's displayer write to /dev/null and its console log level ERROR.
        "--quiet",
    ]


def certbot_args(req: AcmeRequest, dirs: CertbotDirs) -> list[str]:
    """Build the ``certbot certonly`` command line for ``req`` using the private ``dirs``.

    Pure: no file or network access, so it is what tests check for the modes that a test CA
    cannot validate (webroot). The result contains the EAB HMAC when one is set: do not log it.
    """
    args = ["certonly", *_common_args(req.server, dirs), "--agree-tos",
            "--cert-name", _CERT_NAME, "--preferred-challenges", req.challenge]
    if req.mode == "standalone":
        args += ["--standalone", "--http-01-port", str(req.http_port)]
        if req.http_address:
            args += ["--http-01-address", req.http_address]
    else:
        args += ["--webroot", "--webroot-path", str(req.webroot)]
    if req.key_type == "ecdsa":
        args += ["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"]
    else:
        args += ["--key-type", "rsa", "--rsa-key-size", "2048"]
    if req.email:
        args += ["--email", req.email, "--no-eff-email"]
    else:
        args += ["--register-unsafely-without-email"]
    if req.eab_kid and req.eab_hmac:
        args += ["--eab-kid", req.eab_kid, "--eab-hmac-key", req.eab_hmac]
    for domain in req.domains:
        args += ["--domain", domain]
    return args


def revoke_args(server: str, cert_path: Path, key_path: Path, reason: str,
                dirs: CertbotDirs) -> list[str]:
    """Build the ``certbot revoke`` command line (signed with the certificate's own key, so no
    ACME account is needed)."""
    return ["revoke", *_common_args(server, dirs), "--cert-path", str(cert_path),
            "--key-path", str(key_path), "--reason", reason, "--no-delete-after-revoke"]


class _DropCertbotRecords(logging.Filter):
    """Keep certbot's (DEBUG, possibly sensitive) records out of unityctl's own log handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] not in _CERTBOT_LOGGERS


def _release_certbot_locks(root: Path) -> None:
    """Release the directory locks certbot keeps until process exit, for dirs under ``root``.

    certbot holds them in ``certbot.util._LOCKS`` (private, hence getattr): without this a long
    running daemon would keep three open file descriptors per issuance forever.
    """
    import certbot.util

    locks = getattr(certbot.util, "_LOCKS", None)
    if not isinstance(locks, dict):
        return
    for path in [p for p in locks if str(p).startswith(str(root))]:
        try:
            locks.pop(path).release()
        except Exception:  # noqa: BLE001 - the directory is about to be deleted anyway
            logger.debug("could not release certbot lock on %s", path)


def _allow_off_main_thread() -> Callable[[], None]:
    """Let certbot run in a worker thread (the daemon's scheduler, a thread pool).

    certbot's ErrorHandler installs SIGTERM/SIGHUP handlers around its work so it can roll back a
    web server's config when killed; Python only allows ``signal.signal`` in the main thread, so
    off it every issuance fails with "signal only works in main thread". We only use
    certonly/revoke with private directories that are deleted anyway, so there is nothing to roll
    back: off the main thread the two (private) methods become no-ops for the duration of the call.
    The process-wide lock guarantees no other certbot call sees the patch. Returns the undo.
    """
    if threading.current_thread() is threading.main_thread():
        return lambda: None
    from certbot._internal import error_handler

    cls = error_handler.ErrorHandler
    saved = {name: cls.__dict__[name] for name in ("_set_signal_handlers", "_reset_signal_handlers")
             if name in cls.__dict__}
    for name in saved:
        setattr(cls, name, lambda self: None)

    def undo() -> None:
        for name, func in saved.items():
            setattr(cls, name, func)

    return undo


@contextmanager
def _certbot_sandbox(ca_bundle: str | Path | None) -> Iterator[io.StringIO]:
    """Run the body with certbot's process-wide side effects contained, then undo them.

    Yields the buffer that receives everything certbot writes to stdout and stderr, so unityctl's
    stdout stays data-only. Restores: root logger handlers and level, ``sys.excepthook``,
    ``REQUESTS_CA_BUNDLE``.
    """
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    saved_hook = sys.excepthook
    saved_bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    drop = _DropCertbotRecords()
    for handler in saved_handlers:
        handler.addFilter(drop)
    if ca_bundle is not None:
        # requests reads this per request; set only for the call because it is process-wide.
        os.environ["REQUESTS_CA_BUNDLE"] = str(ca_bundle)
    buffer = io.StringIO()
    unpatch = _allow_off_main_thread()
    try:
        with redirect_stdout(buffer), redirect_stderr(buffer):
            yield buffer
    finally:
        unpatch()
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
                target = getattr(handler, "target", None)
                handler.close()
                if isinstance(target, logging.Handler):
                    target.close()  # certbot's temporary pre-argparse log file
        for handler in saved_handlers:
            handler.removeFilter(drop)
        root.setLevel(saved_level)
        sys.excepthook = saved_hook
        if saved_bundle is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = saved_bundle


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _describe(exc: BaseException) -> str:
    """One line saying why certbot failed, most specific first."""
    try:
        from acme import messages
    except ImportError:  # pragma: no cover - acme is a dependency of certbot
        messages = None  # type: ignore[assignment]
    import requests

    if messages is not None and isinstance(exc, messages.Error):
        # An RFC 8555 problem document: "urn:ietf:params:acme:error:TYPE :: title :: detail".
        return str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return ("TLS verification of the ACME server failed (give the CA's root as ca_bundle): "
                + _short(exc))
    if isinstance(exc, requests.exceptions.RequestException):
        match = _ERRNO_RE.search(str(exc))
        return f"cannot reach the ACME server: {match.group(1) if match else _short(exc)}"
    if isinstance(exc, SystemExit):
        return f"certbot exited with {exc.code}"
    text = str(exc) or type(exc).__name__
    return text


def _short(exc: BaseException) -> str:
    """The innermost cause's text, which is the readable part of requests/urllib3 chains."""
    while exc.__cause__ is not None or (exc.args and isinstance(exc.args[0], BaseException)):
        exc = exc.__cause__ or exc.args[0]
    return str(exc)


def _problem_from_output(output: str) -> str | None:
    """certbot logs failed challenges as ``Type: ...`` / ``Detail: ...`` lines; pick them up."""
    typ = re.search(r"Type:\s*(\S+)", output)
    detail = re.search(r"Detail:\s*(.+)", output)
    if typ or detail:
        return " :: ".join(m.group(1).strip() for m in (typ, detail) if m)
    return None


def _safe(message: str) -> str:
    # A private key must never reach an error message; certbot does not put one there, but a
    # single check is cheaper than trusting every code path of a third-party tool.
    if "PRIVATE KEY" in message:
        return "certbot failed (details withheld: the message contained key material)"
    return message


def _run_certbot(args: list[str], *, ca_bundle: str | Path | None, root: Path,
                 what: str) -> None:
    """Run ``certbot.main.main(args)`` in the sandbox; raise ProviderError on any failure."""
    import certbot.main

    with _CERTBOT_LOCK:
        output = ""
        failure: BaseException | None = None
        result: object = None
        try:
            with _certbot_sandbox(ca_bundle) as buffer:
                try:
                    result = certbot.main.main(args)
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - certbot raises anything
                    failure = exc
                finally:
                    output = buffer.getvalue()
        finally:
            _release_certbot_locks(root)
        if output.strip():
            logger.debug("certbot output for %s: %s", what, " | ".join(output.split("\n")))
        if failure is not None:
            reason = _describe(failure)
            if reason in {"Some challenges have failed.", "Challenge failed"}:
                reason = _problem_from_output(output) or reason
            # "from None": the chained certbot traceback is what must never reach the user.
            raise ProviderError(_safe(f"{what} failed: {reason}")) from None
        if result is not None:
            raise ProviderError(_safe(f"{what} failed: {result}"))


@contextmanager
def _private_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="unityctl-certbot-"))  # mode 0700
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def issue(req: AcmeRequest) -> IssuedCertificate:
    """Obtain a new certificate for ``req.domains`` from ``req.server``.

    In: an :class:`AcmeRequest`. A new ACME account and a new private key are created for the call.
    Out: :class:`IssuedCertificate` with the leaf, the chain, the full chain, the private key PEM
        and the parsed leaf.
    Raises: ProviderError (one line: the CA's problem type and detail, or why the server could not
        be reached); ParseError if certbot produced an unreadable certificate.
    """
    what = f"ACME issuance for {', '.join(req.domains)} at {req.server}"
    with _private_root() as root:
        dirs = CertbotDirs.under(root)
        _run_certbot(certbot_args(req, dirs), ca_bundle=req.ca_bundle, root=root, what=what)
        live = dirs.config / "live" / _CERT_NAME
        try:
            cert_pem = (live / "cert.pem").read_text()
            chain_pem = (live / "chain.pem").read_text()
            fullchain_pem = (live / "fullchain.pem").read_text()
            key_pem = (live / "privkey.pem").read_text()
        except OSError as exc:
            raise ProviderError(f"{what}: certbot reported success but wrote no certificate "
                                f"({exc.strerror})") from None
    try:
        info = parse_certificate(cert_pem)
        split_chain(fullchain_pem)
    except ParseError as exc:
        raise ParseError(f"{what}: {exc}") from None
    return IssuedCertificate(cert_pem=cert_pem, chain_pem=chain_pem, fullchain_pem=fullchain_pem,
                             key_pem=key_pem, info=info)


def renew(req: AcmeRequest) -> IssuedCertificate:
    """Renew: a fresh issuance with the same parameters (new key, new serial).

    certbot's own ``renew`` works from the lineage in its config dir; ours are private and deleted
    after every call by design (no lock or state sharing between processes, no keys left on disk),
    so there is nothing to renew from. ACME has no renewal operation anyway: a renewal *is* a new
    order. A new key each time is also the better practice.

    In/out/raises: as :func:`issue`.
    """
    return issue(req)


def revoke(server: str, cert_pem: str, key_pem: str, ca_bundle: str | Path | None = None,
           reason: str = "unspecified") -> None:
    """Revoke a certificate, signing the request with the certificate's own private key.

    In: server URL or alias, the certificate PEM (leaf first; a full chain is fine), its private
        key PEM (written 0600 into the private temp dir for certbot, deleted afterwards), CA bundle
        for the server's HTTPS, a reason (see :data:`REVOCATION_REASONS`).
    Out: None once the CA has revoked it.
    Raises: UsageError for an unknown reason or server; ParseError for a bad certificate;
        ProviderError when the CA refuses (e.g. "urn:ietf:params:acme:error:alreadyRevoked").
    """
    reason_key = reason.strip().lower().replace("_", "").replace("-", "")
    if reason_key not in REVOCATION_REASONS:
        raise UsageError(f"revocation reason {reason!r} is not one of {', '.join(REVOCATION_REASONS)}")
    url = resolve_server(server)
    info = parse_certificate(cert_pem)
    leaf = split_chain(cert_pem)[0]
    what = f"ACME revocation of certificate {info.serial_hex} at {url}"
    with _private_root() as root:
        cert_path, key_path = root / "cert.pem", root / "privkey.pem"
        cert_path.write_text(leaf)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key_pem)
        dirs = CertbotDirs.under(root)
        _run_certbot(revoke_args(url, cert_path, key_path, reason_key, dirs),
                     ca_bundle=ca_bundle, root=root, what=what)


def step_ca_directory(url: str, provisioner: str) -> str:
    """The ACME directory URL of a step-ca ACME provisioner: ``https://CA/acme/PROVISIONER/directory``.

    In: the CA's base URL ``https://HOST[:PORT]`` (a trailing slash is fine, a path is not), the
        provisioner's name (URL-quoted into the path).
    Raises: UsageError when the URL is not https or the provisioner name is empty.
    """
    base = url.strip().rstrip("/")
    if not re.match(r"^https://[^\s/]+$", base):
        raise UsageError(f"step-ca URL {url!r} must be https://HOST[:PORT] with no path")
    name = provisioner.strip()
    if not name or "/" in name:
        raise UsageError(f"step-ca provisioner name {provisioner!r} is empty or contains '/'")
    from urllib.parse import quote

    return f"{base}/acme/{quote(name, safe='')}/directory"


def root_fingerprint_matches(ca_bundle_pem: str, expected_sha256_hex: str) -> bool:
    """Tell whether the CA bundle contains the root whose SHA-256 fingerprint is pinned.

    step-ca identifies its root by fingerprint (``step ca root``/``step certificate fingerprint``);
    pinning it before trusting a downloaded bundle stops a man-in-the-middle from substituting
    their own CA. Colons, spaces and case in ``expected_sha256_hex`` are ignored.

    Raises: ParseError for a bad bundle; UsageError when the expected value is not 64 hex digits.
    """
    expected = re.sub(r"[\s:]", "", expected_sha256_hex).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise UsageError("a SHA-256 root fingerprint is 64 hexadecimal digits")
    return any(parse_certificate(pem).fingerprint_sha256 == expected
               for pem in split_chain(ca_bundle_pem))
