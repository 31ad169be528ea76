"""`unityctl status`: one screen about everything, built from each domain's summary.

It reads through the light read path (:mod:`unityctl.core.readdb`): plain SQL on the driver, no
SQLAlchemy import, so it stays quick enough for a shell prompt or a status bar.
"""

from __future__ import annotations

import importlib
from typing import Any

from unityctl.core.alert_states import ACTIVE_SQL, SEVERITIES
from unityctl.core.readdb import ReadConnection
from unityctl.domains import STATUS_PROVIDERS


def summary(db: ReadConnection, *, database_url: str) -> dict[str, Any]:
    """Counts per domain and open alerts by severity, as plain data."""
    from unityctl.core.config import redact_url

    doc: dict[str, Any] = {
        "database": redact_url(database_url),
        "alerts": {"open": open_alerts_by_severity(db)},
    }
    for key, module in STATUS_PROVIDERS:
        doc[key] = importlib.import_module(module).status_summary(db)
    return doc


def open_alerts_by_severity(db: ReadConnection) -> dict[str, int]:
    """Open (or acknowledged) alerts per severity, every severity present."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for severity, n in db.rows(f"SELECT severity, count(*) FROM alert WHERE {ACTIVE_SQL} GROUP BY severity"):
        counts[severity] = counts.get(severity, 0) + int(n)
    return counts
