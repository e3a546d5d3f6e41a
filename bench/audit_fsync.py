"""Audit durability benchmark (not a test): what `audit.fsync` costs. SFTP `stat` requests
through the gateway, each of which writes a `request` record that is durable before the reply,
with the audit file on this machine's disk (not tmpfs), for `none`, `batch` and `record`, in one
run. Reported as requests/s and as the ratio to `none`.

    python3 bench/audit_fsync.py [--requests 2000] [--sessions 1,8]

Needs a release build and the e2e requirements.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import sftp_rate  # noqa: E402
from harness import WORK, Gateway, Sshd, fresh_dir, hash_password  # noqa: E402


def rate(g: Gateway, sessions: int, requests: int) -> float:
    return sftp_rate.rate(g, sessions, requests, lambda _i, _k, sftp: sftp.stat("/files"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--sessions", default="1,8")
    a = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    sshd = Sshd(fresh_dir("bench-fsync-sshd"))
    data = sshd.root / "fsync"
    data.mkdir(exist_ok=True)
    pw = hash_password("pw")
    results = {}
    try:
        for mode in ["none", "batch", "record"]:
            d = fresh_dir(f"bench-fsync-{mode}")
            g = Gateway(d, {
                "endpoints": [sshd.endpoint("backend")],
                "users": [{"name": "u", "passwordHash": pw, "zones": ["loopback"], "roles": ["r"]}],
                "roles": [{"name": "r", "mounts": [{"path": "/files", "endpoint": "backend",
                                                    "backendPath": str(data), "verbs": ["list", "read"]}]}],
                "audit": {"stdout": False, "file": str(d / "audit.jsonl"), "fsync": mode},
                "limits": {"maxSessionsPerIp": 64},
            })
            try:
                for n in [int(x) for x in a.sessions.split(",")]:
                    rate(g, n, 200)  # warm-up
                    results[f"{mode}/{n}"] = round(rate(g, n, a.requests))
            finally:
                g.stop()
    finally:
        sshd.stop()
    for key in list(results):
        mode, n = key.split("/")
        results[f"{key} / none"] = round(results[key] / results[f"none/{n}"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
