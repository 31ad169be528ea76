"""`creds keys deploy/revoke` against a fleet of real sshd servers: parallel edits, dry-run diffs,
foreign lines byte for byte, compare-and-swap conflicts, partial failures (exit 3)."""

from __future__ import annotations

import stat
from pathlib import Path

from unityctl.core.ssh import MemoryHostKeyStore, SSHExecutor, Target
from unityctl.creds import authorized_keys as ak
from unityctl.creds import distribution


def _setup(icli, tmp_path: Path, admin_key, servers) -> None:
    path = tmp_path / "admin_key"
    path.write_text(admin_key.private_pem)
    assert icli("creds", "keys", "import", "admin", str(path)).code == 0
    for s in servers:
        r = icli("creds", "servers", "add", s.name, "--host", s.host, "--port", str(s.port), "--user", s.user,
                 "--key", "admin")
        assert r.code == 0, r.stderr


def _to(servers) -> list[str]:
    return [arg for s in servers for arg in ("--to", s.name)]


def _private(icli, tmp_path: Path, name: str) -> str:
    out = tmp_path / f"{name}.key"
    out.unlink(missing_ok=True)
    assert icli("creds", "keys", "export", name, "--private", "--out", str(out)).code == 0
    return out.read_text()


def _can_login(server, private_pem: str) -> bool:
    with SSHExecutor(host_keys=MemoryHostKeyStore()) as ex:
        try:
            ex.test_login(Target(host=server.host, port=server.port, user=server.user,
                                 private_key_pem=private_pem, connect_timeout=5))
            return True
        except Exception:  # noqa: BLE001
            return False


def test_deploy_adds_a_marked_line_on_every_server_in_parallel_and_the_key_then_logs_in(icli, tmp_path,
                                                                                        sshd_servers,
                                                                                        sshd_admin_key):
    _setup(icli, tmp_path, sshd_admin_key, sshd_servers)
    icli("creds", "keys", "generate", "deploy")
    fp = icli("creds", "keys", "show", "deploy", "--json").json()["fingerprint"]
    r = icli("creds", "keys", "deploy", "deploy", *_to(sshd_servers), "--json")
    assert r.code == 0, r.stderr
    assert [d["status"] for d in r.json()] == ["deployed"] * 5
    private = _private(icli, tmp_path, "deploy")
    for s in sshd_servers:
        managed = ak.list_managed(s.read_authorized_keys())
        assert [(m.key_name, m.fingerprint) for m in managed] == [("deploy", fp)]
        assert stat.S_IMODE(s.authorized_keys.stat().st_mode) == 0o600
        assert stat.S_IMODE(s.authorized_keys.parent.stat().st_mode) == 0o700
        assert _can_login(s, private)
    again = icli("creds", "keys", "deploy", "deploy", *_to(sshd_servers), "--json")
    assert [d["status"] for d in again.json()] == ["unchanged"] * 5
    shown = icli("creds", "keys", "show", "deploy", "--json").json()
    assert shown["deployed_to"] == sorted(s.name for s in sshd_servers)


def test_dry_run_prints_the_diff_per_server_and_changes_nothing(icli, tmp_path, sshd_servers, sshd_admin_key):
    _setup(icli, tmp_path, sshd_admin_key, sshd_servers[:2])
    icli("creds", "keys", "generate", "k")
    before = [s.read_authorized_keys() for s in sshd_servers[:2]]
    r = icli("creds", "keys", "deploy", "k", *_to(sshd_servers[:2]), "--options", "no-pty,from=\"127.0.0.0/8\"",
             "--dry-run")
    assert r.code == 0, r.stderr
    assert r.stdout.count("+++ b/~/.ssh/authorized_keys") == 2
    assert '+no-pty,from="127.0.0.0/8" ssh-ed25519 ' in r.stdout and "unityctl:k:SHA256:" in r.stdout
    assert [s.read_authorized_keys() for s in sshd_servers[:2]] == before
    assert icli("creds", "keys", "show", "k", "--json").json()["deployments"] == []
    revoke = icli("creds", "keys", "revoke", "k", "--from", sshd_servers[0].name, "--dry-run", "--json")
    assert revoke.json()[0]["status"] == "unchanged"


def test_bad_options_are_refused_before_any_server_is_touched(icli, tmp_path, sshd_servers, sshd_admin_key):
    _setup(icli, tmp_path, sshd_admin_key, sshd_servers[:1])
    icli("creds", "keys", "generate", "k")
    before = sshd_servers[0].read_authorized_keys()
    r = icli("creds", "keys", "deploy", "k", "--to", sshd_servers[0].name, "--options", "no-such-option")
    assert r.code == 2 and "unknown authorized_keys option" in r.stderr
    assert sshd_servers[0].read_authorized_keys() == before


FOREIGN_TAIL = (
    b"# keys added by hand, keep them\r\n"
    b'from="10.0.0.0/8",no-pty   ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJvYmJvYmJvYmJvYmJvYmJvYmJvYmJvYmJvYmJvYmJv'
    b'   bob@laptop  \r\n'
    b"\r\n"
    b"   \t  \n"
    b"not a key at all \xff\xfe\n"
    b"\t# last line, no final newline"
)


