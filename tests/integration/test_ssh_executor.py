"""The SSH executor against a fleet of real sshd servers (tests/support/sshd.py).

Every server is a real OpenSSH daemon on its own loopback address with its own user, so what the
tests read back (files on disk, sshd's own log) is what a real server would show.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from unityctl.core.errors import HostKeyError, RemoteCommandError, SSHError, UsageError
from unityctl.core.ssh import (
    MemoryHostKeyStore,
    RunResult,
    SSHAuthenticationError,
    SSHConnectionError,
    SSHExecutor,
    SSHTimeoutError,
    Target,
    fabric_connection,
)

pytestmark = pytest.mark.usefixtures("sshd_fleet")


@pytest.fixture
def store() -> MemoryHostKeyStore:
    return MemoryHostKeyStore()


@pytest.fixture
def executor(store: MemoryHostKeyStore):
    with SSHExecutor(host_keys=store) as ex:
        yield ex


def _accepted_lines(log: str) -> list[str]:
    """sshd's "Accepted publickey for USER ..." / "Accepted password for ..." lines (one a login)."""
    return [line for line in log.splitlines() if re.match(r"Accepted \S+ for ", line)]


# --- running commands ---------------------------------------------------------------------------


def test_run_returns_stdout_stderr_and_exit_code(executor, sshd_servers):
    server = sshd_servers[0]
    result = executor.run(server.target(), "id -un; echo oops >&2; exit 3", check=False)
    assert isinstance(result, RunResult)
    assert result.stdout == f"{server.user}\n"
    assert result.stderr == "oops\n"
    assert result.exit_code == 3
    assert not result.ok
    assert result.duration_s >= 0


def test_a_failing_command_with_check_raises_with_exit_code_and_first_stderr_line(
    executor, sshd_servers
):
    server = sshd_servers[0]
    with pytest.raises(RemoteCommandError) as info:
        executor.run(server.target(), "echo first problem >&2; echo second >&2; exit 7")
    message = str(info.value)
    assert "srv01" in message and "7" in message and "first problem" in message
    assert "second" not in message
    assert info.value.result.exit_code == 7
    assert info.value.remote_exit_code == 7


def test_stdin_text_and_bytes_reach_the_remote_command(executor, sshd_servers):
    target = sshd_servers[0].target()
    assert executor.run(target, "cat", stdin="hello\nworld\n").stdout == "hello\nworld\n"
    payload = os.urandom(3 * 1024 * 1024)  # larger than the SSH windows: no deadlock
    result = executor.run(target, "sha256sum", stdin=payload)
    assert result.stdout.split()[0] == hashlib.sha256(payload).hexdigest()


def test_a_command_without_stdin_sees_end_of_file_instead_of_hanging(executor, sshd_servers):
    result = executor.run(sshd_servers[0].target(), "cat; echo done", timeout=10)
    assert result.stdout == "done\n"


def test_a_command_that_outlives_its_timeout_raises_a_timeout_error(executor, sshd_servers):
    with pytest.raises(SSHTimeoutError, match="srv01"):
        executor.run(sshd_servers[0].target(), "sleep 20", timeout=0.5)


def test_test_login_reports_the_remote_user_and_the_host_key(executor, sshd_servers):
    server = sshd_servers[2]
    info = executor.test_login(server.target())
    assert info.remote_user == server.user
    assert info.host_key_fingerprint == server.host_key_fingerprint
    assert info.latency_ms > 0 and info.connect_ms > 0


# --- host keys ----------------------------------------------------------------------------------


def test_first_contact_pins_the_host_key_once(executor, store, sshd_servers):
    server = sshd_servers[0]
    result = executor.run(server.target(), "true")
    assert result.host_key_fingerprint == server.host_key_fingerprint
    assert store.pins == [(server.host, server.port, "ssh-ed25519", server.host_key_fingerprint)]
    assert store.get(server.host, server.port).startswith("ssh-ed25519 AAAA")
    # A second executor with the same store checks the pin instead of pinning again.
    with SSHExecutor(host_keys=store) as again:
        again.run(server.target(), "true")
    assert len(store.pins) == 1


