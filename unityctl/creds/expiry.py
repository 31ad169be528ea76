"""Timed task: certificate expiry alerts.

One alert per certificate (dedup key ``certificate_expiring:certificate:<id>``) whose severity
rises as the thresholds of ``settings.creds.expiry_alert_days`` (default 30/14/7/1) are crossed:
the widest threshold is ``info``, the narrowest (and an expired certificate) ``critical``, those in
between ``warning`` — so with the defaults: 30 -> info, 14 and 7 -> warning, 1 or expired ->
critical. Core's alert policy notifies every rise at once. The alert is resolved when the
certificate is renewed (by ``certs renew`` at once, and by this task when it finds the certificate
outside every threshold) or revoked.

The daemon calls :func:`run` on a timer; ``unityctl creds certs expiry`` runs it once.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from unityctl.core.db import utcnow
from unityctl.creds import certificates as certs

if TYPE_CHECKING:  # pragma: no cover
    from unityctl.core.config import Settings

__all__ = ["ALERT_TYPE", "ExpiryItem", "ExpirySummary", "run", "severity_for"]

ALERT_TYPE = "certificate_expiring"


def severity_for(days_left: float, thresholds: list[int]) -> tuple[str, int | None] | None:
    """The alert severity and the threshold crossed for ``days_left``, or None (no alert).

    Sorted ascending, the narrowest threshold is critical, the widest info (when there are at
    least two), the rest warning; an expired certificate (``days_left <= 0``) is critical with
    threshold None.
    """
    if days_left <= 0:
        return "critical", None
    ordered = sorted({int(t) for t in thresholds if int(t) > 0})
    for index, threshold in enumerate(ordered):
        if days_left <= threshold:
            if index == 0:
                return "critical", threshold
            if index == len(ordered) - 1:
                return "info", threshold
            return "warning", threshold
    return None


@dataclass
class ExpiryItem:
    """One certificate's state after the task: alert "raised" | "escalated" | "repeat" |
    "unchanged" | "resolved" | "none"."""

    name: str
    days_left: float
    severity: str | None
    threshold: int | None
    alert: str


@dataclass
class ExpirySummary:
    """What one run did (plain data for the CLI and the daemon's log)."""

    checked: int = 0
    alerting: int = 0
    raised: int = 0
    escalated: int = 0
    resolved: int = 0
    items: list[ExpiryItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(session: Session, *, settings: Settings, now: dt.datetime | None = None) -> ExpirySummary:
    """Raise, escalate or resolve the expiry alert of every certificate.

    Revoked certificates get no alert (an open one is resolved). A certificate past its
    not_after is also marked ``status = "expired"`` in the table.
    In: the session (the caller commits), settings (thresholds, alert policy), ``now`` for tests.
    Out: an ExpirySummary.
    """
    from unityctl.core.alerts import clear_alert, raise_alert

    now = now or utcnow()
    summary = ExpirySummary()
    thresholds = list(settings.creds.expiry_alert_days)
    for cert in certs.list_certificates(session):
        summary.checked += 1
        key = certs.expiry_dedup_key(cert.id)  # type: ignore[arg-type]
        left = certs.days_left(cert, now)
        verdict = None if cert.status == "revoked" else severity_for(left, thresholds)
        if verdict is None:
            cleared = clear_alert(session, dedup_key=key, now=now)
            summary.resolved += cleared is not None
            summary.items.append(ExpiryItem(cert.name, round(left, 2), None, None,
                                            "resolved" if cleared else "none"))
            continue
        severity, threshold = verdict
        if threshold is None:
            message = f"certificate {cert.name} expired {-left:.1f} days ago ({cert.not_after:%Y-%m-%d %H:%M} UTC)"
            if cert.status != "expired":
                cert.status = "expired"
                session.add(cert)
        else:
            message = (f"certificate {cert.name} expires in {left:.1f} days "
                       f"({cert.not_after:%Y-%m-%d %H:%M} UTC; threshold {threshold} days)")
        raised = raise_alert(session, type=ALERT_TYPE, severity=severity, source_type="certificate",
                             source_id=cert.id, dedup_key=key, message=message,  # type: ignore[arg-type]
                             details={"certificate": cert.name, "days_left": round(left, 2),
                                      "threshold_days": threshold,
                                      "not_after": certs._aware(cert.not_after).isoformat(),
                                      "domains": json.loads(cert.domains)},
                             config=settings.alerts, now=now)
        summary.alerting += 1
        summary.raised += raised.event == "raised"
        summary.escalated += raised.event == "escalated"
        summary.items.append(ExpiryItem(cert.name, round(left, 2), severity, threshold, raised.event))
    return summary
