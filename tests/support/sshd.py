"""A pytest plugin that runs a fleet of REAL OpenSSH servers on loopback addresses.

Enable it with ``pytest_plugins = ["tests.support.sshd"]`` in the root conftest (or ``-p
tests.support.sshd``). Each "server" is its own ``/usr/sbin/sshd`` process with its own config
file, host key, log file and local user, listening on its own address ``127.0.S.N`` (S is 0 for a
plain run, 1+k for pytest-xdist worker ``gwk``; N starts at 2) on port 22, or 2222 when port 22 of
that address is already taken (a system sshd on 0.0.0.0:22).

Fixtures:

* ``sshd_fleet_session`` (session): the :class:`SshFleet`; servers start lazily and are reused by
  every test of the session (starting users and daemons costs time); all are stopped at the end.
* ``sshd_fleet`` (function): the same fleet after :meth:`SshFleet.reset` (every started server
  running, default config, ``authorized_keys`` holding only the bootstrap admin key).
* ``sshd_servers`` (function): ``sshd_fleet.servers(5)``, a list of five :class:`SshServer`.
* ``sshd_admin_key`` (session): the bootstrap :class:`KeyPair` present on every server.
* ``ssh_keypair`` (function): a factory ``ssh_keypair(comment) -> KeyPair`` of fresh Ed25519 keys.
* ``blackhole_server`` (function): a :class:`Blackhole`, a TCP listener that accepts and never
  answers (for timeout tests).

Leftovers of an earlier run (a crash, a killed pytest) are found through pid files under
``/tmp/unityctl-test-sshd/slot-S/`` and killed before anything starts. The plugin needs root and
OpenSSH: without them it FAILS (never skips), so a missing package cannot hide the tests.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from unityctl.core.ssh import Target

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")
BASE_DIR = Path("/tmp/unityctl-test-sshd")
MAX_SERVERS = 200  # host parts 2..201 of 127.0.S.x; blackholes count down from 250
INSTALL_HINT = "install openssh-server (make test does this)"


# --- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair: OpenSSH private key text, ``authorized_keys`` line, fingerprint."""

    private_pem: str
    public_line: str
    fingerprint: str

    def __repr__(self) -> str:  # keep private keys out of pytest's failure reports
        return f"KeyPair(fingerprint={self.fingerprint!r})"