def test_a_changed_host_key_is_refused_before_login_naming_both_fingerprints(
    store, sshd_servers
):
    server = sshd_servers[1]
    with SSHExecutor(host_keys=store) as ex:
        ex.run(server.target(), "true")
    old = server.host_key_fingerprint
    new = server.regenerate_host_key()
    assert new != old
    mark = server.log_size()
    with SSHExecutor(host_keys=store) as ex, pytest.raises(HostKeyError) as info:
        ex.run(server.target(), "true")
    message = str(info.value)
    assert "\n" not in message
    assert server.name in message
    assert f"expected {old}" in message and f"presented {new}" in message
    assert f"unityctl creds servers trust {server.name}" in message
    # Refused before authentication: the server never saw a login.
    assert _accepted_lines(server.log_text(since=mark)) == []
    assert len(store.pins) == 1  # the pin was not silently replaced


def test_a_pin_stored_as_a_fingerprint_is_honoured(sshd_servers):
    server = sshd_servers[0]
    good = MemoryHostKeyStore({(server.host, server.port): server.host_key_fingerprint})
    with SSHExecutor(host_keys=good) as ex:
        assert ex.run(server.target(), "true").ok
    assert good.pins == []
    bad = MemoryHostKeyStore({(server.host, server.port): "SHA256:" + "A" * 43})
    with SSHExecutor(host_keys=bad) as ex, pytest.raises(HostKeyError):
        ex.run(server.target(), "true")


def test_fabric_connection_refuses_a_changed_host_key_instead_of_auto_adding_it(sshd_servers):
    server = sshd_servers[0]
    store = MemoryHostKeyStore({(server.host, server.port): "SHA256:" + "B" * 43})
    with fabric_connection(server.target(), host_keys=store) as conn:
        with pytest.raises(HostKeyError):
            conn.run("true", hide=True, in_stream=False)
    fresh = MemoryHostKeyStore()
    with fabric_connection(server.target(), host_keys=fresh) as conn:
        assert conn.run("id -un", hide=True, in_stream=False).stdout.strip() == server.user
    assert [pin[3] for pin in fresh.pins] == [server.host_key_fingerprint]


# --- authentication -----------------------------------------------------------------------------


def test_a_wrong_key_fails_with_a_one_line_auth_error_naming_the_server(
    executor, sshd_servers, ssh_keypair
):
    server = sshd_servers[0]
    stranger = ssh_keypair("stranger")
    with pytest.raises(SSHAuthenticationError) as info:
        executor.run(server.target(private_key_pem=stranger.private_pem), "true")
    message = str(info.value)
    assert "\n" not in message
    assert server.name in message and "authentication failed" in message
    assert server.user in message


def test_only_the_supplied_key_is_offered_never_keys_from_home_or_an_agent(
    executor, sshd_servers, ssh_keypair, sshd_admin_key, tmp_path, monkeypatch
):
    # The admin key (authorized everywhere) sits where paramiko would look by default...
    ssh_dir = tmp_path / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "id_ed25519").write_text(sshd_admin_key.private_pem)
    (ssh_dir / "id_ed25519").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    server = sshd_servers[0]
    # ...yet a target carrying another key must fail: nothing else is tried.
    with pytest.raises(SSHAuthenticationError):
        executor.run(server.target(private_key_pem=ssh_keypair("other").private_pem), "true")


def test_the_server_log_shows_which_key_logged_in(executor, sshd_servers, ssh_keypair):
    server = sshd_servers[3]
    key = ssh_keypair("deploy")
    server.write_authorized_keys(key.public_line + "\n")
    mark = server.log_size()
    executor.run(server.target(private_key_pem=key.private_pem), "true")
    accepted = _accepted_lines(server.log_text(since=mark))
    assert len(accepted) == 1 and key.fingerprint in accepted[0]


def test_password_login_works_and_a_wrong_password_is_refused(executor, sshd_servers):
    server = sshd_servers[1]
    target = server.target(private_key_pem=None, password=server.password)
    mark = server.log_size()
    assert executor.run(target, "id -un").stdout.strip() == server.user
    assert "Accepted password for " + server.user in server.log_text(since=mark)
    with pytest.raises(SSHAuthenticationError, match="srv02"):
        executor.run(dataclasses.replace(target, password="not-it"), "true")


def test_a_stopped_server_gives_a_one_line_connection_refused_error(executor, sshd_servers):
    server = sshd_servers[4]
    server.stop()
    with pytest.raises(SSHConnectionError) as info:
        executor.run(server.target(), "true")
    assert "connection refused" in str(info.value) and server.name in str(info.value)


