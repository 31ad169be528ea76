"""The SSH executor every domain reuses: run commands, write files, fan out over many servers.

This module is an *adapter*: it talks to servers and never touches the database. Callers hand it
:class:`Target` objects (credentials already decrypted, in memory only) and a :class:`HostKeyStore`
(usually backed by the database, audited by the caller); it hands back :class:`RunResult` objects
or raises :class:`~unityctl.core.errors.SSHError` subclasses whose messages are one line, name the
server, and never contain a secret.

Why paramiko's ``SSHClient`` and not ``fabric.Connection`` for the executor: fabric's conveniences
are exactly the implicit behaviours a credential manager must switch off (``AutoAddPolicy`` that
trusts any host key, ``~/.ssh/config``, agent and ``~/.ssh/id_*`` look-ups). Building on the
client underneath lets us say exactly which key authenticates and which host key is trusted.
:func:`fabric_connection` still gives a fabric ``Connection`` with the same guarantees to code
that wants fabric's helpers (``put``/``get``/``sudo``).

Host key trust (no known_hosts file anywhere):

* first contact: the presented key is accepted and :meth:`HostKeyStore.pin` is called (the caller
  writes the audit entry);
* later contacts: the key must match the pin, else :class:`~unityctl.core.errors.HostKeyError`
  is raised *before* authentication, so no password or signature reaches an impostor.

Heavy imports (paramiko, fabric) happen inside functions so ``unityctl --help`` stays fast.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from unityctl.core.errors import (HostKeyError, RemoteCommandError, SSHAuthenticationError, SSHConnectionError,
                                  SSHError, SSHTimeoutError, UsageError)

if TYPE_CHECKING:  # pragma: no cover - type-only imports keep start-up fast
    import fabric
    import paramiko

__all__ = [
    "HostKeyStore",
    "LoginInfo",
    "MemoryHostKeyStore",
    "RunResult",
    "SSHAuthenticationError",
    "SSHConnectionError",
    "SSHExecutor",
    "SSHTimeoutError",
    "Target",
    "fabric_connection",
    "fingerprint_of",
    "load_private_key",
]


# --- targets and results -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where and how to log in. Frozen so it can key the connection pool.

    ``private_key_pem`` is the private key *text* (OpenSSH or PEM format), kept in memory only;
    ``certificate`` optionally holds an OpenSSH user certificate line (``ssh-ed25519-cert-v01@...``)
    presented together with that key. ``jump`` is a ProxyJump-style bastion reached first; ``host``
    and ``port`` are then as seen *from the jump host*. ``name`` appears in messages and keys
    :meth:`SSHExecutor.run_many` results (defaults to ``user@host:port``).
    """

    host: str
    user: str
    port: int = 22
    private_key_pem: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    certificate: str | None = field(default=None, repr=False)
    jump: Target | None = None
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    name: str = ""

    @property
    def label(self) -> str:
        """The name used in messages: ``name`` if set, else ``user@host:port``."""
        return self.name or f"{self.user}@{self.host}:{self.port}"

    def __repr__(self) -> str:
        # Written by hand so a secret can never reach a log line or a traceback through repr().
        auth = []
        if self.private_key_pem:
            auth.append("key")
        if self.certificate:
            auth.append("certificate")
        if self.password:
            auth.append("password")
        jump = f", jump={self.jump.label!r}" if self.jump is not None else ""
        return (
            f"Target(name={self.label!r}, host={self.host!r}, port={self.port}, user={self.user!r}, "
            f"auth={'+'.join(auth) or 'none'}{jump})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class RunResult:
    """What a remote command produced. Text is decoded as UTF-8 (invalid bytes replaced)."""

    stdout: str
    stderr: str
    exit_code: int
    duration_s: float
    host_key_fingerprint: str

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0


@dataclass(frozen=True)
class LoginInfo:
    """The answer of :meth:`SSHExecutor.test_login`.

    ``latency_ms`` is one command round trip on the established session; ``connect_ms`` covers
    TCP connect, key exchange and authentication.
    """

    remote_user: str
    host_key_fingerprint: str
    latency_ms: float
    connect_ms: float


# --- host key pinning --------------------------------------------------------------------------


def fingerprint_of(key_b64: str) -> str:
    """OpenSSH-style ``SHA256:<base64, no padding>`` fingerprint of a base64 public key blob.

    In: the base64 part of ``ssh-ed25519 AAAA...``. Out: e.g. ``SHA256:abc...``.
    Raises ValueError when ``key_b64`` is not base64.
    """
    blob = base64.b64decode(key_b64.encode("ascii"), validate=True)
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _pinned_fingerprint(pinned: str) -> str:
    """Normalise what a store returned to a fingerprint: it may be one already or a key line."""
    pinned = pinned.strip()
    if pinned.startswith("SHA256:"):
        return pinned
    parts = pinned.split()
    # "ssh-ed25519 AAAA... [comment]" or just the base64 blob.
    return fingerprint_of(parts[1] if len(parts) >= 2 else parts[0])


@runtime_checkable
class HostKeyStore(Protocol):
    """Where pinned host keys live (the database in production, memory in tests).

    ``get`` returns the pin for ``(host, port)`` or None when the server was never contacted.
    A pin may be given either as the fingerprint ``SHA256:...`` or as the public key line
    ``ssh-ed25519 AAAA...``; both are compared by SHA256 fingerprint.
    ``pin`` is called once, on first contact, with the presented key; the implementation stores
    it and the caller audits it. A pin is replaced only by an explicit, audited "trust" action,
    never by this module.
    """

    def get(self, host: str, port: int) -> str | None:
        """Return the pinned key or fingerprint for ``host:port``, or None when not pinned."""
        ...

    def pin(self, host: str, port: int, key_type: str, key_b64: str, fingerprint: str) -> None:
        """Record ``key_type key_b64`` (fingerprint ``fingerprint``) as the key of ``host:port``."""
        ...


class MemoryHostKeyStore:
    """A thread-safe, in-memory :class:`HostKeyStore` for tests and one-shot callers.

    ``pins`` records every ``pin`` call in order (host, port, key_type, fingerprint) so a test
    can check first-use pinning; ``forget`` drops a pin (what ``trust`` does before re-pinning).
    """

    def __init__(self, initial: Mapping[tuple[str, int], str] | None = None) -> None:
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, int], str] = dict(initial or {})
        self.pins: list[tuple[str, int, str, str]] = []

    def get(self, host: str, port: int) -> str | None:
        """Return the pinned ``"key_type key_b64"`` line (or the fingerprint given initially)."""
        with self._lock:
            return self._keys.get((host, port))

    def pin(self, host: str, port: int, key_type: str, key_b64: str, fingerprint: str) -> None:
        """Store the key line for ``host:port`` and remember the call."""
        with self._lock:
            self._keys[(host, port)] = f"{key_type} {key_b64}"
            self.pins.append((host, port, key_type, fingerprint))

    def forget(self, host: str, port: int) -> None:
        """Drop the pin for ``host:port`` (the next contact pins again)."""
        with self._lock:
            self._keys.pop((host, port), None)


