"""Credentials: SSH keys, server logins, SSH CA, TLS certificates."""
