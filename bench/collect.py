"""bench/collect: a full collection of 20 real sshd servers on loopback, three ways, same run.

* ``unityctl infra collect --all`` (20 servers, one SSH session each, in parallel),
* ``unityctl infra collect srv01`` (one server),
* ``ansible all -m setup -f 20`` (Ansible's fact gathering; same hosts, users and private key,
  host key checking off, SSH connection sharing off so neither side reuses a warm connection).

Each is a subprocess, timed wall-clock (Python start-up included on both sides); one warm-up run
each (it also pins the host keys), then the median of ``--runs``. Targets (issue 4): unityctl at
least 5x faster than Ansible; 20 servers within 2x of one server.

Needs root and openssh-server (the sshd fleet of tests/support/sshd.py, on 127.0.9.x so it never
collides with a test run).

    .venv/bin/python bench/collect.py [--servers 20] [--runs 3]
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VENV_BIN = Path(sys.executable).parent
SLOT = 9  # 127.0.9.x, users utsd9sNN: apart from pytest's slots 0..8
ROOT = Path("/tmp/unityctl-bench-sshd")


def timed(cmd: list[str], runs: int, env: dict[str, str], *, ok_codes: tuple[int, ...] = (0,)) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples.append(time.perf_counter() - start)
        if proc.returncode not in ok_codes:
            lines = proc.stdout.splitlines()
            bad = [i for i, line in enumerate(lines) if "UNREACHABLE" in line or "FAILED" in line]
            shown = "\n".join("\n".join(lines[i:i + 6]) for i in bad[:5]) or proc.stdout[-2000:]
            sys.exit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{shown}\n{proc.stderr[-2000:]}")
    return statistics.median(samples)


def start_fleet(n: int):  # type: ignore[no-untyped-def]
    from tests.support import sshd

    if os.geteuid() != 0 or not sshd.SSHD.exists():
        sys.exit("bench/collect needs root and openssh-server (make system-deps)")
    ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
    sshd._kill_leftovers(ROOT)
    fleet = sshd.SshFleet(slot=SLOT, root=ROOT, admin_key=sshd.generate_keypair("unityctl-bench"))
    fleet.servers(n)
    return fleet


def register(fleet, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Import the fleet key into creds and add one creds login + one monitored server per sshd."""
    os.environ.update({k: v for k, v in env.items() if k.startswith(("UNITYCTL_", "XDG_"))})
    from unityctl.core.context import AppContext
    from unityctl.creds import keys
    from unityctl.creds import servers as creds_servers
    from unityctl.infra import servers as infra_servers

    app = AppContext()
    with app.session(write=True) as s:
        keys.import_key(s, app.keyring(), name="bench", data=fleet.admin_key.private_pem.encode())
        for srv in fleet._servers:
            creds_servers.add_server(s, app.keyring(), name=f"{srv.name}-login", host=srv.host, port=srv.port,
                                     user=srv.user, key_name="bench")
            infra_servers.add_server(s, app.keyring(), name=srv.name, credential=f"{srv.name}-login")
    app.engine().dispose()


def ansible_files(fleet, tmp: Path) -> tuple[Path, dict[str, str]]:  # type: ignore[no-untyped-def]
    key = tmp / "id_bench"
    key.write_text(fleet.admin_key.private_pem)
    key.chmod(0o600)
    lines = ["[fleet]"]
    for srv in fleet._servers:
        lines.append(f"{srv.name} ansible_host={srv.host} ansible_port={srv.port} ansible_user={srv.user} "
                     f"ansible_ssh_private_key_file={key}")
    lines += ["[all:vars]", "ansible_python_interpreter=/usr/bin/python3"]
    inventory = tmp / "inventory.ini"
    inventory.write_text("\n".join(lines) + "\n")
    env = {"ANSIBLE_HOST_KEY_CHECKING": "False",
           # Same footing as unityctl, which opens fresh connections every run: no ControlPersist.
           "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORKS": "20"}
    return inventory, env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ansible = VENV_BIN / "ansible"
    if not ansible.exists():
        sys.exit("ansible-core is not in the venv: .venv/bin/pip install ansible-core")
    fleet = start_fleet(args.servers)
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            env = {**os.environ, "XDG_CONFIG_HOME": f"{tmp}/cfg", "XDG_DATA_HOME": f"{tmp}/data",
                   "UNITYCTL_DATA_DIR": f"{tmp}/data/unityctl"}
            env.pop("UNITYCTL_DATABASE_URL", None)
            unityctl = str(VENV_BIN / "unityctl")
            subprocess.run([unityctl, "init"], check=True, capture_output=True, env=env)
            register(fleet, env)
            inventory, ansible_env = ansible_files(fleet, tmp)
            aenv = {**env, **ansible_env}
            full = [unityctl, "infra", "collect", "--all"]
            one = [unityctl, "infra", "collect", fleet._servers[0].name]
            fact = [str(ansible), "all", "-i", str(inventory), "-m", "setup", "-f", str(args.servers)]
            for cmd, e in ((full, env), (one, env), (fact, aenv)):  # warm-up (pins host keys, page cache)
                timed(cmd, 1, e)
            t_full = timed(full, args.runs, env)
            t_one = timed(one, args.runs, env)
            t_ansible = timed(fact, args.runs, aenv)
    finally:
        fleet.stop_all()
    n = args.servers
    print(f"bench/collect: {n} sshd servers on loopback, median of {args.runs} runs (subprocess wall time)")
    print(f"  unityctl infra collect --all ({n} servers)  {t_full:7.2f} s")
    print(f"  unityctl infra collect (1 server)          {t_one:7.2f} s")
    print(f"  ansible all -m setup -f {n}                 {t_ansible:7.2f} s")
    speedup, spread = t_ansible / t_full, t_full / t_one
    print(f"  ansible / unityctl = {speedup:.1f}x (target >= 5x)   "
          f"{'OK' if speedup >= 5 else 'MISSED'}")
    print(f"  {n} servers / 1 server = {spread:.2f}x (target <= 2x)   {'OK' if spread <= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