def _make_pinning_policy(store: HostKeyStore, target: Target) -> paramiko.MissingHostKeyPolicy:
    """Build the paramiko policy that pins on first use and refuses a changed key.

    The policy is bound to one target: paramiko hands it ``[host]:port`` strings, and we key the
    store by the target's own host/port instead of re-parsing that.
    """
    import paramiko

    class _PinningPolicy(paramiko.MissingHostKeyPolicy):
        # paramiko calls this for every connection because the client holds no known host keys.
        def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
            key_b64 = key.get_base64()
            presented = fingerprint_of(key_b64)
            pinned = store.get(target.host, target.port)
            if pinned is None:
                store.pin(target.host, target.port, key.get_name(), key_b64, presented)
                return
            expected = _pinned_fingerprint(pinned)
            if expected != presented:
                err = HostKeyError(
                    f"host key of server {target.label} ({target.host}:{target.port}) changed: "
                    f"expected {expected}, presented {presented}; refusing to connect. If the change "
                    f"is legitimate run `unityctl creds servers trust {target.label}`"
                )
                err.expected_fingerprint = expected  # type: ignore[attr-defined]
                err.presented_fingerprint = presented  # type: ignore[attr-defined]
                raise err

    return _PinningPolicy()


# --- keys --------------------------------------------------------------------------------------


