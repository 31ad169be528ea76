"""TLS certificate services against real components: Pebble + certbot for ACME, real sshd servers
for deploy, a local TLS server for the stale-certificate check, and the database (SQLite and
PostgreSQL) for storage, alerts and audit.

step-ca cannot run in the test environment, so the step-ca code path (StepCAConfig, pinned root
as the CA bundle, issuance and renewal through the configured directory) is exercised against
Pebble used as "a step-ca ACME endpoint": the configuration's URL is Pebble's full directory URL
and the pinned root is the self-signed certificate Pebble's HTTPS is served with.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import MetaData
from sqlalchemy import select as sa_select
from sqlmodel import select

from unityctl.core.errors import AlreadyExistsError, NotFoundError, ParseError, ProviderError, StateError
from unityctl.core.models import Alert, AuditEntry
from unityctl.creds import certificates, expiry, stepca
from unityctl.creds.models import Certificate, CertificateDeployment
from tests.support.tls import tls_server
from tests.support.writers import impatient_write

UTC = dt.timezone.utc


# --- helpers (also used by test_creds_certs_cli.py) ----------------------------------------------


def make_cert(cn: str = "gen.example.org", *, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None, key: ec.EllipticCurvePrivateKey | None = None,
              ) -> tuple[str, str]:
    """A self-signed certificate with chosen dates and its key, both PEM."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(UTC)
    not_before = not_before or now - dt.timedelta(days=1)
    not_after = not_after or now + dt.timedelta(days=90)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def key_body_lines(key_pem: str) -> list[str]:
    """The base64 lines of a PEM key (what would show up if it leaked)."""
    return [line for line in key_pem.splitlines() if line and not line.startswith("-----")]


def fingerprint(pem: str) -> str:
    return x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def acme_kwargs(pebble) -> dict:
    """Service arguments that issue from the session's Pebble (standalone http-01 on 127.0.0.1)."""
    return {"server": pebble.directory_url, "http_port": pebble.http_port, "http_address": "127.0.0.1",
            "ca_bundle_pem": Path(pebble.ca_bundle).read_text()}


def pebble_root_fingerprint(pebble) -> str:
    return fingerprint(Path(pebble.ca_bundle).read_text())


def all_rows_text(engine) -> str:  # type: ignore[no-untyped-def]
    """Every row of every table, as text: what a leaked secret would be found in."""
    meta = MetaData()
    meta.reflect(bind=engine)
    parts = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(sa_select(table)):
                parts.append(repr(tuple(row)))
                parts.extend(v.decode("latin-1") for v in row if isinstance(v, (bytes, memoryview))
                             for v in [bytes(v)])
    return "\n".join(parts)


def assert_key_not_stored_in_plaintext(env, key_pem: str) -> None:  # type: ignore[no-untyped-def]
    lines = key_body_lines(key_pem)
    assert lines
    text = all_rows_text(env.engine)
    for line in lines:
        assert line not in text
    url = str(env.engine.url)
    if url.startswith("sqlite"):
        path = Path(env.engine.url.database)
        raw = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
        for line in lines:
            assert line.encode() not in raw


def audit_actions(env) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    with env.session(write=False) as s:
        return [(e.action, e.object_id, e.outcome) for e in s.exec(select(AuditEntry).order_by(AuditEntry.seq))]


def alert(env, dedup_key: str) -> Alert | None:  # type: ignore[no-untyped-def]
    with env.session(write=False) as s:
        return s.exec(select(Alert).where(Alert.dedup_key == dedup_key)).first()


# --- issue / list / show ------------------------------------------------------------------------


def test_issue_through_pebble_stores_the_certificate_chain_and_an_encrypted_key(env, pebble) -> None:
    with env.session() as s:
        cert = certificates.issue(s, env.keyring, domains=["svc.example.org", "alt.example.org"],
                                  **acme_kwargs(pebble))
        cert_id = cert.id
    with env.session(write=False) as s:
        row = s.get(Certificate, cert_id)
        assert row.name == "svc.example.org" and row.provider == "acme"
        assert json.loads(row.domains) == ["svc.example.org", "alt.example.org"]
        assert "Pebble Intermediate CA" in row.issuer and "BEGIN CERTIFICATE" in row.chain_pem
        assert row.fingerprint == fingerprint(row.cert_pem)
        key_pem = certificates.private_key(s, env.keyring, row)
    from unityctl.creds.x509info import key_matches_certificate

    assert key_matches_certificate(row.cert_pem, key_pem)
    assert_key_not_stored_in_plaintext(env, key_pem)
    assert ("creds.certs.issue", "svc.example.org", "ok") in audit_actions(env)


