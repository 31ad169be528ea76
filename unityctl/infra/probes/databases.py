"""Find the database servers running on a machine and check, without credentials, that they answer.

Two halves, both free of any database driver:

* :func:`discover` turns the parsed ``sockets`` and ``processes`` sections of the collector's
  output into one :class:`DiscoveredDatabase` per server instance (PostgreSQL, MySQL, MariaDB,
  Redis, MongoDB). Pure logic.
* ``probe_*`` speak just enough of each wire protocol to learn that a server of the expected kind
  is there, and its version when the protocol volunteers it. No password is ever sent: the
  PostgreSQL probe logs in as the (normally non-existent) role ``unityctl_probe``, the MySQL
  probe reads the greeting, Redis gets ``PING``, MongoDB gets ``hello``. A probe returns a
  :class:`ProbeResult` verdict and never raises for anything the network or the peer does.

The protocol code reads and writes through a tiny byte-stream interface (``sendall``/``recv``,
optionally ``settimeout``), so the collector can hand in an already-open stream, such as a
paramiko ``direct-tcpip`` channel to a remote server, instead of a host and port.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from unityctl.core.errors import ParseError, UsageError
from unityctl.infra.probes.sockets import Listener, Process

__all__ = [
    "DEFAULT_PORTS",
    "KINDS",
    "ByteStream",
    "DiscoveredDatabase",
    "ProbeResult",
    "decode_bson",
    "discover",
    "encode_bson",
    "normalise_mysql_version",
    "probe",
    "probe_mongodb",
    "probe_mysql",
    "probe_postgresql",
    "probe_redis",
]

Kind = Literal["postgresql", "mysql", "mariadb", "redis", "mongodb"]
KINDS: tuple[Kind, ...] = ("postgresql", "mysql", "mariadb", "redis", "mongodb")
DEFAULT_PORTS: dict[Kind, int] = {
    "postgresql": 5432,
    "mysql": 3306,
    "mariadb": 3306,
    "redis": 6379,
    "mongodb": 27017,
}
PROBE_USER = "unityctl_probe"

# =============================================================================================
# Discovery
# =============================================================================================

# Process names as the kernel reports them (comm, at most 15 characters).
_PROCESS_KINDS: dict[str, Kind] = {
    "postgres": "postgresql",
    "postmaster": "postgresql",
    "mysqld": "mysql",  # MariaDB before 10.5 also runs as "mysqld": the greeting settles it
    "mariadbd": "mariadb",
    "redis-server": "redis",
    "valkey-server": "redis",  # the Redis fork speaks the same protocol
    "mongod": "mongodb",
}
_PORT_KINDS: dict[int, Kind] = {5432: "postgresql", 3306: "mysql", 6379: "redis", 27017: "mongodb"}
# Processes that hold a port on behalf of a container: the real owner is not visible to ss, so a
# default port held by one of them is classified as if no process were shown.
_PORT_PROXIES = frozenset({"docker-proxy", "rootlessport", "rootlesskit", "slirp4netns", "pasta",
                           "pasta.avx2", "conmon"})
_SOCKET_NAMES: tuple[tuple[re.Pattern[str], Kind], ...] = (
    (re.compile(r"\.s\.PGSQL\.(?P<port>\d{1,5})$"), "postgresql"),
    (re.compile(r"(?:^|/)mongodb-(?P<port>\d{1,5})\.sock$"), "mongodb"),
    (re.compile(r"(?:^|/)(?:mysqld?|mariadb)\.sock$"), "mysql"),
    (re.compile(r"(?:^|/)(?:redis|valkey)[^/]*\.sock$"), "redis"),
)


@dataclass(frozen=True, slots=True)
class DiscoveredDatabase:
    """One database server instance found on a machine.

    ``address``/``port`` say where to connect over TCP, as seen from that machine (a wildcard
    listener becomes a loopback address); ``socket_path`` is its unix socket, if any. ``key``
    identifies the instance across collections: ``<family>:<port>`` or ``<family>:<socket
    path>``, where the family is the wire protocol (``mysql`` for MySQL *and* MariaDB, so that
    a MariaDB first seen as ``mysqld`` keeps its key once the greeting names it). ``source``
    says how it was recognised: ``process`` (ss showed the owner), ``published-port`` (a
    container proxy holds a default port), ``default-port``, ``socket-name`` or ``process-only``.
    ``endpoints`` lists every listening address:port and socket path that belongs to it.
    """

    kind: Kind
    address: str | None
    port: int | None
    socket_path: str | None
    process: str | None
    pid: int | None
    key: str
    source: str = "process"
    endpoints: tuple[str, ...] = field(default=())


def _family(kind: Kind) -> str:
    return "mysql" if kind in ("mysql", "mariadb") else kind


def _socket_name_kind(path: str) -> tuple[Kind, int | None] | None:
    """Recognise a database's unix socket by its conventional name (port when the name has it)."""
    for pattern, kind in _SOCKET_NAMES:
        match = pattern.search(path)
        if match:
            port_text = match.groupdict().get("port")
            port = int(port_text) if port_text and 0 < int(port_text) <= 65535 else None
            return kind, port
    return None


def _is_auxiliary_socket(path: str) -> bool:
    # MySQL 8's X Protocol socket (mysqlx.sock) belongs to the instance but does not speak the
    # classic protocol the probe uses.
    return "mysqlx" in os.path.basename(path)


@dataclass
class _Candidate:
    kind: Kind
    listener: Listener
    source: str
    port: int | None  # TCP port, or the port a socket's name carries