def test_a_server_that_never_sends_a_banner_times_out(executor, blackhole_server):
    with pytest.raises(SSHTimeoutError) as info:
        executor.run(blackhole_server.target(connect_timeout=1.0), "true")
    assert "blackhole" in str(info.value)
    assert blackhole_server.accepted >= 1


# --- connection pool ----------------------------------------------------------------------------


def test_one_pooled_connection_serves_many_commands_and_threads(executor, sshd_servers):
    # More threads than sshd's MaxSessions (10), short commands racing their channel closes:
    # this once made sshd drop the shared connection ("ieof ... nonexistent channel").
    server = sshd_servers[0]
    target = server.target()
    mark = server.log_size()

    def one(i: int) -> str:
        return executor.run(target, f"echo {i}", stdin="x" if i % 2 else None).stdout

    with ThreadPoolExecutor(max_workers=16) as pool:
        outputs = list(pool.map(one, range(300)))
    assert outputs == [f"{i}\n" for i in range(300)]
    log = server.log_text(since=mark)
    assert len(_accepted_lines(log)) == 1
    assert "nonexistent channel" not in log


def test_a_pooled_connection_reconnects_after_the_server_restarts(executor, sshd_servers):
    server = sshd_servers[0]
    target = server.target()
    executor.run(target, "true")
    server.restart()
    mark = server.log_size()
    assert executor.run(target, "echo back").stdout == "back\n"
    assert len(_accepted_lines(server.log_text(since=mark))) == 1


# --- files --------------------------------------------------------------------------------------


def test_write_file_replaces_the_file_atomically_with_the_requested_mode(executor, sshd_servers):
    server = sshd_servers[0]
    path = server.home / "conf" / "app.conf"
    executor.write_file(server.target(), "conf/app.conf", "v1\n", mode=0o640, make_parents=True)
    assert path.read_text() == "v1\n"
    first = path.stat()
    assert stat.S_IMODE(first.st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert first.st_uid == _uid(server)

    # A reader holding the old file keeps the old content: the new one arrived by rename(2).
    keep = server.home / "old-link"
    keep.unlink(missing_ok=True)
    os.link(path, keep)
    executor.write_file(server.target(), str(path), b"v2\x00binary\n", mode=0o600)
    assert path.read_bytes() == b"v2\x00binary\n"
    assert keep.read_text() == "v1\n"
    assert path.stat().st_ino != first.st_ino
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".unityctl-tmp")] == []


def test_write_file_into_a_missing_directory_fails_and_leaves_nothing(executor, sshd_servers):
    server = sshd_servers[0]
    with pytest.raises(RemoteCommandError, match="srv01"):
        executor.write_file(server.target(), "no/such/dir/file", "x")
    assert not (server.home / "no").exists()


def _uid(server) -> int:
    import pwd

    return pwd.getpwnam(server.user).pw_uid


# --- many servers -------------------------------------------------------------------------------


def test_run_many_gives_each_server_its_own_result_despite_a_dead_and_a_hanging_one(
    executor, sshd_servers, blackhole_server
):
    stopped = sshd_servers[1]
    stopped.stop()
    targets = [s.target() for s in sshd_servers] + [blackhole_server.target(connect_timeout=2.0)]
    seen: list[str] = []
    results = executor.run_many(
        targets, "id -un", max_parallel=8, on_result=lambda name, _r: seen.append(name)
    )
    assert list(results) == [t.label for t in targets]
    assert sorted(seen) == sorted(results)
    for server in sshd_servers:
        if server is stopped:
            assert isinstance(results[server.name], SSHConnectionError)
        else:
            assert isinstance(results[server.name], RunResult)
            assert results[server.name].stdout.strip() == server.user
    assert isinstance(results["blackhole"], SSHTimeoutError)


def test_run_many_accepts_a_callable_for_per_server_work(executor, sshd_servers):
    def work(ex: SSHExecutor, target: Target) -> str:
        ex.write_file(target, "marker", target.label)
        return ex.run(target, "cat marker").stdout

    results = executor.run_many([s.target() for s in sshd_servers], work)
    assert results == {s.name: s.name for s in sshd_servers}
    assert (sshd_servers[4].home / "marker").read_text() == "srv05"


