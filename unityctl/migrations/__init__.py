"""Alembic environment and versions: the schema's only owner."""
