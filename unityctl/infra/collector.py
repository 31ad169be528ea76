"""Collection: run ``collect.sh`` on servers in parallel, then record what came back.

Three phases, so that no database session is ever held across network I/O and none is shared
between threads:

1. **plan** (one read session): load the servers, build each remote server's SSH
   :class:`~unityctl.core.ssh.Target` from its creds login (key decrypted in memory only);
2. **gather** (no database): a thread pool of ``infra.max_parallel`` workers; each runs the
   script once (local: ``sh -s`` with the script on stdin; remote: ONE SSH session, the script
   on stdin), parses it, probes the databases it found, and returns
   ``(server id, report | error)``. Connect and command timeouts bound every worker, so a server
   that hangs costs only its own timeouts;
3. **record** (one write session): snapshot, raw sample, success/failure counters, up/down
   state, ``server_offline`` and filesystem ``storage_warning`` alerts, then the storage and
   database hooks (``unityctl.infra.storage.apply_storage`` / ``databases.apply_databases``).

:func:`collect` runs the three; the CLI and the daemon both call it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from sqlmodel import Session, col, select

from unityctl.core.config import Settings
from unityctl.core.crypto import Keyring
from unityctl.core.db import utcnow
from unityctl.core.errors import NotFoundError, UnityctlError, UsageError
from unityctl.infra.models import MetricSample, MonitoredServer
from unityctl.infra.probes.system import CollectionReport, parse_collection

log = logging.getLogger(__name__)

SessionFactory = Callable[..., AbstractContextManager[Session]]
SOURCE_TYPE = "monitored_server"
# A filesystem alert clears only once usage is this many points below the warning threshold,
# so a disk hovering around the threshold does not open and close an alert every cycle.
FS_CLEAR_MARGIN = 2.0
# Leave the script's own per-tool timeout well inside the command timeout, so a hung smartctl
# becomes a "timed out" section rather than a failed collection.
_TOOL_TIMEOUT_FRACTION = 0.5


def offline_key(server_id: int) -> str:
    """Dedup key of a server's ``server_offline`` alert."""
    return f"server_offline:{SOURCE_TYPE}:{server_id}"


def filesystem_key(server_id: int, mount: str) -> str:
    """Dedup key of the ``storage_warning`` alert for one filesystem of one server."""
    return f"storage_warning:filesystem:{server_id}:{mount}"


def collect_script() -> str:
    """The text of ``collect.sh``."""
    return resources.files("unityctl.infra.probes").joinpath("collect.sh").read_text()


# --- plan ----------------------------------------------------------------------------------------


@dataclass
class Job:
    """One server to collect: a local one, or a remote one with its SSH target."""

    server_id: int
    name: str
    local: bool
    target: Any = None  # unityctl.core.ssh.Target for remote servers
    error: str | None = None  # the target could not be built (missing login, undecryptable key)


@dataclass
class Gathered:
    """What a worker hands back: the parsed report, or the error in one line."""

    server_id: int
    name: str
    ok: bool
    report: CollectionReport | None = None
    probes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    probe_error: str | None = None


@dataclass
class ServerResult:
    """The outcome for one server, after recording."""

    server: str
    server_id: int
    ok: bool
    state: str
    previous_state: str
    duration_s: float
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    alerts_raised: list[str] = field(default_factory=list)
    alerts_cleared: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def select_servers(session: Session, *, names: Iterable[str] = (), all_: bool = False) -> list[MonitoredServer]:
    """The servers named (NotFoundError for an unknown one), or every server with ``all_``."""
    names = list(dict.fromkeys(names))
    if all_ and names:
        raise UsageError("give server names or --all, not both")
    if not all_ and not names:
        raise UsageError("name the servers to collect, or use --all")
    if all_:
        return list(session.exec(select(MonitoredServer).order_by(col(MonitoredServer.name))).all())
    found = {s.name: s for s in session.exec(select(MonitoredServer)
                                             .where(col(MonitoredServer.name).in_(names))).all()}
    missing = [n for n in names if n not in found]
    if missing:
        raise NotFoundError(f"no monitored server named {', '.join(repr(m) for m in missing)}")
    return [found[n] for n in names]


