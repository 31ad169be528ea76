"""Core pieces shared by every domain: config, database, crypto, audit, alerts, SSH, output."""
