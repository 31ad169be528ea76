"""The credentials line of `unityctl status`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from unityctl.core.db import utcnow
from unityctl.creds.models import Certificate, KeyDeployment, ServerCredential, SSHKey


def status_summary(session: Session) -> dict[str, Any]:
    """Keys, servers, certificates, and the ones needing attention."""
    import datetime as dt

    soon = utcnow() + dt.timedelta(days=30)
    count = lambda q: session.exec(q).one()  # noqa: E731
    return {
        "ssh_keys": count(select(func.count()).select_from(SSHKey).where(SSHKey.status == "active")),
        "weak_keys": count(select(func.count()).select_from(SSHKey).where(SSHKey.status == "active",
                                                                         SSHKey.weakness != None)),  # noqa: E711
        "servers": count(select(func.count()).select_from(ServerCredential)),
        "deployments_out_of_date": count(select(func.count()).select_from(KeyDeployment).where(
            KeyDeployment.status == "out_of_date")),
        "certificates": count(select(func.count()).select_from(Certificate).where(Certificate.status == "valid")),
        "certificates_expiring_30d": count(select(func.count()).select_from(Certificate).where(
            Certificate.status == "valid", Certificate.not_after <= soon)),
    }