@dataclass
class _Group:
    family: str
    pid: int | None
    members: list[_Candidate] = field(default_factory=list)

    @property
    def ports(self) -> set[int]:
        return {c.port for c in self.members if c.port is not None}

    def primary_port(self) -> int | None:
        ports = self.ports
        if not ports:
            return None
        defaults = {DEFAULT_PORTS[c.kind] for c in self.members}
        preferred = sorted(ports & defaults)
        # A server with extra ports (MySQL's X Protocol on 33060) is known by its classic port.
        return preferred[0] if preferred else min(ports)


def _mysql_flavour(processes: Sequence[Process]) -> Kind:
    """Without an owner, guess MySQL vs MariaDB from what runs; the greeting corrects it later."""
    names = {p.comm for p in processes}
    if "mariadbd" in names and "mysqld" not in names:
        return "mariadb"
    return "mysql"


def _classify(listener: Listener, processes: Sequence[Process]) -> _Candidate | None:
    """Decide whether one listener belongs to a database, and how we know."""
    if listener.proto == "tcp" and (not listener.address or listener.port is None):
        return None  # nothing one could connect to ("*:*")
    if listener.proto == "unix" and not listener.path:
        return None
    if listener.proto not in ("tcp", "unix"):
        return None
    owner_kind = _PROCESS_KINDS.get(listener.process or "")
    socket_kind = _socket_name_kind(listener.path) if listener.path else None
    if owner_kind is not None:
        port = listener.port if listener.proto == "tcp" else (socket_kind[1] if socket_kind else None)
        return _Candidate(owner_kind, listener, "process", port)
    if listener.process is not None and listener.process not in _PORT_PROXIES:
        return None  # someone else (sshd, nginx) owns it, whatever the port number says
    proxied = listener.process is not None
    if listener.proto == "tcp" and listener.port in _PORT_KINDS:
        kind = _PORT_KINDS[listener.port]
        if kind == "mysql":
            kind = _mysql_flavour(processes)
        return _Candidate(kind, listener, "published-port" if proxied else "default-port",
                          listener.port)
    if listener.proto == "unix" and socket_kind is not None:
        kind, port = socket_kind
        if kind == "mysql":
            kind = _mysql_flavour(processes)
        return _Candidate(kind, listener, "socket-name", port)
    return None


def _connect_address(addresses: Iterable[str]) -> str | None:
    """The address to connect to, as seen from the machine itself, for these listen addresses."""
    best: tuple[int, str] | None = None
    for raw in addresses:
        address = raw.removeprefix("::ffff:")
        if address == "127.0.0.1":
            rank, target = 0, address
        elif address in ("0.0.0.0", "*"):
            rank, target = 1, "127.0.0.1"  # a wildcard listener answers on loopback too
        elif address == "::1":
            rank, target = 2, address
        elif address == "::":
            rank, target = 3, "::1"
        elif address.startswith("127."):
            rank, target = 4, address
        else:
            rank, target = 5, address  # bound to one interface only: only that address works
        if best is None or (rank, target) < best:
            best = (rank, target)
    return best[1] if best else None


def _build(group: _Group, processes: Sequence[Process]) -> DiscoveredDatabase:
    """Turn a group of listeners into one DiscoveredDatabase."""
    port = group.primary_port()
    kinds = [c.kind for c in group.members if c.source == "process"] or [c.kind for c in group.members]
    kind: Kind = "mariadb" if "mariadb" in kinds else kinds[0]
    tcp = [c.listener for c in group.members if c.listener.proto == "tcp"]
    unix = [c for c in group.members if c.listener.proto == "unix" and c.listener.path]
    address = _connect_address(l.address for l in tcp if l.port == port and l.address)
    # The socket that matches the port (.s.PGSQL.5433 for the 5433 cluster), else any classic one.
    sockets = sorted(unix, key=lambda c: (_is_auxiliary_socket(c.listener.path or ""),
                                          c.port != port, c.listener.path or ""))
    socket_path = sockets[0].listener.path if sockets else None
    owners = sorted((c.listener.pid, c.listener.process) for c in group.members
                    if c.source in ("process", "published-port") and c.listener.pid is not None)
    process: str | None
    pid: int | None
    if owners:
        pid, process = owners[0]
    else:
        # ss did not name the owner; a database process of the family that runs is the best
        # name we have (its pid stays unknown: postgres runs many processes of that name).
        pid = None
        names = sorted(p.comm for p in processes
                       if p.comm in _PROCESS_KINDS and _family(_PROCESS_KINDS[p.comm]) == group.family)
        process = names[0] if names else None
    sources = {c.source for c in group.members}
    source = next(s for s in ("process", "published-port", "default-port", "socket-name")
                  if s in sources)
    endpoints: list[str] = []
    for c in group.members:
        listener = c.listener
        if listener.proto == "tcp":
            host = f"[{listener.address}]" if listener.address and ":" in listener.address else listener.address
            text = f"{host}:{listener.port if listener.port is not None else '*'}"
        else:
            text = listener.path or ""
        if text not in endpoints:
            endpoints.append(text)
    key = f"{group.family}:{port}" if port is not None else f"{group.family}:{socket_path}"
    return DiscoveredDatabase(kind, address, port, socket_path, process, pid, key, source,
                              tuple(endpoints))


