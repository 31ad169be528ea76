"""Metric history: query a server's samples, and keep the table bounded.

Every collection adds one ``raw`` sample per server. :func:`prune` (a daemon task, also
`unityctl infra prune`) turns raw samples older than ``infra.retention.raw_days`` into one
``hour`` sample per server and hour (the averages), deletes those raw samples, and deletes hourly
samples older than ``infra.retention.hourly_days``. The cut-off is aligned to a whole hour so an
hour is always downsampled in one go, which makes pruning idempotent: a second run finds nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, literal, select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from unityctl.core.config import Settings
from unityctl.core.db import is_postgres, utcnow
from unityctl.core.errors import UsageError
from unityctl.infra.models import MetricSample
from unityctl.infra.servers import get_server

METRICS = {"load": "load1", "mem": "mem_percent", "disk": "disk_percent"}
METRIC_UNITS = {"load": "", "mem": "%", "disk": "%"}


def _column(metric: str) -> Any:
    try:
        return getattr(MetricSample, METRICS[metric])
    except KeyError:
        raise UsageError(f"unknown metric {metric!r} (use {', '.join(METRICS)})") from None


def samples(session: Session, *, server: str, metric: str, since: dt.timedelta,
            now: dt.datetime | None = None) -> list[tuple[dt.datetime, float, str]]:
    """``(ts, value, resolution)`` of one metric of one server over the last ``since``, oldest first.

    Raw samples where they are still kept, hourly averages before that. Samples without a value
    for the metric are left out. Raises NotFoundError, UsageError (unknown metric).
    """
    column = _column(metric)
    row = get_server(session, server)
    start = (now or utcnow()) - since
    rows = session.exec(select(MetricSample.ts, column, MetricSample.resolution)
                        .where(MetricSample.server_id == row.id, col(MetricSample.resolution).in_(("raw", "hour")),
                               col(MetricSample.ts) >= start, col(column).is_not(None))
                        .order_by(col(MetricSample.ts))).all()
    return [(ts, float(value), res) for ts, value, res in rows]


def history(session: Session, *, server: str, metric: str, since: dt.timedelta,
            now: dt.datetime | None = None) -> dict[str, Any]:
    """Plain data for `infra history`: the points plus min/avg/max/last."""
    points = samples(session, server=server, metric=metric, since=since, now=now)
    values = [v for _, v, _ in points]
    return {
        "server": server, "metric": metric, "unit": METRIC_UNITS[metric],
        "since_seconds": int(since.total_seconds()),
        "count": len(points),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "avg": round(sum(values) / len(values), 3) if values else None,
        "last": values[-1] if values else None,
        "points": [{"ts": ts, "value": v, "resolution": res} for ts, v, res in points],
    }


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """A one-line chart of ``values``, averaged into at most ``width`` buckets."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [sum(chunk) / len(chunk) for chunk in
                  (values[int(i * size):max(int((i + 1) * size), int(i * size) + 1)] for i in range(width))]
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1) + 0.5))] for v in values)


# --- retention -----------------------------------------------------------------------------------


@dataclass
class PruneReport:
    """What :func:`prune` did."""

    raw_cutoff: dt.datetime
    hourly_cutoff: dt.datetime
    hourly_written: int
    raw_deleted: int
    hourly_deleted: int

    def to_dict(self) -> dict[str, Any]:
        return {"raw_cutoff": self.raw_cutoff, "hourly_cutoff": self.hourly_cutoff,
                "hourly_written": self.hourly_written, "raw_deleted": self.raw_deleted,
                "hourly_deleted": self.hourly_deleted}


def _floor_hour(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)


def _hour_bucket(session: Session) -> Any:
    """SQL for "the sample's hour", in the column's own storage format on each backend."""
    if is_postgres(session):
        # Truncate in UTC, whatever the session's TimeZone (an India server is at :30 past).
        return func.timezone("UTC", func.date_trunc("hour", func.timezone("UTC", MetricSample.ts)))
    # SQLite stores UTCDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' text: keep that exact shape so
    # the bucket compares and reads back like any other timestamp.
    return func.strftime("%Y-%m-%d %H:00:00.000000", MetricSample.ts)


def prune(session: Session, *, settings: Settings, now: dt.datetime | None = None) -> PruneReport:
    """Downsample raw samples older than ``retention.raw_days`` into hourly averages and delete
    them; delete hourly samples older than ``retention.hourly_days``. Idempotent."""
    now = now or utcnow()
    retention = settings.infra.retention
    raw_cutoff = _floor_hour(now - dt.timedelta(days=retention.raw_days))
    hourly_cutoff = _floor_hour(now - dt.timedelta(days=max(retention.hourly_days, retention.raw_days)))

    bucket = _hour_bucket(session).label("bucket")
    grouped = (sa_select(MetricSample.server_id.label("server_id"), bucket,  # type: ignore[attr-defined]
                         func.avg(MetricSample.load1).label("load1"),
                         func.avg(MetricSample.mem_percent).label("mem_percent"),
                         func.avg(MetricSample.disk_percent).label("disk_percent"))
               .where(MetricSample.resolution == "raw", col(MetricSample.ts) < raw_cutoff,
                      col(MetricSample.ts) >= hourly_cutoff)
               .group_by(MetricSample.server_id, bucket)
               .subquery())
    existing = aliased(MetricSample)
    # An hour that already has its average (samples that arrived late for an hour pruned before)
    # is not written twice.
    source = (sa_select(grouped.c.server_id, grouped.c.bucket, literal("hour"), grouped.c.load1,
                        grouped.c.mem_percent, grouped.c.disk_percent)
              .where(~exists().where(and_(existing.server_id == grouped.c.server_id,
                                          existing.resolution == "hour", existing.ts == grouped.c.bucket))))
    # RETURNING counts the rows on both backends (psycopg reports rowcount -1 for INSERT ... SELECT).
    written = len(session.execute(insert(MetricSample).from_select(
        ["server_id", "ts", "resolution", "load1", "mem_percent", "disk_percent"], source)
        .returning(MetricSample.id)).all())
    raw_deleted = session.execute(delete(MetricSample).where(
        MetricSample.resolution == "raw", col(MetricSample.ts) < raw_cutoff)).rowcount or 0
    hourly_deleted = session.execute(delete(MetricSample).where(
        MetricSample.resolution == "hour", col(MetricSample.ts) < hourly_cutoff)).rowcount or 0
    session.flush()
    return PruneReport(raw_cutoff, hourly_cutoff, int(written), int(raw_deleted), int(hourly_deleted))
