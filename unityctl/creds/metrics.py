"""Credential metrics: keys by type, certificates by days left, deployments, unused keys.

:func:`collect` returns plain data (``creds metrics --json``); :func:`to_prometheus` renders it
in the Prometheus text exposition format (``creds metrics --format prometheus``) with HELP and
TYPE lines, for node_exporter's textfile collector or a scrape through the daemon.

Read-only: nothing is written.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, select

from unityctl.core.db import utcnow
from unityctl.creds.models import Certificate, CertificateDeployment, KeyDeployment, SSHKey

if TYPE_CHECKING:  # pragma: no cover
    from unityctl.core.config import Settings

__all__ = ["DAYS_LEFT_BUCKETS", "collect", "to_prometheus"]

# (label, upper bound in days, inclusive); the last bucket is open-ended. "expired" is <= 0.
DAYS_LEFT_BUCKETS: tuple[tuple[str, float], ...] = (
    ("expired", 0), ("0-7", 7), ("7-14", 14), ("14-30", 30), ("30-90", 90), ("90+", float("inf")))


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _bucket(days_left: float) -> str:
    for label, upper in DAYS_LEFT_BUCKETS:
        if days_left <= upper:
            return label
    return DAYS_LEFT_BUCKETS[-1][0]  # pragma: no cover - the last bound is infinite


def collect(session: Session, *, settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    """The metrics as one document.

    ``ssh_keys_by_type`` counts active keys; ``unused_keys`` counts active keys never used or
    last used more than ``settings.creds.unused_key_days`` ago; ``certificates_by_days_left``
    counts certificates that are not revoked, in the buckets of :data:`DAYS_LEFT_BUCKETS` (every
    bucket present, zeros included); ``certificates`` lists each such certificate's expiry (for
    "expires within N days" alert rules); ``*_deployments`` count deployments by status.
    """
    now = now or utcnow()
    keys = session.exec(select(SSHKey)).all()
    active = [k for k in keys if k.status == "active"]
    cutoff = now - dt.timedelta(days=settings.creds.unused_key_days)
    unused = [k for k in active if k.last_used_at is None or _aware(k.last_used_at) < cutoff]
    certs = [c for c in session.exec(select(Certificate)).all() if c.status != "revoked"]
    buckets = {label: 0 for label, _ in DAYS_LEFT_BUCKETS}
    cert_rows = []
    for cert in sorted(certs, key=lambda c: c.name):
        left = (_aware(cert.not_after) - now).total_seconds() / 86400.0
        buckets[_bucket(left)] += 1
        cert_rows.append({"name": cert.name, "provider": cert.provider, "days_left": round(left, 2),
                          "not_after": _aware(cert.not_after)})
    key_deps = Counter(d.status for d in session.exec(select(KeyDeployment)).all())
    cert_deps = Counter(d.status for d in session.exec(select(CertificateDeployment)).all())
    return {
        "ssh_keys_total": len(active),
        "ssh_keys_by_type": dict(sorted(Counter(k.key_type for k in active).items())),
        "ssh_keys_by_status": dict(sorted(Counter(k.status for k in keys).items())),
        "weak_keys": sum(1 for k in active if k.weakness),
        "unused_keys": len(unused),
        "unused_key_days": settings.creds.unused_key_days,
        "certificates_total": len(certs),
        "certificates_by_days_left": buckets,
        "certificates_revoked": sum(1 for c in session.exec(select(Certificate)).all() if c.status == "revoked"),
        "certificates": cert_rows,
        "key_deployments": dict(sorted(key_deps.items())),
        "certificate_deployments": dict(sorted(cert_deps.items())),
        "generated_at": now,
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def to_prometheus(metrics: dict[str, Any]) -> str:
    """Render :func:`collect`'s document as Prometheus text format (ends with a newline)."""
    lines: list[str] = []

    def family(name: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            number = int(value) if float(value).is_integer() else value
            lines.append(f"{name}{_labels(**labels)} {number}")

    family("unityctl_creds_ssh_keys", "Active SSH keys by key type.",
           [({"type": t}, n) for t, n in metrics["ssh_keys_by_type"].items()])
    family("unityctl_creds_ssh_keys_weak", "Active SSH keys flagged as weak (DSA, RSA < 2048).",
           [({}, metrics["weak_keys"])])
    family("unityctl_creds_ssh_keys_unused",
           f"Active SSH keys never used or not used for {metrics['unused_key_days']} days.",
           [({}, metrics["unused_keys"])])
    family("unityctl_creds_certificates", "TLS certificates (not revoked) by days left until expiry.",
           [({"days_left": b}, n) for b, n in metrics["certificates_by_days_left"].items()])
    family("unityctl_creds_certificate_expiry_timestamp_seconds",
           "Expiry (not_after) of each TLS certificate, as a Unix timestamp.",
           [({"name": c["name"], "provider": c["provider"]}, int(c["not_after"].timestamp()))
            for c in metrics["certificates"]])
    family("unityctl_creds_key_deployments", "SSH key deployments (authorized_keys lines) by status.",
           [({"status": s}, n) for s, n in metrics["key_deployments"].items()])
    family("unityctl_creds_certificate_deployments", "TLS certificate deployments by status.",
           [({"status": s}, n) for s, n in metrics["certificate_deployments"].items()])
    return "\n".join(lines) + "\n"