def test_run_many_refuses_duplicate_server_names(executor, sshd_servers):
    target = sshd_servers[0].target()
    with pytest.raises(UsageError, match="duplicate"):
        executor.run_many([target, target], "true")


# --- jump hosts ---------------------------------------------------------------------------------


def test_a_server_is_reached_through_its_jump_host(executor, store, sshd_servers):
    jump, inner = sshd_servers[0], sshd_servers[1]
    jump.set_config(LogLevel="DEBUG1")  # sshd logs direct-tcpip requests at debug level
    mark = jump.log_size()
    target = inner.target(jump=jump.target())
    result = executor.run(target, "id -un")
    assert result.stdout.strip() == inner.user
    assert result.host_key_fingerprint == inner.host_key_fingerprint
    log = jump.log_text(since=mark)
    assert f"target {inner.host} port {inner.port}" in log
    assert "direct-tcpip" in log
    assert {pin[0] for pin in store.pins} == {jump.host, inner.host}


def test_a_jump_host_that_forbids_forwarding_gives_a_connection_error(executor, sshd_servers):
    jump, inner = sshd_servers[0], sshd_servers[1]
    jump.set_config(AllowTcpForwarding="no")
    with pytest.raises(SSHConnectionError) as info:
        executor.run(inner.target(jump=jump.target()), "true")
    assert "jump host srv01" in str(info.value) and "srv02" in str(info.value)


# --- SSH certificates (TrustedUserCAKeys on the server) -----------------------------------------


def test_a_user_certificate_signed_by_a_trusted_ca_logs_in(
    executor, sshd_servers, ssh_keypair, tmp_path
):
    server = sshd_servers[2]
    ca, user_key = ssh_keypair("ca"), ssh_keypair("user")
    (tmp_path / "ca").write_text(ca.private_pem)
    (tmp_path / "ca").chmod(0o600)
    (tmp_path / "ca.pub").write_text(ca.public_line + "\n")
    (tmp_path / "user.pub").write_text(user_key.public_line + "\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "test", "-n", server.user,
         "-V", "-5m:+1h", str(tmp_path / "user.pub")],
        check=True, capture_output=True,
    )
    certificate = (tmp_path / "user-cert.pub").read_text()
    ca_file = server.dir / "trusted_ca.pub"
    ca_file.write_text(ca.public_line + "\n")
    server.set_config(TrustedUserCAKeys=str(ca_file))
    target = server.target(private_key_pem=user_key.private_pem, certificate=certificate)
    assert executor.run(target, "id -un").stdout.strip() == server.user
    # Without the certificate the bare key is not authorized.
    with pytest.raises(SSHAuthenticationError):
        executor.run(server.target(private_key_pem=user_key.private_pem, name="bare"), "true")


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_never_appear_in_reprs_messages_or_tracebacks(
    store, sshd_servers, ssh_keypair
):
    server = sshd_servers[0]
    stranger = ssh_keypair("stranger")
    secret_password = "s3cret-Passw0rd-never-shown"
    target = server.target(private_key_pem=stranger.private_pem, password=secret_password)
    key_body = stranger.private_pem.splitlines()[1]
    texts = [repr(target), str(target), repr(server.target(jump=target))]
    with SSHExecutor(host_keys=store) as ex:
        for make_error in (
            lambda: ex.run(target, "true"),  # auth failure
            lambda: ex.run(server.target(), f"echo {secret_password} >/dev/null; exit 1"),
        ):
            with pytest.raises(SSHError) as info:
                make_error()
            texts.append(str(info.value))
            texts.append("".join(traceback.format_exception(info.value)))
    server.regenerate_host_key()
    with SSHExecutor(host_keys=store) as ex, pytest.raises(HostKeyError) as info:
        ex.run(target, "true")
    texts.append("".join(traceback.format_exception(info.value)))
    for text in texts:
        assert secret_password not in text
        assert key_body not in text
        assert "PRIVATE KEY" not in text
    assert "auth=key+password" in repr(target)


def test_the_ssh_module_does_not_import_paramiko_or_fabric_at_import_time():
    code = (
        "import sys, unityctl.core.ssh; "
        "assert 'paramiko' not in sys.modules and 'fabric' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
