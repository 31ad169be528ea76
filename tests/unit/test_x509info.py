"""Pure tests of unityctl.creds.x509info on certificates generated here with cryptography."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from unityctl.core.errors import ParseError
from unityctl.creds.x509info import (
    CertInfo,
    days_left,
    is_due,
    key_matches_certificate,
    parse_certificate,
    split_chain,
)

pytestmark = pytest.mark.backend_independent

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def make_cert(
    *,
    cn: str | None = "www.example.org",
    sans: list[x509.GeneralName] | None = None,
    key: object | None = None,
    issuer_cn: str = "Test Issuer CA",
    not_before: datetime = NOW - timedelta(days=30),
    lifetime: timedelta = timedelta(days=90),
    serial: int = 0x1A2B3C,
) -> tuple[str, object]:
    """A certificate PEM and its private key (self-issued by a throwaway issuer key)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
                                x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key


def key_pem(key: object, password: bytes | None = None) -> str:
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
    ).decode()


def info_with(lifetime: timedelta, remaining: timedelta) -> CertInfo:
    """A CertInfo whose expiry is ``remaining`` after NOW and whose life lasts ``lifetime``."""
    not_after = NOW + remaining
    return CertInfo(subject_cn="x", domains=("x",), issuer="CN=I", serial_hex="1",
                    not_before=not_after - lifetime, not_after=not_after,
                    fingerprint_sha256="0" * 64, key_type="ecdsa-p256")


# --- parse_certificate -----------------------------------------------------------------------


def test_parse_certificate_reads_cn_sans_issuer_serial_and_dates() -> None:
    pem, _ = make_cert(sans=[x509.DNSName("www.example.org"), x509.DNSName("example.org"),
                             x509.IPAddress(IPv4Address("192.0.2.7"))])
    info = parse_certificate(pem)
    assert info.subject_cn == "www.example.org"
    assert info.domains == ("www.example.org", "example.org", "192.0.2.7")
    assert info.issuer == "CN=Test Issuer CA,O=Test Org"
    assert info.serial_hex == "1a2b3c"
    assert info.not_before == NOW - timedelta(days=30)
    assert info.not_after == NOW + timedelta(days=60)
    assert info.not_after.tzinfo is not None and info.not_after.utcoffset() == timedelta(0)


def test_parse_certificate_fingerprint_is_the_lowercase_sha256_of_the_der() -> None:
    pem, _ = make_cert()
    expected = x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()
    assert parse_certificate(pem).fingerprint_sha256 == expected
    assert len(expected) == 64


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ecdsa-p256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ecdsa-p384"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-2048"),
        (ed25519.Ed25519PrivateKey.generate, "ed25519"),
    ],
)
def test_parse_certificate_names_the_key_type(key: object, expected: str) -> None:
    pem, _ = make_cert(key=key())  # type: ignore[operator]
    assert parse_certificate(pem).key_type == expected


def test_a_certificate_without_sans_has_no_domains_and_may_have_no_cn() -> None:
    pem, _ = make_cert(cn=None, sans=None)
    info = parse_certificate(pem)
    assert info.domains == ()
    assert info.subject_cn is None


def test_parse_certificate_describes_the_leaf_of_a_full_chain() -> None:
    leaf, _ = make_cert(cn="leaf.example.org")
    intermediate, _ = make_cert(cn="Intermediate")
    assert parse_certificate(leaf + intermediate).subject_cn == "leaf.example.org"


def test_parse_certificate_accepts_bytes() -> None:
    pem, _ = make_cert()
    assert parse_certificate(pem.encode()).serial_hex == "1a2b3c"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hello world",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgID\n-----END CERTIFICATE-----\n",
        b"\x30\x82\x01\xff\xfe",
    ],
    ids=["empty", "text", "not-base64", "truncated-der", "binary"],
)
def test_bad_pem_gives_a_one_line_parse_error(bad: str | bytes) -> None:
    with pytest.raises(ParseError) as err:
        parse_certificate(bad)
    assert "\n" not in str(err.value)
    assert "certificate" in str(err.value)


# --- split_chain -----------------------------------------------------------------------------


def test_split_chain_returns_each_certificate_in_order_and_ignores_text_between() -> None:
    a, _ = make_cert(cn="a")
    b, _ = make_cert(cn="b")
    parts = split_chain(f"subject=a\n{a}\nsome comment\n{b}")
    assert [parse_certificate(p).subject_cn for p in parts] == ["a", "b"]
    assert parts == [a, b]  # re-encoded PEM is byte-identical to cryptography's own


