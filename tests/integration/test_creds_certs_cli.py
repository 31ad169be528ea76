"""`unityctl creds certs ...`, `creds step-ca ...` and `creds metrics` through the real CLI (in
process), with real Pebble + certbot, a real sshd server and a local TLS server.

step-ca itself cannot run here: `step-ca set` is pointed at Pebble's directory with Pebble's
HTTPS certificate as the pinned root, which exercises the whole step-ca code path.
"""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest

from tests.integration.test_creds_certs import (
    fingerprint,
    free_port,
    key_body_lines,
    make_cert,
    pebble_root_fingerprint,
)
from tests.support.tls import tls_server

UTC = dt.timezone.utc


def pebble_args(pebble) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--acme-server", pebble.directory_url, "--http-port", str(pebble.http_port),
            "--http-address", "127.0.0.1", "--ca-bundle", str(pebble.ca_bundle)]


def ok(result):  # type: ignore[no-untyped-def]
    assert result.code == 0, (result.code, result.stdout, result.stderr)
    return result


def test_issue_list_and_show_print_json_without_the_key_or_certbot_output(icli, pebble) -> None:
    issued = ok(icli("creds", "certs", "issue", "cli.example.org", "www.cli.example.org", "--name", "web",
                     *pebble_args(pebble), "--json")).json()
    assert issued["name"] == "web" and issued["domains"] == ["cli.example.org", "www.cli.example.org"]
    listed = ok(icli("creds", "certs", "list", "--json")).json()
    assert [(d["name"], d["provider"], d["status"]) for d in listed] == [("web", "acme", "valid")]
    assert {"domains", "issuer", "not_after", "days_left", "provider", "status"} <= set(listed[0])
    shown = ok(icli("creds", "certs", "show", "web", "--json"))
    doc = shown.json()
    assert doc["serial"] == issued["serial"] and "BEGIN CERTIFICATE" in doc["certificate_pem"]
    assert "PRIVATE KEY" not in shown.stdout
    for text in (shown.stdout, shown.stderr):
        assert "certbot" not in text.lower() and "Saving debug log" not in text
    table = ok(icli("creds", "certs", "list"))
    assert "web" in table.stdout and "Pebble" in table.stdout and "acme" in table.stdout


def test_renew_by_name_gives_a_new_serial_and_renew_due_leaves_a_fresh_certificate(icli, pebble) -> None:
    ok(icli("creds", "certs", "issue", "rn.example.org", *pebble_args(pebble)))
    before = ok(icli("creds", "certs", "show", "rn.example.org", "--json")).json()["serial"]
    due = ok(icli("creds", "certs", "renew", "--due", "--json")).json()
    assert [(r["name"], r["outcome"]) for r in due] == [("rn.example.org", "not_due")]
    renewed = ok(icli("creds", "certs", "renew", "rn.example.org", "--json")).json()
    assert renewed[0]["outcome"] == "renewed" and renewed[0]["old_serial"] == before
    after = ok(icli("creds", "certs", "show", "rn.example.org", "--json")).json()["serial"]
    assert after == renewed[0]["serial"] != before


def test_renew_without_a_selector_is_a_usage_error(icli) -> None:
    result = icli("creds", "certs", "renew")
    assert result.code == 2 and "NAME, --due or --all" in result.stderr


def test_revoke_then_list_shows_it_revoked(icli, pebble) -> None:
    ok(icli("creds", "certs", "issue", "rvk.example.org", *pebble_args(pebble)))
    ok(icli("creds", "certs", "revoke", "rvk.example.org"))
    [doc] = ok(icli("creds", "certs", "list", "--json")).json()
    assert doc["status"] == "revoked"
    again = icli("creds", "certs", "revoke", "rvk.example.org")
    assert again.code != 0 and "already revoked" in again.stderr


