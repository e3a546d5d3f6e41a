"""FTPS benchmark (not a test): curl uploads and downloads to one vsftpd (TLS 1.3,
require_ssl_reuse), measured in one run three ways:

  direct    curl -> vsftpd
  gateway   curl -> Portcullis (explicit FTPS) -> vsftpd
  mod_proxy curl -> ProFTPD mod_proxy (reverse proxy, TLS both legs) -> vsftpd

and, bridged, curl -> Portcullis -> an SFTP endpoint (Debian sshd), against the same direct
figure. Also prints the gateway's CPU-seconds per GB per direction (FTPS to FTPS), against the
crypto floor measured on this machine (`openssl speed`: AES-128-GCM twice plus SHA-256).

    python3 bench/ftps_bench.py [--size-mib 1024] [--runs 3] [--proftpd-root DIR]

Files live on tmpfs so that the disk is not what is measured. ProFTPD conflicts with vsftpd as
a Debian package, so it is unpacked into a private folder (`apt-get download` + `dpkg -x`,
done here when --proftpd-root is missing). Prints MB/s per path and direction, and the
gateway's ratios to direct and to mod_proxy.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from benchlib import cpu_seconds, crypto_floor_cpu_s_per_gb  # noqa: E402
from ftps import BACKEND_PASSWORD, BACKEND_USER, Pki, Vsftpd, free_port_range  # noqa: E402
from harness import Gateway, Sshd, free_port, make_file, sha256_file, wait_port  # noqa: E402

PROFTPD_PACKAGES = ["proftpd-core", "proftpd-mod-crypto", "proftpd-mod-proxy"]
# Libraries the unpacked ProFTPD needs that the machine may lack (no conflict with vsftpd).
PROFTPD_LIBS = ["libhiredis0.14", "libmemcached11", "libmemcachedutil2", "libpcre2-posix3"]


def unpack_proftpd(root: Path) -> Path:
    if (root / "usr/sbin/proftpd").exists():
        return root
    subprocess.run(["apt-get", "install", "-y", "-qq", *PROFTPD_LIBS], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True)
    root.mkdir(parents=True, exist_ok=True)  # dpkg -x does not make its parents
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["apt-get", "download", *PROFTPD_PACKAGES], cwd=d, check=True, capture_output=True)
        for deb in Path(d).glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


class ModProxy:
    """ProFTPD as a TLS reverse proxy in front of vsftpd: TLS required from clients, TLS to
    the backend, passive data on both legs."""

    def __init__(self, dir: Path, root: Path, pki: Pki, backend_port: int):
        dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        pasv = free_port_range(32)
        cert, key = pki.issue("proftpd", "localhost")
        (dir / "tables").mkdir(exist_ok=True)
        conf = dir / "proftpd.conf"
        conf.write_text(f"""ServerType standalone
ServerName "mod_proxy bench"
DefaultServer on
Port {self.port}
DefaultAddress 127.0.0.1
UseIPv6 off
User nobody
Group nogroup
PidFile {dir}/proftpd.pid
ScoreboardFile {dir}/scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
PassivePorts {pasv} {pasv + 31}
ModulePath {root}/usr/lib/proftpd
LoadModule mod_tls.c
LoadModule mod_proxy.c
<IfModule mod_tls.c>
  TLSEngine on
  TLSRequired on
  TLSProtocol TLSv1.2 TLSv1.3
  TLSECCertificateFile {cert}
  TLSECCertificateKeyFile {key}
  TLSLog {dir}/tls.log
</IfModule>
<IfModule mod_proxy.c>
  ProxyEngine on
  ProxyLog {dir}/proxy.log
  ProxyTables {dir}/tables
  ProxyRole reverse
  ProxyReverseConnectPolicy Shuffle
  ProxyReverseServers ftp://127.0.0.1:{backend_port}
  ProxyDataTransferPolicy PASV
  ProxyTLSEngine on
  ProxyTLSCACertificateFile {pki.ca}
  ProxyTLSVerifyServer on
  ProxyTLSProtocol TLSv1.2 TLSv1.3
