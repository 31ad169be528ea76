"""Parsers and probes: pure functions that turn captured command output into typed records."""
