"""Lock-out-proof rotation against a fleet of real sshd servers (`creds keys rotate`)."""

from __future__ import annotations

from pathlib import Path

from unityctl.core.ssh import MemoryHostKeyStore, SSHExecutor, Target
from unityctl.creds import authorized_keys as ak

FOREIGN_TAIL = (
    b"# hand-made entries\r\n"
    b'no-pty  ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJvYmJvYmJvYmJvYmJvYmJvYmJvYmJvYmJvYmJvYmJv  bob \r\n'
    b"\n"
    b"garbage line \xc3\x28\n"
    b"# no final newline"
)


def _import(icli, tmp_path: Path, name: str, private_pem: str) -> None:
    path = tmp_path / f"{name}.import"
    path.write_text(private_pem)
    r = icli("creds", "keys", "import", name, str(path))
    assert r.code == 0, r.stderr


def _add(icli, server, name: str, key: str) -> None:
    r = icli("creds", "servers", "add", name, "--host", server.host, "--port", str(server.port), "--user",
             server.user, "--key", key)
    assert r.code == 0, r.stderr


def _private(icli, tmp_path: Path, name: str) -> str:
    out = tmp_path / f"{name}.export"
    out.unlink(missing_ok=True)
    r = icli("creds", "keys", "export", name, "--private", "--out", str(out))
    assert r.code == 0, r.stderr
    return out.read_text()


def _logs_in(server, private_pem: str) -> bool:
    with SSHExecutor(host_keys=MemoryHostKeyStore()) as ex:
        try:
            ex.test_login(Target(host=server.host, port=server.port, user=server.user, private_key_pem=private_pem,
                                 connect_timeout=5))
            return True
        except Exception:  # noqa: BLE001
            return False


def _fp(icli, name: str) -> str:
    return icli("creds", "keys", "show", name, "--json").json()["fingerprint"]


def _fps(server) -> set[str]:
    return ak.authorized_fingerprints(server.read_authorized_keys())


def test_rotation_with_one_server_offline_rotates_the_others_and_resume_finishes_it(icli, tmp_path, sshd_servers,
                                                                                   sshd_admin_key):
    _import(icli, tmp_path, "admin", sshd_admin_key.private_pem)
    for s in sshd_servers:
        _add(icli, s, s.name, "admin")
    icli("creds", "keys", "generate", "team")
    assert icli("creds", "keys", "deploy", "team", *[a for s in sshd_servers for a in ("--to", s.name)]).code == 0
    old_fp = _fp(icli, "team")
    old_private = _private(icli, tmp_path, "team")
    down = sshd_servers[3]
    down.stop()
    try:
        r = icli("creds", "keys", "rotate", "team", "--json")
        assert r.code == 3, r.stderr
        doc = r.json()
        by_server = {s["server"]: s for s in doc["servers"]}
        assert by_server[down.name]["status"] == "failed" and by_server[down.name]["step"] == "connect"
        assert all(by_server[s.name]["status"] == "rotated" for s in sshd_servers if s is not down)
        assert "kept the old key: " + down.name in r.stderr and "--resume" in r.stderr
        new_fp = _fp(icli, "team")
        assert new_fp != old_fp
        new_private = _private(icli, tmp_path, "team")
        for s in sshd_servers:
            if s is down:
                assert old_fp in _fps(s) and new_fp not in _fps(s)
            else:
                assert new_fp in _fps(s) and old_fp not in _fps(s)
                assert _logs_in(s, new_private) and not _logs_in(s, old_private)
        shown = icli("creds", "keys", "show", "team", "--json").json()
        assert shown["last_rotation"]["status"] == "partial"
        old_name = doc["old_key"]
        old_doc = icli("creds", "keys", "show", old_name, "--json").json()
        assert old_doc["out_of_date_on"] == [down.name]
        assert [d["rotation_id"] for d in old_doc["deployments"] if d["server"] == down.name] == [doc["rotation_id"]]
        again = icli("creds", "keys", "rotate", "team")
        assert again.code == 1 and "--resume" in again.stderr
        table = icli("creds", "keys", "rotate", "team", "--resume")
        assert table.code == 3 and down.name in table.stdout
    finally:
        down.start()
    r = icli("creds", "keys", "rotate", "team", "--resume", "--json")
    assert r.code == 0, r.stderr
    assert [s["server"] for s in r.json()["servers"]] == [down.name]
    assert r.json()["status"] == "complete"
    for s in sshd_servers:
        assert old_fp not in _fps(s) and new_fp in _fps(s)
    assert _logs_in(down, new_private) and not _logs_in(down, old_private)
    old_doc = icli("creds", "keys", "show", old_name, "--json").json()
    assert old_doc["status"] == "retired" and old_doc["replaced_by"] == "team"
    nothing = icli("creds", "keys", "rotate", "team", "--resume")
    assert nothing.code == 2 and "no unfinished rotation" in nothing.stderr
    actions = [e["action"] for e in icli("audit", "list", "--action", "creds.keys.rotate", "--json").json()]
    assert actions.count("creds.keys.rotate") == 3 and "creds.keys.rotate.start" in actions
    assert "creds.keys.rotate.resume" in actions
    assert icli("audit", "verify").code == 0