def test_import_with_a_mismatching_key_fails_clearly_and_stores_nothing(icli, tmp_path) -> None:
    pem, _ = make_cert("mm.example.org")
    _, other = make_cert("other.example.org")
    (tmp_path / "c.pem").write_text(pem)
    (tmp_path / "k.pem").write_text(other)
    result = icli("creds", "certs", "import", tmp_path / "c.pem", tmp_path / "k.pem")
    assert result.code == 1
    assert "the private key does not match the certificate" in result.stderr
    assert "\n" not in result.stderr.strip() and "Traceback" not in result.stderr
    for line in key_body_lines(other):
        assert line not in result.stderr
    assert ok(icli("creds", "certs", "list", "--json")).json() == []


def test_import_then_show_json_never_contains_the_key(icli, tmp_path) -> None:
    pem, key = make_cert("imp.example.org")
    (tmp_path / "c.pem").write_text(pem)
    (tmp_path / "k.pem").write_text(key)
    ok(icli("creds", "certs", "import", tmp_path / "c.pem", tmp_path / "k.pem", "--name", "imp"))
    for args in (("show", "imp", "--json"), ("list", "--json"), ("show", "imp")):
        out = ok(icli("creds", "certs", *args)).stdout
        for line in key_body_lines(key):
            assert line not in out


def test_check_exits_4_while_an_endpoint_serves_the_old_certificate_and_0_once_reloaded(
    icli, pebble, tmp_path
) -> None:
    port = free_port()
    ok(icli("creds", "certs", "issue", "chk.example.org", "--endpoint", f"127.0.0.1:{port}",
            *pebble_args(pebble)))
    # The certificate as it was when the "web server" loaded it: read back through the database.
    old = _stored(icli, "chk.example.org")
    ok(icli("creds", "certs", "renew", "chk.example.org"))
    new = _stored(icli, "chk.example.org")
    with tls_server(tmp_path / "old", *old, port=port):
        result = icli("creds", "certs", "check", "--days", "0", "--json")
    assert result.code == 4, result.stderr
    [item] = result.json()
    assert item["status"] == "stale"
    assert f"stale: serving {fingerprint(old[0])}, stored {fingerprint(new[0])}" in item["detail"]
    with tls_server(tmp_path / "new", *new, port=port):
        result = icli("creds", "certs", "check", "--days", "0")
    assert result.code == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


