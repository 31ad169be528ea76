"""Notification channels against real local servers: SMTP (aiosmtpd), a webhook (http.server), Apprise.

Every server listens on 127.0.0.1 on a free port and is started by the test. A "dead" channel
points at a port nobody listens on.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import col, select

from tests.conftest import CLI, Env
from unityctl.core import alerts, config, notify, secrets
from unityctl.core.config import AlertsConfig
from unityctl.core.context import AppContext
from unityctl.core.crypto import Keyring
from unityctl.core.db import make_engine, session_scope, utcnow
from unityctl.core.models import Alert, NotificationLog

SMTP_USER = "bob"
SMTP_PASSWORD = "smtp-Pa55word-do-not-leak"
WEBHOOK_TOKEN = "wh-t0ken-do-not-leak"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_contains(engine: Engine, needle: bytes) -> bool:
    """True when ``needle`` appears anywhere in the database: raw file bytes (SQLite) and every row."""
    url = make_url(str(engine.url))
    if url.get_backend_name() == "sqlite":
        raw = b"".join(Path(f"{url.database}{s}").read_bytes() for s in ("", "-wal")
                       if Path(f"{url.database}{s}").exists())
        if needle in raw:
            return True
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, (bytes, memoryview)) and needle in bytes(value):
                        return True
                    if isinstance(value, str) and needle.decode() in value:
                        return True
    return False


# --- a real SMTP server -------------------------------------------------------------------------------

@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage
    authenticated: bool


@dataclass
class SMTPServer:
    port: int
    inbox: list[Mail] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)


class _Inbox:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.server.inbox.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message,  # type: ignore[arg-type]
                                      bool(session.authenticated)))
        return "250 OK"


def _smtp(auth_required: bool) -> Iterator[SMTPServer]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    server = SMTPServer(free_port())

    def authenticator(_smtp: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            server.logins.append((data.login, data.password))
            if data.login == SMTP_USER.encode() and data.password == SMTP_PASSWORD.encode():
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    controller = Controller(_Inbox(server), hostname="127.0.0.1", port=server.port, authenticator=authenticator,
                            auth_required=auth_required, auth_require_tls=False)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    yield from _smtp(auth_required=False)


@pytest.fixture
def smtp_auth_server() -> Iterator[SMTPServer]:
    import warnings

    with warnings.catch_warnings():
        # aiosmtpd warns about AUTH without TLS: on 127.0.0.1 in a test, that is the point.
        warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
        yield from _smtp(auth_required=True)


# --- a real HTTP server -------------------------------------------------------------------------------

@dataclass
class Hook:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class HTTPServer:
    """A local webhook receiver; ``status`` is what it answers."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.requests: list[Hook] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                receiver.requests.append(Hook("POST", self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def http_server() -> Iterator[HTTPServer]:
    server = HTTPServer()
    yield server
    server.stop()


# --- helpers --------------------------------------------------------------------------------------------

def _raise(session: Any, key: str = "nas", severity: str = "critical", now: dt.datetime | None = None) -> Alert:
    return alerts.raise_alert(session, type="server_offline", severity=severity, source_type="server", source_id=key,
                              dedup_key=f"server_offline:{key}", message=f"{key} does not answer",
                              details={"failures": 3}, now=now).alert


def _add(env: Env, name: str, kind: str, settings: dict[str, Any], secret: dict[str, str],
         min_severity: str = "warning") -> None:
    with env.session() as session:
        notify.add_channel(session, env.keyring, name=name, kind=kind, settings=settings, secret=secret,  # type: ignore[arg-type]
                           min_severity=min_severity)


def _log(engine: Any) -> list[NotificationLog]:
    with session_scope(engine) as session:
        return list(session.exec(select(NotificationLog).order_by(col(NotificationLog.id))).all())


# --- email ----------------------------------------------------------------------------------------------

def test_an_alert_is_emailed_through_a_real_smtp_server(env: Env, smtp_server: SMTPServer) -> None:
    _add(env, "mail", "email", {"host": "127.0.0.1", "port": smtp_server.port, "sender": "unityctl@lab.test",
                                "recipients": ["ops@lab.test", "oncall@lab.test"], "security": "none"}, {})
    with env.session() as session:
        alert_id = _raise(session).id
    report = notify.deliver_pending(env.engine, env.keyring, config=AlertsConfig())  # type: ignore[arg-type]
    assert (report.sent, report.retry, report.failed) == (1, 0, 0)
    assert len(smtp_server.inbox) == 1
    mail = smtp_server.inbox[0]
    assert mail.mail_from == "unityctl@lab.test"
    assert sorted(mail.rcpt_tos) == ["oncall@lab.test", "ops@lab.test"]
    assert mail.message["Subject"] == "[unityctl] NEW CRITICAL server_offline: server/nas"
    assert mail.message["To"] == "ops@lab.test, oncall@lab.test"
    body = mail.message.get_content()
    assert "nas does not answer" in body and f"alert #{alert_id}" in body
    assert [(n.status, n.event, n.attempt) for n in _log(env.engine)] == [("sent", "raised", 1)]


