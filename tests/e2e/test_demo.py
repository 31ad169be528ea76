"""`make demo`'s script on the embedded default (SQLite in a fresh data dir), run twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_runs_twice_on_a_fresh_data_dir_and_ends_with_an_intact_audit_chain(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNITYCTL_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "cfg"), UNITYCTL_DATA_DIR=str(tmp_path / "data"),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    for attempt in (1, 2):  # the second run proves every step is idempotent
        done = subprocess.run(["bash", str(REPO / "scripts" / "demo")], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"run {attempt}: {done.stderr[-2000:]}"
        assert "audit chain intact" in done.stderr
        assert "localhost" in done.stdout
    assert (tmp_path / "data" / "unityctl.db").exists()
    assert oct((tmp_path / "data" / "master.key").stat().st_mode & 0o777) == "0o600"
