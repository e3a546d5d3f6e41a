"""End to end: real OpenSSH sftp and paramiko clients, the real gateway binary, a real sshd
backend with its own host key, all on loopback."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from harness import GATEWAY_BIN, ROOT, Gateway, fresh_dir, keygen, make_file, pubkey, sha256_file, totp

ALL_VERBS = ["list", "read", "write", "delete", "mkdir", "rmdir", "rename", "setattr"]
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture
def gateways():
    started = []

    def make(name, config, **kw):
        g = Gateway(fresh_dir(name), config, **kw)
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


def backend_dir(sshd, name) -> Path:
    d = sshd.root / name
    if d.exists():
        subprocess.run(["rm", "-rf", str(d)], check=True)
    d.mkdir(parents=True)
    return d


def config(sshd, passwords, data: Path, **extra) -> dict:
    c = {
        "endpoints": [sshd.endpoint("backend")],
        "users": [
            {"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["rw"]},
            {"name": "reader", "passwordHash": passwords["bob-pw"], "zones": ["loopback"], "roles": ["ro"]},
        ],
        "roles": [
            {"name": "rw", "mounts": [{"path": "/files", "endpoint": "backend", "backendPath": str(data), "verbs": ALL_VERBS}]},
            {"name": "ro", "mounts": [{"path": "/files", "endpoint": "backend", "backendPath": str(data), "verbs": ["list", "read"]}]},
        ],
    }
    c.update(extra)
    return c


def test_round_trip_with_openssh_sftp(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "roundtrip")
    g = gateways("roundtrip", config(sshd, passwords, data))
    src = tmp_path / "src.bin"
    digest = make_file(src, 3 * 1024 * 1024 + 17)
    out = g.sftp("alice", f"""
