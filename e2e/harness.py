"""Test harness: a real Debian sshd backend, the real gateway binary, and helpers to drive
real clients (OpenSSH sftp, paramiko) against them. Everything listens on loopback high
ports chosen at random."""

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "e2e" / ".work"
GATEWAY_BIN = Path(os.environ.get("PORTCULLIS_GATEWAY", ROOT / "target" / "release" / "portcullis-gateway"))
SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
]


# Every port this process has handed out, singly or in ranges. Ranges are not bound until a
# server uses them, so without this a vsftpd passive range and a gateway passive range could
# overlap, and a data connection meant for one would reach the other.
HANDED_OUT: set[int] = set()


# Every server a test started (sshd, vsftpd, gateway), so that a failing test can show and keep
# their logs (conftest.py) before a later module recreates the same directories.
SERVERS: list = []


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in HANDED_OUT:
            HANDED_OUT.add(port)
            return port


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def keygen(path: Path, kind: str = "ed25519") -> Path:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path


def pubkey(path: Path) -> str:
    return Path(str(path) + ".pub").read_text().strip()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_file(path: Path, size: int) -> str:
    """Writes `size` pseudo-random bytes and returns their SHA-256."""
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left > 0:
            chunk = hashlib.sha256(i.to_bytes(8, "big")).digest() + block
            chunk = chunk[: min(left, len(chunk))]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
    return h.hexdigest()


def totp(secret_b32: str, at: float | None = None) -> str:
    """RFC 6238 TOTP (SHA-1, 6 digits, 30 s)."""
    key = base64.b32decode(secret_b32)
    counter = int((time.time() if at is None else at) // 30)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    o = mac[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[o : o + 4])[0] & 0x7FFFFFFF) % 1_000_000)


def run_sftp(port: int, dir: Path, user: str, batch: str, key: Path | None = None,
             password: str | None = None, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs OpenSSH `sftp -b BATCHFILE` against 127.0.0.1:port. (sshpass needs stdin free, so
    the batch goes through a file in `dir`.)"""
    batch_file = dir / f"batch-{time.monotonic_ns()}"
    batch_file.write_text(batch)
    cmd = ["sftp", "-P", str(port), *SSH_OPTS, "-b", str(batch_file)]
    if key is not None:
        cmd = ["sftp", "-P", str(port), *SSH_OPTS, "-o", "IdentitiesOnly=yes", "-i", str(key),
               "-b", str(batch_file)]
    if password is not None:
        cmd = ["sshpass", "-p", password, "sftp", "-P", str(port), *SSH_OPTS,
               "-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-b", str(batch_file)]
    cmd.append(f"{user}@127.0.0.1")
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"sftp failed ({r.returncode}): {r.stdout.decode()} {r.stderr.decode()}")
    return r


class Sshd:
    """A real OpenSSH sshd serving internal-sftp, with its own host key and config."""

    def __init__(self, dir: Path, address: str = "127.0.0.1", netns: str | None = None):
        """On loopback; or on `address` inside the network namespace `netns`."""
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.root = dir / "data"
        self.root.mkdir(exist_ok=True)
        self.address = address
        self.port = free_port()
        self.host_key = keygen(dir / "host_ed25519")
        self.client_key = keygen(dir / "gateway_client_ed25519")
        (dir / "authorized_keys").write_text(pubkey(self.client_key) + "\n")
        self.config = dir / "sshd_config"
        self.config.write_text(
            f"""Port {self.port}
ListenAddress {address}
HostKey {self.host_key}
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxStartups 200
MaxSessions 200
Subsystem sftp internal-sftp
ForceCommand internal-sftp -d {self.root}
LogLevel ERROR
"""
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        SERVERS.append(self)
        self.proc = subprocess.Popen(
            [*(["ip", "netns", "exec", netns] if netns else []),
             "/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(dir / "sshd.log", "wb"),
        )
        wait_port(self.port, host=address)

    @property
    def user(self) -> str:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name

    def endpoint(self, name: str, **extra) -> dict:
        e = {
            "name": name,
            "type": "sftp",
            "addresses": [f"{self.address}:{self.port}"],
            "hostKeys": [pubkey(self.host_key)],
            "username": self.user,
            "privateKeyFile": str(self.client_key),
        }
        e.update(extra)
        return e

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Gateway:
    """The real gateway binary, run from a config file the test writes."""

    def __init__(self, dir: Path, config: dict, start: bool = True):
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin_port = free_port()
        self.host_key = keygen(dir / "gw_host_ed25519")
        self.audit_path = dir / "audit.jsonl"
        self.config_path = dir / "config.yaml"
        config.setdefault("listeners", [
            {"name": "sftp", "protocol": "sftp", "address": f"127.0.0.1:{self.port}", "zones": ["loopback"]}
        ])
        config.setdefault("zones", [{"name": "loopback", "cidrs": ["127.0.0.0/8"]}])
        config.setdefault("ssh", {"hostKeyFiles": [str(self.host_key)]})
        config.setdefault("audit", {"stdout": False, "file": str(self.audit_path)})
        config.setdefault("admin", {"address": f"127.0.0.1:{self.admin_port}"})
        # Suites fail logins from 127.0.0.1 on purpose, many times over, against one gateway;
        # the defender (on by default) would ban loopback halfway through. The defender's own
        # tests (test_hostile.py) run it with the product's defaults and explicit settings.
        config.setdefault("defender", {"enabled": False})
        self.config = config
        self.write_config(config)
        self.proc = None
        SERVERS.append(self)
        if start:
            self.start()

    def write_config(self, config: dict, path: Path | None = None) -> None:
        path = path or self.config_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.rename(path)

    def start(self, config_arg: Path | None = None, ready: str = "/readyz") -> None:
        """Starts the gateway and waits until `ready` answers 200 (`/healthz` for a gateway that
        is up but not ready)."""
        self.stderr = open(self.dir / "gateway.log", "ab")
        self.proc = subprocess.Popen(
            [str(GATEWAY_BIN), "run", "--config", str(config_arg or self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {(self.dir / 'gateway.log').read_text()[-2000:]}")
            try:
                if self.http(ready)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("gateway never became ready")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.audit_path.exists():
            return []
        out = []
        for line in complete_lines(self.audit_path.read_text()):
            if line.strip():
                rec = json.loads(line)
                if kind is None or rec["event"] == kind:
                    out.append(rec)
        return out

    def wait_event(self, kind: str, timeout: float = 10.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events(kind):
                if all(e.get(k) == v for k, v in match.items()):
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event matching {match}; got {self.events(kind)}")

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def sftp(self, user: str, batch: str, key: Path | None = None, password: str | None = None,
             check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_sftp(self.port, self.dir, user, batch, key, password, check, timeout)

    def paramiko(self, user: str, password: str | None = None, key: Path | None = None):
        """An authenticated paramiko SFTP client (and its transport)."""
        import paramiko

        t = paramiko.Transport(("127.0.0.1", self.port))
        t.connect()
        if key is not None:
            t.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(str(key)))
        if password is not None:
            t.auth_password(user, password)
        return paramiko.SFTPClient.from_transport(t), t

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0


def complete_lines(text: str) -> list[str]:
    """The lines of a file another process appends to, without a last line still being
    written (a record may reach the file in more than one write)."""
    lines = text.split("\n")
    return lines[:-1]


def hash_password(pw: str) -> str:
    r = subprocess.run([str(GATEWAY_BIN), "hash-password"], input=pw.encode(), capture_output=True, check=True)
    return r.stdout.decode().strip()


def fresh_dir(name: str) -> Path:
    d = WORK / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d
