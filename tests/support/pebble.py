"""pytest plugin: a real Pebble ACME CA for the whole test session.

Load it with ``-p tests.support.pebble`` (or ``pytest_plugins``). The session fixture ``pebble``
starts Debian's ``pebble`` binary with its own self-signed TLS certificate, a short certificate
lifetime (so a freshly issued certificate is already due for renewal), and the validation
authority told to accept every challenge (``PEBBLE_VA_ALWAYS_VALID=1``), so certbot can answer
http-01 on any local port without DNS. It is stopped when the session ends.

When ``pebble`` is not installed the fixture FAILS instead of skipping: an ACME test that silently
skips looks green while nothing was tested.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Documented defaults (docs/test-environment.md). Used when free; otherwise (a second session on
# the same machine, pytest-xdist workers) free ports are picked so sessions never collide.
DEFAULT_ACME_PORT = 14000
DEFAULT_MANAGEMENT_PORT = 15000
DEFAULT_HTTP_PORT = 5002
DEFAULT_TLS_PORT = 5001
# Pebble 2.4's config key ``certificateValidityPeriod`` (seconds; its default is 5 years). One
# hour outlives any test run, yet a certificate is due for renewal from the moment it is issued
# (its whole life is shorter than a 30-day renewal window), like step-ca's 24 h certificates.
CERT_VALIDITY_SECONDS = 3600
STARTUP_TIMEOUT = 30.0
# Pebble refuses orders for this name with urn:ietf:params:acme:error:rejectedIdentifier, which
# gives tests a real CA-side refusal to check error reporting with.
BLOCKED_DOMAIN = "blocked.example.org"


@dataclass
class PebbleServer:
    """A running Pebble, as the tests see it.

    ``directory_url``: the ACME directory; ``ca_bundle``: path of the PEM that Pebble's own HTTPS
    (ACME and management) is served with, to give to REQUESTS_CA_BUNDLE / ssl; ``http_port``: the
    http-01 port Pebble's VA would use (certbot standalone binds it); ``management_url``: the
    management API root; ``cert_validity_seconds``: lifetime of the certificates it issues;
    ``blocked_domain``: a name Pebble refuses (rejectedIdentifier).
    """

    directory_url: str
    ca_bundle: Path
    http_port: int
    tls_port: int
    management_url: str
    cert_validity_seconds: int
    workdir: Path
    blocked_domain: str
    process: subprocess.Popen[bytes] = field(repr=False)

    def _get(self, path: str) -> str:
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(self.management_url + path, context=ctx, timeout=10) as resp:
            return resp.read().decode("ascii")

    def issuer_roots(self) -> str:
        """PEM of the root CA that signs this Pebble's default chain (management ``/roots/0``)."""
        return self._get("/roots/0")

    def intermediates(self) -> str:
        """PEM of the intermediate CA that issues leaves (management ``/intermediates/0``)."""
        return self._get("/intermediates/0")

    def log(self) -> str:
        """Pebble's output so far (for assertion messages)."""
        path = self.workdir / "pebble.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pick(preferred: int, taken: set[int]) -> int:
    port = preferred if _port_free(preferred) and preferred not in taken else _free_port()
    while port in taken:
        port = _free_port()
    taken.add(port)
    return port


def write_tls_identity(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate and key for 127.0.0.1/localhost; return (cert, key) paths.

    The certificate is its own CA (basicConstraints CA) so OpenSSL and Go both accept it as a trust
    anchor when given as a CA bundle.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test localhost")])
    now = datetime.now(timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _wait_ready(server: PebbleServer) -> None:
    ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"pebble exited with status {server.process.returncode} while starting:\n"
                f"{server.log()}"
            )
        try:
            with urllib.request.urlopen(server.directory_url, context=ctx, timeout=2) as resp:
                if "newOrder" in json.loads(resp.read()):
                    return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error = exc
        time.sleep(0.1)
    pytest.fail(f"pebble did not serve {server.directory_url} within {STARTUP_TIMEOUT}s "
                f"(last error: {last_error}):\n{server.log()}")


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    """Start a real Pebble ACME CA for the session and yield a :class:`PebbleServer`."""
    binary = shutil.which("pebble")
    if binary is None:
        pytest.fail("pebble is not installed: install the Debian package pebble "
                    "(make test does this)")
    workdir = tmp_path_factory.mktemp("pebble")
    cert_path, key_path = write_tls_identity(workdir)
    taken: set[int] = set()
    acme_port = _pick(DEFAULT_ACME_PORT, taken)
    mgmt_port = _pick(DEFAULT_MANAGEMENT_PORT, taken)
    http_port = _pick(DEFAULT_HTTP_PORT, taken)
    tls_port = _pick(DEFAULT_TLS_PORT, taken)
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(cert_path),
            "privateKey": str(key_path),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": CERT_VALIDITY_SECONDS,
            "domainBlocklist": [BLOCKED_DOMAIN],
        }
    }
    config_path = workdir / "pebble.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env.update(
        {
            "PEBBLE_VA_ALWAYS_VALID": "1",  # no DNS needed: every challenge is accepted
            "PEBBLE_VA_NOSLEEP": "1",  # no artificial validation delay
            "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce: tests stay deterministic
        }
    )
    log = (workdir / "pebble.log").open("wb")
    process = subprocess.Popen(
        [binary, "-config", str(config_path)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = PebbleServer(
        directory_url=f"https://127.0.0.1:{acme_port}/dir",
        ca_bundle=cert_path,
        http_port=http_port,
        tls_port=tls_port,
        management_url=f"https://127.0.0.1:{mgmt_port}",
        cert_validity_seconds=CERT_VALIDITY_SECONDS,
        workdir=workdir,
        blocked_domain=BLOCKED_DOMAIN,
        process=process,
    )
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