def test_foreign_lines_survive_deploy_and_revoke_byte_for_byte(icli, tmp_path, sshd_servers, sshd_admin_key):
    _setup(icli, tmp_path, sshd_admin_key, sshd_servers)
    original = sshd_admin_key.public_line.encode() + b"\r\n" + FOREIGN_TAIL
    for s in sshd_servers:
        s.write_authorized_keys(original)
    icli("creds", "keys", "generate", "k")
    fp = icli("creds", "keys", "show", "k", "--json").json()["fingerprint"]
    assert icli("creds", "keys", "deploy", "k", *_to(sshd_servers), "--options", "no-agent-forwarding").code == 0
    for s in sshd_servers:
        content = s.read_authorized_keys()
        assert content.startswith(original[:-len(b"\t# last line, no final newline")])
        assert [m.fingerprint for m in ak.list_managed(content)] == [fp]
        assert ak.remove(content, fingerprint=fp) == original
    r = icli("creds", "keys", "revoke", "k", "--json")
    assert r.code == 0, r.stderr
    assert [d["status"] for d in r.json()] == ["removed"] * 5
    assert all(s.read_authorized_keys() == original for s in sshd_servers)
    assert icli("creds", "keys", "show", "k", "--json").json()["deployed_to"] == []


def test_a_stopped_server_fails_alone_and_the_batch_exits_3_with_a_table(icli, tmp_path, sshd_servers,
                                                                         sshd_admin_key):
    _setup(icli, tmp_path, sshd_admin_key, sshd_servers)
    icli("creds", "keys", "generate", "k")
    down = sshd_servers[2]
    down.stop()
    try:
        r = icli("creds", "keys", "deploy", "k", *_to(sshd_servers))
        assert r.code == 3
        assert "deployed on 4 of 5 server(s); failed: " + down.name in r.stderr
        assert down.name in r.stdout and "refused" in r.stdout
        entry = icli("audit", "list", "--action", "creds.keys.deploy", "--json").json()[-1]
        assert entry["outcome"] == "partial" and entry["details"]["servers"][down.name].startswith("failed")
    finally:
        down.start()
    shown = icli("creds", "keys", "show", "k", "--json").json()
    assert down.name not in shown["deployed_to"] and len(shown["deployed_to"]) == 4


def test_revoke_refuses_to_remove_the_key_unityctl_logs_in_with(icli, tmp_path, sshd_servers, sshd_admin_key):
    _setup(icli, tmp_path, sshd_admin_key, sshd_servers[:1])
    r = icli("creds", "keys", "revoke", "admin", "--from", sshd_servers[0].name)
    assert r.code == 1 and "lock unityctl out" in r.stderr


def test_delete_with_revoke_takes_the_key_off_every_server_first(icli, tmp_path, sshd_servers, sshd_admin_key):
    _setup(icli, tmp_path, sshd_admin_key, sshd_servers[:3])
    icli("creds", "keys", "generate", "k")
    icli("creds", "keys", "deploy", "k", *_to(sshd_servers[:3]))
    refused = icli("creds", "keys", "delete", "k")
    assert refused.code == 1 and "still deployed" in refused.stderr
    r = icli("creds", "keys", "delete", "k", "--revoke")
    assert r.code == 0, r.stderr
    assert all(ak.list_managed(s.read_authorized_keys()) == [] for s in sshd_servers[:3])


def test_a_concurrent_edit_between_read_and_write_is_detected_and_retried_once(sshd_servers, ssh_keypair):
    server = sshd_servers[0]
    extra = ssh_keypair("someone-else")
    mine = ssh_keypair("mine")
    calls = []

    def edit(content: bytes) -> bytes:
        calls.append(content)
        if len(calls) == 1:
            # Another tool appends a line after our read: the compare-and-swap must notice.
            server.write_authorized_keys(content + extra.public_line.encode() + b"\n")
        return ak.add(content, mine.public_line, key_name="mine")

    with SSHExecutor(host_keys=MemoryHostKeyStore()) as ex:
        result = distribution.apply_edit(ex, server.target(), edit)
    assert result.retried and result.changed and len(calls) == 2
    final = server.read_authorized_keys()
    assert extra.public_line.encode() in final
    assert [m.key_name for m in ak.list_managed(final)] == ["mine"]


def test_concurrent_deploys_of_different_keys_to_one_server_keep_both_lines(sshd_servers, ssh_keypair):
    from concurrent.futures import ThreadPoolExecutor

    server = sshd_servers[0]
    keys = [ssh_keypair(f"k{i}") for i in range(8)]

    def deploy(i: int) -> None:
        with SSHExecutor(host_keys=MemoryHostKeyStore()) as ex:
            for attempt in range(5):  # each apply retries once itself; contention may need more
                try:
                    distribution.apply_edit(ex, server.target(),
                                            lambda c: ak.add(c, keys[i].public_line, key_name=f"k{i}"))
                    return
                except Exception:  # noqa: BLE001
                    if attempt == 4:
                        raise

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(deploy, range(8)))
    names = sorted(m.key_name for m in ak.list_managed(server.read_authorized_keys()))
    assert names == sorted(f"k{i}" for i in range(8))


