"""bench/startup: wall time of `unityctl version` beside `python -c "import typer"`, same run.

Target (issue 2): at most 1.5x. Also reports which heavy modules `version`, `--help` and `status`
import (none of docker, podman, kubernetes, certbot, fabric may appear).

    .venv/bin/python bench/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
HEAVY = ("docker", "podman", "kubernetes", "certbot", "fabric", "paramiko", "acme")


def timed(cmd: list[str], runs: int, env: dict[str, str]) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    code = ("import sys, unityctl.cli as c\n"
            f"c.run({args!r})\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return eval(proc.stderr.strip().splitlines()[-1])  # noqa: S307 - our own printed list


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_CONFIG_HOME": f"{tmp}/cfg", "XDG_DATA_HOME": f"{tmp}/data"}
        env.pop("UNITYCTL_DATABASE_URL", None)
        subprocess.run([str(VENV_BIN / "unityctl"), "init"], check=True, capture_output=True, env=env)
        # Warm the page cache and .pyc files before measuring either side.
        timed([sys.executable, "-c", "import typer"], 2, env)
        timed([str(VENV_BIN / "unityctl"), "version"], 2, env)
        base = timed([sys.executable, "-c", "import typer"], runs, env)
        ours = timed([str(VENV_BIN / "unityctl"), "version"], runs, env)
        status = timed([str(VENV_BIN / "unityctl"), "status"], runs, env)
        print(f"runs per command: {runs} (median wall time)")
        print(f"python -c 'import typer' : {base * 1000:7.1f} ms  (baseline)")
        print(f"unityctl version         : {ours * 1000:7.1f} ms  ratio {ours / base:.2f}x  (target <= 1.5x)")
        print(f"unityctl status          : {status * 1000:7.1f} ms  ratio {status / base:.2f}x")
        for args in (["version"], ["--help"], ["status"]):
            found = heavy_imports(args, env)
            print(f"heavy modules imported by `unityctl {' '.join(args)}`: {', '.join(found) or 'none'}")


if __name__ == "__main__":
    main()
