"""`unityctl alerts`: list and act on alerts; manage notification channels."""

from __future__ import annotations

from typing import Annotated

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx, read_secret_stdin
from unityctl.core.errors import UsageError

app = typer.Typer(help="Alerts (open, acknowledged, resolved) and notification channels.", no_args_is_help=True)
channels = typer.Typer(help="Where notifications go: email, webhook, any Apprise URL.", no_args_is_help=True)
app.add_typer(channels, name="channels")


def _render_alerts(out, docs):  # type: ignore[no-untyped-def]
    from unityctl.core.output import ago

    out.table(["id", "severity", "state", "type", "source", "message", "count", "last seen"],
              [(d["id"], d["severity"], d["state"], d["type"], d["source"], d["message"], d["count"],
                ago(d["last_seen"])) for d in docs], empty="no alerts")


@app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[str, typer.Option(help="open (incl. acknowledged), acknowledged, resolved, or all.")] = "open",
    type_: Annotated[str | None, typer.Option("--type", help="Only this alert type.")] = None,
    source: Annotated[str | None, typer.Option(help="Only this source: TYPE or TYPE/ID.")] = None,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 4 when any alert is listed.")] = False,
    json_: JsonOpt = False,
) -> None:
    """List alerts, newest first."""
    from unityctl.core import alerts
    from unityctl.core.errors import EXIT_ATTENTION

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = [alerts.to_dict(x) for x in alerts.list_alerts(session, state=state, type=type_, source=source)]
    out.emit(docs, lambda c: _render_alerts(out, docs))
    if exit_code and docs:
        raise typer.Exit(EXIT_ATTENTION)


@app.command()
def show(ctx: typer.Context, alert_id: int, json_: JsonOpt = False) -> None:
    """Show one alert and its notification attempts."""
    from unityctl.core import alerts, notify

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        doc = alerts.to_dict(alerts.get(session, alert_id))
        doc["notifications"] = [{"channel": n.channel_name, "event": n.event, "attempt": n.attempt,
                                 "status": n.status, "error": n.error, "at": n.created_at}
                                for n in notify.log_entries(session, alert_id=alert_id)]
    out.emit(doc)


def _mutate(ctx: typer.Context, alert_id: int, action: str, change) -> None:  # type: ignore[no-untyped-def]
    from unityctl.core import alerts, audit

    a = app_ctx(ctx)
    keyring = a.keyring()
    with a.session(write=True) as session:
        alert = change(session)
        audit.record(session, keyring, action=f"core.alerts.{action}", object_type="alert", object_id=alert_id,
                     details={"type": alert.type, "source": f"{alert.source_type}/{alert.source_id}"})
        state = alerts.to_dict(alert)["state"]
    a.output().success(f"alert {alert_id}: {state}")


@app.command()
def ack(ctx: typer.Context, alert_id: int) -> None:
    """Acknowledge an alert: no more repeat notifications (a rise in severity still notifies)."""
    from unityctl.core import alerts, audit

    _mutate(ctx, alert_id, "ack", lambda s: alerts.acknowledge(s, alert_id, by=audit.actor()))


@app.command()
def snooze(ctx: typer.Context, alert_id: int,
           duration: Annotated[str, typer.Argument(help="For how long, e.g. 2h, 1d.")] = "1h") -> None:
    """Silence an alert's repeat notifications for a while."""
    from unityctl.core import alerts
    from unityctl.core.db import utcnow
    from unityctl.core.durations import parse_timedelta

    until = utcnow() + parse_timedelta(duration)
    _mutate(ctx, alert_id, "snooze", lambda s: alerts.snooze(s, alert_id, until=until))


@app.command()
def resolve(ctx: typer.Context, alert_id: int) -> None:
    """Resolve an alert by hand (it opens again if its condition comes back)."""
    from unityctl.core import alerts

    _mutate(ctx, alert_id, "resolve", lambda s: alerts.resolve(s, alert_id))


@app.command("log")
def log_(ctx: typer.Context, limit: int = 50, json_: JsonOpt = False) -> None:
    """Recent notification attempts and their results."""
    from unityctl.core import notify

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = [{"id": n.id, "alert_id": n.alert_id, "channel": n.channel_name, "event": n.event,
                 "attempt": n.attempt, "status": n.status, "error": n.error, "at": n.created_at,
                 "next_retry_at": n.next_retry_at} for n in notify.log_entries(session, limit=limit)]
    out.emit(docs, lambda c: out.table(["id", "alert", "channel", "event", "attempt", "status", "error"],
                                       [(d["id"], d["alert_id"], d["channel"], d["event"], d["attempt"], d["status"],
                                         d["error"]) for d in docs], empty="no notifications yet"))


