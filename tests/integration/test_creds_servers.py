"""`creds servers` against real sshd servers: logins, host key pinning (TOFU), changed keys, trust,
password logins, jump hosts, and what a wrong master key or a tampered secret does."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from unityctl.core.db import make_engine


def _import_admin(icli, tmp_path: Path, admin_key) -> None:
    path = tmp_path / "admin_key"
    path.write_text(admin_key.private_pem)
    r = icli("creds", "keys", "import", "admin", str(path))
    assert r.code == 0, r.stderr


def _add(icli, server, name=None, *extra: str, input=None):
    return icli("creds", "servers", "add", name or server.name, "--host", server.host, "--port", str(server.port),
                "--user", server.user, *extra, input=input)


def test_a_first_login_pins_the_host_key_and_records_the_pin_in_the_audit_log(icli, tmp_path, sshd_servers,
                                                                            sshd_admin_key):
    server = sshd_servers[0]
    _import_admin(icli, tmp_path, sshd_admin_key)
    assert _add(icli, server, None, "--key", "admin").code == 0
    assert icli("creds", "servers", "show", server.name, "--json").json()["host_key_fingerprint"] is None
    r = icli("creds", "servers", "test", server.name, "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert doc["remote_user"] == server.user
    assert doc["host_key_fingerprint"] == server.host_key_fingerprint
    assert doc["latency_ms"] >= 0
    shown = icli("creds", "servers", "show", server.name, "--json").json()
    assert shown["host_key_fingerprint"] == server.host_key_fingerprint and shown["last_login_at"]
    pins = icli("audit", "list", "--action", "creds.servers.pin_host_key", "--json").json()
    assert [(p["object_id"], p["details"]["fingerprint"]) for p in pins] == [(server.name,
                                                                              server.host_key_fingerprint)]
    assert icli("creds", "keys", "show", "admin", "--json").json()["last_used_at"] is not None


def test_a_changed_host_key_is_refused_until_trust_accepts_it(icli, tmp_path, sshd_servers, sshd_admin_key):
    server = sshd_servers[0]
    _import_admin(icli, tmp_path, sshd_admin_key)
    _add(icli, server, None, "--key", "admin")
    assert icli("creds", "servers", "test", server.name).code == 0
    old = server.host_key_fingerprint
    new = server.regenerate_host_key()
    refused = icli("creds", "servers", "test", server.name)
    assert refused.code == 1
    assert "changed" in refused.stderr and old in refused.stderr and new in refused.stderr
    assert "creds servers trust" in refused.stderr
    icli("creds", "keys", "generate", "k")
    deploy = icli("creds", "keys", "deploy", "k", "--to", server.name)
    assert deploy.code == 3 and "changed" in deploy.stdout + deploy.stderr
    assert b"unityctl:k:" not in server.read_authorized_keys()
    wrong = icli("creds", "servers", "trust", server.name, "--fingerprint", old)
    assert wrong.code == 1 and "nothing was changed" in wrong.stderr
    assert icli("creds", "servers", "test", server.name).code == 1
    r = icli("creds", "servers", "trust", server.name, "--fingerprint", new, "--json")
    assert r.code == 0, r.stderr
    assert r.json()["old_fingerprint"] == old and r.json()["new_fingerprint"] == new
    assert icli("creds", "servers", "test", server.name).code == 0
    assert icli("creds", "keys", "deploy", "k", "--to", server.name).code == 0
    trusted = icli("audit", "list", "--action", "creds.servers.trust", "--json").json()
    assert trusted[-1]["details"]["new_fingerprint"] == new
    assert icli("audit", "verify").code == 0


def test_a_password_login_works_and_the_password_is_stored_encrypted_only(icli, db_url, sshd_servers):
    server = sshd_servers[1]
    r = _add(icli, server, "pw", "--password-stdin", input=server.password + "\n")
    assert r.code == 0, r.stderr
    assert icli("creds", "servers", "test", "pw").code == 0
    engine = make_engine(db_url)
    with engine.connect() as conn:
        dump = " ".join(str(row) for row in conn.execute(text("SELECT * FROM server_credential")).all())
        secret = conn.execute(text("SELECT ciphertext FROM secret WHERE owner_type = 'server_credential'")).scalar()
    engine.dispose()
    assert server.password not in dump and server.password.encode() not in bytes(secret)
    both = _add(icli, server, "both", "--key", "admin", "--password-stdin", input="x\n")
    assert both.code == 2


def test_a_server_behind_a_jump_host_is_reached_through_it(icli, tmp_path, sshd_servers, sshd_admin_key):
    bastion, inner = sshd_servers[0], sshd_servers[1]
    _import_admin(icli, tmp_path, sshd_admin_key)
    _add(icli, bastion, "bastion", "--key", "admin")
    assert _add(icli, inner, "inner", "--key", "admin", "--jump", "bastion").code == 0
    before = bastion.log_size()
    r = icli("creds", "servers", "test", "inner", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["remote_user"] == inner.user
    # unityctl logged in to the bastion first (the inner server was reached through it).
    assert "Accepted" in bastion.log_text(before)
    assert icli("creds", "servers", "show", "bastion", "--json").json()["host_key_fingerprint"]
    refused = icli("creds", "servers", "remove", "bastion")
    assert refused.code == 1 and "jump host" in refused.stderr


def test_removing_a_server_with_deployed_keys_needs_force(icli, tmp_path, sshd_servers, sshd_admin_key):
    server = sshd_servers[0]
    _import_admin(icli, tmp_path, sshd_admin_key)
    _add(icli, server, None, "--key", "admin")
    icli("creds", "keys", "generate", "k")
    assert icli("creds", "keys", "deploy", "k", "--to", server.name).code == 0
    refused = icli("creds", "servers", "remove", server.name)
    assert refused.code == 1 and "deployed" in refused.stderr
    assert icli("creds", "servers", "remove", server.name, "--force").code == 0
    assert icli("creds", "servers", "list", "--json").json() == []


def test_a_wrong_master_key_gives_one_clear_error_through_the_cli(icli, home, tmp_path, sshd_servers,
                                                                 sshd_admin_key):
    from unityctl.core import crypto

    server = sshd_servers[0]
    _import_admin(icli, tmp_path, sshd_admin_key)
    _add(icli, server, None, "--key", "admin")
    key_file = Path(icli("config", "show", "--json").json()["master_key"]["file"])
    key_file.unlink()
    crypto.write_key_file(key_file, crypto.generate_master_key())
    r = icli("creds", "servers", "test", server.name)
    assert r.code == 1
    assert "wrong master key" in r.stderr and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


def test_a_tampered_private_key_ciphertext_gives_a_clear_error_and_no_login(icli, db_url, tmp_path, sshd_servers,
                                                                          sshd_admin_key):
    server = sshd_servers[0]
    _import_admin(icli, tmp_path, sshd_admin_key)
    _add(icli, server, None, "--key", "admin")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        row = conn.execute(text("SELECT id, ciphertext FROM secret WHERE owner_type = 'ssh_key'")).one()
        data = bytearray(row.ciphertext)
        data[len(data) // 2] ^= 0x01
        conn.execute(text("UPDATE secret SET ciphertext = :c WHERE id = :i"), {"c": bytes(data), "i": row.id})
    engine.dispose()
    before = server.log_size()
    r = icli("creds", "servers", "test", server.name)
    assert r.code == 1
    assert "failed authentication" in r.stderr and "ssh_key/" in r.stderr
    assert "Accepted" not in server.log_text(before)
    export = icli("creds", "keys", "export", "admin", "--private", "--out", str(tmp_path / "x"))
    assert export.code == 1 and "tampered" in export.stderr
    assert not (tmp_path / "x").exists()
