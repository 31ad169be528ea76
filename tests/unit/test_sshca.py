"""unityctl.creds.sshca: certificates checked with ssh-keygen -L, KRLs checked with ssh-keygen -Q."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from unityctl.core.errors import DecryptionError, ParseError, ProviderError, UsageError
from unityctl.creds import sshca, sshkeys

pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen missing"),
]

NOW = datetime(2030, 5, 17, 12, 0, 0, tzinfo=UTC)
CA = sshca.create_ca("unityctl test CA")
USER = sshkeys.generate("ed25519", None, "alice@laptop")


def _inspect(tmp_path: Path, cert_line: str) -> dict[str, object]:
    """Run ``ssh-keygen -L`` (in UTC) and return its fields; sections become lists."""
    path = tmp_path / "x-cert.pub"
    path.write_text(cert_line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)],
        capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"},
    ).stdout
    fields: dict[str, object] = {}
    section: list[str] | None = None
    for raw in out.splitlines()[1:]:
        line = raw.strip()
        if raw.startswith("                ") and section is not None:
            section.append(line)
            continue
        key, _, value = line.partition(": ")
        key = key.rstrip(":")
        if value.strip():
            fields[key] = value.strip()
            section = None
        else:
            section = []
            fields[key] = section
    return fields


def _sign_alice(**overrides: object) -> sshca.SignedCert:
    args: dict[str, object] = dict(
        serial=42, key_id="alice@unityctl", principals=["alice", "deploy"],
        valid_for=timedelta(hours=8), now=NOW,
    )
    args.update(overrides)
    return sshca.sign_user_key(CA.private_openssh, USER.public_openssh, **args)  # type: ignore[arg-type]


def test_a_user_certificate_reads_back_in_ssh_keygen_with_everything_we_asked_for(tmp_path: Path) -> None:
    cert = _sign_alice(source_address=["10.0.0.0/8", "192.168.1.5"], force_command="/usr/bin/backup")
    info = _inspect(tmp_path, cert.cert_line)
    assert info["Type"] == "ssh-ed25519-cert-v01@openssh.com user certificate"
    assert info["Public key"] == f"ED25519-CERT {USER.fingerprint_sha256}"
    assert str(info["Signing CA"]).startswith(f"ED25519 {CA.fingerprint_sha256}")
    assert info["Key ID"] == '"alice@unityctl"'
    assert info["Serial"] == "42"
    # Back-dated by 60 s for clock skew; ends exactly valid_for after now.
    assert info["Valid"] == "from 2030-05-17T11:59:00 to 2030-05-17T20:00:00"
    assert info["Principals"] == ["alice", "deploy"]
    assert info["Critical Options"] == [
        "force-command /usr/bin/backup",
        "source-address 10.0.0.0/8,192.168.1.5",
    ]
    assert info["Extensions"] == [
        "permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding",
        "permit-pty", "permit-user-rc",
    ]
    assert cert.valid_after == NOW - timedelta(seconds=60)
    assert cert.valid_before == NOW + timedelta(hours=8)
    assert (cert.serial, cert.key_id, cert.principals) == (42, "alice@unityctl", ("alice", "deploy"))
    assert cert.fingerprint == USER.fingerprint_sha256
    assert cert.cert_line.endswith(" alice@laptop")


def test_the_certificate_signature_verifies_against_the_ca_key() -> None:
    cert = serialization.load_ssh_public_identity(_sign_alice().cert_line.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    cert.verify_cert_signature()
    ca_pub = serialization.load_ssh_public_key(CA.public_openssh.encode())
    assert cert.signature_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ) == ca_pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def test_a_user_certificate_without_options_has_no_critical_options(tmp_path: Path) -> None:
    info = _inspect(tmp_path, _sign_alice(extensions=["permit-pty"]).cert_line)
    assert info["Critical Options"] == "(none)"
    assert info["Extensions"] == ["permit-pty"]


def test_a_host_certificate_names_the_hosts_and_carries_no_extensions(tmp_path: Path) -> None:
    host = sshkeys.generate("ecdsa", 384, "root@web1")
    cert = sshca.sign_host_key(
        CA.private_openssh, host.public_openssh, serial=7, key_id="web1",
        principals=["web1.lan", "10.0.0.5"], valid_for=sshca.parse_duration("52w"), now=NOW,
    )
    info = _inspect(tmp_path, cert.cert_line)
    assert info["Type"] == "ecdsa-sha2-nistp384-cert-v01@openssh.com host certificate"
    assert info["Principals"] == ["web1.lan", "10.0.0.5"]
    assert info["Extensions"] == "(none)" and info["Critical Options"] == "(none)"
    assert info["Valid"] == "from 2030-05-17T11:59:00 to 2031-05-16T12:00:00"


def test_an_encrypted_ca_key_signs_with_its_passphrase_and_refuses_without() -> None:
    encrypted = sshkeys.export_private(CA, b"ca-pass")
    cert = sshca.sign_user_key(
        encrypted, USER.public_openssh, serial=1, key_id="a", principals=["a"],
        valid_for=timedelta(minutes=5), ca_passphrase=b"ca-pass",
    )
    assert cert.serial == 1
    with pytest.raises(DecryptionError):
        sshca.sign_user_key(
            encrypted, USER.public_openssh, serial=1, key_id="a", principals=["a"],
            valid_for=timedelta(minutes=5), ca_passphrase=b"nope",
        )


def test_without_now_the_certificate_starts_a_minute_ago() -> None:
    before = datetime.now(UTC)
    cert = _sign_alice(now=None)
    assert before - timedelta(seconds=62) <= cert.valid_after <= before - timedelta(seconds=58)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"principals": []}, "principal"),
        ({"principals": ["a b"]}, "principal"),
        ({"serial": -1}, "serial"),
        ({"serial": 2**64}, "serial"),
        ({"key_id": ""}, "key id"),
        ({"valid_for": timedelta(0)}, "lifetime"),
        ({"now": datetime(2030, 1, 1)}, "timezone"),
        ({"source_address": ["10.0.0.0/33"]}, "source address"),
        ({"source_address": []}, "source-address"),
        ({"force_command": "a\nb"}, "force-command"),
        ({"extensions": ["permit pty"]}, "extension"),
    ],
)
def test_bad_signing_arguments_raise_usage_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _sign_alice(**overrides)


def test_signing_refuses_a_certificate_or_garbage_as_the_subject() -> None:
    cert_line = _sign_alice().cert_line
    with pytest.raises(UsageError, match="not a certificate"):
        sshca.sign_user_key(
            CA.private_openssh, cert_line, serial=1, key_id="a", principals=["a"],
            valid_for=timedelta(hours=1),
        )
    with pytest.raises(ParseError):
        sshca.sign_user_key(
            CA.private_openssh, "nonsense", serial=1, key_id="a", principals=["a"],
            valid_for=timedelta(hours=1),
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("8h", timedelta(hours=8)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 8H ", timedelta(hours=8)),
    ],
)
def test_parse_duration_understands_ssh_keygen_style_units(text: str, expected: timedelta) -> None:
    assert sshca.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "8", "h", "8x", "-8h", "8 h", "1.5h", "0h", "8h garbage", "99999999999999w"])
def test_parse_duration_rejects_anything_else_with_an_example(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        sshca.parse_duration(text)


def test_a_krl_revokes_certificates_by_serial_only_for_that_ca(tmp_path: Path) -> None:
    revoked = _sign_alice(serial=100)
    kept = _sign_alice(serial=101)
    other_ca = sshca.create_ca("other")
    same_serial_other_ca = sshca.sign_user_key(
        other_ca.private_openssh, USER.public_openssh, serial=100, key_id="x", principals=["x"],
        valid_for=timedelta(hours=1), now=NOW,
    )
    krl = sshca.build_krl(CA.public_openssh, revoked_serials=[100, 5], revoked_public_keys=[], workdir=tmp_path)
    assert krl[:8] == b"SSHKRL\n\x00"
    assert sshca.krl_revokes(krl, revoked.cert_line) is True
    assert sshca.krl_revokes(krl, kept.cert_line) is False
    assert sshca.krl_revokes(krl, same_serial_other_ca.cert_line) is False
    assert sshca.krl_revokes(krl, USER.public_openssh) is False
    assert list(tmp_path.iterdir()) == []  # the private work dir is gone


def test_a_krl_revokes_plain_public_keys_and_their_certificates(tmp_path: Path) -> None:
    bob = sshkeys.generate("rsa", 2048, "bob")
    krl = sshca.build_krl(
        CA.public_openssh, revoked_serials=[], revoked_public_keys=[USER.public_openssh], workdir=tmp_path
    )
    assert sshca.krl_revokes(krl, USER.public_openssh) is True
    assert sshca.krl_revokes(krl, _sign_alice().cert_line) is True
    assert sshca.krl_revokes(krl, bob.public_openssh) is False


def test_an_empty_krl_revokes_nothing() -> None:
    krl = sshca.build_krl(CA.public_openssh, revoked_serials=[], revoked_public_keys=[])
    assert sshca.krl_revokes(krl, _sign_alice().cert_line) is False


def test_build_krl_validates_its_inputs_before_running_ssh_keygen() -> None:
    with pytest.raises(UsageError, match="serial"):
        sshca.build_krl(CA.public_openssh, revoked_serials=[-3], revoked_public_keys=[])
    with pytest.raises(ParseError):
        sshca.build_krl(CA.public_openssh, revoked_serials=[], revoked_public_keys=["serial: 1"])
    with pytest.raises(UsageError, match="plain public key"):
        sshca.build_krl(_sign_alice().cert_line, revoked_serials=[], revoked_public_keys=[])


def test_a_corrupt_krl_is_reported_not_taken_as_not_revoked() -> None:
    with pytest.raises(ProviderError, match=re.compile("ssh-keygen", re.I)):
        sshca.krl_revokes(b"not a krl", USER.public_openssh)
