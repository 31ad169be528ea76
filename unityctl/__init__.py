"""unityctl: one command-line tool for a whole homelab."""

__version__ = "0.1.0"