def test_list_and_show_describe_the_certificate_without_its_key(env, pebble) -> None:
    with env.session() as s:
        certificates.issue(s, env.keyring, domains=["show.example.org"], name="show", **acme_kwargs(pebble))
    with env.session(write=False) as s:
        docs = [certificates.to_dict(c) for c in certificates.list_certificates(s)]
        doc = certificates.show(s, "show")
        key_pem = certificates.private_key(s, env.keyring, certificates.get(s, "show"))
    assert [d["name"] for d in docs] == ["show"]
    assert docs[0]["status"] == "valid" and 0 < docs[0]["days_left"] < 1
    assert docs[0]["renewal_due"] is False  # a fresh 1 h certificate: due only in its last 20 minutes
    assert doc["request"]["server"] == pebble.directory_url
    assert doc["request"]["ca_bundle"].startswith("stored")
    text = json.dumps(doc, default=str)
    assert "PRIVATE KEY" not in text
    for line in key_body_lines(key_pem):
        assert line not in text


def test_a_name_already_taken_is_refused_before_the_ca_is_asked(env, pebble) -> None:
    with env.session() as s:
        certificates.issue(s, env.keyring, domains=["dup.example.org"], **acme_kwargs(pebble))
    with pytest.raises(AlreadyExistsError), env.session() as s:
        certificates.issue(s, env.keyring, domains=["dup.example.org"], server="https://127.0.0.1:1/dir")


def test_a_refused_order_stores_nothing_and_says_why(env, pebble) -> None:
    with pytest.raises(ProviderError, match="rejectedIdentifier"), env.session() as s:
        certificates.issue(s, env.keyring, domains=[pebble.blocked_domain], **acme_kwargs(pebble))
    with env.session(write=False) as s:
        assert certificates.list_certificates(s) == []


# --- renew / revoke -------------------------------------------------------------------------------


def test_renew_due_renews_only_due_certificates_and_resolves_the_expiry_alert(env, pebble) -> None:
    with env.session() as s:
        cert = certificates.issue(s, env.keyring, domains=["renew.example.org"], **acme_kwargs(pebble))
        old_serial, not_after, cert_id = cert.serial, cert.not_after, cert.id
        pem, key = make_cert("far.example.org")
        certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=key)
    late = not_after - dt.timedelta(minutes=10)  # in the last third of its hour
    with env.session() as s:
        summary = expiry.run(s, settings=env.settings, now=late)
    assert summary.raised == 1
    key_alert = certificates.expiry_dedup_key(cert_id)
    assert alert(env, key_alert).severity == "critical"

    with env.session() as s:  # now: fresh, not due
        results = certificates.renew(s, env.keyring, due=True)
    assert {r.name: r.outcome for r in results} == {"renew.example.org": "not_due",
                                                     "far.example.org": "skipped"}
    with env.session() as s:
        results = certificates.renew(s, env.keyring, due=True, now=late)
    renewed = {r.name: r for r in results}["renew.example.org"]
    assert renewed.outcome == "renewed" and renewed.old_serial == old_serial
    assert renewed.serial != old_serial
    with env.session(write=False) as s:
        row = s.get(Certificate, cert_id)
        assert row.serial == renewed.serial and row.renewed_at is not None
        from unityctl.creds.x509info import key_matches_certificate

        assert key_matches_certificate(row.cert_pem, certificates.private_key(s, env.keyring, row))
    assert alert(env, key_alert).state == "resolved"
    assert ("creds.certs.renew", "renew.example.org", "ok") in audit_actions(env)


