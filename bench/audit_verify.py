"""Audit verify benchmark (not a test): how fast `portcullis-gateway audit verify` checks a
trail of N records, against `sha256sum` of the same bytes in the same run (the floor: reading
and hashing every byte once, which verify must do at least).

    python3 bench/audit_verify.py [--records 1000000] [--checkpoint-every 10000] [--runs 3]

The trail is written by this script, independently of the gateway: records shaped like the
gateway's transfer records (~400 bytes), chained with SHA-256 and signed with Ed25519
(`cryptography`) every `--checkpoint-every` records and at the end. It lives on tmpfs. Prints
records/s, MB/s, and the verify/sha256sum time ratio. Needs a release build.
"""

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "target" / "release" / "portcullis-gateway"


def write_trail(path: Path, records: int, every: int, key: Ed25519PrivateKey, key_id: str) -> int:
    prev, seq = "0" * 64, 0
    with path.open("wb", buffering=1 << 20) as f:

        def put(fields: dict) -> None:
            nonlocal prev, seq
            seq += 1
            line = (json.dumps({"v": 1, "seq": seq, "time": fields.pop("time"), "prev": prev, **fields},
                               separators=(",", ":")) + "\n").encode()
            f.write(line)
            prev = hashlib.sha256(line).hexdigest()

        def checkpoint() -> None:
            t = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            sig = key.sign(f"portcullis-audit-checkpoint/1\n{seq}\n{prev}\n{t}\n".encode()).hex()
            put({"time": t, "event": "checkpoint", "keyId": key_id, "signature": sig})

        for i in range(records):
            put({"time": "2026-12-04T01:00:00.000000Z", "event": "transferEnd", "session": f"2f42-{i // 10}",
                 "user": "alice", "path": f"/files/partner/in/file-{i:08}.bin", "endpoint": "backend",
                 "direction": "upload", "bytes": 1048576 + i, "durationMs": 12,
                 "sha256": hashlib.sha256(str(i).encode()).hexdigest(), "confidence": "High",
                 "detail": None, "channel": "SSH-2.0 chacha20-poly1305@openssh.com curve25519-sha256 ssh-ed25519"})
            if seq % every == 0:
                checkpoint()
        checkpoint()
    return seq


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {r.stdout}{r.stderr}")
    return elapsed, r.stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--checkpoint-every", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = hashlib.sha256(raw).hexdigest()[:16]
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        d = Path(d)
        (d / "trail").mkdir()
        trail = d / "trail" / "audit.jsonl"
        pub = d / "k.pub"
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
        total = write_trail(trail, a.records, a.checkpoint_every, key, key_id)
        size = trail.stat().st_size
        verify, floor, summary = [], [], ""
        for _ in range(a.runs):
            t, summary = timed([str(GATEWAY), "audit", "verify", "--key", str(pub), str(trail)])
            verify.append(t)
            floor.append(timed(["sha256sum", str(trail)])[0])
        v, s = statistics.median(verify), statistics.median(floor)
        print(summary)
        print(json.dumps({
            "records": total, "bytes": size, "runs": a.runs,
            "verify_seconds_median": round(v, 3), "sha256sum_seconds_median": round(s, 3),
            "verify_records_per_second": round(total / v), "verify_mb_per_second": round(size / v / 1e6, 1),
            "verify_over_sha256sum": round(v / s, 2),
        }, indent=2))


if __name__ == "__main__":
    main()