def test_smtp_auth_uses_the_password_from_stdin_which_is_stored_encrypted(
        icli: CLI, smtp_auth_server: SMTPServer) -> None:
    added = icli("alerts", "channels", "add", "mail", "--email", "ops@lab.test", "--smtp-host", "127.0.0.1",
                 "--smtp-port", smtp_auth_server.port, "--smtp-from", "unityctl@lab.test", "--smtp-user", SMTP_USER,
                 "--smtp-password-stdin", input=SMTP_PASSWORD + "\n")
    assert added.code == 0, added
    tested = icli("alerts", "channels", "test", "mail")
    assert tested.code == 0, tested
    assert smtp_auth_server.logins == [(SMTP_USER.encode(), SMTP_PASSWORD.encode())]
    assert len(smtp_auth_server.inbox) == 1
    mail = smtp_auth_server.inbox[0]
    assert mail.authenticated and mail.rcpt_tos == ["ops@lab.test"]
    assert mail.message["Subject"] == "unityctl test notification"

    outputs = [added, tested, icli("alerts", "channels", "list"), icli("alerts", "channels", "list", "--json"),
               icli("audit", "list", "--json"), icli("audit", "export"), icli("alerts", "log", "--json")]
    assert all(SMTP_PASSWORD not in r.stdout + r.stderr for r in outputs)
    listed = icli("alerts", "channels", "list", "--json").json()
    assert listed[0]["target"] == f"ops@lab.test via 127.0.0.1:{smtp_auth_server.port}"
    engine = make_engine(config.load().database_url)
    try:
        assert not database_contains(engine, SMTP_PASSWORD.encode())
    finally:
        engine.dispose()


def test_a_wrong_smtp_password_fails_the_channel_test_in_one_line_without_the_password(
        icli: CLI, smtp_auth_server: SMTPServer) -> None:
    assert icli("alerts", "channels", "add", "mail", "--email", "ops@lab.test", "--smtp-host", "127.0.0.1",
                "--smtp-port", smtp_auth_server.port, "--smtp-user", SMTP_USER, "--smtp-password-stdin",
                input="not-the-password\n").code == 0
    result = icli("alerts", "channels", "test", "mail")
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unityctl: error: email delivery failed"), result.stderr
    assert "not-the-password" not in result.stderr
    assert smtp_auth_server.inbox == []
    logged = icli("alerts", "log", "--json").json()
    assert [(n["event"], n["status"]) for n in logged] == [("test", "failed")]
    assert logged[0]["error"] and "not-the-password" not in logged[0]["error"]


def test_smtp_password_stdin_must_not_be_empty(icli: CLI) -> None:
    result = icli("alerts", "channels", "add", "mail", "--email", "ops@lab.test", "--smtp-user", "bob",
                  "--smtp-password-stdin", input="")
    assert result.code == 2 and "standard input was empty" in result.stderr
    assert icli("alerts", "channels", "list", "--json").json() == []


# --- webhook ----------------------------------------------------------------------------------------------

def test_an_alert_is_posted_as_json_to_a_real_webhook(env: Env, http_server: HTTPServer) -> None:
    _add(env, "hook", "webhook", {}, {"url": http_server.url(f"/hook/{WEBHOOK_TOKEN}")})
    with env.session() as session:
        alert = _raise(session, severity="warning")
    report = notify.deliver_pending(env.engine, env.keyring, config=AlertsConfig())  # type: ignore[arg-type]
    assert report.sent == 1
    [hook] = http_server.requests
    assert hook.path == f"/hook/{WEBHOOK_TOKEN}"
    assert hook.headers["Content-Type"] == "application/json"
    body = hook.body
    assert body["tool"] == "unityctl" and body["event"] == "raised"
    assert body["title"] == "[unityctl] NEW WARNING server_offline: server/nas"
    assert body["alert"]["id"] == alert.id and body["alert"]["severity"] == "warning"
    assert body["alert"]["source"] == "server/nas" and body["alert"]["message"] == "nas does not answer"
    assert body["alert"]["state"] == "open" and body["alert"]["count"] == 1
    assert "nas does not answer" in body["body"]

    with env.session() as session:
        alerts.clear_alert(session, dedup_key="server_offline:nas")
    notify.deliver_pending(env.engine, env.keyring, config=AlertsConfig())  # type: ignore[arg-type]
    assert [r.body["event"] for r in http_server.requests] == ["raised", "resolved"]
    assert http_server.requests[1].body["alert"]["state"] == "resolved"


