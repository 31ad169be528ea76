"""unityctl.creds.metrics: the counts, the days-left buckets, unused keys, Prometheus text format."""

from __future__ import annotations

import datetime as dt
import re

from unityctl.creds import metrics
from unityctl.creds.models import Certificate, SSHKey

UTC = dt.timezone.utc
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _key(name: str, key_type: str = "ed25519", *, last_used: dt.datetime | None = None,
         status: str = "active", weakness: str | None = None) -> SSHKey:
    return SSHKey(name=name, key_type=key_type, bits=256, fingerprint=f"SHA256:{name}",
                  public_key=f"ssh-{key_type} AAAA {name}", status=status, last_used_at=last_used,
                  weakness=weakness)


def _cert(name: str, days_left: float, status: str = "valid") -> Certificate:
    not_after = NOW + dt.timedelta(days=days_left)
    return Certificate(name=name, domains=f'["{name}"]', provider="imported", status=status,
                       not_before=not_after - dt.timedelta(days=90), not_after=not_after, cert_pem="x")


def test_collect_counts_keys_by_type_and_unused_keys_by_the_configured_age(env) -> None:
    with env.session() as s:
        s.add_all([
            _key("fresh", last_used=NOW - dt.timedelta(days=1)),
            _key("stale", last_used=NOW - dt.timedelta(days=120)),
            _key("never", "rsa", weakness="RSA 1024 bits"),
            _key("old", status="retired"),  # not active: counted nowhere but by status
        ])
    with env.session(write=False) as s:
        doc = metrics.collect(s, settings=env.settings, now=NOW)
    assert doc["ssh_keys_by_type"] == {"ed25519": 2, "rsa": 1}
    assert doc["ssh_keys_total"] == 3
    assert doc["ssh_keys_by_status"] == {"active": 3, "retired": 1}
    assert doc["unused_keys"] == 2  # "stale" (120 > 90 days) and "never"
    assert doc["weak_keys"] == 1
    settings = env.settings.model_copy(deep=True)
    settings.creds.unused_key_days = 200
    with env.session(write=False) as s:
        assert metrics.collect(s, settings=settings, now=NOW)["unused_keys"] == 1


def test_collect_puts_certificates_in_days_left_buckets_and_leaves_revoked_ones_out(env) -> None:
    with env.session() as s:
        s.add_all([_cert("gone", -2), _cert("d3", 3), _cert("d7", 7), _cert("d10", 10), _cert("d29", 29.5),
                   _cert("d60", 60), _cert("d400", 400), _cert("rev", 5, status="revoked")])
    with env.session(write=False) as s:
        doc = metrics.collect(s, settings=env.settings, now=NOW)
    assert doc["certificates_by_days_left"] == {"expired": 1, "0-7": 2, "7-14": 1, "14-30": 1,
                                                "30-90": 1, "90+": 1}
    assert doc["certificates_total"] == 7 and doc["certificates_revoked"] == 1
    assert [c["name"] for c in doc["certificates"]] == sorted(["gone", "d3", "d7", "d10", "d29", "d60", "d400"])


def test_an_empty_inventory_still_lists_every_bucket_with_zero(env) -> None:
    with env.session(write=False) as s:
        doc = metrics.collect(s, settings=env.settings, now=NOW)
    assert doc["certificates_by_days_left"] == dict.fromkeys(["expired", "0-7", "7-14", "14-30", "30-90", "90+"], 0)
    assert doc["key_deployments"] == {} and doc["certificate_deployments"] == {}


SAMPLE = {
    "ssh_keys_by_type": {"ecdsa": 1, "ed25519": 4},
    "weak_keys": 0,
    "unused_keys": 2,
    "unused_key_days": 90,
    "certificates_by_days_left": {"expired": 0, "0-7": 1, "7-14": 0, "14-30": 0, "30-90": 2, "90+": 0},
    "certificates": [{"name": 'we"ird\\name', "provider": "acme", "days_left": 3.0,
                      "not_after": dt.datetime(2025, 6, 4, 12, 0, tzinfo=UTC)}],
    "key_deployments": {"deployed": 7, "out_of_date": 1},
    "certificate_deployments": {"reload_failed": 1},
}

SAMPLE_LINE = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\]|\\.)*"(,[a-z_]+="(?:[^"\\]|\\.)*")*\})? -?\d+(\.\d+)?$')


def test_prometheus_text_has_help_and_type_before_every_family_and_valid_sample_lines() -> None:
    text = metrics.to_prometheus(SAMPLE)
    assert text.endswith("\n")
    lines = text.splitlines()
    families = [line.split()[2] for line in lines if line.startswith("# HELP ")]
    types = [line.split()[2] for line in lines if line.startswith("# TYPE ")]
    assert families == types and len(families) == len(set(families)) == 7
    for line in lines:
        if not line.startswith("#"):
            assert SAMPLE_LINE.match(line), line
            assert line.split("{")[0].split(" ")[0] in families


def test_prometheus_samples_carry_the_counts_and_escape_label_values() -> None:
    text = metrics.to_prometheus(SAMPLE)
    assert 'unityctl_creds_ssh_keys{type="ed25519"} 4' in text
    assert "unityctl_creds_ssh_keys_unused 2" in text
    assert 'unityctl_creds_certificates{days_left="30-90"} 2' in text
    assert 'unityctl_creds_key_deployments{status="out_of_date"} 1' in text
    assert 'unityctl_creds_certificate_deployments{status="reload_failed"} 1' in text
    stamp = int(dt.datetime(2025, 6, 4, 12, 0, tzinfo=UTC).timestamp())
    assert (f'unityctl_creds_certificate_expiry_timestamp_seconds{{name="we\\"ird\\\\name",provider="acme"}} '
            f"{stamp}") in text
