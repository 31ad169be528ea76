"""unityctl.creds.authorized_keys: marked edits that leave foreign lines alone, and the apply script."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unityctl.core.errors import ParseError, RemoteCommandError, StateError, UsageError
from unityctl.creds import authorized_keys as ak
from unityctl.creds import sshkeys

pytestmark = pytest.mark.backend_independent

# A few fixed keys: generating inside hypothesis examples would be slow for nothing.
ALICE = sshkeys.generate("ed25519", None, "alice@laptop")
BOB = sshkeys.generate("ecdsa", None, "bob@desk")
CAROL = sshkeys.generate("rsa", 2048, "")
FOREIGN_KEYS = [sshkeys.generate("ed25519", None, f"foreign{i}") for i in range(3)]


def test_add_appends_one_marked_line_that_keeps_the_original_comment() -> None:
    out = ak.add(b"", ALICE.public_openssh, key_name="alice-laptop", options=None)
    assert out == (
        f"{ALICE.public_openssh} unityctl:alice-laptop:{ALICE.fingerprint_sha256}\n".encode()
    )
    [line] = ak.list_managed(out)
    assert line.key_name == "alice-laptop"
    assert line.fingerprint == ALICE.fingerprint_sha256
    assert line.comment == "alice@laptop"
    assert line.line_number == 1 and line.options is None and line.key_type == "ed25519"


def test_add_writes_options_in_front_of_the_key() -> None:
    opts = 'from="10.0.0.0/8,192.168.1.0/24",no-port-forwarding,command="echo a b"'
    out = ak.add(b"", BOB.public_openssh, key_name="bob", options=opts)
    assert out.startswith(opts.encode() + b" ecdsa-sha2-nistp256 ")
    assert ak.list_managed(out)[0].options == opts


def test_add_is_idempotent() -> None:
    once = ak.add(b"# keys\n", ALICE.public_openssh, key_name="alice", options=None)
    assert ak.add(once, ALICE.public_openssh, key_name="alice", options=None) == once


def test_add_with_new_options_rewrites_the_managed_line_in_place() -> None:
    content = b"# head\n" + ak.add(b"", ALICE.public_openssh, key_name="alice") + b"# tail\n"
    out = ak.add(content, ALICE.public_openssh, key_name="alice", options="no-pty")
    lines = out.split(b"\n")
    assert lines[0] == b"# head" and lines[2] == b"# tail"
    assert lines[1].startswith(b"no-pty ssh-ed25519 ")
    assert len(ak.list_managed(out)) == 1


def test_add_leaves_the_file_alone_when_a_foreign_line_already_authorizes_the_key() -> None:
    content = f'from="1.2.3.4" {ALICE.public_openssh}\n'.encode()
    assert ak.add(content, ALICE.public_openssh, key_name="alice") == content
    assert ak.list_managed(content) == []
    assert ALICE.fingerprint_sha256 in ak.authorized_fingerprints(content)


def test_a_marker_on_the_incoming_line_is_not_doubled() -> None:
    first = ak.add(b"", ALICE.public_openssh, key_name="alice").decode().strip()
    again = ak.add(b"", first, key_name="alice")
    assert again.count(b"unityctl:") == 1


def test_add_follows_crlf_files_and_files_without_a_final_newline() -> None:
    crlf = b"# a\r\n# b\r\n"
    assert ak.add(crlf, BOB.public_openssh, key_name="bob").endswith(b"\r\n")
    assert ak.add(crlf, BOB.public_openssh, key_name="bob").startswith(crlf)
    bare = b"# no newline"
    out = ak.add(bare, BOB.public_openssh, key_name="bob")
    assert out.startswith(bare + b"\n") and not out.endswith(b"\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('from="10.0.0.0/8"\nssh-rsa AAAA', "newline"),
        ('from="10.0.0.0/8', "unbalanced"),
        ('command="echo "hi""x', "unbalanced|invalid"),
        ("no-pty, no-user-rc", "whitespace"),
        ("no-pty,,no-user-rc", "invalid"),
        ("from=10.0.0.0/8", "invalid"),
        ('no-pty="yes"', "takes no value"),
        ("command", "needs a value"),
        ("permit-everything", "unknown"),
        ("", "empty"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(options: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ak.add(b"", ALICE.public_openssh, key_name="alice", options=options)


def test_options_with_escaped_quotes_and_commas_inside_quotes_are_accepted() -> None:
    opts = r'command="echo \"a,b\" c",environment="X=1",restrict,pty'
    assert ak.validate_options(opts) == opts


@pytest.mark.parametrize("name", ["", "has space", "has:colon", "-leading-dash", "x" * 65, "tab\tname"])
def test_key_names_the_marker_cannot_carry_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="key name"):
        ak.add(b"", ALICE.public_openssh, key_name=name)


def test_add_refuses_options_inside_the_public_line_and_non_keys() -> None:
    with pytest.raises(UsageError, match="separately"):
        ak.add(b"", f"no-pty {ALICE.public_openssh}", key_name="a")
    with pytest.raises(ParseError):
        ak.add(b"", "# not a key", key_name="a")


def test_remove_takes_only_the_marked_line_of_that_key() -> None:
    foreign_same_key = f"{ALICE.public_openssh}\n".encode()
    content = foreign_same_key
    content = ak.add(content, BOB.public_openssh, key_name="bob")
    content = ak.add(content, CAROL.public_openssh, key_name="carol")
    out = ak.remove(content, key_name="bob")
    assert [m.key_name for m in ak.list_managed(out)] == ["carol"]
    assert out.startswith(foreign_same_key)
    # A foreign line holding a key is never removed, even when asked by fingerprint.
    assert ak.remove(foreign_same_key, fingerprint=ALICE.fingerprint_sha256) == foreign_same_key


def test_remove_by_fingerprint_and_by_both_selectors() -> None:
    content = ak.add(b"", BOB.public_openssh, key_name="bob")
    assert ak.remove(content, fingerprint=BOB.fingerprint_sha256) == b""
    assert ak.remove(content, key_name="bob", fingerprint=ALICE.fingerprint_sha256) == content
    with pytest.raises(UsageError):
        ak.remove(content)


def test_a_forged_marker_on_another_key_does_not_make_the_line_managed() -> None:
    forged = f"{CAROL.public_openssh} unityctl:bob:{BOB.fingerprint_sha256}\n".encode()
    assert ak.list_managed(forged) == []
    assert ak.remove(forged, key_name="bob") == forged


def test_the_marker_survives_a_comment_edited_in_front_of_it() -> None:
    content = ak.add(b"", ALICE.public_openssh, key_name="alice").replace(
        b"alice@laptop", b"alice@laptop (edited by hand)"
    )
    [line] = ak.list_managed(content)
    assert line.key_name == "alice" and line.comment == "alice@laptop (edited by hand)"


def test_rotation_adds_the_new_key_and_removes_the_old_by_fingerprint() -> None:
    content = ak.add(b"", ALICE.public_openssh, key_name="alice")
    content = ak.add(content, CAROL.public_openssh, key_name="alice")
    content = ak.remove(content, key_name="alice", fingerprint=ALICE.fingerprint_sha256)
    assert [m.fingerprint for m in ak.list_managed(content)] == [CAROL.fingerprint_sha256]


def test_diff_shows_the_added_line_and_hides_private_key_material() -> None:
    old = b"# keys\n" + ALICE.private_openssh.encode()
    new = ak.add(old, BOB.public_openssh, key_name="bob")
    text = ak.diff(old, new, "web1:~deploy/.ssh/authorized_keys")
    assert "--- a/web1:~deploy/.ssh/authorized_keys" in text
    assert "+" + BOB.public_openssh in text
    assert "PRIVATE KEY" not in text
    assert ALICE.private_openssh.splitlines()[1] not in text
    assert "[private key material hidden]" in text
    assert ak.diff(new, new, "x") == ""


# --- property: foreign content survives byte for byte --------------------------------------------

_foreign_key_line = st.builds(
    lambda key, opts, lead, sep, comment: f"{lead}{opts}{key.public_openssh.split()[0]}{sep}"
    f"{key.public_openssh.split()[1]}{sep}{comment}",
    st.sampled_from(FOREIGN_KEYS),
    st.sampled_from(["", 'from="10.0.0.1,10.0.0.2" ', 'command="echo a, b",no-pty\t', "restrict "]),
    st.sampled_from(["", " ", "\t", "  "]),
    st.sampled_from([" ", "\t", "   "]),
    st.sampled_from(["", "me@host", "two  words ", "unityctl:fake:SHA256:nope", "ünïcode"]),
)
_foreign_line = st.one_of(
    _foreign_key_line,
    st.sampled_from(["", "   ", "\t", "# comment", "#", "  # indented comment"]),
    st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=40),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")).map(
        lambda b: b.decode("latin-1")
    ),
)


@st.composite
def foreign_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_foreign_line, max_size=8))
    parts = []
    for line in lines:
        raw = line.encode("latin-1") if all(ord(c) < 256 for c in line) else line.encode()
        parts.append(raw + draw(st.sampled_from([b"\n", b"\r\n"])))
    content = b"".join(parts)
    if content and draw(st.booleans()):
        content = content.rstrip(b"\r\n")  # no final newline
    return content


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    content=foreign_files(),
    key=st.sampled_from([ALICE, BOB, CAROL]),
    options=st.sampled_from([None, "no-pty", 'from="10.0.0.0/8,fe80::/10",no-port-forwarding']),
)
def test_foreign_content_survives_add_then_remove_byte_for_byte(
    content: bytes, key: sshkeys.KeyMaterial, options: str | None
) -> None:
    added = ak.add(content, key.public_openssh, key_name="k1", options=options)
    assert added != content
    assert added.startswith(content.rstrip(b"\r\n")) or added.startswith(content)
    assert [m.key_name for m in ak.list_managed(added)] == ["k1"]
    assert ak.add(added, key.public_openssh, key_name="k1", options=options) == added
    assert ak.remove(added, key_name="k1") == content


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(before=foreign_files(), after=foreign_files())
def test_foreign_lines_around_managed_ones_survive_removing_them(before: bytes, after: bytes) -> None:
    if before and not before.endswith(b"\n"):
        before += b"\n"
    middle = ak.add(b"", BOB.public_openssh, key_name="bob")
    content = before + middle + after
    assert ak.remove(content, key_name="bob") == before + after
    assert ak.remove(content, key_name="nobody") == content


# --- the apply script ----------------------------------------------------------------------------


def _run_apply(
    home: Path,
    new: bytes,
    expected: str,
    *,
    new_sum: str | None = None,
    timeout: int = 5,
    path_env: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    env = {"HOME": str(home), "PATH": path_env or os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        ["/bin/sh", "-c", ak.apply_script(), "unityctl-authorized-keys", expected,
         new_sum or hashlib.sha256(new).hexdigest(), str(timeout)],
        input=new, env=env, capture_output=True, timeout=60,
    )


@pytest.fixture
def no_flock_path(tmp_path: Path) -> str:
    """A PATH with every tool the script uses except flock, to exercise the mkdir lock."""
    bindir = tmp_path / "bin-noflock"
    bindir.mkdir()
    for tool in ("mkdir", "chmod", "cat", "rm", "rmdir", "mv", "sleep", "find", "uname", "sha256sum"):
        found = shutil.which(tool)
        assert found, tool
        (bindir / tool).symlink_to(found)
    return str(bindir)


def test_the_script_creates_ssh_dir_and_file_with_strict_modes(tmp_path: Path) -> None:
    home = tmp_path / "home with space *"
    home.mkdir()
    new = ak.add(b"", ALICE.public_openssh, key_name="alice")
    result = _run_apply(home, new, ak.content_sha256(None))
    assert result.returncode == 0, result.stderr
    target = home / ".ssh" / "authorized_keys"
    assert target.read_bytes() == new
    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # Only the (empty) flock file may remain: no temp file, no lock directory.
    names = sorted(p.name for p in (home / ".ssh").iterdir())
    assert names in (["authorized_keys"], [".authorized_keys.unityctl.lock", "authorized_keys"])


def test_the_script_fixes_a_too_open_ssh_dir_and_replaces_the_file_atomically(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o755)
    ssh.chmod(0o755)
    old = b"# old\n"
    (ssh / "authorized_keys").write_bytes(old)
    (ssh / "authorized_keys").chmod(0o644)
    inode = (ssh / "authorized_keys").stat().st_ino
    new = ak.add(old, BOB.public_openssh, key_name="bob")
    result = _run_apply(tmp_path, new, ak.content_sha256(old))
    assert result.returncode == 0, result.stderr
    assert (ssh / "authorized_keys").read_bytes() == new
    assert (ssh / "authorized_keys").stat().st_ino != inode  # renamed over, not rewritten
    assert stat.S_IMODE(ssh.stat().st_mode) == 0o700
    assert stat.S_IMODE((ssh / "authorized_keys").stat().st_mode) == 0o600


def test_the_script_refuses_with_75_when_the_file_changed_since_it_was_read(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_bytes(b"# someone else edited this\n")
    result = _run_apply(tmp_path, b"# mine\n", ak.content_sha256(b"# what I read\n"))
    assert result.returncode == ak.APPLY_EXIT_CONFLICT == 75
    assert b"changed since it was read" in result.stderr
    assert (ssh / "authorized_keys").read_bytes() == b"# someone else edited this\n"
    # Expecting "absent" while a file exists is a conflict too.
    assert _run_apply(tmp_path, b"x\n", "absent").returncode == 75


def test_the_script_refuses_corrupted_content_with_65(tmp_path: Path) -> None:
    result = _run_apply(tmp_path, b"truncated", "absent", new_sum=hashlib.sha256(b"full").hexdigest())
    assert result.returncode == ak.APPLY_EXIT_BAD_CONTENT
    assert not (tmp_path / ".ssh" / "authorized_keys").exists()


@pytest.mark.parametrize("expected", ["", "abc", "ABSENT", "g" * 64])
def test_the_script_rejects_malformed_arguments_with_64(tmp_path: Path, expected: str) -> None:
    assert _run_apply(tmp_path, b"x", expected).returncode == ak.APPLY_EXIT_BAD_ARGS


def test_the_script_refuses_to_replace_a_symlink_with_78(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    real = tmp_path / "real_keys"
    real.write_bytes(b"# real\n")
    (ssh / "authorized_keys").symlink_to(real)
    result = _run_apply(tmp_path, b"# new\n", ak.content_sha256(b"# real\n"))
    assert result.returncode == ak.APPLY_EXIT_NOT_REGULAR
    assert (ssh / "authorized_keys").is_symlink() and real.read_bytes() == b"# real\n"


@pytest.mark.parametrize("lock", ["flock", "mkdir"])
def test_concurrent_runs_from_the_same_read_let_exactly_one_win(
    tmp_path: Path, lock: str, no_flock_path: str
) -> None:
    if lock == "flock" and shutil.which("flock") is None:
        pytest.skip("flock not installed")
    path_env = no_flock_path if lock == "mkdir" else None
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    base = b"# base\n"
    (ssh / "authorized_keys").write_bytes(base)
    contents = [base + f"# writer {i}\n".encode() for i in range(10)]
    results: dict[int, int] = {}

    def run(i: int) -> None:
        results[i] = _run_apply(
            tmp_path, contents[i], ak.content_sha256(base), path_env=path_env, timeout=30
        ).returncode

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(contents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, rc in results.items() if rc == 0]
    assert len(winners) == 1, results
    assert sorted(rc for rc in results.values() if rc != 0) == [75] * (len(contents) - 1)
    assert (ssh / "authorized_keys").read_bytes() == contents[winners[0]]
    assert not (ssh / ".authorized_keys.unityctl.lockdir").exists()


def test_a_held_flock_makes_the_script_wait_then_time_out_with_74(tmp_path: Path) -> None:
    if shutil.which("flock") is None:
        pytest.skip("flock not installed")
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    holder = subprocess.Popen(
        ["flock", str(ssh / ".authorized_keys.unityctl.lock"), "sleep", "30"]
    )
    try:
        deadline = time.monotonic() + 5
        while not (ssh / ".authorized_keys.unityctl.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        started = time.monotonic()
        result = _run_apply(tmp_path, b"x\n", "absent", timeout=1)
        assert result.returncode == ak.APPLY_EXIT_LOCK_TIMEOUT, result.stderr
        assert time.monotonic() - started >= 0.9
        assert not (ssh / "authorized_keys").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_live_mkdir_lock_makes_the_script_time_out_with_74(tmp_path: Path, no_flock_path: str) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    lockdir = ssh / ".authorized_keys.unityctl.lockdir"
    lockdir.mkdir()
    (lockdir / "owner").write_text(f"{os.uname().nodename} {os.getpid()}\n")  # we are alive
    result = _run_apply(tmp_path, b"x\n", "absent", timeout=1, path_env=no_flock_path)
    assert result.returncode == ak.APPLY_EXIT_LOCK_TIMEOUT, result.stderr
    assert lockdir.exists()  # somebody else's live lock is left alone


def test_a_stale_mkdir_lock_of_a_dead_process_is_broken(tmp_path: Path, no_flock_path: str) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lockdir = ssh / ".authorized_keys.unityctl.lockdir"
    lockdir.mkdir()
    (lockdir / "owner").write_text(f"{os.uname().nodename} {dead.pid}\n")
    result = _run_apply(tmp_path, b"x\n", "absent", timeout=2, path_env=no_flock_path)
    assert result.returncode == 0, result.stderr
    assert (ssh / "authorized_keys").read_bytes() == b"x\n"
    assert not lockdir.exists()


def test_apply_command_runs_the_script_through_a_shell(tmp_path: Path) -> None:
    new = b"# via command\n"
    command = ak.apply_command(
        expected_sha256=ak.content_sha256(None), new_sha256=ak.content_sha256(new), lock_timeout=5
    )
    result = subprocess.run(
        command, shell=True, input=new, env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".ssh" / "authorized_keys").read_bytes() == new
    with pytest.raises(UsageError):
        ak.apply_command(expected_sha256="nope", new_sha256=ak.content_sha256(new))


def test_apply_error_maps_the_conflict_to_a_retryable_state_error() -> None:
    assert ak.apply_error(0) is None
    assert isinstance(ak.apply_error(75), StateError)
    err = ak.apply_error(74)
    assert isinstance(err, RemoteCommandError) and "lock" in str(err)
    assert "99" in str(ak.apply_error(99))