def test_the_webhook_token_never_appears_in_channel_listings_logs_or_the_database(
        icli: CLI, http_server: HTTPServer) -> None:
    url = http_server.url(f"/hook/{WEBHOOK_TOKEN}?key={WEBHOOK_TOKEN}x")
    added = icli("alerts", "channels", "add", "hook", "--webhook", "-", input=url + "\n")
    assert added.code == 0, added
    tested = icli("alerts", "channels", "test", "hook")
    assert tested.code == 0, tested
    assert http_server.requests[0].path == f"/hook/{WEBHOOK_TOKEN}?key={WEBHOOK_TOKEN}x"
    assert http_server.requests[0].body["event"] == "test"
    listed_text = icli("alerts", "channels", "list")
    listed_json = icli("alerts", "channels", "list", "--json")
    assert listed_text.code == 0 and "hook" in listed_text.stdout
    assert listed_json.json()[0]["name"] == "hook" and listed_json.json()[0]["kind"] == "webhook"
    outputs = [added, tested, listed_text, listed_json, icli("alerts", "log", "--json"), icli("audit", "export"),
               icli("config", "show"), icli("status", "--json")]
    for result in outputs:
        assert WEBHOOK_TOKEN not in result.stdout + result.stderr, result
    engine = make_engine(config.load().database_url)
    try:
        assert not database_contains(engine, WEBHOOK_TOKEN.encode())
    finally:
        engine.dispose()


def test_a_webhook_answering_an_error_status_is_retried(env: Env) -> None:
    server = HTTPServer(status=500)
    try:
        _add(env, "hook", "webhook", {}, {"url": server.url()})
        with env.session() as session:
            _raise(session)
        report = notify.deliver_pending(env.engine, env.keyring, config=AlertsConfig())  # type: ignore[arg-type]
        assert (report.sent, report.retry) == (0, 1)
        [entry] = _log(env.engine)
        assert entry.status == "retry" and "HTTP 500" in (entry.error or "")
        server.status = 200
        later = utcnow() + dt.timedelta(hours=1)
        assert notify.deliver_pending(env.engine, env.keyring, config=AlertsConfig(), now=later).sent == 1  # type: ignore[arg-type]
        assert len(server.requests) == 2
    finally:
        server.stop()


# --- apprise ----------------------------------------------------------------------------------------------

def test_an_apprise_url_delivers_to_a_real_local_server(icli: CLI, http_server: HTTPServer) -> None:
    target = f"json://127.0.0.1:{http_server.port}/apprise/{WEBHOOK_TOKEN}"
    added = icli("alerts", "channels", "add", "ntfy-like", "--apprise", target)
    assert added.code == 0, added
    tested = icli("alerts", "channels", "test", "ntfy-like")
    assert tested.code == 0, tested
    [hook] = http_server.requests
    assert hook.path == f"/apprise/{WEBHOOK_TOKEN}"
    assert hook.body["title"] == "unityctl test notification"
    assert "test notification" in hook.body["message"]
    listed = icli("alerts", "channels", "list", "--json")
    assert WEBHOOK_TOKEN not in listed.stdout + added.stdout + added.stderr


# --- a dead channel ---------------------------------------------------------------------------------------

