"""Database discovery from sockets + processes, and the wire probes' protocol logic over fake streams.

The byte strings the fake servers send are built here by hand from the protocol documentation,
not with the module's own encoders, so that an encoder and decoder wrong in the same way cannot
agree with each other and pass.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unityctl.core.errors import ParseError, UsageError
from unityctl.infra.probes.databases import (
    DiscoveredDatabase,
    ProbeResult,
    decode_bson,
    discover,
    encode_bson,
    normalise_mysql_version,
    probe,
    probe_mongodb,
    probe_mysql,
    probe_postgresql,
    probe_redis,
)
from unityctl.infra.probes.sockets import Listener, Process, parse_processes, parse_sockets

pytestmark = pytest.mark.backend_independent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sockets"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def discover_fixture(sockets: str, processes: str) -> dict[str, DiscoveredDatabase]:
    found = discover(parse_sockets(fixture(sockets)).listeners, parse_processes(fixture(processes)))
    return {db.key: db for db in found}


# =============================================================================================
# discovery
# =============================================================================================


def test_this_machine_has_one_postgresql_one_mariadb_and_one_redis() -> None:
    found = discover_fixture("ss_this_machine.txt", "ps_this_machine.txt")
    assert sorted(found) == ["mysql:3306", "postgresql:5432", "redis:6379"]
    pg = found["postgresql:5432"]
    assert (pg.kind, pg.address, pg.port, pg.pid, pg.process) == ("postgresql", "127.0.0.1", 5432,
                                                                   2190, "postgres")
    assert pg.socket_path == "/var/run/postgresql/.s.PGSQL.5432"
    maria = found["mysql:3306"]
    assert (maria.kind, maria.socket_path, maria.process) == ("mariadb", "/run/mysqld/mysqld.sock",
                                                             "mariadbd")
    redis = found["redis:6379"]
    assert redis.address == "127.0.0.1" and redis.socket_path is None
    assert set(redis.endpoints) == {"127.0.0.1:6379", "[::1]:6379"}


def test_one_postmaster_on_v4_v6_and_a_unix_socket_is_one_instance() -> None:
    listeners = [
        Listener("tcp", "127.0.0.1", 5432, None, "postgres", 900),
        Listener("tcp", "::1", 5432, None, "postgres", 900),
        Listener("unix", None, None, "/run/postgresql/.s.PGSQL.5432", "postgres", 900),
    ]
    (db,) = discover(listeners, [])
    assert db.key == "postgresql:5432"
    assert db.socket_path == "/run/postgresql/.s.PGSQL.5432"
    assert len(db.endpoints) == 3


def test_two_postmasters_on_5432_and_5433_are_two_instances_each_with_its_socket() -> None:
    found = discover_fixture("ss_two_postgres.txt", "ps_no_process_info.txt")
    assert sorted(found) == ["postgresql:5432", "postgresql:5433"]
    assert found["postgresql:5432"].pid == 901
    assert found["postgresql:5433"].pid == 1402
    assert found["postgresql:5433"].socket_path == "/var/run/postgresql/.s.PGSQL.5433"
    assert found["postgresql:5432"].socket_path == "/var/run/postgresql/.s.PGSQL.5432"


def test_without_process_info_default_ports_and_socket_names_find_every_database() -> None:
    found = discover_fixture("ss_no_process_info.txt", "ps_no_process_info.txt")
    assert sorted(found) == ["mongodb:27017", "mysql:3306", "postgresql:5432", "redis:6379"]
    pg = found["postgresql:5432"]
    assert (pg.address, pg.socket_path) == ("127.0.0.1", "/var/run/postgresql/.s.PGSQL.5432")
    assert pg.source == "default-port" and pg.pid is None
    # ps shows mariadbd running, so the anonymous 3306 is taken for MariaDB.
    assert found["mysql:3306"].kind == "mariadb"
    assert found["mysql:3306"].socket_path == "/run/mysqld/mysqld.sock"
    assert found["redis:6379"].socket_path == "/run/redis/redis-server.sock"
    assert found["mongodb:27017"].process == "mongod"


def test_without_any_process_information_an_anonymous_3306_is_called_mysql() -> None:
    (db,) = discover([Listener("tcp", "0.0.0.0", 3306, None, None, None)], [])
    assert (db.kind, db.key, db.address, db.process) == ("mysql", "mysql:3306", "127.0.0.1", None)


def test_the_proc_net_format_finds_two_postgresql_clusters_mysql_and_redis() -> None:
    found = discover_fixture("proc_net.txt", "proc_comm.txt")
    assert sorted(found) == ["mysql:3306", "postgresql:5432", "postgresql:5433", "redis:6379"]
    assert found["postgresql:5433"].socket_path == "/var/run/postgresql/.s.PGSQL.5433"
    assert found["mysql:3306"].address == "::1"  # listening on [::] only
    assert found["mysql:3306"].kind == "mysql"  # /proc/*/comm says mysqld
    assert found["mysql:3306"].socket_path == "/run/mysqld/mysqld.sock"
    assert found["redis:6379"].address == "127.0.0.1"


def test_ipv6_host_mysql_with_x_protocol_is_one_instance_on_its_classic_port() -> None:
    found = discover_fixture("ss_ipv6.txt", "ps_no_process_info.txt")
    mysql = found["mysql:3306"]
    assert (mysql.kind, mysql.port, mysql.address) == ("mysql", 3306, "127.0.0.1")
    assert mysql.socket_path == "/var/run/mysqld/mysqld.sock"  # not mysqlx.sock
    assert "*:33060" in mysql.endpoints
    assert not any(key.endswith("33060") for key in found)


def test_ipv6_host_addresses_are_the_ones_to_connect_to() -> None:
    found = discover_fixture("ss_ipv6.txt", "ps_no_process_info.txt")
    assert found["postgresql:5432"].address == "::1"
    mongo = found["mongodb:27017"]
    assert (mongo.address, mongo.socket_path) == ("2001:db8::10", "/tmp/mongodb-27017.sock")
    assert found["redis:6380"].address == "fe80::1"


def test_a_default_port_published_by_docker_proxy_counts_as_that_database() -> None:
    found = discover_fixture("ss_ipv6.txt", "ps_no_process_info.txt")
    redis = found["redis:6379"]
    assert (redis.source, redis.process, redis.pid) == ("published-port", "docker-proxy", 1250)


def test_a_default_port_owned_by_another_program_is_not_a_database() -> None:
    listeners = [Listener("tcp", "0.0.0.0", 5432, None, "sshd", 10),
                 Listener("tcp", "0.0.0.0", 8080, None, "nginx", 11)]
    assert discover(listeners, [Process(10, "sshd")]) == []


def test_a_database_process_on_an_unusual_port_is_found_by_its_owner() -> None:
    (db,) = discover([Listener("tcp", "10.0.0.5", 16379, None, "redis-server", 5)], [])
    assert (db.kind, db.key, db.address) == ("redis", "redis:16379", "10.0.0.5")


def test_a_socket_only_mysql_keys_on_its_socket_path() -> None:
    (db,) = discover([Listener("unix", None, None, "/run/mysqld/mysqld.sock", "mysqld", 70)], [])
    assert (db.key, db.port, db.address) == ("mysql:/run/mysqld/mysqld.sock", None, None)


def test_a_portless_socket_stays_apart_when_two_instances_could_own_it() -> None:
    listeners = [Listener("tcp", "127.0.0.1", 6379, None, None, None),
                 Listener("tcp", "127.0.0.1", 6380, None, "redis-server", 8),
                 Listener("unix", None, None, "/run/redis/redis.sock", None, None)]
    found = {db.key for db in discover(listeners, [])}
    assert found == {"redis:6379", "redis:6380", "redis:/run/redis/redis.sock"}


def test_an_owned_socket_and_an_anonymous_port_of_one_family_merge() -> None:
    listeners = [Listener("unix", None, None, "/run/mysqld/mysqld.sock", "mariadbd", 70),
                 Listener("tcp", "127.0.0.1", 3306, None, None, None)]
    (db,) = discover(listeners, [])
    assert (db.key, db.kind, db.pid, db.socket_path) == ("mysql:3306", "mariadb", 70,
                                                         "/run/mysqld/mysqld.sock")


def test_with_no_listeners_at_all_running_databases_are_assumed_on_default_ports() -> None:
    found = discover([], parse_processes(fixture("ps_no_process_info.txt")))
    assert {db.key: db.source for db in found} == {
        "mongodb:27017": "process-only", "mysql:3306": "process-only",
        "postgresql:5432": "process-only", "redis:6379": "process-only"}


def test_with_listeners_a_database_process_without_a_visible_socket_is_not_invented() -> None:
    found = discover([Listener("tcp", "0.0.0.0", 22, None, None, None)],
                     [Process(5, "mongod")])
    assert found == []


listener_strategy = st.builds(
    Listener,
    proto=st.sampled_from(["tcp", "unix"]),
    address=st.sampled_from([None, "127.0.0.1", "0.0.0.0", "::", "::1", "*", "10.1.2.3",
                             "::ffff:127.0.0.1"]),
    port=st.one_of(st.none(), st.sampled_from([5432, 5433, 3306, 33060, 6379, 27017, 22]),
                   st.integers(0, 65535)),
    path=st.one_of(st.none(), st.sampled_from(["/run/postgresql/.s.PGSQL.5432", "/x/.s.PGSQL.0",
                                               "/run/mysqld/mysqld.sock", "/tmp/mysqlx.sock",
                                               "/tmp/mongodb-27017.sock", "/run/redis.sock", "@a"]),
                   st.text()),
    process=st.one_of(st.none(), st.sampled_from(["postgres", "mysqld", "mariadbd",
                                                  "redis-server", "mongod", "docker-proxy",
                                                  "sshd"]), st.text(max_size=15)),
    pid=st.one_of(st.none(), st.integers(0, 20)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(listener_strategy, max_size=12),
       st.lists(st.builds(Process, st.integers(0, 20),
                          st.sampled_from(["postgres", "mysqld", "mariadbd", "mongod", "bash"])),
                max_size=6))
def test_discover_never_raises_and_gives_one_entry_per_key(
        listeners: list[Listener], processes: list[Process]) -> None:
    found = discover(listeners, processes)
    keys = [db.key for db in found]
    assert len(keys) == len(set(keys))
    for db in found:
        assert db.kind in ("postgresql", "mysql", "mariadb", "redis", "mongodb")
        assert db.address is not None or db.socket_path is not None


# =============================================================================================
# version strings and BSON
# =============================================================================================


@pytest.mark.parametrize(("raw", "expected"), [
    ("5.5.5-10.11.6-MariaDB-0+deb12u1", ("mariadb", "10.11.6-MariaDB")),
    ("5.5.5-10.6.16-MariaDB-log", ("mariadb", "10.6.16-MariaDB")),
    ("11.4.2-MariaDB-ubu2404", ("mariadb", "11.4.2-MariaDB")),
    ("8.0.36-0ubuntu0.22.04.1", ("mysql", "8.0.36")),
    ("8.4.0", ("mysql", "8.4.0")),
    ("5.7.44-log", ("mysql", "5.7.44")),
])
def test_mysql_greeting_versions_are_normalised(raw: str, expected: tuple[str, str]) -> None:
    assert normalise_mysql_version(raw) == expected


def test_a_greeting_version_that_is_not_a_version_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        normalise_mysql_version("hello-MariaDB")


def test_bson_encoding_matches_the_specification_byte_for_byte() -> None:
    # {"hello": 1, "$db": "admin"}: int32 element, string element, terminator.
    expected = (b"\x10hello\x00" + struct.pack("<i", 1)
                + b"\x02$db\x00" + struct.pack("<i", 6) + b"admin\x00")
    expected = struct.pack("<i", len(expected) + 5) + expected + b"\x00"
    assert encode_bson({"hello": 1, "$db": "admin"}) == expected


def test_bson_decoding_reads_the_types_a_hello_reply_uses() -> None:
    document = hello_reply_document(21)
    decoded = decode_bson(document)
    assert decoded["isWritablePrimary"] is True
    assert decoded["maxWireVersion"] == 21
    assert decoded["ok"] == 1.0
    assert decoded["topologyVersion"] == {"processId": "65a1b2c3d4e5f60718293a4b", "counter": 0}
    assert decoded["hosts"] == ["db1:27017", "db2:27017"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@example(b"\x05\x00\x00\x00\x00")
def test_bson_decoding_of_arbitrary_bytes_raises_only_parse_error(data: bytes) -> None:
    try:
        decode_bson(data)
    except ParseError:
        pass


# =============================================================================================
# hand-built server messages
# =============================================================================================


def bson_element(kind: int, name: str, value: bytes) -> bytes:
    return bytes([kind]) + name.encode() + b"\x00" + value


def bson_doc(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def bson_str(text: str) -> bytes:
    data = text.encode() + b"\x00"
    return struct.pack("<i", len(data)) + data


def hello_reply_document(max_wire: int) -> bytes:
    return bson_doc(
        bson_element(0x08, "isWritablePrimary", b"\x01"),
        bson_element(0x03, "topologyVersion", bson_doc(
            bson_element(0x07, "processId", bytes.fromhex("65a1b2c3d4e5f60718293a4b")),
            bson_element(0x12, "counter", struct.pack("<q", 0)))),
        bson_element(0x04, "hosts", bson_doc(bson_element(0x02, "0", bson_str("db1:27017")),
                                             bson_element(0x02, "1", bson_str("db2:27017")))),
        bson_element(0x10, "maxBsonObjectSize", struct.pack("<i", 16777216)),
        bson_element(0x09, "localTime", struct.pack("<q", 1_700_000_000_000)),
        bson_element(0x11, "operationTime", struct.pack("<Q", 7)),
        bson_element(0x0A, "nothing", b""),
        bson_element(0x10, "minWireVersion", struct.pack("<i", 0)),
        bson_element(0x10, "maxWireVersion", struct.pack("<i", max_wire)),
        bson_element(0x08, "readOnly", b"\x00"),
        bson_element(0x01, "ok", struct.pack("<d", 1.0)),
    )


def op_msg(document: bytes, response_to: int) -> bytes:
    body = struct.pack("<I", 0) + b"\x00" + document
    return struct.pack("<iiii", 16 + len(body), 99, response_to, 2013) + body


def pg_message(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("!i", len(payload) + 4) + payload


def mysql_packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def mysql_greeting(version: str) -> bytes:
    payload = (b"\x0a" + version.encode() + b"\x00" + struct.pack("<I", 42) + b"12345678\x00"
               + struct.pack("<HBHH", 0xF7FE, 0x21, 0x0002, 0x81BF) + b"\x15" + b"\x00" * 10
               + b"abcdefghijkl\x00" + b"mysql_native_password\x00")
    return mysql_packet(0, payload)


TIMEOUT = object()


class FakeStream:
    """A scripted peer: recv hands out the chunks in order, then b"" (closed) or a timeout."""

    def __init__(self, *chunks: bytes | object) -> None:
        self.chunks = list(chunks)
        self.sent = bytearray()
        self.timeouts: list[float | None] = []
        self.closed = False

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if chunk is TIMEOUT:
            raise socket.timeout("timed out")
        assert isinstance(chunk, bytes)
        if len(chunk) > size:
            self.chunks.insert(0, chunk[size:])
        return chunk[:size]

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)

    def gettimeout(self) -> float | None:
        return 42.0

    def close(self) -> None:
        self.closed = True


# =============================================================================================
# PostgreSQL
# =============================================================================================


def test_postgresql_startup_message_names_the_probe_role_and_protocol_3() -> None:
    stream = FakeStream(pg_message(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\x00\x00"))
    probe_postgresql(sock=stream)
    (length, protocol) = struct.unpack("!ii", bytes(stream.sent[:8]))
    assert length == len(stream.sent) and protocol == 196608
    assert b"user\x00unityctl_probe\x00" in stream.sent
    assert stream.sent.endswith(b"\x00\x00")


def test_postgresql_asking_for_a_password_is_reachable_without_a_version() -> None:
    result = probe_postgresql(sock=FakeStream(
        pg_message(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\x00\x00")))
    assert (result.reachable, result.kind, result.version) == (True, "postgresql", None)
    assert "SASL (SCRAM-SHA-256)" in result.detail


def test_postgresql_error_response_is_reachable_and_quoted_in_the_detail() -> None:
    error = pg_message(b"E", b"SFATAL\x00VFATAL\x00C28000\x00"
                             b"Mrole \"unityctl_probe\" does not exist\x00\x00")
    result = probe_postgresql(sock=FakeStream(error[:3], error[3:]))  # split: reads reassemble
    assert result.reachable and result.version is None
    assert result.detail == 'PostgreSQL answered with FATAL 28000: role "unityctl_probe" does not exist'


def test_postgresql_trust_login_reads_server_version_and_terminates() -> None:
    stream = FakeStream(
        pg_message(b"R", struct.pack("!i", 0))
        + pg_message(b"S", b"client_encoding\x00UTF8\x00")
        + pg_message(b"S", b"server_version\x0016.2 (Debian 16.2-1)\x00")
        + pg_message(b"K", struct.pack("!ii", 1, 2))
        + pg_message(b"Z", b"I"))
    result = probe_postgresql(sock=stream, user="postgres")
    assert (result.reachable, result.version) == (True, "16.2 (Debian 16.2-1)")
    assert stream.sent.endswith(b"X\x00\x00\x00\x04")


def test_postgresql_probe_gives_the_callers_stream_back_open_with_its_timeout() -> None:
    stream = FakeStream(pg_message(b"R", struct.pack("!i", 5) + b"salt"))
    probe_postgresql(sock=stream, timeout=2.0)
    assert not stream.closed
    assert stream.timeouts[-1] == 42.0
    assert all(t is not None and 0 < t <= 2.0 for t in stream.timeouts[:-1])


# =============================================================================================
# MySQL / MariaDB
# =============================================================================================


def test_mariadb_greeting_gives_kind_and_normalised_version() -> None:
    denied = mysql_packet(2, b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied")
    stream = FakeStream(mysql_greeting("5.5.5-10.11.6-MariaDB-0+deb12u1"), denied)
    result = probe_mysql(sock=stream)
    assert (result.reachable, result.kind, result.version) == (True, "mariadb", "10.11.6-MariaDB")
    assert "5.5.5-10.11.6-MariaDB-0+deb12u1" in result.detail
    assert "1045: Access denied" in result.detail


def test_mysql_probe_answers_the_greeting_with_a_password_less_login() -> None:
    stream = FakeStream(mysql_greeting("8.0.36"))
    result = probe_mysql(sock=stream, kind="mariadb")
    assert (result.kind, result.version) == ("mysql", "8.0.36")  # the greeting wins over the guess
    sent = bytes(stream.sent)
    assert int.from_bytes(sent[:3], "little") == len(sent) - 4 and sent[3] == 1
    assert b"unityctl_probe\x00\x00" in sent  # the user, then an empty auth response


def test_mysql_error_packet_instead_of_a_greeting_is_reachable() -> None:
    refused = mysql_packet(0, b"\xff" + struct.pack("<H", 1130)
                           + b"Host '10.0.0.9' is not allowed to connect to this MariaDB server")
    result = probe_mysql(sock=FakeStream(refused))
    assert result.reachable and result.version is None
    assert "not allowed to connect" in result.detail and "1130" in result.detail


def test_mysql_greeting_of_another_protocol_version_is_not_reachable() -> None:
    result = probe_mysql(sock=FakeStream(mysql_packet(0, b"\x09" + b"4.0.1\x00" + b"\x00" * 20)))
    assert not result.reachable and "protocol 9" in result.detail


# =============================================================================================
# Redis
# =============================================================================================


def test_redis_pong_then_info_gives_the_version() -> None:
    info = b"# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone\r\n"
    stream = FakeStream(b"+PONG\r\n", b"$%d\r\n" % len(info) + info + b"\r\n")
    result = probe_redis(sock=stream)
    assert (result.reachable, result.version) == (True, "7.2.4")
    assert bytes(stream.sent) == b"PING\r\nINFO server\r\n"


def test_redis_noauth_is_reachable_and_asks_nothing_more() -> None:
    stream = FakeStream(b"-NOAUTH Authentication required.\r\n")
    result = probe_redis(sock=stream)
    assert (result.reachable, result.version) == (True, None)
    assert "NOAUTH" in result.detail
    assert bytes(stream.sent) == b"PING\r\n"


def test_redis_protected_mode_refusal_is_reachable() -> None:
    result = probe_redis(sock=FakeStream(b"-DENIED Redis is running in protected mode\r\n"))
    assert result.reachable and "protected mode" in result.detail


# =============================================================================================
# MongoDB
# =============================================================================================


def test_mongodb_hello_is_an_op_msg_on_admin() -> None:
    stream = FakeStream(op_msg(hello_reply_document(21), 1))
    probe_mongodb(sock=stream)
    sent = bytes(stream.sent)
    length, _, response_to, opcode = struct.unpack("<iiii", sent[:16])
    assert (length, response_to, opcode) == (len(sent), 0, 2013)
    assert sent[16:21] == b"\x00\x00\x00\x00\x00"  # no flags, a body section
    assert decode_bson(sent[21:]) == {"hello": 1, "$db": "admin"}


def test_mongodb_hello_reply_gives_max_wire_version_and_release_series() -> None:
    result = probe_mongodb(sock=FakeStream(op_msg(hello_reply_document(21), 1)))
    assert (result.reachable, result.kind, result.version) == (True, "mongodb", "7.0")
    assert "maxWireVersion 21" in result.detail and "primary" in result.detail


def test_an_old_mongodb_without_hello_is_asked_is_master() -> None:
    not_found = bson_doc(bson_element(0x01, "ok", struct.pack("<d", 0.0)),
                         bson_element(0x02, "errmsg", bson_str("no such command: 'hello'")),
                         bson_element(0x10, "code", struct.pack("<i", 59)))
    is_master = bson_doc(bson_element(0x08, "ismaster", b"\x01"),
                         bson_element(0x10, "maxWireVersion", struct.pack("<i", 8)),
                         bson_element(0x01, "ok", struct.pack("<d", 1.0)))
    stream = FakeStream(op_msg(not_found, 1), op_msg(is_master, 2))
    result = probe_mongodb(sock=stream)
    assert (result.reachable, result.version) == (True, "4.2")
    assert "isMaster" in result.detail


def test_a_mongodb_reply_to_another_request_is_not_trusted() -> None:
    result = probe_mongodb(sock=FakeStream(op_msg(hello_reply_document(21), 77)))
    assert not result.reachable and "request 77" in result.detail


# =============================================================================================
# failures, for every probe
# =============================================================================================

ALL_PROBES = [probe_postgresql, probe_mysql, probe_redis, probe_mongodb]


@pytest.mark.parametrize("probe_fn", ALL_PROBES)
def test_an_http_server_is_not_a_database(probe_fn) -> None:  # type: ignore[no-untyped-def]
    result = probe_fn(sock=FakeStream(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
    assert result.reachable is False
    assert "answered, but not in the" in result.detail


@pytest.mark.parametrize("probe_fn", ALL_PROBES)
def test_a_peer_that_closes_at_once_is_not_reachable(probe_fn) -> None:  # type: ignore[no-untyped-def]
    result = probe_fn(sock=FakeStream())
    assert result.reachable is False and "closed the connection after 0 bytes" in result.detail


@pytest.mark.parametrize("probe_fn", ALL_PROBES)
def test_a_silent_peer_is_a_timeout(probe_fn) -> None:  # type: ignore[no-untyped-def]
    result = probe_fn(sock=FakeStream(TIMEOUT))
    assert result.reachable is False and "sent no answer within" in result.detail


@pytest.mark.parametrize("probe_fn", ALL_PROBES)
def test_a_stream_that_raises_its_own_error_type_is_a_verdict_not_a_crash(probe_fn) -> None:  # type: ignore[no-untyped-def]
    class ChannelClosed(Exception):
        pass

    class Broken(FakeStream):
        def recv(self, size: int) -> bytes:
            raise ChannelClosed("SSH channel closed")

    result = probe_fn(sock=Broken())
    assert result.reachable is False and "ChannelClosed: SSH channel closed" in result.detail


@pytest.mark.parametrize("probe_fn", ALL_PROBES)
def test_a_probe_without_a_target_or_stream_is_a_usage_error(probe_fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError):
        probe_fn()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_PROBES), st.lists(st.binary(min_size=1, max_size=64), max_size=6))
@example(probe_redis, [b"+PONG\r\n", b"$99999999999\r\n"])
@example(probe_postgresql, [b"R\x00\x00\x00\x04"])
@example(probe_mongodb, [b"\x1a\x00\x00\x00" + b"\x00" * 8 + b"\xdd\x07\x00\x00" + b"\x00" * 10])
def test_no_answer_whatsoever_makes_a_probe_raise(probe_fn, chunks: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    result = probe_fn(sock=FakeStream(*chunks), timeout=1.0)
    assert isinstance(result, ProbeResult)
    assert "\n" not in result.detail and result.detail


# =============================================================================================
# dispatch
# =============================================================================================


def test_probe_dispatches_on_kind_and_passes_the_stream() -> None:
    db = DiscoveredDatabase("redis", "127.0.0.1", 6379, None, "redis-server", 1, "redis:6379")
    result = probe(db, sock=FakeStream(b"-NOAUTH Authentication required.\r\n"))
    assert (result.reachable, result.kind) == (True, "redis")


def test_probe_of_an_instance_with_nowhere_to_connect_is_unreachable() -> None:
    db = DiscoveredDatabase("mongodb", None, None, None, "mongod", None, "mongodb:?")
    result = probe(db)
    assert result.reachable is False and "no address" in result.detail


def test_probe_of_an_unknown_kind_is_a_usage_error() -> None:
    db = DiscoveredDatabase("cassandra", "127.0.0.1", 9042, None, None, None, "c")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        probe(db)


# --- versions reported by the server binaries (collect.sh section db_versions) ---------------

BINARY_VERSIONS = (
    "postgres\t/usr/lib/postgresql/16/bin/postgres\tpostgres (PostgreSQL) 16.4 (Debian 16.4-1.pgdg120+1)\n"
    "mariadbd\t/usr/sbin/mariadbd\t/usr/sbin/mariadbd  Ver 10.11.6-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64\n"
    "mysqld\t/usr/sbin/mysqld\t/usr/sbin/mysqld  Ver 8.0.36-0ubuntu0.22.04.1 for Linux on x86_64 ((Ubuntu))\n"
    "redis-server\t/usr/bin/redis-check-rdb\tredis-check-rdb 7.0.15\n"
    "mongod\t/usr/bin/mongod\tdb version v7.0.2\n"
    "sshd\t/usr/sbin/sshd\tOpenSSH_9.2p1\n"
    "a line without tabs\n"
)


def test_binary_versions_are_read_per_kind_and_normalised_like_greetings() -> None:
    from unityctl.infra.probes.databases import parse_binary_versions

    assert parse_binary_versions(BINARY_VERSIONS) == {
        "postgresql": {"16.4"}, "mariadb": {"10.11.6-MariaDB"}, "mysql": {"8.0.36"},
        "redis": {"7.0.15"}, "mongodb": {"7.0.2"},
    }


def test_two_postgresql_binaries_give_two_versions() -> None:
    from unityctl.infra.probes.databases import parse_binary_versions

    text = ("postgres\t/usr/lib/postgresql/15/bin/postgres\tpostgres (PostgreSQL) 15.20\n"
            "postgres\t/usr/lib/postgresql/16/bin/postgres\tpostgres (PostgreSQL) 16.4\n")
    assert parse_binary_versions(text) == {"postgresql": {"15.20", "16.4"}}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.sampled_from(BINARY_VERSIONS.splitlines()))
def test_binary_version_parsing_never_raises(text: str) -> None:
    from unityctl.infra.probes.databases import parse_binary_versions

    assert isinstance(parse_binary_versions(text), dict)
