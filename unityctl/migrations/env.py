"""Alembic environment. Run through unityctl.core.migrate, which passes an open connection."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from unityctl.domains import import_models

import_models()
target_metadata = SQLModel.metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `unityctl db upgrade`, which provides the connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode recreates tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