def test_a_failed_renewal_is_reported_and_audited_and_the_batch_goes_on(env, pebble) -> None:
    with env.session() as s:
        good = certificates.issue(s, env.keyring, domains=["ok.example.org"], **acme_kwargs(pebble))
        bad = certificates.issue(s, env.keyring, domains=["gone.example.org"], **acme_kwargs(pebble))
        request = json.loads(bad.request)
        request["server"] = f"https://127.0.0.1:{free_port()}/dir"  # the CA went away
        bad.request = json.dumps(request)
        s.add(bad)
        good_serial, bad_serial = good.serial, bad.serial
    with env.session() as s:
        results = {r.name: r for r in certificates.renew(s, env.keyring, all_=True)}
    assert results["ok.example.org"].outcome == "renewed"
    assert results["ok.example.org"].serial != good_serial
    assert results["gone.example.org"].outcome == "failed"
    assert "cannot reach the ACME server" in results["gone.example.org"].detail
    with env.session(write=False) as s:
        assert certificates.get(s, "gone.example.org").serial == bad_serial
    assert ("creds.certs.renew", "gone.example.org", "failed") in audit_actions(env)


def test_revoke_marks_the_certificate_revoked_and_a_second_revoke_is_refused(env, pebble) -> None:
    with env.session() as s:
        certificates.issue(s, env.keyring, domains=["rv.example.org"], **acme_kwargs(pebble))
    with env.session() as s:
        certificates.revoke(s, env.keyring, name="rv.example.org", reason="superseded")
    with env.session(write=False) as s:
        assert certificates.to_dict(certificates.get(s, "rv.example.org"))["status"] == "revoked"
    with pytest.raises(StateError, match="already revoked"), env.session() as s:
        certificates.revoke(s, env.keyring, name="rv.example.org")
    assert ("creds.certs.revoke", "rv.example.org", "ok") in audit_actions(env)


# --- import -------------------------------------------------------------------------------------


def test_import_with_a_mismatching_key_is_refused_and_stores_nothing(env) -> None:
    pem, _ = make_cert("imp.example.org")
    _, other_key = make_cert("other.example.org")
    with pytest.raises(ParseError, match="does not match"), env.session() as s:
        certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=other_key)
    with env.session(write=False) as s:
        assert certificates.list_certificates(s) == []
    assert_key_not_stored_in_plaintext(env, other_key)


def test_import_stores_the_certificate_with_its_key_encrypted(env) -> None:
    pem, key = make_cert("imp.example.org")
    chain, _ = make_cert("Some Intermediate")
    with env.session() as s:
        cert = certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=key, chain_pem=chain)
        assert cert.name == "imp.example.org" and cert.provider == "imported"
        assert cert.chain_pem == chain
    with env.session(write=False) as s:
        assert certificates.private_key(s, env.keyring, certificates.get(s, "imp.example.org")) == key
    assert_key_not_stored_in_plaintext(env, key)


# --- expiry task ----------------------------------------------------------------------------------


def test_expiry_alerts_rise_info_warning_critical_and_resolve_after_renewal(env) -> None:
    now = dt.datetime.now(UTC).replace(microsecond=0)
    pem, key = make_cert("exp.example.org", not_before=now - dt.timedelta(days=300),
                         not_after=now + dt.timedelta(days=40))
    with env.session() as s:
        cert_id = certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=key).id
    dedup = f"certificate_expiring:certificate:{cert_id}"
    seen = []
    for days_before in (35, 29, 13, 6.5, 0.5, -1):
        with env.session() as s:
            expiry.run(s, settings=env.settings, now=now + dt.timedelta(days=40 - days_before))
        a = alert(env, dedup)
        seen.append(None if a is None else (a.severity, a.state))
    assert seen == [None, ("info", "open"), ("warning", "open"), ("warning", "open"),
                    ("critical", "open"), ("critical", "open")]
    with env.session(write=False) as s:
        assert certificates.get(s, "exp.example.org").status == "expired"
        alerts = s.exec(select(Alert).where(Alert.type == "certificate_expiring")).all()
        assert len(alerts) == 1  # one alert per certificate, refreshed, never duplicated
    # A certificate that is valid far beyond every threshold again (as after a renewal that went
    # around unityctl): the task itself resolves the alert.
    with env.session() as s:
        row = certificates.get(s, "exp.example.org")
        row.not_after = now + dt.timedelta(days=90)
        s.add(row)
    with env.session() as s:
        summary = expiry.run(s, settings=env.settings, now=now)
    assert summary.resolved == 1 and alert(env, dedup).state == "resolved"


