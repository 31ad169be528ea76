"""History queries and retention (raw -> hourly averages -> gone) on a real database."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import insert
from sqlmodel import col, select

from unityctl.core.errors import NotFoundError, UsageError
from unityctl.infra import history, servers
from unityctl.infra.models import MetricSample

NOW = dt.datetime(2026, 3, 10, 12, 30, tzinfo=dt.timezone.utc)


def _server(env, name: str = "here") -> int:
    with env.session() as s:
        return servers.add_server(s, env.keyring, name=name, local=True).id


def _ten_days(env, server_id: int) -> list[dict]:
    """10 days of 5-minute samples ending at NOW; load = hour of day + minute/100 (known averages)."""
    rows = []
    start = NOW - dt.timedelta(days=10)
    t = start
    while t <= NOW:
        rows.append({"server_id": server_id, "ts": t, "resolution": "raw", "load1": t.hour + t.minute / 100,
                     "mem_percent": 50.0, "disk_percent": float(t.day)})
        t += dt.timedelta(minutes=5)
    with env.session() as s:
        s.execute(insert(MetricSample), rows)
    return rows


def test_prune_keeps_raw_samples_for_raw_days_and_hourly_averages_before(env):
    sid = _server(env)
    rows = _ten_days(env, sid)
    with env.session() as s:
        report = history.prune(s, settings=env.settings, now=NOW)
    cutoff = dt.datetime(2026, 3, 3, 12, 0, tzinfo=dt.timezone.utc)  # NOW - 7 days, floored to the hour
    assert report.raw_cutoff == cutoff
    old = [r for r in rows if r["ts"] < cutoff]
    assert report.raw_deleted == len(old)
    with env.session(write=False) as s:
        raw = s.exec(select(MetricSample).where(MetricSample.resolution == "raw")).all()
        hourly = s.exec(select(MetricSample).where(MetricSample.resolution == "hour")
                        .order_by(col(MetricSample.ts))).all()
    assert raw and min(r.ts for r in raw) >= cutoff
    assert len(raw) == len(rows) - len(old)
    # 10 days back from 12:30 starts at 12:30: hours 12:00 (partial) .. 11:00 the day of the cut-off.
    assert report.hourly_written == len(hourly) == 3 * 24
    assert all(h.ts < cutoff for h in hourly)
    first = hourly[0]
    assert first.ts == dt.datetime(2026, 2, 28, 12, 0, tzinfo=dt.timezone.utc)
    # Samples at 12:30..12:55 only (the series starts at 12:30): load 12.30..12.55 averages 12.425.
    assert first.load1 == pytest.approx(12.425)
    full = hourly[1]
    assert full.ts.hour == 13 and full.load1 == pytest.approx(13 + sum(range(0, 60, 5)) / 12 / 100)
    assert all(h.mem_percent == pytest.approx(50.0) for h in hourly)
    assert {h.disk_percent for h in hourly} == {28.0, 1.0, 2.0, 3.0}


def test_prune_is_idempotent(env):
    sid = _server(env)
    _ten_days(env, sid)
    with env.session() as s:
        history.prune(s, settings=env.settings, now=NOW)
    with env.session(write=False) as s:
        before = [(m.ts, m.resolution, m.load1) for m in s.exec(select(MetricSample).order_by(col(MetricSample.id)))]
    with env.session() as s:
        again = history.prune(s, settings=env.settings, now=NOW)
    with env.session(write=False) as s:
        after = [(m.ts, m.resolution, m.load1) for m in s.exec(select(MetricSample).order_by(col(MetricSample.id)))]
    assert (again.hourly_written, again.raw_deleted, again.hourly_deleted) == (0, 0, 0)
    assert before == after


def test_hourly_samples_older_than_hourly_days_are_deleted(env):
    sid = _server(env)
    _ten_days(env, sid)
    env.settings.infra.retention.raw_days = 2
    env.settings.infra.retention.hourly_days = 5
    with env.session() as s:
        history.prune(s, settings=env.settings, now=NOW)
    with env.session() as s:
        # A month later, nothing is recent enough to keep.
        report = history.prune(s, settings=env.settings, now=NOW + dt.timedelta(days=30))
    with env.session(write=False) as s:
        left = s.exec(select(MetricSample)).all()
    assert left == [] and report.hourly_deleted > 0


def test_the_history_query_returns_raw_and_hourly_points_oldest_first(env):
    sid = _server(env)
    _ten_days(env, sid)
    with env.session() as s:
        history.prune(s, settings=env.settings, now=NOW)
    with env.session(write=False) as s:
        day = history.history(s, server="here", metric="load", since=dt.timedelta(hours=24), now=NOW)
        all_ = history.samples(s, server="here", metric="disk", since=dt.timedelta(days=30), now=NOW)
    assert day["count"] == 24 * 12 + 1
    assert {p["resolution"] for p in day["points"]} == {"raw"}
    assert day["points"][-1]["ts"] == NOW and day["last"] == pytest.approx(12.30)
    assert day["max"] == pytest.approx(23.55) and day["min"] == pytest.approx(0.0)
    assert [ts for ts, _, _ in all_] == sorted(ts for ts, _, _ in all_)
    assert {res for _, _, res in all_} == {"raw", "hour"}


def test_history_of_an_unknown_server_or_metric_is_an_error(env):
    _server(env)
    with env.session(write=False) as s:
        with pytest.raises(NotFoundError):
            history.samples(s, server="nope", metric="load", since=dt.timedelta(hours=1))
        with pytest.raises(UsageError, match="unknown metric"):
            history.samples(s, server="here", metric="cpu", since=dt.timedelta(hours=1))


def test_the_prune_task_runs_in_its_own_session(env):
    from unityctl.infra.tasks import prune

    sid = _server(env)
    _ten_days(env, sid)
    report = prune(NOW, sessions=env.session, settings=env.settings)
    assert report.raw_deleted > 0 and report.hourly_written == 72


def test_sparkline_scales_values_to_eight_levels_and_to_the_width():
    assert history.sparkline([]) == ""
    assert history.sparkline([1, 1, 1]) == "▁▁▁"
    assert history.sparkline([0, 7]) == "▁█"
    assert len(history.sparkline(list(range(500)), width=40)) == 40
