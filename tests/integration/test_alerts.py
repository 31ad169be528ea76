"""Alerts: dedup by key, resolve and reopen, repeat back-off, escalation, ack/snooze, and the CLI."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlmodel import col, select

from tests.conftest import CLI, Env
from unityctl.core import alerts, config, notify
from unityctl.core.config import AlertsConfig
from unityctl.core.db import make_engine, session_scope
from unityctl.core.errors import UsageError
from unityctl.core.models import Alert, NotificationLog

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
POLICY = AlertsConfig(repeat_after=100, repeat_max=350)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _raise(env: Env, *, severity: str = "warning", now: dt.datetime = T0, key: str = "disk:sda@nas",
           type_: str = "storage_warning") -> alerts.Raised:
    with env.session() as session:
        return alerts.raise_alert(session, type=type_, severity=severity, source_type="server", source_id="nas",
                                  dedup_key=key, message=f"sda on nas is {severity}", details={"disk": "sda"},
                                  config=POLICY, now=now)


def _alert(env: Env, key: str = "disk:sda@nas") -> Alert:
    with env.session(write=False) as session:
        return session.exec(select(Alert).where(Alert.dedup_key == key)).one()


def _queued(env: Env) -> list[tuple[str, str]]:
    with env.session(write=False) as session:
        rows = session.exec(select(NotificationLog).order_by(col(NotificationLog.id))).all()
        return [(row.event, row.channel_name) for row in rows]


@pytest.fixture
def channel(env: Env) -> str:
    """A webhook channel (never delivered in these tests: only the queue is looked at)."""
    with env.session() as session:
        notify.add_channel(session, env.keyring, name="hook", kind="webhook", settings={},  # type: ignore[arg-type]
                           secret={"url": "http://127.0.0.1:9/hook"}, min_severity="warning")
    return "hook"


# --- dedup, resolve, reopen ---------------------------------------------------------------------------

def test_raising_twice_with_the_same_dedup_key_updates_one_alert(env: Env, channel: str) -> None:
    first = _raise(env, now=at(0))
    second = _raise(env, now=at(10))
    assert (first.event, first.notify) == ("raised", True)
    assert (second.event, second.notify) == ("unchanged", False)
    with env.session(write=False) as session:
        rows = session.exec(select(Alert)).all()
    assert len(rows) == 1
    alert = rows[0]
    assert alert.count == 2 and alert.state == "open"
    assert alert.first_seen == at(0) and alert.last_seen == at(10)
    assert _queued(env) == [("raised", "hook")]


def test_different_dedup_keys_make_different_alerts(env: Env) -> None:
    _raise(env, key="disk:sda@nas")
    _raise(env, key="disk:sdb@nas")
    with env.session(write=False) as session:
        assert len(session.exec(select(Alert)).all()) == 2


def test_clearing_resolves_the_alert_and_raising_again_reopens_it(env: Env, channel: str) -> None:
    _raise(env, now=at(0))
    _raise(env, now=at(5))
    with env.session() as session:
        cleared = alerts.clear_alert(session, dedup_key="disk:sda@nas", now=at(60))
    assert cleared is not None
    alert = _alert(env)
    assert alert.state == "resolved" and alert.resolved_at == at(60)
    with env.session() as session:
        assert alerts.clear_alert(session, dedup_key="disk:sda@nas", now=at(61)) is None  # already resolved

    again = _raise(env, now=at(120))
    assert (again.event, again.notify) == ("raised", True)
    alert = _alert(env)
    assert alert.state == "open" and alert.resolved_at is None
    assert alert.count == 1 and alert.first_seen == at(120)
    assert _queued(env) == [("raised", "hook"), ("resolved", "hook"), ("raised", "hook")]
    with env.session(write=False) as session:
        assert len(session.exec(select(Alert)).all()) == 1


def test_clearing_an_unknown_key_does_nothing(env: Env) -> None:
    with env.session() as session:
        assert alerts.clear_alert(session, dedup_key="nothing") is None


def test_resolving_an_alert_that_never_notified_sends_nothing(env: Env) -> None:
    # Raised before any channel existed: nothing was sent, so no "resolved" message either... but the
    # alert did count a notification (the policy ran); add the channel afterwards and resolve.
    with env.session() as session:
        alert = alerts.raise_alert(session, type="t", severity="info", source_type="s", source_id="1",
                                   dedup_key="k", message="m", config=POLICY, now=at(0)).alert
        alert.notify_count = 0
        session.add(alert)
    with env.session() as session:
        notify.add_channel(session, env.keyring, name="hook", kind="webhook", settings={},  # type: ignore[arg-type]
                           secret={"url": "http://127.0.0.1:9/hook"}, min_severity="info")
        alerts.clear_alert(session, dedup_key="k", now=at(1))
    assert _queued(env) == []


# --- back-off ----------------------------------------------------------------------------------------

def test_repeat_notifications_back_off_exponentially_up_to_repeat_max(env: Env, channel: str) -> None:
    # repeat_after 100 s, repeat_max 350 s: repeats are due after 100, then 200, then 350 (400 capped), 350...
    timeline = {0: True, 50: False, 99: False, 100: True, 150: False, 299: False, 300: True, 500: False,
                649: False, 650: True, 999: False, 1000: True, 1349: False, 1350: True}
    for second, expected in timeline.items():
        result = _raise(env, now=at(second))
        assert result.notify is expected, f"at +{second}s: notify={result.notify}, expected {expected}"
        assert result.event == ("raised" if second == 0 else "repeat" if expected else "unchanged")
    alert = _alert(env)
    assert alert.count == len(timeline)
    assert alert.notify_count == sum(timeline.values())
    assert alert.last_notified_at == at(1350)
    assert [event for event, _ in _queued(env)] == ["raised"] + ["repeat"] * (sum(timeline.values()) - 1)


def test_repeat_interval_doubles_and_is_capped() -> None:
    policy = AlertsConfig(repeat_after=60, repeat_max=600)
    assert [alerts.repeat_interval(policy, n).total_seconds() for n in range(1, 7)] == [60, 120, 240, 480, 600, 600]


# --- severity, acknowledge, snooze ---------------------------------------------------------------------

def test_a_rise_in_severity_notifies_at_once(env: Env, channel: str) -> None:
    _raise(env, severity="warning", now=at(0))
    rising = _raise(env, severity="critical", now=at(1))
    assert (rising.event, rising.notify) == ("escalated", True)
    assert _alert(env).severity == "critical"
    # Back down and up again within the back-off: no new message for the same severity.
    assert _raise(env, severity="warning", now=at(2)).notify is False
    assert _raise(env, severity="critical", now=at(3)).notify is False
    assert [event for event, _ in _queued(env)] == ["raised", "escalated"]


@pytest.mark.parametrize("silence", ["acknowledge", "snooze"])
def test_acknowledged_or_snoozed_alerts_do_not_repeat_but_a_rise_in_severity_still_notifies(
        env: Env, channel: str, silence: str) -> None:
    alert_id = _raise(env, severity="info", now=at(0)).alert.id
    with env.session() as session:
        if silence == "acknowledge":
            alerts.acknowledge(session, alert_id, by="ops@test")  # type: ignore[arg-type]
        else:
            alerts.snooze(session, alert_id, until=at(10_000))  # type: ignore[arg-type]
    for second in (100, 300, 650, 5000):
        assert _raise(env, severity="info", now=at(second)).notify is False, second
    assert _raise(env, severity="warning", now=at(5001)).notify is True
    assert _raise(env, severity="critical", now=at(5002)).event == "escalated"
    # The "info" alert never reached the warning channel; the two escalations did.
    assert [event for event, _ in _queued(env)] == ["escalated", "escalated"]


def test_repeats_resume_when_a_snooze_ends(env: Env) -> None:
    alert_id = _raise(env, now=at(0)).alert.id
    with env.session() as session:
        alerts.snooze(session, alert_id, until=at(1000))  # type: ignore[arg-type]
    assert _raise(env, now=at(500)).notify is False
    assert _raise(env, now=at(1001)).notify is True


def test_acknowledging_a_resolved_alert_is_a_usage_error(env: Env) -> None:
    alert_id = _raise(env).alert.id
    with env.session() as session:
        alerts.resolve(session, alert_id)  # type: ignore[arg-type]
    with env.session() as session, pytest.raises(UsageError, match="already resolved"):
        alerts.acknowledge(session, alert_id, by="x")  # type: ignore[arg-type]


def test_a_channel_only_gets_alerts_at_or_above_its_minimum_severity(env: Env, channel: str) -> None:
    _raise(env, severity="info", key="a")
    _raise(env, severity="warning", key="b")
    _raise(env, severity="critical", key="c")
    assert len(_queued(env)) == 2


def test_an_unknown_severity_is_refused(env: Env) -> None:
    with pytest.raises(UsageError, match="unknown severity"):
        _raise(env, severity="apocalyptic")


# --- the CLI ------------------------------------------------------------------------------------------

@dataclass
class Alerting:
    cli: CLI
    engine: object

    def raise_(self, key: str, *, type_: str = "server_offline", severity: str = "warning") -> int:
        with session_scope(self.engine, write=True) as session:  # type: ignore[arg-type]
            return alerts.raise_alert(session, type=type_, severity=severity, source_type="server",
                                      source_id=key, dedup_key=f"{type_}:{key}", message=f"{key} is down").alert.id  # type: ignore[return-value]

    def clear(self, key: str, *, type_: str = "server_offline") -> None:
        with session_scope(self.engine, write=True) as session:  # type: ignore[arg-type]
            alerts.clear_alert(session, dedup_key=f"{type_}:{key}")


@pytest.fixture
def alerting(icli: CLI) -> Iterator[Alerting]:
    engine = make_engine(config.load().database_url)
    yield Alerting(icli, engine)
    engine.dispose()


def _ids(result) -> list[int]:  # type: ignore[no-untyped-def]
    assert result.code in (0, 4), result
    return sorted(doc["id"] for doc in result.json())


def test_alerts_list_filters_by_state_and_type(alerting: Alerting) -> None:
    web = alerting.raise_("web")
    db = alerting.raise_("db", type_="database_unreachable", severity="critical")
    gone = alerting.raise_("old")
    alerting.clear("old")
    cli = alerting.cli
    assert _ids(cli("alerts", "list", "--json")) == sorted([web, db])
    assert _ids(cli("alerts", "list", "--state", "open", "--json")) == sorted([web, db])
    assert _ids(cli("alerts", "list", "--state", "resolved", "--json")) == [gone]
    assert _ids(cli("alerts", "list", "--state", "all", "--json")) == sorted([web, db, gone])
    assert _ids(cli("alerts", "list", "--state", "all", "--type", "server_offline", "--json")) == sorted([web, gone])
    assert _ids(cli("alerts", "list", "--type", "database_unreachable", "--json")) == [db]
    assert _ids(cli("alerts", "list", "--source", "server/web", "--json")) == [web]
    doc = next(d for d in cli("alerts", "list", "--json").json() if d["id"] == db)
    assert doc["severity"] == "critical" and doc["state"] == "open" and doc["source"] == "server/db"
    text = cli("alerts", "list")
    # (a table on a pipe is 80 columns wide: long cells wrap, so look for short words)
    assert text.code == 0 and "critical" in text.stdout and "web is" in text.stdout and "old is" not in text.stdout
    bad = cli("alerts", "list", "--state", "sideways")
    assert bad.code == 2 and "unknown state" in bad.stderr


def test_alerts_list_exit_code_is_4_when_alerts_are_open(alerting: Alerting) -> None:
    none = alerting.cli("alerts", "list", "--exit-code", "--json")
    assert none.code == 0 and none.json() == []
    alerting.raise_("web")
    some = alerting.cli("alerts", "list", "--exit-code", "--json")
    assert some.code == 4 and len(some.json()) == 1
    assert alerting.cli("alerts", "list", "--exit-code").code == 4
    assert alerting.cli("alerts", "list").code == 0  # only when asked


def test_alerts_show_ack_snooze_and_resolve_through_the_cli(alerting: Alerting) -> None:
    cli = alerting.cli
    alert_id = alerting.raise_("web")
    shown = cli("alerts", "show", alert_id, "--json")
    assert shown.code == 0, shown
    doc = shown.json()
    assert doc["id"] == alert_id and doc["state"] == "open" and doc["notifications"] == []
    assert cli("alerts", "show", alert_id).code == 0

    acked = cli("alerts", "ack", alert_id)
    assert acked.code == 0, acked
    doc = cli("alerts", "show", alert_id, "--json").json()
    assert doc["state"] == "acknowledged" and doc["acknowledged_by"]
    assert _ids(cli("alerts", "list", "--state", "acknowledged", "--json")) == [alert_id]
    assert _ids(cli("alerts", "list", "--json")) == [alert_id]  # "open" includes acknowledged

    snoozed = cli("alerts", "snooze", alert_id, "2h")
    assert snoozed.code == 0, snoozed
    until = dt.datetime.fromisoformat(cli("alerts", "show", alert_id, "--json").json()["snoozed_until"]
                                      .replace("Z", "+00:00"))
    assert dt.timedelta(hours=1) < until - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(hours=2)
    assert cli("alerts", "snooze", alert_id, "whenever").code == 2

    resolved = cli("alerts", "resolve", alert_id)
    assert resolved.code == 0, resolved
    doc = cli("alerts", "show", alert_id, "--json").json()
    assert doc["state"] == "resolved" and doc["resolved_at"]
    assert cli("alerts", "list", "--json").json() == []
    assert cli("alerts", "ack", alert_id).code == 2  # already resolved

    actions = [r["action"] for r in cli("audit", "list", "--object", f"alert/{alert_id}", "--json").json()]
    assert actions == ["core.alerts.ack", "core.alerts.snooze", "core.alerts.resolve"]
    assert cli("audit", "verify").code == 0


@pytest.mark.parametrize("command", [("show", "999"), ("ack", "999"), ("snooze", "999"), ("resolve", "999")])
def test_an_unknown_alert_id_is_one_error_line(alerting: Alerting, command: tuple[str, ...]) -> None:
    result = alerting.cli("alerts", *command)
    assert result.code == 1
    assert result.stderr.strip() == "unityctl: error: no alert with id 999"


def test_status_counts_open_alerts_by_severity(alerting: Alerting) -> None:
    alerting.raise_("a", severity="critical")
    alerting.raise_("b", severity="warning")
    alerting.raise_("c", severity="warning")
    alerting.raise_("d", severity="info")
    alerting.clear("d")
    doc = alerting.cli("status", "--json").json()
    assert doc["alerts"]["open"] == {"info": 0, "warning": 2, "critical": 1}
    text = alerting.cli("status")
    assert text.code == 0 and "1 critical" in text.stdout and "2 warning" in text.stdout