put {src} /files/a.bin
ls -l /files
mkdir /files/dir
rename /files/a.bin /files/dir/b.bin
get /files/dir/b.bin {tmp_path}/back.bin
""", password="alice-pw")
    assert "a.bin" in out.stdout.decode()
    assert sha256_file(data / "dir" / "b.bin") == digest, "backend copy differs"
    assert sha256_file(tmp_path / "back.bin") == digest, "downloaded copy differs"
    g.sftp("alice", "rm /files/dir/b.bin\nrmdir /files/dir\n", password="alice-pw")
    assert list(data.iterdir()) == []

    up = g.wait_event("transferEnd", direction="upload", path="/files/a.bin")
    assert (up["sha256"], up["bytes"], up["confidence"]) == (digest, 3 * 1024 * 1024 + 17, "High")
    down = g.wait_event("transferEnd", direction="download", path="/files/dir/b.bin")
    assert (down["sha256"], down["confidence"]) == (digest, "High")
    ops = {e["op"] for e in g.events("request")}
    assert {"open", "close", "opendir", "readdir", "mkdir", "rename", "remove", "rmdir", "realpath"} <= ops
    g.wait_event("logonSuccess", user="alice", methods=["password"])
    g.wait_event("sessionEnd", user="alice")


def test_round_trip_with_paramiko(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "paramiko")
    g = gateways("paramiko", config(sshd, passwords, data))
    sftp, t = g.paramiko("alice", password="alice-pw")
    assert sftp.listdir("/") == ["files"]
    src = tmp_path / "p.bin"
    digest = make_file(src, 1024 * 1024 + 3)
    sftp.put(str(src), "/files/p.bin")
    sftp.mkdir("/files/d")
    sftp.rename("/files/p.bin", "/files/d/q.bin")
    assert sftp.stat("/files/d/q.bin").st_size == 1024 * 1024 + 3
    sftp.get("/files/d/q.bin", str(tmp_path / "q.bin"))
    assert sha256_file(tmp_path / "q.bin") == digest == sha256_file(data / "d" / "q.bin")
    sftp.chmod("/files/d/q.bin", 0o600)
    assert (data / "d" / "q.bin").stat().st_mode & 0o777 == 0o600
    sftp.remove("/files/d/q.bin")
    sftp.rmdir("/files/d")
    assert sftp.listdir("/files") == []
    t.close()
    assert g.wait_event("transferEnd", direction="download")["sha256"] == digest


def test_one_gib_through_the_gateway_in_bounded_memory(sshd, passwords, gateways, tmp_path, figure):
    data = backend_dir(sshd, "big")
    g = gateways("big", config(sshd, passwords, data))
    src = tmp_path / "big.bin"
    size = 1 << 30
    digest = make_file(src, size)
    g.sftp("alice", f"put {src} /files/big.bin\nget /files/big.bin {tmp_path}/big.back\n", password="alice-pw",
           timeout=600)
    assert sha256_file(data / "big.bin") == digest
    assert sha256_file(tmp_path / "big.back") == digest
    up = g.wait_event("transferEnd", direction="upload")
    down = g.wait_event("transferEnd", direction="download")
    assert up["sha256"] == down["sha256"] == digest
    assert up["confidence"] == down["confidence"] == "High"
    peak = g.peak_rss_kib()
    figure("gateway_peak_rss_mib_1gib_up_and_down", round(peak / 1024, 1))
    assert peak < 100 * 1024, f"gateway peak RSS {peak} KiB"


def test_sftp_transfer_records_name_the_channel_the_client_negotiated(sshd, passwords, gateways):
    """SFTP session and transfer records carry the SSH transport's algorithms (they were null),
    as the client itself negotiated them."""
    data = backend_dir(sshd, "channel")
    (data / "r.txt").write_text("read me")
    g = gateways("channel", config(sshd, passwords, data))
    sftp, t = g.paramiko("alice", password="alice-pw")
    try:
        assert sftp.open("/files/r.txt").read() == b"read me"
        cipher, kex = t.local_cipher, t.kex_engine.__class__.__name__
    finally:
        t.close()
    rec = g.wait_event("transferEnd", direction="download")
    channel = rec["channel"]
    assert channel and channel.startswith(f"SSH-2.0 {cipher} "), (channel, cipher, kex)
    assert channel.split()[-1] == "ssh-ed25519", channel
    assert g.wait_event("transferStart", direction="download")["channel"] == channel
    # The session's start names it too (it was absent from logon records).
    assert g.wait_event("sessionStart", user="alice")["channel"] == channel


def test_denied_write_is_refused_and_audited(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "denied")
    (data / "existing.txt").write_text("keep me")
    g = gateways("denied", config(sshd, passwords, data))
    src = tmp_path / "x.txt"
    src.write_text("nope")
    r = g.sftp("reader", f"put {src} /files/x.txt\n", password="bob-pw", check=False)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr.decode()
    assert not (data / "x.txt").exists()
    r = g.sftp("reader", "rm /files/existing.txt\n", password="bob-pw", check=False)
    assert r.returncode != 0 and (data / "existing.txt").read_text() == "keep me"
    d = g.wait_event("policyDenied", user="reader", op="write", path="/files/x.txt")
    assert d["reason"] == "no role grants write on mount /files"
    g.wait_event("policyDenied", user="reader", op="delete", path="/files/existing.txt")
    # Reading is allowed for the same user.
    g.sftp("reader", f"get /files/existing.txt {tmp_path}/e.txt\n", password="bob-pw")
    assert (tmp_path / "e.txt").read_text() == "keep me"


def test_wrong_password_and_unknown_user_are_audited(sshd, passwords, gateways):
    data = backend_dir(sshd, "logon")
    g = gateways("logon", config(sshd, passwords, data))
    for user, pw in [("alice", "Tr0ub4dor-guess"), ("mallory", "c0rrect-horse")]:
        t = paramiko.Transport(("127.0.0.1", g.port))
        t.connect()
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_password(user, pw)
        t.close()
    assert g.wait_event("logonFailure", user="alice")["reason"] == "wrong password"
    assert g.wait_event("logonFailure", user="mallory")["reason"] == "unknown user"
    assert all(e["method"] == "password" for e in g.events("logonFailure"))
    log = g.audit_path.read_text() + (g.dir / "gateway.log").read_text()
    assert "Tr0ub4dor" not in log and "c0rrect-horse" not in log, "a password reached a log"
    _, metrics = g.http("/metrics")
    assert 'portcullis_auth_failures_total{reason="wrong password"} 1' in metrics


def test_traversal_and_symlinks_stay_inside_the_mount(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "traverse")
    (data / "inside.txt").write_text("inside")
    os.symlink("/etc/passwd", data / "link-out")
    g = gateways("traverse", config(sshd, passwords, data))
    sftp, t = g.paramiko("alice", password="alice-pw")
    for p in ["/files/../../etc/passwd", "../../etc/passwd", "/files/../../../../etc/passwd", "/../files/../etc"]:
        with pytest.raises(IOError):
            sftp.stat(p)
        with pytest.raises(IOError):
            sftp.open(p).read()
    # `..` is resolved in the virtual tree: this lands back in the mount.
    assert sftp.open("/files/../files/./inside.txt").read() == b"inside"
    assert sftp.normalize("/files/a/../../../..") == "/"
    with pytest.raises(PermissionError):
        sftp.open("/files/link-out").read()
    with pytest.raises(IOError):
        sftp.open("/files/a\x00b").read()
    with sftp.open("/files/../../files/w.txt", "w") as f:
        f.write(b"w")
    t.close()
    assert (data / "w.txt").read_text() == "w"
    g.wait_event("policyDenied", path="/etc/passwd")


def test_peer_outside_the_zones_is_closed_before_the_banner(sshd, passwords, gateways):
    data = backend_dir(sshd, "zones")
    c = config(sshd, passwords, data, zones=[
        {"name": "loopback", "cidrs": ["127.0.0.0/8"]},
        {"name": "partner", "cidrs": ["127.0.0.2/32"]},
    ])
    g = gateways("zones", c, start=False)
    g.config["listeners"][0]["zones"] = ["partner"]
    g.write_config(g.config)
    g.start()
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        assert s.recv(100) == b"", "a refused peer must not see the banner"
    with socket.create_connection(("127.0.0.1", g.port), timeout=5, source_address=("127.0.0.2", 0)) as s:
        assert s.recv(100).startswith(b"SSH-2.0-Portcullis")
    e = g.wait_event("connectionRefused")
    assert e["peer"].startswith("127.0.0.1:") and e["reason"] == "peer outside every admitted zone"


def test_mfa_combinations(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "mfa")
    key = keygen(tmp_path / "user_key")
    secret_file = tmp_path / "totp"
    secret_file.write_text(TOTP_SECRET)
    c = config(sshd, passwords, data)
    c["users"] = [
        {"name": "kp", "passwordHash": passwords["carol-pw"], "publicKeys": [pubkey(key)],
         "authMethods": ["publickey,password"], "zones": ["loopback"], "roles": ["rw"]},
        {"name": "kt", "publicKeys": [pubkey(key)], "totpSecretFile": str(secret_file),
         "authMethods": ["publickey,keyboard-interactive"], "zones": ["loopback"], "roles": ["rw"]},
        # A TOTP secret and no authMethods: the key alone used to log in (the secret was
        # accepted and ignored); now the code is a required second step.
        {"name": "kd", "publicKeys": [pubkey(key)], "totpSecretFile": str(secret_file),
         "zones": ["loopback"], "roles": ["rw"]},
    ]
    g = gateways("mfa", c)
    batch = tmp_path / "batch"
    batch.write_text("ls /\n")

    def openssh(user, secret, prompt=None, methods="publickey,password,keyboard-interactive"):
        """OpenSSH sftp with the user's key, answering the password or code prompt via sshpass."""
        cmd = ["sshpass", "-p", secret] + (["-P", prompt] if prompt else []) + [
            "sftp", "-P", str(g.port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=no", "-o", "IdentitiesOnly=yes", "-o", f"PreferredAuthentications={methods}",
            "-i", str(key), "-b", str(batch), f"{user}@127.0.0.1"]
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)

    # publickey then password.
    r = openssh("kp", "carol-pw")
    assert r.returncode == 0, r.stderr
    assert g.wait_event("logonSuccess", user="kp")["methods"] == ["publickey", "password"]
    # The key alone, or the password alone, is not enough; nor the key with a wrong password.
    assert openssh("kp", "x", methods="publickey").returncode != 0
    assert openssh("kp", "nope").returncode != 0
    t = paramiko.Transport(("127.0.0.1", g.port))
    t.connect()
    with pytest.raises(paramiko.AuthenticationException):
        t.auth_password("kp", "carol-pw")
    t.close()
    assert len(g.events("logonSuccess")) == 1
    assert g.wait_event("logonFailure", user="kp", method="password")["reason"] in (
        "wrong password", "method not allowed at this step")

    # publickey then a TOTP code (keyboard-interactive); the same code twice is refused.
    while int(time.time()) % 30 > 22:  # keep both logins inside one TOTP step
        time.sleep(1)
    code = totp(TOTP_SECRET)
    r = openssh("kt", code, prompt="Verification code", methods="publickey,keyboard-interactive")
    assert r.returncode == 0, r.stderr
    assert g.wait_event("logonSuccess", user="kt")["methods"] == ["publickey", "keyboard-interactive"]
    r = openssh("kt", code, prompt="Verification code", methods="publickey,keyboard-interactive")
    assert r.returncode != 0
    assert g.wait_event("logonFailure", user="kt")["reason"] == "verification code already used"
    assert openssh("kt", "000000", prompt="Verification code", methods="keyboard-interactive").returncode != 0

    assert openssh("kd", "x", methods="publickey").returncode != 0
    assert not g.events("logonSuccess") or all(e["user"] != "kd" for e in g.events("logonSuccess"))
    while int(time.time()) % 30 > 22:
        time.sleep(1)
    r = openssh("kd", totp(TOTP_SECRET), prompt="Verification code", methods="publickey,keyboard-interactive")
    assert r.returncode == 0, r.stderr
    assert g.wait_event("logonSuccess", user="kd")["methods"] == ["publickey", "keyboard-interactive"]