def test_the_login_key_is_switched_only_after_the_new_key_is_proven_on_that_server(icli, tmp_path, sshd_servers,
                                                                                 sshd_admin_key, ssh_keypair):
    # Every server admits ONLY the key being rotated (no admin key): a mistake locks us out for real.
    ops = ssh_keypair("ops")
    _import(icli, tmp_path, "ops", ops.private_pem)
    for s in sshd_servers:
        s.write_authorized_keys(ak.add(b"", ops.public_line, key_name="ops"))
        _add(icli, s, s.name, "ops")
        assert icli("creds", "servers", "test", s.name).code == 0
    down = sshd_servers[0]
    down.stop()
    try:
        r = icli("creds", "keys", "rotate", "ops", "--json")
        assert r.code == 3
        old_name = r.json()["old_key"]
        servers = {d["name"]: d["key"] for d in icli("creds", "servers", "list", "--json").json()}
        assert servers[down.name] == old_name
        assert all(servers[s.name] == "ops" for s in sshd_servers if s is not down)
        for s in sshd_servers[1:]:
            assert icli("creds", "servers", "test", s.name).code == 0
            assert ops.fingerprint not in _fps(s)
    finally:
        down.start()
    # The offline server still admits only the old key, and unityctl still reaches it with it.
    assert icli("creds", "servers", "test", down.name).code == 0
    assert _fps(down) == {ops.fingerprint}
    r = icli("creds", "keys", "rotate", "ops", "--resume")
    assert r.code == 0, r.stderr
    assert icli("creds", "servers", "show", down.name, "--json").json()["key"] == "ops"
    assert icli("creds", "servers", "test", down.name).code == 0
    assert ops.fingerprint not in _fps(down)
    assert not _logs_in(down, ops.private_pem)


def test_a_new_key_that_cannot_log_in_is_withdrawn_and_the_old_line_stays(icli, tmp_path, sshd_servers,
                                                                          sshd_admin_key):
    _import(icli, tmp_path, "admin", sshd_admin_key.private_pem)
    s = sshd_servers[0]
    _add(icli, s, s.name, "admin")
    icli("creds", "keys", "generate", "restricted")
    # from= a network we are not on: sshd will refuse the new key (it inherits the options).
    assert icli("creds", "keys", "deploy", "restricted", "--to", s.name, "--options", 'from="10.9.9.0/24"').code == 0
    before = s.read_authorized_keys()
    r = icli("creds", "keys", "rotate", "restricted", "--json")
    assert r.code == 3
    outcome = r.json()["servers"][0]
    assert outcome["step"] == "prove new key" and outcome["new_line_added"] and outcome["new_line_withdrawn"]
    assert "authentication failed" in outcome["error"]
    assert s.read_authorized_keys() == before


def test_foreign_lines_survive_a_rotation_byte_for_byte(icli, tmp_path, sshd_servers, sshd_admin_key):
    _import(icli, tmp_path, "admin", sshd_admin_key.private_pem)
    original = sshd_admin_key.public_line.encode() + b"\r\n" + FOREIGN_TAIL
    for s in sshd_servers:
        s.write_authorized_keys(original)
        _add(icli, s, s.name, "admin")
    icli("creds", "keys", "generate", "k")
    icli("creds", "keys", "deploy", "k", *[a for s in sshd_servers for a in ("--to", s.name)])
    assert icli("creds", "keys", "rotate", "k").code == 0
    new_fp = _fp(icli, "k")
    for s in sshd_servers:
        content = s.read_authorized_keys()
        assert [m.fingerprint for m in ak.list_managed(content)] == [new_fp]
        assert ak.remove(content, fingerprint=new_fp) == original
    assert icli("creds", "keys", "revoke", "k").code == 0
    assert all(s.read_authorized_keys() == original for s in sshd_servers)


def test_dry_run_shows_the_rotation_diff_and_changes_nothing(icli, tmp_path, sshd_servers, sshd_admin_key):
    _import(icli, tmp_path, "admin", sshd_admin_key.private_pem)
    s = sshd_servers[0]
    _add(icli, s, s.name, "admin")
    icli("creds", "keys", "generate", "k")
    icli("creds", "keys", "deploy", "k", "--to", s.name)
    fp = _fp(icli, "k")
    before = s.read_authorized_keys()
    r = icli("creds", "keys", "rotate", "k", "--dry-run")
    assert r.code == 0, r.stderr
    assert "-ssh-ed25519 " in r.stdout and "+ssh-ed25519 " in r.stdout
    assert s.read_authorized_keys() == before
    assert _fp(icli, "k") == fp
    assert [k["name"] for k in icli("creds", "keys", "list", "--json").json()] == ["admin", "k"]


def test_two_rotations_of_one_key_cannot_run_at_once(icli, tmp_path, db_url, sshd_servers, sshd_admin_key):
    from unityctl.core.db import make_engine
    from unityctl.creds.rotation import rotation_lock

    _import(icli, tmp_path, "admin", sshd_admin_key.private_pem)
    s = sshd_servers[0]
    _add(icli, s, s.name, "admin")
    icli("creds", "keys", "generate", "k")
    icli("creds", "keys", "deploy", "k", "--to", s.name)
    engine = make_engine(db_url)
    try:
        from sqlalchemy import text

        with engine.connect() as conn:
            key_id = conn.execute(text("SELECT id FROM ssh_key WHERE name = 'k'")).scalar()
        with rotation_lock(engine, key_id, "k"):
            r = icli("creds", "keys", "rotate", "k")
            assert r.code == 1 and "already running" in r.stderr
        assert icli("creds", "keys", "rotate", "k").code == 0
    finally:
        engine.dispose()
