"""Receipt benchmark (not a test): what signing every transfer costs. With a signing key the
gateway writes a checkpoint (an Ed25519 signature and one more record) after every
`transferEnd`, so each transfer has its receipt. Small SFTP uploads (open, one write, close)
through the gateway to the real sshd, with and without a signing key, `fsync: batch`, in one
run, alternating; reported as uploads/s and as the ratio signed / unsigned.

    python3 bench/audit_receipts.py [--uploads 1000] [--sessions 1,8] [--rounds 2]

Needs a release build and the e2e requirements.
"""

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import sftp_rate  # noqa: E402
from harness import GATEWAY_BIN, WORK, Gateway, Sshd, fresh_dir, hash_password  # noqa: E402


def rate(g: Gateway, sessions: int, uploads: int) -> float:
    def upload(i, k, sftp):
        sftp.putfo(io.BytesIO(b"r" * 1024), f"/files/s{i}-{k % 20}.bin", confirm=False)
    return sftp_rate.rate(g, sessions, uploads, upload)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uploads", type=int, default=1000)
    p.add_argument("--sessions", default="1,8")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    sshd = Sshd(fresh_dir("bench-receipts-sshd"))
    data = sshd.root / "receipts"
    data.mkdir(exist_ok=True)
    pw = hash_password("pw")
    results: dict[str, list[int]] = {}
    try:
        for r in range(a.rounds):
            for signed in [False, True]:
                d = fresh_dir(f"bench-receipts-{signed}")
                audit = {"stdout": False, "file": str(d / "audit.jsonl"), "checkpointSeconds": 3600}
                if signed:
                    subprocess.run([str(GATEWAY_BIN), "audit", "keygen", str(d / "k.pem")],
                                   check=True, capture_output=True)
                    audit["signingKeyFile"] = str(d / "k.pem")
                g = Gateway(d, {
                    "endpoints": [sshd.endpoint("backend")],
                    "users": [{"name": "u", "passwordHash": pw, "zones": ["loopback"], "roles": ["r"]}],
                    "roles": [{"name": "r", "mounts": [{"path": "/files", "endpoint": "backend",
                                                        "backendPath": str(data),
                                                        "verbs": ["list", "read", "write"]}]}],
                    "audit": audit,
                    "limits": {"maxSessionsPerIp": 64},
                })
                try:
                    for n in [int(x) for x in a.sessions.split(",")]:
                        rate(g, n, 100)  # warm-up
                        key = f"{'signed' if signed else 'unsigned'}/{n}"
                        results.setdefault(key, []).append(round(rate(g, n, a.uploads)))
                finally:
                    g.stop()
                if signed:
                    lines = (d / "audit.jsonl").read_text().splitlines()
                    ends = sum('"event":"transferEnd"' in line for line in lines)
                    cps = sum('"event":"checkpoint"' in line for line in lines)
                    assert cps >= ends, (cps, ends)
    finally:
        sshd.stop()
    out: dict[str, object] = dict(results)
    for n in a.sessions.split(","):
        s, u = results[f"signed/{n}"], results[f"unsigned/{n}"]
        out[f"signed/{n} / unsigned"] = [round(x / y, 2) for x, y in zip(s, u)]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