def test_backend_host_key_mismatch_is_refused(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "hostkey")
    impostor = keygen(tmp_path / "impostor")
    c = config(sshd, passwords, data)
    c["endpoints"] = [sshd.endpoint("backend", hostKeys=[pubkey(impostor)])]
    g = gateways("hostkey", c)
    sftp, t = g.paramiko("alice", password="alice-pw")
    with pytest.raises(IOError):
        sftp.listdir("/files")
    t.close()
    e = g.wait_event("backendHostKeyRejected", endpoint="backend")
    real_fp = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key) + ".pub"], capture_output=True, text=True).stdout.split()[1]
    assert real_fp in e["presented"], e


def test_backend_failover_to_the_next_address(sshd, passwords, gateways):
    data = backend_dir(sshd, "failover")
    (data / "f.txt").write_text("f")
    c = config(sshd, passwords, data)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    dead_addr = f"127.0.0.1:{dead.getsockname()[1]}"
    c["endpoints"] = [
        sshd.endpoint("backend", addresses=[dead_addr, f"127.0.0.1:{sshd.port}"]),
        sshd.endpoint("down", addresses=[dead_addr], connectTimeoutSeconds=2),
    ]
    c["roles"][0]["mounts"].append({"path": "/down", "endpoint": "down", "verbs": ["list", "read", "write"]})
    g = gateways("failover", c)
    sftp, t = g.paramiko("alice", password="alice-pw")
    assert sftp.listdir("/files") == ["f.txt"]
    # When every address is down: a clear error, the session goes on, and it is audited.
    with pytest.raises(IOError, match="unavailable"):
        sftp.listdir("/down")
    assert sftp.listdir("/files") == ["f.txt"]
    t.close()
    dead.close()
    e = g.wait_event("backendError", endpoint="down")
    assert dead_addr in e["detail"] and "refused" in e["detail"].lower(), e
    # The backend leg is on record: the second address answered, with the pinned host key.
    leg = g.wait_event("backendConnected", endpoint="backend")
    assert leg["attempt"] == 2 and leg["address"] == f"127.0.0.1:{sshd.port}", leg
    assert leg["protocol"] == "sftp" and leg["hostKey"].startswith("ssh-ed25519 SHA256:"), leg
    # The algorithms of that leg: the gateway's preferred AES-GCM, which sshd offers.
    assert leg["channel"].startswith("SSH-2.0 aes128-gcm@openssh.com ") and leg["channel"].endswith(" ssh-ed25519"), leg
    start = g.wait_event("sessionStart")
    assert leg["session"] == start["session"], (leg, start)