def discover(listeners: Sequence[Listener], processes: Sequence[Process]) -> list[DiscoveredDatabase]:
    """Find the database instances on one machine.

    In: the machine's listening sockets (:func:`~unityctl.infra.probes.sockets.parse_sockets`)
    and processes (:func:`~unityctl.infra.probes.sockets.parse_processes`).
    Out: one :class:`DiscoveredDatabase` per instance, sorted by key. Listeners owned by one
    server process are one instance (127.0.0.1:5432, [::1]:5432 and .s.PGSQL.5432 of one
    postmaster); separate processes are separate instances (5432 and 5433). When ss did not show
    the owner, default ports (5432, 3306, 6379, 27017) and conventional socket names are used,
    and a unix socket without a port joins the single TCP instance of its family, if there is
    exactly one. When no listener was captured at all, every database process found is reported
    at its default port (``source="process-only"``), so a missing sockets section still shows
    what runs.
    Raises: nothing.
    """
    candidates = [c for c in (_classify(l, processes) for l in listeners) if c is not None]
    groups: list[_Group] = []

    # 1. A process owns all its sockets: group what ss attributed to a database process by pid.
    by_pid: dict[tuple[str, int], _Group] = {}
    loose: list[_Candidate] = []
    for c in candidates:
        if c.source == "process" and c.listener.pid is not None:
            slot = (_family(c.kind), c.listener.pid)
            if slot not in by_pid:
                by_pid[slot] = _Group(slot[0], slot[1])
                groups.append(by_pid[slot])
            by_pid[slot].members.append(c)
        else:
            loose.append(c)

    # 2. Without an owner, a port (from the TCP listener or the socket's name) ties listeners to
    #    an instance.
    portless: list[_Candidate] = []
    for c in loose:
        if c.port is None:
            portless.append(c)
            continue
        family = _family(c.kind)
        home = next((g for g in groups if g.family == family and c.port in g.ports), None)
        if home is None:
            home = _Group(family, None)
            groups.append(home)
        home.members.append(c)

    # 3. Sockets that carry no port (mysqld.sock, redis.sock) join the one instance of their
    #    family when there is exactly one; otherwise which one they belong to is unknowable.
    for c in portless:
        family = _family(c.kind)
        same = [g for g in groups if g.family == family and g.ports]
        compatible = [g for g in same if g.pid is None or c.listener.pid in (None, g.pid)]
        if len(same) == 1 and compatible:
            compatible[0].members.append(c)
            continue
        home = next((g for g in groups if g.family == family and not g.ports
                     and (g.pid == c.listener.pid)), None)
        if home is None:
            home = _Group(family, c.listener.pid)
            groups.append(home)
        home.members.append(c)

    # 4. A pid group with only a portless socket and a loose TCP group of the same family are the
    #    same server seen twice (ss showed the owner of one socket but not of the other).
    for family in {g.family for g in groups}:
        with_port = [g for g in groups if g.family == family and g.ports]
        without = [g for g in groups if g.family == family and not g.ports]
        if len(with_port) == 1 and len(without) == 1:
            target, other = with_port[0], without[0]
            if target.pid is None or other.pid is None or target.pid == other.pid:
                target.members.extend(other.members)
                groups.remove(other)

    found: dict[str, DiscoveredDatabase] = {}
    for group in groups:
        db = _build(group, processes)
        found.setdefault(db.key, db)  # two groups with one key (odd ss output) stay one instance

    if not listeners:
        for proc in processes:
            kind = _PROCESS_KINDS.get(proc.comm)
            if kind is None:
                continue
            port = DEFAULT_PORTS[kind]
            key = f"{_family(kind)}:{port}"
            # Without listeners the default port is a guess; a probe will confirm or refute it.
            found.setdefault(key, DiscoveredDatabase(kind, "127.0.0.1", port, None, proc.comm,
                                                     None, key, "process-only", ()))
    return [found[k] for k in sorted(found)]


# =============================================================================================
# Wire probes: the transport
# =============================================================================================


