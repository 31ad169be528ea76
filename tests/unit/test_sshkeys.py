"""unityctl.creds.sshkeys: generation, import, parsing and fingerprints, checked against ssh-keygen."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa

from unityctl.core.errors import DecryptionError, ParseError, UnityctlError, UsageError
from unityctl.creds import sshkeys

pytestmark = pytest.mark.backend_independent

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen missing")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")


def _keygen_fingerprint(path: Path) -> tuple[int, str, str]:
    """(bits, fingerprint, type tag) as printed by ``ssh-keygen -lf``."""
    out = subprocess.run(
        ["ssh-keygen", "-E", "sha256", "-lf", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), out[1], out[-1]


def _ssh_keygen_pair(tmp_path: Path, *args: str, name: str = "id") -> Path:
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-f", str(path), *args], check=True, capture_output=True
    )
    return path


@needs_ssh_keygen
@pytest.mark.parametrize(
    ("key_type", "bits", "expected_bits", "tag"),
    [
        ("ed25519", None, 256, "(ED25519)"),
        ("rsa", None, 3072, "(RSA)"),
        ("rsa", 2048, 2048, "(RSA)"),
        ("ecdsa", None, 256, "(ECDSA)"),
        ("ecdsa", 384, 384, "(ECDSA)"),
        ("ecdsa", 521, 521, "(ECDSA)"),
    ],
)
def test_generated_keys_have_the_fingerprint_and_size_ssh_keygen_reports(
    tmp_path: Path, key_type: sshkeys.KeyType, bits: int | None, expected_bits: int, tag: str
) -> None:
    material = sshkeys.generate(key_type, bits, "alice@laptop")
    pub = tmp_path / "id.pub"
    pub.write_text(material.public_openssh + "\n")
    assert _keygen_fingerprint(pub) == (expected_bits, material.fingerprint_sha256, tag)
    assert material.bits == expected_bits
    assert material.key_type == key_type
    assert material.public_openssh.endswith(" alice@laptop")

    # The private half is a real OpenSSH key whose public half ssh-keygen derives identically.
    private = tmp_path / "id"
    private.write_text(material.private_openssh)
    private.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert derived[:2] == material.public_openssh.split()[:2]


@pytest.mark.parametrize(
    ("key_type", "bits"),
    [("rsa", 1024), ("rsa", 2047), ("rsa", 32768), ("ecdsa", 255), ("ed25519", 512), ("dsa", None)],
)
def test_generate_refuses_weak_or_impossible_sizes_and_types(key_type: str, bits: int | None) -> None:
    with pytest.raises(UsageError):
        sshkeys.generate(key_type, bits, "x")  # type: ignore[arg-type]


def test_generate_refuses_a_comment_with_a_newline() -> None:
    with pytest.raises(UsageError, match="single line"):
        sshkeys.generate("ed25519", None, "a\nssh-ed25519 AAAA evil")


def test_key_material_repr_and_str_hide_the_private_key() -> None:
    material = sshkeys.generate("ed25519", None, "c")
    body = material.private_openssh.splitlines()[1]
    for text in (repr(material), str(material), f"{material}", repr([material])):
        assert "PRIVATE" not in text
        assert body not in text
        assert "<hidden>" in text
    assert material.fingerprint_sha256 in repr(material)


def test_key_material_refuses_to_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(sshkeys.generate("ed25519", None, "c"))


@needs_ssh_keygen
def test_an_encrypted_openssh_key_made_by_ssh_keygen_loads_with_its_passphrase(tmp_path: Path) -> None:
    path = _ssh_keygen_pair(tmp_path, "-t", "ed25519", "-N", "correct horse", "-C", "enc@host")
    material = sshkeys.load_private(path.read_bytes(), b"correct horse")
    assert material.fingerprint_sha256 == _keygen_fingerprint(path.with_suffix(".pub"))[1]
    assert material.key_type == "ed25519"
    assert "ENCRYPTED" not in material.private_openssh  # stored unencrypted; encrypted at rest


@needs_ssh_keygen
def test_an_encrypted_openssh_key_with_a_wrong_passphrase_raises_a_one_line_decryption_error(
    tmp_path: Path,
) -> None:
    path = _ssh_keygen_pair(tmp_path, "-t", "ed25519", "-N", "correct horse")
    with pytest.raises(DecryptionError) as info:
        sshkeys.load_private(path.read_bytes(), b"wrong horse")
    assert str(info.value) == "wrong passphrase for the private key"
    assert "horse" not in str(info.value)


@needs_ssh_keygen
def test_an_encrypted_openssh_key_without_a_passphrase_says_one_is_needed(tmp_path: Path) -> None:
    path = _ssh_keygen_pair(tmp_path, "-t", "rsa", "-b", "2048", "-N", "pw")
    with pytest.raises(UsageError, match="passphrase is needed"):
        sshkeys.load_private(path.read_bytes(), None)


@needs_ssh_keygen
def test_an_unencrypted_openssh_key_keeps_its_comment_and_ignores_a_passphrase(tmp_path: Path) -> None:
    path = _ssh_keygen_pair(tmp_path, "-t", "ecdsa", "-b", "384", "-N", "", "-C", "bob@box two")
    material = sshkeys.load_private(path.read_bytes(), b"unneeded")
    assert material.comment == "bob@box two"
    assert (material.bits, material.key_type) == (384, "ecdsa")
    assert material.public_openssh.split()[:2] == path.with_suffix(".pub").read_text().split()[:2]


def test_an_explicit_comment_overrides_the_stored_one() -> None:
    material = sshkeys.generate("ed25519", None, "")
    assert sshkeys.load_private(material.private_openssh.encode(), None, comment="new").comment == "new"


def _pem(key: object, fmt: serialization.PrivateFormat, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)  # type: ignore[attr-defined]


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


_TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 for RSA, SEC1 for EC
_PKCS8 = serialization.PrivateFormat.PKCS8


@pytest.mark.parametrize(
    ("make", "fmt", "label"),
    [
        (_rsa, _TRADITIONAL, b"RSA PRIVATE KEY"),
        (_rsa, _PKCS8, b"PRIVATE KEY"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), _TRADITIONAL, b"EC PRIVATE KEY"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), _PKCS8, b"PRIVATE KEY"),
    ],
    ids=["pkcs1-rsa", "pkcs8-rsa", "sec1-ec", "pkcs8-ec"],
)
@pytest.mark.parametrize("password", [None, b"s3cret"], ids=["plain", "encrypted"])
def test_pem_private_keys_load_in_every_container_encrypted_or_not(
    make: object, fmt: serialization.PrivateFormat, label: bytes, password: bytes | None
) -> None:
    key = make()  # type: ignore[operator]
    data = _pem(key, fmt, password)
    assert b"BEGIN " + label in data or b"ENCRYPTED PRIVATE KEY" in data
    material = sshkeys.load_private(data, password)
    expected = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    assert material.public_openssh == expected
    if password:
        with pytest.raises(DecryptionError):
            sshkeys.load_private(data, b"not it")
        with pytest.raises(UsageError, match="passphrase is needed"):
            sshkeys.load_private(data, None)


def test_a_der_pkcs8_key_loads_too() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert sshkeys.load_private(der, None).bits == 384


@needs_openssl
def test_an_rsa_1024_pem_key_from_openssl_is_imported_and_flagged_weak(tmp_path: Path) -> None:
    path = tmp_path / "rsa1024.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(path), "1024"], check=True, capture_output=True
    )
    assert b"BEGIN RSA PRIVATE KEY" in path.read_bytes()
    material = sshkeys.load_private(path.read_bytes(), None)
    assert (material.key_type, material.bits) == ("rsa", 1024)
    assert material.weakness == "RSA 1024 < 2048 bits"


@needs_ssh_keygen
def test_a_dsa_key_is_importable_and_flagged_deprecated(tmp_path: Path) -> None:
    key = dsa.generate_private_key(1024)
    data = _pem(key, serialization.PrivateFormat.PKCS8)
    material = sshkeys.load_private(data, None)
    assert material.key_type == "dsa"
    assert material.weakness == "DSA keys are deprecated"
    pub = tmp_path / "dsa.pub"
    pub.write_text(material.public_openssh + "\n")
    assert _keygen_fingerprint(pub)[1] == material.fingerprint_sha256


@needs_ssh_keygen
def test_an_openssh_dsa_key_from_ssh_keygen_is_importable_and_flagged(tmp_path: Path) -> None:
    made = subprocess.run(
        ["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-C", "old", "-f", str(tmp_path / "id_dsa")],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip("this ssh-keygen no longer makes DSA keys")
    material = sshkeys.load_private((tmp_path / "id_dsa").read_bytes(), None)
    assert (material.key_type, material.bits, material.comment) == ("dsa", 1024, "old")
    assert material.weakness == "DSA keys are deprecated"
    assert material.fingerprint_sha256 == _keygen_fingerprint(tmp_path / "id_dsa.pub")[1]


def test_a_public_key_given_as_private_is_refused_as_not_a_private_key() -> None:
    material = sshkeys.generate("ed25519", None, "c")
    with pytest.raises(ParseError, match="not a private key"):
        sshkeys.load_private(material.public_openssh.encode(), None)
    pem_public = (
        serialization.load_ssh_public_key(material.public_openssh.encode())
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ParseError, match="not a private key"):
        sshkeys.load_private(pem_public, None)
    with pytest.raises(ParseError, match="not a private key"):
        sshkeys.load_private(b"hello world", None)


def test_a_key_type_ssh_cannot_use_is_refused_as_unsupported() -> None:
    data = _pem(ed448.Ed448PrivateKey.generate(), serialization.PrivateFormat.PKCS8)
    with pytest.raises(UsageError, match="unsupported"):
        sshkeys.load_private(data, None)
    k1 = _pem(ec.generate_private_key(ec.SECP256K1()), serialization.PrivateFormat.PKCS8)
    with pytest.raises(UsageError, match="unsupported"):
        sshkeys.load_private(k1, None)


def test_errors_never_contain_the_passphrase_or_key_material() -> None:
    key = rsa.generate_private_key(65537, 2048)
    data = _pem(key, serialization.PrivateFormat.PKCS8, b"Tr0ub4dor&3")
    with pytest.raises(UnityctlError) as info:
        sshkeys.load_private(data, b"Tr0ub4dor&4")
    text = str(info.value)
    assert "Tr0ub4dor" not in text and "PRIVATE" not in text and "\n" not in text


def test_export_with_a_passphrase_round_trips_and_is_encrypted() -> None:
    material = sshkeys.generate("ecdsa", None, "x")
    exported = sshkeys.export_private(material, b"pw")
    assert exported.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(UsageError, match="passphrase is needed"):
        sshkeys.load_private(exported.encode(), None)
    again = sshkeys.load_private(exported.encode(), b"pw")
    assert again.fingerprint_sha256 == material.fingerprint_sha256


@needs_ssh_keygen
def test_an_exported_passphrase_key_is_readable_by_ssh_keygen(tmp_path: Path) -> None:
    material = sshkeys.generate("ed25519", None, "x")
    path = tmp_path / "id"
    path.write_text(sshkeys.export_private(material, b"open sesame"))
    path.chmod(0o600)
    wrong = subprocess.run(["ssh-keygen", "-y", "-P", "nope", "-f", str(path)], capture_output=True)
    assert wrong.returncode != 0
    right = subprocess.run(
        ["ssh-keygen", "-y", "-P", "open sesame", "-f", str(path)], capture_output=True, text=True, check=True
    )
    assert right.stdout.split()[:2] == material.public_openssh.split()[:2]


def test_export_without_a_passphrase_is_unencrypted_and_empty_passphrases_are_refused() -> None:
    material = sshkeys.generate("ed25519", None, "x")
    assert sshkeys.load_private(sshkeys.export_private(material, None).encode(), None)
    with pytest.raises(UsageError, match="empty passphrase"):
        sshkeys.export_private(material, b"")


@needs_ssh_keygen
@pytest.mark.parametrize(
    ("args", "family", "bits"),
    [
        (("-t", "ed25519"), "ed25519", 256),
        (("-t", "rsa", "-b", "1024"), "rsa", 1024),
        (("-t", "ecdsa", "-b", "521"), "ecdsa", 521),
    ],
)
def test_parse_public_matches_ssh_keygen_for_pub_files_and_certificates(
    tmp_path: Path, args: tuple[str, ...], family: str, bits: int
) -> None:
    user = _ssh_keygen_pair(tmp_path, *args, "-N", "", "-C", "user@host  two  spaces")
    ca = _ssh_keygen_pair(tmp_path, "-t", "ed25519", "-N", "", name="ca")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "id", "-n", "u", str(user) + ".pub"],
        check=True, capture_output=True,
    )
    pub = user.with_suffix(".pub")
    cert = tmp_path / "id-cert.pub"
    for path, is_cert in ((pub, False), (cert, True)):
        parsed = sshkeys.parse_public(path.read_text())
        kbits, kfp, tag = _keygen_fingerprint(path)
        assert (parsed.bits, parsed.fingerprint) == (kbits, kfp)
        assert parsed.is_certificate is is_cert and tag.endswith("-CERT)") is is_cert
        assert parsed.key_type == family and parsed.bits == bits
        assert parsed.comment == "user@host  two  spaces"
    assert sshkeys.parse_public(cert.read_text()).ssh_type.endswith("-cert-v01@openssh.com")


def test_parse_public_reads_authorized_keys_options_with_quoted_spaces_and_commas() -> None:
    material = sshkeys.generate("ed25519", None, "")
    blob_line = material.public_openssh
    line = f'from="10.0.0.1,10.0.0.2",command="echo a, b" {blob_line} my key\r\n'
    parsed = sshkeys.parse_public(line)
    assert parsed.options == 'from="10.0.0.1,10.0.0.2",command="echo a, b"'
    assert parsed.comment == "my key"
    assert parsed.fingerprint == material.fingerprint_sha256
    assert parsed.line == f"{blob_line} my key"


def test_parse_public_reads_a_certificate_type_name_as_given() -> None:
    line = (
        "ssh-ed25519-cert-v01@openssh.com "
        "AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIK7Axw37YTM4H3Jj8McNC/WEK0tA5bADE9zWbdB44sVt"
        "AAAAIP+2r7JIZp9HsChsEja74KDC91nD+uTgH+P0risOsXHgAAAAAAAAAAcAAAABAAAAA2tpZAAAABAAAAAFYWxpY2UAAAAD"
        "Ym9iAAAAAGsHQ3YAAAAAawdRwgAAAEYAAAANZm9yY2UtY29tbWFuZAAAAA0AAAAJL2Jpbi90cnVlAAAADnNvdXJjZS1hZGRy"
        "ZXNzAAAADgAAAAoxMC4wLjAuMC84AAAAggAAABVwZXJtaXQtWDExLWZvcndhcmRpbmcAAAAAAAAAF3Blcm1pdC1hZ2VudC1m"
        "b3J3YXJkaW5nAAAAAAAAABZwZXJtaXQtcG9ydC1mb3J3YXJkaW5nAAAAAAAAAApwZXJtaXQtcHR5AAAAAAAAAA5wZXJtaXQt"
        "dXNlci1yYwAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBeWLarwmmhYZjy7Lz0OU/S4movOf5yKNQ/QpSus+ybxAAA"
        "AFMAAAALc3NoLWVkMjU1MTkAAABAxGA94NpzUTRwM0hMl0hNcvhQ3tsSFYY7JNCJe5Zu80+MPeXbKOUFcC9GRjtZXH2lLqjA"
        "dUHvEFgr6zVCzU8hDg== plain c"
    )
    parsed = sshkeys.parse_public(line)
    # Value printed by `ssh-keygen -lf` for this certificate when it was made.
    assert parsed.fingerprint == "SHA256:X7yxNZ0j+7vbqmFijmxefQLttBu0lIV+X/IHnypzkZw"
    assert parsed.is_certificate and parsed.key_type == "ed25519" and parsed.comment == "plain c"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "# ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRc3uinZrAI9VqifHuq0lMH39s4SYLBaYqOatqe6jXw",
        "ssh-ed25519",
        "ssh-ed25519 not-base64!!",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGRc3uinZrAI9VqifHuq0lMH39s4SYLBaYqOatqe6jXw",  # blob is ed25519
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRc",  # truncated
        'from="unterminated ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRc3uinZrAI9VqifHuq0lMH39s4SYLBaYqOatqe6jXw',
        "just some words here",
    ],
)
def test_parse_public_rejects_lines_that_are_not_keys(line: str) -> None:
    with pytest.raises(ParseError):
        sshkeys.parse_public(line)


def test_parse_public_calls_an_unknown_key_type_unsupported() -> None:
    with pytest.raises(UsageError, match="unsupported key type"):
        sshkeys.parse_public("ssh-quantum AAAAC3NzaC1lZDI1NTE5AAAAIGRc3uinZrAI9VqifHuq0lMH39s4SYLBaYqOatqe6jXw x")


def test_parse_public_fingerprints_security_key_lines_from_the_blob() -> None:
    import base64
    import struct

    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    blob = s(b"sk-ssh-ed25519@openssh.com") + s(b"\x01" * 32) + s(b"ssh:")
    line = "sk-ssh-ed25519@openssh.com " + base64.b64encode(blob).decode() + " yubikey"
    parsed = sshkeys.parse_public(line)
    assert parsed.key_type == "ed25519-sk" and parsed.bits == 256
    assert parsed.fingerprint == sshkeys.fingerprint_of_blob(blob)


@pytest.mark.parametrize(
    ("key_type", "bits", "expected"),
    [
        ("dsa", 1024, "DSA keys are deprecated"),
        ("ssh-dss", 1024, "DSA keys are deprecated"),
        ("rsa", 1024, "RSA 1024 < 2048 bits"),
        ("ssh-rsa-cert-v01@openssh.com", 1536, "RSA 1536 < 2048 bits"),
        ("rsa", 2048, None),
        ("ed25519", 256, None),
        ("ecdsa", 256, None),
    ],
)
def test_weakness_names_what_is_wrong_or_nothing(key_type: str, bits: int, expected: str | None) -> None:
    assert sshkeys.weakness(key_type, bits) == expected