def test_hot_reload_adds_a_user_and_refuses_a_bad_config(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "reload")
    (data / "r.txt").write_text("r")
    d = fresh_dir("reload-secret")
    # Laid out as a kubelet lays out a Secret volume: config.yaml -> ..data/config.yaml, and
    # ..data is a symlink that is swapped atomically on update.
    c = config(sshd, passwords, data)
    c["users"] = [u for u in c["users"] if u["name"] == "alice"]
    g = gateways("reload", c, start=False)

    def publish(cfg, version):
        v = d / f"..v{version}"
        v.mkdir()
        g.write_config(cfg, v / "config.yaml")
        tmp = d / "..data_tmp"
        os.symlink(v.name, tmp)
        os.rename(tmp, d / "..data")

    publish(g.config, 1)
    os.symlink("..data/config.yaml", d / "config.yaml")
    g.start(config_arg=d)

    live, lt = g.paramiko("alice", password="alice-pw")
    assert live.listdir("/files") == ["r.txt"]
    t = paramiko.Transport(("127.0.0.1", g.port))
    t.connect()
    with pytest.raises(paramiko.AuthenticationException):
        t.auth_password("bob", "bob-pw")
    t.close()

    c2 = dict(g.config)
    c2["users"] = c2["users"] + [{"name": "bob", "passwordHash": passwords["bob-pw"], "zones": ["loopback"], "roles": ["ro"]}]
    publish(c2, 2)
    reloaded = g.wait_event("configReloaded")
    bob, bt = g.paramiko("bob", password="bob-pw")
    assert bob.listdir("/files") == ["r.txt"]
    assert live.listdir("/files") == ["r.txt"], "the live session must survive the reload"

    bad = dict(c2)
    bad["roles"] = [{"name": "rw", "mounts": [{"path": "/files", "endpoint": "mainframe", "verbs": ["read"]}]}, c2["roles"][1]]
    publish(bad, 3)
    rejected = g.wait_event("configRejected")
    assert rejected["keptHash"] == reloaded["configHash"]
    assert any("names endpoint mainframe, which does not exist" in e for e in rejected["errors"]), rejected
    assert live.listdir("/files") == ["r.txt"]
    bob2, bt2 = g.paramiko("bob", password="bob-pw")
    assert bob2.listdir("/files") == ["r.txt"], "the old config stays in force"
    for tr in (lt, bt, bt2):
        tr.close()
    _, metrics = g.http("/metrics")
    assert 'portcullis_config_reloads_total{result="rejected"} 1' in metrics
    # The admin port says which config is served and which was refused (the operator reads it).
    served = json.loads(g.http("/config")[1])
    assert served["configHash"] == reloaded["configHash"], served
    assert served["refused"]["configHash"] not in (None, reloaded["configHash"]), served
    assert served["refused"]["errors"] == rejected["errors"], served
    # Back to the config in force: nothing is refused any more.
    publish(c2, 4)

    deadline = time.monotonic() + 20
    while (served := json.loads(g.http("/config")[1]))["refused"] is not None:
        assert time.monotonic() < deadline, f"the refusal did not clear: {served}"
        time.sleep(0.2)
    assert served["configHash"] == reloaded["configHash"], served