class ByteStream(Protocol):
    """What a probe needs from a connection: a socket, or a paramiko channel, or a test double.

    ``settimeout`` is used when present (both sockets and paramiko channels have it).
    """

    def sendall(self, data: bytes, /) -> Any: ...

    def recv(self, size: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The verdict of one wire probe.

    ``reachable`` is True when a server of the probed protocol answered, even to refuse us
    (an authentication request, ``NOAUTH``, an access-denied packet are all answers).
    ``version`` is what the wire said, when it said it. ``detail`` is one line saying what
    happened. ``latency_ms`` is the time from the start of the probe to the first byte of the
    answer (or to the failure, when none came).
    """

    reachable: bool
    kind: str
    version: str | None
    detail: str
    latency_ms: float


class _Closed(Exception):
    """The peer closed the stream before the conversation was over."""


class _Wire:
    """A buffered reader/writer over a ByteStream with one overall deadline."""

    def __init__(self, stream: ByteStream, deadline: float, started: float) -> None:
        self._stream = stream
        self._deadline = deadline
        self._started = started
        self._buffer = b""
        self.received = 0
        self.first_byte_at: float | None = None

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        settimeout = getattr(self._stream, "settimeout", None)
        if callable(settimeout):
            settimeout(remaining)

    def send(self, data: bytes) -> None:
        self._arm()
        self._stream.sendall(data)

    def _fill(self) -> None:
        self._arm()
        chunk = self._stream.recv(65536)
        if not chunk:
            raise _Closed()
        if not isinstance(chunk, (bytes, bytearray)):
            raise ParseError("the stream returned something that is not bytes")
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        self.received += len(chunk)
        self._buffer += bytes(chunk)

    def read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read_line(self, limit: int) -> bytes:
        """Read up to and without a CRLF; ParseError when none comes within ``limit`` bytes."""
        while b"\r\n" not in self._buffer:
            if len(self._buffer) > limit:
                raise ParseError(f"no line end within {limit} bytes")
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        if len(line) > limit:
            raise ParseError(f"line longer than {limit} bytes")
        return line


# (reachable, kind, version, detail): what a protocol conversation concludes.
_Verdict = tuple[bool, str, str | None, str]


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _is_unix_target(target: str) -> bool:
    return target.startswith(("/", "@"))


def _open(target: str, port: int | None, timeout: float) -> socket.socket:
    """Connect to ``host:port`` over TCP, or to a unix socket path (``@name``: abstract)."""
    if _is_unix_target(target):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect("\0" + target[1:] if target.startswith("@") else target)
        except BaseException:
            sock.close()
            raise
        return sock
    if port is None:
        raise UsageError(f"a TCP probe of {target} needs a port")
    return socket.create_connection((target, port), timeout=timeout)


def _run(kind: str, protocol: str, target: str | None, port: int | None, timeout: float,
         sock: ByteStream | None, talk: Callable[[_Wire], _Verdict]) -> ProbeResult:
    """Open (or adopt) a stream, hold one conversation, and turn every failure into a verdict."""
    if sock is None and not target:
        raise UsageError("a probe needs a host, a socket path, or an open stream")
    if timeout <= 0:
        raise UsageError("a probe timeout must be positive")
    if sock is not None:
        where = "the given stream"
    elif _is_unix_target(target or ""):
        where = str(target)
    else:
        where = f"[{target}]:{port}" if ":" in str(target) else f"{target}:{port}"
    started = time.monotonic()
    wire: _Wire | None = None
    owned: socket.socket | None = None
    previous_timeout: Any = None
    verdict: _Verdict
    try:
        if sock is None:
            owned = _open(str(target), port, timeout)
            stream: ByteStream = owned
        else:
            stream = sock
            gettimeout = getattr(sock, "gettimeout", None)
            previous_timeout = gettimeout() if callable(gettimeout) else None
        wire = _Wire(stream, started + timeout, started)
        verdict = talk(wire)
    except ConnectionRefusedError:
        verdict = (False, kind, None, f"connection refused by {where}")
    except FileNotFoundError:
        verdict = (False, kind, None, f"no socket at {where}")
    except TimeoutError:
        if wire is None:
            verdict = (False, kind, None, f"connecting to {where} timed out after {timeout:g} s")
        elif wire.received == 0:
            verdict = (False, kind, None, f"{where} accepted the connection but sent no answer "
                                          f"within {timeout:g} s")
        else:
            verdict = (False, kind, None, f"{where} stopped mid-answer ({wire.received} bytes) "
                                          f"within {timeout:g} s")
    except _Closed:
        got = wire.received if wire is not None else 0
        verdict = (False, kind, None, f"{where} closed the connection after {got} bytes, "
                                      f"without a {protocol} answer")
    except ParseError as exc:
        verdict = (False, kind, None, f"{where} answered, but not in the {protocol} protocol: {exc.message}")
    except UsageError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc) or exc.__class__.__name__
        verdict = (False, kind, None, f"cannot reach {where}: {reason}")
    except Exception as exc:  # noqa: BLE001 - a caller's stream (paramiko) raises its own types
        verdict = (False, kind, None, f"probe of {where} failed: {exc.__class__.__name__}: {exc}")
    finally:
        if owned is not None:
            owned.close()
        elif sock is not None:
            # The caller owns its stream; give it back with the timeout it had.
            settimeout = getattr(sock, "settimeout", None)
            if callable(settimeout):
                try:
                    settimeout(previous_timeout)
                except Exception:  # noqa: BLE001 - restoring is best effort on a foreign stream
                    pass
    ended = wire.first_byte_at if wire is not None and wire.first_byte_at else time.monotonic()
    reachable, result_kind, version, detail = verdict
    return ProbeResult(reachable, result_kind, version, _one_line(detail),
                       round((ended - started) * 1000.0, 3))


# =============================================================================================
# PostgreSQL
# =============================================================================================

_PG_PROTOCOL_3_0 = 196608
_PG_MAX_MESSAGE = 1 << 20
_PG_AUTH_NAMES = {2: "Kerberos V5", 3: "cleartext password", 5: "MD5 password", 7: "GSSAPI",
                  9: "SSPI", 10: "SASL"}


def _pg_fields(payload: bytes) -> dict[str, str]:
    """Decode the fields of an ErrorResponse/NoticeResponse (type byte, NUL-terminated text)."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if len(part) >= 1:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def _pg_talk(wire: _Wire, user: str, database: str | None) -> _Verdict:
    params = [("user", user), ("database", database or user),
              ("application_name", "unityctl-probe")]
    body = struct.pack("!i", _PG_PROTOCOL_3_0)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params) + b"\0"
    wire.send(struct.pack("!i", len(body) + 4) + body)
    version: str | None = None
    authenticated = False
    while True:
        tag = wire.read_exactly(1)
        if tag not in b"REvNSKZ":
            raise ParseError(f"unexpected message type {tag!r}")
        (length,) = struct.unpack("!i", wire.read_exactly(4))
        if not 4 <= length <= _PG_MAX_MESSAGE:
            raise ParseError(f"message length {length} out of range")
        payload = wire.read_exactly(length - 4)
        if tag == b"R":
            if len(payload) < 4:
                raise ParseError("short authentication request")
            (code,) = struct.unpack("!i", payload[:4])
            if code == 0:
                authenticated = True
                continue
            # The server wants a secret we deliberately do not have: it is there and talking.
            method = _PG_AUTH_NAMES.get(code, f"method {code}")
            if code == 10:
                mechanisms = [m.decode("ascii", "replace") for m in payload[4:].split(b"\0") if m]
                method += f" ({', '.join(mechanisms)})" if mechanisms else ""
            return (True, "postgresql", None,
                    f"PostgreSQL asks for {method} authentication for role {user!r}; "
                    "version not visible before login")
        if tag == b"E":
            fields = _pg_fields(payload)
            severity = fields.get("V") or fields.get("S") or "ERROR"
            message = fields.get("M", "no message")
            code = fields.get("C", "?????")
            return (True, "postgresql", version,
                    f"PostgreSQL answered with {severity} {code}: {message}")
        if tag == b"S":
            name, _, rest = payload.partition(b"\0")
            if name == b"server_version":
                version = rest.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif tag == b"Z":
            wire.send(b"X" + struct.pack("!i", 4))  # Terminate: leave no half-open backend
            state = "logged in without a password" if authenticated else "ready"
            return (True, "postgresql", version,
                    f"PostgreSQL {state} as role {user!r}; "
                    + ("server_version read" if version else "no server_version reported"))
        # 'K' (cancel key), 'N' (notice), 'v' (protocol negotiation): nothing to learn, read on.


