"""The daemon's jobs: the same service functions the commands call, on timers.

Each job runs with its own session(s). With several replicas on one PostgreSQL, collection and
notification delivery spread work by row leases (``FOR UPDATE SKIP LOCKED``); the other jobs take
a PostgreSQL advisory lock so exactly one replica runs them at a time (the others skip that turn).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unityctl.core.context import AppContext
from unityctl.core.db import is_postgres, utcnow

log = logging.getLogger("unityctl.daemon")


@dataclass
class Job:
    name: str
    interval_s: int
    run: Callable[[AppContext, dt.datetime], Any]
    exclusive: bool = True  # one replica at a time (advisory lock on PostgreSQL)
    help: str = ""
    next_at: float = field(default=0.0, repr=False)


def _collect(app: AppContext, now: dt.datetime) -> Any:
    from unityctl.infra import tasks

    return tasks.collect_due(now, sessions=app.session, keyring=app.keyring(), settings=app.settings)


def _deliver(app: AppContext, now: dt.datetime) -> Any:
    from unityctl.core.notify import deliver_pending

    return deliver_pending(app.engine(), app.keyring(), config=app.settings.alerts, now=now)


def _cert_expiry(app: AppContext, now: dt.datetime) -> Any:
    from unityctl.creds import expiry

    with app.session(write=True) as session:
        return expiry.run(session, settings=app.settings, now=now)


def _cert_renew(app: AppContext, now: dt.datetime) -> Any:
    from unityctl.creds import certificates

    with app.session(write=True) as session:
        return certificates.renew(session, app.keyring(), due=True,
                                  renew_before_days=app.settings.creds.renew_before_days, now=now)


def _unused_keys(app: AppContext, now: dt.datetime) -> Any:
    from unityctl.creds import usage

    with app.session(write=True) as session:
        return usage.check_unused_keys(session, app.keyring(), settings=app.settings, now=now)


def _prune(app: AppContext, now: dt.datetime) -> Any:
    from unityctl.infra import tasks

    return tasks.prune(now, sessions=app.session, settings=app.settings)


def _audit_archive(app: AppContext, now: dt.datetime) -> Any:
    from unityctl.core import audit

    settings = app.settings
    folder = settings.audit.archive_dir or settings.resolved_data_dir / "audit-archive"
    with app.session(write=True) as session:
        return audit.archive(session, app.keyring(), before=now - dt.timedelta(days=settings.audit.archive_after_days),
                             archive_dir=folder)


def default_jobs() -> list[Job]:
    """Every job with its period. Collection checks every 30 s which servers are due (each has
    its own interval); the rest run on fixed periods."""
    return [
        Job("collect", 30, _collect, exclusive=False, help="collect servers whose interval has passed"),
        Job("notify", 60, _deliver, exclusive=False, help="deliver queued and retried notifications"),
        Job("cert-expiry", 3600, _cert_expiry, help="certificate expiry alerts (30/14/7/1 days)"),
        Job("cert-renew", 12 * 3600, _cert_renew, help="renew certificates that are due"),
        Job("unused-keys", 86400, _unused_keys, help="keys not used for creds.unused_key_days"),
        Job("prune", 3600, _prune, help="downsample and drop old samples"),
        Job("audit-archive", 86400, _audit_archive, help="archive audit rows older than audit.archive_after_days"),
    ]


def _lock_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"unityctl-job:{name}".encode()).digest()[:8], "big", signed=True)


def run_job(app: AppContext, job: Job, now: dt.datetime | None = None) -> tuple[bool, str]:
    """Run one job once. Returns (ran, summary); never raises (a daemon must survive any job)."""
    now = now or utcnow()
    engine = app.engine()
    lock_conn = None
    try:
        if job.exclusive and is_postgres(engine):
            from sqlalchemy import text

            lock_conn = engine.connect()
            got = lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_id(job.name)}).scalar()
            if not got:
                return False, "another replica is running it"
        result = job.run(app, now)
        return True, _summary(result)
    except Exception as exc:  # noqa: BLE001 - logged, the loop goes on
        log.warning("job %s failed: %s: %s", job.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return True, f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    finally:
        if lock_conn is not None:
            from sqlalchemy import text

            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_id(job.name)})
            lock_conn.close()


def _summary(result: Any) -> str:
    """A one-line account of a job's result: counts, not contents."""
    if result is None:
        return "nothing to do"
    if isinstance(result, (list, tuple)):
        return f"{len(result)} item(s)"
    if hasattr(result, "to_dict"):
        fields = result.to_dict()
    elif hasattr(result, "__dataclass_fields__"):
        fields = {k: getattr(result, k) for k in result.__dataclass_fields__}
    else:
        return str(result)[:200]
    parts = []
    for key, value in fields.items():
        if isinstance(value, (int, float, str, bool)):
            parts.append(f"{key}={value}")
        elif isinstance(value, (list, tuple, dict)):
            parts.append(f"{key}={len(value)}")
    return ", ".join(parts)


def loop(app: AppContext, jobs: list[Job], *, once: bool, report: Callable[[str, bool, str], None],
         should_stop: Callable[[], bool], sleep: Callable[[float], None] = time.sleep) -> None:
    """Run jobs when due until ``should_stop()``; with ``once``, run each job one time and return."""
    for job in jobs:
        job.next_at = 0.0
    while not should_stop():
        now_mono = time.monotonic()
        for job in jobs:
            if should_stop():
                return
            if job.next_at <= now_mono:
                ran, summary = run_job(app, job)
                report(job.name, ran, summary)
                job.next_at = time.monotonic() + job.interval_s
        if once:
            return
        wait = max(0.5, min(j.next_at for j in jobs) - time.monotonic())
        sleep(min(wait, 5.0))
