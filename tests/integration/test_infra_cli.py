"""`unityctl infra ...` in-process, on a real database, collecting this machine and real sshd servers."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import insert


def _creds_login(name: str, host: str, port: int, user: str, private_pem: str | None = None) -> None:
    """A creds key + server login in the CLI's database, through the creds services."""
    from unityctl.core.context import AppContext
    from unityctl.creds import keys
    from unityctl.creds import servers as creds_servers

    app = AppContext()
    with app.session(write=True) as s:
        if private_pem:
            keys.import_key(s, app.keyring(), name=f"{name}-key", data=private_pem.encode())
        else:
            keys.generate_key(s, app.keyring(), name=f"{name}-key")
        creds_servers.add_server(s, app.keyring(), name=name, host=host, port=port, user=user,
                                 key_name=f"{name}-key")
    app.engine().dispose()


def test_adding_localhost_collecting_and_status_json_describe_this_machine(icli):
    r = icli("infra", "servers", "add", "localhost", "--local", "--interval", "5m", "--tag", "home")
    assert r.code == 0, r.stderr
    # Into a pipe or a log, a message is one line, however long (no wrapping at 80 columns).
    assert "collect it now with `unityctl infra collect localhost`" in r.stderr.splitlines()[0]
    r = icli("infra", "servers", "add", "localhost", "--local", "--if-missing")
    assert r.code == 0, r.stderr
    r = icli("infra", "collect", "--all")
    assert r.code == 0, r.stderr
    assert "localhost" in r.stdout and "ok" in r.stdout
    r = icli("infra", "status", "--json")
    assert r.code == 0, r.stderr
    [row] = r.json()
    assert row["name"] == "localhost" and row["state"] == "up" and row["local"] is True
    assert row["load1"] is not None and 0 <= row["mem_percent"] <= 100
    assert row["fs_max_mount"] == "/" and row["fs_max_percent"] is not None
    assert set(row["disks"]) >= {"ok", "warn", "failed"} and "total" in row["pools"]
    r = icli("infra", "status")
    assert r.code == 0 and "localhost" in r.stdout and "up" in r.stdout
    r = icli("status", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["infra"]["servers"] == 1 and r.json()["infra"]["up"] == 1


def test_collect_exits_3_and_names_the_failed_server_when_one_fails(icli):
    _creds_login("closed-login", "127.0.0.1", 1, "nobody")
    assert icli("infra", "servers", "add", "here", "--local").code == 0
    assert icli("infra", "servers", "add", "closed", "--credential", "closed-login").code == 0
    r = icli("infra", "collect", "--all", "--json")
    assert r.code == 3, r.stderr
    docs = {d["server"]: d for d in r.json()}
    assert docs["here"]["ok"] is True and docs["closed"]["ok"] is False
    assert "1 of 2 servers failed: closed" in r.stderr
    r = icli("infra", "collect", "here")
    assert r.code == 0, r.stderr


def test_collect_needs_names_or_all_and_rejects_unknown_names(icli):
    assert icli("infra", "collect").code == 2
    r = icli("infra", "collect", "ghost")
    assert r.code == 1 and "ghost" in r.stderr


def test_servers_list_show_edit_remove(icli, sshd_servers, sshd_admin_key):
    srv = sshd_servers[0]
    _creds_login("s1-login", srv.host, srv.port, srv.user, sshd_admin_key.private_pem)
    assert icli("infra", "servers", "add", "s1", "--credential", "s1-login", "-t", "lab").code == 0
    r = icli("infra", "servers", "list", "--json")
    assert [(d["name"], d["credential"], d["tags"]) for d in r.json()] == [("s1", "s1-login", ["lab"])]
    assert icli("infra", "collect", "s1").code == 0
    r = icli("infra", "show", "s1", "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert doc["state"] == "up" and doc["os"] and any(f["mount"] == "/" for f in doc["filesystems"])
    assert "private" not in r.stdout.lower() and "BEGIN" not in r.stdout
    r = icli("infra", "show", "s1")
    assert r.code == 0 and "s1-login" in r.stdout
    r = icli("infra", "servers", "edit", "s1", "--interval", "10m", "--untag", "lab", "--json")
    assert r.code == 0 and r.json()["interval_seconds"] == 600 and r.json()["tags"] == []
    assert icli("infra", "servers", "remove", "s1").code == 0
    assert icli("infra", "servers", "list", "--json").json() == []
    assert icli("infra", "show", "s1").code == 1


def test_history_json_gives_the_points_and_prune_downsamples(icli):
    from unityctl.core.context import AppContext
    from unityctl.core.db import utcnow
    from unityctl.infra.models import MetricSample

    assert icli("infra", "servers", "add", "here", "--local").code == 0
    assert icli("infra", "collect", "here").code == 0
    app = AppContext()
    now = utcnow()
    with app.session(write=True) as s:
        from unityctl.infra.servers import get_server

        sid = get_server(s, "here").id
        s.execute(insert(MetricSample), [
            {"server_id": sid, "ts": now - dt.timedelta(days=9, minutes=5 * i), "resolution": "raw",
             "load1": 2.0, "mem_percent": 10.0, "disk_percent": 20.0} for i in range(12)])
    app.engine().dispose()
    r = icli("infra", "history", "here", "--metric", "mem", "--since", "24h", "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert doc["metric"] == "mem" and doc["count"] == 1 and doc["points"][0]["resolution"] == "raw"
    r = icli("infra", "history", "here", "--metric", "load", "--since", "10d")
    assert r.code == 0 and "13 samples" in r.stdout
    r = icli("infra", "prune", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["raw_deleted"] == 12 and r.json()["hourly_written"] >= 1
    r = icli("infra", "history", "here", "--metric", "load", "--since", "10d", "--json")
    assert {p["resolution"] for p in r.json()["points"]} == {"raw", "hour"}
    assert icli("infra", "history", "here", "--metric", "cpu").code == 2


def test_disks_pools_and_databases_list_what_collection_found(icli):
    assert icli("infra", "servers", "add", "here", "--local").code == 0
    assert icli("infra", "collect", "here").code == 0
    for args in (("disks", "--json"), ("pools", "--json"), ("databases", "--json")):
        r = icli("infra", *args)
        assert r.code == 0, (args, r.stderr)
        assert isinstance(r.json(), list)
    dbs = icli("infra", "databases", "--json").json()
    assert {d["kind"] for d in dbs} >= {"postgresql"}, "this machine runs PostgreSQL (see test-environment.md)"
    pg = next(d for d in dbs if d["kind"] == "postgresql")
    r = icli("infra", "databases", "test", pg["name"], "--json")
    assert r.code == 0, r.stderr
    assert r.json()["reachable"] is True
