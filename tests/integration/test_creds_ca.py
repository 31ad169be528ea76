"""The SSH CA against a real sshd: a signed user certificate logs in; an expired one and a revoked
one are refused; a host certificate certifies the server's own host key.

How sshd is pointed at the CA: `creds ca install SERVER` writes ``~/.ssh/unityctl-ca/ca.pub`` and
``revoked.krl`` on the server over SSH (as the login user) and prints the two sshd directives.
The test sshd runs as root from a config file the fixture owns, so the test applies those
directives with ``server.set_config(TrustedUserCAKeys=..., RevokedKeys=...)`` (which restarts
sshd), exactly what an admin does with the printed lines (or `--sshd-config` + `--reload` when the
login may write /etc/ssh). sshd re-reads both files at every authentication, so a new KRL pushed
by a later `ca install` takes effect without a restart.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from unityctl.core.ssh import MemoryHostKeyStore, SSHExecutor, Target
from unityctl.creds import sshkeys


def _setup(icli, tmp_path: Path, admin_key, server) -> None:
    path = tmp_path / "admin_key"
    path.write_text(admin_key.private_pem)
    assert icli("creds", "keys", "import", "admin", str(path)).code == 0
    r = icli("creds", "servers", "add", server.name, "--host", server.host, "--port", str(server.port), "--user",
             server.user, "--key", "admin")
    assert r.code == 0, r.stderr


def _install_and_trust(icli, server) -> dict:
    r = icli("creds", "ca", "install", server.name, "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    server.set_config(TrustedUserCAKeys=doc["ca_path"], RevokedKeys=doc["krl_path"])
    return doc


def _private(icli, tmp_path: Path, name: str) -> str:
    out = tmp_path / f"{name}.key"
    out.unlink(missing_ok=True)
    assert icli("creds", "keys", "export", name, "--private", "--out", str(out)).code == 0
    return out.read_text()


def _login(server, private_pem: str, certificate: str | None) -> str:
    """'ok' or the error message of a fresh login offering exactly this key (and certificate)."""
    with SSHExecutor(host_keys=MemoryHostKeyStore()) as ex:
        try:
            ex.test_login(Target(host=server.host, port=server.port, user=server.user, private_key_pem=private_pem,
                                 certificate=certificate, connect_timeout=5))
            return "ok"
        except Exception as exc:  # noqa: BLE001
            return str(exc)


def test_a_user_certificate_logs_in_and_expired_or_revoked_ones_are_refused(icli, tmp_path, sshd_servers,
                                                                           sshd_admin_key):
    server = sshd_servers[0]
    _setup(icli, tmp_path, sshd_admin_key, server)
    r = icli("creds", "ca", "init", "--json")
    assert r.code == 0, r.stderr
    ca_fp = r.json()["fingerprint"]
    _install_and_trust(icli, server)
    icli("creds", "keys", "generate", "alice")
    private = _private(icli, tmp_path, "alice")
    # alice is in no authorized_keys file: only a certificate can get her in.
    assert "authentication failed" in _login(server, private, None)

    r = icli("creds", "ca", "sign-user", "alice", "--principal", server.user, "--valid", "1h", "--json")
    assert r.code == 0, r.stderr
    cert = r.json()
    assert cert["serial"] == 1 and cert["principals"] == [server.user]
    start = dt.datetime.fromisoformat(cert["valid_after"].replace("Z", "+00:00"))
    assert dt.datetime.now(dt.timezone.utc) - start >= dt.timedelta(seconds=59)  # back-dated for clock skew
    cert_file = tmp_path / "alice-cert.pub"
    cert_file.write_text(cert["certificate"] + "\n")
    listing = subprocess.run(["ssh-keygen", "-L", "-f", str(cert_file)], capture_output=True, text=True,
                             check=True).stdout
    assert "user certificate" in listing and ca_fp in listing
    before = server.log_size()
    assert _login(server, private, cert["certificate"]) == "ok"
    assert "Accepted publickey" in server.log_text(before) and "CA ED25519" in server.log_text(before)

    wrong_user = icli("creds", "ca", "sign-user", "alice", "--principal", "root", "--json").json()
    assert "authentication failed" in _login(server, private, wrong_user["certificate"])

    # Expired: issued by the service with a clock two hours back and a one-hour lifetime.
    from unityctl.core.context import AppContext
    from unityctl.creds import ca

    ctx = AppContext()
    with ctx.session(write=True) as session:
        expired = ca.sign_user(session, ctx.keyring(), key_name="alice", principals=[server.user], valid="1h",
                               now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)).certificate
    assert "authentication failed" in _login(server, private, expired)

    fresh = icli("creds", "ca", "sign-user", "alice", "--principal", server.user, "--json").json()
    assert _login(server, private, fresh["certificate"]) == "ok"
    assert icli("creds", "ca", "revoke", str(fresh["serial"])).code == 0
    assert icli("creds", "ca", "install", server.name).code == 0  # pushes the new KRL
    assert "authentication failed" in _login(server, private, fresh["certificate"])
    assert _login(server, private, cert["certificate"]) == "ok"  # serial 1 was not revoked
    assert icli("creds", "ca", "revoke", "alice").code == 0      # every certificate of the key
    assert icli("creds", "ca", "install", server.name).code == 0
    assert "authentication failed" in _login(server, private, cert["certificate"])

    shown = icli("creds", "ca", "show", "--json").json()
    states = {d["serial"]: d["state"] for d in shown["issued"]}
    assert states[fresh["serial"]] == "revoked" and states[cert["serial"]] == "revoked"
    actions = {e["action"] for e in icli("audit", "list", "--action", "creds.ca", "--json").json()}
    assert actions == {"creds.ca.init", "creds.ca.install", "creds.ca.sign_user", "creds.ca.revoke"}
    assert icli("audit", "verify").code == 0


def test_sign_host_certifies_the_servers_own_host_key(icli, tmp_path, sshd_servers, sshd_admin_key):
    server = sshd_servers[1]
    _setup(icli, tmp_path, sshd_admin_key, server)
    icli("creds", "ca", "init", "home")
    out = tmp_path / "host-cert.pub"
    r = icli("creds", "ca", "sign-host", server.name, "--out", str(out), "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert doc["type"] == "host" and doc["principals"] == [server.host, server.name]
    parsed = sshkeys.parse_public(doc["certificate"])
    assert parsed.is_certificate and parsed.fingerprint == server.host_key_fingerprint
    listing = subprocess.run(["ssh-keygen", "-L", "-f", str(out)], capture_output=True, text=True,
                             check=True).stdout
    assert "host certificate" in listing


def test_ca_commands_without_a_ca_say_how_to_create_one(icli):
    r = icli("creds", "ca", "sign-user", "nokey", "--principal", "x")
    assert r.code == 1 and "creds ca init" in r.stderr
    assert icli("creds", "ca", "init").code == 0
    assert icli("creds", "ca", "init").code == 1
