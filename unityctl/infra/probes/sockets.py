"""Parse a server's listening sockets and its process list, as captured by the collector script.

Two sections of the collector's output land here:

* ``sockets``: either the output of ``ss -H -ltnpx`` (listening TCP and unix sockets, with the
  owning process when ss may see it), or, on hosts without ss, the raw content of
  ``/proc/net/tcp``, ``/proc/net/tcp6`` and ``/proc/net/unix`` (each usually preceded by a marker
  line such as ``# /proc/net/tcp``). Both formats may even be mixed; every line is recognised on
  its own shape, so a missing or misplaced marker does not matter.
* ``processes``: ``ps -e -o pid=,comm=`` or, as a fallback, ``PID COMM`` lines read from
  ``/proc/*/comm`` (``grep . /proc/*/comm`` style ``/proc/123/comm:postgres`` is accepted too).

Both parsers are total: any text goes in, a result comes out. A line that cannot be understood is
recorded in ``SocketsReport.notes`` (sockets) or skipped (processes); nothing raises.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Listener",
    "Process",
    "SocketsReport",
    "parse_processes",
    "parse_sockets",
]

Proto = Literal["tcp", "unix"]


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening socket.

    ``address``/``port`` are set for TCP (address without brackets or ``%iface``; ``"*"`` for
    ss's dual-stack wildcard); ``path`` is set for unix sockets (abstract names keep their
    leading ``@``). ``process``/``pid`` are None when the capture did not show the owner (ss
    without root, or /proc/net which never does).
    """

    proto: Proto
    address: str | None
    port: int | None
    path: str | None
    process: str | None
    pid: int | None


@dataclass(frozen=True, slots=True)
class SocketsReport:
    """Listeners found in a ``sockets`` section, plus one note per line that was not understood."""

    listeners: list[Listener] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Process:
    """One running process: its pid and its ``comm`` (kernel name, at most 15 characters)."""

    pid: int
    comm: str


# ---------------------------------------------------------------------------------------------
# ss -H -ltnpx
# ---------------------------------------------------------------------------------------------

# The process column may hold several owners (pre-forked servers share the socket) and a comm
# may contain spaces or parentheses, so it is cut off the line before whitespace splitting.
_SS_USERS = re.compile(r"users:\((?P<body>.*)\)\s*$")
_SS_OWNER = re.compile(r'\("(?P<name>(?:[^"\\]|\\.)*)",pid=(?P<pid>\d+)')
_SS_STATES = {"LISTEN", "UNCONN"}
# With only one socket family requested ss drops the Netid column; with -t and -x it prints it.
_SS_NETIDS_TCP = {"tcp"}
_SS_NETIDS_UNIX = {"u_str", "u_seq", "u_dgr", "unix"}

# /proc/net/tcp{,6}: "  0: 0100007F:1538 00000000:0000 0A ..." (state 0A is LISTEN).
_PROC_TCP = re.compile(
    r"^\s*\d+:\s+(?P<addr>[0-9A-Fa-f]{8}|[0-9A-Fa-f]{32}):(?P<port>[0-9A-Fa-f]{4})\s+"
    r"[0-9A-Fa-f]+:[0-9A-Fa-f]+\s+(?P<state>[0-9A-Fa-f]{2})\b"
)
# /proc/net/unix: "Num: RefCount Protocol Flags Type St Inode [Path]".
_PROC_UNIX = re.compile(
    r"^(?P<num>[0-9A-Fa-f]{8,16}):\s+[0-9A-Fa-f]+\s+[0-9A-Fa-f]+\s+(?P<flags>[0-9A-Fa-f]+)\s+"
    r"(?P<type>[0-9A-Fa-f]{4})\s+[0-9A-Fa-f]{2}\s+\d+(?:\s+(?P<path>.*?))?\s*$"
)
_PROC_TCP_LISTEN = "0A"
_SO_ACCEPTCON = 0x00010000  # the kernel flag a unix socket carries once listen() was called
_PROC_HEADERS = ("sl ", "num ")


def _owner(users_body: str) -> tuple[str | None, int | None]:
    """Pick one owner out of ss's ``users:(...)`` body: the lowest pid.

    Pre-forking servers list every worker on the same socket; the lowest pid is, in practice,
    the parent that opened it (postmaster, nginx master), which is the one worth reporting.
    """
    owners = [(int(m.group("pid")), m.group("name")) for m in _SS_OWNER.finditer(users_body)]
    if not owners:
        return None, None
    pid, name = min(owners)
    return name.replace('\\"', '"'), pid


