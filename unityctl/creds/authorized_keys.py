"""Pure edits of an ``authorized_keys`` file, and the script that applies them remotely.

The marker
----------
Every line unityctl adds ends its comment field with one token::

    [options] <ssh_type> <base64 key> [original comment] unityctl:<key-name>:<fingerprint>

for example ``ssh-ed25519 AAAA... alice@laptop unityctl:alice-laptop:SHA256:Jr9kBf1Xk...``.
``<key-name>`` is 1-64 characters of ``A-Z a-z 0-9 . _ @ + -`` (no colon, no space) and
``<fingerprint>`` the key's ``SHA256:`` fingerprint (43 base64 characters). sshd ignores the
comment field, and tools that rewrite comments usually keep its tail, so the marker survives.
A line counts as *managed* only if the marker's fingerprint equals the fingerprint of the key on
that same line: a marker copied onto another key by hand does not make that line ours.

Every other line ("foreign": keys added by people or other tools, comments, blank lines, lines we
cannot parse) is kept byte for byte, whatever its whitespace, line ending (LF or CRLF) or the
lack of a final newline. :func:`add` followed by :func:`remove` gives back the original bytes.

Applying an edit remotely
-------------------------
:func:`apply_script` returns a POSIX ``sh`` script; :func:`apply_command` the command line that
runs it. Its stdin is the new file content; its arguments are the SHA-256 of the file as it was
read (``absent`` when there was no file, see :func:`content_sha256`), the SHA-256 of the new
content, and optionally a lock timeout in seconds (default 30). Exit codes are the
``APPLY_EXIT_*`` constants below (described in :data:`APPLY_EXIT_CODES`).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import shlex
from dataclasses import dataclass

from unityctl.core.errors import ParseError, UnityctlError, UsageError
from unityctl.creds import sshkeys

MARKER_PREFIX = "unityctl"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}"
_NAME_RE = re.compile(rf"^{_NAME}\Z")
_FP = r"SHA256:[A-Za-z0-9+/]{43}"
_MARKER_RE = re.compile(rf"(?:^|[ \t])unityctl:(?P<name>{_NAME}):(?P<fp>{_FP})\Z")

# sshd's authorized_keys options (sshd(8) "AUTHORIZED_KEYS FILE FORMAT"); sshd ignores a line
# with an unknown option, which would silently lock the user out, so we refuse them up front.
_FLAG_OPTIONS = {
    "agent-forwarding", "cert-authority", "no-agent-forwarding", "no-port-forwarding", "no-pty",
    "no-user-rc", "no-x11-forwarding", "port-forwarding", "pty", "no-touch-required",
    "verify-required", "restrict", "user-rc", "x11-forwarding",
}  # fmt: skip
_VALUE_OPTIONS = {
    "command", "environment", "expiry-time", "from", "permitlisten", "permitopen", "principals",
    "tunnel",
}  # fmt: skip
_OPTION_RE = re.compile(r'([A-Za-z0-9-]+)(?:="((?:[^"\\]|\\.)*)")?\Z', re.S)


@dataclass(frozen=True)
class ManagedLine:
    """One line of an authorized_keys file that unityctl added (``line_number`` is 1-based)."""

    line_number: int
    key_name: str
    fingerprint: str
    key_type: str
    options: str | None
    comment: str
    text: str


def marker(key_name: str, fingerprint: str) -> str:
    """The marker token for a key, e.g. ``unityctl:alice-laptop:SHA256:...``.

    Raises: UsageError for a key name or fingerprint the marker cannot carry.
    """
    if not _NAME_RE.match(key_name):
        raise UsageError(
            f"key name {key_name[:40]!r} cannot be used in authorized_keys: use 1-64 of "
            "A-Z a-z 0-9 . _ @ + - (starting with a letter or digit)"
        )
    if not re.fullmatch(_FP, fingerprint):
        raise UsageError("a key fingerprint must look like SHA256:<43 base64 characters>")
    return f"{MARKER_PREFIX}:{key_name}:{fingerprint}"


def validate_options(options: str) -> str:
    """Check an authorized_keys options field such as ``from="10.0.0.0/8",no-port-forwarding``.

    Out: the options unchanged. Raises: UsageError naming the problem (newline, unbalanced quote,
    unquoted whitespace, empty or unknown option, missing or unexpected value).
    """
    if any(ch in options for ch in "\r\n\x00"):
        raise UsageError("authorized_keys options must not contain a newline")
    if not options:
        raise UsageError("authorized_keys options are empty: pass no options instead")
    items: list[str] = []
    current: list[str] = []
    in_quotes = False
    i = 0
    while i < len(options):
        ch = options[i]
        if in_quotes and ch == "\\" and i + 1 < len(options):
            current.append(options[i : i + 2])
            i += 2
            continue
        if ch == '"':
            in_quotes = not in_quotes
        elif ch in " \t" and not in_quotes:
            raise UsageError("authorized_keys options contain whitespace outside double quotes")
        elif ch == "," and not in_quotes:
            items.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    if in_quotes:
        raise UsageError("authorized_keys options have an unbalanced double quote")
    items.append("".join(current))
    for item in items:
        match = _OPTION_RE.match(item)
        if not item or not match:
            raise UsageError(f"invalid authorized_keys option {item[:40]!r}")
        name, value = match.group(1).lower(), match.group(2)
        if name in _FLAG_OPTIONS:
            if value is not None:
                raise UsageError(f"authorized_keys option {name!r} takes no value")
        elif name in _VALUE_OPTIONS:
            if value is None:
                raise UsageError(f'authorized_keys option {name!r} needs a value: {name}="..."')
        else:
            raise UsageError(f"unknown authorized_keys option {name!r}")
    return options


def add(content: bytes, public_line: str, *, key_name: str, options: str | None = None) -> bytes:
    """Authorize a key, marked as managed by unityctl.

    In: the current file bytes (``b""`` when absent), a ``.pub`` line (no options), the key's
    unityctl name and optional options.
    Out: the new bytes. Idempotent: unchanged when the same managed line is present; a managed
    line for the same name and key with other options is rewritten in place; unchanged as well
    when the key is already authorized by another line (a second line would be shadowed by the
    first anyway, and that line is not ours to edit). New lines use the file's line ending and
    keep its convention about a final newline.
    Raises: UsageError (bad name/options, options inside ``public_line``), ParseError (not a key).
    """
    key = sshkeys.parse_public(public_line)
    if key.options is not None:
        raise UsageError("pass authorized_keys options separately, not inside the public key line")
    if options is not None:
        validate_options(options)
    new_text = _render(key, key_name=key_name, options=options)
    lines = _split_lines(content)
    replace_at: int | None = None
    for index, (body, _ending) in enumerate(lines):
        parsed = _parse_line(body)
        if parsed is None or parsed[0].fingerprint != key.fingerprint:
            continue
        found, managed_name = parsed
        if managed_name == key_name:
            if body == new_text.encode():
                return content
            replace_at = index
            break
        return content  # already authorized by a line that is not ours (or another name)
    if replace_at is not None:
        lines[replace_at] = (new_text.encode(), lines[replace_at][1])
        return _join(lines)
    newline = _dominant_newline(lines)
    if lines and lines[-1][1] == b"":
        # The file has no final newline: end the last line, and keep "no final newline" as the
        # file's convention so that removing our line restores the exact original bytes.
        lines[-1] = (lines[-1][0], newline)
        lines.append((new_text.encode(), b""))
    else:
        lines.append((new_text.encode(), newline))
    return _join(lines)


def remove(content: bytes, *, key_name: str | None = None, fingerprint: str | None = None) -> bytes:
    """Remove the managed lines of one key; every other line stays byte for byte.

    In: file bytes and ``key_name`` and/or ``fingerprint`` (both must match when both are given).
    Out: the new bytes (unchanged when nothing matched). Lines without a valid unityctl marker are
    never removed, even if they hold the same key.
    Raises: UsageError when neither ``key_name`` nor ``fingerprint`` is given.
    """
    if key_name is None and fingerprint is None:
        raise UsageError("say which key to remove: a key name or a fingerprint")
    lines = _split_lines(content)
    kept: list[tuple[bytes, bytes]] = []
    removed_unterminated_last = False
    for index, (body, ending) in enumerate(lines):
        parsed = _parse_line(body)
        if parsed is not None and parsed[1] is not None:
            key, name = parsed
            if (key_name is None or name == key_name) and (
                fingerprint is None or key.fingerprint == fingerprint
            ):
                if index == len(lines) - 1 and ending == b"":
                    removed_unterminated_last = True
                continue
        kept.append((body, ending))
    if len(kept) == len(lines):
        return content
    if removed_unterminated_last and kept:
        # Mirror of add(): the file had no final newline, so the new last line gets none either.
        kept[-1] = (kept[-1][0], b"")
    return _join(kept)


def list_managed(content: bytes) -> list[ManagedLine]:
    """All lines unityctl added, in file order (foreign and unparsable lines are skipped)."""
    result: list[ManagedLine] = []
    for number, (body, _ending) in enumerate(_split_lines(content), start=1):
        parsed = _parse_line(body)
        if parsed is None or parsed[1] is None:
            continue
        key, name = parsed
        match = _MARKER_RE.search(key.comment)
        assert match is not None
        result.append(
            ManagedLine(
                line_number=number,
                key_name=name,
                fingerprint=key.fingerprint,
                key_type=key.key_type,
                options=key.options,
                comment=key.comment[: match.start()].rstrip(" \t"),
                text=body.decode("utf-8").rstrip("\r"),
            )
        )
    return result


def authorized_fingerprints(content: bytes) -> set[str]:
    """Fingerprints of every key the file authorizes, managed or not."""
    result: set[str] = set()
    for body, _ending in _split_lines(content):
        parsed = _parse_line(body)
        if parsed is not None:
            result.add(parsed[0].fingerprint)
    return result


_PRIVATE_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PRIVATE_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")


def diff(old: bytes, new: bytes, label: str) -> str:
    """A unified diff of two versions of the file, for ``--dry-run``.

    Out: the diff text (``""`` when equal), headed ``a/<label>`` / ``b/<label>``. Lines of a
    private key pasted into the file by mistake are replaced by ``[private key material hidden]``,
    so the diff can be printed or logged safely.
    """
    if old == new:
        return ""
    before = _redact(old.decode("utf-8", "replace").splitlines())
    after = _redact(new.decode("utf-8", "replace").splitlines())
    lines = difflib.unified_diff(before, after, f"a/{label}", f"b/{label}", lineterm="")
    return "\n".join(lines) + "\n"


def content_sha256(content: bytes | None) -> str:
    """The "expected" argument of the apply script: hex SHA-256, or ``absent`` for no file."""
    return "absent" if content is None else hashlib.sha256(content).hexdigest()


APPLY_EXIT_OK = 0
APPLY_EXIT_BAD_ARGS = 64
APPLY_EXIT_BAD_CONTENT = 65
APPLY_EXIT_NO_SHA256 = 69
APPLY_EXIT_CANT_WRITE = 73
APPLY_EXIT_LOCK_TIMEOUT = 74
APPLY_EXIT_CONFLICT = 75
APPLY_EXIT_NOT_REGULAR = 78

APPLY_EXIT_CODES: dict[int, str] = {
    APPLY_EXIT_OK: "authorized_keys written (or already had this content)",
    APPLY_EXIT_BAD_ARGS: "bad arguments to the apply script",
    APPLY_EXIT_BAD_CONTENT: "the new content arrived corrupted (checksum mismatch); nothing written",
    APPLY_EXIT_NO_SHA256: "no sha256 tool (sha256sum, shasum, sha256, openssl) on the server",
    APPLY_EXIT_CANT_WRITE: "cannot create ~/.ssh, the temporary file, or rename it into place",
    APPLY_EXIT_LOCK_TIMEOUT: "another edit held the lock for too long; nothing written",
    APPLY_EXIT_CONFLICT: "authorized_keys changed since it was read; nothing written, re-read and retry",
    APPLY_EXIT_NOT_REGULAR: "authorized_keys is a symlink or not a regular file; refused",
}

# Why stdin is read before the lock: the caller can finish sending and the lock is held only
# for the compare-and-rename. Why the temp file lives in ~/.ssh: rename(2) is atomic only within
# one file system. Why a ".break" lock around stale-lock removal: two waiters that both saw the
# same dead owner must not both delete the lock, or the second would delete the first's new lock.
_APPLY_SCRIPT = r"""
# unityctl: apply an authorized_keys edit atomically (POSIX sh).
# usage: sh -c "$script" unityctl-authorized-keys EXPECTED_SHA256|absent NEW_SHA256 [LOCK_TIMEOUT]
# stdin: the new file content. Exit codes: 0 ok, 64 bad args, 65 content corrupted, 69 no sha256
# tool, 73 cannot write, 74 lock timeout, 75 file changed since read (CAS), 78 not a regular file.
set -u
set -f  # no globbing: checksum tool output such as "*stdin" is split into words below
umask 077
expected=${1-}
new_sum=${2-}
timeout=${3-30}
[ -n "${HOME-}" ] || { printf 'unityctl: HOME is not set\n' >&2; exit 64; }
ssh_dir="$HOME/.ssh"
target="$ssh_dir/authorized_keys"
tmp="$ssh_dir/.authorized_keys.unityctl.$$"
lock_file="$ssh_dir/.authorized_keys.unityctl.lock"
lock_dir="$ssh_dir/.authorized_keys.unityctl.lockdir"
have_tmp=0
have_lockdir=0

