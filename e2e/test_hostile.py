"""Hostile clients against the real gateway binary: what an attacker can make it spend before
logging in."""

import concurrent.futures
import time

import paramiko

from harness import Gateway, fresh_dir


def try_wrong_password(port: int, user: str) -> str:
    t = paramiko.Transport(("127.0.0.1", port))
    try:
        t.connect()
        t.auth_password(user, "not-the-password")
        return "accepted"
    except paramiko.AuthenticationException:
        return "refused"
    except (paramiko.SSHException, EOFError, OSError) as e:
        return f"dropped: {type(e).__name__}"
    finally:
        t.close()


def test_login_storm_keeps_memory_bounded_and_real_users_get_in(sshd, passwords, figure):
    """Argon2id costs ~19 MiB a check; unbounded, 40 concurrent wrong passwords took RSS into
    gigabytes. Checks now run a core's worth at a time with a short queue; past it a login is
    refused at once and audited."""
    d = fresh_dir("login-storm")
    data = d / "data"
    data.mkdir()
    g = Gateway(d, {
        "endpoints": [{"name": "disk", "type": "local", "root": str(data)}],
        "users": [{"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"],
                   "roles": ["rw"]}],
        "roles": [{"name": "rw", "mounts": [{"path": "/files", "endpoint": "disk", "verbs": ["list"]}]}],
        "limits": {"maxSessions": 1000, "maxSessionsPerIp": 1000, "maxAuthAttempts": 4},
    })
    try:
        outcomes = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
            for _ in range(2):
                users = ["alice" if i % 2 else f"nobody{i}" for i in range(100)]
                outcomes += list(pool.map(lambda u: try_wrong_password(g.port, u), users))
        assert "accepted" not in outcomes
        peak = g.peak_rss_kib() / 1024
        figure("login_storm_peak_rss_mib", round(peak, 1))
        assert peak < 200, f"peak RSS {peak:.0f} MiB during 200 concurrent wrong passwords"
        failures = g.events("logonFailure")
        assert len(failures) >= outcomes.count("refused"), "every refusal is audited"
        # The storm is over: a real user gets in at once.
        t0 = time.monotonic()
        t = paramiko.Transport(("127.0.0.1", g.port))
        t.connect()
        t.auth_password("alice", "alice-pw")
        assert t.is_authenticated()
        t.close()
        assert time.monotonic() - t0 < 5
    finally:
        g.stop()


def server_kexinit(port: int) -> list[list[str]]:
    """The ten name-lists of the server's first KEXINIT, read off a raw socket."""
    import socket
    import struct

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"SSH-2.0-probe\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(4096)
        buf = buf.split(b"\r\n", 1)[1]

        def need(n: int) -> None:
            nonlocal buf
            while len(buf) < n:
                chunk = s.recv(65536)
                assert chunk, "closed before KEXINIT"
                buf += chunk

        need(5)
        length = struct.unpack(">I", buf[:4])[0]
        need(4 + length)
        payload = buf[5:4 + length - buf[4]]
    assert payload[0] == 20, "not a KEXINIT"
    at, lists = 17, []
    for _ in range(10):
        n = struct.unpack(">I", payload[at:at + 4])[0]
        lists.append(payload[at + 4:at + 4 + n].decode().split(","))
        at += 4 + n
    return lists


def test_no_compression_before_login(tmp_path):
    """Plain `zlib` would inflate whatever an unauthenticated peer sends; only the delayed
    `zlib@openssh.com` (after login, as OpenSSH) or none are offered, in both directions."""
    d = fresh_dir("no-prauth-zlib")
    (d / "data").mkdir()
    g = Gateway(d, {"endpoints": [{"name": "disk", "type": "local", "root": str(d / "data")}]})
    try:
        lists = server_kexinit(g.port)
        assert lists[6] == ["none", "zlib@openssh.com"], lists[6]
        assert lists[7] == ["none", "zlib@openssh.com"], lists[7]
    finally:
        g.stop()
