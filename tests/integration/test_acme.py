"""The ACME adapter against a real Pebble CA with real certbot (run with -p tests.support.pebble)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.tls import tls_server
from unityctl.core.errors import ProviderError, UnityctlError, UsageError
from unityctl.creds import acme
from unityctl.creds.x509info import (
    fetch_served_certificate,
    is_due,
    key_matches_certificate,
    parse_certificate,
    split_chain,
)

REPO = Path(__file__).resolve().parents[2]


def request_for(pebble, *domains: str, http_port: int | None = None, **kw) -> acme.AcmeRequest:
    """A standalone http-01 request to the session's Pebble (the VA accepts every challenge)."""
    return acme.AcmeRequest(
        domains=list(domains or ["test.example.org"]),
        server=pebble.directory_url,
        mode="standalone",
        http_port=http_port or pebble.http_port,
        http_address="127.0.0.1",
        ca_bundle=pebble.ca_bundle,
        **kw,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def issued(pebble) -> acme.IssuedCertificate:
    """One certificate for test.example.org, shared by the read-only tests of this module."""
    return acme.issue(request_for(pebble, "test.example.org"))


# --- issuance --------------------------------------------------------------------------------


def test_issue_returns_a_certificate_for_the_requested_name(issued) -> None:
    assert issued.info.subject_cn == "test.example.org"
    assert issued.info.domains == ("test.example.org",)
    assert issued.info.key_type == "ecdsa-p256"
    assert parse_certificate(issued.cert_pem) == issued.info


def test_the_issued_certificate_is_signed_by_pebbles_intermediate_which_its_root_signs(
    pebble, issued
) -> None:
    intermediate_pem = pebble.intermediates()
    intermediate = x509.load_pem_x509_certificate(intermediate_pem.encode())
    root = x509.load_pem_x509_certificate(pebble.issuer_roots().encode())
    leaf = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    assert issued.info.issuer == intermediate.subject.rfc4514_string()
    assert "Pebble Intermediate CA" in issued.info.issuer
    leaf.verify_directly_issued_by(intermediate)  # raises if the signature does not verify
    intermediate.verify_directly_issued_by(root)
    assert split_chain(issued.chain_pem) == split_chain(intermediate_pem)


def test_the_full_chain_is_the_leaf_followed_by_the_chain(issued) -> None:
    assert split_chain(issued.fullchain_pem) == split_chain(issued.cert_pem + issued.chain_pem)


def test_the_issued_key_matches_the_certificate(issued) -> None:
    assert key_matches_certificate(issued.cert_pem, issued.key_pem)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    assert not key_matches_certificate(issued.cert_pem, other)


def test_the_private_key_is_not_in_the_repr_of_the_result(issued) -> None:
    assert "PRIVATE KEY" in issued.key_pem
    assert "PRIVATE KEY" not in repr(issued)


def test_an_rsa_certificate_can_be_requested(pebble) -> None:
    cert = acme.issue(request_for(pebble, "rsa.example.org", key_type="rsa"))
    assert cert.info.key_type == "rsa-2048"
    assert key_matches_certificate(cert.cert_pem, cert.key_pem)


def test_several_names_end_up_as_sans_on_one_certificate(pebble) -> None:
    cert = acme.issue(request_for(pebble, "a.example.org", "b.example.org"))
    assert sorted(cert.info.domains) == ["a.example.org", "b.example.org"]


# --- renewal due -----------------------------------------------------------------------------


def test_a_fresh_pebble_certificate_is_not_due_although_its_life_is_shorter_than_the_window(
    pebble, issued
) -> None:
    info = issued.info
    assert info.lifetime <= timedelta(seconds=pebble.cert_validity_seconds)
    now = datetime.now(timezone.utc)
    assert info.not_before <= now + timedelta(seconds=5)
    assert is_due(info, now) is False


def test_a_pebble_certificate_is_due_in_the_last_third_of_its_life(issued) -> None:
    # One hour of life and a 30-day window: the lifetime rule (last 20 minutes) decides.
    info = issued.info
    early = info.not_before + info.lifetime / 3
    late = info.not_before + info.lifetime * 2 / 3 + timedelta(seconds=30)
    assert is_due(info, early) is False
    assert is_due(info, late) is True


def test_renew_issues_a_new_certificate_with_a_new_serial_and_key(pebble, issued) -> None:
    renewed = acme.renew(request_for(pebble, "test.example.org"))
    assert renewed.info.domains == issued.info.domains
    assert renewed.info.serial_hex != issued.info.serial_hex
    assert renewed.info.fingerprint_sha256 != issued.info.fingerprint_sha256
    assert not key_matches_certificate(renewed.cert_pem, issued.key_pem)
    assert renewed.info.not_after >= issued.info.not_after


# --- revocation ------------------------------------------------------------------------------


def test_revoke_succeeds_once_and_a_second_revoke_is_a_clear_provider_error(pebble) -> None:
    cert = acme.issue(request_for(pebble, "revoke-me.example.org"))
    acme.revoke(pebble.directory_url, cert.fullchain_pem, cert.key_pem, pebble.ca_bundle,
                reason="superseded")
    with pytest.raises(ProviderError) as err:
        acme.revoke(pebble.directory_url, cert.fullchain_pem, cert.key_pem, pebble.ca_bundle)
    message = str(err.value)
    assert "urn:ietf:params:acme:error:alreadyRevoked" in message
    assert cert.info.serial_hex in message
    assert "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    for line in cert.key_pem.splitlines()[1:-1]:
        assert line not in message


def test_revoke_refuses_an_unknown_reason_before_calling_the_ca(pebble, issued) -> None:
    with pytest.raises(UsageError, match="revocation reason"):
        acme.revoke(pebble.directory_url, issued.cert_pem, issued.key_pem, pebble.ca_bundle,
                    reason="because")


def test_revoke_with_a_key_that_is_not_the_certificates_is_refused(pebble, issued) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(ProviderError) as err:
        acme.revoke(pebble.directory_url, issued.cert_pem, other, pebble.ca_bundle)
    assert "\n" not in str(err.value)
    assert "PRIVATE KEY" not in str(err.value)


# --- errors ----------------------------------------------------------------------------------


def test_an_unreachable_server_gives_a_one_line_provider_error(pebble) -> None:
    dead = f"https://127.0.0.1:{free_port()}/dir"
    with pytest.raises(ProviderError) as err:
        acme.issue(acme.AcmeRequest(domains=["test.example.org"], server=dead,
                                    http_port=pebble.http_port, http_address="127.0.0.1",
                                    ca_bundle=pebble.ca_bundle))
    message = str(err.value)
    assert message.startswith("ACME issuance for test.example.org at " + dead)
    assert "cannot reach the ACME server" in message and "refused" in message.lower()
    assert "\n" not in message and "Traceback" not in message


def test_a_name_the_ca_refuses_gives_its_rejected_identifier_error(pebble) -> None:
    with pytest.raises(ProviderError) as err:
        acme.issue(request_for(pebble, pebble.blocked_domain))
    assert "urn:ietf:params:acme:error:rejectedIdentifier" in str(err.value)
    assert "\n" not in str(err.value)


def test_without_the_ca_bundle_the_servers_tls_is_not_trusted(pebble) -> None:
    req = request_for(pebble, "test.example.org")
    req.ca_bundle = None
    saved = os.environ.pop("REQUESTS_CA_BUNDLE", None)
    try:
        with pytest.raises(ProviderError, match="TLS verification of the ACME server failed"):
            acme.issue(req)
    finally:
        if saved is not None:
            os.environ["REQUESTS_CA_BUNDLE"] = saved


def test_an_unknown_server_alias_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="neither an http"):
        acme.AcmeRequest(domains=["a.example.org"], server="lets-encrypt")