fail() { printf 'unityctl: %s\n' "$2" >&2; exit "$1"; }
cleanup() {
  [ "$have_tmp" = 1 ] && rm -f "$tmp"
  [ "$have_lockdir" = 1 ] && rm -rf "$lock_dir"
  :
}
trap cleanup EXIT
trap 'exit 130' HUP INT TERM

is_sha() { case $1 in ''|*[!0-9a-f]*) return 1 ;; esac; [ "${#1}" -eq 64 ]; }
[ "$expected" = absent ] || is_sha "$expected" || fail 64 "expected checksum must be 64 hex digits or 'absent'"
is_sha "$new_sum" || fail 64 "new checksum must be 64 hex digits"
case $timeout in ''|*[!0-9]*) fail 64 "lock timeout must be a whole number of seconds" ;; esac

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then _out=$(sha256sum < "$1") || return 1
  elif command -v shasum >/dev/null 2>&1; then _out=$(shasum -a 256 < "$1") || return 1
  elif command -v sha256 >/dev/null 2>&1; then _out=$(sha256 -q < "$1") || return 1
  elif command -v openssl >/dev/null 2>&1; then _out=$(openssl dgst -sha256 -r < "$1") || return 1
  else return 2
  fi
  set -- $_out
  printf '%s\n' "$1"
}

