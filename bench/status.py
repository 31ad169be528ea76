"""bench/status: `unityctl infra status` with 200 servers and 30 days of 5-minute samples.

For each backend (SQLite in a temporary file; PostgreSQL in a scratch database created and
dropped here), the script creates 200 monitored servers with a snapshot, 4 disks, 1 pool and
2 databases each, some open alerts, and 30 days of raw 5-minute samples per server
(~1.7 million rows, bulk-inserted: executemany on SQLite, COPY on PostgreSQL), then times

* the service call (``open_read`` + ``fleet_status``: connecting, schema check, the queries), median of 7;
* the CLI, ``unityctl infra status`` as a subprocess (start-up included), median of 3.

Target (issue 4): under 0.5 s. The figures are printed with the row counts.

    .venv/bin/python bench/status.py [--servers 200] [--days 30] [--pg URL | --no-pg]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VENV_BIN = Path(sys.executable).parent
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
STEP = dt.timedelta(minutes=5)


def populate(engine, servers: int, days: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Fill the schema; returns row counts per table."""
    from sqlalchemy import func, insert, select

    from unityctl.core.db import is_postgres, utcnow
    from unityctl.core.models import Alert
    from unityctl.infra.models import DatabaseInstance, MetricSample, MonitoredServer, StorageDevice, StoragePool

    now = utcnow().replace(second=0, microsecond=0)
    with engine.begin() as conn:
        conn.execute(insert(MonitoredServer), [
            {"name": f"srv{i:03d}", "local": False, "interval_seconds": 300, "tags": "[]",
             "state": "down" if i % 50 == 0 else "up", "consecutive_failures": 0, "consecutive_successes": 5,
             "last_seen_at": now, "last_collect_at": now, "next_collect_at": now + STEP,
             "os_name": "Debian GNU/Linux 12 (bookworm)", "kernel": "Linux 6.1.0 x86_64", "cpu_count": 8,
             "uptime_seconds": 86400, "load1": (i % 17) / 4, "load5": 1.0, "load15": 1.0,
             "mem_total_kb": 16 << 20, "mem_used_percent": float(i % 90), "fs_max_percent": float(i % 97),
             "fs_max_mount": "/", "filesystems": "[]", "notes": "[]", "created_at": now} for i in range(servers)])
        ids = [r[0] for r in conn.execute(select(MonitoredServer.id).order_by(MonitoredServer.id))]
        conn.execute(insert(StorageDevice), [
            {"serial": f"SN{sid:04d}{d}", "server_id": sid, "device": f"/dev/sd{'abcd'[d]}", "model": "WDC",
             "protocol": "ata", "verdict": "failed" if (sid + d) % 97 == 0 else "warn" if (sid + d) % 31 == 0
             else "passed", "reasons": "[]", "counters": "{}", "baseline": "{}",
             "first_seen_at": now, "last_seen_at": now} for sid in ids for d in range(4)])
        conn.execute(insert(StoragePool), [
            {"server_id": sid, "kind": "zfs", "name": "tank", "state": "ONLINE",
             "health": "warn" if sid % 40 == 0 else "ok", "level": "raidz1", "scan": "{}", "members": "[]",
             "reasons": "[]", "last_seen_at": now} for sid in ids])
        conn.execute(insert(DatabaseInstance), [
            {"server_id": sid, "kind": kind, "key": f"{kind}:{port}", "address": "127.0.0.1", "port": port,
             "reachable": not (sid % 25 == 0 and kind == "redis"), "last_seen_at": now}
            for sid in ids for kind, port in (("postgresql", 5432), ("redis", 6379))])
        conn.execute(insert(Alert), [
            {"type": "server_offline", "severity": "critical", "state": "open", "source_type": "monitored_server",
             "source_id": str(sid), "dedup_key": f"server_offline:monitored_server:{sid}", "message": "offline",
             "details": "{}", "count": 1, "first_seen": now, "last_seen": now, "notify_count": 0}
            for sid in ids[::50]])

        start = now - dt.timedelta(days=days)
        points = int(dt.timedelta(days=days) / STEP)
        if is_postgres(engine):
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cur, cur.copy(
                    "COPY metric_sample (server_id, ts, resolution, load1, mem_percent, disk_percent) FROM STDIN") as cp:
                for sid in ids:
                    buf = io.StringIO()
                    for k in range(points):
                        ts = start + k * STEP
                        buf.write(f"{sid}\t{ts.isoformat()}\traw\t{(k % 40) / 10}\t{k % 100}\t{k % 90}\n")
                    cp.write(buf.getvalue())
        else:
            rows_per_batch = 50_000
            batch: list[dict] = []
            for sid in ids:
                for k in range(points):
                    batch.append({"server_id": sid, "ts": start + k * STEP, "resolution": "raw",
                                  "load1": (k % 40) / 10, "mem_percent": float(k % 100), "disk_percent": float(k % 90)})
                    if len(batch) >= rows_per_batch:
                        conn.execute(insert(MetricSample), batch)
                        batch = []
            if batch:
                conn.execute(insert(MetricSample), batch)
        counts = {}
        for model in (MonitoredServer, MetricSample, StorageDevice, StoragePool, DatabaseInstance, Alert):
            counts[model.__tablename__] = conn.execute(select(func.count()).select_from(model)).scalar_one()
    if is_postgres(engine):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    return counts


