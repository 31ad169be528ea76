"""Test support: fixtures that start real components (sshd fleet, Pebble, SMTP, HTTP)."""
