"""Command-line groups owned by core (init/status/version, db, config, audit, alerts, secrets)."""