def probe_postgresql(target: str | None = None, port: int | None = 5432, timeout: float = 3.0,
                     *, sock: ByteStream | None = None, user: str = PROBE_USER,
                     database: str | None = None) -> ProbeResult:
    """Check that a PostgreSQL server answers, without a password.

    In: ``target`` a host name/address, a unix socket path, or the socket directory (e.g.
    ``/var/run/postgresql``; ``.s.PGSQL.<port>`` is appended); ``port``; ``timeout`` seconds for
    the whole probe; or ``sock``, an open stream to use instead (left open). ``user`` is the
    role named in the StartupMessage: a role that does not exist, by default.
    Out: reachable when the server answers the StartupMessage with an authentication request or
    an ErrorResponse (detail quotes it, e.g. ``role "unityctl_probe" does not exist``). The
    version is only known when the server lets the role in (trust) and sends ParameterStatus.
    Raises: UsageError when neither a target nor a stream is given, or a TCP target has no port.
    """
    if sock is None and target and target.startswith("/") and os.path.isdir(target):
        target = os.path.join(target, f".s.PGSQL.{port or 5432}")
    return _run("postgresql", "PostgreSQL", target, port, timeout, sock,
                lambda wire: _pg_talk(wire, user, database))


# =============================================================================================
# MySQL / MariaDB
# =============================================================================================

_MYSQL_MAX_PACKET = 1 << 16
_CLIENT_LONG_PASSWORD = 0x1
_CLIENT_PROTOCOL_41 = 0x200
_CLIENT_SECURE_CONNECTION = 0x8000
_CLIENT_PLUGIN_AUTH = 0x80000
_VERSION_HEAD = re.compile(r"^\d+\.\d+(?:\.\d+)?")


def normalise_mysql_version(raw: str) -> tuple[Kind, str]:
    """Turn a greeting's server version into (kind, version).

    In: the version string of a protocol-10 greeting, e.g. ``5.5.5-10.11.6-MariaDB-0+deb12u1``
    or ``8.0.36-0ubuntu0.22.04.1``.
    Out: ``("mariadb", "10.11.6-MariaDB")`` or ``("mysql", "8.0.36")``: MariaDB's ``5.5.5-``
    prefix (kept for old clients' sake) and distribution suffixes are dropped.
    Raises: ParseError when the string does not start like a version.
    """
    text = raw.strip()
    if "mariadb" in text.lower():
        text = text.removeprefix("5.5.5-")
        match = _VERSION_HEAD.match(text)
        if not match:
            raise ParseError(f"server version {raw[:60]!r} is not a version")
        return "mariadb", f"{match.group(0)}-MariaDB"
    match = _VERSION_HEAD.match(text)
    if not match:
        raise ParseError(f"server version {raw[:60]!r} is not a version")
    return "mysql", match.group(0)


def _mysql_packet(wire: _Wire) -> tuple[int, bytes]:
    header = wire.read_exactly(4)
    length = int.from_bytes(header[:3], "little")
    if not 0 < length <= _MYSQL_MAX_PACKET:
        raise ParseError(f"packet length {length} out of range")
    return header[3], wire.read_exactly(length)


def _mysql_error(payload: bytes) -> tuple[int, str]:
    code = int.from_bytes(payload[1:3], "little") if len(payload) >= 3 else 0
    message = payload[3:]
    if message.startswith(b"#") and len(message) >= 6:
        message = message[6:]  # "#28000" SQL state marker
    return code, message.decode("utf-8", "replace")