# --- process hygiene -------------------------------------------------------------------------


def test_certbot_writes_nothing_on_stdout_and_leaves_logging_and_env_as_they_were(
    pebble, capfd
) -> None:
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    os.environ["REQUESTS_CA_BUNDLE"] = "/nonexistent/sentinel.pem"
    try:
        acme.issue(request_for(pebble, "quiet.example.org"))
        with pytest.raises(ProviderError):
            acme.issue(request_for(pebble, pebble.blocked_domain))
        assert os.environ["REQUESTS_CA_BUNDLE"] == "/nonexistent/sentinel.pem"
    finally:
        del os.environ["REQUESTS_CA_BUNDLE"]
    out, _err = capfd.readouterr()
    assert out == ""
    assert root.handlers == handlers and root.level == level and sys.excepthook is hook


def test_certbots_debug_records_and_the_key_stay_out_of_unityctls_logs(pebble, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        cert = acme.issue(request_for(pebble, "logs.example.org"))
        acme.revoke(pebble.directory_url, cert.cert_pem, cert.key_pem, pebble.ca_bundle)
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("certbot", "acme")]
    body = "".join(cert.key_pem.splitlines()[1:-1])
    assert body[:40] not in caplog.text and "PRIVATE KEY" not in caplog.text


def test_no_certbot_directories_are_left_behind(pebble, tmp_path, monkeypatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    acme.issue(request_for(pebble, "tidy.example.org"))
    assert list(tmp_path.iterdir()) == []


def test_repeated_issuances_leak_no_file_descriptors_or_certbot_locks(pebble) -> None:
    import certbot.util

    acme.issue(request_for(pebble, "warmup.example.org"))  # first call opens lasting sockets etc.
    before = len(os.listdir("/proc/self/fd"))
    for i in range(2):
        acme.issue(request_for(pebble, f"leak{i}.example.org"))
    assert len(os.listdir("/proc/self/fd")) <= before
    assert not [p for p in certbot.util._LOCKS if "unityctl-certbot-" in str(p)]


def test_two_issuances_in_parallel_threads_do_not_collide(pebble) -> None:
    # Distinct standalone ports: both runs really bind their http-01 listener.
    from certbot._internal.error_handler import ErrorHandler

    set_handlers = ErrorHandler.__dict__["_set_signal_handlers"]
    reqs = [request_for(pebble, f"thread{i}.example.org", http_port=free_port()) for i in (1, 2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        certs = list(pool.map(acme.issue, reqs))
    # Worker threads need certbot's signal handling switched off; it must be back afterwards.
    assert ErrorHandler.__dict__["_set_signal_handlers"] is set_handlers
    assert [c.info.domains for c in certs] == [("thread1.example.org",), ("thread2.example.org",)]
    assert certs[0].info.serial_hex != certs[1].info.serial_hex


def test_two_issuances_in_parallel_processes_do_not_collide_on_lock_files(pebble) -> None:
    # In one process certbot runs are serialised; between processes only the private directories
    # keep certbot's lock files apart, so this is the test that they do.
    script = (
        "import sys\n"
        "from unityctl.creds import acme\n"
        "c = acme.issue(acme.AcmeRequest(domains=[sys.argv[1]], server=sys.argv[2],"
        " http_port=int(sys.argv[3]), http_address='127.0.0.1', ca_bundle=sys.argv[4]))\n"
        "print(c.info.serial_hex)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"proc{i}.example.org", pebble.directory_url,
             str(free_port()), str(pebble.ca_bundle)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in (1, 2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    serials = [out.strip() for out, _ in results]
    assert all(serials) and serials[0] != serials[1]


# --- what a server actually serves -----------------------------------------------------------


def test_fetch_served_certificate_returns_the_certificate_the_endpoint_serves(
    issued, tmp_path
) -> None:
    with tls_server(tmp_path, issued.fullchain_pem, issued.key_pem) as port:
        served = fetch_served_certificate("127.0.0.1", port, "test.example.org", timeout=5)
    assert parse_certificate(served).fingerprint_sha256 == issued.info.fingerprint_sha256


def test_a_server_still_serving_the_old_certificate_is_detected_after_renewal(
    pebble, issued, tmp_path
) -> None:
    renewed = acme.renew(request_for(pebble, "test.example.org"))
    # The service was never reloaded: it still serves the old certificate.
    with tls_server(tmp_path, issued.fullchain_pem, issued.key_pem) as port:
        served = parse_certificate(fetch_served_certificate("127.0.0.1", port, timeout=5))
    assert served.fingerprint_sha256 == issued.info.fingerprint_sha256
    assert served.fingerprint_sha256 != renewed.info.fingerprint_sha256


def test_fetching_from_a_closed_port_is_a_one_line_error() -> None:
    port = free_port()
    with pytest.raises(UnityctlError) as err:
        fetch_served_certificate("127.0.0.1", port, timeout=2)
    assert f"127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)


def test_fetching_from_a_plain_tcp_server_is_a_one_line_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        with pytest.raises(UnityctlError) as err:
            fetch_served_certificate("127.0.0.1", port, "plain.example.org", timeout=5)
        thread.join(timeout=5)
    assert "plain.example.org" in str(err.value) and "\n" not in str(err.value)


# --- command lines (pure) --------------------------------------------------------------------


DIRS = acme.CertbotDirs.under(Path("/run/x"))


def test_webroot_mode_builds_a_webroot_command_line_without_standalone_options() -> None:
    req = acme.AcmeRequest(domains=["www.example.org", "example.org"], server="letsencrypt",
                           mode="webroot", webroot="/var/www/html", email="ops@example.org")
    args = acme.certbot_args(req, DIRS)
    assert args[0] == "certonly"
    assert args[args.index("--webroot-path") + 1] == "/var/www/html"
    assert "--webroot" in args and "--standalone" not in args and "--http-01-port" not in args
    assert args[args.index("--server") + 1] == acme.LETSENCRYPT
    assert args[args.index("--email") + 1] == "ops@example.org"
    assert "--register-unsafely-without-email" not in args
    assert [args[i + 1] for i, a in enumerate(args) if a == "--domain"] == [
        "www.example.org", "example.org"]


def test_every_command_line_uses_the_private_directories_and_never_prompts() -> None:
    req = acme.AcmeRequest(domains=["a.example.org"], server="letsencrypt-staging")
    args = acme.certbot_args(req, DIRS)
    assert args[args.index("--config-dir") + 1] == "/run/x/config"
    assert args[args.index("--work-dir") + 1] == "/run/x/work"
    assert args[args.index("--logs-dir") + 1] == "/run/x/logs"
    assert "--non-interactive" in args and "--agree-tos" in args
    assert args[args.index("--server") + 1] == acme.LETSENCRYPT_STAGING
    assert args[args.index("--http-01-port") + 1] == "80"
    assert "--register-unsafely-without-email" in args
    revoke = acme.revoke_args("https://ca/dir", Path("/c.pem"), Path("/k.pem"), "superseded", DIRS)
    assert revoke[0] == "revoke" and revoke[revoke.index("--config-dir") + 1] == "/run/x/config"
    assert revoke[revoke.index("--reason") + 1] == "superseded"


def test_external_account_binding_is_passed_and_the_hmac_is_not_in_the_repr() -> None:
    req = acme.AcmeRequest(domains=["a.example.org"], server="https://ca.lan/acme/acme/directory",
                           eab_kid="kid-1", eab_hmac="c2VjcmV0LWhtYWM")
    args = acme.certbot_args(req, DIRS)
    assert args[args.index("--eab-kid") + 1] == "kid-1"
    assert args[args.index("--eab-hmac-key") + 1] == "c2VjcmV0LWhtYWM"
    assert "c2VjcmV0LWhtYWM" not in repr(req)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"domains": []}, "at least one domain"),
        ({"domains": ["a.example.org"], "mode": "webroot"}, "webroot directory"),
        ({"domains": ["a.example.org"], "mode": "dns"}, "mode"),
        ({"domains": ["a.example.org"], "challenge": "dns-01"}, "challenge"),
        ({"domains": ["a.example.org"], "key_type": "dsa"}, "key type"),
        ({"domains": ["a.example.org"], "eab_kid": "k"}, "both eab_kid and eab_hmac"),
        ({"domains": ["a.example.org"], "http_port": 0}, "not a TCP port"),
    ],
)
def test_impossible_requests_are_usage_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        acme.AcmeRequest(**kwargs)


# --- step-ca ---------------------------------------------------------------------------------


def test_step_ca_directory_is_the_acme_provisioners_directory() -> None:
    assert (acme.step_ca_directory("https://ca.lan:9000/", "acme")
            == "https://ca.lan:9000/acme/acme/directory")
    assert (acme.step_ca_directory("https://ca.lan", "my acme")
            == "https://ca.lan/acme/my%20acme/directory")


@pytest.mark.parametrize(("url", "prov"), [("http://ca.lan", "acme"), ("https://ca.lan/x", "acme"),
                                           ("https://ca.lan", ""), ("https://ca.lan", "a/b")])
def test_step_ca_directory_refuses_bad_urls_and_names(url: str, prov: str) -> None:
    with pytest.raises(UsageError):
        acme.step_ca_directory(url, prov)


def test_root_fingerprint_pins_the_root_in_a_bundle(pebble) -> None:
    root_pem = pebble.issuer_roots()
    fp = x509.load_pem_x509_certificate(root_pem.encode()).fingerprint(hashes.SHA256()).hex()
    colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()
    bundle = pebble.intermediates() + root_pem
    assert acme.root_fingerprint_matches(bundle, fp) is True
    assert acme.root_fingerprint_matches(bundle, colons) is True
    assert acme.root_fingerprint_matches(pebble.intermediates(), fp) is False
    with pytest.raises(UsageError):
        acme.root_fingerprint_matches(bundle, "abc")