def test_expiry_severity_follows_the_configured_thresholds() -> None:
    t = [30, 14, 7, 1]
    assert expiry.severity_for(31, t) is None
    assert expiry.severity_for(30, t) == ("info", 30)
    assert expiry.severity_for(14, t) == ("warning", 14)
    assert expiry.severity_for(7, t) == ("warning", 7)
    assert expiry.severity_for(1, t) == ("critical", 1)
    assert expiry.severity_for(0, t) == ("critical", None)
    assert expiry.severity_for(5, [10]) == ("critical", 10)


def test_a_revoked_certificate_gets_no_expiry_alert(env) -> None:
    now = dt.datetime.now(UTC)
    pem, key = make_cert("rev.example.org", not_after=now + dt.timedelta(days=3))
    with env.session() as s:
        cert = certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=key)
        cert.status = "revoked"
        s.add(cert)
    with env.session() as s:
        summary = expiry.run(s, settings=env.settings)
    assert summary.alerting == 0


# --- check ----------------------------------------------------------------------------------------


def test_check_reports_certificates_expiring_within_the_window(env) -> None:
    now = dt.datetime.now(UTC)
    for cn, days in (("soon.example.org", 5), ("later.example.org", 60)):
        pem, key = make_cert(cn, not_after=now + dt.timedelta(days=days))
        with env.session() as s:
            certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=key)
    with env.session(write=False) as s:
        items = {i.name: i for i in certificates.check(s, days=14)}
    assert items["soon.example.org"].status == "expiring" and items["soon.example.org"].attention
    assert items["later.example.org"].status == "ok" and not items["later.example.org"].attention


def test_check_detects_an_endpoint_still_serving_the_certificate_from_before_renewal(
    env, pebble, tmp_path
) -> None:
    port = free_port()
    with env.session() as s:
        cert = certificates.issue(s, env.keyring, domains=["stale.example.org"],
                                  endpoint=f"127.0.0.1:{port}", **acme_kwargs(pebble))
        old_pem = cert.cert_pem + cert.chain_pem
        old_key = certificates.private_key(s, env.keyring, cert)
    with tls_server(tmp_path / "old", old_pem, old_key, port):
        with env.session(write=False) as s:
            [item] = certificates.check(s, days=0)
        assert item.status == "ok" and item.served_fingerprint == fingerprint(old_pem)
        with env.session() as s:
            certificates.renew(s, env.keyring, name="stale.example.org")
        with env.session(write=False) as s:
            [item] = certificates.check(s, days=0)
            new = certificates.get(s, "stale.example.org")
            new_pem, new_key = new.cert_pem + new.chain_pem, certificates.private_key(s, env.keyring, new)
        assert item.status == "stale" and item.attention
        assert item.detail.startswith(f"stale: serving {fingerprint(old_pem)}, stored {new.fingerprint}")
    with tls_server(tmp_path / "new", new_pem, new_key, port):
        with env.session(write=False) as s:
            [item] = certificates.check(s, days=0)
    assert item.status == "ok" and item.served_fingerprint == new.fingerprint


def test_check_reports_an_endpoint_that_cannot_be_reached(env) -> None:
    pem, key = make_cert("down.example.org")
    with env.session() as s:
        certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=key,
                                        endpoint=f"127.0.0.1:{free_port()}")
    with env.session(write=False) as s:
        [item] = certificates.check(s, days=1, timeout=5)
    assert item.status == "unreachable" and "cannot read the certificate" in item.detail


# --- deploy over SSH ------------------------------------------------------------------------------


@pytest.fixture
def ssh_server(env, sshd_fleet, sshd_admin_key):  # type: ignore[no-untyped-def]
    """One real sshd server registered as ServerCredential "web1" (login key "admin"), with a
    ``tls`` directory in its user's home."""
    from unityctl.creds import keys, servers

    server = sshd_fleet.servers(1)[0]
    with env.session() as s:
        keys.import_key(s, env.keyring, name="admin", data=sshd_admin_key.private_pem.encode())
        servers.add_server(s, env.keyring, name="web1", host=server.host, port=server.port,
                           user=server.user, key_name="admin")
    tls = server.home / "tls"
    tls.mkdir()
    os.chown(tls, *server._uid_gid())
    return server