def test_a_dead_channel_does_not_break_raising_the_alert_and_is_retried_later(
        icli: CLI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("UNITYCTL_ALERTS__RETRY_AFTER", "0")  # due again at once (no sleeping in tests)
    port = free_port()  # nobody listens here
    assert icli("alerts", "channels", "add", "hook", "--webhook", f"http://127.0.0.1:{port}/hook").code == 0

    # The very path a command or the daemon uses: write, commit, then deliver what was queued.
    app = AppContext()
    with app.session(write=True) as session:
        alert_id = _raise(session).id
    assert "could not be delivered" in capsys.readouterr().err

    shown = icli("alerts", "show", alert_id, "--json").json()
    assert shown["state"] == "open" and shown["count"] == 1
    [attempt] = shown["notifications"]
    assert attempt["status"] == "retry" and attempt["attempt"] == 1 and attempt["error"]
    logged = icli("alerts", "log", "--json").json()
    assert logged[0]["status"] == "retry" and logged[0]["next_retry_at"]

    # Still dead: `alerts deliver` tries again, records the failure, and does not fail itself.
    again = icli("alerts", "deliver")
    assert again.code == 0 and "to retry 1" in again.stderr

    server = HTTPServer(port=port)
    try:
        delivered = icli("alerts", "deliver")
        assert delivered.code == 0 and "sent 1" in delivered.stderr
        assert [r.body["alert"]["id"] for r in server.requests] == [alert_id]
    finally:
        server.stop()
    [attempt] = icli("alerts", "show", alert_id, "--json").json()["notifications"]
    assert attempt["status"] == "sent" and attempt["attempt"] == 3 and attempt["error"] is None
    assert icli("alerts", "deliver").stderr.strip().startswith("sent 0")


def test_a_notification_that_keeps_failing_is_marked_failed_after_max_attempts(env: Env) -> None:
    _add(env, "hook", "webhook", {}, {"url": f"http://127.0.0.1:{free_port()}/hook"})
    with env.session() as session:
        _raise(session)
    policy = AlertsConfig(max_attempts=3, retry_after=60)
    now = utcnow()
    first = notify.deliver_pending(env.engine, env.keyring, config=policy, now=now)  # type: ignore[arg-type]
    assert (first.retry, first.failed) == (1, 0)
    # Not due yet: nothing is attempted.
    assert notify.deliver_pending(env.engine, env.keyring, config=policy, now=now) == notify.DeliveryReport()  # type: ignore[arg-type]
    entry = _log(env.engine)[0]
    assert entry.status == "retry" and entry.next_retry_at is not None
    second = notify.deliver_pending(env.engine, env.keyring, config=policy, now=now + dt.timedelta(minutes=2))  # type: ignore[arg-type]
    assert second.retry == 1
    assert _log(env.engine)[0].next_retry_at - _log(env.engine)[0].created_at >= dt.timedelta(seconds=120)  # type: ignore[operator]
    third = notify.deliver_pending(env.engine, env.keyring, config=policy, now=now + dt.timedelta(hours=1))  # type: ignore[arg-type]
    assert (third.sent, third.retry, third.failed) == (0, 0, 1)
    entry = _log(env.engine)[0]
    assert entry.status == "failed" and entry.attempt == 3 and entry.error and entry.next_retry_at is None
    assert notify.deliver_pending(env.engine, env.keyring, config=policy,  # type: ignore[arg-type]
                                  now=now + dt.timedelta(days=1)) == notify.DeliveryReport()


def test_one_dead_channel_does_not_stop_delivery_through_the_others(env: Env, http_server: HTTPServer) -> None:
    _add(env, "dead", "webhook", {}, {"url": f"http://127.0.0.1:{free_port()}/hook"})
    _add(env, "live", "webhook", {}, {"url": http_server.url()})
    with env.session() as session:
        _raise(session)
    report = notify.deliver_pending(env.engine, env.keyring, config=AlertsConfig())  # type: ignore[arg-type]
    assert (report.sent, report.retry) == (1, 1)
    assert len(http_server.requests) == 1
    assert {(n.channel_name, n.status) for n in _log(env.engine)} == {("dead", "retry"), ("live", "sent")}


def test_a_notification_for_a_removed_channel_is_marked_failed(env: Env) -> None:
    _add(env, "hook", "webhook", {}, {"url": "http://127.0.0.1:9/hook"})
    with env.session() as session:
        _raise(session)
    with env.session() as session:
        notify.remove_channel(session, "hook")
    notify.deliver_pending(env.engine, env.keyring, config=AlertsConfig())  # type: ignore[arg-type]
    [entry] = _log(env.engine)
    assert entry.status == "failed" and entry.error == "channel was removed"


# --- channel management through the CLI -------------------------------------------------------------------

def test_channels_add_list_test_and_remove_through_the_cli(icli: CLI, http_server: HTTPServer) -> None:
    assert icli("alerts", "channels", "list", "--json").json() == []
    empty = icli("alerts", "channels", "list")
    assert empty.code == 0 and "no channels" in empty.stderr

    added = icli("alerts", "channels", "add", "hook", "--webhook", http_server.url(), "--min-severity", "critical")
    assert added.code == 0, added
    assert icli("alerts", "channels", "add", "mail", "--email", "a@lab.test", "--email", "b@lab.test",
                "--smtp-host", "127.0.0.1", "--smtp-port", "2525").code == 0
    listed = icli("alerts", "channels", "list", "--json").json()
    assert [(c["name"], c["kind"], c["min_severity"], c["enabled"]) for c in listed] == [
        ("hook", "webhook", "critical", True), ("mail", "email", "warning", True)]
    assert listed[1]["target"] == "a@lab.test,b@lab.test via 127.0.0.1:2525"
    text_list = icli("alerts", "channels", "list")
    assert "hook" in text_list.stdout and "mail" in text_list.stdout

    assert icli("alerts", "channels", "test", "hook").code == 0
    assert http_server.requests[0].body["event"] == "test"

    duplicate = icli("alerts", "channels", "add", "hook", "--webhook", http_server.url())
    assert duplicate.code == 1 and "already exists" in duplicate.stderr

    removed = icli("alerts", "channels", "remove", "hook")
    assert removed.code == 0, removed
    assert [c["name"] for c in icli("alerts", "channels", "list", "--json").json()] == ["mail"]
    engine = make_engine(config.load().database_url)
    try:
        with engine.connect() as conn:
            owners = [r[0] for r in conn.execute(text("SELECT owner_id FROM secret WHERE owner_type = 'alert_channel'"))]
        assert len(owners) == 1  # the removed channel's secret went with it
    finally:
        engine.dispose()
    gone = icli("alerts", "channels", "remove", "hook")
    assert gone.code == 1 and gone.stderr.strip() == "unityctl: error: no alert channel named 'hook'"
    assert icli("alerts", "channels", "test", "hook").code == 1

    actions = [r["action"] for r in icli("audit", "list", "--action", "core.alerts.channels", "--json").json()]
    assert actions == ["core.alerts.channels.add", "core.alerts.channels.add", "core.alerts.channels.remove"]
    assert icli("audit", "verify").code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one of --email, --webhook, --apprise"),
        (("--webhook", "http://127.0.0.1:9/x", "--email", "a@lab.test"), "exactly one of"),
        (("--webhook", "ftp://127.0.0.1/x"), "webhook URL must start with http"),
        (("--apprise", "not a url"), "apprise URL must look like"),
        (("--email", "a@lab.test", "--smtp-security", "tls-please"), "email security must be"),
        (("--webhook", "http://127.0.0.1:9/x", "--min-severity", "urgent"), "unknown severity"),
    ],
)
def test_a_bad_channel_is_refused_with_a_usage_error(icli: CLI, args: tuple[str, ...], message: str) -> None:
    result = icli("alerts", "channels", "add", "bad", *args)
    assert result.code == 2, result
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert icli("alerts", "channels", "list", "--json").json() == []