mkdir -p "$ssh_dir" || fail 73 "cannot create $ssh_dir"
chmod 700 "$ssh_dir" || fail 73 "cannot chmod 700 $ssh_dir"

rm -f "$tmp"
have_tmp=1
( set -C; cat > "$tmp" ) || fail 73 "cannot write a temporary file in $ssh_dir"
got=$(sha256_of "$tmp"); rc=$?
[ "$rc" -eq 2 ] && fail 69 "no sha256 tool found"
[ "$rc" -eq 0 ] || fail 73 "cannot read back the temporary file"
[ "$got" = "$new_sum" ] || fail 65 "new content checksum mismatch (transfer corrupted)"
chmod 600 "$tmp" || fail 73 "cannot chmod 600 the temporary file"

# --- exclusive lock: flock(1) when present, else an atomic mkdir with stale detection --------
owner_alive() {
  # Lock dir content "<host> <pid>": a dead pid on this host means a stale lock; a lock without
  # an owner (died between mkdir and writing it) or from another host is stale after 10 minutes.
  _owner=$(cat "$lock_dir/owner" 2>/dev/null) || _owner=
  set -- $_owner
  if [ "$#" -eq 2 ] && [ "$1" = "$(uname -n)" ]; then
    kill -0 "$2" 2>/dev/null
    return
  fi
  if [ "$#" -eq 0 ]; then
    [ -z "$(find "$lock_dir" -prune -mmin +1 2>/dev/null)" ]
  else
    [ -z "$(find "$lock_dir" -prune -mmin +10 2>/dev/null)" ]
  fi
}
break_stale_lock() {
  if mkdir "$lock_dir.break" 2>/dev/null; then
    # Re-check under the break lock: someone may have broken it and taken it meanwhile.
    if [ -d "$lock_dir" ] && ! owner_alive; then rm -rf "$lock_dir"; fi
    rmdir "$lock_dir.break"
  elif [ -n "$(find "$lock_dir.break" -prune -mmin +1 2>/dev/null)" ]; then
    rmdir "$lock_dir.break" 2>/dev/null
  fi
}
if command -v flock >/dev/null 2>&1; then
  exec 9>>"$lock_file" || fail 73 "cannot open $lock_file"
  flock -w "$timeout" 9 || fail 74 "timed out waiting for the authorized_keys lock"
