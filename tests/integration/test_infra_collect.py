"""Collection against real sshd servers on 127.0.x.y and this machine (``--local``).

Each server logs in through a creds login (the fleet's admin key imported into creds), exactly as
a user would set it up; the collector runs collect.sh over one SSH session per server.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlmodel import select

from unityctl.core.models import Alert
from unityctl.infra import servers as infra_servers
from unityctl.infra.collector import collect, filesystem_key, offline_key
from unityctl.infra.models import MetricSample, MonitoredServer


def _settings(env) -> None:
    env.settings.infra.connect_timeout = 3
    env.settings.infra.command_timeout = 30


def _register(env, sshd_servers, admin_key, *, local: bool = True) -> list[str]:
    """Import the fleet key into creds, one creds login + one monitored server per sshd."""
    from unityctl.creds import keys
    from unityctl.creds import servers as creds_servers

    _settings(env)
    names = []
    with env.session() as s:
        keys.import_key(s, env.keyring, name="fleet", data=admin_key.private_pem.encode())
        for srv in sshd_servers:
            creds_servers.add_server(s, env.keyring, name=f"{srv.name}-login", host=srv.host, port=srv.port,
                                     user=srv.user, key_name="fleet")
            infra_servers.add_server(s, env.keyring, name=srv.name, credential=f"{srv.name}-login")
            names.append(srv.name)
        if local:
            infra_servers.add_server(s, env.keyring, name="localhost", local=True)
            names.append("localhost")
    return names


def _collect(env, **kwargs):
    return collect(sessions=env.session, keyring=env.keyring, settings=env.settings, **kwargs)


def _alerts(env, key: str) -> list[Alert]:
    with env.session(write=False) as s:
        return list(s.exec(select(Alert).where(Alert.dedup_key == key)).all())


def test_collecting_five_sshd_servers_and_localhost_records_each_snapshot_and_a_sample(env, sshd_servers,
                                                                                    sshd_admin_key):
    names = _register(env, sshd_servers, sshd_admin_key)
    results = _collect(env, all_=True)
    assert sorted(r.server for r in results) == sorted(names)
    assert all(r.ok for r in results), [(r.server, r.error) for r in results]
    with env.session(write=False) as s:
        rows = {r.name: r for r in s.exec(select(MonitoredServer)).all()}
        samples = s.exec(select(MetricSample)).all()
    for name in names:
        row = rows[name]
        assert row.state == "up"
        assert row.os_name and row.kernel and row.kernel.startswith("Linux")
        assert row.cpu_count and row.cpu_count >= 1
        assert row.load1 is not None and row.mem_used_percent is not None
        assert row.fs_max_mount == "/" and row.fs_max_percent is not None
        assert any(f["mount"] == "/" for f in json.loads(row.filesystems))
        assert row.last_seen_at is not None and row.next_collect_at > row.last_seen_at
    assert sorted(s.server_id for s in samples) == sorted(r.id for r in rows.values())


def test_the_first_collection_pins_each_servers_host_key_in_creds(env, sshd_servers, sshd_admin_key):
    from unityctl.creds.models import ServerCredential

    _register(env, sshd_servers[:2], sshd_admin_key, local=False)
    _collect(env, all_=True)
    with env.session(write=False) as s:
        pins = {c.name: c.host_key_fingerprint for c in s.exec(select(ServerCredential)).all()}
        used = {c.name: c.last_login_at for c in s.exec(select(ServerCredential)).all()}
    for srv in sshd_servers[:2]:
        assert pins[f"{srv.name}-login"] == srv.host_key_fingerprint
        assert used[f"{srv.name}-login"] is not None


def test_a_server_whose_host_key_changed_fails_collection_without_stopping_the_others(env, sshd_servers,
                                                                                       sshd_admin_key):
    _register(env, sshd_servers[:2], sshd_admin_key, local=False)
    _collect(env, all_=True)
    sshd_servers[0].regenerate_host_key()
    results = {r.server: r for r in _collect(env, all_=True)}
    assert not results[sshd_servers[0].name].ok
    assert "host key" in (results[sshd_servers[0].name].error or "")
    assert results[sshd_servers[1].name].ok


def test_a_stopped_server_goes_down_after_two_failures_and_up_after_two_successes_with_one_alert(
        env, sshd_servers, sshd_admin_key):
    _register(env, sshd_servers, sshd_admin_key, local=False)
    victim = sshd_servers[2]
    first = {r.server: r for r in _collect(env, all_=True)}
    assert first[victim.name].state == "up"
    with env.session(write=False) as s:
        victim_id = infra_servers.get_server(s, victim.name).id
    key = offline_key(victim_id)

    victim.stop()
    one = {r.server: r for r in _collect(env, all_=True)}
    assert not one[victim.name].ok and one[victim.name].state == "up"
    assert _alerts(env, key) == []
    assert all(r.ok for n, r in one.items() if n != victim.name)

    two = {r.server: r for r in _collect(env, names=[victim.name])}
    assert two[victim.name].state == "down" and key in two[victim.name].alerts_raised
    three = {r.server: r for r in _collect(env, names=[victim.name])}
    assert three[victim.name].alerts_raised == []  # still open, not raised again
    open_ = _alerts(env, key)
    assert len(open_) == 1 and open_[0].state == "open" and open_[0].severity == "critical"
    assert open_[0].type == "server_offline" and victim.name in open_[0].message

    victim.start()
    back = {r.server: r for r in _collect(env, names=[victim.name])}
    assert back[victim.name].ok and back[victim.name].state == "down"
    assert _alerts(env, key)[0].state == "open"
    again = {r.server: r for r in _collect(env, names=[victim.name])}
    assert again[victim.name].state == "up" and key in again[victim.name].alerts_cleared
    final = _alerts(env, key)
    assert len(final) == 1 and final[0].state == "resolved"
    with env.session(write=False) as s:
        assert len(s.exec(select(Alert).where(Alert.type == "server_offline")).all()) == 1


def test_a_blackhole_server_times_out_while_every_other_server_finishes(env, sshd_servers, sshd_admin_key,
                                                                        blackhole_server):
    from unityctl.creds import servers as creds_servers

    _register(env, sshd_servers, sshd_admin_key)
    env.settings.infra.connect_timeout = 2
    with env.session() as s:
        creds_servers.add_server(s, env.keyring, name="hole-login", host=blackhole_server.host,
                                 port=blackhole_server.port, user="nobody", key_name="fleet")
        infra_servers.add_server(s, env.keyring, name="hole", credential="hole-login")
    results = {r.server: r for r in _collect(env, all_=True)}
    assert not results["hole"].ok
    assert "timed out" in results["hole"].error, results["hole"].error
    others = [r for n, r in results.items() if n != "hole"]
    assert len(others) == 6 and all(r.ok for r in others), [(r.server, r.error) for r in others]
    assert blackhole_server.accepted >= 1


def test_a_login_to_a_closed_port_fails_fast_with_a_one_line_error(env):
    from unityctl.creds import keys
    from unityctl.creds import servers as creds_servers

    _settings(env)
    with env.session() as s:
        keys.generate_key(s, env.keyring, name="k")
        creds_servers.add_server(s, env.keyring, name="closed-login", host="127.0.0.1", port=1, user="x",
                                 key_name="k")
        infra_servers.add_server(s, env.keyring, name="closed", credential="closed-login")
    [result] = _collect(env, names=["closed"])
    assert not result.ok and "\n" not in result.error and "closed" in result.error


def test_filesystem_over_the_thresholds_raises_storage_warning_and_clears_below(env):
    _settings(env)
    with env.session() as s:
        server = infra_servers.add_server(s, env.keyring, name="here", local=True)
        sid = server.id
    key = filesystem_key(sid, "/")
    [first] = _collect(env, names=["here"])
    with env.session(write=False) as s:
        used = infra_servers.get_server(s, "here").fs_max_percent
    assert first.ok and used is not None and used >= 2, "this machine's / must be at least 2% used"
    assert _alerts(env, key) == []

    # Thresholds just below the real usage of /: warning, then critical, then clear.
    env.settings.infra.filesystem_warning_percent = max(1, int(used) - 1)
    env.settings.infra.filesystem_critical_percent = 100
    [warned] = _collect(env, names=["here"])
    [alert] = _alerts(env, key)
    assert key in warned.alerts_raised and alert.severity == "warning" and alert.state == "open"
    assert alert.type == "storage_warning" and "/" in alert.message

    env.settings.infra.filesystem_critical_percent = max(1, int(used) - 1)
    _collect(env, names=["here"])
    [alert] = _alerts(env, key)
    assert alert.severity == "critical" and alert.state == "open"

    env.settings.infra.filesystem_warning_percent = 100
    env.settings.infra.filesystem_critical_percent = 100
    [cleared] = _collect(env, names=["here"])
    [alert] = _alerts(env, key)
    assert key in cleared.alerts_cleared and alert.state == "resolved"


def test_collect_due_collects_only_servers_whose_time_has_come(env):
    from unityctl.core.db import utcnow
    from unityctl.infra.tasks import collect_due

    _settings(env)
    with env.session() as s:
        infra_servers.add_server(s, env.keyring, name="here", local=True, interval="1h")
    now = utcnow()
    first = collect_due(now, sessions=env.session, keyring=env.keyring, settings=env.settings)
    assert [r.server for r in first] == ["here"]
    assert collect_due(now + dt.timedelta(minutes=30), sessions=env.session, keyring=env.keyring,
                       settings=env.settings) == []
    later = collect_due(utcnow() + dt.timedelta(hours=1, seconds=5), sessions=env.session, keyring=env.keyring,
                        settings=env.settings)
    assert [r.server for r in later] == ["here"]
    with env.session(write=False) as s:
        row = infra_servers.get_server(s, "here")
        assert row.lease_owner is None and row.lease_until is None
        assert len(s.exec(select(MetricSample)).all()) == 2


def test_a_server_leased_by_another_replica_is_not_collected_twice(env):
    from unityctl.core.db import utcnow
    from unityctl.infra.tasks import claim_due, collect_due

    _settings(env)
    with env.session() as s:
        infra_servers.add_server(s, env.keyring, name="here", local=True)
    now = utcnow()
    assert len(claim_due(sessions=env.session, settings=env.settings, now=now, owner="replica-a")) == 1
    assert collect_due(now, sessions=env.session, keyring=env.keyring, settings=env.settings,
                       owner="replica-b") == []
