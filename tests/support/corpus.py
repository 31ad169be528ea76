"""Where the shared corpus of real captured outputs lives, for parser and replay tests.

The corpus (``../shared/corpus`` or ``$UNITYCTL_CORPUS``) is read at test time and never copied into
this repository. Where it is absent, corpus tests skip with a message saying so; each parser also
has fixtures of our own under ``tests/fixtures`` that keep it covered.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]


def corpus_dir() -> Path | None:
    """Return the corpus directory, or None when it is not present on this machine."""
    env = os.environ.get("UNITYCTL_CORPUS")
    path = Path(env) if env else _REPO.parent / "shared" / "corpus"
    return path if path.is_dir() else None


def corpus_files(subdir: str, pattern: str = "*") -> list[Path]:
    """All files under ``corpus/<subdir>`` matching ``pattern`` (recursive), sorted; [] when absent."""
    root = corpus_dir()
    if root is None or not (root / subdir).is_dir():
        return []
    return sorted(p for p in (root / subdir).rglob(pattern) if p.is_file())


def require_corpus(subdir: str) -> Path:
    """Return ``corpus/<subdir>`` or skip the calling test, saying the corpus is absent."""
    root = corpus_dir()
    if root is None or not (root / subdir).is_dir():
        pytest.skip(f"shared corpus not found (../shared/corpus/{subdir} or $UNITYCTL_CORPUS): "
                    "corpus replay skipped; own fixtures still cover the parser")
    return root / subdir


FIXTURES = _REPO / "tests" / "fixtures"