else
  waited=0
  while ! mkdir "$lock_dir" 2>/dev/null; do
    if [ -d "$lock_dir" ] && ! owner_alive; then
      break_stale_lock
      continue
    fi
    [ "$waited" -ge "$timeout" ] && fail 74 "timed out waiting for the authorized_keys lock"
    sleep 1
    waited=$((waited + 1))
  done
  have_lockdir=1
  printf '%s %s\n' "$(uname -n)" "$$" > "$lock_dir/owner"
fi

# --- compare-and-swap ------------------------------------------------------------------------
if [ -L "$target" ] || { [ -e "$target" ] && [ ! -f "$target" ]; }; then
  fail 78 "$target is a symlink or not a regular file; refusing to replace it"
fi
if [ -e "$target" ]; then
  current=$(sha256_of "$target") || fail 73 "cannot read $target"
else
  current=absent
fi
[ "$current" = "$expected" ] || fail 75 "authorized_keys changed since it was read"
mv -f "$tmp" "$target" || fail 73 "cannot move the new file into place"
have_tmp=0
exit 0
"""


def apply_script() -> str:
    """The POSIX ``sh`` script that writes a new authorized_keys atomically on the server.

    Steps: ``mkdir -p ~/.ssh``, ``chmod 700``; stdin to a temp file in ``~/.ssh`` (checked against
    the new SHA-256, ``chmod 600``); exclusive lock (``flock`` if present, else a ``mkdir`` lock
    whose dead owner is detected); compare the current file's SHA-256 with the expected one; ``mv``
    over authorized_keys. Exit codes: see :data:`APPLY_EXIT_CODES`.
    """
    return _APPLY_SCRIPT.lstrip("\n")


def apply_command(*, expected_sha256: str, new_sha256: str, lock_timeout: int = 30) -> str:
    """The remote command line running :func:`apply_script`; feed the new content on its stdin.

    Needs a Bourne-style login shell (sh, bash, dash, zsh, ash) on the server, as the script is
    passed single-quoted with newlines. Raises: UsageError for malformed checksums or timeout.
    """
    if expected_sha256 != "absent" and not re.fullmatch(r"[0-9a-f]{64}", expected_sha256):
        raise UsageError("expected checksum must be 64 lowercase hex digits or 'absent'")
    if not re.fullmatch(r"[0-9a-f]{64}", new_sha256):
        raise UsageError("new checksum must be 64 lowercase hex digits")
    if lock_timeout < 0:
        raise UsageError("lock timeout must not be negative")
    return " ".join(
        [
            "sh -c",
            shlex.quote(apply_script()),
            "unityctl-authorized-keys",
            expected_sha256,
            new_sha256,
            str(int(lock_timeout)),
        ]
    )


def apply_error(exit_code: int) -> UnityctlError | None:
    """Translate the script's exit code into an error to raise (None for success).

    75 (changed since read) becomes a StateError so callers can re-read and retry.
    """
    from unityctl.core.errors import RemoteCommandError, StateError

    if exit_code == APPLY_EXIT_OK:
        return None
    text = APPLY_EXIT_CODES.get(exit_code, f"authorized_keys apply script exited {exit_code}")
    if exit_code == APPLY_EXIT_CONFLICT:
        return StateError(text)
    return RemoteCommandError(text)


# --- internals ---------------------------------------------------------------------------------


def _render(key: sshkeys.PublicKey, *, key_name: str, options: str | None) -> str:
    # A marker already on the incoming line (copied from a file we wrote) must not be doubled.
    comment = _MARKER_RE.sub("", key.comment).rstrip(" \t")
    parts = [options, key.ssh_type, key.blob_b64, comment, marker(key_name, key.fingerprint)]
    return " ".join(p for p in parts if p)


def _split_lines(content: bytes) -> list[tuple[bytes, bytes]]:
    """Split into (body, ending) with ending b"\\r\\n", b"\\n" or b"" (last line only).

    Only LF ends a line (as for sshd); a lone CR stays part of the body.
    """
    lines: list[tuple[bytes, bytes]] = []
    for chunk in content.split(b"\n"):
        lines.append((chunk, b"\n"))
    last_body, _ = lines.pop()  # the text after the final LF: b"" when the file ends with LF
    if last_body:
        lines.append((last_body, b""))
    result: list[tuple[bytes, bytes]] = []
    for body, ending in lines:
        if ending == b"\n" and body.endswith(b"\r"):
            result.append((body[:-1], b"\r\n"))
        else:
            result.append((body, ending))
    return result


def _join(lines: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(body + ending for body, ending in lines)


def _dominant_newline(lines: list[tuple[bytes, bytes]]) -> bytes:
    crlf = sum(1 for _b, e in lines if e == b"\r\n")
    lf = sum(1 for _b, e in lines if e == b"\n")
    return b"\r\n" if crlf > lf else b"\n"


def _parse_line(body: bytes) -> tuple[sshkeys.PublicKey, str | None] | None:
    """(key, managed key name or None) for a key line; None for anything that is not a key."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        key = sshkeys.parse_public(stripped)
    except (ParseError, UsageError):
        return None
    match = _MARKER_RE.search(key.comment)
    if match is None or match.group("fp") != key.fingerprint:
        return key, None
    return key, match.group("name")


def _redact(lines: list[str]) -> list[str]:
    out: list[str] = []
    inside = False
    for line in lines:
        if _PRIVATE_BEGIN.search(line):
            inside = True
        if inside:
            if not out or out[-1] != "[private key material hidden]":
                out.append("[private key material hidden]")
            if _PRIVATE_END.search(line):
                inside = False
            continue
        out.append(line)
    return out
