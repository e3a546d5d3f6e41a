"""Helpers the benchmarks share."""

import os
import subprocess
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of `pid` (and of its reaped children), in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(f[11]) + int(f[12])  # utime, stime
    if children:
        ticks += int(f[13]) + int(f[14])  # cutime, cstime (reaped children)
    return ticks / TICK


def crypto_floor_cpu_s_per_gb() -> dict:
    """What a proxy that decrypts every byte once, encrypts it once and hashes it once must
    spend at least, from `openssl speed` on this machine (16 KiB blocks, one core): AES-128-GCM
    twice plus SHA-256, in CPU-seconds per GB."""
    def gb_per_s(alg: str) -> float:
        out = subprocess.run(["openssl", "speed", "-evp", alg, "-bytes", "16384", "-seconds", "2"],
                             capture_output=True, text=True, check=True).stdout
        # The last line: `<alg>  <kB/s for 16384-byte blocks>k`
        line = [ln for ln in out.splitlines() if ln.strip()][-1]
        return float(line.split()[-1].rstrip("k")) * 1000 / 1e9
    aes, sha = gb_per_s("aes-128-gcm"), gb_per_s("sha256")
    return {"aes_128_gcm_GB_per_s": round(aes, 2), "sha256_GB_per_s": round(sha, 2),
            "floor_cpu_s_per_GB": round(2 / aes + 1 / sha, 3)}