def time_service(url: str, runs: int = 7) -> tuple[float, int]:
    from unityctl.core.readdb import open_read
    from unityctl.infra.status import fleet_status

    samples = []
    rows = 0
    for _ in range(runs):
        start = time.perf_counter()
        with open_read(url) as conn:  # connecting and the schema check included
            rows = len(fleet_status(conn))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), rows


def time_cli(url: str, *args: str, runs: int = 3) -> float:
    env = {**os.environ, "UNITYCTL_DATABASE_URL": url}
    cmd = [str(VENV_BIN / "unityctl"), *args]
    samples = []
    for _ in range(runs + 1):  # the first run warms the page cache
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        samples.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"unityctl {' '.join(args)} failed: {proc.stderr.strip()}")
    return statistics.median(samples[1:])


def bench(label: str, url: str, servers: int, days: int) -> None:
    from unityctl.core import migrate
    from unityctl.core.db import make_engine

    engine = make_engine(url)
    migrate.upgrade(engine)
    t0 = time.perf_counter()
    counts = populate(engine, servers, days)
    setup = time.perf_counter() - t0
    engine.dispose()
    service, rows = time_service(url)
    cli = time_cli(url, "infra", "status")
    cli_json = time_cli(url, "infra", "status", "--json")
    # Baseline: the same start-up and database opening with a trivial query, through SQLAlchemy and the
    # ORM as most commands read (what `infra status` cost before it read through the driver alone).
    floor = time_cli(url, "alerts", "list")
    ok = lambda t: "OK" if t < 0.5 else "MISSED"  # noqa: E731
    print(f"{label}: {counts['monitored_server']} servers, {counts['metric_sample']:,} samples "
          f"({days} days x 5 min), {counts['storage_device']} disks, {counts['storage_pool']} pools, "
          f"{counts['database_instance']} databases, {counts['alert']} alerts (set-up {setup:.1f} s)")
    print(f"  service open_read+fleet_status ({rows} rows)      {service * 1000:7.1f} ms   {ok(service)}")
    print(f"  CLI `unityctl infra status` (process start incl.) {cli * 1000:7.1f} ms   {ok(cli)}")
    print(f"  CLI `unityctl infra status --json`               {cli_json * 1000:7.1f} ms   {ok(cli_json)}")
    print(f"  baseline: CLI `unityctl alerts list` (a read through SQLAlchemy and the ORM) {floor * 1000:7.1f} ms"
          f" -> infra status takes {cli / floor:.2f}x of it")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--pg", default=os.environ.get("UNITYCTL_BENCH_PG", PG_DEFAULT),
                        help="A PostgreSQL URL whose server lets us CREATE DATABASE.")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    print("bench/status: target < 500 ms")
    with tempfile.TemporaryDirectory() as tmp:
        bench("SQLite", f"sqlite:///{tmp}/bench.db", args.servers, args.days)
    if args.no_pg:
        return
    import psycopg

    name = f"unityctl_bench_{uuid.uuid4().hex[:8]}"
    admin = args.pg.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        sys.exit(f"cannot create a scratch PostgreSQL database at {args.pg}: {exc}")
    try:
        base = args.pg.rsplit("/", 1)[0]
        bench("PostgreSQL", f"{base}/{name}", args.servers, args.days)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