def test_malformed_packet_ends_only_that_session(sshd, passwords, gateways):
    data = backend_dir(sshd, "malformed")
    g = gateways("malformed", config(sshd, passwords, data))
    # A bare transport: the connection's one session channel is ours to drive by hand.
    t = paramiko.Transport(("127.0.0.1", g.port))
    t.connect(username="alice", password="alice-pw")
    ch = t.open_session()
    ch.invoke_subsystem("sftp")
    ch.sendall(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")  # INIT v3
    assert ch.recv(4)  # VERSION reply
    ch.recv(1024)
    ch.sendall(b"\xff\xff\xff\xf0" + b"A" * 64)  # absurd length
    ch.settimeout(10)
    assert ch.recv(1024) == b"", "the session must close"
    e = g.wait_event("protocolError", user="alice")
    assert "exceeds the limit" in e["detail"]
    t.close()
    # A well-framed packet of garbage is also handled without a panic, and others go on.
    t2 = paramiko.Transport(("127.0.0.1", g.port))
    t2.connect(username="alice", password="alice-pw")
    ch = t2.open_session()
    ch.invoke_subsystem("sftp")
    ch.sendall(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")
    ch.recv(1024)
    ch.sendall(b"\x00\x00\x00\x03\x03\x00\x00")  # OPEN truncated inside its id
    ch.settimeout(10)
    assert ch.recv(1024) == b""
    t2.close()
    sftp, t3 = g.paramiko("alice", password="alice-pw")
    assert sftp.listdir("/") == ["files"]
    t3.close()
    assert g.proc.poll() is None


def test_limits_per_ip_grace_and_auth_attempts(sshd, passwords, gateways):
    data = backend_dir(sshd, "limits")
    c = config(sshd, passwords, data, limits={"maxSessionsPerIp": 2, "loginGraceSeconds": 2, "maxAuthAttempts": 2})
    g = gateways("limits", c)
    a = g.paramiko("alice", password="alice-pw")
    b = g.paramiko("alice", password="alice-pw")
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        assert s.recv(100) == b""
    assert g.wait_event("connectionRefused")["reason"] == "per-IP session limit reached"
    # Another source address still gets in.
    with socket.create_connection(("127.0.0.1", g.port), timeout=5, source_address=("127.0.0.3", 0)) as s:
        assert s.recv(100).startswith(b"SSH-2.0-")
    for _, t in (a, b):
        t.close()
    time.sleep(0.5)
    # Login grace: a client that never authenticates is cut off.
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        assert s.recv(100).startswith(b"SSH-2.0-")
        s.sendall(b"SSH-2.0-idle\r\n")
        start = time.monotonic()
        s.settimeout(10)
        while s.recv(4096):
            pass
        assert time.monotonic() - start < 6
    # Auth attempts: the connection closes after the limit. (paramiko reports the disconnect
    # as one more AuthenticationException, so count what the gateway evaluated: its audit.)
    t = paramiko.Transport(("127.0.0.1", g.port))
    t.connect()
    port = t.sock.getsockname()[1]
    for _ in range(4):
        try:
            t.auth_password("alice", "wrong")
        except paramiko.AuthenticationException:
            pass
        except (paramiko.SSHException, EOFError, OSError):
            break
        if not t.is_active():
            break
    time.sleep(0.5)
    assert not t.is_active()
    t.close()
    tried = [e for e in g.events("logonFailure") if e["peer"] == f"127.0.0.1:{port}"]
    assert len(tried) == 2, tried


def test_sigterm_lets_a_running_transfer_finish(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "sigterm")
    digest = make_file(data / "big.bin", 64 * 1024 * 1024)
    g = gateways("sigterm", config(sshd, passwords, data, shutdownGraceSeconds=30))
    sftp, t = g.paramiko("alice", password="alice-pw")
    idle, it = g.paramiko("reader", password="bob-pw")
    f = sftp.open("/files/big.bin", "rb")
    first = f.read(1024 * 1024)
    g.proc.send_signal(signal.SIGTERM)
    g.wait_event("shutdownStarted")
    # No new connections once draining.
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", g.port), timeout=2)
    rest = b"".join(iter(lambda: f.read(1 << 20), b""))
    f.close()
    import hashlib
    assert hashlib.sha256(first + rest).hexdigest() == digest
    t.close()
    it.close()
    assert g.proc.wait(30) == 0
    end = g.wait_event("transferEnd", direction="download")
    assert end["confidence"] == "High" and end["sha256"] == digest
    kinds = [e["event"] for e in g.events()]
    assert kinds.index("shutdownStarted") < kinds.index("transferEnd") < kinds.index("shutdownComplete")


def test_admin_endpoints(sshd, passwords, gateways):
    data = backend_dir(sshd, "admin")
    g = gateways("admin", config(sshd, passwords, data))
    assert g.http("/healthz") == (200, "ok\n")
    assert g.http("/readyz")[0] == 200
    sftp, t = g.paramiko("alice", password="alice-pw")
    sftp.listdir("/files")
    _, m = g.http("/metrics")
    assert 'portcullis_sessions{protocol="sftp"} 1' in m
    assert 'portcullis_operations_total{op="opendir",result="ok"}' in m
    t.close()
    assert g.http("/nope")[0] == 404


def test_check_reports_every_error_with_its_path(tmp_path):
    from harness import GATEWAY_BIN

    bad = tmp_path / "bad.yaml"
    bad.write_text("""
listeners: [{name: s, protocol: sftp, address: "127.0.0.1:99999", zones: [nowhere]}]
users: [{name: u, zones: [], roles: [ghost]}]
""")
    r = subprocess.run([str(GATEWAY_BIN), "check", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    for path in ["listeners[0].address", "listeners[0].zones[0]", "users[0].zones", "users[0].roles[0]", "users[0]:"]:
        assert path in r.stderr, r.stderr
    assert "5 error(s)" in r.stderr


def test_demo_as_the_readme_says(tmp_path):
    """Starts the demo with the README's run command and uses it with OpenSSH sftp."""
    readme = (ROOT / "README.md").read_text()
    cmd = readme.split("<!-- run -->")[1].split("```")[1].strip().splitlines()[-1]
    assert "demo" in cmd
    env = dict(os.environ)
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 900  # the README command may build first
        files = None
        banner = b""
        while time.monotonic() < deadline and files is None:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise AssertionError("demo exited")
            banner += line
            if b"files (mounted at /files):" in line:
                files = Path(line.decode().split(":", 1)[1].strip())
        assert files is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", 2222), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        src = tmp_path / "demo.txt"
        src.write_text("hello from the README")
        batch = tmp_path / "batch"
        batch.write_text(f"put {src} /files/demo.txt\nget /files/demo.txt {tmp_path}/back.txt\nls /\n")
        r = subprocess.run(["sshpass", "-p", "demo", "sftp", "-P", "2222", "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=no", "-b", str(batch), "demo@127.0.0.1"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert (files / "demo.txt").read_text() == "hello from the README"
        assert (tmp_path / "back.txt").read_text() == "hello from the README"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    audit = proc.stdout.read().decode().splitlines()
    events = [json.loads(line)["event"] for line in audit if line.startswith("{")]
    assert "daemonStart" in events and "transferEnd" in events and "sessionEnd" in events
    # The demo's trail on disk is chained and signed; after a clean stop it verifies whole,
    # with the public key the demo wrote beside it.
    demo_dir = files.parent
    assert b"audit verify --key" in banner + proc.stderr.read()
    r = subprocess.run([str(GATEWAY_BIN), "audit", "verify", "--key", str(demo_dir / "audit-signing.pub"),
                        str(demo_dir / "audit")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: ") and "signatures checked" in r.stdout, r.stdout


def test_user_zones_disabled_and_expired_accounts_are_refused(sshd, passwords, gateways):
    data = backend_dir(sshd, "accounts")
    c = config(sshd, passwords, data, zones=[
        {"name": "loopback", "cidrs": ["127.0.0.0/8"]},
        {"name": "partner", "cidrs": ["127.0.0.2/32"]},
    ])
    pw = passwords["alice-pw"]
    c["users"] = [
        {"name": "partner", "passwordHash": pw, "zones": ["partner"], "roles": ["rw"]},
        {"name": "gone", "passwordHash": pw, "zones": ["loopback"], "roles": ["rw"], "disabled": True},
        {"name": "old", "passwordHash": pw, "zones": ["loopback"], "roles": ["rw"], "expiresAt": "2020-01-01T00:00:00Z"},
    ]
    g = gateways("accounts", c)

    def login(user, source="127.0.0.1"):
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=10, source_address=(source, 0))
        t = paramiko.Transport(sock)
        t.connect()
        try:
            t.auth_password(user, "alice-pw")
            return True
        except paramiko.AuthenticationException:
            return False
        finally:
            t.close()

    assert not login("partner")
    assert login("partner", source="127.0.0.2")
    assert not login("gone")
    assert not login("old")
    assert g.wait_event("logonFailure", user="partner")["reason"] == "source address outside the user's zones"
    assert g.wait_event("logonFailure", user="gone")["reason"] == "account disabled"
    assert g.wait_event("logonFailure", user="old")["reason"] == "account expired"


def test_weak_algorithms_are_not_offered(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "algos")
    g = gateways("algos", config(sshd, passwords, data))
    # (A MAC only matters with a non-AEAD cipher, hence the CTR cipher next to hmac-sha1.)
    for opts in [["Ciphers=aes128-cbc"], ["Ciphers=aes128-ctr", "MACs=hmac-sha1"],
                 ["KexAlgorithms=diffie-hellman-group14-sha1"], ["HostKeyAlgorithms=ssh-rsa"]]:
        opt = " ".join(opts)
        r = subprocess.run(["ssh", "-p", str(g.port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "BatchMode=yes", *[x for o in opts for x in ("-o", o)], "alice@127.0.0.1", "true"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "no matching" in r.stderr, (opt, r.stderr)
    # A config that asks for them is refused.
    bad = tmp_path / "weak.yaml"
    c = dict(g.config)
    c["ssh"] = {"hostKeyFiles": [str(g.host_key)], "algorithms": {"ciphers": ["aes128-cbc"], "macs": ["hmac-sha1"]}}
    bad.write_text(__import__("json").dumps(c))
    from harness import GATEWAY_BIN
    r = subprocess.run([str(GATEWAY_BIN), "check", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "ssh.algorithms.ciphers[0]: aes128-cbc is weak and refused" in r.stderr
    assert "ssh.algorithms.macs[0]: hmac-sha1 is weak and refused" in r.stderr


def test_idle_sessions_time_out(sshd, passwords, gateways):
    data = backend_dir(sshd, "idle")
    g = gateways("idle", config(sshd, passwords, data, limits={"idleTimeoutSeconds": 2}))
    sftp, t = g.paramiko("alice", password="alice-pw")
    sftp.listdir("/files")
    deadline = time.monotonic() + 10
    while t.is_active() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not t.is_active(), "an idle session must be closed"
    g.wait_event("sessionEnd", user="alice")


def kill_backend_connections(sshd) -> None:
    """Cuts the gateway's backend connections: kills the sshd processes serving them."""
    children = subprocess.run(["pgrep", "-P", str(sshd.proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "the gateway should hold a backend connection"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)


def test_backend_failure_mid_upload_is_reported_and_the_next_operation_reconnects(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "dropped")
    g = gateways("dropped", config(sshd, passwords, data))
    sftp, t = g.paramiko("alice", password="alice-pw")
    f = sftp.open("/files/partial.bin", "wb")
    f.write(os.urandom(1 << 20))
    f.flush()
    kill_backend_connections(sshd)
    start = time.monotonic()
    with pytest.raises(IOError):
        f.write(os.urandom(1 << 20))
        f.flush()
    try:
        f.close()  # paramiko may keep the earlier error to itself here
    except IOError:
        pass
    assert time.monotonic() - start < 20, "a dead backend must fail fast, not at a timeout"
    end = g.wait_event("transferEnd", path="/files/partial.bin")
    # A failed write abandons the upload at its close, whatever the close would say.
    assert end["confidence"] == "NoEOF", end
    assert "a write failed" in end["detail"], end
    # Nothing that looks complete is left: the upload went to a temporary name, removed over a
    # new backend connection.
    assert "partial upload was removed" in end["detail"], end
    assert sorted(p.name for p in data.iterdir()) == []
    # The session goes on: the next operation makes a new backend connection.
    sftp.put(__file__, "/files/after.py")
    assert (data / "after.py").read_bytes() == Path(__file__).read_bytes()
    t.close()


def test_backend_failure_mid_download_is_an_error_not_a_short_file(sshd, passwords, gateways, tmp_path):
    data = backend_dir(sshd, "dropped-down")
    g = gateways("dropped-down", config(sshd, passwords, data))
    make_file(data / "big.bin", 64 * 1024 * 1024)
    sftp, t = g.paramiko("alice", password="alice-pw")
    f = sftp.open("/files/big.bin", "rb")
    assert len(f.read(1 << 20)) == 1 << 20
    kill_backend_connections(sshd)
    start = time.monotonic()
    with pytest.raises(IOError):
        while f.read(1 << 20):
            pass
    assert time.monotonic() - start < 20, "a dead backend must fail fast, not at a timeout"
    try:
        f.close()
    except IOError:
        pass
    end = g.wait_event("transferEnd", path="/files/big.bin")
    assert end["confidence"] in ("NoEOF", "Low"), end
    assert end["bytes"] < 64 * 1024 * 1024
    t.close()
