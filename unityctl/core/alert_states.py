"""Alert severities and states: plain constants, importable without the ORM (the status paths)."""

from __future__ import annotations

SEVERITIES = ("info", "warning", "critical")
STATES = ("open", "acknowledged", "resolved")
ACTIVE = ("open", "acknowledged")
# ACTIVE as a SQL condition on the alert table, for plain-SQL readers (core.readdb).
ACTIVE_SQL = "state IN (" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"