def test_unused_keys_are_found_from_sshd_logs_and_raise_then_clear_an_alert(icli, tmp_path, db_url, sshd_servers,
                                                                             sshd_admin_key):
    import os
    import shutil

    from sqlalchemy import text

    from unityctl.core.db import make_engine

    server = sshd_servers[0]
    _setup(icli, tmp_path, sshd_admin_key, [server])
    for name in ("used", "idle"):
        icli("creds", "keys", "generate", name)
        assert icli("creds", "keys", "deploy", name, "--to", server.name).code == 0
    # Both keys look 100 days old; only "used" then logs in.
    engine = make_engine(db_url)
    with engine.begin() as conn:
        old = "2000-01-01 00:00:00"
        conn.execute(text("UPDATE ssh_key SET created_at = :t WHERE name IN ('used', 'idle')"), {"t": old})
        conn.execute(text("UPDATE key_deployment SET deployed_at = :t"), {"t": old})
    engine.dispose()
    assert _can_login(server, _private(icli, tmp_path, "used"))
    # The test sshd logs to a root-only file; give the login user a readable copy, as logrotate's
    # "create 0640 root adm" plus group membership would on a real server.
    copy = server.home / "sshd.log"
    shutil.copyfile(server.log_path, copy)
    os.chown(copy, *server._uid_gid())
    r = icli("creds", "keys", "unused", "--days", "30", "--log-path", str(copy), "--json")
    assert r.code == 0, r.stderr
    docs = {d["key"]: d for d in r.json()}
    assert docs["used"]["unused"] is False and docs["used"]["source"] == f"sshd log on {server.name}"
    assert docs["idle"]["unused"] is True
    open_alerts = icli("alerts", "list", "--type", "unused_key", "--json").json()
    assert [a["details"]["key"] for a in open_alerts] == ["idle"]
    assert icli("creds", "keys", "show", "used", "--json").json()["last_used_at"] is not None
    assert _can_login(server, _private(icli, tmp_path, "idle"))
    shutil.copyfile(server.log_path, copy)
    icli("creds", "keys", "unused", "--days", "30", "--log-path", str(copy))
    assert icli("alerts", "list", "--type", "unused_key", "--json").json() == []


def test_sshd_log_lines_are_dated_by_iso_syslog_or_file_time():
    import datetime as dt

    from unityctl.creds.usage import parse_log

    fp = "SHA256:" + "a" * 43
    now = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
    text = "\n".join([
        "@@FILE 1700000000",
        f"2024-05-02T10:00:00+0200 host sshd[1]: Accepted publickey for u from 1.2.3.4 port 5 ssh2: ED25519 {fp}",
        f"May  3 11:00:00 host sshd[1]: Accepted publickey for u from 1.2.3.4 port 5 ssh2: RSA {fp}",
        f"Accepted publickey for u from 1.2.3.4 port 5 ssh2: ED25519-CERT {fp} ID x (serial 1) CA ED25519 SHA256:zz",
        "Failed publickey for u from 1.2.3.4",
    ])
    got = parse_log(text, now=now)
    assert [w.isoformat() for _f, w in got] == ["2024-05-02T10:00:00+02:00", "2024-05-03T11:00:00+00:00",
                                                "2023-11-14T22:13:20+00:00"]
    assert {f for f, _w in got} == {fp}


def test_other_writers_are_not_locked_out_while_a_deploy_waits_on_ssh(env, db_url, sshd_servers, sshd_admin_key):
    """A deploy can wait on slow servers for its whole connect timeout: meanwhile the daemon (an
    impatient second writer) must still be able to write, and the deploy still records its rows."""
    from sqlmodel import select

    from unityctl.creds import keys
    from unityctl.creds import servers as creds_servers
    from unityctl.creds.models import KeyDeployment
    from tests.support.writers import impatient_write

    server = sshd_servers[0]
    with env.session() as s:
        keys.import_key(s, env.keyring, name="admin", data=sshd_admin_key.private_pem.encode())
        keys.generate_key(s, env.keyring, name="new")
        creds_servers.add_server(s, env.keyring, name=server.name, host=server.host, port=server.port,
                                 user=server.user, key_name="admin")
    wrote: list[str] = []

    def write_meanwhile(name: str, _result) -> None:  # type: ignore[no-untyped-def]
        impatient_write(db_url, f"probe-{name}")
        wrote.append(name)

    with env.session(write=True) as s:
        [doc] = distribution.deploy_key(s, env.keyring, name="new", to=[server.name], on_result=write_meanwhile)
    assert doc["status"] == "deployed", doc
    assert wrote == [server.name]
    with env.session(write=False) as s:
        assert len(s.exec(select(KeyDeployment)).all()) == 1
