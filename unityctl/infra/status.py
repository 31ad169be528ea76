"""The infrastructure line of `unityctl status` (filled in by the infra work)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session


def status_summary(session: Session) -> dict[str, Any]:
    return {}