@app.command()
def deliver(ctx: typer.Context) -> None:
    """Send queued and due notifications now (the daemon does this on a timer)."""
    from unityctl.core.notify import deliver_pending

    a = app_ctx(ctx)
    report = deliver_pending(a.engine(), a.keyring(), config=a.settings.alerts)
    a.output().note(f"sent {report.sent}, to retry {report.retry}, failed {report.failed}")


@channels.command("add")
def channels_add(
    ctx: typer.Context,
    name: str,
    email: Annotated[list[str] | None, typer.Option(help="Recipient address (repeatable): an email channel.")] = None,
    smtp_host: Annotated[str, typer.Option(help="SMTP server.")] = "localhost",
    smtp_port: Annotated[int, typer.Option(help="SMTP port.")] = 25,
    smtp_from: Annotated[str | None, typer.Option(help="Sender address.")] = None,
    smtp_user: Annotated[str | None, typer.Option(help="SMTP login (password from --smtp-password-stdin).")] = None,
    smtp_password_stdin: Annotated[bool, typer.Option(help="Read the SMTP password from stdin.")] = False,
    smtp_security: Annotated[str, typer.Option(help="none, starttls or ssl.")] = "none",
    webhook: Annotated[str | None, typer.Option(help="POST a JSON document to this URL ('-': read it from "
                                                "stdin, keeping tokens out of shell history).")] = None,
    apprise_url: Annotated[str | None, typer.Option("--apprise", help="Any Apprise URL (ntfy://, gotify://, "
                                                    "discord://, slack://, tgram://, ...); '-' reads stdin.")] = None,
    min_severity: Annotated[str, typer.Option(help="Only alerts at least this severe.")] = "warning",
) -> None:
    """Add a notification channel (its URL or password is stored encrypted)."""
    from unityctl.core import audit, notify

    kinds = [k for k, v in (("email", email), ("webhook", webhook), ("apprise", apprise_url)) if v]
    if len(kinds) != 1:
        raise UsageError("give exactly one of --email, --webhook, --apprise")
    kind = kinds[0]
    if kind == "email":
        settings = {"host": smtp_host, "port": smtp_port, "sender": smtp_from or f"unityctl@{smtp_host}",
                    "recipients": email, "security": smtp_security, "username": smtp_user}
        secret = {"password": read_secret_stdin("SMTP password")} if smtp_password_stdin else {}
    else:
        url = webhook or apprise_url or ""
        settings, secret = {}, {"url": read_secret_stdin("URL") if url == "-" else url}
    a = app_ctx(ctx)
    keyring = a.keyring()
    with a.session(write=True) as session:
        channel = notify.add_channel(session, keyring, name=name, kind=kind, settings=settings, secret=secret,
                                     min_severity=min_severity)
        audit.record(session, keyring, action="core.alerts.channels.add", object_type="alert_channel",
                     object_id=name, details={"kind": kind, "min_severity": min_severity})
        target = notify.describe_target(channel, secret)
    a.output().success(f"channel {name} ({kind}) -> {target}")


@channels.command("list")
def channels_list(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List notification channels (targets shown without tokens or passwords)."""
    from unityctl.core import notify

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = [notify.channel_to_dict(c) for c in notify.list_channels(session)]
    out.emit(docs, lambda c: out.table(["name", "kind", "min severity", "enabled", "target"],
                                       [(d["name"], d["kind"], d["min_severity"], d["enabled"], d["target"])
                                        for d in docs], empty="no channels: add one with `alerts channels add`"))


@channels.command("test")
def channels_test(ctx: typer.Context, name: str) -> None:
    """Send a test notification through a channel now."""
    from unityctl.core import notify

    a = app_ctx(ctx)
    keyring = a.keyring()
    with a.session(write=True) as session:
        notify.test_channel(session, keyring, name, config=a.settings.alerts)
    a.output().success(f"test notification delivered through {name}")


@channels.command("remove")
def channels_remove(ctx: typer.Context, name: str) -> None:
    """Remove a notification channel and its stored secret."""
    from unityctl.core import audit, notify

    a = app_ctx(ctx)
    keyring = a.keyring()
    with a.session(write=True) as session:
        notify.remove_channel(session, name)
        audit.record(session, keyring, action="core.alerts.channels.remove", object_type="alert_channel",
                     object_id=name)
    a.output().success(f"channel {name} removed")
