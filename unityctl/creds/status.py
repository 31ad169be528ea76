"""The credentials line of `unityctl status` (plain SQL on the read path, see core.readdb)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from unityctl.core.readdb import ReadConnection, utc

EXPIRING_WITHIN = dt.timedelta(days=30)


def status_summary(db: ReadConnection, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Keys, servers, certificates, and the ones needing attention."""
    now = now or dt.datetime.now(dt.timezone.utc)
    # Compared here, not in SQL: SQLite keeps timestamps as text; valid certificates are few.
    not_after = [utc(t) for (t,) in db.rows("SELECT not_after FROM certificate WHERE status = 'valid'")]
    return {
        "ssh_keys": db.scalar("SELECT count(*) FROM ssh_key WHERE status = 'active'"),
        "weak_keys": db.scalar("SELECT count(*) FROM ssh_key WHERE status = 'active' AND weakness IS NOT NULL"),
        "servers": db.scalar("SELECT count(*) FROM server_credential"),
        "deployments_out_of_date": db.scalar("SELECT count(*) FROM key_deployment WHERE status = 'out_of_date'"),
        "certificates": len(not_after),
        "certificates_expiring_30d": sum(1 for t in not_after if t and t <= now + EXPIRING_WITHIN),
    }
