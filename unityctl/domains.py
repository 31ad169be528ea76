"""The registry of domains: which modules hold tables, which contribute to `unityctl status`.

Listing them here (as import paths, imported only when needed) keeps one SQLModel metadata for
Alembic and lets `unityctl status` stay fast.
"""

from __future__ import annotations

import importlib

MODEL_MODULES = [
    "unityctl.core.models",
    "unityctl.creds.models",
    "unityctl.infra.models",
]

# Each module has `status_summary(db: core.readdb.ReadConnection) -> dict` (plain data for `unityctl status`).
STATUS_PROVIDERS: list[tuple[str, str]] = [
    ("creds", "unityctl.creds.status"),
    ("infra", "unityctl.infra.status"),
]


def import_models() -> None:
    """Import every module that defines tables, so SQLModel.metadata is complete.

    ``UNITYCTL_MODEL_MODULES`` (comma-separated) limits this to a prefix of the list; only
    scripts/regen-migrations uses it, to write one migration per domain.
    """
    import os

    limit = os.environ.get("UNITYCTL_MODEL_MODULES")
    for name in limit.split(",") if limit else MODEL_MODULES:
        importlib.import_module(name)