def sha256_fingerprint(public_line: str) -> str:
    """``SHA256:...`` fingerprint (as sshd logs it) of an OpenSSH public key line."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def generate_keypair(comment: str = "unityctl-test") -> KeyPair:
    """Make a fresh Ed25519 key pair in memory (no ssh-keygen process, no file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    line = f"{public} {comment}"
    return KeyPair(private_pem=private, public_line=line, fingerprint=sha256_fingerprint(line))


# --- processes ---------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process, read from /proc (sshd's per-connection children call
    setsid(), so killing a process group would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces/parentheses: fields start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all of its descendants."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal_and_wait(pids: list[int], timeout: float) -> None:
    """SIGTERM ``pids``, SIGKILL whatever is still alive after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.02)
        if not any(_alive(p) for p in pids):
            return


def _kill_tree(pid: int, timeout: float = 5.0) -> None:
    """Kill ``pid``'s descendants, then ``pid`` itself.

    Descendants first, so their parents are still alive to reap them: killed together, the
    orphans would be re-parented to a pid 1 that (in some containers) never reaps zombies.
    """
    descendants = _process_tree(pid)[1:]
    if descendants:
        _signal_and_wait(descendants, timeout)
    _signal_and_wait([pid], timeout)


def _run(argv: list[str], *, input: str | None = None) -> None:
    """Run a setup command; a failure stops the test session with its stderr."""
    proc = subprocess.run(argv, input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr.strip()}")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_for_banner(host: str, port: int, timeout: float) -> bool:
    """True once something on host:port sends an SSH banner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False


# --- one server --------------------------------------------------------------------------------


class SshServer:
    """One real sshd with its own address, config, host key, log and local user.

    Attributes: ``name`` (e.g. ``srv01``), ``host``, ``port``, ``user``, ``password`` (set with
    chpasswd, for password-login tests), ``home``, ``authorized_keys`` (path), ``dir`` (config,
    keys, log), ``host_key_fingerprint`` (``SHA256:...``), ``log_path``.
    """

    def __init__(self, *, index: int, slot: int, root: Path, host: str, admin_key: KeyPair) -> None:
        self.index = index
        self.name = f"srv{index:02d}"
        self.host = host
        self.user = f"utsd{slot}s{index:02d}"
        self.password = f"unityctl-test-pw-{slot}-{index:02d}"
        self.dir = root / self.name
        self.config_path = self.dir / "sshd_config"
        self.host_key_path = self.dir / "ssh_host_ed25519_key"
        self.pid_path = self.dir / "sshd.pid"
        self.log_path = self.dir / "sshd.log"
        self.admin_key = admin_key
        self.host_key_fingerprint = ""
        self._overrides: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 22 if _port_free(host, 22) else 2222
        if self.port == 2222 and not _port_free(host, 2222):
            pytest.fail(f"sshd fleet: ports 22 and 2222 on {host} are both taken")
        self._ensure_user()
        self.home = Path(pwd.getpwnam(self.user).pw_dir)
        self.authorized_keys = self.home / ".ssh" / "authorized_keys"
        self.regenerate_host_key(restart=False)
        self._reset_ssh_dir()
        self._write_config()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SshServer({self.name} {self.user}@{self.host}:{self.port} {state})"

    # setup ----------------------------------------------------------------------------------
    def _ensure_user(self) -> None:
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", "-c", "unityctl test sshd", self.user])
        # An account with a locked ('!') password is refused by sshd even for keys: unlock it,
        # then give it the known password for the password-login tests.
        _run(["usermod", "-p", "*", self.user])
        _run(["chpasswd"], input=f"{self.user}:{self.password}\n")

    def _config_text(self) -> str:
        lines = {
            "ListenAddress": f"{self.host}:{self.port}",
            "HostKey": str(self.host_key_path),
            "PidFile": str(self.pid_path),
            "UsePAM": "no",
            "StrictModes": "no",
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "yes",
            "KbdInteractiveAuthentication": "no",
            "PermitRootLogin": "no",
            # Every sshd could log in every local user: keep each server to its own user.
            "AllowUsers": self.user,
            "AuthorizedKeysFile": ".ssh/authorized_keys",
            "AllowTcpForwarding": "yes",
            "LogLevel": "VERBOSE",
            "MaxStartups": "100:30:200",
            "Subsystem": "sftp internal-sftp",
        }
        lines.update(self._overrides)
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    def _write_config(self) -> None:
        self.config_path.write_text(self._config_text())

    def _reset_ssh_dir(self) -> None:
        # Users (and so homes) outlive a session: empty the home so files a test or an earlier
        # run left behind cannot leak into the next test. The home is a test user's, never real.
        assert self.home.name == self.user, self.home
        for entry in self.home.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        self.write_authorized_keys(self.admin_key.public_line + "\n")
        os.chown(ssh_dir, *self._uid_gid())

    def _uid_gid(self) -> tuple[int, int]:
        entry = pwd.getpwnam(self.user)
        return entry.pw_uid, entry.pw_gid

    # lifecycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while this server's sshd process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start sshd (no-op when running) and wait until it sends its banner."""
        if self.running:
            return
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        check = subprocess.run(
            [str(SSHD), "-t", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"{self.name}: invalid sshd config: {check.stderr.strip()}")
        # -D: stay in the foreground so we own the process; -E: log to our file, not syslog.
        self._proc = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # Record our pid too: sshd writes PidFile itself, but only once it is listening.
        self.pid_path.write_text(f"{self._proc.pid}\n")
        if not _wait_for_banner(self.host, self.port, timeout=10.0):
            self.stop()
            raise RuntimeError(
                f"{self.name}: sshd did not start on {self.host}:{self.port}; log tail: "
                + " | ".join(self.log_text().splitlines()[-5:])
            )

    def stop(self) -> None:
        """Kill sshd and every connection it serves: the server is now "offline"."""
        if self._proc is not None:
            _kill_tree(self._proc.pid)
            self._proc.wait(timeout=5)
            self._proc = None
        self.pid_path.unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop (if running) and start again, picking up config and host key changes."""
        self.stop()
        self.start()

    def regenerate_host_key(self, *, restart: bool = True) -> str:
        """Give the server a new Ed25519 host key (restarting it); return the new fingerprint."""
        for path in (self.host_key_path, self.host_key_path.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        _run([str(SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-C", self.name,
              "-f", str(self.host_key_path)])
        public = self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text()
        self.host_key_fingerprint = sha256_fingerprint(public)
        if restart and self.running:
            self.restart()
        return self.host_key_fingerprint

    def set_config(self, **lines: str | None) -> None:
        """Set sshd config keywords (``None`` removes an override), then restart.

        e.g. ``set_config(TrustedUserCAKeys="/path/ca.pub", RevokedKeys="/path/krl",
        AllowTcpForwarding="no", LogLevel="DEBUG1")``.
        """
        for key, value in lines.items():
            if value is None:
                self._overrides.pop(key, None)
            else:
                self._overrides[key] = str(value)
        self._write_config()
        self.restart()

    def reset(self) -> None:
        """Back to the known state: default config, running, an empty home whose
        ``authorized_keys`` holds only the admin key."""
        if self._overrides:
            self._overrides.clear()
            self._write_config()
            self.stop()
        self._reset_ssh_dir()
        self.start()

    # files ----------------------------------------------------------------------------------
    def read_authorized_keys(self) -> bytes:
        """The raw bytes of ``~/.ssh/authorized_keys`` (b"" when absent)."""
        try:
            return self.authorized_keys.read_bytes()
        except FileNotFoundError:
            return b""

    def write_authorized_keys(self, content: str | bytes) -> None:
        """Replace ``~/.ssh/authorized_keys`` (owned by the server's user, mode 0600)."""
        data = content.encode() if isinstance(content, str) else content
        self.authorized_keys.parent.mkdir(mode=0o700, exist_ok=True)
        self.authorized_keys.write_bytes(data)
        os.chmod(self.authorized_keys, 0o600)
        os.chown(self.authorized_keys, *self._uid_gid())

    def log_size(self) -> int:
        """Current size of the log, to read only what a test caused: ``log_text(since=...)``."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        """The sshd log (LogLevel VERBOSE: "Accepted publickey for USER ... SHA256:...")."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(since)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def target(self, **overrides: Any) -> Target:
        """A :class:`unityctl.core.ssh.Target` for this server, logging in with the admin key."""
        from unityctl.core.ssh import Target

        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "private_key_pem": self.admin_key.private_pem,
            "name": self.name,
            "connect_timeout": 5.0,
            "command_timeout": 30.0,
        }
        values.update(overrides)
        return Target(**values)


# --- the fleet ---------------------------------------------------------------------------------


def _slot() -> int:
    """0 for a plain run; 1+k for pytest-xdist worker gwk (its own addresses and directory)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) + 1
    return 0


def _kill_leftovers(root: Path) -> None:
    """Kill sshd processes an earlier run of this slot left behind, found by their pid files."""
    for pid_file in root.glob("*/sshd.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        # Only a process started from this very directory: a recycled pid is left alone.
        if str(root).encode() in cmdline and b"sshd" in cmdline:
            _kill_tree(pid)


class SshFleet:
    """A lazily grown set of :class:`SshServer` sharing one bootstrap admin key."""

    def __init__(self, *, slot: int, root: Path, admin_key: KeyPair) -> None:
        self.slot = slot
        self.root = root
        self.admin_key = admin_key
        self._servers: list[SshServer] = []
        self._next_blackhole = 250

    def address(self, n: int) -> str:
        """The loopback address of host part ``n`` in this fleet's range."""
        return f"127.0.{self.slot}.{n}"

    def servers(self, n: int = 5) -> list[SshServer]:
        """The first ``n`` servers, creating and starting any not yet there (all running)."""
        if n > MAX_SERVERS:
            pytest.fail(f"sshd fleet: at most {MAX_SERVERS} servers")
        while len(self._servers) < n:
            index = len(self._servers) + 1
            server = SshServer(
                index=index,
                slot=self.slot,
                root=self.root,
                host=self.address(index + 1),
                admin_key=self.admin_key,
            )
            self._servers.append(server)
            server.start()
        return self._servers[:n]

    def __getitem__(self, index: int) -> SshServer:
        return self.servers(index + 1)[index]

    def reset(self) -> None:
        """Reset every server started so far (see :meth:`SshServer.reset`)."""
        for server in self._servers:
            server.reset()

    def stop_all(self) -> None:
        """Stop every server (end of session)."""
        for server in self._servers:
            server.stop()

    def blackhole_address(self) -> str:
        """A fresh loopback address for a blackhole listener."""
        address = self.address(self._next_blackhole)
        self._next_blackhole -= 1
        if self._next_blackhole <= MAX_SERVERS + 1:
            self._next_blackhole = 250
        return address


def _require_environment() -> None:
    if not SSHD.exists() or not SSH_KEYGEN.exists():
        pytest.fail(f"sshd fleet: {SSHD} or {SSH_KEYGEN} not found: {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.fail(
            "sshd fleet: the real-SSH tests must run as root (they create local users and run "
            "sshd on 127.0.0.x); run them in the test container or with sudo"
        )


@pytest.fixture(scope="session")
def sshd_fleet_session() -> Iterator[SshFleet]:
    """The session's fleet of real sshd servers; all stopped when the session ends."""
    _require_environment()
    slot = _slot()
    BASE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Two runs at the same time on one slot would fight over addresses and users: refuse.
    lock: IO[str] = open(BASE_DIR / f"slot-{slot}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        pytest.fail(f"sshd fleet: another test run holds {BASE_DIR}/slot-{slot}.lock")
    root = BASE_DIR / f"slot-{slot}"
    root.mkdir(mode=0o700, exist_ok=True)
    _kill_leftovers(root)
    for old in root.iterdir():
        shutil.rmtree(old, ignore_errors=True)
    fleet = SshFleet(slot=slot, root=root, admin_key=generate_keypair("unityctl-test-admin"))
    try:
        yield fleet
    finally:
        fleet.stop_all()
        lock.close()


@pytest.fixture
def sshd_fleet(sshd_fleet_session: SshFleet) -> SshFleet:
    """The fleet, reset to its known state for this test."""
    sshd_fleet_session.reset()
    return sshd_fleet_session


@pytest.fixture
def sshd_servers(sshd_fleet: SshFleet) -> list[SshServer]:
    """Five running servers in their known state."""
    return sshd_fleet.servers(5)


@pytest.fixture(scope="session")
def sshd_admin_key(sshd_fleet_session: SshFleet) -> KeyPair:
    """The bootstrap admin key pair authorized on every server after reset."""
    return sshd_fleet_session.admin_key


@pytest.fixture
def ssh_keypair() -> Callable[[str], KeyPair]:
    """Factory of fresh Ed25519 key pairs: ``ssh_keypair("comment")``."""
    return generate_keypair


# --- the blackhole -----------------------------------------------------------------------------


class Blackhole:
    """A TCP listener that accepts connections and never sends a byte (an SSH server that hangs).

    ``host``/``port`` to connect to; ``accepted`` counts connections. Lives at most
    ``lifetime`` seconds, so a forgotten one cannot outlive its test run by much.
    """

    def __init__(self, host: str, lifetime: float = 120.0) -> None:
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, name="ssh-blackhole", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Blackhole({self.host}:{self.port})"

    def _serve(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            self._conns.append(conn)  # held open, silent, until close()
            self.accepted += 1
        self._close_sockets()

    def _close_sockets(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        self._sock.close()

    def close(self) -> None:
        """Stop accepting and drop every held connection."""
        self._stop.set()
        self._thread.join(timeout=5)

    def target(self, **overrides: Any) -> Target:
        """A Target pointing at the blackhole (a throwaway key; it never gets that far)."""
        from unityctl.core.ssh import Target

        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": "nobody",
            "password": "never-sent",
            "name": "blackhole",
            "connect_timeout": 2.0,
            "command_timeout": 5.0,
        }
        values.update(overrides)
        return Target(**values)


@pytest.fixture
def blackhole_server(sshd_fleet_session: SshFleet) -> Iterator[Blackhole]:
    """A silent TCP listener on a fresh 127.0.S.x address; closed after the test."""
    hole = Blackhole(sshd_fleet_session.blackhole_address())
    try:
        yield hole
    finally:
        hole.close()
