"""Notification channels (email over SMTP, webhook, any Apprise URL) and delivery with retries.

Raising an alert only queues rows in ``notification_log`` (status ``pending``) inside the caller's
transaction. :func:`deliver_pending` sends them after commit: it claims due rows, sends without
holding a database transaction, then records each attempt (``sent``, ``retry`` with a next try
time, or ``failed`` after ``alerts.max_attempts``). A channel that fails never raises into the
caller; the failure is in the log and retried later (by the next command or the daemon).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, or_, select

from unityctl.core import secrets
from unityctl.core.config import AlertsConfig
from unityctl.core.crypto import Keyring
from unityctl.core.db import NOTIFICATIONS_PENDING, is_postgres, session_scope, utcnow
from unityctl.core.errors import AlreadyExistsError, NotFoundError, NotificationError, UsageError
from unityctl.core.models import Alert, AlertChannel, NotificationLog

log = logging.getLogger(__name__)

KINDS = ("email", "webhook", "apprise")
SECRET_OWNER = "alert_channel"
STALE_SENDING = dt.timedelta(minutes=10)


# --- channels -------------------------------------------------------------------------------------

def add_channel(session: Session, keyring: Keyring, *, name: str, kind: str, settings: dict[str, Any],
                secret: dict[str, str], min_severity: str = "warning") -> AlertChannel:
    """Create a channel; ``secret`` (URLs with tokens, SMTP password) is stored encrypted."""
    from unityctl.core.alerts import severity_rank

    if kind not in KINDS:
        raise UsageError(f"unknown channel kind {kind!r} (use {', '.join(KINDS)})")
    severity_rank(min_severity)
    if session.exec(select(AlertChannel).where(AlertChannel.name == name)).first():
        raise AlreadyExistsError(f"a channel named {name!r} already exists")
    _validate(kind, settings, secret)
    channel = AlertChannel(name=name, kind=kind, settings=json.dumps(settings, sort_keys=True),
                           min_severity=min_severity)
    session.add(channel)
    session.flush()
    secrets.put_secret(session, keyring, owner_type=SECRET_OWNER, owner_id=channel.id, name="config",  # type: ignore[arg-type]
                       value=json.dumps(secret).encode())
    return channel


def _validate(kind: str, settings: dict[str, Any], secret: dict[str, str]) -> None:
    if kind == "email":
        for key in ("host", "port", "sender", "recipients"):
            if not settings.get(key):
                raise UsageError(f"email channel needs {key}")
        if settings.get("security", "none") not in ("none", "starttls", "ssl"):
            raise UsageError("email security must be none, starttls or ssl")
    else:
        url = secret.get("url", "")
        if kind == "webhook" and not url.startswith(("http://", "https://")):
            raise UsageError("webhook URL must start with http:// or https://")
        if kind == "apprise" and "://" not in url:
            raise UsageError("apprise URL must look like scheme://... (e.g. ntfy://topic)")


def get_channel(session: Session, name: str) -> AlertChannel:
    channel = session.exec(select(AlertChannel).where(AlertChannel.name == name)).first()
    if channel is None:
        raise NotFoundError(f"no alert channel named {name!r}")
    return channel


def list_channels(session: Session) -> list[AlertChannel]:
    return list(session.exec(select(AlertChannel).order_by(AlertChannel.name)).all())


def remove_channel(session: Session, name: str) -> AlertChannel:
    channel = get_channel(session, name)
    secrets.delete_secrets(session, owner_type=SECRET_OWNER, owner_id=channel.id)  # type: ignore[arg-type]
    session.delete(channel)
    return channel


def describe_target(channel: AlertChannel, secret: dict[str, str] | None = None) -> str:
    """Where a channel sends, without anything secret: recipients, or the URL's scheme and host."""
    settings = json.loads(channel.settings)
    if channel.kind == "email":
        return f"{','.join(settings['recipients'])} via {settings['host']}:{settings['port']}"
    url = (secret or {}).get("url", "")
    if not url:
        return f"{channel.kind} (URL encrypted)"
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/…" if channel.kind == "webhook" else f"{scheme}://…"


def channel_to_dict(channel: AlertChannel) -> dict[str, Any]:
    return {"name": channel.name, "kind": channel.kind, "min_severity": channel.min_severity,
            "enabled": channel.enabled, "target": describe_target(channel), "created_at": channel.created_at}


