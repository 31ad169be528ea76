"""`unityctl status`: every count of its one screen, from rows the services wrote, on both backends."""

from __future__ import annotations

import datetime as dt

from unityctl.core import alerts
from unityctl.creds import certificates, keys
from unityctl.creds import servers as creds_servers
from unityctl.infra import servers as infra_servers
from unityctl.infra.models import DatabaseInstance, StorageDevice, StoragePool
from tests.integration.test_creds_certs import make_cert

UTC = dt.timezone.utc


def test_status_counts_what_is_stored(env, cli) -> None:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(UTC)
    with env.session() as s:
        for name in ("a", "b", "c"):
            keys.generate_key(s, env.keyring, name=name)
        weak = keys.get_key(s, "c")
        weak.weakness = "RSA 1024 bits"
        s.add(weak)
        old = keys.generate_key(s, env.keyring, name="old")
        old.status = "retired"
        s.add(old)
        for cn, days in (("soon.example.org", 10), ("later.example.org", 80)):
            cert_pem, key_pem = make_cert(cn, not_after=now + dt.timedelta(days=days))
            certificates.import_certificate(s, env.keyring, cert_pem=cert_pem, key_pem=key_pem)
        here = infra_servers.add_server(s, env.keyring, name="here", local=True)
        creds_servers.add_server(s, env.keyring, name="there-login", host="192.0.2.7", user="mon", key_name="a")
        there = infra_servers.add_server(s, env.keyring, name="there", credential="there-login")
        here.state, there.state = "up", "down"
        s.add_all([here, there])
        s.flush()
        s.add_all([
            StorageDevice(serial="S1", server_id=here.id, device="/dev/sda", verdict="failed", first_seen_at=now,
                          last_seen_at=now),
            StorageDevice(serial="S2", server_id=here.id, device="/dev/sdb", verdict="warn", first_seen_at=now,
                          last_seen_at=now),
            StorageDevice(serial="S3", server_id=there.id, device="/dev/sda", verdict="passed", first_seen_at=now,
                          last_seen_at=now),
            StoragePool(server_id=here.id, kind="zfs", name="tank", state="DEGRADED", health="warn"),
            DatabaseInstance(server_id=here.id, kind="postgresql", key="tcp:5432", reachable=False),
            DatabaseInstance(server_id=here.id, kind="redis", key="tcp:6379", reachable=True),
            DatabaseInstance(server_id=there.id, kind="mysql", key="tcp:3306", reachable=None),
        ])
        for i, severity in enumerate(("warning", "critical", "critical")):
            alerts.raise_alert(s, type="test", severity=severity, source_type="monitored_server",
                               source_id=str(here.id), dedup_key=f"test/{i}", message="m", config=env.settings.alerts)
    result = cli("status", "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["alerts"]["open"] == {"info": 0, "warning": 1, "critical": 2}
    assert doc["creds"] == {"ssh_keys": 3, "weak_keys": 1, "servers": 1, "deployments_out_of_date": 0,
                            "certificates": 2, "certificates_expiring_30d": 1}
    assert doc["infra"] == {"servers": 2, "up": 1, "down": 1, "disks_failing": 1, "disks_warn": 1,
                            "pools_not_ok": 1, "databases_unreachable": 1}