def _mysql_talk(wire: _Wire, kind: str) -> _Verdict:
    seq, payload = _mysql_packet(wire)
    if payload[0] == 0xFF:
        code, message = _mysql_error(payload)  # e.g. 1130 host not allowed, 1040 too many
        return (True, kind, None, f"MySQL-protocol server refused the connection: "
                                  f"{message} (error {code})")
    if payload[0] != 10:
        raise ParseError(f"greeting protocol {payload[0]}, expected 10")
    end = payload.find(b"\0", 1)
    if end < 0 or len(payload) < end + 1 + 4 + 8 + 1 + 2:
        raise ParseError("truncated greeting")
    raw_version = payload[1:end].decode("utf-8", "replace")
    found_kind, version = normalise_mysql_version(raw_version)
    # Answer the greeting with a password-less login for a role that should not exist. Closing
    # right after the greeting would count as a handshake error, and after max_connect_errors
    # (100 by default) of those the server blocks our host; a refused login does not count.
    caps = _CLIENT_LONG_PASSWORD | _CLIENT_PROTOCOL_41 | _CLIENT_SECURE_CONNECTION | _CLIENT_PLUGIN_AUTH
    login = (struct.pack("<IIB", caps, 1 << 24, 33) + b"\0" * 23 + PROBE_USER.encode() + b"\0"
             + b"\0" + b"mysql_native_password\0")
    outcome = "login not attempted"
    try:
        wire.send(len(login).to_bytes(3, "little") + bytes([(seq + 1) & 0xFF]) + login)
        _, answer = _mysql_packet(wire)
        if answer[:1] == b"\xff":
            code, message = _mysql_error(answer)
            outcome = f"probe login refused as expected ({code}: {message})"
        elif answer[:1] == b"\x00":
            outcome = "probe login accepted (an anonymous account exists)"
            wire.send(b"\x01\x00\x00\x00\x01")  # COM_QUIT
        else:
            outcome = "server asked to switch authentication; stopped there"
    except (OSError, _Closed, ParseError):
        outcome = "no answer to the probe login"  # the greeting already proved it is there
    name = "MariaDB" if found_kind == "mariadb" else "MySQL"
    return True, found_kind, version, f"{name} greeting, server version {raw_version}; {outcome}"


def probe_mysql(target: str | None = None, port: int | None = 3306, timeout: float = 3.0,
                *, sock: ByteStream | None = None, kind: str = "mysql") -> ProbeResult:
    """Check that a MySQL or MariaDB server answers, by reading its greeting.

    In: ``target`` a host or a unix socket path (``/run/mysqld/mysqld.sock``), ``port``,
    ``timeout`` seconds for the whole probe, or ``sock`` an open stream (left open). ``kind``
    is reported when no greeting says better.
    Out: reachable with ``kind`` ``mariadb`` or ``mysql`` as the greeting's version string says
    and ``version`` normalised (:func:`normalise_mysql_version`); the raw string is in detail.
    An error packet instead of a greeting (host not allowed, too many connections) is an answer
    too: reachable, no version.
    Raises: UsageError when neither a target nor a stream is given, or a TCP target has no port.
    """
    return _run(kind, "MySQL", target, port, timeout, sock,
                lambda wire: _mysql_talk(wire, kind))


# =============================================================================================
# Redis
# =============================================================================================

_REDIS_MAX_INFO = 1 << 20


def _redis_talk(wire: _Wire) -> _Verdict:
    wire.send(b"PING\r\n")
    line = wire.read_line(4096)
    if line == b"+PONG":
        wire.send(b"INFO server\r\n")
        header = wire.read_line(64)
        if header.startswith(b"-"):
            reason = header[1:].decode("utf-8", "replace")
            return True, "redis", None, f"Redis answered PONG; INFO refused: {reason}"
        if not header.startswith(b"$") or not header[1:].isdigit():
            raise ParseError(f"unexpected INFO answer {header[:40]!r}")
        size = int(header[1:])
        if size > _REDIS_MAX_INFO:
            raise ParseError(f"INFO answer of {size} bytes is too large")
        info = wire.read_exactly(size + 2)[:size].decode("utf-8", "replace")
        version = None
        for entry in info.splitlines():
            name, _, value = entry.partition(":")
            if name == "redis_version":
                version = value.strip() or None
        return (True, "redis", version,
                "Redis answered PONG; " + ("version from INFO server" if version
                                          else "INFO server had no redis_version"))
    if line.startswith(b"-") and len(line) > 1:
        reason = line[1:].decode("utf-8", "replace")
        if reason.startswith(("NOAUTH", "WRONGPASS")):
            return True, "redis", None, f"Redis requires authentication ({reason})"
        # -DENIED (protected mode), -LOADING, -ERR ...: a Redis server, saying no.
        return True, "redis", None, f"Redis answered with an error: {reason}"
    raise ParseError(f"unexpected answer to PING {line[:40]!r}")


def probe_redis(target: str | None = None, port: int | None = 6379, timeout: float = 3.0,
                *, sock: ByteStream | None = None) -> ProbeResult:
    """Check that a Redis (or Valkey) server answers ``PING``.

    In: ``target`` a host or a unix socket path, ``port``, ``timeout`` seconds for the whole
    probe, or ``sock`` an open stream (left open).
    Out: reachable on ``+PONG`` (then ``version`` from ``INFO server``) and on an error reply
    such as ``-NOAUTH Authentication required.`` (no version: we do not authenticate).
    Raises: UsageError when neither a target nor a stream is given, or a TCP target has no port.
    """
    return _run("redis", "Redis", target, port, timeout, sock, _redis_talk)


# =============================================================================================
# MongoDB: OP_MSG with a tiny BSON codec
# =============================================================================================

_OP_MSG = 2013
_MONGO_MAX_MESSAGE = 48 * 1024 * 1024
# maxWireVersion -> release series, for the releases whose number is certain.
_MONGO_WIRE_VERSIONS = {6: "3.6", 7: "4.0", 8: "4.2", 9: "4.4", 13: "5.0", 17: "6.0", 21: "7.0",
                        25: "8.0"}


