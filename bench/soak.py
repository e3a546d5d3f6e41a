#!/usr/bin/env python3
"""Soak benchmark: thousands of sessions in sequence against the demo gateway, RSS and PSS
sampled as they go. Not a test: it prints figures (and writes them as JSON with --json).

Each session alternates between SFTP (paramiko) and explicit FTPS (ftplib, resuming the
control session on data connections): log in, list a directory of 1,000 entries, upload
1 MiB, download it back (checked), log out. The question it answers: does the gateway give
memory back? After the first `--warm` sessions RSS may settle; at the end (and after an idle
pause) it must be within `--budget-mib` of that level.

The same binary is measured under several allocators, swapped in with LD_PRELOAD (Debian's
libjemalloc2 and libmimalloc2.0): `--allocators builtin,glibc,jemalloc,mimalloc`. `builtin` is
the binary as built; the others only mean something for a build whose global allocator is the
system one (`cargo build --release -p portcullis-gateway --no-default-features`), since
LD_PRELOAD cannot replace an allocator compiled into the binary.

    python3 bench/soak.py --sessions 2000
    python3 bench/soak.py --binary target/sysalloc/release/portcullis-gateway \\
        --allocators glibc,jemalloc,mimalloc --sessions 500
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paramiko

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))
from ftps import ReusingFTP_TLS, tls_context  # noqa: E402

PRELOAD = {
    "builtin": None,
    "glibc": None,
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "mimalloc": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
}


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss / 1024, pss / 1024


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port}")


def sftp_session(body: bytes, digest: str, i: int) -> None:
    t = paramiko.Transport(("127.0.0.1", 2222))
    t.connect()
    t.auth_password("demo", "demo")
    s = paramiko.SFTPClient.from_transport(t)
    s.get_channel().settimeout(60)
    assert len(s.listdir("/files/many")) == 1000
    s.putfo(io.BytesIO(body), f"/files/up/s{i % 7}.bin")
    back = io.BytesIO()
    s.getfo(f"/files/up/s{i % 7}.bin", back)
    assert hashlib.sha256(back.getvalue()).hexdigest() == digest
    t.close()


def ftps_session(ca: Path, body: bytes, digest: str, i: int) -> None:
    f = ReusingFTP_TLS(context=tls_context(ca), timeout=60)
    f.connect("localhost", 2121)
    f.auth()
    f.login("demo", "demo")
    f.prot_p()
    assert len(f.nlst("/files/many")) == 1000
    f.storbinary(f"STOR /files/up/f{i % 7}.bin", io.BytesIO(body))
    got = []
    f.retrbinary(f"RETR /files/up/f{i % 7}.bin", got.append)
    assert hashlib.sha256(b"".join(got)).hexdigest() == digest
    f.quit()


def run(binary: Path, allocator: str, sessions: int, warm: int, every: int) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"soak-{allocator}-"))
    env = dict(os.environ)
    if PRELOAD[allocator]:
        env["LD_PRELOAD"] = PRELOAD[allocator]
    (d / "files" / "many").mkdir(parents=True)
    (d / "files" / "up").mkdir()
    for n in range(1000):
        (d / "files" / "many" / f"entry-{n:04}.txt").write_bytes(b"x")
    proc = subprocess.Popen([str(binary), "demo", "--dir", str(d)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(d / "gateway.log", "wb"))
    try:
        wait_port(2222)
        wait_port(2121)
        ca = d / "state" / "tls" / "ca.pem"
        body = os.urandom(1 << 20)
        digest = hashlib.sha256(body).hexdigest()
        samples = [(0, *memory(proc.pid))]
        t0 = time.monotonic()
        for i in range(1, sessions + 1):
            if i % 2:
                sftp_session(body, digest, i)
            else:
                ftps_session(ca, body, digest, i)
            if i % every == 0 or i == warm:
                samples.append((i, *memory(proc.pid)))
                print(f"  {allocator:9} {i:5} sessions  RSS {samples[-1][1]:7.1f} MiB  "
                      f"PSS {samples[-1][2]:7.1f} MiB", flush=True)
        elapsed = time.monotonic() - t0
        time.sleep(10)  # idle: what an allocator gives back on its own
        idle = memory(proc.pid)
        at_warm = next(s for s in samples if s[0] == warm)
        return {
            "allocator": allocator,
            "sessions": sessions,
            "seconds": round(elapsed, 1),
            "rss_start_mib": round(samples[0][1], 1),
            "rss_after_warm_mib": round(at_warm[1], 1),
            "rss_end_mib": round(samples[-1][1], 1),
            "rss_idle_mib": round(idle[0], 1),
            "pss_idle_mib": round(idle[1], 1),
            "growth_after_warm_mib": round(idle[0] - at_warm[1], 1),
            "samples": samples,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "portcullis-gateway")
    ap.add_argument("--allocators", default="builtin")
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=100)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--budget-mib", type=float, default=20)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = []
    for alloc in a.allocators.split(","):
        print(f"== {alloc}: {a.sessions} sessions", flush=True)
        results.append(run(a.binary, alloc, a.sessions, min(a.warm, a.sessions), a.every))
    print()
    print(f"{'allocator':10} {'start':>7} {'@warm':>7} {'end':>7} {'idle':>7} {'PSS idle':>9} {'growth':>7}  verdict")
    for r in results:
        ok = r["growth_after_warm_mib"] <= a.budget_mib
        print(f"{r['allocator']:10} {r['rss_start_mib']:7.1f} {r['rss_after_warm_mib']:7.1f} "
              f"{r['rss_end_mib']:7.1f} {r['rss_idle_mib']:7.1f} {r['pss_idle_mib']:9.1f} "
              f"{r['growth_after_warm_mib']:7.1f}  {'ok' if ok else 'OVER BUDGET'}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