# --- queueing -------------------------------------------------------------------------------------

def queue(session: Session, alert: Alert, event: str) -> int:
    """Queue one notification per enabled channel whose min_severity the alert reaches."""
    from unityctl.core.alerts import severity_rank

    count = 0
    for channel in session.exec(select(AlertChannel).where(AlertChannel.enabled == True)).all():  # noqa: E712
        if severity_rank(alert.severity) < severity_rank(channel.min_severity):
            continue
        session.add(NotificationLog(alert_id=alert.id, channel_id=channel.id, channel_name=channel.name,
                                    event=event, attempt=0, status="pending", next_retry_at=utcnow()))
        count += 1
    if count:
        session.info[NOTIFICATIONS_PENDING] = True
    return count


# --- delivery -------------------------------------------------------------------------------------

@dataclass
class Message:
    title: str
    body: str
    payload: dict[str, Any] = field(default_factory=dict)


def build_message(alert: Alert | None, event: str) -> Message:
    if alert is None:
        return Message("unityctl test notification", "This is a test notification from unityctl.",
                       {"event": "test", "tool": "unityctl"})
    verb = {"raised": "NEW", "escalated": "ESCALATED", "repeat": "STILL OPEN", "resolved": "RESOLVED"}.get(event, event)
    title = f"[unityctl] {verb} {alert.severity.upper()} {alert.type}: {alert.source_type}/{alert.source_id}"
    body = (f"{alert.message}\n\nalert #{alert.id}, seen {alert.count} time(s), first {alert.first_seen:%Y-%m-%d %H:%M} "
            f"UTC, last {alert.last_seen:%Y-%m-%d %H:%M} UTC, state {alert.state}")
    payload = {"tool": "unityctl", "event": event, "alert": {
        "id": alert.id, "type": alert.type, "severity": alert.severity, "state": alert.state,
        "source": f"{alert.source_type}/{alert.source_id}", "message": alert.message, "count": alert.count,
        "first_seen": alert.first_seen.isoformat(), "last_seen": alert.last_seen.isoformat()}}
    return Message(title, body, payload)


def send(kind: str, settings: dict[str, Any], secret: dict[str, str], message: Message, *, timeout: float) -> None:
    """Deliver one message through one channel; raises NotificationError (one line) on failure."""
    try:
        if kind == "email":
            _send_email(settings, secret, message, timeout)
        elif kind == "webhook":
            _send_webhook(secret["url"], message, timeout)
        elif kind == "apprise":
            _send_apprise(secret["url"], message)
        else:
            raise NotificationError(f"unknown channel kind {kind!r}")
    except NotificationError:
        raise
    except Exception as exc:  # noqa: BLE001 - every transport error becomes one logged line
        raise NotificationError(f"{kind} delivery failed: {exc.__class__.__name__}: "
                                f"{_without_secrets(str(exc), secret)}") from None


def _without_secrets(text: str, secret: dict[str, str]) -> str:
    for value in secret.values():
        if value:
            text = text.replace(value, "***")
    return text.splitlines()[0] if text else ""


def _send_email(settings: dict[str, Any], secret: dict[str, str], message: Message, timeout: float) -> None:
    import smtplib
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["Subject"], mail["From"], mail["To"] = message.title, settings["sender"], ", ".join(settings["recipients"])
    mail.set_content(message.body)
    security = settings.get("security", "none")
    smtp_cls = smtplib.SMTP_SSL if security == "ssl" else smtplib.SMTP
    with smtp_cls(settings["host"], int(settings["port"]), timeout=timeout) as smtp:
        if security == "starttls":
            smtp.starttls()
        if settings.get("username"):
            smtp.login(settings["username"], secret.get("password", ""))
        smtp.send_message(mail)


def _send_webhook(url: str, message: Message, timeout: float) -> None:
    import httpx

    response = httpx.post(url, json={"title": message.title, "body": message.body, **message.payload},
                          timeout=timeout)
    if response.status_code >= 300:
        raise NotificationError(f"webhook answered HTTP {response.status_code}")


def _send_apprise(url: str, message: Message) -> None:
    import apprise

    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise NotificationError("apprise does not understand this URL (check its scheme)")
    if not notifier.notify(title=message.title, body=message.body):
        raise NotificationError("apprise could not deliver the notification")