def encode_bson(document: dict[str, Any]) -> bytes:
    """Encode a small document as BSON.

    In: a dict whose values are str, bool, int (int32, or int64 when it does not fit), float,
    None, or nested dicts.
    Out: the BSON bytes.
    Raises: UsageError for a value of any other type (only our own commands are encoded).
    """
    body = b""
    for key, value in document.items():
        name = key.encode("utf-8") + b"\0"
        if isinstance(value, bool):  # before int: bool is an int in Python
            body += b"\x08" + name + (b"\x01" if value else b"\x00")
        elif isinstance(value, int):
            if -(2**31) <= value < 2**31:
                body += b"\x10" + name + struct.pack("<i", value)
            else:
                body += b"\x12" + name + struct.pack("<q", value)
        elif isinstance(value, float):
            body += b"\x01" + name + struct.pack("<d", value)
        elif isinstance(value, str):
            data = value.encode("utf-8") + b"\0"
            body += b"\x02" + name + struct.pack("<i", len(data)) + data
        elif value is None:
            body += b"\x0a" + name
        elif isinstance(value, dict):
            body += b"\x03" + name + encode_bson(value)
        else:
            raise UsageError(f"cannot encode {type(value).__name__} as BSON")
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def _bson_cstring(data: bytes, at: int) -> tuple[str, int]:
    end = data.find(b"\0", at)
    if end < 0:
        raise ParseError("unterminated BSON name")
    return data[at:end].decode("utf-8", "replace"), end + 1


def _bson_document(data: bytes, at: int, depth: int) -> tuple[dict[str, Any], int]:
    if depth > 32:
        raise ParseError("BSON nested too deeply")
    if at + 5 > len(data):
        raise ParseError("truncated BSON document")
    (size,) = struct.unpack_from("<i", data, at)
    end = at + size
    if size < 5 or end > len(data) or data[end - 1] != 0:
        raise ParseError("bad BSON document length")
    out: dict[str, Any] = {}
    pos = at + 4
    while pos < end - 1:
        kind = data[pos]
        name, pos = _bson_cstring(data, pos + 1)
        value, pos = _bson_value(kind, data, pos, end - 1, depth)
        out[name] = value
    if pos != end - 1:
        raise ParseError("BSON element runs past its document")
    return out, end


def _need(data: bytes, pos: int, size: int, limit: int) -> None:
    if size < 0 or pos + size > limit:
        raise ParseError("truncated BSON value")


def _bson_value(kind: int, data: bytes, pos: int, limit: int, depth: int) -> tuple[Any, int]:
    fixed = {0x01: ("<d", 8), 0x09: ("<q", 8), 0x10: ("<i", 4), 0x11: ("<Q", 8), 0x12: ("<q", 8)}
    if kind in fixed:
        fmt, size = fixed[kind]
        _need(data, pos, size, limit)
        return struct.unpack_from(fmt, data, pos)[0], pos + size
    if kind in (0x02, 0x0D, 0x0E):  # string, JavaScript code, symbol
        _need(data, pos, 4, limit)
        (size,) = struct.unpack_from("<i", data, pos)
        _need(data, pos + 4, size, limit)
        if size < 1 or data[pos + 4 + size - 1] != 0:
            raise ParseError("bad BSON string")
        return data[pos + 4 : pos + 4 + size - 1].decode("utf-8", "replace"), pos + 4 + size
    if kind in (0x03, 0x04):  # document, array
        doc, end = _bson_document(data, pos, depth + 1)
        if end > limit:
            raise ParseError("nested BSON runs past its parent")
        return (list(doc.values()) if kind == 0x04 else doc), end
    if kind == 0x05:  # binary: length, subtype, bytes
        _need(data, pos, 5, limit)
        (size,) = struct.unpack_from("<i", data, pos)
        _need(data, pos + 5, size, limit)
        return data[pos + 5 : pos + 5 + size], pos + 5 + size
    if kind == 0x07:  # ObjectId
        _need(data, pos, 12, limit)
        return data[pos : pos + 12].hex(), pos + 12
    if kind == 0x08:
        _need(data, pos, 1, limit)
        if data[pos] not in (0, 1):
            raise ParseError("bad BSON boolean")
        return data[pos] == 1, pos + 1
    if kind in (0x06, 0x0A, 0x7F, 0xFF):  # undefined, null, max key, min key
        return None, pos
    if kind == 0x13:  # decimal128: kept raw, nothing in hello needs its value
        _need(data, pos, 16, limit)
        return data[pos : pos + 16], pos + 16
    raise ParseError(f"unsupported BSON type 0x{kind:02x}")


def decode_bson(data: bytes) -> dict[str, Any]:
    """Decode one BSON document (the types a ``hello`` reply uses).

    In: bytes holding exactly one document.
    Out: a dict; arrays become lists, ObjectIds hex strings, timestamps and datetimes ints.
    Raises: ParseError for malformed or trailing data, or an unsupported type.
    """
    document, end = _bson_document(data, 0, 0)
    if end != len(data):
        raise ParseError("trailing bytes after BSON document")
    return document


def _mongo_command(wire: _Wire, command: dict[str, Any], request_id: int) -> dict[str, Any]:
    message = struct.pack("<I", 0) + b"\x00" + encode_bson(command)
    wire.send(struct.pack("<iiii", 16 + len(message), request_id, 0, _OP_MSG) + message)
    length, _, response_to, opcode = struct.unpack("<iiii", wire.read_exactly(16))
    if not 16 + 5 + 5 <= length <= _MONGO_MAX_MESSAGE:
        raise ParseError(f"message length {length} out of range")
    if opcode != _OP_MSG:
        raise ParseError(f"reply opcode {opcode}, expected OP_MSG")
    if response_to != request_id:
        raise ParseError(f"reply to request {response_to}, expected {request_id}")
    body = wire.read_exactly(length - 16)
    if body[4] != 0:
        raise ParseError(f"reply section kind {body[4]}, expected a body section")
    # The checksum flag appends 4 bytes after the sections: decode the document by its own size.
    document, _ = _bson_document(body, 5, 0)
    return document


