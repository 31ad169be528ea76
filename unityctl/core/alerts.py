"""Alerts: raised by dedup key (never duplicated), resolved when the condition clears.

Notification policy (what a user of Alertmanager or Scrutiny would expect):
- a new alert, or one that comes back after being resolved, notifies at once;
- a rise in severity notifies at once, even when acknowledged or snoozed;
- an alert that stays open repeats with exponential back-off (``alerts.repeat_after`` doubling up
  to ``alerts.repeat_max``), unless acknowledged or snoozed;
- resolving notifies once, if anything had been sent for it.
Notifications are queued in ``notification_log`` inside the caller's transaction (an outbox) and
delivered after commit by :func:`unityctl.core.notify.deliver_pending`, so a dead channel can
never break or roll back the caller.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from unityctl.core.alert_states import ACTIVE, SEVERITIES, STATES
from unityctl.core.config import AlertsConfig
from unityctl.core.db import utcnow
from unityctl.core.errors import NotFoundError, UsageError
from unityctl.core.models import Alert


def severity_rank(severity: str) -> int:
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise UsageError(f"unknown severity {severity!r} (use one of {', '.join(SEVERITIES)})") from None


def repeat_interval(config: AlertsConfig, notify_count: int) -> dt.timedelta:
    """How long to wait before repeating a notification that was already sent ``notify_count`` times."""
    seconds = config.repeat_after * (2 ** max(notify_count - 1, 0))
    return dt.timedelta(seconds=min(seconds, config.repeat_max))


@dataclass
class Raised:
    alert: Alert
    event: str  # "raised" | "escalated" | "repeat" | "unchanged"
    notify: bool


def raise_alert(session: Session, *, type: str, severity: str, source_type: str, source_id: str | int,
                dedup_key: str, message: str, details: dict[str, Any] | None = None,
                config: AlertsConfig | None = None, now: dt.datetime | None = None) -> Raised:
    """Open or refresh the alert with ``dedup_key``; queue notifications as the policy says."""
    from unityctl.core import notify

    config = config or AlertsConfig()
    now = now or utcnow()
    severity_rank(severity)
    alert = session.exec(select(Alert).where(Alert.dedup_key == dedup_key)).first()
    if alert is None or alert.state == "resolved":
        if alert is None:
            alert = Alert(type=type, severity=severity, source_type=source_type, source_id=str(source_id),
                          dedup_key=dedup_key, message=message, first_seen=now, last_seen=now)
        else:
            alert.state, alert.resolved_at, alert.count, alert.first_seen = "open", None, 1, now
            alert.notify_count, alert.last_notified_at, alert.notified_severity = 0, None, None
            alert.acknowledged_by, alert.snoozed_until = None, None
        event = "raised"
    else:
        alert.count += 1
        rising = severity_rank(severity) > severity_rank(alert.notified_severity or alert.severity)
        if rising:
            event, alert.state = "escalated", "open"
        else:
            event = "repeat"
    alert.severity, alert.message, alert.last_seen = severity, message, now
    alert.type, alert.source_type, alert.source_id = type, source_type, str(source_id)
    alert.details = json.dumps(details or {}, sort_keys=True, default=str)
    snoozed = alert.snoozed_until is not None and alert.snoozed_until > now
    if event == "raised" or event == "escalated":
        should = True
    elif alert.state == "acknowledged" or snoozed:
        should = False
    else:
        due = alert.last_notified_at is None or now - alert.last_notified_at >= repeat_interval(
            config, alert.notify_count)
        should = due
    if not should and event == "repeat":
        event = "unchanged"
    session.add(alert)
    session.flush()
    if should:
        alert.last_notified_at, alert.notified_severity = now, severity
        alert.notify_count += 1
        session.add(alert)
        notify.queue(session, alert, event)
    return Raised(alert, event, should)


def clear_alert(session: Session, *, dedup_key: str, now: dt.datetime | None = None) -> Alert | None:
    """Resolve the alert with ``dedup_key`` if it is active; returns it, or None when nothing was open."""
    from unityctl.core import notify

    alert = session.exec(select(Alert).where(Alert.dedup_key == dedup_key)).first()
    if alert is None or alert.state not in ACTIVE:
        return None
    alert.state, alert.resolved_at = "resolved", now or utcnow()
    session.add(alert)
    session.flush()
    if alert.notify_count:
        notify.queue(session, alert, "resolved")
    return alert


def get(session: Session, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFoundError(f"no alert with id {alert_id}")
    return alert


def list_alerts(session: Session, *, state: str = "open", type: str | None = None,
                source: str | None = None) -> list[Alert]:
    """Alerts by state (``open`` means open or acknowledged; ``all``), type and source, newest first."""
    query = select(Alert)
    if state == "open":
        query = query.where(col(Alert.state).in_(ACTIVE))
    elif state in STATES:
        query = query.where(Alert.state == state)
    elif state != "all":
        raise UsageError(f"unknown state {state!r} (use open, acknowledged, resolved or all)")
    if type:
        query = query.where(Alert.type == type)
    if source:
        stype, _, sid = source.partition("/")
        query = query.where(Alert.source_type == stype)
        if sid:
            query = query.where(Alert.source_id == sid)
    return list(session.exec(query.order_by(col(Alert.last_seen).desc(), col(Alert.id).desc())).all())


def acknowledge(session: Session, alert_id: int, *, by: str) -> Alert:
    alert = get(session, alert_id)
    if alert.state == "resolved":
        raise UsageError(f"alert {alert_id} is already resolved")
    alert.state, alert.acknowledged_by = "acknowledged", by
    session.add(alert)
    return alert


def snooze(session: Session, alert_id: int, *, until: dt.datetime) -> Alert:
    alert = get(session, alert_id)
    alert.snoozed_until = until
    session.add(alert)
    return alert


def resolve(session: Session, alert_id: int) -> Alert:
    alert = get(session, alert_id)
    if alert.state == "resolved":
        return alert
    cleared = clear_alert(session, dedup_key=alert.dedup_key)
    return cleared or alert


def to_dict(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id, "type": alert.type, "severity": alert.severity, "state": alert.state,
        "source": f"{alert.source_type}/{alert.source_id}", "dedup_key": alert.dedup_key,
        "message": alert.message, "details": json.loads(alert.details or "{}"), "count": alert.count,
        "first_seen": alert.first_seen, "last_seen": alert.last_seen, "resolved_at": alert.resolved_at,
        "snoozed_until": alert.snoozed_until, "acknowledged_by": alert.acknowledged_by,
        "notify_count": alert.notify_count,
    }