def test_a_channel_test_to_a_dead_port_fails_in_one_line_and_is_logged(icli: CLI) -> None:
    assert icli("alerts", "channels", "add", "hook", "--webhook", f"http://127.0.0.1:{free_port()}/x").code == 0
    result = icli("alerts", "channels", "test", "hook")
    assert result.code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "webhook delivery failed" in result.stderr
    assert [(n["event"], n["status"]) for n in icli("alerts", "log", "--json").json()] == [("test", "failed")]


def test_the_channel_secret_is_sealed_to_its_row(env: Env) -> None:
    _add(env, "one", "webhook", {}, {"url": "http://127.0.0.1:9/one"})
    _add(env, "two", "webhook", {}, {"url": "http://127.0.0.1:9/two"})
    keyring: Keyring = env.keyring  # type: ignore[assignment]
    with env.session() as session:
        one = notify.get_channel(session, "one")
        two = notify.get_channel(session, "two")
        assert json.loads(secrets.get_secret(session, keyring, owner_type="alert_channel", owner_id=one.id,
                                             name="config")) == {"url": "http://127.0.0.1:9/one"}
        # Point channel "two" at channel "one"'s encrypted URL: it must not decrypt.
        session.execute(text("UPDATE secret SET wrapped_key = (SELECT wrapped_key FROM secret WHERE owner_id = :a), "
                             "nonce = (SELECT nonce FROM secret WHERE owner_id = :a), "
                             "ciphertext = (SELECT ciphertext FROM secret WHERE owner_id = :a) WHERE owner_id = :b"),
                        {"a": str(one.id), "b": str(two.id)})
    with env.session() as session:
        _raise(session)
    report = notify.deliver_pending(env.engine, keyring, config=AlertsConfig())  # type: ignore[arg-type]
    entries = {n.channel_name: n for n in _log(env.engine)}
    assert entries["two"].status == "failed" and "failed authentication" in (entries["two"].error or "")
    assert report.retry == 1  # "one" is a dead port: retried; "two" could not even be decrypted
