"""Pure helpers on PEM-encoded X.509 certificates and keys.

Everything here works on text the caller already holds (a certificate from the database, from
certbot, or from a live endpoint) and never touches the database. The one exception to "pure" is
:func:`fetch_served_certificate`, which performs a TLS handshake to read what an endpoint serves:
comparing that with the stored certificate detects a certificate that was renewed but whose
service was never reloaded.

Errors are one line (:mod:`unityctl.core.errors`) and never echo key material.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from unityctl.core.errors import ParseError, UnityctlError

__all__ = [
    "CertInfo",
    "days_left",
    "fetch_served_certificate",
    "is_due",
    "key_matches_certificate",
    "parse_certificate",
    "split_chain",
]

_BEGIN_CERT = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class CertInfo:
    """What unityctl needs to know about one certificate (the leaf of a PEM bundle).

    ``domains`` are the subject alternative names (DNS names, then IP addresses, in certificate
    order) because browsers and ACME CAs ignore the subject CN. ``serial_hex`` and
    ``fingerprint_sha256`` are lowercase hex without separators, the form ``step certificate
    fingerprint`` prints. ``not_before``/``not_after`` are timezone-aware UTC.
    """

    subject_cn: str | None
    domains: tuple[str, ...]
    issuer: str
    serial_hex: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    key_type: str

    @property
    def lifetime(self) -> timedelta:
        """The certificate's whole validity period (not_after - not_before)."""
        return self.not_after - self.not_before


def _to_text(pem: str | bytes) -> str:
    """Accept PEM as str or bytes; bytes that are not ASCII are not PEM."""
    if isinstance(pem, bytes):
        try:
            return pem.decode("ascii")
        except UnicodeDecodeError:
            raise ParseError("not a PEM certificate: the data is binary, not ASCII text") from None
    return pem


def _load_certificates(pem: str | bytes) -> list[x509.Certificate]:
    """Load every CERTIFICATE block of ``pem``.

    Raises:
        ParseError: no certificate block, or a block that does not decode.
    """
    text = _to_text(pem)
    if _BEGIN_CERT not in text:
        raise ParseError("not a PEM certificate: no '-----BEGIN CERTIFICATE-----' block found")
    try:
        certs = x509.load_pem_x509_certificates(text.encode("ascii"))
    except ValueError as exc:
        # cryptography's message names the failing ASN.1 element: useful, and never secret here.
        raise ParseError(f"not a valid PEM certificate: {exc}") from None
    if not certs:  # pragma: no cover - cryptography raises instead, kept as a guard
        raise ParseError("not a PEM certificate: no certificate found")
    return certs


def _key_type(public_key: object) -> str:
    """Name a public key the way the rest of unityctl stores it (e.g. ``ecdsa-p256``, ``rsa-2048``)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}
        return f"ecdsa-{curves.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "ed448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"dsa-{public_key.key_size}"
    return type(public_key).__name__.lower()


def _info(cert: x509.Certificate) -> CertInfo:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject_cn = str(cns[0].value) if cns else None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        domains = tuple(san.get_values_for_type(x509.DNSName)) + tuple(
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        domains = ()
    return CertInfo(
        subject_cn=subject_cn,
        domains=domains,
        issuer=cert.issuer.rfc4514_string(),
        serial_hex=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        key_type=_key_type(cert.public_key()),
    )


def parse_certificate(pem: str | bytes) -> CertInfo:
    """Describe the first certificate (the leaf) of a PEM certificate or chain.

    In: PEM text (str or bytes); a fullchain is accepted and its first block is described.
    Out: :class:`CertInfo`.
    Raises: ParseError when the text holds no decodable certificate.
    """
    return _info(_load_certificates(pem)[0])


def split_chain(pem: str | bytes) -> list[str]:
    """Split a PEM bundle (fullchain, chain) into one normalised PEM string per certificate.

    In: PEM text with one or more CERTIFICATE blocks (text between blocks is ignored).
    Out: the certificates in file order, each re-encoded as PEM ending in a newline.
    Raises: ParseError when no block decodes.
    """
    return [
        c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in _load_certificates(pem)
    ]


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches_certificate(cert_pem: str | bytes, key_pem: str | bytes) -> bool:
    """Tell whether ``key_pem`` is the private key of the (first) certificate in ``cert_pem``.

    In: certificate PEM; unencrypted private key PEM (PKCS#8, traditional RSA/EC, or OpenSSH).
    Out: True when the key's public half equals the certificate's public key.
    Raises: ParseError for a bad certificate, or a key that is unreadable or passphrase-protected.
        The message never contains the key.
    """
    cert = _load_certificates(cert_pem)[0]
    data = key_pem.encode("ascii", "replace") if isinstance(key_pem, str) else key_pem
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError when a password is needed.
        raise ParseError("the private key is passphrase-protected; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        # Deliberately no detail from the exception: nothing of the key may reach a message.
        raise ParseError("not a valid PEM private key") from None
    return _spki(key.public_key()) == _spki(cert.public_key())


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        # A naive datetime would silently be compared as local time: refuse it.
        raise ValueError("now must be a timezone-aware datetime (e.g. datetime.now(timezone.utc))")


def days_left(info: CertInfo, now: datetime) -> float:
    """Days (fractional) until ``info`` expires; negative once it has expired.

    In: a CertInfo and an aware ``now``.
    Raises: ValueError when ``now`` is naive.
    """
    _require_aware(now)
    return (info.not_after - now).total_seconds() / 86400.0


def is_due(info: CertInfo, now: datetime, renew_before_days: float = 30) -> bool:
    """Tell whether the certificate should be renewed now.

    Due when the time left is at most ``min(renew_before_days, lifetime / 3)``. The day window
    caps the lifetime rule and the lifetime rule caps the day window, which is what certbot and
    the ACME convention do in practice:

    * a 90-day Let's Encrypt certificate renews with 30 days left (both rules agree);
    * a 24 h step-ca certificate renews in its last 8 hours, not on every check (a 30-day window
      alone would call it due from the moment it was issued);
    * a 3-year certificate renews with ``renew_before_days`` left, not a year early.

    In: a CertInfo, an aware ``now``, the day window (``settings.creds.renew_before_days``).
    Out: True when a renewal is due (an expired certificate is always due).
    Raises: ValueError when ``now`` is naive.
    """
    _require_aware(now)
    remaining = info.not_after - now
    if remaining <= timedelta(0):
        return True
    window = min(timedelta(days=renew_before_days), info.lifetime / 3)
    return remaining <= window


def fetch_served_certificate(
    host: str, port: int = 443, server_name: str | None = None, timeout: float = 10.0
) -> str:
    """Return, as PEM, the leaf certificate a TLS endpoint serves.

    Verification is deliberately OFF: the point is to see what is served even when it is expired,
    self-signed or for the wrong name, and compare its fingerprint with the stored certificate.

    In: host and port to connect to, ``server_name`` for SNI (defaults to ``host``; an IP address
        sends no SNI, as TLS requires), timeout in seconds for connect and handshake.
    Out: the served leaf certificate as PEM.
    Raises: UnityctlError (one line) when the endpoint cannot be reached or the handshake fails.
    """
    name = server_name if server_name is not None else host
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sni = None if _is_ip(name) else name
    where = f"{host}:{port}" + (f" (SNI {sni})" if sni else "")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=sni) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror or str(exc)
        raise UnityctlError(f"cannot read the certificate served by {where}: {reason}") from None
    if not der:
        raise UnityctlError(f"{where} completed TLS without presenting a certificate")
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode("ascii")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True