def _mongo_talk(wire: _Wire) -> _Verdict:
    reply = _mongo_command(wire, {"hello": 1, "$db": "admin"}, 1)
    asked = "hello"
    if reply.get("ok") not in (1, 1.0, True) and reply.get("code") == 59:
        # Servers before 4.4.2 (and 4.2.10, 4.0.21) know the command only as isMaster.
        reply = _mongo_command(wire, {"isMaster": 1, "$db": "admin"}, 2)
        asked = "isMaster"
    if reply.get("ok") not in (1, 1.0, True):
        reason = reply.get("errmsg") or reply.get("codeName") or "no reason given"
        return True, "mongodb", None, f"MongoDB answered {asked} with an error: {reason}"
    wire_version = reply.get("maxWireVersion")
    if not isinstance(wire_version, int) or isinstance(wire_version, bool):
        raise ParseError(f"{asked} reply has no maxWireVersion")
    series = _MONGO_WIRE_VERSIONS.get(wire_version)
    role = ("primary" if reply.get("isWritablePrimary") or reply.get("ismaster")
            else "secondary" if reply.get("secondary") else "not primary")
    shown = f"MongoDB {series} series" if series else "release not known to unityctl"
    return (True, "mongodb", series,
            f"MongoDB answered {asked}: maxWireVersion {wire_version} ({shown}), {role}")


def probe_mongodb(target: str | None = None, port: int | None = 27017, timeout: float = 3.0,
                  *, sock: ByteStream | None = None) -> ProbeResult:
    """Check that a MongoDB server answers ``hello`` (OP_MSG on ``admin``), without credentials.

    In: ``target`` a host or a unix socket path (``/tmp/mongodb-27017.sock``), ``port``,
    ``timeout`` seconds for the whole probe, or ``sock`` an open stream (left open).
    Out: reachable when an OP_MSG reply comes; ``version`` is the release series that the
    reply's ``maxWireVersion`` stands for (``"7.0"`` for 21), None when unknown to us.
    Raises: UsageError when neither a target nor a stream is given, or a TCP target has no port.
    """
    return _run("mongodb", "MongoDB", target, port, timeout, sock, _mongo_talk)


# =============================================================================================
# Dispatch
# =============================================================================================


def probe(db: DiscoveredDatabase, timeout: float = 3.0, *,
          sock: ByteStream | None = None) -> ProbeResult:
    """Probe a discovered instance with the probe of its kind.

    In: the instance; ``timeout`` seconds; ``sock`` an open stream to its TCP port (e.g. an SSH
    ``direct-tcpip`` channel), used instead of connecting. TCP is preferred to the unix socket
    because it is what a remote probe through SSH can reach.
    Out: the :class:`ProbeResult`; reachable False with a detail when there is nothing to
    connect to.
    Raises: UsageError for a kind no probe knows.
    """
    target = db.address or db.socket_path
    port = db.port if db.port is not None else DEFAULT_PORTS.get(db.kind)
    if sock is None and target is None:
        return ProbeResult(False, db.kind, None, "no address or socket known to probe", 0.0)
    if db.kind == "postgresql":
        return probe_postgresql(target, port, timeout, sock=sock)
    if db.kind in ("mysql", "mariadb"):
        return probe_mysql(target, port, timeout, sock=sock, kind=db.kind)
    if db.kind == "redis":
        return probe_redis(target, port, timeout, sock=sock)
    if db.kind == "mongodb":
        return probe_mongodb(target, port, timeout, sock=sock)
    raise UsageError(f"no probe for database kind {db.kind!r}")


# ---------------------------------------------------------------------------------------------
# Versions reported by the server binaries (collect.sh section "db_versions")
# ---------------------------------------------------------------------------------------------

_BINARY_KIND = {"postgres": "postgresql", "postmaster": "postgresql", "mysqld": "mysql", "mariadbd": "mariadb",
                "redis-server": "redis", "mongod": "mongodb"}
_BINARY_VERSION = {
    "postgresql": re.compile(r"\(PostgreSQL\)\s+(\d[\w.]*)"),
    "mysql": re.compile(r"\bVer\s+(\d[\w.+-]*)"),
    "mariadb": re.compile(r"\bVer\s+(\d[\w.+-]*)"),
    "redis": re.compile(r"(?:v=|\s)(\d+\.\d+\.\d+)\b"),
    "mongodb": re.compile(r"db version v(\d[\w.]*)"),
}


def parse_binary_versions(text: str | None) -> dict[str, set[str]]:
    """Versions of the running database server binaries, by kind.

    In: the ``db_versions`` section: ``COMM<TAB>EXE<TAB>first line of EXE --version`` per line.
    Out: {kind: {version, ...}} (MySQL/MariaDB normalised like a greeting); lines that do not
    parse are ignored (never raises). Used where the wire tells nothing before a login
    (PostgreSQL): the collector runs on the server itself, so the binary's own answer is exact.
    """
    found: dict[str, set[str]] = {}
    for line in (text or "").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        comm, _exe, answer = parts
        kind = _BINARY_KIND.get(comm.strip())
        match = _BINARY_VERSION[kind].search(answer) if kind else None
        if kind is None or match is None:
            continue
        version = match.group(1)
        if kind in ("mysql", "mariadb"):
            try:
                kind, version = normalise_mysql_version(version if "mariadb" not in answer.lower()
                                                        else f"{version}-MariaDB")
            except ParseError:
                continue
        found.setdefault(kind, set()).add(version)
    return found
