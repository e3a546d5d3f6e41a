"""A peer's test suite: rclone's integration suite (fstest/fstests, the release pinned in
e2e/rclone) through the gateway, SFTP and FTPS listeners × local, SFTP (sshd) and FTPS (vsftpd)
backends. The same suite runs directly against sshd and vsftpd in the same run as the baseline,
and the gateway must pass every test the baseline passes. The differences that remain are
listed in KNOWN below, each with its reason, and in docs/compatibility.md."""

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ftps import BACKEND_PASSWORD, BACKEND_USER, Pki, Vsftpd, free_port_range
from harness import Gateway, free_port, fresh_dir, keygen, pubkey

HERE = Path(__file__).resolve().parent
ALL_VERBS = ["list", "read", "write", "delete", "mkdir", "rmdir", "rename", "setattr"]
MOUNTS = ["local", "sftp", "vs"]

# Tests the baseline passes and the gateway does not, by (listener, mount), with the reason.
# A listed test that passes after all fails the run too, so that this list stays true.
AT_ROOT = ("runs only when the remote is the server's root ('gw:'); through the gateway the suite "
           "runs inside a mount ('gw:MOUNT'), so rclone skips it; it tests rclone's own URL handling")
FTP_CRLF = ("an FTP backend cannot carry CR or LF in a name (it would end the command line); the "
            "gateway refuses it as unsupported, with the reason")
KNOWN: dict[tuple[str, str], dict[str, str]] = {
    **{("sftp", m): {} for m in MOUNTS},
    **{("ftps", m): {"TestIntegration/FsRootCannotChangeHost": AT_ROOT} for m in MOUNTS},
}
KNOWN[("sftp", "vs")].update({
    "TestIntegration/FsMkdir/FsDirSetModTime":
        "FTP cannot set a directory's time (MFMT and vsftpd's MDTM set files only)",
    **{f"TestIntegration/FsMkdir/FsEncoding/{t}": FTP_CRLF
       for t in ["control_chars", "leading_CR", "leading_LF", "trailing_CR", "trailing_LF"]},
    "TestIntegration/FsMkdir/FsPutFiles/ObjectAbout":
        "FTP has no statvfs, so the gateway offers none for an FTP mount (and has no shell)",
})


def rclone_bin_dir() -> Path:
    """The cached test binaries (.ci/test builds them first; a warm cache costs nothing)."""
    out = subprocess.run(["bash", str(HERE / "rclone" / "build.sh")], check=True,
                         stdout=subprocess.PIPE).stdout.decode().strip()
    return Path(out)


def obscure(secret: str) -> str:
    """rclone's `obscure` (fs/config/obscure): AES-256-CTR under rclone's published fixed key,
    the IV in front, base64url. Config values for passwords must be in this form; it is not
    protection, and the test credentials are throwaway."""
    key = bytes.fromhex("9c935b48730a554d6bfd7c63c886a92bd390198eb8128afbf4de162b8b95f638")
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return base64.urlsafe_b64encode(iv + enc.update(secret.encode()) + enc.finalize()).decode().rstrip("=")


RESULT = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+)")


def fstests(binary: Path, remote: str, config: dict[str, str], work: Path,
            env: dict[str, str] | None = None) -> dict[str, str]:
    """Runs the suite's TestIntegration against `remote`, configured by environment variables
    (RCLONE_CONFIG_<NAME>_<KEY>), and returns each test's outcome by name."""
    work.mkdir(parents=True, exist_ok=True)
    # The suite looks for fstest/testserver/init.d to learn whether it should start a server
    # itself; an empty one says no.
    (work / "fstest" / "testserver" / "init.d").mkdir(parents=True, exist_ok=True)
    (work / "rclone.conf").write_text("")
    name = remote.split(":", 1)[0].upper()
    full_env = dict(os.environ, RCLONE_CONFIG=str(work / "rclone.conf"), **(env or {}))
    full_env.update({f"RCLONE_CONFIG_{name}_{k.upper()}": v for k, v in config.items()})
    r = subprocess.run([str(binary), "-test.run", "^TestIntegration$", "-test.v", "-test.timeout", "10m",
                        "-remote", remote], cwd=work, env=full_env, capture_output=True, timeout=900)
    log = r.stdout + r.stderr
    (work / "fstests.log").write_bytes(log)
    results = {}
    for line in log.decode(errors="replace").splitlines():
        if m := RESULT.match(line):
            results[m.group(2)] = m.group(1)
    assert results, f"no test results from {binary.name} against {remote}: {log[-3000:]!r}"
    return results


def leaves(results: dict[str, str]) -> dict[str, str]:
    """Only the innermost tests: a parent fails whenever a child does."""
    return {t: s for t, s in results.items() if not any(o.startswith(t + "/") for o in results)}


@pytest.fixture(scope="module")
def bins():
    return rclone_bin_dir()


@pytest.fixture(scope="module")
def pki():
    return Pki(fresh_dir("rclone-pki"))


@pytest.fixture(scope="module")
def vsftpd(pki):
    v = Vsftpd(fresh_dir("rclone-vsftpd"), pki)
    yield v
    v.stop()


def known_hosts(path: Path, port: int, host_key: Path) -> Path:
    kind, blob = pubkey(host_key).split()[:2]
    path.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    return path


