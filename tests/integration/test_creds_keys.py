"""`creds keys` generate/import/list/show/export/delete through the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from unityctl.creds import sshkeys


def _fp_from_ssh_keygen(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_a_generated_key_is_listed_and_shown_with_the_fingerprint_ssh_keygen_computes(icli, tmp_path):
    r = icli("creds", "keys", "generate", "laptop", "--comment", "me@laptop", "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert doc["type"] == "ed25519" and doc["bits"] == 256
    pub = tmp_path / "laptop.pub"
    r = icli("creds", "keys", "export", "laptop", "--public")
    assert r.code == 0
    pub.write_text(r.stdout)
    assert r.stdout.strip().endswith("me@laptop")
    assert _fp_from_ssh_keygen(pub) == doc["fingerprint"]
    listed = icli("creds", "keys", "list", "--json").json()
    assert [k["name"] for k in listed] == ["laptop"]
    shown = icli("creds", "keys", "show", "laptop", "--json").json()
    assert shown["fingerprint"] == doc["fingerprint"] and shown["deployments"] == []
    assert "created_at" in shown and shown["last_used_at"] is None
    text = icli("creds", "keys", "show", "laptop")
    assert doc["fingerprint"] in text.stdout and "ed25519 256 bits" in text.stdout


def test_the_private_key_never_appears_in_any_output_and_is_exported_only_to_a_0600_file(icli, tmp_path):
    icli("creds", "keys", "generate", "k", "--type", "rsa", "--bits", "2048")
    outputs = [icli("creds", "keys", *args) for args in (("list", "--json"), ("show", "k", "--json"), ("show", "k"))]
    assert all("PRIVATE KEY" not in r.stdout + r.stderr for r in outputs)
    refused = icli("creds", "keys", "export", "k", "--private")
    assert refused.code == 2 and "--out" in refused.stderr
    target = tmp_path / "k"
    r = icli("creds", "keys", "export", "k", "--private", "--out", str(target))
    assert r.code == 0, r.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in target.read_text()
    again = icli("creds", "keys", "export", "k", "--private", "--out", str(target))
    assert again.code == 2 and "--force" in again.stderr
    assert icli("creds", "keys", "export", "k", "--private", "--out", str(target), "--force").code == 0
    # ssh-keygen reads the exported file and derives the same public key.
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(target)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[1] == icli("creds", "keys", "export", "k", "--public").stdout.split()[1]


def test_an_encrypted_key_imports_with_its_passphrase_from_stdin_and_a_wrong_one_is_refused(icli, tmp_path):
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-C", "ops@host", "-f", str(path)], check=True)
    wrong = icli("creds", "keys", "import", "ops", str(path), "--passphrase-stdin", input="nope\n")
    assert wrong.code != 0 and "passphrase" in wrong.stderr.lower()
    no_tty = icli("creds", "keys", "import", "ops", str(path))
    assert no_tty.code == 2 and "stdin" in no_tty.stderr
    r = icli("creds", "keys", "import", "ops", str(path), "--passphrase-stdin", "--json", input="s3cret\n")
    assert r.code == 0, r.stderr
    assert r.json()["fingerprint"] == _fp_from_ssh_keygen(path.with_suffix(".pub"))
    assert "s3cret" not in r.stdout + r.stderr


def test_a_weak_rsa_key_is_flagged_in_list_and_show(icli, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "old.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    r = icli("creds", "keys", "import", "old", str(path))
    assert r.code == 0, r.stderr
    assert "weak" in r.stderr.lower()
    listed = icli("creds", "keys", "list")
    assert "WEAK" in listed.stdout
    shown = icli("creds", "keys", "show", "old", "--json").json()
    assert shown["weak"] and "1024" in shown["weakness"]


def test_generate_refuses_bad_names_sizes_and_duplicates(icli):
    assert icli("creds", "keys", "generate", "bad name").code == 2
    assert icli("creds", "keys", "generate", "r", "--type", "rsa", "--bits", "1024").code == 2
    assert icli("creds", "keys", "generate", "a").code == 0
    dup = icli("creds", "keys", "generate", "a")
    assert dup.code == 1 and "already exists" in dup.stderr


def test_deleting_a_key_removes_its_encrypted_private_half_and_is_audited(icli, db_url):
    icli("creds", "keys", "generate", "gone")
    assert icli("creds", "keys", "delete", "gone").code == 0
    missing = icli("creds", "keys", "show", "gone")
    assert missing.code == 1 and "no SSH key" in missing.stderr
    from sqlalchemy import text

    from unityctl.core.db import make_engine

    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM secret WHERE owner_type = 'ssh_key'")).scalar() == 0
    engine.dispose()
    actions = [r["action"] for r in icli("audit", "list", "--json").json()]
    assert "creds.keys.generate" in actions and "creds.keys.delete" in actions
    assert icli("audit", "verify").code == 0


def test_a_generated_key_loads_back_through_the_building_blocks(icli, tmp_path):
    icli("creds", "keys", "generate", "e", "--type", "ecdsa", "--bits", "384")
    out = tmp_path / "e"
    icli("creds", "keys", "export", "e", "--private", "--out", str(out))
    material = sshkeys.load_private(out.read_bytes())
    assert material.key_type == "ecdsa" and material.bits == 384
    assert os.stat(out).st_uid == os.getuid()


@pytest.mark.parametrize("args", [("export", "nokey", "--public"), ("delete", "nokey"), ("show", "nokey")])
def test_commands_on_an_unknown_key_say_so_in_one_line(icli, args):
    r = icli("creds", "keys", *args)
    assert r.code == 1 and r.stderr.count("\n") == 1 and "nokey" in r.stderr
