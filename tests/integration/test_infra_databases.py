"""Database instances found, probed and stored, against this machine's REAL database servers.

PostgreSQL (127.0.0.1:5432), MariaDB (127.0.0.1:3306) and Redis (127.0.0.1:6379) must run; a
test whose server is down fails and says how to start it. Nothing real is ever stopped: an
unreachable instance is one discovered at a free port, and it becomes reachable when a relay
from that port to the real PostgreSQL starts. The remote probe goes through a real sshd of the
test fleet over an SSH ``direct-tcpip`` channel.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import select

from unityctl.core.db import utcnow
from unityctl.core.errors import NotFoundError, UsageError
from unityctl.core.models import Alert
from unityctl.infra import databases as dbsvc
from unityctl.infra.models import DatabaseInstance, MonitoredServer
from unityctl.infra.probes.system import CollectionReport

START_HINTS = {
    5432: "PostgreSQL: pg_ctlcluster --skip-systemctl-redirect 15 main start",
    3306: "MariaDB: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    6379: "Redis: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
}


def require_databases() -> None:
    """Fail (never skip) when one of the real servers is down, saying how to start it."""
    for port, hint in START_HINTS.items():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
        except OSError as exc:
            pytest.fail(f"nothing listens on 127.0.0.1:{port} ({exc}); start {hint}")


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def this_machine() -> CollectionReport:
    """The sockets and processes sections exactly as collect.sh captures them here."""
    return CollectionReport(sockets_raw=run("ss", "-H", "-ltnpx"),
                            processes_raw=run("ps", "-e", "-o", "pid=,comm="))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_postgres_at(port: int) -> CollectionReport:
    """A collection that shows a postgres listening on ``port`` (nothing really does)."""
    return CollectionReport(
        sockets_raw=f'tcp   LISTEN 0      244   127.0.0.1:{port}  0.0.0.0:* users:(("postgres",pid=424242,fd=5))\n',
        processes_raw="424242 postgres\n")


class Relay:
    """A TCP relay from 127.0.0.1:port to the real PostgreSQL, so that port answers as PostgreSQL."""

    def __init__(self, port: int, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                continue
            upstream = socket.create_connection(self.upstream, timeout=5)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def server(env: Any) -> Iterator[int]:
    with env.session(write=True) as s:
        row = MonitoredServer(name="db1", local=True)
        s.add(row)
        s.flush()
        server_id = row.id
    yield server_id  # type: ignore[misc]


def apply(env: Any, server_id: int, report: CollectionReport, probes: dict[str, Any]) -> None:
    with env.session(write=True) as s:
        dbsvc.apply_databases(s, server=s.get(MonitoredServer, server_id), report=report, probes=probes,
                              settings=env.settings, now=utcnow())


def instances(env: Any) -> dict[str, DatabaseInstance]:
    with env.session(write=False) as s:
        return {r.key: r for r in s.exec(select(DatabaseInstance)).all()}


def alert(env: Any, dedup: str) -> Alert | None:
    with env.session(write=False) as s:
        return s.exec(select(Alert).where(Alert.dedup_key == dedup)).first()


# --- this machine -------------------------------------------------------------------------------

def test_this_machines_postgresql_mariadb_and_redis_are_stored_with_versions_from_the_wire(
        env: Any, server: int) -> None:
    require_databases()
    report = this_machine()
    probes = dbsvc.probe_discovered(report, local=True)
    apply(env, server, report, probes)
    rows = instances(env)
    assert {"postgresql:5432", "mysql:3306", "redis:6379"} <= set(rows)
    pg, my, rd = rows["postgresql:5432"], rows["mysql:3306"], rows["redis:6379"]
    assert all(r.reachable for r in (pg, my, rd))
    # PostgreSQL names its version only after a login, and the probe never logs in: its answer
    # is the refusal of the probe's role. MariaDB's greeting and Redis' INFO carry versions.
    assert pg.version is None and 'role "unityctl_probe" does not exist' in (pg.detail or "") \
        or "asks for" in (pg.detail or "")
    assert (my.kind, my.version) == ("mariadb", run("mariadb", "-uroot", "-h127.0.0.1", "-Nse",
                                                    "select version()").split("-")[0] + "-MariaDB")
    info = run("redis-cli", "-h", "127.0.0.1", "-p", "6379", "info", "server")
    assert f"redis_version:{rd.version}" in info.splitlines()
    assert pg.socket_path == "/var/run/postgresql/.s.PGSQL.5432" and pg.process == "postgres"
    assert all(r.last_checked_at is not None and r.latency_ms is not None for r in (pg, my, rd))
    with env.session(write=False) as s:
        listed = {d["name"]: d for d in dbsvc.list_databases(s)}
    assert listed["db1/postgresql:5432"]["version"] == pg.version
    assert alert(env, f"database_unreachable:{server}:postgresql:5432") is None


def test_repeated_collections_keep_one_row_per_instance(env: Any, server: int) -> None:
    require_databases()
    report = this_machine()
    for _ in range(3):
        apply(env, server, report, dbsvc.probe_discovered(report, local=True))
    with env.session(write=False) as s:
        keys = [r.key for r in s.exec(select(DatabaseInstance)).all()]
    assert len(keys) == len(set(keys)) and "postgresql:5432" in keys


# --- unreachable and back -----------------------------------------------------------------------

def test_an_instance_on_a_closed_port_alerts_and_the_alert_resolves_once_it_answers(
        env: Any, server: int) -> None:
    require_databases()
    port = free_port()
    key = f"postgresql:{port}"
    dedup = f"database_unreachable:{server}:{key}"
    report = fake_postgres_at(port)
    probes = dbsvc.probe_discovered(report, local=True, timeout=2.0)
    assert probes[key].reachable is False and "refused" in probes[key].detail
    apply(env, server, report, probes)
    row = instances(env)[key]
    assert row.reachable is False
    raised = alert(env, dedup)
    assert raised is not None and (raised.state, raised.severity, raised.type) == \
        ("open", "warning", "database_unreachable")
    assert f"postgresql {key} on db1" in raised.message and "refused" in raised.message

    apply(env, server, report, dbsvc.probe_discovered(report, local=True, timeout=2.0))
    again = alert(env, dedup)
    assert again is not None and again.id == raised.id and again.count == 2

    relay = Relay(port)
    try:
        probes = dbsvc.probe_discovered(report, local=True)
    finally:
        relay.close()
    assert probes[key].reachable is True and probes[key].kind == "postgresql", probes[key].detail
    apply(env, server, report, probes)
    assert instances(env)[key].reachable is True
    assert alert(env, dedup).state == "resolved"  # type: ignore[union-attr]


def test_an_instance_no_longer_found_is_removed_and_its_alert_resolved(env: Any, server: int) -> None:
    port = free_port()
    key = f"postgresql:{port}"
    report = fake_postgres_at(port)
    apply(env, server, report, dbsvc.probe_discovered(report, local=True, timeout=2.0))
    assert alert(env, f"database_unreachable:{server}:{key}").state == "open"  # type: ignore[union-attr]
    empty = CollectionReport(sockets_raw="", processes_raw="")
    apply(env, server, empty, {})
    assert instances(env) == {}
    assert alert(env, f"database_unreachable:{server}:{key}").state == "resolved"  # type: ignore[union-attr]


def test_instances_are_kept_when_the_sockets_section_did_not_run(env: Any, server: int) -> None:
    port = free_port()
    report = fake_postgres_at(port)
    apply(env, server, report, dbsvc.probe_discovered(report, local=True, timeout=2.0))
    apply(env, server, CollectionReport(), {})
    assert list(instances(env)) == [f"postgresql:{port}"]


def test_testing_a_database_by_name_probes_now_and_updates_the_row(env: Any, server: int) -> None:
    require_databases()
    report = this_machine()
    apply(env, server, report, {})  # discovered, not probed yet
    assert instances(env)["redis:6379"].reachable is None
    with env.session(write=True) as s:
        result = dbsvc.test_database(s, name="db1/redis:6379")
    assert result.reachable is True and result.kind == "redis"
    row = instances(env)["redis:6379"]
    assert row.reachable is True and row.version == result.version
    with env.session(write=True) as s:
        by_id = dbsvc.test_database(s, name=str(row.id))
    assert by_id.reachable is True
    with pytest.raises(NotFoundError), env.session(write=True) as s:
        dbsvc.test_database(s, name="db1/redis:1")


# --- remote: through a real sshd ----------------------------------------------------------------

def remote_server(env: Any) -> int:
    with env.session(write=True) as s:
        row = MonitoredServer(name="remote1", local=False)
        s.add(row)
        s.flush()
        return row.id  # type: ignore[return-value]


def test_a_remote_postgresql_is_probed_through_an_ssh_direct_tcpip_channel(env: Any, sshd_fleet: Any) -> None:
    from unityctl.core.ssh import MemoryHostKeyStore, SSHExecutor

    require_databases()
    sshd = sshd_fleet.servers(1)[0]
    sshd.set_config(LogLevel="DEBUG1")  # sshd then logs each direct-tcpip request it serves
    server_id = remote_server(env)
    # The server is this machine seen through sshd: 127.0.0.1:5432 "over there" is the real one.
    report = this_machine()
    before = sshd.log_size()
    with SSHExecutor(host_keys=MemoryHostKeyStore()) as executor:
        probes = dbsvc.probe_discovered(report, local=False, executor=executor, target=sshd.target())
    pg = probes["postgresql:5432"]
    assert pg.reachable is True, pg.detail
    assert 'role "unityctl_probe" does not exist' in pg.detail or "asks for" in pg.detail
    info = run("redis-cli", "-h", "127.0.0.1", "-p", "6379", "info", "server")
    assert f"redis_version:{probes['redis:6379'].version}" in info.splitlines()
    apply(env, server_id, report, probes)
    rows = instances(env)
    assert rows["postgresql:5432"].reachable is True
    assert rows["mysql:3306"].kind == "mariadb" and rows["mysql:3306"].version
    log = sshd.log_text(before)
    assert "target 127.0.0.1 port 5432" in log, log[-2000:]


def test_a_remote_probe_is_unreachable_when_the_server_refuses_to_forward(env: Any, sshd_fleet: Any) -> None:
    from unityctl.core.ssh import MemoryHostKeyStore, SSHExecutor

    require_databases()
    sshd = sshd_fleet.servers(1)[0]
    sshd.set_config(AllowTcpForwarding="no")
    report = this_machine()
    with SSHExecutor(host_keys=MemoryHostKeyStore()) as executor:
        probes = dbsvc.probe_discovered(report, local=False, executor=executor, target=sshd.target())
    pg = probes["postgresql:5432"]
    assert pg.reachable is False and pg.detail.startswith("no SSH tunnel to 127.0.0.1:5432")


def test_a_remote_unix_socket_only_instance_is_skipped_without_an_alert(env: Any, sshd_fleet: Any) -> None:
    from unityctl.core.ssh import MemoryHostKeyStore, SSHExecutor

    sshd = sshd_fleet.servers(1)[0]
    server_id = remote_server(env)
    report = CollectionReport(
        sockets_raw='u_str LISTEN 0 80 /run/mysqld/mysqld.sock 9692 * 0 users:(("mariadbd",pid=3776,fd=22))\n',
        processes_raw="3776 mariadbd\n")
    with SSHExecutor(host_keys=MemoryHostKeyStore()) as executor:
        probes = dbsvc.probe_discovered(report, local=False, executor=executor, target=sshd.target())
    (key,) = probes
    assert probes[key].detail == dbsvc.SKIPPED_DETAIL
    apply(env, server_id, report, probes)
    row = instances(env)[key]
    assert row.reachable is None and row.detail == dbsvc.SKIPPED_DETAIL
    with env.session(write=False) as s:
        assert s.exec(select(Alert)).all() == []


def test_a_remote_probe_without_an_ssh_executor_is_a_usage_error() -> None:
    report = fake_postgres_at(5432)
    with pytest.raises(UsageError):
        dbsvc.probe_discovered(report, local=False)


def test_testing_a_remote_database_by_name_goes_through_the_ssh_connection(env: Any, sshd_fleet: Any) -> None:
    from unityctl.core.ssh import MemoryHostKeyStore, SSHExecutor

    require_databases()
    sshd = sshd_fleet.servers(1)[0]
    server_id = remote_server(env)
    apply(env, server_id, this_machine(), {})
    with SSHExecutor(host_keys=MemoryHostKeyStore()) as executor, env.session(write=True) as s:
        result = dbsvc.test_database(s, name="remote1/mysql:3306", executor=executor, target=sshd.target())
    assert result.reachable is True and result.kind == "mariadb" and result.version
    row = instances(env)["mysql:3306"]
    assert (row.reachable, row.version) == (True, result.version)
    with pytest.raises(UsageError, match="needs an SSH executor"), env.session(write=True) as s:
        dbsvc.test_database(s, name="remote1/mysql:3306")


def test_postgresqls_version_comes_from_its_binary_when_the_wire_tells_none(env: Any, server: int) -> None:
    """The full collect.sh run on this machine: PostgreSQL's probe gets no version before a
    login, so the version is the one its own binary reports (section db_versions), and it equals
    what the running server says over an authenticated session."""
    require_databases()
    from unityctl.infra.probes.system import parse_collection

    script = Path(dbsvc.__file__).parent / "probes" / "collect.sh"
    report = parse_collection(run("sh", str(script)))
    apply(env, server, report, dbsvc.probe_discovered(report, local=True))
    pg = instances(env)["postgresql:5432"]
    served = run("psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "show server_version").split()[0]
    assert pg.reachable and pg.version == served