def load_private_key(private_key_pem: str, certificate: str | None = None) -> paramiko.PKey:
    """Parse private key text (OpenSSH or PEM; Ed25519, ECDSA or RSA) into a paramiko key.

    In: the key text, optionally an OpenSSH certificate line to present with it.
    Out: a ``paramiko.PKey``. Raises :class:`SSHError` (without the key text) when unparsable.
    """
    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    data = private_key_pem.encode()
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=None)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The message of cryptography's errors never contains key material, but keep ours generic.
        raise SSHError(f"the private key could not be parsed ({type(exc).__name__})") from None
    cls: type[paramiko.PKey]
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        cls = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        cls = paramiko.ECDSAKey
    elif isinstance(loaded, rsa.RSAPrivateKey):
        cls = paramiko.RSAKey
    else:
        raise SSHError(f"unsupported private key type {type(loaded).__name__}")
    key = cls.from_private_key(io.StringIO(private_key_pem))
    if certificate:
        try:
            key.load_certificate(certificate.strip())
        except (ValueError, paramiko.SSHException) as exc:
            raise SSHError(f"the SSH certificate does not match the private key: {exc}") from None
    return key


# --- error mapping -----------------------------------------------------------------------------


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _map_connect_error(target: Target, exc: BaseException) -> SSHError:
    """Turn a paramiko/socket error raised while connecting into a one-line SSHError."""
    import paramiko

    where = f"server {target.label} ({target.host}:{target.port})"
    if isinstance(exc, SSHError):
        return exc
    if isinstance(exc, paramiko.AuthenticationException):
        what = "the supplied " + " or ".join(
            w for w, v in (("key", target.private_key_pem), ("password", target.password)) if v
        ) if (target.private_key_pem or target.password) else "no credentials"
        return SSHAuthenticationError(
            f"{where}: authentication failed for user {target.user!r} with {what}"
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return SSHConnectionError(f"{where}: connection refused (is sshd running?)")
    if isinstance(exc, ConnectionRefusedError):
        return SSHConnectionError(f"{where}: connection refused (is sshd running?)")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return SSHTimeoutError(f"{where}: timed out after {target.connect_timeout:g}s")
    if isinstance(exc, paramiko.ChannelException):
        # Raised by the jump host when it cannot (or will not) open the forwarded connection.
        via = target.jump.label if target.jump else "the jump host"
        return SSHConnectionError(
            f"{where}: jump host {via} refused to forward the connection ({exc.text})"
        )
    if isinstance(exc, paramiko.SSHException):
        text = _first_line(str(exc))
        lowered = text.lower()
        # "No existing session" while connecting: start_client() gave up waiting for the key
        # exchange (it returns silently on its deadline) -- a server that stopped answering.
        if any(s in lowered for s in ("banner", "timeout", "timed out", "no existing session")):
            return SSHTimeoutError(
                f"{where}: timed out after {target.connect_timeout:g}s waiting for the SSH handshake"
            )
        return SSHError(f"{where}: SSH negotiation failed: {text}")
    if isinstance(exc, OSError):
        return SSHConnectionError(f"{where}: {exc.strerror or type(exc).__name__}")
    return SSHError(f"{where}: {type(exc).__name__}: {_first_line(str(exc))}")


# --- the executor ------------------------------------------------------------------------------


class _Conn:
    """One pooled, authenticated connection and the fingerprint of the key it verified."""

    __slots__ = ("client", "fingerprint", "sessions")

    def __init__(self, client: paramiko.SSHClient, fingerprint: str, max_sessions: int) -> None:
        self.client = client
        self.fingerprint = fingerprint
        # sshd refuses sessions beyond MaxSessions (default 10) per connection; stay below it.
        self.sessions = threading.BoundedSemaphore(max_sessions)

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active() and transport.is_authenticated()


# Shell program for write_file: "$1" is the destination, "$2" the octal mode, "$3" mkdir flag.
# The temporary file sits in the destination's directory so `mv` is an atomic rename(2); it is
# created under umask 077 and chmod-ed before a byte is written, so data never exists with looser
# permissions than asked; the trap removes it if anything fails half-way.
_WRITE_FILE_SCRIPT = r"""
set -eu
umask 077
dest=$1
dir=$(dirname -- "$dest")
if [ "$3" = 1 ]; then mkdir -p -m 700 -- "$dir"; fi
tmp=$(mktemp "$dir/.unityctl-tmp.XXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
exec 3>"$tmp"
chmod "$2" "$tmp"
cat >&3
exec 3>&-
mv -f -- "$tmp" "$dest"
trap - EXIT
"""


class SSHExecutor:
    """Runs commands on servers over pooled, host-key-pinned SSH connections.

    Use as a context manager; leaving it closes every pooled connection. One connection per
    target is shared by all threads: paramiko transports multiplex channels safely, and a
    per-target lock makes sure two threads never open two connections to the same target at
    once (so a slow server only ever blocks the threads that want *that* server).
    Note sshd's default ``MaxSessions 10`` caps concurrent commands per connection.
    """

    def __init__(
        self, *, host_keys: HostKeyStore, keepalive_s: int = 30, max_sessions: int = 8
    ) -> None:
        """``host_keys`` holds the pins; ``keepalive_s`` keeps idle pooled connections alive;
        ``max_sessions`` caps concurrent commands per connection (keep it below sshd's
        ``MaxSessions``, default 10); further commands to that server wait for a free slot."""
        if max_sessions < 1:
            raise UsageError("max_sessions must be at least 1")
        self._store = host_keys
        self._keepalive = keepalive_s
        self._max_sessions = max_sessions
        self._pool: dict[Target, _Conn] = {}
        self._locks: dict[Target, threading.Lock] = {}
        self._pool_lock = threading.Lock()
        self._closed = False

    # context manager ----------------------------------------------------------------------
    def __enter__(self) -> SSHExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection (jumped connections before their jump hosts)."""
        with self._pool_lock:
            conns = list(self._pool.items())
            self._pool.clear()
            self._closed = True
        # Close the deepest hops first so a jump host's transport outlives its tunnels.
        conns.sort(key=lambda item: -_depth(item[0]))
        for _target, conn in conns:
            conn.client.close()

    def disconnect(self, target: Target) -> None:
        """Drop the pooled connection to ``target`` (e.g. after its host key was re-trusted)."""
        with self._pool_lock:
            conn = self._pool.pop(target, None)
        if conn is not None:
            conn.client.close()

    # connections --------------------------------------------------------------------------
    def _lock_for(self, target: Target) -> threading.Lock:
        with self._pool_lock:
            if self._closed:
                raise SSHError("the SSH executor is closed")
            return self._locks.setdefault(target, threading.Lock())

    def _connection(self, target: Target) -> _Conn:
        """Return a live pooled connection to ``target``, connecting (again) when needed."""
        with self._lock_for(target):
            with self._pool_lock:
                conn = self._pool.get(target)
            if conn is not None and not conn.alive():
                conn.client.close()
                conn = None
            if conn is None:
                conn = self._connect(target)
                with self._pool_lock:
                    self._pool[target] = conn
            return conn

    def _connect(self, target: Target) -> _Conn:
        """Open and authenticate a new connection (through the jump host when there is one).

        Raises SSHError subclasses; never returns an unauthenticated connection.
        """
        import paramiko

        pkey = (
            load_private_key(target.private_key_pem, target.certificate)
            if target.private_key_pem
            else None
        )
        if pkey is None and not target.password:
            raise SSHAuthenticationError(
                f"server {target.label}: no private key or password supplied for user {target.user!r}"
            )
        sock: Any = None
        if target.jump is not None:
            jump_conn = self._connection(target.jump)
            transport = jump_conn.client.get_transport()
            assert transport is not None  # alive() checked it
            try:
                # The ProxyJump equivalent: a direct-tcpip channel from the jump host to the target.
                sock = transport.open_channel(
                    "direct-tcpip",
                    (target.host, target.port),
                    ("127.0.0.1", 0),
                    timeout=target.connect_timeout,
                )
            except Exception as exc:  # noqa: BLE001 - mapped to one line below
                raise _map_connect_error(target, exc) from None

        client = paramiko.SSHClient()
        # No system/user known_hosts are loaded, so the policy decides for every connection.
        client.set_missing_host_key_policy(_make_pinning_policy(self._store, target))
        try:
            client.connect(
                hostname=target.host,
                port=target.port,
                username=target.user,
                pkey=pkey,
                password=target.password,
                sock=sock,
                timeout=target.connect_timeout,
                banner_timeout=target.connect_timeout,
                auth_timeout=target.connect_timeout,
                channel_timeout=target.connect_timeout,
                # Only the credentials we were given: a test must prove exactly which key works.
                allow_agent=False,
                look_for_keys=False,
            )
        except BaseException as exc:
            client.close()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            # `from None`: paramiko's exception chain adds nothing the one-liner does not say.
            raise _map_connect_error(target, exc) from None
        transport = client.get_transport()
        assert transport is not None
        if self._keepalive:
            transport.set_keepalive(self._keepalive)
        fingerprint = fingerprint_of(transport.get_remote_server_key().get_base64())
        return _Conn(client, fingerprint, self._max_sessions)

    # commands -----------------------------------------------------------------------------
    def run(
        self,
        target: Target,
        command: str,
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> RunResult:
        """Run ``command`` (through the remote user's shell) and collect its output.

        In: the target, the command line, optional ``stdin`` data (closed after sending; with no
        stdin the remote side sees EOF at once), a ``timeout`` in seconds for the command
        (default ``target.command_timeout``), ``check`` to raise on a non-zero exit.
        Out: :class:`RunResult`.
        Raises: :class:`RemoteCommandError` (non-zero exit with ``check``; carries ``result``),
        :class:`SSHTimeoutError`, :class:`SSHAuthenticationError`, :class:`SSHConnectionError`,
        :class:`HostKeyError`, :class:`SSHError`.
        """
        limit = target.command_timeout if timeout is None else timeout
        conn, channel = self._open_session(target)
        try:
            result = self._exec(channel, target, command, stdin, limit, conn.fingerprint)
        finally:
            conn.sessions.release()
        if check and result.exit_code != 0:
            detail = _first_line(result.stderr)
            err = RemoteCommandError(
                f"server {target.label}: command exited with status {result.exit_code}"
                + (f": {detail}" if detail else "")
            )
            err.result = result  # type: ignore[attr-defined]
            err.remote_exit_code = result.exit_code  # type: ignore[attr-defined]
            raise err
        return result

    def _open_session(self, target: Target) -> tuple[_Conn, paramiko.Channel]:
        """Open a session channel on the pooled connection, holding one of its session slots.

        The caller must release ``conn.sessions`` when done with the channel.
        Two transient failures are retried until ``target.connect_timeout``: the pooled
        connection died (server restarted: reconnect) and the server refused a channel on a
        live connection (its previous sessions are still closing: back off and retry).
        """
        import paramiko

        deadline = time.monotonic() + target.connect_timeout
        pause = 0.02
        reconnected = False
        while True:
            conn = self._connection(target)
            if not conn.sessions.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise SSHTimeoutError(
                    f"server {target.label}: no free SSH session within {target.connect_timeout:g}s"
                )
            try:
                transport = conn.client.get_transport()
                if transport is None or not transport.is_active():
                    raise EOFError("transport closed")
                return conn, transport.open_session(timeout=target.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                conn.sessions.release()
                if not conn.alive() and not reconnected:
                    reconnected = True  # _connection() replaces the dead connection
                    continue
                # paramiko keeps the server's refusal in one per-transport slot, so with several
                # threads a refusal may surface as the generic "Unable to open channel." instead.
                refused = isinstance(exc, paramiko.ChannelException) or (
                    "unable to open channel" in str(exc).lower()
                )
                if (
                    refused
                    and conn.alive()
                    and time.monotonic() + pause < deadline
                ):
                    time.sleep(pause)
                    pause = min(pause * 2, 0.5)
                    continue
                if isinstance(exc, paramiko.ChannelException):
                    raise SSHError(
                        f"server {target.label}: the server refused to open a session ({exc.text})"
                    ) from None
                raise _map_connect_error(target, exc) from None

    @staticmethod
    def _exec(
        channel: paramiko.Channel,
        target: Target,
        command: str,
        stdin: str | bytes | None,
        limit: float,
        fingerprint: str,
    ) -> RunResult:
        """Drive one exec channel to completion within ``limit`` seconds."""
        import paramiko

        start = time.monotonic()
        deadline = start + limit
        out: list[bytes] = []
        err: list[bytes] = []
        writer: threading.Thread | None = None
        try:
            channel.settimeout(limit)
            channel.exec_command(command)
            if stdin is None:
                _send_eof(channel, deadline)
            else:
                data = stdin.encode() if isinstance(stdin, str) else stdin

                # Send from another thread: a command that prints a lot before reading its input
                # would otherwise deadlock against our reads (the SSH windows fill both ways).
                def _send() -> None:
                    try:
                        _send_stdin(channel, data, deadline)
                    except (OSError, EOFError, socket.timeout, paramiko.SSHException):
                        pass  # the read loop reports the failure or the timeout

                writer = threading.Thread(target=_send, name="ssh-stdin", daemon=True)
                writer.start()

            # Poll both streams: the SSH window is shared, so reading only stdout while stderr
            # fills up would stall the remote command. Back off while idle to spare the CPU.
            idle = 0.001
            while True:
                got = False
                while channel.recv_ready():
                    out.append(channel.recv(65536))
                    got = True
                while channel.recv_stderr_ready():
                    err.append(channel.recv_stderr(65536))
                    got = True
                if (
                    channel.exit_status_ready()
                    and not channel.recv_ready()
                    and not channel.recv_stderr_ready()
                ):
                    break
                if channel.closed and not got:
                    break
                if time.monotonic() > deadline:
                    raise SSHTimeoutError(
                        f"server {target.label}: command did not finish within {limit:g}s"
                    )
                if got:
                    idle = 0.001
                else:
                    time.sleep(idle)
                    idle = min(idle * 2, 0.02)
            # After exit-status, late data can still be in flight until EOF: drain it.
            while not channel.eof_received and time.monotonic() < deadline:
                if channel.recv_ready():
                    out.append(channel.recv(65536))
                elif channel.recv_stderr_ready():
                    err.append(channel.recv_stderr(65536))
                elif channel.closed:
                    break
                else:
                    time.sleep(0.001)
            while channel.recv_ready():
                out.append(channel.recv(65536))
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(65536))
            exit_code = channel.recv_exit_status() if channel.exit_status_ready() else -1
        except (socket.timeout, TimeoutError):
            raise SSHTimeoutError(
                f"server {target.label}: command did not finish within {limit:g}s"
            ) from None
        except SSHError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # The connection or the channel went away mid-command (server stopped, killed).
            raise SSHConnectionError(
                f"server {target.label}: connection lost while running the command "
                f"({_first_line(str(exc)) or type(exc).__name__})"
            ) from None
        finally:
            channel.close()
            if writer is not None:
                writer.join(timeout=1.0)
        return RunResult(
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(err).decode("utf-8", "replace"),
            exit_code=exit_code,
            duration_s=time.monotonic() - start,
            host_key_fingerprint=fingerprint,
        )

    def write_file(
        self,
        target: Target,
        path: str,
        data: str | bytes,
        mode: int = 0o600,
        *,
        make_parents: bool = False,
        timeout: float | None = None,
    ) -> RunResult:
        """Atomically replace ``path`` on the server with ``data`` and give it ``mode``.

        One shell command receives the data on stdin, writes a temporary file in the same
        directory (umask 077, chmod before writing) and renames it over ``path``; a reader sees
        the old or the new content, never half. ``make_parents`` creates the directory (0700).
        Relative paths are relative to the remote user's home.
        Raises :class:`RemoteCommandError` when the remote side fails, and the connection errors
        of :meth:`run`.
        """
        if not 0 <= mode <= 0o7777:
            raise UsageError(f"invalid file mode {mode!r}")
        command = "sh -c {} unityctl-write-file {} {} {}".format(
            shlex.quote(_WRITE_FILE_SCRIPT),
            shlex.quote(path),
            format(mode, "04o"),
            "1" if make_parents else "0",
        )
        return self.run(target, command, stdin=data, timeout=timeout, check=True)

    def test_login(self, target: Target) -> LoginInfo:
        """Log in afresh (never a pooled session) and report who we are and how fast it was.

        Out: :class:`LoginInfo`. Raises the connection errors of :meth:`run`.
        """
        start = time.monotonic()
        # A connection of its own, outside the pool: it proves the credentials work *now*, and
        # closing it cannot disturb commands other threads run on the pooled one.
        conn = self._connect(target)
        try:
            connect_ms = (time.monotonic() - start) * 1000
            transport = conn.client.get_transport()
            assert transport is not None
            begin = time.monotonic()
            try:
                channel = transport.open_session(timeout=target.connect_timeout)
            except Exception as exc:  # noqa: BLE001
                raise _map_connect_error(target, exc) from None
            result = self._exec(
                channel, target, "id -un", None, target.connect_timeout, conn.fingerprint
            )
            latency_ms = (time.monotonic() - begin) * 1000
        finally:
            conn.client.close()
        if result.exit_code != 0:
            raise RemoteCommandError(
                f"server {target.label}: `id -un` exited with status {result.exit_code}"
            )
        return LoginInfo(
            remote_user=result.stdout.strip(),
            host_key_fingerprint=conn.fingerprint,
            latency_ms=latency_ms,
            connect_ms=connect_ms,
        )

    def open_channel(
        self, target: Target, host: str, port: int, timeout: float | None = None
    ) -> paramiko.Channel:
        """Open a ``direct-tcpip`` channel through the pooled connection to ``target``, reaching
        ``host:port`` as seen from that server (``ssh -W host:port``). The caller closes it.

        Raises: :class:`SSHConnectionError` when the server refuses to forward (e.g.
        ``AllowTcpForwarding no``) or nothing listens there, and the connection errors of :meth:`run`.
        """
        import paramiko

        limit = target.connect_timeout if timeout is None else timeout
        conn = self._connection(target)
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHConnectionError(f"server {target.label}: connection closed")
        try:
            return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=limit)
        except paramiko.ChannelException as exc:
            raise SSHConnectionError(
                f"server {target.label}: could not forward to {host}:{port} ({exc.text})"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _map_connect_error(target, exc) from None

    def run_many(
        self,
        targets: Iterable[Target],
        command_or_callable: str | Callable[[SSHExecutor, Target], Any],
        *,
        max_parallel: int = 32,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = False,
        on_result: Callable[[str, Any], None] | None = None,
    ) -> dict[str, Any]:
        """Run one command (or one callable) on many servers in parallel.

        In: targets (their labels must be unique: they key the result), a command string or a
        callable ``fn(executor, target) -> value`` for per-server work, the parallelism, and
        ``stdin``/``timeout``/``check`` passed to :meth:`run` for a string command.
        ``on_result(label, result_or_exception)`` is called as each server finishes (progress bars).
        Out: ``{label: RunResult | value | Exception}`` in the order of ``targets``. A failure on
        one server never stops the others; a server that hangs only costs its own timeouts.
        Raises :class:`UsageError` for duplicate labels.
        """
        targets = list(targets)
        labels = [t.label for t in targets]
        if len(set(labels)) != len(labels):
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            raise UsageError(f"run_many: duplicate server names {', '.join(dupes)}")
        if not targets:
            return {}

        def _one(target: Target) -> Any:
            if callable(command_or_callable):
                return command_or_callable(self, target)
            return self.run(target, command_or_callable, stdin=stdin, timeout=timeout, check=check)

        results: dict[str, Any] = {}
        workers = max(1, min(max_parallel, len(targets)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssh-run-many") as pool:
            futures = {pool.submit(_one, t): t.label for t in targets}
            for future in as_completed(futures):
                label = futures[future]
                try:
                    value: Any = future.result()
                except Exception as exc:  # noqa: BLE001 - a batch goes on past one failed item
                    value = exc
                results[label] = value
                if on_result is not None:
                    on_result(label, value)
        return {label: results[label] for label in labels}


# paramiko's Channel.send/shutdown_write check "closed" and build the message under the channel
# lock, but send it after releasing the lock (to avoid a dead-lock during re-keying). When the
# server closes the channel in that gap, paramiko's transport thread answers CLOSE first, and our
# DATA/EOF then follows for a channel the server has already freed: OpenSSH drops the WHOLE
# connection ("data packet referred to nonexistent channel"), failing every other command
# multiplexed on it. It happens whenever a command exits without reading all of its stdin, and
# for EOF after very short commands. The helpers below check and send under the lock; to keep
# paramiko's re-keying concern small, they wait for a key exchange to finish *before* taking the
# lock, so the send under the lock only ever blocks if a re-key starts in that very instant (and
# paramiko then gives up after its clear_to_send_timeout instead of hanging).
# They use three paramiko internals (lock, _wait_for_send_window, _send_user_message), stable
# since paramiko 2; without them they fall back to the public, racy calls.


def _has_internals(channel: paramiko.Channel) -> bool:
    transport = channel.transport
    return all(
        hasattr(obj, name)
        for obj, name in (
            (channel, "lock"),
            (channel, "_wait_for_send_window"),
            (channel, "remote_chanid"),
            (transport, "_send_user_message"),
            (transport, "clear_to_send"),
        )
    )


def _wait_clear_to_send(channel: paramiko.Channel, deadline: float) -> None:
    transport = channel.transport
    while not transport.clear_to_send.wait(0.1):
        if not transport.is_active() or time.monotonic() > deadline:
            raise EOFError("transport not ready to send")


def _send_stdin(channel: paramiko.Channel, data: bytes, deadline: float) -> None:
    """Send ``data`` then EOF, never after the channel closed. Raises EOFError when it closed."""
    import paramiko
    from paramiko.common import cMSG_CHANNEL_DATA

    if not _has_internals(channel):
        channel.sendall(data)
        if not channel.closed:
            channel.shutdown_write()
        return
    view = memoryview(data)
    while view:
        _wait_clear_to_send(channel, deadline)
        with channel.lock:
            if channel.closed:
                raise EOFError("channel closed by the server")
            # Waits (releasing the lock) until the server's window lets us send; 0 = closed.
            size = channel._wait_for_send_window(min(len(view), 32768))
            if size == 0 or channel.closed:
                raise EOFError("channel closed by the server")
            message = paramiko.Message()
            message.add_byte(cMSG_CHANNEL_DATA)
            message.add_int(channel.remote_chanid)
            message.add_string(bytes(view[:size]))
            channel.transport._send_user_message(message)
        view = view[size:]
    _send_eof(channel, deadline)


def _send_eof(channel: paramiko.Channel, deadline: float) -> None:
    """Send EOF on ``channel`` unless it is already closed (see the comment above)."""
    if not _has_internals(channel) or not hasattr(channel, "_send_eof"):
        if not channel.closed:
            channel.shutdown_write()
        return
    _wait_clear_to_send(channel, deadline)
    with channel.lock:
        if channel.closed:
            return
        message = channel._send_eof()  # marks eof_sent; None when already sent
        if message is not None:
            channel.transport._send_user_message(message)


def _depth(target: Target) -> int:
    depth = 0
    while target.jump is not None:
        depth += 1
        target = target.jump
    return depth


# --- fabric ------------------------------------------------------------------------------------


def fabric_connection(target: Target, *, host_keys: HostKeyStore) -> fabric.Connection:
    """A ``fabric.Connection`` for ``target`` with the executor's guarantees.

    fabric 3 installs ``AutoAddPolicy`` (trust any host key, changed ones included) and reads
    ``~/.ssh/config``; here the policy is replaced by host key pinning, SSH config files are not
    loaded, and only the target's own key/password authenticate. The jump target becomes a
    fabric gateway with the same settings. The caller opens/closes it (``with`` works).
    Raises :class:`SSHError` when the key cannot be parsed; connection errors surface from
    fabric/paramiko on first use (not mapped: prefer :class:`SSHExecutor` where possible).
    """
    import fabric
    import paramiko

    connect_kwargs: dict[str, Any] = {
        "allow_agent": False,
        "look_for_keys": False,
        "banner_timeout": target.connect_timeout,
        "auth_timeout": target.connect_timeout,
    }
    if target.private_key_pem:
        connect_kwargs["pkey"] = load_private_key(target.private_key_pem, target.certificate)
    if target.password:
        connect_kwargs["password"] = target.password
    # An explicit, empty SSHConfig stops fabric from reading ~/.ssh/config and /etc/ssh/ssh_config
    # (which could add IdentityFile or ProxyCommand lines behind our back); lazy skips fabric.yaml.
    config = fabric.Config(lazy=True, ssh_config=paramiko.SSHConfig())
    gateway = (
        fabric_connection(target.jump, host_keys=host_keys) if target.jump is not None else None
    )
    conn = fabric.Connection(
        host=target.host,
        user=target.user,
        port=target.port,
        config=config,
        gateway=gateway,
        connect_timeout=max(1, int(target.connect_timeout)),
        connect_kwargs=connect_kwargs,
    )
    # Override fabric's AutoAddPolicy; with no known host keys loaded it decides every time.
    conn.client.get_host_keys().clear()
    conn.client.set_missing_host_key_policy(_make_pinning_policy(host_keys, target))
    return conn