def sftp_config(port: int, user: str, key: Path, host_key: Path, dir: Path) -> dict[str, str]:
    return {
        "type": "sftp", "host": "127.0.0.1", "port": str(port), "user": user,
        "key_file": str(key), "known_hosts_file": str(known_hosts(dir / "known_hosts", port, host_key)),
        # No remote shell: neither the gateway nor a ForceCommand internal-sftp sshd has one.
        "shell_type": "none",
    }


def ftp_config(port: int, user: str, password: str) -> dict[str, str]:
    return {"type": "ftp", "host": "localhost", "port": str(port), "user": user,
            "pass": obscure(password), "explicit_tls": "true"}


@pytest.fixture(scope="module")
def baseline(bins, sshd, vsftpd, pki):
    """The suite straight against the backends: OpenSSH's sshd and vsftpd."""
    d = fresh_dir("rclone-baseline")
    base = sshd.root / "rclone-baseline"
    base.mkdir(exist_ok=True)
    sftp = fstests(bins / "sftp.test", f"base:{base.relative_to(sshd.root)}",
                   sftp_config(sshd.port, sshd.user, sshd.client_key, sshd.host_key, d),
                   d / "sftp")
    ftp = fstests(bins / "ftp.test", "base:", ftp_config(vsftpd.port, BACKEND_USER, BACKEND_PASSWORD),
                  d / "ftp", env={"SSL_CERT_FILE": str(pki.ca)})
    for name, results in [("sftp", sftp), ("ftp", ftp)]:
        passed = sum(1 for s in leaves(results).values() if s == "PASS")
        print(f"baseline {name}: {passed} passed of {len(leaves(results))}")
        assert passed > 50, f"the {name} baseline passed only {passed} tests: see {d / name}"
    return {"sftp": sftp, "ftps": ftp}


@pytest.fixture(scope="module")
def gw(pki, vsftpd, sshd, passwords):
    d = fresh_dir("rclone-gateway")
    cert, key = pki.issue("rclone-gw", "localhost")
    client_key = keygen(d / "client_ed25519")
    local = d / "local"
    local.mkdir()
    sftp_data = sshd.root / "rclone-gateway"
    shutil.rmtree(sftp_data, ignore_errors=True)
    sftp_data.mkdir()
    g = Gateway(d, {}, start=False)
    g.ftps_port = free_port()
    g.client_key = client_key
    g.config.update({
        "listeners": [
            {"name": "sftp", "protocol": "sftp", "address": f"127.0.0.1:{g.port}", "zones": ["loopback"]},
            {"name": "ftps", "protocol": "ftps", "address": f"127.0.0.1:{g.ftps_port}",
             "zones": ["loopback"], "tls": {"keyRing": "gw"},
             "passivePorts": {"min": (p := free_port_range(32)), "max": p + 31}},
        ],
        "keyRings": [{"name": "gw", "certificateFile": str(cert), "privateKeyFile": str(key)}],
        "endpoints": [
            sshd.endpoint("sshd"),
            vsftpd.endpoint("vsftpd"),
            {"name": "local", "type": "local", "root": str(local)},
        ],
        "roles": [{"name": "all", "mounts": [
            {"path": "/sftp", "endpoint": "sshd", "backendPath": str(sftp_data), "verbs": ALL_VERBS},
            {"path": "/vs", "endpoint": "vsftpd", "verbs": ALL_VERBS},
            {"path": "/local", "endpoint": "local", "verbs": ALL_VERBS},
        ]}],
        "users": [{"name": "rc", "passwordHash": passwords["alice-pw"], "publicKeys": [pubkey(client_key)],
                   "zones": ["loopback"], "roles": ["all"]}],
        "limits": {"maxSessionsPerIp": 100, "maxUnauthenticatedPerIp": 64},
    })
    g.write_config(g.config)
    g.start()
    yield g
    g.stop()


@pytest.mark.parametrize("mount", MOUNTS)
@pytest.mark.parametrize("listener", ["sftp", "ftps"])
def test_rclone_fstests_through_the_gateway_match_the_baseline(bins, baseline, gw, pki, listener, mount):
    d = fresh_dir(f"rclone-{listener}-{mount}")
    if listener == "sftp":
        results = fstests(bins / "sftp.test", f"gw:{mount}",
                          sftp_config(gw.port, "rc", gw.client_key, gw.host_key, d), d)
    else:
        results = fstests(bins / "ftp.test", f"gw:{mount}", ftp_config(gw.ftps_port, "rc", "alice-pw"),
                          d, env={"SSL_CERT_FILE": str(pki.ca)})
    base = leaves(baseline[listener])
    got = leaves(results)
    known = KNOWN.get((listener, mount), {})
    worse = sorted(t for t, s in base.items() if s == "PASS" and got.get(t) != "PASS" and t not in known)
    stale = sorted(t for t in known if got.get(t) == "PASS")
    passed = sum(1 for s in got.values() if s == "PASS")
    print(f"{listener} -> {mount}: {passed} passed (baseline {sum(1 for s in base.values() if s == 'PASS')})")
    assert not worse, f"passed on the backend directly, not through the gateway ({d}/fstests.log): {worse}"
    assert not stale, f"listed in KNOWN but passes now; take them off the list: {stale}"
