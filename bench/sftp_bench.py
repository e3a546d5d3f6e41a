"""SFTP benchmark (not a test): the gateway against a direct connection to the same sshd, in
one run, on tmpfs so that the disk is not what is measured.

    python3 bench/sftp_bench.py [--size-mib 1024] [--runs 3] [--sessions 50] [--logins 50]
                                [--cipher aes128-gcm@openssh.com]

Prints MB/s per direction and the gateway/direct ratio, the gateway's CPU-seconds per GB moved
(per direction, and against the crypto floor measured on this machine), the bridged path (the
same sftp client through the gateway to a vsftpd FTPS endpoint), PSS per idle authenticated
session (gateway vs sshd), and server CPU per public-key login (gateway vs sshd). `--cipher`
pins the client's cipher on every path. Needs a release build (`cargo build --release`) and
the e2e requirements.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import paramiko  # noqa: E402
from benchlib import cpu_seconds, crypto_floor_cpu_s_per_gb  # noqa: E402
from ftps import Pki, Vsftpd  # noqa: E402
from harness import SSH_OPTS, Gateway, Sshd, keygen, make_file, pubkey, sha256_file  # noqa: E402


def pss_kib(pids) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def sshd_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "sshd"], capture_output=True, text=True).stdout.split()
    pids = []
    for p in map(int, out):
        # the master and everything under it
        q = p
        while q > 1:
            if q == master:
                pids.append(p)
                break
            try:
                q = int(Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except FileNotFoundError:
                break
    return pids


def sftp(port: int, user: str, key: Path, batch: str, cipher: str | None) -> float:
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write(batch)
    start = time.monotonic()
    pin = ["-c", cipher] if cipher else []
    subprocess.run(["sftp", "-P", str(port), *SSH_OPTS, *pin, "-o", "IdentitiesOnly=yes", "-i", str(key), "-b", f.name,
                    f"{user}@127.0.0.1"], check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=900)
    took = time.monotonic() - start
    os.unlink(f.name)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--logins", type=int, default=50)
    ap.add_argument("--cipher", help="pin the client's cipher (sftp -c) on every path")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="portcullis-bench-", dir="/dev/shm"))
    base.chmod(0o755)  # vsftpd's login user must reach its root below it
    sshd = Sshd(base / "sshd")
    vs = Vsftpd(base / "vsftpd", Pki(base / "pki"))
    user_key = keygen(base / "user_key")
    # Direct clients log in to sshd with the same key the gateway uses.
    direct_key = sshd.client_key
    g = Gateway(base / "gw", {
        "endpoints": [sshd.endpoint("backend"), vs.endpoint("vsftpd")],
        "users": [{"name": "bench", "publicKeys": [pubkey(user_key)], "zones": ["loopback"], "roles": ["rw"]}],
        "roles": [{"name": "rw", "mounts": [
            {"path": "/data", "endpoint": "backend", "backendPath": str(sshd.root),
             "verbs": ["list", "read", "write", "delete"]},
            {"path": "/vs", "endpoint": "vsftpd", "verbs": ["list", "read", "write", "delete"]}]}],
        "limits": {"maxSessionsPerIp": 500, "maxSessions": 1000},
    })
    report = {"size_mib": args.size_mib, "runs": args.runs, "cipher": args.cipher or "client default",
              "crypto_floor": crypto_floor_cpu_s_per_gb()}
    # Memory and login cost first, on a gateway that has not moved any data yet.
    # Idle authenticated sessions, each with an SFTP channel open.
    def idle_sessions(port, user, key_path, n):
        key = paramiko.Ed25519Key.from_private_key_file(str(key_path))
        out = []
        for _ in range(n):
            t = paramiko.Transport(("127.0.0.1", port))
            t.connect()
            t.auth_publickey(user, key)
            out.append((t, paramiko.SFTPClient.from_transport(t)))
        return out

    time.sleep(1)
    before = pss_kib([g.proc.pid])
    held = idle_sessions(g.port, "bench", user_key, args.sessions)
    time.sleep(1)
    gw_pss = (pss_kib([g.proc.pid]) - before) / args.sessions
    for t, _ in held:
        t.close()
    before = pss_kib(sshd_pids(sshd.proc.pid))
    held = idle_sessions(sshd.port, sshd.user, direct_key, args.sessions)
    time.sleep(1)
    sshd_pss = (pss_kib(sshd_pids(sshd.proc.pid)) - before) / args.sessions
    for t, _ in held:
        t.close()
    report["idle_session_PSS_MiB"] = {"gateway": round(gw_pss / 1024, 3), "sshd": round(sshd_pss / 1024, 3)}

    # Server CPU per public-key login (connect, kex, auth, close).
    def logins(port, user, key_path, n):
        key = paramiko.Ed25519Key.from_private_key_file(str(key_path))
        for _ in range(n):
            t = paramiko.Transport(("127.0.0.1", port))
            t.connect()
            t.auth_publickey(user, key)
            t.close()

    c0 = cpu_seconds(g.proc.pid)
    logins(g.port, "bench", user_key, args.logins)
    time.sleep(0.5)
    gw_login = (cpu_seconds(g.proc.pid) - c0) / args.logins
    c0 = cpu_seconds(sshd.proc.pid, children=True)
    logins(sshd.port, sshd.user, direct_key, args.logins)
    time.sleep(1)
    sshd_login = (cpu_seconds(sshd.proc.pid, children=True) - c0) / args.logins
    report["server_cpu_ms_per_pubkey_login"] = {"gateway": round(gw_login * 1000, 2), "sshd": round(sshd_login * 1000, 2)}

    size = args.size_mib * 1024 * 1024
    src = base / "src.bin"
    digest = make_file(src, size)
    mb = size / 1e6
    # The same gateway front end with a local-directory backend: how much of the gap is the
    # backend SSH leg rather than the front end.
    local_root = base / "local"
    local_root.mkdir()
    g_local = Gateway(base / "gw-local", {
        "endpoints": [{"name": "local", "type": "local", "root": str(local_root)}],
        "users": [{"name": "bench", "publicKeys": [pubkey(user_key)], "zones": ["loopback"], "roles": ["rw"]}],
        "roles": [{"name": "rw", "mounts": [{"path": "/data", "endpoint": "local",
                                              "verbs": ["list", "read", "write", "delete"]}]}],
    })
    paths = {
        "direct": (sshd.port, sshd.user, direct_key, str(sshd.root), sshd.root),
        "gateway": (g.port, "bench", user_key, "/data", sshd.root),
        "gateway_local_backend": (g_local.port, "bench", user_key, "/data", local_root),
        "gateway_to_ftps": (g.port, "bench", user_key, "/vs", vs.root),
    }
    results = {k: {"upload": [], "download": []} for k in paths}
    gw_cpu = {"upload": 0.0, "download": 0.0}
    for _ in range(args.runs):
        for who, (port, user, key, prefix, root) in paths.items():
            c0 = cpu_seconds(g.proc.pid)
            up = sftp(port, user, key, f"put {src} {prefix}/f.bin\n", args.cipher)
            c1 = cpu_seconds(g.proc.pid)
            down = sftp(port, user, key, f"get {prefix}/f.bin {base}/back.bin\n", args.cipher)
            if who == "gateway":
                gw_cpu["upload"] += c1 - c0
                gw_cpu["download"] += cpu_seconds(g.proc.pid) - c1
            if sha256_file(base / "back.bin") != digest:
                raise SystemExit(f"{who}: the downloaded file differs from the uploaded one")
            root.joinpath("f.bin").unlink()
            (base / "back.bin").unlink()
            results[who]["upload"].append(mb / up)
            results[who]["download"].append(mb / down)

    for d in ("upload", "download"):
        direct = statistics.median(results["direct"][d])
        gw = statistics.median(results["gateway"][d])
        local = statistics.median(results["gateway_local_backend"][d])
        report[d] = {
            "direct_MBps": [round(x) for x in results["direct"][d]],
            "gateway_MBps": [round(x) for x in results["gateway"][d]],
            "ratio_median": round(gw / direct, 2),
            "gateway_local_backend_MBps": [round(x) for x in results["gateway_local_backend"][d]],
            "local_backend_ratio_median": round(local / direct, 2),
            "gateway_to_ftps_MBps": [round(x) for x in results["gateway_to_ftps"][d]],
            "gateway_to_ftps_ratio_median": round(statistics.median(results["gateway_to_ftps"][d]) / direct, 2),
            "gateway_cpu_s_per_GB": round(gw_cpu[d] / (args.runs * size / 1e9), 2),
        }
    cpu = sum(gw_cpu.values()) / (2 * args.runs * size / 1e9)
    report["gateway_cpu_s_per_GB"] = round(cpu, 2)
    report["gateway_cpu_vs_floor"] = round(cpu / report["crypto_floor"]["floor_cpu_s_per_GB"], 2)

    g.stop()
    g_local.stop()
    sshd.stop()
    vs.stop()
    subprocess.run(["rm", "-rf", str(base)])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
