"""Parsing of the collector's ``sockets`` and ``processes`` sections (ss, /proc/net, ps, /proc/*/comm)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unityctl.infra.probes.sockets import Listener, Process, parse_processes, parse_sockets

pytestmark = pytest.mark.backend_independent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sockets"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


SOCKET_FIXTURES = ["ss_this_machine.txt", "ss_no_process_info.txt", "ss_two_postgres.txt",
                   "ss_ipv6.txt", "proc_net.txt"]
PROCESS_FIXTURES = ["ps_this_machine.txt", "ps_no_process_info.txt", "proc_comm.txt"]


# --- ss -H -ltnpx -------------------------------------------------------------------------------


def test_the_real_ss_capture_of_this_machine_parses_every_line_without_notes() -> None:
    text = fixture("ss_this_machine.txt")
    report = parse_sockets(text)
    assert report.notes == []
    assert len(report.listeners) == len([line for line in text.splitlines() if line.strip()])
    assert Listener("unix", None, None, "/var/run/postgresql/.s.PGSQL.5432", "postgres", 2190) \
        in report.listeners
    assert Listener("tcp", "127.0.0.1", 3306, None, "mariadbd", 3776) in report.listeners
    assert Listener("tcp", "::1", 6379, None, "redis-server", 2210) in report.listeners


def test_a_tcp_listener_without_users_column_has_no_process() -> None:
    (line,) = [l for l in fixture("ss_this_machine.txt").splitlines() if "0.0.0.0:2024" in l]
    (listener,) = parse_sockets(line).listeners
    assert (listener.proto, listener.address, listener.port) == ("tcp", "0.0.0.0", 2024)
    assert (listener.process, listener.pid) == (None, None)


def test_ss_without_root_gives_listeners_without_owners() -> None:
    report = parse_sockets(fixture("ss_no_process_info.txt"))
    assert report.notes == []
    assert len(report.listeners) == 12
    assert all(l.process is None and l.pid is None for l in report.listeners)
    paths = {l.path for l in report.listeners if l.proto == "unix"}
    assert "/run/redis/redis-server.sock" in paths
    assert "@/tmp/.X11-unix/X0" in paths  # abstract sockets keep their @ marker


def test_an_interface_suffix_is_not_part_of_the_address() -> None:
    report = parse_sockets(fixture("ss_no_process_info.txt"))
    assert Listener("tcp", "127.0.0.53", 53, None, None, None) in report.listeners
    assert Listener("tcp", "::", 5432, None, None, None) in report.listeners


def test_ipv6_addresses_lose_their_brackets_and_scope() -> None:
    listeners = parse_sockets(fixture("ss_ipv6.txt")).listeners
    by_port = {l.port: l for l in listeners if l.proto == "tcp"}
    assert by_port[5432].address == "::"
    assert by_port[3306].address == "*"  # ss's dual-stack wildcard
    assert by_port[27017].address == "2001:db8::10"
    assert by_port[6380].address == "fe80::1"
    assert by_port[8080].address == "::ffff:127.0.0.1"


def test_several_owners_of_one_socket_report_the_lowest_pid() -> None:
    listeners = parse_sockets(fixture("ss_ipv6.txt")).listeners
    (nginx,) = [l for l in listeners if l.port == 8080]
    assert (nginx.process, nginx.pid) == ("nginx", 1300)


def test_a_process_name_with_spaces_and_quotes_survives() -> None:
    line = 'tcp LISTEN 0 5 127.0.0.1:7000 0.0.0.0:* users:(("tmux: \\"a\\" b",pid=42,fd=3))'
    (listener,) = parse_sockets(line).listeners
    assert (listener.process, listener.pid, listener.port) == ('tmux: "a" b', 42, 7000)


def test_a_unix_socket_path_with_spaces_is_kept_whole() -> None:
    line = 'u_str LISTEN 0 5 /run/my app/db.sock 1234 * 0 users:(("x",pid=1,fd=3))'
    (listener,) = parse_sockets(line).listeners
    assert listener.path == "/run/my app/db.sock"


def test_ss_output_without_the_netid_column_is_understood() -> None:
    text = ("LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:((\"sshd\",pid=640,fd=3))\n"
            "LISTEN 0 244 /var/run/postgresql/.s.PGSQL.5432 5429 * 0\n")
    report = parse_sockets(text)
    assert report.notes == []
    assert [l.proto for l in report.listeners] == ["tcp", "unix"]
    assert report.listeners[1].path == "/var/run/postgresql/.s.PGSQL.5432"


def test_a_header_line_from_ss_without_h_is_skipped_silently() -> None:
    text = "Netid State Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n" \
           "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"
    report = parse_sockets(text)
    assert report.notes == []
    assert len(report.listeners) == 1


def test_garbage_lines_become_notes_and_the_rest_still_parses() -> None:
    text = ("this is not ss\n"
            "tcp LISTEN 0 128 0.0.0.0:99999 0.0.0.0:*\n"
            "tcp LISTEN zero 128 0.0.0.0:22 0.0.0.0:*\n"
            + fixture("ss_two_postgres.txt"))
    report = parse_sockets(text)
    assert len(report.notes) == 3
    assert report.notes[0].startswith("line 1:")
    assert len(report.listeners) == 7


def test_unnamed_unix_sockets_are_not_listeners_one_can_connect_to() -> None:
    assert parse_sockets("u_str LISTEN 0 5 * 1234 * 0").listeners == []


# --- /proc/net ----------------------------------------------------------------------------------


def test_proc_net_tcp_keeps_only_listening_sockets_and_decodes_addresses() -> None:
    report = parse_sockets(fixture("proc_net.txt"))
    assert report.notes == []
    tcp = [(l.address, l.port) for l in report.listeners if l.proto == "tcp"]
    assert tcp == [("0.0.0.0", 5432), ("127.0.0.1", 5433), ("127.0.0.1", 6379), ("0.0.0.0", 22),
                   ("::", 5432), ("::", 3306), ("::1", 6379)]


def test_proc_net_unix_keeps_only_named_sockets_that_called_listen() -> None:
    report = parse_sockets(fixture("proc_net.txt"))
    paths = [l.path for l in report.listeners if l.proto == "unix"]
    assert paths == ["/var/run/postgresql/.s.PGSQL.5432", "/var/run/postgresql/.s.PGSQL.5433",
                     "/run/mysqld/mysqld.sock", "/run/systemd/private", "/run/udev/control",
                     "@/tmp/.X11-unix/X0"]


def test_proc_net_lines_are_recognised_without_their_marker_lines() -> None:
    text = "\n".join(line for line in fixture("proc_net.txt").splitlines()
                     if not line.startswith("#"))
    assert parse_sockets(text) == parse_sockets(fixture("proc_net.txt"))


# --- processes ----------------------------------------------------------------------------------


def test_ps_output_gives_pid_and_comm() -> None:
    processes = parse_processes(fixture("ps_this_machine.txt"))
    assert len(processes) == len(fixture("ps_this_machine.txt").splitlines())
    assert Process(2190, "postgres") in processes
    assert Process(3776, "mariadbd") in processes
    assert Process(2210, "redis-server") in processes


def test_proc_comm_lines_in_both_shapes_are_understood() -> None:
    processes = parse_processes(fixture("proc_comm.txt"))
    assert processes == [Process(1, "systemd"), Process(702, "postgres"), Process(715, "postgres"),
                         Process(811, "mysqld"), Process(902, "redis-server"),
                         Process(1201, "tmux: server"), Process(1305, "mongod"),
                         Process(1400, "(sd-pam)")]


def test_a_ps_header_and_garbage_are_skipped() -> None:
    assert parse_processes("  PID COMMAND\nhello\n 12 \n²3 x\n 7 sshd\n") == [Process(7, "sshd")]


def test_parsers_given_something_that_is_not_text_return_empty_results() -> None:
    report = parse_sockets(None)  # type: ignore[arg-type]
    assert report.listeners == [] and len(report.notes) == 1
    assert parse_processes(b"1 init") == []  # type: ignore[arg-type]


# --- fuzz: the parsers never raise ----------------------------------------------------------------

_SOCKET_LINES = sorted({line for name in SOCKET_FIXTURES for line in fixture(name).splitlines()})
_PROCESS_LINES = sorted({line for name in PROCESS_FIXTURES for line in fixture(name).splitlines()})


@st.composite
def mutated_lines(draw: st.DrawFn, seeds: list[str]) -> str:
    """A fixture line cut, spliced with random text, or left whole: close to real input."""
    line = draw(st.sampled_from(seeds))
    cut = draw(st.integers(0, len(line)))
    return line[:cut] + draw(st.text(max_size=20)) + line[cut + draw(st.integers(0, 5)):]


def _well_formed(listener: Listener) -> bool:
    if listener.proto == "tcp":
        return bool(listener.address) and listener.path is None and (
            listener.port is None or 0 <= listener.port <= 65535)
    return listener.proto == "unix" and bool(listener.path) and listener.port is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(mutated_lines(_SOCKET_LINES), st.sampled_from(_SOCKET_LINES),
                          st.text()), max_size=30).map("\n".join))
@example(fixture("ss_this_machine.txt"))
@example(fixture("proc_net.txt"))
@example("tcp LISTEN 0 5 [::]:² x")
def test_parse_sockets_never_raises_and_every_listener_is_well_formed(text: str) -> None:
    report = parse_sockets(text)
    assert all(_well_formed(l) for l in report.listeners)
    assert all(isinstance(n, str) and "\n" not in n for n in report.notes)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(mutated_lines(_PROCESS_LINES), st.text()), max_size=30).map("\n".join))
@example(fixture("ps_this_machine.txt"))
def test_parse_processes_never_raises_and_pids_are_non_negative(text: str) -> None:
    for process in parse_processes(text):
        assert process.pid >= 0 and process.comm == process.comm.strip() and process.comm