def _split_host_port(text: str) -> tuple[str, int | None] | None:
    """Split ss's ``addr:port`` (``[v6]:port``, ``addr%iface:port``, ``*:port``); None if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        return None
    # "127.0.0.53%lo", "[fe80::1]%eth0": the interface is not part of the address.
    host = host.split("%", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return None
    if port_text == "*":
        return host, None
    # isdecimal + isascii: str.isdigit accepts "²", which int() then refuses.
    if not (port_text.isdecimal() and port_text.isascii()) or not 0 <= int(port_text) <= 65535:
        return None
    return host, int(port_text)


def _parse_ss_line(line: str) -> Listener | str | None:
    """One ss line -> a Listener, a note (str) saying why it was skipped, or None to ignore it."""
    process: str | None = None
    pid: int | None = None
    match = _SS_USERS.search(line)
    if match:
        process, pid = _owner(match.group("body"))
        line = line[: match.start()]
    tokens = line.split()
    if not tokens:
        return None
    netid: str | None = None
    if tokens[0] in _SS_NETIDS_TCP | _SS_NETIDS_UNIX or tokens[0] in {"udp", "raw", "sctp"}:
        netid, tokens = tokens[0], tokens[1:]
    # state, recv-q, send-q, local, peer: at least five columns remain.
    if len(tokens) < 5 or tokens[0] not in _SS_STATES:
        return f"ss: unrecognised line: {line.strip()[:120]}"
    if not (tokens[1].isdigit() and tokens[2].isdigit()):
        return f"ss: unrecognised queue columns: {line.strip()[:120]}"
    if netid in {"udp", "raw", "sctp"}:
        return None  # not asked for, not interesting for databases
    rest = tokens[3:]
    # Unix sockets print "path inode peer peer-inode"; a path may contain spaces, so the path is
    # everything before the last three columns. Without a Netid column the shape tells them apart.
    looks_unix = netid in _SS_NETIDS_UNIX or (
        netid is None and len(rest) >= 4 and rest[-3].isdigit() and rest[-1].isdigit()
    )
    if looks_unix:
        if len(rest) < 4 or not rest[-3].isdigit():
            return f"ss: malformed unix socket line: {line.strip()[:120]}"
        path = " ".join(rest[:-3])
        if path == "*":
            return None  # an unnamed socket cannot be connected to
        return Listener("unix", None, None, path, process, pid)
    if len(rest) != 2:
        return f"ss: malformed tcp line: {line.strip()[:120]}"
    local = _split_host_port(rest[0])
    if local is None:
        return f"ss: malformed local address {rest[0][:60]!r}"
    host, port = local
    return Listener("tcp", host, port, None, process, pid)


# ---------------------------------------------------------------------------------------------
# /proc/net/tcp, /proc/net/tcp6, /proc/net/unix
# ---------------------------------------------------------------------------------------------


def _proc_address(hex_addr: str) -> str:
    """Decode a /proc/net/tcp{,6} address.

    The kernel prints the address as 32-bit words in host byte order. Every architecture a
    homelab runs (x86-64, arm64, riscv64) is little-endian, so each word is byte-reversed.
    """
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    address = ipaddress.IPv6Address(words)
    return str(address)


def _parse_proc_line(line: str) -> Listener | str | None:
    """One /proc/net line -> a Listener, None (not listening / header), or a note."""
    match = _PROC_TCP.match(line)
    if match:
        if match.group("state").upper() != _PROC_TCP_LISTEN:
            return None
        try:
            address = _proc_address(match.group("addr"))
        except ValueError:
            return f"/proc/net/tcp: bad address {match.group('addr')!r}"
        return Listener("tcp", address, int(match.group("port"), 16), None, None, None)
    match = _PROC_UNIX.match(line)
    if match:
        if not int(match.group("flags"), 16) & _SO_ACCEPTCON:
            return None
        path = match.group("path")
        if not path:
            return None
        return Listener("unix", None, None, path, None, None)
    return f"unrecognised line: {line.strip()[:120]}"


def parse_sockets(text: str) -> SocketsReport:
    """Parse the ``sockets`` section of the collector's output.

    In: the raw section text, in ``ss -H -ltnpx`` format, /proc/net format, or a mix.
    Out: a :class:`SocketsReport` with one :class:`Listener` per listening TCP or named unix
    socket, in input order, and one note per line that was not understood.
    Raises: nothing; any input gives a report.
    """
    listeners: list[Listener] = []
    notes: list[str] = []
    if not isinstance(text, str):
        return SocketsReport([], [f"sockets section is not text ({type(text).__name__})"])
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank, or a "# /proc/net/tcp" marker: the line shape says it anyway
        if stripped.lower().startswith(_PROC_HEADERS) or stripped.startswith(("Netid", "State")):
            continue  # column headers of /proc/net/* or of ss run without -H
        try:
            if _PROC_TCP.match(line) or _PROC_UNIX.match(line):
                result = _parse_proc_line(line)
            else:
                result = _parse_ss_line(line)
        except (ValueError, IndexError) as exc:  # belt and braces: the contract is "never raise"
            result = f"could not parse ({exc.__class__.__name__}): {stripped[:120]}"
        if isinstance(result, Listener):
            listeners.append(result)
        elif isinstance(result, str):
            notes.append(f"line {number}: {result}")
    return SocketsReport(listeners, notes)


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

_PROC_COMM_GREP = re.compile(r"^/proc/(?P<pid>\d+)/comm:(?P<comm>.*)$")


def parse_processes(text: str) -> list[Process]:
    """Parse the ``processes`` section: ``ps -e -o pid=,comm=`` or ``PID COMM`` from /proc/*/comm.

    In: the raw section text.
    Out: one :class:`Process` per understood line, in input order. A comm may contain spaces
    (``tmux: server``), so only the first whitespace separates pid from comm.
    Raises: nothing; lines that are not ``PID COMM`` (a ps header, garbage) are skipped.
    """
    processes: list[Process] = []
    if not isinstance(text, str):
        return processes
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _PROC_COMM_GREP.match(line)
        if match:
            pid_text, comm = match.group("pid"), match.group("comm").strip()
        else:
            parts = line.split(None, 1)
            if len(parts) != 2:
                continue
            pid_text, comm = parts[0], parts[1].strip()
        # isdecimal, not isdigit: int() refuses superscript digits that isdigit accepts.
        if not pid_text.isdecimal() or not pid_text.isascii() or not comm:
            continue
        processes.append(Process(int(pid_text), comm))
    return processes
