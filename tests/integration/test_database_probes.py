"""Wire probes and discovery against the real database servers running on this machine.

PostgreSQL 15 (127.0.0.1:5432 and /var/run/postgresql), MariaDB (127.0.0.1:3306 and
/run/mysqld/mysqld.sock) and Redis (127.0.0.1:6379) must be running; a test whose server is
down fails and says how to start it. Every version a probe reads from the wire is compared with
what the server itself reports through its own client. MongoDB cannot run here, so its probe
meets a stand-in server started by the test (see :class:`MongoStandIn`).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from unityctl.infra.probes.databases import (
    discover,
    normalise_mysql_version,
    probe,
    probe_mongodb,
    probe_mysql,
    probe_postgresql,
    probe_redis,
)
from unityctl.infra.probes.sockets import parse_processes, parse_sockets

PG_SOCKET_DIR = "/var/run/postgresql"
MARIADB_SOCKET = "/run/mysqld/mysqld.sock"

START_HINTS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect 15 main start",
    "MariaDB": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    "Redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
}
PORTS = {"PostgreSQL": 5432, "MariaDB": 3306, "Redis": 6379}


def require(service: str) -> None:
    """Fail (not skip) when a service this file tests is down, saying how to start it."""
    try:
        socket.create_connection(("127.0.0.1", PORTS[service]), timeout=2.0).close()
    except OSError as exc:
        pytest.fail(f"{service} is not running on 127.0.0.1:{PORTS[service]} ({exc}); "
                    f"start it with: {START_HINTS[service]}")


def run(*command: str) -> str:
    """Run a server's own client and return its stdout; fail the test if it does not work."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


@pytest.fixture
def postgresql() -> None:
    require("PostgreSQL")


@pytest.fixture
def mariadb() -> None:
    require("MariaDB")


@pytest.fixture
def redis() -> None:
    require("Redis")


# --- PostgreSQL ---------------------------------------------------------------------------------


def test_postgresql_over_tcp_is_reachable_for_a_role_that_does_not_exist(postgresql: None) -> None:
    result = probe_postgresql("127.0.0.1", 5432, timeout=5.0)
    assert result.reachable, result.detail
    assert result.kind == "postgresql"
    # Depending on pg_hba.conf the server refuses the role or asks for its password first.
    assert 'role "unityctl_probe" does not exist' in result.detail or "asks for" in result.detail


def test_postgresql_version_read_from_the_wire_matches_show_server_version(postgresql: None) -> None:
    expected = run("psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "show server_version")
    # The version only comes with a login; this machine trusts "postgres" on 127.0.0.1 (the
    # psql call above just proved it), so the probe names that role instead of its own.
    result = probe_postgresql("127.0.0.1", 5432, timeout=5.0, user="postgres")
    assert result.reachable, result.detail
    assert result.version == expected, result.detail


def test_postgresql_unix_socket_by_directory_and_by_path(postgresql: None) -> None:
    by_dir = probe_postgresql(PG_SOCKET_DIR, 5432, timeout=5.0)
    by_path = probe_postgresql(f"{PG_SOCKET_DIR}/.s.PGSQL.5432", None, timeout=5.0)
    assert by_dir.reachable, by_dir.detail
    assert by_path.reachable, by_path.detail
    expected = run("psql", "-h", PG_SOCKET_DIR, "-U", "postgres", "-Atc", "show server_version")
    assert probe_postgresql(PG_SOCKET_DIR, 5432, timeout=5.0, user="postgres").version == expected


def test_a_caller_opened_stream_is_used_and_left_open(postgresql: None) -> None:
    # What the collector does with a paramiko direct-tcpip channel, with a plain socket here.
    with socket.create_connection(("127.0.0.1", 5432), timeout=5.0) as stream:
        result = probe_postgresql(sock=stream, timeout=5.0)
        assert result.reachable, result.detail
        assert stream.fileno() != -1  # still ours, not closed by the probe


# --- MariaDB ------------------------------------------------------------------------------------


def test_mariadb_over_tcp_reports_the_version_select_version_gives(mariadb: None) -> None:
    server_says = run("mariadb", "-uroot", "-h127.0.0.1", "-Nse", "select version()")
    result = probe_mysql("127.0.0.1", 3306, timeout=5.0)
    assert result.reachable, result.detail
    assert result.kind == "mariadb"
    assert result.version == normalise_mysql_version(server_says)[1]
    assert server_says in result.detail  # the raw greeting, "5.5.5-" prefix aside


def test_mariadb_over_its_unix_socket_is_reachable(mariadb: None) -> None:
    result = probe_mysql(MARIADB_SOCKET, None, timeout=5.0)
    assert result.reachable, result.detail
    assert result.kind == "mariadb"


def preauth_aborts() -> int:
    row = run("mariadb", "-uroot", "-h127.0.0.1", "-Nse",
              "show global status like 'Aborted_connects_preauth'")
    return int(row.split()[-1])


def test_mariadb_probes_do_not_count_as_aborted_handshakes(mariadb: None) -> None:
    # A greeting left unanswered counts as a pre-authentication abort, and max_connect_errors of
    # those get a (non-loopback) host blocked. The probe answers with a login that is refused.
    before = preauth_aborts()
    for _ in range(5):
        assert probe_mysql("127.0.0.1", 3306, timeout=5.0).reachable
    assert preauth_aborts() == before


# --- Redis --------------------------------------------------------------------------------------


def test_redis_version_read_from_the_wire_matches_info_server(redis: None) -> None:
    info = run("redis-cli", "-h", "127.0.0.1", "-p", "6379", "info", "server")
    expected = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("redis_version:"))
    result = probe_redis("127.0.0.1", 6379, timeout=5.0)
    assert result.reachable, result.detail
    assert result.version == expected


