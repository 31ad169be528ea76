"""Containers: hosts on Docker, Podman or Kubernetes; update detection and safe updates (planned)."""
