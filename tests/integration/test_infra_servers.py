"""Monitored servers: add/list/edit/remove through the services, on a real database."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from unityctl.core.errors import AlreadyExistsError, NotFoundError, UsageError
from unityctl.core.models import Alert, AuditEntry
from unityctl.infra import servers
from unityctl.infra.models import MetricSample, MonitoredServer


def _login(env, name: str = "web1-login") -> None:
    from unityctl.creds import keys
    from unityctl.creds import servers as creds_servers

    with env.session() as s:
        keys.generate_key(s, env.keyring, name=f"{name}-key")
        creds_servers.add_server(s, env.keyring, name=name, host="127.0.0.1", user="ops", port=2200,
                                 key_name=f"{name}-key")


def test_a_server_added_with_a_credential_links_to_that_login_and_is_due_at_once(env):
    _login(env)
    with env.session() as s:
        server = servers.add_server(s, env.keyring, name="web1", credential="web1-login", interval="10m",
                                    tags=["prod", "web", "prod"])
    with env.session(write=False) as s:
        row = servers.get_server(s, "web1")
        names = servers.credential_names(s, {row.credential_id})
        doc = servers.server_to_dict(row, credential=names[row.credential_id])
        actions = [e.action for e in s.exec(select(AuditEntry)).all()]
    assert server.id == row.id
    assert doc["credential"] == "web1-login" and doc["local"] is False
    assert doc["interval_seconds"] == 600
    assert doc["tags"] == ["prod", "web"]
    assert doc["state"] == "unknown"
    assert row.next_collect_at is not None
    assert "infra.servers.add" in actions


def test_adding_needs_exactly_one_of_credential_or_local(env):
    _login(env)
    with env.session() as s:
        with pytest.raises(UsageError):
            servers.add_server(s, env.keyring, name="x")
        with pytest.raises(UsageError):
            servers.add_server(s, env.keyring, name="x", credential="web1-login", local=True)


def test_an_unknown_credential_a_taken_name_and_a_second_local_server_are_refused(env):
    _login(env)
    with env.session() as s:
        with pytest.raises(NotFoundError, match="creds servers add"):
            servers.add_server(s, env.keyring, name="web2", credential="nope")
        servers.add_server(s, env.keyring, name="here", local=True)
    with env.session() as s:
        with pytest.raises(AlreadyExistsError):
            servers.add_server(s, env.keyring, name="here", credential="web1-login")
        with pytest.raises(AlreadyExistsError, match="already monitored as 'here'"):
            servers.add_server(s, env.keyring, name="again", local=True)


def test_bad_names_intervals_and_tags_are_usage_errors(env):
    with env.session() as s:
        for kwargs in ({"name": "bad name"}, {"name": "ok", "interval": "1s"}, {"name": "ok", "interval": "soon"},
                       {"name": "ok", "tags": ["has space"]}):
            with pytest.raises(UsageError):
                servers.add_server(s, env.keyring, local=True, **kwargs)


def test_editing_changes_interval_tags_name_and_login(env):
    _login(env)
    _login(env, "other-login")
    with env.session() as s:
        servers.add_server(s, env.keyring, name="web1", credential="web1-login", tags=["a", "b"])
    with env.session() as s:
        servers.edit_server(s, env.keyring, name="web1", new_name="web-1", interval="1h", add_tags=["c"],
                            remove_tags=["a"], credential="other-login")
    with env.session(write=False) as s:
        row = servers.get_server(s, "web-1")
        assert servers.find_server(s, "web1") is None
        assert row.interval_seconds == 3600
        assert servers.tags_of(row) == ["b", "c"]
        assert servers.credential_names(s, {row.credential_id})[row.credential_id] == "other-login"
    with env.session() as s, pytest.raises(UsageError, match="nothing to change"):
        servers.edit_server(s, env.keyring, name="web-1")


def test_list_filters_by_tag(env):
    with env.session() as s:
        servers.add_server(s, env.keyring, name="a", local=True, tags=["x"])
    _login(env)
    with env.session() as s:
        servers.add_server(s, env.keyring, name="b", credential="web1-login", tags=["y"])
    with env.session(write=False) as s:
        assert [x.name for x in servers.list_servers(s)] == ["a", "b"]
        assert [x.name for x in servers.list_servers(s, tag="y")] == ["b"]


def test_removing_a_server_deletes_its_samples_and_resolves_its_alerts(env):
    from unityctl.core import alerts
    from unityctl.core.db import utcnow

    with env.session() as s:
        server = servers.add_server(s, env.keyring, name="gone", local=True)
        s.add(MetricSample(server_id=server.id, ts=utcnow(), load1=1.0))
        alerts.raise_alert(s, type="server_offline", severity="critical", source_type="monitored_server",
                           source_id=server.id, dedup_key=f"server_offline:monitored_server:{server.id}",
                           message="gone is offline")
        sid = server.id
    with env.session() as s:
        servers.remove_server(s, env.keyring, name="gone")
    with env.session(write=False) as s:
        assert s.get(MonitoredServer, sid) is None
        assert s.exec(select(MetricSample).where(MetricSample.server_id == sid)).all() == []
        alert = s.exec(select(Alert).where(Alert.dedup_key == f"server_offline:monitored_server:{sid}")).one()
        entry = s.exec(select(AuditEntry).where(AuditEntry.action == "infra.servers.remove")).one()
    assert alert.state == "resolved"
    assert json.loads(entry.details)["alerts_resolved"] == 1
    with env.session() as s, pytest.raises(NotFoundError):
        servers.remove_server(s, env.keyring, name="gone")


def test_a_local_server_has_no_ssh_target(env):
    from unityctl.core.errors import StateError

    with env.session() as s:
        server = servers.add_server(s, env.keyring, name="here", local=True)
        with pytest.raises(StateError, match="this machine"):
            servers.target_for_server(s, env.keyring, server)


def test_the_ssh_target_of_a_server_uses_infra_timeouts_and_the_server_name(env):
    _login(env)
    env.settings.infra.connect_timeout = 4
    env.settings.infra.command_timeout = 33
    with env.session() as s:
        server = servers.add_server(s, env.keyring, name="web1", credential="web1-login")
        target = servers.target_for_server(s, env.keyring, server, settings=env.settings)
    assert (target.host, target.port, target.user) == ("127.0.0.1", 2200, "ops")
    assert target.connect_timeout == 4 and target.command_timeout == 33
    assert target.name == "web1" and target.private_key_pem
    assert "BEGIN" not in repr(target)