@pytest.fixture
def redis_on_a_unix_socket() -> Iterator[str]:
    """A second, throw-away redis-server listening only on a unix socket, stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; install the redis-server package")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "redis.sock")
        server = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", path, "--save", "", "--appendonly", "no",
             "--dir", directory, "--requirepass", "only-for-this-test"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):  # wait for the socket to appear: not a timed assertion
                if os.path.exists(path) or server.poll() is not None:
                    break
                time.sleep(0.05)
            if not os.path.exists(path):
                pytest.fail("the test's own redis-server did not create its unix socket")
            yield path
        finally:
            server.terminate()
            server.wait(timeout=10)


def test_redis_over_a_unix_socket_with_a_password_is_reachable_without_it(
        redis_on_a_unix_socket: str) -> None:
    result = probe_redis(redis_on_a_unix_socket, None, timeout=5.0)
    assert result.reachable, result.detail
    assert result.version is None  # INFO is not asked without authentication
    assert "NOAUTH" in result.detail


# --- discovery on this machine ------------------------------------------------------------------


def live_sections() -> tuple[str, str]:
    return run("ss", "-H", "-ltnpx"), run("ps", "-e", "-o", "pid=,comm=")


def test_discovery_on_this_machine_finds_postgresql_mariadb_and_redis(
        postgresql: None, mariadb: None, redis: None) -> None:
    sockets_text, processes_text = live_sections()
    report = parse_sockets(sockets_text)
    assert report.notes == []
    found = {db.key: db for db in discover(report.listeners, parse_processes(processes_text))}
    assert {"postgresql:5432", "mysql:3306", "redis:6379"} <= set(found)
    assert found["postgresql:5432"].socket_path == f"{PG_SOCKET_DIR}/.s.PGSQL.5432"
    assert found["mysql:3306"].kind == "mariadb"
    for key in ("postgresql:5432", "mysql:3306", "redis:6379"):
        result = probe(found[key], timeout=5.0)
        assert result.reachable, f"{key}: {result.detail}"


def test_discovery_from_this_machines_proc_net_finds_the_same_databases(
        postgresql: None, mariadb: None, redis: None) -> None:
    files = ["/proc/net/tcp", "/proc/net/tcp6", "/proc/net/unix"]
    text = "".join(f"# {name}\n{Path(name).read_text()}" for name in files)
    report = parse_sockets(text)
    assert report.notes == []
    processes = parse_processes(run("ps", "-e", "-o", "pid=,comm="))
    found = {db.key for db in discover(report.listeners, processes)}
    assert {"postgresql:5432", "mysql:3306", "redis:6379"} <= found


# --- failures -----------------------------------------------------------------------------------


class TinyServer:
    """A TCP server on 127.0.0.1 that hands each connection to ``handler`` in a thread."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.handler = handler
        self.connections: list[socket.socket] = []
        # accept() is not woken by close() from another thread: poll, and watch the flag.
        self.listener.settimeout(0.1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.connections.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], TinyServer]]:
    servers: list[TinyServer] = []

    def start(handler: Callable[[socket.socket], None]) -> TinyServer:
        servers.append(TinyServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


ALL_PROBES = [probe_postgresql, probe_mysql, probe_redis, probe_mongodb]


@pytest.mark.parametrize("probe_fn", ALL_PROBES)
def test_a_closed_port_is_not_reachable(probe_fn) -> None:  # type: ignore[no-untyped-def]
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()  # now nothing listens there
    result = probe_fn("127.0.0.1", port, timeout=5.0)
    assert result.reachable is False
    assert result.detail == f"connection refused by 127.0.0.1:{port}"


@pytest.mark.parametrize("probe_fn", ALL_PROBES)
def test_a_listener_that_sends_garbage_is_not_reachable(probe_fn, serve) -> None:  # type: ignore[no-untyped-def]
    def ssh_banner(conn: socket.socket) -> None:
        # Another service on the port: it speaks first, then waits, like sshd does.
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
        conn.recv(4096)

    server = serve(ssh_banner)
    result = probe_fn("127.0.0.1", server.port, timeout=5.0)
    assert result.reachable is False
    assert f"127.0.0.1:{server.port} answered, but not in the" in result.detail


@pytest.mark.parametrize("probe_fn", ALL_PROBES)
def test_a_listener_that_never_answers_times_out(probe_fn, serve) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()

    def silent(conn: socket.socket) -> None:
        release.wait(30)  # hold the connection open, say nothing

    server = serve(silent)
    try:
        result = probe_fn("127.0.0.1", server.port, timeout=0.5)
    finally:
        release.set()
    assert result.reachable is False
    assert result.detail == (f"127.0.0.1:{server.port} accepted the connection but sent no answer "
                             "within 0.5 s")


# --- MongoDB, against a stand-in ----------------------------------------------------------------


def _bson_element(kind: int, name: str, value: bytes) -> bytes:
    return bytes([kind]) + name.encode() + b"\x00" + value


def _bson_doc(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("client went away")
        data += chunk
    return data


class MongoStandIn:
    """A stand-in for mongod, because no MongoDB can run on this machine.

    It speaks just enough OP_MSG: reads one message, checks that it is an OP_MSG whose body
    document starts with the ``hello`` command on ``$db: admin`` (parsed here by hand, not with
    the module's decoder), and answers as a MongoDB 7.0 standalone would: isWritablePrimary,
    maxWireVersion 21, ok 1.0. Anything else gets ``ok: 0``. Requests seen are kept for asserts.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, bool]] = []

    def __call__(self, conn: socket.socket) -> None:
        while True:
            length, request_id, _, opcode = struct.unpack("<iiii", _read_exactly(conn, 16))
            body = _read_exactly(conn, length - 16)
            assert opcode == 2013 and body[4] == 0
            document = body[5:]
            first_name = document[5 : document.index(b"\x00", 5)].decode()
            on_admin = b"\x02$db\x00" + struct.pack("<i", 6) + b"admin\x00" in document
            self.requests.append((first_name, on_admin))
            if first_name == "hello" and on_admin:
                reply = _bson_doc(
                    _bson_element(0x08, "isWritablePrimary", b"\x01"),
                    _bson_element(0x10, "maxBsonObjectSize", struct.pack("<i", 16777216)),
                    _bson_element(0x09, "localTime", struct.pack("<q", int(time.time() * 1000))),
                    _bson_element(0x10, "minWireVersion", struct.pack("<i", 0)),
                    _bson_element(0x10, "maxWireVersion", struct.pack("<i", 21)),
                    _bson_element(0x08, "readOnly", b"\x00"),
                    _bson_element(0x01, "ok", struct.pack("<d", 1.0)))
            else:
                reply = _bson_doc(_bson_element(0x01, "ok", struct.pack("<d", 0.0)))
            message = struct.pack("<I", 0) + b"\x00" + reply
            conn.sendall(struct.pack("<iiii", 16 + len(message), 500, request_id, 2013) + message)


def test_mongodb_probe_reads_max_wire_version_from_a_stand_in_server(serve) -> None:  # type: ignore[no-untyped-def]
    """MongoDB cannot run here: this checks the probe against :class:`MongoStandIn` over TCP."""
    stand_in = MongoStandIn()
    server = serve(stand_in)
    result = probe_mongodb("127.0.0.1", server.port, timeout=5.0)
    assert result.reachable, result.detail
    assert (result.kind, result.version) == ("mongodb", "7.0")
    assert "maxWireVersion 21" in result.detail
    assert stand_in.requests == [("hello", True)]


def test_mongodb_probe_over_a_caller_opened_stream_to_the_stand_in(serve) -> None:  # type: ignore[no-untyped-def]
    """MongoDB cannot run here: the stand-in again, reached through a stream the caller opened."""
    server = serve(MongoStandIn())
    with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as stream:
        result = probe_mongodb(sock=stream, timeout=5.0)
    assert result.reachable and result.version == "7.0", result.detail
