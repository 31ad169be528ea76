"""bench/deploy: deploy one key to 20 real sshd servers, unityctl beside a loop of ssh-copy-id.

Both run in the same process run, against the same 20 servers (real OpenSSH daemons on
127.0.S.x, started with the machinery of tests/support/sshd.py; needs root and openssh-server):

* ``unityctl creds keys deploy bench --to s01 ... --to s20`` (servers registered and their host
  keys pinned beforehand; one process, servers in parallel);
* ``for s in servers: ssh-copy-id -i other.pub -o StrictHostKeyChecking=accept-new
  -o IdentityFile=<admin key> -f user@host`` (non-interactive: the admin key is already authorized).

Target (issue 3): unityctl at least 5x faster.

    .venv/bin/python bench/deploy.py [--servers 20] [--rounds 3] [--slot 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], env: dict[str, str], *, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench/deploy: {' '.join(cmd[:5])} ... failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slot", type=int, default=20, help="address block 127.0.SLOT.x (away from test runs)")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("ssh-copy-id") or not Path("/usr/sbin/sshd").exists():
        sys.exit("bench/deploy: needs root, openssh-server and openssh-client (ssh-copy-id); "
                 "run `make system-deps` and run it as root (the test container does)")

    from tests.support.sshd import BASE_DIR, SshFleet, _kill_leftovers, generate_keypair

    root = BASE_DIR / f"bench-{args.slot}"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _kill_leftovers(root)
    fleet = SshFleet(slot=args.slot, root=root, admin_key=generate_keypair("bench-admin"))
    work = Path(tempfile.mkdtemp(prefix="unityctl-bench-deploy-"))
    try:
        print(f"starting {args.servers} sshd servers ...", file=sys.stderr)
        servers = fleet.servers(args.servers)
        for s in servers:
            s.reset()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNITYCTL_")},
               "HOME": str(work / "home"), "UNITYCTL_DATA_DIR": str(work / "data"),
               "UNITYCTL_CONFIG": str(work / "config.yaml"), "NO_COLOR": "1"}
        (work / "home" / ".ssh").mkdir(parents=True, mode=0o700)
        unityctl = str(VENV_BIN / "unityctl")
        admin = work / "admin_key"
        admin.write_text(fleet.admin_key.private_pem)
        admin.chmod(0o600)

        # --- set-up (not timed): register, pin host keys, make the keys ----------------------
        run([unityctl, "init"], env)
        run([unityctl, "creds", "keys", "import", "admin", str(admin)], env)
        for s in servers:
            run([unityctl, "creds", "servers", "add", s.name, "--host", s.host, "--port", str(s.port),
                 "--user", s.user, "--key", "admin"], env)
            run([unityctl, "creds", "servers", "test", s.name], env)
        run([unityctl, "creds", "keys", "generate", "bench"], env)
        other = work / "other"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench-ssh-copy-id", "-f", str(other)], env)

        # --- the race, alternated over --rounds rounds (median): the machine's load varies --------
        cmd = [unityctl, "creds", "keys", "deploy", "bench", *[a for s in servers for a in ("--to", s.name)]]
        known = work / "known_hosts"
        before = {s.name: s.read_authorized_keys() for s in servers}
        u_times, c_times = [], []
        for round_no in range(args.rounds):
            if round_no:
                run([unityctl, "creds", "keys", "revoke", "bench"], env)  # not timed
                for s in servers:
                    s.write_authorized_keys(before[s.name])
            start = time.perf_counter()
            run(cmd, env)
            u_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            for s in servers:
                # -f: skip ssh-copy-id's "already installed?" probe. With IdentityFile=<admin key>
                # that probe logs in with the admin key and wrongly concludes the new key is there;
                # -f also makes ssh-copy-id do less work, so the comparison only favours it.
                run(["ssh-copy-id", "-f", "-i", f"{other}.pub", "-p", str(s.port),
                     "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known}",
                     "-o", f"IdentityFile={admin}", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                     f"{s.user}@{s.host}"], env)
            c_times.append(time.perf_counter() - start)
        t_unityctl, t_copy = statistics.median(u_times), statistics.median(c_times)

        # --- both really did the job ------------------------------------------------------------
        bench_pub = run([unityctl, "creds", "keys", "export", "bench", "--public"], env).stdout.split()[1]
        other_pub = (other.with_suffix(".pub")).read_text().split()[1]
        for s in servers:
            content = s.read_authorized_keys().decode()
            assert bench_pub in content and other_pub in content, f"{s.name}: a key is missing"

        print(f"bench/deploy: one key to {len(servers)} sshd servers, median of {args.rounds} rounds "
              f"(unityctl {', '.join(f'{t:.2f}' for t in u_times)}; "
              f"ssh-copy-id {', '.join(f'{t:.2f}' for t in c_times)})")
        print(f"  unityctl creds keys deploy : {t_unityctl:7.2f} s")
        print(f"  ssh-copy-id loop           : {t_copy:7.2f} s")
        ratio = t_copy / t_unityctl
        print(f"  ratio (ssh-copy-id / unityctl): {ratio:.1f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
        return 0
    finally:
        fleet.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