def test_deploy_writes_key_and_chain_with_their_modes_and_runs_the_reload(env, pebble, ssh_server) -> None:
    with env.session() as s:
        cert = certificates.issue(s, env.keyring, domains=["dep.example.org"], **acme_kwargs(pebble))
        fullchain, key_pem = cert.cert_pem + cert.chain_pem, certificates.private_key(s, env.keyring, cert)
    tls = ssh_server.home / "tls"
    with env.session() as s:
        [result] = certificates.deploy(s, env.keyring, name="dep.example.org", servers=["web1"],
                                       cert_path=str(tls / "fullchain.pem"), key_path=str(tls / "privkey.pem"),
                                       reload_command=f"touch {tls}/reloaded", settings=env.settings)
    assert result.status == "deployed" and result.reloaded, result
    assert (tls / "fullchain.pem").read_text() == fullchain
    assert (tls / "privkey.pem").read_text() == key_pem
    assert stat.S_IMODE((tls / "privkey.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tls / "fullchain.pem").stat().st_mode) == 0o644
    assert (tls / "reloaded").exists()
    assert not [p for p in tls.iterdir() if p.name.startswith(".unityctl-tmp")]
    with env.session(write=False) as s:
        [dep] = s.exec(select(CertificateDeployment)).all()
        assert dep.status == "deployed" and dep.fingerprint == fingerprint(fullchain)
        assert certificates.show(s, "dep.example.org")["deployments"][0]["current"] is True
    assert ("creds.certs.deploy", "dep.example.org", "ok") in audit_actions(env)


def test_a_failing_reload_is_recorded_raises_an_alert_and_a_later_success_resolves_it(
    env, pebble, ssh_server
) -> None:
    with env.session() as s:
        certificates.issue(s, env.keyring, domains=["rl.example.org"], **acme_kwargs(pebble))
    tls = ssh_server.home / "tls"
    args = {"name": "rl.example.org", "servers": ["web1"], "cert_path": str(tls / "c.pem"),
            "key_path": str(tls / "k.pem"), "settings": env.settings}
    with env.session() as s:
        [result] = certificates.deploy(s, env.keyring, reload_command="false", **args)
    assert result.status == "reload_failed" and "exited with status 1" in result.error
    assert (tls / "c.pem").exists()  # the files are in place; only the reload failed
    with env.session(write=False) as s:
        [dep] = s.exec(select(CertificateDeployment)).all()
        assert dep.status == "reload_failed"
        dep_id = dep.id
    a = alert(env, f"certificate_reload_failed:certificate_deployment:{dep_id}")
    assert a is not None and a.type == "certificate_reload_failed" and a.state == "open"
    assert ("creds.certs.deploy", "rl.example.org", "failed") in audit_actions(env)
    with env.session() as s:
        [result] = certificates.deploy(s, env.keyring, reload_command="true", **args)
    assert result.status == "deployed"
    assert alert(env, f"certificate_reload_failed:certificate_deployment:{dep_id}").state == "resolved"


def test_deploy_to_a_missing_directory_fails_for_that_server_and_writes_nothing(env, ssh_server) -> None:
    pem, key = make_cert("nodir.example.org")
    with env.session() as s:
        certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=key)
    with env.session() as s:
        [result] = certificates.deploy(s, env.keyring, name="nodir.example.org", servers=["web1"],
                                       cert_path="/nonexistent/dir/c.pem", key_path="/nonexistent/dir/k.pem")
    assert result.status == "failed" and "web1" in result.error
    assert "PRIVATE" not in result.error


def test_deploy_to_an_unknown_server_is_refused(env) -> None:
    pem, key = make_cert("x.example.org")
    with env.session() as s:
        certificates.import_certificate(s, env.keyring, cert_pem=pem, key_pem=key)
    with pytest.raises(NotFoundError, match="no server named"), env.session() as s:
        certificates.deploy(s, env.keyring, name="x.example.org", servers=["nope"], cert_path="a", key_path="b")


# --- step-ca --------------------------------------------------------------------------------------


def test_step_ca_set_with_a_wrong_root_fingerprint_is_refused(env, pebble) -> None:
    wrong = "ab" * 32
    with pytest.raises(ProviderError, match="root fingerprint mismatch"), env.session() as s:
        stepca.set_config(s, env.keyring, url="https://ca.example.org:9000", root_fingerprint=wrong,
                          root_pem=Path(pebble.ca_bundle).read_text())
    with pytest.raises(NotFoundError), env.session(write=False) as s:
        stepca.get_config(s)


def test_issue_and_renew_through_the_step_ca_code_path_trust_only_the_pinned_root(env, pebble) -> None:
    # Pebble stands in for step-ca: its directory URL as the configured URL, its HTTPS
    # certificate (self-signed) as the pinned root. No ca_bundle is given to issue/renew.
    fp = pebble_root_fingerprint(pebble)
    colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()
    with env.session() as s:
        config = stepca.set_config(s, env.keyring, url=pebble.directory_url, root_fingerprint=colons,
                                   root_pem=Path(pebble.ca_bundle).read_text())
        assert stepca.directory_url(config) == pebble.directory_url
        assert config.root_fingerprint == fp
    with env.session() as s:
        cert = certificates.issue(s, env.keyring, domains=["step.example.org"], provider="step-ca",
                                  http_port=pebble.http_port, http_address="127.0.0.1")
        assert cert.provider == "step-ca"
        assert json.loads(cert.request)["step_ca"] == "default"
        old = cert.serial
    with env.session() as s:
        [result] = certificates.renew(s, env.keyring, name="step.example.org")
    assert result.outcome == "renewed" and result.serial != old
    assert ("creds.stepca.set", "default", "ok") in audit_actions(env)


def test_the_step_ca_directory_of_a_base_url_is_the_acme_provisioners() -> None:
    from unityctl.creds.models import StepCAConfig

    config = StepCAConfig(url="https://ca.lan:9000", root_fingerprint="0" * 64, provisioner="acme")
    assert stepca.directory_url(config) == "https://ca.lan:9000/acme/acme/directory"


@contextmanager
def fake_step_ca_root_endpoint(tmp_path: Path, root_pem: str) -> Iterator[int]:
    """An HTTPS server answering step-ca's ``GET /root/<fingerprint>`` with ``{"ca": root_pem}``."""
    import http.server

    tls_pem, tls_key = make_cert("127.0.0.1")
    (tmp_path / "tls.pem").write_text(tls_pem)
    (tmp_path / "tls.key").write_text(tls_key)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"ca": root_pem}).encode() if self.path.startswith("/root/") else b"{}"
            self.send_response(200 if self.path.startswith("/root/") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "tls.pem", tmp_path / "tls.key")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_step_ca_set_without_a_root_file_downloads_the_root_and_keeps_it_only_if_pinned(env, tmp_path) -> None:
    root_pem, _ = make_cert("Test Root CA")
    with fake_step_ca_root_endpoint(tmp_path, root_pem) as port:
        with pytest.raises(ProviderError, match="root fingerprint mismatch"), env.session() as s:
            stepca.set_config(s, env.keyring, url=f"https://127.0.0.1:{port}", root_fingerprint="ef" * 32)
        with env.session() as s:
            stepca.set_config(s, env.keyring, url=f"https://127.0.0.1:{port}",
                              root_fingerprint=fingerprint(root_pem), provisioner="acme")
    with env.session(write=False) as s:
        doc = stepca.to_dict(stepca.get_config(s))
        assert stepca.get_config(s).root_pem == root_pem
    assert doc["directory_url"] == f"https://127.0.0.1:{port}/acme/acme/directory"
    assert doc["root_fingerprint"] == fingerprint(root_pem)


def test_step_ca_set_against_an_unreachable_ca_says_so(env) -> None:
    with pytest.raises(ProviderError, match="cannot download the root"), env.session() as s:
        stepca.set_config(s, env.keyring, url=f"https://127.0.0.1:{free_port()}", root_fingerprint="ab" * 32)


def test_other_writers_are_not_locked_out_while_the_ca_works(env, db_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An ACME order can take a minute: during it, the daemon (another connection with little
    patience) must still be able to write. The CA call is replaced by one that tries exactly that
    and then fails like a refusing CA would."""
    from unityctl.creds import acme

    wrote: list[str] = []

    def impatient_write_then_refuse(req):  # type: ignore[no-untyped-def]
        impatient_write(db_url, "probe")
        wrote.append("ok")
        raise ProviderError("the CA refused: test")

    monkeypatch.setattr(acme, "issue", impatient_write_then_refuse)
    with pytest.raises(ProviderError):
        with env.session(write=True) as session:
            certificates.issue(session, env.keyring, domains=["slow.example.org"], server="https://127.0.0.1:9/dir")
    assert wrote == ["ok"]