def test_split_chain_of_nothing_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        split_chain("no certificates here")


# --- key_matches_certificate -----------------------------------------------------------------


def test_the_certificates_own_key_matches_and_another_key_does_not() -> None:
    pem, key = make_cert()
    other = ec.generate_private_key(ec.SECP256R1())
    assert key_matches_certificate(pem, key_pem(key)) is True
    assert key_matches_certificate(pem, key_pem(other)) is False


def test_an_rsa_key_matches_its_rsa_certificate_in_traditional_format() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem, _ = make_cert(key=key)
    traditional = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()).decode()
    assert key_matches_certificate(pem, traditional) is True


def test_a_passphrase_protected_key_is_refused_with_a_clear_message() -> None:
    pem, key = make_cert()
    with pytest.raises(ParseError, match="passphrase"):
        key_matches_certificate(pem, key_pem(key, password=b"secret"))


def test_a_broken_key_gives_an_error_that_does_not_echo_the_key() -> None:
    pem, key = make_cert()
    lines = key_pem(key).splitlines()
    broken = "\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n"  # DER cut short
    with pytest.raises(ParseError) as err:
        key_matches_certificate(pem, broken)
    assert "private key" in str(err.value)
    for line in lines[1:-1]:
        assert line[:12] not in str(err.value)


# --- days_left / is_due ----------------------------------------------------------------------


def test_days_left_counts_fractional_days_and_goes_negative_after_expiry() -> None:
    assert days_left(info_with(timedelta(days=90), timedelta(days=60, hours=12)), NOW) == 60.5
    assert days_left(info_with(timedelta(days=90), -timedelta(days=2)), NOW) == -2


def test_days_left_refuses_a_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        days_left(info_with(timedelta(days=90), timedelta(days=10)), NOW.replace(tzinfo=None))


def test_a_90_day_certificate_60_days_before_expiry_is_not_due() -> None:
    pem, _ = make_cert(not_before=NOW - timedelta(days=30), lifetime=timedelta(days=90))
    assert is_due(parse_certificate(pem), NOW) is False


def test_a_90_day_certificate_29_days_before_expiry_is_due() -> None:
    pem, _ = make_cert(not_before=NOW - timedelta(days=61), lifetime=timedelta(days=90))
    assert is_due(parse_certificate(pem), NOW) is True


def test_the_renewal_window_in_days_is_configurable() -> None:
    # 40 days left of a year: the last third (121 days) is wider, so the day window decides.
    info = info_with(timedelta(days=365), timedelta(days=40))
    assert is_due(info, NOW, renew_before_days=30) is False
    assert is_due(info, NOW, renew_before_days=45) is True


def test_the_last_third_of_the_lifetime_caps_a_wide_day_window() -> None:
    # A 90-day certificate with 40 days left: a 45-day window alone would renew it, but its last
    # third starts at 30 days left, like certbot.
    assert is_due(info_with(timedelta(days=90), timedelta(days=40)), NOW, renew_before_days=45) is False
    assert is_due(info_with(timedelta(days=90), timedelta(days=30)), NOW, renew_before_days=45) is True


def test_a_long_lived_certificate_renews_at_the_day_window_not_a_year_early() -> None:
    # A 3-year certificate with 300 days left is inside its last third but far outside 30 days.
    assert is_due(info_with(timedelta(days=1095), timedelta(days=300)), NOW) is False
    assert is_due(info_with(timedelta(days=1095), timedelta(days=29)), NOW) is True


def test_a_24_hour_certificate_is_due_only_in_its_last_8_hours() -> None:
    assert is_due(info_with(timedelta(hours=24), timedelta(hours=7)), NOW) is True
    assert is_due(info_with(timedelta(hours=24), timedelta(hours=9)), NOW) is False


def test_a_certificate_shorter_than_the_day_window_is_not_due_right_after_issuance() -> None:
    assert is_due(info_with(timedelta(hours=24), timedelta(hours=23)), NOW) is False


def test_a_zero_day_window_renews_only_expired_certificates() -> None:
    assert is_due(info_with(timedelta(days=90), timedelta(hours=1)), NOW, renew_before_days=0) is False


def test_an_expired_certificate_is_due() -> None:
    assert is_due(info_with(timedelta(days=90), -timedelta(seconds=1)), NOW, 0) is True


def test_is_due_refuses_a_naive_now() -> None:
    with pytest.raises(ValueError):
        is_due(info_with(timedelta(days=90), timedelta(days=10)), NOW.replace(tzinfo=None))