def _channel_secret(session: Session, keyring: Keyring, channel: AlertChannel) -> dict[str, str]:
    raw = secrets.get_secret(session, keyring, owner_type=SECRET_OWNER, owner_id=channel.id, name="config")  # type: ignore[arg-type]
    return json.loads(raw)


def test_channel(session: Session, keyring: Keyring, name: str, *, config: AlertsConfig) -> NotificationLog:
    """Send a test message now and log the attempt; raises NotificationError when it fails."""
    channel = get_channel(session, name)
    entry = NotificationLog(channel_id=channel.id, channel_name=channel.name, event="test", attempt=1,
                            status="sent")
    try:
        send(channel.kind, json.loads(channel.settings), _channel_secret(session, keyring, channel),
             build_message(None, "test"), timeout=config.delivery_timeout)
    except NotificationError as exc:
        entry.status, entry.error = "failed", str(exc)
        session.add(entry)
        session.commit()
        raise
    session.add(entry)
    return entry


@dataclass
class DeliveryReport:
    sent: int = 0
    retry: int = 0
    failed: int = 0


def deliver_pending(engine: Engine, keyring: Keyring, *, config: AlertsConfig,
                    now: dt.datetime | None = None) -> DeliveryReport:
    """Send every queued notification that is due. Never raises for a channel's failure."""
    now = now or utcnow()
    report = DeliveryReport()
    jobs: list[tuple[int, str, dict[str, Any], dict[str, str], Message, int]] = []
    with session_scope(engine, write=True) as session:
        # A row left "sending" by a process that died becomes due again when its claim expires.
        query = select(NotificationLog).where(
            col(NotificationLog.status).in_(("pending", "retry", "sending")),
            or_(NotificationLog.next_retry_at == None, col(NotificationLog.next_retry_at) <= now),  # noqa: E711
        ).order_by(NotificationLog.id)
        if is_postgres(session):
            # Several daemon replicas: each claims different rows.
            query = query.with_for_update(skip_locked=True)
        for entry in session.exec(query).all():
            channel = session.get(AlertChannel, entry.channel_id) if entry.channel_id else None
            if channel is None:
                entry.status, entry.error = "failed", "channel was removed"
                session.add(entry)
                continue
            alert = session.get(Alert, entry.alert_id) if entry.alert_id else None
            try:
                secret = _channel_secret(session, keyring, channel)
            except Exception as exc:  # noqa: BLE001
                entry.status, entry.error = "failed", str(exc)
                session.add(entry)
                continue
            entry.status, entry.attempt = "sending", entry.attempt + 1
            entry.next_retry_at = now + STALE_SENDING
            session.add(entry)
            jobs.append((entry.id, channel.kind, json.loads(channel.settings), secret,  # type: ignore[arg-type]
                         build_message(alert, entry.event), entry.attempt))
    results: dict[int, str | None] = {}
    for entry_id, kind, settings, secret, message, _attempt in jobs:
        try:
            send(kind, settings, secret, message, timeout=config.delivery_timeout)
            results[entry_id] = None
        except NotificationError as exc:
            log.warning("notification %s failed: %s", entry_id, exc)
            results[entry_id] = str(exc)
    if not results:
        return report
    with session_scope(engine, write=True) as session:
        for entry_id, error in results.items():
            entry = session.get(NotificationLog, entry_id)
            if entry is None:
                continue
            if error is None:
                entry.status, entry.error, entry.next_retry_at = "sent", None, None
                report.sent += 1
            elif entry.attempt >= config.max_attempts:
                entry.status, entry.error, entry.next_retry_at = "failed", error, None
                report.failed += 1
            else:
                entry.status, entry.error = "retry", error
                entry.next_retry_at = utcnow() + dt.timedelta(seconds=config.retry_after * 2 ** (entry.attempt - 1))
                report.retry += 1
            session.add(entry)
    return report


def log_entries(session: Session, *, alert_id: int | None = None, limit: int = 100) -> list[NotificationLog]:
    query = select(NotificationLog)
    if alert_id is not None:
        query = query.where(NotificationLog.alert_id == alert_id)
    return list(session.exec(query.order_by(col(NotificationLog.id).desc()).limit(limit)).all())