def _stored(icli, name: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(full chain, key) of a stored certificate, read through the services (test only)."""
    from unityctl.core import config
    from unityctl.core.db import make_engine, session_scope
    from unityctl.core.secrets import load_keyring
    from unityctl.creds import certificates

    settings = config.load(environ=dict(os.environ))
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as s:
            keyring = load_keyring(s, settings)
            cert = certificates.get(s, name)
            return cert.cert_pem + cert.chain_pem, certificates.private_key(s, keyring, cert)
    finally:
        engine.dispose()


def test_check_exits_4_when_a_certificate_expires_within_the_window(icli, tmp_path) -> None:
    pem, key = make_cert("soon.example.org", not_after=dt.datetime.now(UTC) + dt.timedelta(days=5))
    (tmp_path / "c.pem").write_text(pem)
    (tmp_path / "k.pem").write_text(key)
    ok(icli("creds", "certs", "import", tmp_path / "c.pem", tmp_path / "k.pem"))
    assert icli("creds", "certs", "check", "--days", "3").code == 0
    result = icli("creds", "certs", "check", "--days", "7")
    assert result.code == 4 and "expiring" in result.stdout


def test_expiry_command_raises_the_alert_and_reports_a_summary(icli, tmp_path) -> None:
    pem, key = make_cert("exp.example.org", not_after=dt.datetime.now(UTC) + dt.timedelta(days=10))
    (tmp_path / "c.pem").write_text(pem)
    (tmp_path / "k.pem").write_text(key)
    ok(icli("creds", "certs", "import", tmp_path / "c.pem", tmp_path / "k.pem"))
    summary = ok(icli("creds", "certs", "expiry", "--json")).json()
    assert summary["raised"] == 1 and summary["items"][0]["severity"] == "warning"
    alerts = ok(icli("alerts", "list", "--type", "certificate_expiring", "--json")).json()
    assert len(alerts) == 1 and alerts[0]["severity"] == "warning"


# --- deploy ----------------------------------------------------------------------------------------


@pytest.fixture
def web1(icli, sshd_fleet, sshd_admin_key, tmp_path):  # type: ignore[no-untyped-def]
    """A real sshd server registered as "web1" through the CLI, with ~/tls ready."""
    server = sshd_fleet.servers(1)[0]
    key_file = tmp_path / "admin_key"
    key_file.write_text(sshd_admin_key.private_pem)
    key_file.chmod(0o600)
    ok(icli("creds", "keys", "import", "admin", key_file))
    ok(icli("creds", "servers", "add", "web1", "--host", server.host, "--port", str(server.port),
            "--user", server.user, "--key", "admin"))
    tls = server.home / "tls"
    tls.mkdir()
    os.chown(tls, *server._uid_gid())
    return server


def test_deploy_installs_the_files_and_runs_the_reload_command(icli, pebble, web1) -> None:
    ok(icli("creds", "certs", "issue", "dpl.example.org", *pebble_args(pebble)))
    tls = web1.home / "tls"
    result = ok(icli("creds", "certs", "deploy", "dpl.example.org", "--to", "web1",
                     "--cert-path", tls / "fullchain.pem", "--key-path", tls / "privkey.pem",
                     "--reload", f"touch {tls}/reloaded", "--json"))
    assert result.json() == [{"server": "web1", "status": "deployed", "cert_path": str(tls / "fullchain.pem"),
                              "key_path": str(tls / "privkey.pem"), "reloaded": True, "error": None}]
    fullchain, key = _stored(icli, "dpl.example.org")
    assert (tls / "fullchain.pem").read_text() == fullchain
    assert (tls / "privkey.pem").read_text() == key
    assert stat.S_IMODE((tls / "privkey.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tls / "fullchain.pem").stat().st_mode) == 0o644
    assert (tls / "reloaded").exists()
    for line in key_body_lines(key):
        assert line not in result.stdout + result.stderr
    shown = ok(icli("creds", "certs", "show", "dpl.example.org", "--json")).json()
    assert shown["deployments"][0]["server"] == "web1" and shown["deployments"][0]["status"] == "deployed"


def test_a_failing_reload_exits_non_zero_and_raises_the_reload_alert(icli, pebble, web1) -> None:
    ok(icli("creds", "certs", "issue", "bad.example.org", *pebble_args(pebble)))
    tls = web1.home / "tls"
    result = icli("creds", "certs", "deploy", "bad.example.org", "--to", "web1",
                  "--cert-path", tls / "c.pem", "--key-path", tls / "k.pem", "--reload", "false")
    assert result.code == 1, (result.stdout, result.stderr)
    assert "reload command exited with status 1" in result.stderr
    assert "reload_failed" in result.stdout
    assert (tls / "c.pem").exists()
    alerts = ok(icli("alerts", "list", "--type", "certificate_reload_failed", "--json")).json()
    assert len(alerts) == 1 and "bad.example.org" in alerts[0]["message"]
    shown = ok(icli("creds", "certs", "show", "bad.example.org", "--json")).json()
    assert shown["deployments"][0]["status"] == "reload_failed"


# --- step-ca ---------------------------------------------------------------------------------------


def test_step_ca_set_with_a_wrong_root_fingerprint_fails_clearly(icli, pebble) -> None:
    result = icli("creds", "step-ca", "set", "--url", "https://ca.example.org:9000",
                  "--root-fingerprint", "cd" * 32, "--root-file", pebble.ca_bundle)
    assert result.code == 1
    assert "root fingerprint mismatch" in result.stderr and "refusing to trust it" in result.stderr
    assert icli("creds", "step-ca", "show").code == 1


def test_step_ca_set_with_a_malformed_fingerprint_is_a_usage_error(icli, pebble) -> None:
    result = icli("creds", "step-ca", "set", "--url", "https://ca.example.org", "--root-fingerprint", "abc",
                  "--root-file", pebble.ca_bundle)
    assert result.code == 2 and "64 hexadecimal digits" in result.stderr


def test_issue_with_provider_step_ca_uses_the_configured_directory_and_pinned_root(icli, pebble) -> None:
    fp = pebble_root_fingerprint(pebble)
    ok(icli("creds", "step-ca", "set", "--url", pebble.directory_url, "--root-fingerprint", fp,
            "--root-file", pebble.ca_bundle, "--provisioner", "acme"))
    shown = ok(icli("creds", "step-ca", "show", "--json")).json()
    assert shown["root_fingerprint"] == fp and shown["directory_url"] == pebble.directory_url
    doc = ok(icli("creds", "certs", "issue", "stepca.example.org", "--provider", "step-ca",
                  "--http-port", str(pebble.http_port), "--http-address", "127.0.0.1", "--json")).json()
    assert doc["provider"] == "step-ca" and doc["acme_server"] == pebble.directory_url


# --- metrics and audit -----------------------------------------------------------------------------


def test_metrics_count_certificates_by_days_left_in_json_and_prometheus(icli, tmp_path) -> None:
    now = dt.datetime.now(UTC)
    for cn, days in (("a.example.org", 3), ("b.example.org", 20), ("c.example.org", 200)):
        pem, key = make_cert(cn, not_after=now + dt.timedelta(days=days))
        (tmp_path / f"{cn}.pem").write_text(pem)
        (tmp_path / f"{cn}.key").write_text(key)
        ok(icli("creds", "certs", "import", tmp_path / f"{cn}.pem", tmp_path / f"{cn}.key"))
    ok(icli("creds", "keys", "generate", "k1"))
    doc = ok(icli("creds", "metrics", "--json")).json()
    assert doc["certificates_by_days_left"] == {"expired": 0, "0-7": 1, "7-14": 0, "14-30": 1,
                                                "30-90": 0, "90+": 1}
    assert doc["ssh_keys_by_type"] == {"ed25519": 1} and doc["unused_keys"] == 1
    prom = ok(icli("creds", "metrics", "--format", "prometheus")).stdout
    assert "# TYPE unityctl_creds_certificates gauge" in prom
    assert 'unityctl_creds_certificates{days_left="0-7"} 1' in prom
    assert 'unityctl_creds_ssh_keys{type="ed25519"} 1' in prom


def test_every_certificate_mutation_is_in_the_audit_log_and_the_chain_verifies(icli, pebble, tmp_path) -> None:
    ok(icli("creds", "certs", "issue", "aud.example.org", *pebble_args(pebble)))
    ok(icli("creds", "certs", "renew", "aud.example.org"))
    ok(icli("creds", "certs", "revoke", "aud.example.org"))
    pem, key = make_cert("audimp.example.org")
    (tmp_path / "c.pem").write_text(pem)
    (tmp_path / "k.pem").write_text(key)
    ok(icli("creds", "certs", "import", tmp_path / "c.pem", tmp_path / "k.pem"))
    ok(icli("creds", "step-ca", "set", "--url", pebble.directory_url,
            "--root-fingerprint", pebble_root_fingerprint(pebble), "--root-file", pebble.ca_bundle))
    rows = ok(icli("audit", "list", "--action", "creds", "--json")).json()
    actions = [(r["action"], r["object_id"]) for r in rows]
    for expected in [("creds.certs.issue", "aud.example.org"), ("creds.certs.renew", "aud.example.org"),
                     ("creds.certs.revoke", "aud.example.org"), ("creds.certs.import", "audimp.example.org"),
                     ("creds.stepca.set", "default")]:
        assert expected in actions
    ok(icli("audit", "verify"))