</IfModule>
""")
        self.proc = subprocess.Popen([str(root / "usr/sbin/proftpd"), "-n", "-q", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=open(dir / "stderr.log", "wb"))
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def curl(args: list[str]) -> tuple[float, float] | None:
    """(seconds for the whole command, seconds of its data phase), or None when curl reports
    a failed transfer. The data phase runs from curl's `time_pretransfer` (logged in, the
    transfer command answered) to the end, so the final `226` is in it."""
    r = subprocess.run(["curl", "-sS", "--ssl-reqd", "--max-time", "600",
                        "-w", "%{time_pretransfer} %{time_total}", *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        return None
    pre, total = map(float, r.stdout.split())
    return total, total - pre


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--proftpd-root", type=Path, default=Path.home() / ".cache/portcullis/proftpd")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="portcullis-ftps-bench-", dir="/dev/shm"))
    work.chmod(0o755)  # vsftpd's login user must reach its root below it
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    proftpd_root = unpack_proftpd(args.proftpd_root)
    pki = Pki(work / "pki")
    vs = Vsftpd(work / "vsftpd", pki)
    try:
        proxy = ModProxy(work / "proftpd", proftpd_root, pki, vs.port)
    except Exception:
        vs.stop()
        raise
    sshd = Sshd(work / "sshd")
    gcert, gkey = pki.issue("gateway", "localhost")
    gw = Gateway(work / "gateway", {}, start=False)
    ftps_port = free_port()
    gw.config.update({
        "listeners": [{"name": "ftps", "protocol": "ftps", "address": f"127.0.0.1:{ftps_port}",
                       "zones": ["loopback"], "tls": {"keyRing": "gw"},
                       "passivePorts": {"min": (p := free_port_range(32)), "max": p + 31}}],
        "keyRings": [{"name": "gw", "certificateFile": str(gcert), "privateKeyFile": str(gkey)}],
        "endpoints": [vs.endpoint("vsftpd"), sshd.endpoint("sshd")],
        "roles": [{"name": "r", "mounts": [
            {"path": "/vs", "endpoint": "vsftpd", "verbs": ["list", "read", "write", "delete"]},
            {"path": "/ssh", "endpoint": "sshd", "backendPath": str(sshd.root),
             "verbs": ["list", "read", "write", "delete"]}]}],
        "users": [{"name": BACKEND_USER, "passwordHash": gw_hash(BACKEND_PASSWORD),
                   "zones": ["loopback"], "roles": ["r"]}],
    })
    gw.write_config(gw.config)
    try:
        gw.start()
    except Exception:
        proxy.stop()
        vs.stop()
        sshd.stop()
        raise

    size = args.size_mib << 20
    src = work / "src.bin"
    digest = make_file(src, size)
    paths = {
        "direct": (vs.port, "", vs.root),
        "gateway": (ftps_port, "/vs", vs.root),
        "mod_proxy": (proxy.port, "", vs.root),
        "gateway_to_sftp": (ftps_port, "/ssh", sshd.root),
    }
    results: dict[str, dict[str, list[float]]] = {k: {"upload": [], "download": []} for k in paths}
    data_phase: dict[str, dict[str, list[float]]] = {k: {"upload": [], "download": []} for k in paths}
    failures = {k: {"upload": 0, "download": 0} for k in paths}
    gw_cpu = {"upload": 0.0, "download": 0.0}
    floor = crypto_floor_cpu_s_per_gb()
    try:
        for run in range(args.runs):
            for name, (port, prefix, root) in paths.items():
                url = f"ftp://{BACKEND_USER}:{BACKEND_PASSWORD}@localhost:{port}{prefix}/bench-{name}.bin"
                c0 = cpu_seconds(gw.proc.pid)
                up = curl(["--cacert", str(pki.ca), "-T", str(src), url])
                if name == "gateway":
                    gw_cpu["upload"] += cpu_seconds(gw.proc.pid) - c0
                stored = root / f"bench-{name}.bin"
                up_mb_s = down_mb_s = None
                if up is None or not stored.exists() or sha256_file(stored) != digest:
                    # A failed or truncated upload counts as a failure, not as a speed.
                    failures[name]["upload"] += 1
                    print(f"run {run + 1} {name:9} upload FAILED "
                          f"({stored.stat().st_size if stored.exists() else 0} of {size} bytes stored)")
                    shutil.copy(src, stored)
                else:
                    up_mb_s = size / up[0] / 1e6
                    results[name]["upload"].append(up_mb_s)
                    data_phase[name]["upload"].append(size / up[1] / 1e6)
                dst = work / "dst.bin"
                c0 = cpu_seconds(gw.proc.pid)
                down = curl(["--cacert", str(pki.ca), "-o", str(dst), url])
                if name == "gateway":
                    gw_cpu["download"] += cpu_seconds(gw.proc.pid) - c0
                if down is None or sha256_file(dst) != digest:
                    failures[name]["download"] += 1
                    print(f"run {run + 1} {name:9} download FAILED")
                else:
                    down_mb_s = size / down[0] / 1e6
                    results[name]["download"].append(down_mb_s)
                    data_phase[name]["download"].append(size / down[1] / 1e6)
                dst.unlink(missing_ok=True)
                stored.unlink()
                print(f"run {run + 1} {name:9} upload {fmt(up_mb_s)}  download {fmt(down_mb_s)}",
                      flush=True)
    finally:
        gw.stop()
        proxy.stop()
        vs.stop()
        sshd.stop()
    def medians(r):
        return {k: {d: statistics.median(v) if v else float("nan") for d, v in dirs.items()}
                for k, dirs in r.items()}
    gb = args.runs * size / 1e9
    cpu = {d: round(c / gb, 2) for d, c in gw_cpu.items()}
    figures = {"size_mib": args.size_mib, "runs": args.runs, "failed_transfers": failures,
               "gateway_cpu_s_per_GB": cpu, "crypto_floor": floor}
    for label, key, r in [("whole command (login, listing, transfer)", "whole", results),
                          ("data phase (from curl's time_pretransfer to the end)", "data_phase", data_phase)]:
        med = medians(r)
        figures[key] = {"median_mb_s": med, "all_mb_s": r, "ratios": {}}
        print(f"\nmedian of {args.runs} runs, {args.size_mib} MiB, MB/s, {label}:")
        for d in ["download", "upload"]:
            g, direct, proxy_ = med["gateway"][d], med["direct"][d], med["mod_proxy"][d]
            bridged = med["gateway_to_sftp"][d]
            figures[key]["ratios"][d] = {"gateway_vs_direct": round(g / direct, 2),
                                         "gateway_vs_mod_proxy": round(g / proxy_, 2),
                                         "gateway_to_sftp_vs_direct": round(bridged / direct, 2)}
            print(f"  {d:8}  direct {direct:7.1f}  gateway {g:7.1f}  mod_proxy {proxy_:7.1f}  "
                  f"gateway/direct {g / direct:.2f}  gateway/mod_proxy {g / proxy_:.2f}  "
                  f"bridged to sftp {bridged:7.1f} ({bridged / direct:.2f}x direct)")
    print(f"\ngateway CPU-s per GB (FTPS to FTPS): download {cpu['download']:.2f}, upload {cpu['upload']:.2f}; "
          f"crypto floor {floor['floor_cpu_s_per_GB']:.2f} "
          f"(AES-128-GCM {floor['aes_128_gcm_GB_per_s']} GB/s, SHA-256 {floor['sha256_GB_per_s']} GB/s)")
    for name, f in failures.items():
        if f["upload"] or f["download"]:
            print(f"  {name}: {f['upload']} of {args.runs} uploads and {f['download']} of "
                  f"{args.runs} downloads failed or arrived corrupt")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def fmt(mb_s: float | None) -> str:
    return "   failed" if mb_s is None else f"{mb_s:7.1f} MB/s"


def gw_hash(pw: str) -> str:
    from harness import hash_password

    return hash_password(pw)


if __name__ == "__main__":
    main()
