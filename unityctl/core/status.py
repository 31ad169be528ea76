"""`unityctl status`: one screen about everything, built from each domain's summary."""

from __future__ import annotations

import importlib
from typing import Any

from sqlmodel import Session

from unityctl.core import alerts
from unityctl.domains import STATUS_PROVIDERS


def summary(session: Session, *, database_url: str) -> dict[str, Any]:
    """Counts per domain and open alerts by severity, as plain data."""
    from unityctl.core.config import redact_url

    doc: dict[str, Any] = {
        "database": redact_url(database_url),
        "alerts": {"open": alerts.counts_by_severity(session)},
    }
    for key, module in STATUS_PROVIDERS:
        doc[key] = importlib.import_module(module).status_summary(session)
    return doc