def plan(session: Session, keyring: Keyring, servers: Iterable[MonitoredServer], *,
         settings: Settings) -> list[Job]:
    """Build one :class:`Job` per server. A login that cannot be used becomes the job's error
    (the server then counts as a failed collection), never an exception."""
    from unityctl.infra.servers import target_for_server

    jobs: list[Job] = []
    for server in servers:
        assert server.id is not None
        if server.local:
            jobs.append(Job(server.id, server.name, True))
            continue
        try:
            target = target_for_server(session, keyring, server, settings=settings)
        except UnityctlError as exc:
            jobs.append(Job(server.id, server.name, False, error=exc.message))
            continue
        jobs.append(Job(server.id, server.name, False, target=target))
    return jobs


# --- gather --------------------------------------------------------------------------------------


def _script_with_timeout(settings: Settings) -> str:
    tool_timeout = max(5, int(settings.infra.command_timeout * _TOOL_TIMEOUT_FRACTION))
    return f"UNITYCTL_COLLECT_TIMEOUT={tool_timeout}\n" + collect_script()


def run_local(script: str, *, timeout: float) -> str:
    """Run the script on this machine with ``sh -s``; the output, or UnityctlError on failure."""
    proc = subprocess.Popen(["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(script.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        # Its own session: kill the whole group, so a hung tool does not outlive us.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise UnityctlError(f"collection on this machine did not finish within {timeout:g}s") from None
    if proc.returncode != 0 and b"@@unityctl:end@@" not in out:
        raise UnityctlError(f"collection script exited with status {proc.returncode}")
    return out.decode("utf-8", "replace")


def _probe_databases(report: CollectionReport, *, job: Job, executor: Any, timeout: float) -> dict[str, Any]:
    try:
        from unityctl.infra.databases import probe_discovered
    except ImportError:  # the database part is not installed in this build
        return {}
    return probe_discovered(report, local=job.local, executor=executor, target=job.target, timeout=timeout)


def gather_one(job: Job, *, executor: Any, script: str, settings: Settings) -> Gathered:
    """Collect one server: run, parse, probe databases. Never raises."""
    start = time.monotonic()
    if job.error:
        return Gathered(job.server_id, job.name, False, error=job.error)
    try:
        if job.local:
            text = run_local(script, timeout=float(settings.infra.command_timeout))
        else:
            result = executor.run(job.target, "sh -s", stdin=script, check=False)
            text = result.stdout
            if "@@unityctl:" not in text:
                detail = (result.stderr or result.stdout).strip().splitlines()
                raise UnityctlError(f"server {job.name}: collection script did not run "
                                    f"(exit {result.exit_code}{': ' + detail[0][:200] if detail else ''})")
        report = parse_collection(text)
    except UnityctlError as exc:
        return Gathered(job.server_id, job.name, False, error=exc.message,
                        duration_s=time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001 - one server's surprise must not stop the batch
        log.debug("collection of %s failed", job.name, exc_info=True)
        return Gathered(job.server_id, job.name, False, error=f"{type(exc).__name__}: {str(exc)[:200]}",
                        duration_s=time.monotonic() - start)
    if not report.section_status:
        return Gathered(job.server_id, job.name, False, error="; ".join(report.notes) or "no output",
                        duration_s=time.monotonic() - start)
    gathered = Gathered(job.server_id, job.name, True, report=report)
    try:
        gathered.probes = _probe_databases(report, job=job, executor=executor,
                                           timeout=min(5.0, float(settings.infra.connect_timeout)))
    except Exception as exc:  # noqa: BLE001 - probing is best effort; the collection stands
        gathered.probe_error = f"database probes failed: {type(exc).__name__}: {str(exc)[:200]}"
    gathered.duration_s = time.monotonic() - start
    return gathered


def gather(jobs: list[Job], *, settings: Settings, executor: Any,
           on_result: Callable[[Gathered], None] | None = None) -> list[Gathered]:
    """Run every job on a pool of ``infra.max_parallel`` threads; results in the jobs' order."""
    if not jobs:
        return []
    script = _script_with_timeout(settings)
    results: dict[int, Gathered] = {}
    workers = max(1, min(settings.infra.max_parallel, len(jobs)))
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infra-collect") as pool:
        futures = {pool.submit(gather_one, job, executor=executor, script=script, settings=settings): job
                   for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                value = future.result()
            except Exception as exc:  # noqa: BLE001 - gather_one never raises; belt and braces
                value = Gathered(job.server_id, job.name, False, error=f"{type(exc).__name__}: {exc}")
            with lock:
                results[job.server_id] = value
            if on_result is not None:
                on_result(value)
    return [results[j.server_id] for j in jobs]


# --- record --------------------------------------------------------------------------------------


def _filesystems(report: CollectionReport) -> list[dict[str, Any]]:
    if report.disks is None:
        return []
    return [{"mount": f.mount, "source": f.source, "type": f.fs_type, "size_kb": f.size_kb,
             "used_kb": f.used_kb, "avail_kb": f.avail_kb, "use_percent": f.use_percent}
            for f in report.disks.real]


def _update_snapshot(server: MonitoredServer, report: CollectionReport, filesystems: list[dict[str, Any]]) -> None:
    osr = report.os_release
    server.os_name = ((osr.pretty_name or osr.name) if osr else None) or server.os_name
    if report.kernel and report.kernel.release:
        server.kernel = " ".join(p for p in (report.kernel.name, report.kernel.release, report.kernel.machine) if p)
    if report.cpu and report.cpu.count:
        server.cpu_count = report.cpu.count
    server.uptime_seconds = int(report.uptime.seconds) if report.uptime and report.uptime.seconds is not None else None
    la = report.loadavg
    server.load1, server.load5, server.load15 = (la.load1, la.load5, la.load15) if la else (None, None, None)
    mem = report.memory
    server.mem_total_kb = mem.total_kb if mem else None
    server.mem_used_percent = mem.used_percent if mem else None
    fullest = max((f for f in filesystems if f["use_percent"] is not None),
                  key=lambda f: f["use_percent"], default=None)
    server.fs_max_percent = float(fullest["use_percent"]) if fullest else None
    server.fs_max_mount = fullest["mount"][:500] if fullest else None
    server.filesystems = json.dumps(filesystems)
    server.notes = json.dumps(report.notes)


def _filesystem_alerts(session: Session, server: MonitoredServer, filesystems: list[dict[str, Any]], *,
                       settings: Settings, now: dt.datetime, result: ServerResult) -> None:
    from unityctl.core import alerts
    from unityctl.core.models import Alert

    warn = float(settings.infra.filesystem_warning_percent)
    crit = float(settings.infra.filesystem_critical_percent)
    prefix = f"storage_warning:filesystem:{server.id}:"
    open_keys = set(session.exec(select(Alert.dedup_key).where(
        col(Alert.dedup_key).startswith(prefix, autoescape=True), col(Alert.state).in_(alerts.ACTIVE))).all())
    seen: set[str] = set()
    for fs in filesystems:
        pct = fs["use_percent"]
        if pct is None:
            continue
        key = filesystem_key(server.id or 0, fs["mount"])
        seen.add(key)
        if pct >= warn:
            severity = "critical" if pct >= crit else "warning"
            free_gib = fs["avail_kb"] / 1048576
            raised = alerts.raise_alert(
                session, type="storage_warning", severity=severity, source_type=SOURCE_TYPE,
                source_id=server.id or 0, dedup_key=key,
                message=f"{server.name}: filesystem {fs['mount']} is {pct}% full ({free_gib:.1f} GiB free; "
                        f"{severity} at {int(crit if severity == 'critical' else warn)}%)",
                details={"server": server.name, "mount": fs["mount"], "source": fs["source"],
                         "use_percent": pct, "avail_kb": fs["avail_kb"], "warning_percent": warn,
                         "critical_percent": crit},
                config=settings.alerts, now=now)
            if raised.event in ("raised", "escalated"):
                result.alerts_raised.append(key)
        elif key in open_keys and pct < warn - FS_CLEAR_MARGIN:
            if alerts.clear_alert(session, dedup_key=key, now=now) is not None:
                result.alerts_cleared.append(key)
    # A filesystem that is gone (unmounted) cannot stay "full".
    for key in open_keys - seen:
        if alerts.clear_alert(session, dedup_key=key, now=now) is not None:
            result.alerts_cleared.append(key)


def _hooks(session: Session, server: MonitoredServer, gathered: Gathered, *, settings: Settings,
           now: dt.datetime, result: ServerResult) -> None:
    """Storage and database analysis (the other half of infra), each in its own savepoint so a
    failure there is reported but never loses the collection itself."""
    report = gathered.report
    assert report is not None
    try:
        from unityctl.infra import storage
    except ImportError:
        storage = None  # type: ignore[assignment]
    try:
        from unityctl.infra import databases
    except ImportError:
        databases = None  # type: ignore[assignment]
    calls: list[tuple[str, Callable[[], None]]] = []
    if storage is not None and hasattr(storage, "apply_storage"):
        calls.append(("storage", lambda: storage.apply_storage(
            session, server=server, report=report, settings=settings, now=now)))
    if databases is not None and hasattr(databases, "apply_databases"):
        calls.append(("databases", lambda: databases.apply_databases(
            session, server=server, report=report, probes=gathered.probes, settings=settings, now=now)))
    for what, call in calls:
        try:
            with session.begin_nested():
                call()
        except Exception as exc:  # noqa: BLE001 - analysis errors are notes, not a lost collection
            log.debug("%s analysis of %s failed", what, server.name, exc_info=True)
            message = exc.message if isinstance(exc, UnityctlError) else f"{type(exc).__name__}: {str(exc)[:200]}"
            result.notes.append(f"{what} analysis failed: {message}")


def record_one(session: Session, gathered: Gathered, *, settings: Settings, now: dt.datetime) -> ServerResult | None:
    """Record one server's collection in ``session``. None when the server was removed meanwhile."""
    from unityctl.core import alerts

    server = session.get(MonitoredServer, gathered.server_id)
    if server is None:
        return None
    infra = settings.infra
    previous = server.state
    result = ServerResult(server.name, gathered.server_id, gathered.ok, previous, previous,
                          round(gathered.duration_s, 3), error=gathered.error)
    server.last_collect_at = now
    server.next_collect_at = now + dt.timedelta(seconds=server.interval_seconds)
    server.lease_owner, server.lease_until = None, None
    if gathered.ok and gathered.report is not None:
        report = gathered.report
        filesystems = _filesystems(report)
        _update_snapshot(server, report, filesystems)
        server.last_seen_at = now
        server.last_error = None
        server.consecutive_successes += 1
        server.consecutive_failures = 0
        # A new server is up at its first good collection; a down one needs a run of them.
        if previous == "unknown" or (previous == "down" and server.consecutive_successes >= infra.online_after_successes):
            server.state = "up"
        session.add(server)
        session.add(MetricSample(server_id=server.id, ts=now, resolution="raw", load1=server.load1,
                                 mem_percent=server.mem_used_percent, disk_percent=server.fs_max_percent))
        result.notes = list(report.notes)
        if gathered.probe_error:
            result.notes.append(gathered.probe_error)
        if server.state == "up" and alerts.clear_alert(session, dedup_key=offline_key(server.id or 0), now=now):
            result.alerts_cleared.append(offline_key(server.id or 0))
        _filesystem_alerts(session, server, filesystems, settings=settings, now=now, result=result)
        session.flush()
        _hooks(session, server, gathered, settings=settings, now=now, result=result)
    else:
        server.last_error = (gathered.error or "collection failed")[:2000]
        server.consecutive_failures += 1
        server.consecutive_successes = 0
        if server.consecutive_failures >= infra.offline_after_failures:
            server.state = "down"
        session.add(server)
        if server.state == "down":
            seen = server.last_seen_at.isoformat(timespec="seconds") if server.last_seen_at else "never"
            raised = alerts.raise_alert(
                session, type="server_offline", severity="critical", source_type=SOURCE_TYPE,
                source_id=server.id or 0, dedup_key=offline_key(server.id or 0),
                message=f"server {server.name} is offline: {server.consecutive_failures} collections failed "
                        f"in a row ({server.last_error[:200]})",
                details={"server": server.name, "consecutive_failures": server.consecutive_failures,
                         "last_error": server.last_error, "last_seen": seen},
                config=settings.alerts, now=now)
            if raised.event in ("raised", "escalated"):
                result.alerts_raised.append(offline_key(server.id or 0))
    result.state = server.state
    session.flush()
    return result


def record(session: Session, gathered: list[Gathered], *, settings: Settings,
           now: dt.datetime | None = None) -> list[ServerResult]:
    """Record every worker's result in ``session`` (the one write session)."""
    now = now or utcnow()
    results = []
    for item in gathered:
        res = record_one(session, item, settings=settings, now=now)
        if res is not None:
            results.append(res)
    return results


# --- all three -----------------------------------------------------------------------------------


def _record_logins(session: Session, gathered: list[Gathered]) -> None:
    """Tell the creds domain how its logins fared (``last_login_at`` keeps used keys "used")."""
    from unityctl.creds.models import ServerCredential
    from unityctl.creds.servers import record_login

    for item in gathered:
        server = session.get(MonitoredServer, item.server_id)
        if server is None or server.local or server.credential_id is None:
            continue
        cred = session.get(ServerCredential, server.credential_id)
        if cred is not None:
            record_login(session, cred, None if item.ok else (item.error or "collection failed"))


def collect(*, sessions: SessionFactory, keyring: Keyring, settings: Settings, names: Iterable[str] = (),
            all_: bool = False, server_ids: Iterable[int] | None = None,
            on_start: Callable[[int], None] | None = None,
            on_result: Callable[[Gathered], None] | None = None,
            now: Callable[[], dt.datetime] = utcnow) -> list[ServerResult]:
    """Collect the named servers (or all, or ``server_ids``) and record the results.

    In: ``sessions(write=bool)`` opens one unit of work (AppContext.session or Env.session);
    ``on_start(n)`` and ``on_result(gathered)`` feed a progress bar.
    Out: one :class:`ServerResult` per server, in order. A failed server never stops the others.
    Raises UsageError / NotFoundError for bad names; database errors propagate.
    """
    from unityctl.core.ssh import SSHExecutor
    from unityctl.creds.servers import DBHostKeyStore

    with sessions(write=False) as session:
        if server_ids is not None:
            ids = list(server_ids)
            servers = list(session.exec(select(MonitoredServer).where(col(MonitoredServer.id).in_(ids))
                                        .order_by(col(MonitoredServer.name))).all()) if ids else []
        else:
            servers = select_servers(session, names=names, all_=all_)
        jobs = plan(session, keyring, servers, settings=settings)
        # Pins are read now; first-use pins are kept in memory by the workers and written below.
        host_keys = DBHostKeyStore(session)
    if on_start is not None:
        on_start(len(jobs))
    if not jobs:
        return []
    # One connection per server, one session on it; no keepalive thread for a one-shot run.
    with SSHExecutor(host_keys=host_keys, keepalive_s=0, max_sessions=4) as executor:
        gathered = gather(jobs, settings=settings, executor=executor, on_result=on_result)
    with sessions(write=True) as session:
        host_keys.save(session, keyring)
        _record_logins(session, gathered)
        return record(session, gathered, settings=settings, now=now())
