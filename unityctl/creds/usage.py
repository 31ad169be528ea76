"""The "unused keys" timed task: which keys nobody has used for N days.

"Last used" comes from what unityctl itself saw (its own logins with a key, recorded on the key
and on the servers it reaches) and, where readable, from sshd's own log lines on the servers a key
is deployed to::

    Accepted publickey for alice from 10.0.0.5 port 51234 ssh2: ED25519 SHA256:<fingerprint>

Logs are read over SSH (``/var/log/auth.log``, ``/var/log/secure`` and the journal by default;
a login that cannot read them simply contributes nothing). Lines with a timestamp (ISO or
classic syslog) are dated by it; a line without one (sshd ``-E`` files) is dated by the file's
modification time, an upper bound. A key with no use for ``creds.unused_key_days`` (counted from
its creation or latest deployment when it was never used) raises the ``unused_key`` alert; a use
clears it.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from typing import Any

from sqlmodel import Session, select

from unityctl.core import alerts
from unityctl.core.config import Settings
from unityctl.core.crypto import Keyring
from unityctl.core.db import utcnow
from unityctl.core.errors import UnityctlError
from unityctl.creds import keys as keys_svc
from unityctl.creds import servers as servers_svc
from unityctl.creds.models import KeyDeployment, ServerCredential, SSHKey

DEFAULT_LOG_PATHS = ("/var/log/auth.log", "/var/log/secure")
MAX_LINES = 20000
_ACCEPTED = re.compile(r"Accepted publickey for (?P<user>\S+) from .*?(?P<fp>SHA256:[A-Za-z0-9+/]{43})")
_ISO = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)")
_SYSLOG = re.compile(r"^(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<time>\d\d:\d\d:\d\d)")
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), start=1)}


def _log_command(paths: list[str], journal: bool) -> str:
    parts = []
    for path in paths:
        q = shlex.quote(path)
        parts.append(f"if [ -r {q} ]; then printf '@@FILE %s\\n' \"$(stat -c %Y {q} 2>/dev/null || echo 0)\"; "
                     f"grep -a 'Accepted publickey' {q} | tail -n {MAX_LINES}; fi")
    if journal:
        parts.append("if command -v journalctl >/dev/null 2>&1; then echo '@@FILE 0'; "
                     "journalctl -q --no-pager -o short-iso -t sshd -t sshd-session -n 50000 2>/dev/null "
                     f"| grep -a 'Accepted publickey' | tail -n {MAX_LINES}; fi")
    return "; ".join(parts) + "; true"


def parse_log(text: str, *, now: dt.datetime | None = None) -> list[tuple[str, dt.datetime]]:
    """(fingerprint, when) for each "Accepted publickey" line of the remote command's output."""
    now = now or utcnow()
    found: list[tuple[str, dt.datetime]] = []
    mtime = now
    for line in text.splitlines():
        if line.startswith("@@FILE "):
            try:
                stamp = int(line.split()[1])
            except (IndexError, ValueError):
                stamp = 0
            mtime = dt.datetime.fromtimestamp(stamp, dt.timezone.utc) if stamp else now
            continue
        match = _ACCEPTED.search(line)
        if not match:
            continue
        found.append((match.group("fp"), _line_time(line, mtime, now)))
    return found


def _line_time(line: str, fallback: dt.datetime, now: dt.datetime) -> dt.datetime:
    iso = _ISO.match(line)
    if iso:
        text = iso.group("ts").replace(" ", "T").replace("Z", "+00:00")
        if re.search(r"[+-]\d{4}$", text):
            text = text[:-2] + ":" + text[-2:]
        try:
            when = dt.datetime.fromisoformat(text)
            return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return fallback
    sys_ = _SYSLOG.match(line)
    if sys_ and sys_.group("mon") in _MONTHS:
        try:
            h, m, s = (int(x) for x in sys_.group("time").split(":"))
            when = dt.datetime(now.year, _MONTHS[sys_.group("mon")], int(sys_.group("day")), h, m, s,
                               tzinfo=dt.timezone.utc)
        except ValueError:
            return fallback
        # Classic syslog has no year: a date "in the future" belongs to last year.
        return when.replace(year=now.year - 1) if when > now + dt.timedelta(days=1) else when
    return fallback


def check_unused_keys(session: Session, keyring: Keyring, *, settings: Settings, days: int | None = None,
                      read_logs: bool = True, log_paths: list[str] | None = None,
                      now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Update each active key's ``last_used_at`` and raise/clear its ``unused_key`` alert.

    Out: one dict per active key: ``key``, ``last_used_at``, ``source``, ``unused``, ``since``.
    Servers that cannot be reached or whose logs cannot be read are listed in each dict's
    ``log_errors`` (the task goes on without them).
    """
    now = now or utcnow()
    limit = dt.timedelta(days=settings.creds.unused_key_days if days is None else days)
    active = list(session.exec(select(SSHKey).where(SSHKey.status == "active").order_by(SSHKey.name)).all())
    by_fp = {k.fingerprint: k for k in active}
    seen: dict[int, tuple[dt.datetime, str]] = {}
    errors: dict[str, str] = {}
    if read_logs and active:
        server_ids = {d.server_id for d in session.exec(select(KeyDeployment).where(
            KeyDeployment.status == "deployed")).all() if d.key_id in {k.id for k in active}}
        servers = [s for s in session.exec(select(ServerCredential)).all() if s.id in server_ids]
        targets = {}
        for server in servers:
            try:
                targets[server.name] = servers_svc.target_for(session, keyring, server, ssh=settings.ssh)
            except UnityctlError as exc:
                errors[server.name] = exc.message
        command = _log_command(list(log_paths or DEFAULT_LOG_PATHS), journal=log_paths is None)
        with servers_svc.ssh_executor(session, keyring) as executor:
            results = executor.run_many(list(targets.values()), command, check=False)
        for name, result in results.items():
            if isinstance(result, Exception):
                errors[name] = result.message if isinstance(result, UnityctlError) else type(result).__name__
                continue
            for fp, when in parse_log(result.stdout, now=now):
                key = by_fp.get(fp)
                if key is None:
                    continue
                if key.id not in seen or when > seen[key.id][0]:
                    seen[key.id] = (when, f"sshd log on {name}")
    docs = []
    for key in active:
        last = keys_svc.last_used(session, key)
        source = "unityctl login" if last else None
        if key.id in seen and (last is None or seen[key.id][0] > last):
            last, source = seen[key.id]
            key.last_used_at = last
            session.add(key)
        deployed = [d.deployed_at for d in session.exec(select(KeyDeployment).where(
            KeyDeployment.key_id == key.id)).all() if d.deployed_at]
        since = last or max([key.created_at, *deployed])
        unused = now - since > limit
        dedup = f"unused_key:ssh_key:{key.id}"
        if unused:
            alerts.raise_alert(session, type="unused_key", severity="warning", source_type="ssh_key",
                               source_id=key.id, dedup_key=dedup,
                               message=f"SSH key {key.name} not used for {(now - since).days} days",
                               details={"key": key.name, "fingerprint": key.fingerprint,
                                        "last_used_at": last.isoformat() if last else None},
                               config=settings.alerts, now=now)
        else:
            alerts.clear_alert(session, dedup_key=dedup, now=now)
        docs.append({"key": key.name, "fingerprint": key.fingerprint, "last_used_at": last, "source": source,
                     "since": since, "unused": unused, "log_errors": errors})
    session.flush()
    return docs
