"""Hostile clients against the real gateway binary: what an attacker can make it spend before
logging in."""

import concurrent.futures
import os
import time

import paramiko
import pytest

from harness import Gateway, free_port, fresh_dir


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
        "limits": {"maxSessions": 1000, "maxSessionsPerIp": 1000, "maxUnauthenticatedPerIp": 1000,
                   "maxAuthAttempts": 4},
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


def test_backend_symlinks_do_not_leave_the_mount(sshd, passwords):
    """A symlink planted in a mount's directory must not reach another mount's files (a
    read-only one included) or anything outside the mount, on the local and the SFTP
    backends, through any operation; a symlink that stays inside the mount still works."""
    import shutil
    d = fresh_dir("symlink-escape")
    disk = d / "disk"
    for sub in ("up", "up/sub", "ro", "other"):
        (disk / sub).mkdir(parents=True)
    (disk / "ro" / "r.txt").write_text("read-only secret")
    (disk / "other" / "o.txt").write_text("other mount")
    (disk / "up" / "sub" / "f.txt").write_text("inside")
    (disk / "up" / "esc").symlink_to(disk / "ro")
    (disk / "up" / "peek").symlink_to(disk / "other" / "o.txt")
    (disk / "up" / "inside").symlink_to(disk / "up" / "sub")
    s_dir, out_dir = sshd.root / "hostile-s", sshd.root / "hostile-out"
    for p in (s_dir, out_dir):
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir()
    (out_dir / "secret.txt").write_text("outside the mount")
    (s_dir / "esc").symlink_to(out_dir)
    (s_dir / "peek").symlink_to(out_dir / "secret.txt")
    rw = ["list", "read", "write", "mkdir", "rmdir", "delete", "rename", "setattr"]
    g = Gateway(d, {
        "endpoints": [{"name": "disk", "type": "local", "root": str(disk)}, sshd.endpoint("sshd")],
        "users": [{"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"],
                   "roles": ["r"]}],
        "roles": [{"name": "r", "mounts": [
            {"path": "/up", "endpoint": "disk", "backendPath": "/up", "verbs": rw},
            {"path": "/ro", "endpoint": "disk", "backendPath": "/ro", "verbs": ["list", "read"]},
            {"path": "/other", "endpoint": "disk", "backendPath": "/other", "verbs": rw},
            {"path": "/s", "endpoint": "sshd", "backendPath": str(s_dir), "verbs": rw},
        ]}],
    })
    t = paramiko.Transport(("127.0.0.1", g.port))
    try:
        t.connect(username="alice", password="alice-pw")
        sftp = paramiko.SFTPClient.from_transport(t)
        # The inside link still works.
        with sftp.open("/up/inside/f.txt") as f:
            assert f.read() == b"inside"
        probes = {
            "read through a dir link": lambda m: sftp.open(f"/{m}/esc/{'r' if m == 'up' else 'secret'}.txt").read(),
            "write through a dir link": lambda m: sftp.open(f"/{m}/esc/new.txt", "w").write(b"x"),
            "list a dir link": lambda m: sftp.listdir(f"/{m}/esc"),
            "stat through a dir link": lambda m: sftp.stat(f"/{m}/esc/{'r' if m == 'up' else 'secret'}.txt"),
            "stat a file link": lambda m: sftp.stat(f"/{m}/peek"),
            "read a file link": lambda m: sftp.open(f"/{m}/peek").read(),
            "mkdir through a dir link": lambda m: sftp.mkdir(f"/{m}/esc/newdir"),
            "remove through a dir link": lambda m: sftp.remove(f"/{m}/esc/{'r' if m == 'up' else 'secret'}.txt"),
            "rename into a dir link": lambda m: sftp.rename(f"/{m}/sub-or-x", f"/{m}/esc/moved"),
            "chmod through a dir link": lambda m: sftp.chmod(f"/{m}/esc/{'r' if m == 'up' else 'secret'}.txt", 0o777),
        }
        (s_dir / "sub-or-x").write_text("x")
        (disk / "up" / "sub-or-x").write_text("x")
        escaped = []
        for mount in ("up", "s"):
            for what, probe in probes.items():
                try:
                    probe(mount)
                    escaped.append(f"{mount}: {what}")
                except (IOError, OSError):
                    pass
        assert not escaped, escaped
        sftp.close()
    finally:
        t.close()
        g.stop()
    assert (disk / "ro" / "r.txt").read_text() == "read-only secret"
    assert sorted(p.name for p in (disk / "ro").iterdir()) == ["r.txt"]
    assert (out_dir / "secret.txt").read_text() == "outside the mount"
    assert sorted(p.name for p in out_dir.iterdir()) == ["secret.txt"]
    assert (out_dir / "secret.txt").stat().st_mode & 0o777 != 0o777
    refused = [e for e in g.events("request") if e["result"] != "ok"
               and any(k in (e.get("path") or "") + (e.get("target") or "") for k in ("/esc", "/peek"))]
    assert len(refused) >= 2 * len(probes), "every refusal is audited"


def test_client_modes_never_set_setuid_setgid_or_sticky(sshd, passwords):
    """MKDIR honoured a client's 0o47777 and SETSTAT could set setuid/setgid; only the
    permission bits pass now, on the local backend and a real sshd."""
    import shutil
    d = fresh_dir("modes")
    (d / "disk").mkdir()
    s_dir = sshd.root / "hostile-modes"
    shutil.rmtree(s_dir, ignore_errors=True)
    s_dir.mkdir()
    verbs = ["list", "read", "write", "mkdir", "setattr"]
    g = Gateway(d, {
        "endpoints": [{"name": "disk", "type": "local", "root": str(d / "disk")}, sshd.endpoint("sshd")],
        "users": [{"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["r"]}],
        "roles": [{"name": "r", "mounts": [
            {"path": "/l", "endpoint": "disk", "verbs": verbs},
            {"path": "/s", "endpoint": "sshd", "backendPath": str(s_dir), "verbs": verbs},
        ]}],
    })
    t = paramiko.Transport(("127.0.0.1", g.port))
    try:
        t.connect(username="alice", password="alice-pw")
        sftp = paramiko.SFTPClient.from_transport(t)
        for m, where in (("/l", d / "disk"), ("/s", s_dir)):
            sftp.mkdir(f"{m}/d", 0o47777)
            assert (where / "d").stat().st_mode & 0o7000 == 0, oct((where / "d").stat().st_mode)
            with sftp.open(f"{m}/f", "w") as f:
                f.write(b"x")
            sftp.chmod(f"{m}/f", 0o6755)
            assert (where / "f").stat().st_mode & 0o7777 == 0o755, oct((where / "f").stat().st_mode)
        sftp.close()
    finally:
        t.close()
        g.stop()


def test_every_refused_request_is_audited(passwords):
    """exec, shell, pty, port forwarding, a second session channel, and SFTP symlink,
    readlink and unknown extensions were refused without a record."""
    d = fresh_dir("refusals")
    (d / "disk").mkdir()
    (d / "disk" / "f.txt").write_text("x")
    g = Gateway(d, {
        "endpoints": [{"name": "disk", "type": "local", "root": str(d / "disk")}],
        "users": [{"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["r"]}],
        "roles": [{"name": "r", "mounts": [{"path": "/l", "endpoint": "disk", "verbs": ["list", "read", "write"]}]}],
    })
    t = paramiko.Transport(("127.0.0.1", g.port))
    try:
        t.connect(username="alice", password="alice-pw")
        ch = t.open_session()
        try:
            ch.exec_command("cat /etc/passwd --secret-arg")
            raise AssertionError("exec accepted")
        except paramiko.SSHException:
            pass
        ch.close()
        ch = t.open_session()
        try:
            ch.get_pty()
            raise AssertionError("pty accepted")
        except paramiko.SSHException:
            pass
        try:
            ch.invoke_shell()
            raise AssertionError("shell accepted")
        except paramiko.SSHException:
            pass
        ch.close()
        try:
            t.open_channel("direct-tcpip", ("198.18.0.1", 22), ("127.0.0.1", 40000))
            raise AssertionError("direct-tcpip accepted")
        except paramiko.ChannelException:
            pass
        try:
            t.request_port_forward("127.0.0.1", 0)
            raise AssertionError("tcpip-forward accepted")
        except paramiko.SSHException:
            pass
        sftp = paramiko.SFTPClient.from_transport(t)
        try:
            t.open_session()
            raise AssertionError("a second session channel beside SFTP")
        except paramiko.ChannelException:
            pass
        for call in (lambda: sftp.symlink("/l/f.txt", "/l/link"), lambda: sftp.readlink("/l/f.txt"),
                     lambda: sftp._request(paramiko.sftp.CMD_EXTENDED, "copy-data@example.com")):
            try:
                call()
                raise AssertionError("accepted")
            except IOError:
                pass
        assert sftp.listdir("/l") == ["f.txt"], "the session goes on"
        sftp.close()
    finally:
        t.close()
        g.stop()
    refused = [e["request"] for e in g.events("requestRefused")]
    for want in ("exec cat", "pty", "direct-tcpip to 198.18.0.1:22", "tcpip-forward 127.0.0.1:0",
                 "sftp symlink /l/link -> /l/f.txt", "sftp readlink /l/f.txt",
                 "sftp extension copy-data@example.com"):
        assert want in refused, (want, refused)
    assert any(r in ("shell", "a second session channel") for r in refused), refused
    assert refused.count("a second session channel") >= 1, refused
    assert not any("secret-arg" in r for r in refused), "only the program's name is kept"


def test_disabling_a_user_revokes_open_handles(passwords):
    """READ, WRITE and READDIR on handles opened before a reload that disabled the user kept
    working. Now the next operation is refused, the session ends, and an upload in progress
    is abandoned, not committed."""
    d = fresh_dir("revoke")
    disk = d / "disk"
    disk.mkdir()
    (disk / "big.bin").write_bytes(b"z" * (4 << 20))
    user = {"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["r"]}
    config = {
        "endpoints": [{"name": "disk", "type": "local", "root": str(disk)}],
        "users": [user],
        "roles": [{"name": "r", "mounts": [{"path": "/l", "endpoint": "disk", "verbs": ["list", "read", "write"]}]}],
    }
    g = Gateway(d, config)
    t = paramiko.Transport(("127.0.0.1", g.port))
    try:
        t.connect(username="alice", password="alice-pw")
        sftp = paramiko.SFTPClient.from_transport(t)
        r = sftp.open("/l/big.bin", "rb")
        assert len(r.read(65536)) == 65536
        w = sftp.open("/l/up.bin", "wb")
        w.write(b"a" * 65536)
        w.flush()
        user["disabled"] = True
        g.write_config(g.config)
        g.wait_event("configReloaded")
        outcomes = []
        for step in (lambda: r.read(65536), lambda: (w.write(b"b" * 65536), w.flush()),
                     lambda: sftp.listdir("/l")):
            try:
                step()
                outcomes.append("allowed")
            except (IOError, OSError, EOFError, paramiko.SSHException):
                outcomes.append("refused")
        assert outcomes == ["refused"] * 3, outcomes
        g.wait_event("protocolError", user="alice")
        g.wait_event("sessionEnd", user="alice")
    finally:
        t.close()
        g.stop()
    assert not (disk / "up.bin").exists(), "an upload by a revoked user is not committed"
    assert [p.name for p in disk.iterdir()] == ["big.bin"], "its temporary file is gone too"


def test_a_refusal_takes_the_same_time_for_every_user_and_hash(passwords, figure):
    """A bcrypt user's wrong password took 1765 ms, an unknown user's 132 ms: the time told
    who exists. Unknown users are now checked against a hash of the dearest configured class,
    and every refusal is held to one floor, on SFTP and FTPS alike."""
    import ftplib
    import statistics

    import bcrypt

    from ftps import Pki, free_port_range, tls_context

    d = fresh_dir("failure-timing")
    pki = Pki(d / "pki")
    cert, key = pki.issue("gw", "localhost")
    (d / "disk").mkdir()
    # bcrypt at cost 13 takes several times the argon2id default to check.
    slow = bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(13)).decode()
    ftps_port = free_port()
    g = Gateway(d, {}, start=False)
    g.config.update({
        "listeners": [
            {"name": "sftp", "protocol": "sftp", "address": f"127.0.0.1:{g.port}", "zones": ["loopback"]},
            {"name": "ftps", "protocol": "ftps", "address": f"127.0.0.1:{ftps_port}", "zones": ["loopback"],
             "tls": {"keyRing": "gw"}, "passivePorts": {"min": (p := free_port_range(4)), "max": p + 3}},
        ],
        "keyRings": [{"name": "gw", "certificateFile": str(cert), "privateKeyFile": str(key)}],
        "endpoints": [{"name": "disk", "type": "local", "root": str(d / "disk")}],
        "users": [
            {"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["r"]},
            {"name": "bob", "passwordHash": slow, "zones": ["loopback"], "roles": ["r"]},
        ],
        "roles": [{"name": "r", "mounts": [{"path": "/l", "endpoint": "disk", "verbs": ["list"]}]}],
        "limits": {"maxAuthAttempts": 10},
    })
    g.write_config(g.config)
    g.start()

    def sftp_refusal(user: str) -> float:
        t = paramiko.Transport(("127.0.0.1", g.port))
        try:
            t.connect()
            t0 = time.monotonic()
            try:
                t.auth_password(user, "wrong")
                raise AssertionError("accepted")
            except paramiko.AuthenticationException:
                return time.monotonic() - t0
        finally:
            t.close()

    def ftps_refusal(user: str) -> float:
        f = ftplib.FTP_TLS(context=tls_context(pki.ca), timeout=30)
        try:
            f.connect("localhost", ftps_port)
            f.auth()
            f.sendcmd(f"USER {user}")
            t0 = time.monotonic()
            try:
                f.sendcmd("PASS wrong")
                raise AssertionError("accepted")
            except ftplib.error_perm as e:
                assert str(e).startswith("530"), e
                return time.monotonic() - t0
        finally:
            f.close()

    try:
        medians = {}
        for proto, refusal in [("sftp", sftp_refusal), ("ftps", ftps_refusal)]:
            for user in ["alice", "bob", "nobody"]:
                medians[(proto, user)] = statistics.median(refusal(user) for _ in range(3))
        for (proto, user), m in medians.items():
            figure(f"refusal_seconds_{proto}_{user}", round(m, 3))
        fastest, slowest = min(medians.values()), max(medians.values())
        assert fastest >= 0.95, medians
        assert slowest / fastest < 1.15, f"refusal times differ by user or hash: {medians}"
    finally:
        g.stop()


def ssh_from(source: str, port: int) -> paramiko.Transport:
    """A paramiko transport whose TCP connection comes from `source` (any 127/8 address)."""
    import socket

    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    t = paramiko.Transport(s)
    t.connect()
    return t


def ssh_login_from(source: str, port: int, user: str, password: str) -> str:
    """`accepted`, `refused` (a failed method) or `closed` (no SSH at all: banned at the door)."""
    try:
        t = ssh_from(source, port)
    except (paramiko.SSHException, EOFError, OSError):
        return "closed"
    try:
        t.auth_password(user, password)
        return "accepted" if t.is_authenticated() else "refused"
    except paramiko.AuthenticationException:
        return "refused"
    except (paramiko.SSHException, EOFError, OSError):
        return "closed"
    finally:
        t.close()


def metric(g: Gateway, name: str, **labels) -> float:
    """A counter's value from /metrics (0 when absent)."""
    for line in g.http("/metrics")[1].splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_defender_bans_guessers_on_every_replica_and_spares_the_safe_zone(passwords):
    """32 wrong FTPS passwords from one address, then the right one, logged in: nothing kept
    score. Now two gateway processes share one key and name each other as peers: guessing at
    one bans the address at both within seconds, a user guessed at from many addresses is
    locked, a safe zone is never banned, and a forged ban is dropped."""
    import ftplib
    import json
    import socket

    from ftps import Pki, free_port_range, tls_context

    d = fresh_dir("defender")
    pki = Pki(d / "pki")
    cert, key = pki.issue("gw", "localhost")
    (d / "disk").mkdir()
    (d / "defender.key").write_bytes(os.urandom(48))
    udp = [free_port(), free_port()]
    gws = []
    for i in range(2):
        gd = d / f"gw{i}"
        g = Gateway(gd, {}, start=False)
        g.ftps_port = free_port()
        g.config.update({
            "listeners": [
                {"name": "sftp", "protocol": "sftp", "address": f"127.0.0.1:{g.port}", "zones": ["loopback"]},
                {"name": "ftps", "protocol": "ftps", "address": f"127.0.0.1:{g.ftps_port}",
                 "zones": ["loopback"], "tls": {"keyRing": "gw"},
                 "passivePorts": {"min": (p := free_port_range(4)), "max": p + 3}},
            ],
            "zones": [{"name": "loopback", "cidrs": ["127.0.0.0/8"]},
                      {"name": "ops", "cidrs": ["127.0.0.2/32"]}],
            "keyRings": [{"name": "gw", "certificateFile": str(cert), "privateKeyFile": str(key)}],
            "endpoints": [{"name": "disk", "type": "local", "root": str(d / "disk")}],
            "users": [
                {"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["r"]},
                {"name": "bob", "passwordHash": passwords["bob-pw"], "zones": ["loopback"], "roles": ["r"]},
            ],
            "roles": [{"name": "r", "mounts": [{"path": "/l", "endpoint": "disk", "verbs": ["list"]}]}],
            "limits": {"maxAuthAttempts": 20, "authFailureDelayMillis": 100},
            "defender": {"threshold": 6, "userThreshold": 8, "banSeconds": 120, "safeZones": ["ops"],
                         "peers": {"listen": f"127.0.0.1:{udp[i]}",
                                   "addresses": [f"localhost:{udp[1 - i]}"],
                                   "keyFile": str(d / "defender.key")}},
        })
        g.write_config(g.config)
        g.start()
        gws.append(g)
    a, b = gws
    try:
        # FTPS guessing on one control connection at A, from 127.0.0.6: the sixth wrong password
        # bans the address, and then even the right password is refused.
        f = ftplib.FTP_TLS(context=tls_context(pki.ca), timeout=30, source_address=("127.0.0.6", 0))
        f.connect("localhost", a.ftps_port)
        f.auth()
        for _ in range(6):
            f.sendcmd("USER alice")
            with pytest.raises(ftplib.error_perm):
                f.sendcmd("PASS wrong")
        f.sendcmd("USER alice")
        with pytest.raises(ftplib.error_perm) as e:
            f.sendcmd("PASS alice-pw")
        assert str(e.value).startswith("530"), e.value
        f.close()
        ban = a.wait_event("defenderBan", key="127.0.0.6")
        assert ban["kind"] == "address" and ban["level"] == 1 and not ban["sharedByPeer"]
        assert 100 <= ban["seconds"] <= 120, ban
        assert a.wait_event("logonFailure", reason="source address banned by the defender")
        # New connections from it are closed before the banner, at A and, within seconds, at B.
        assert ssh_login_from("127.0.0.6", a.port, "alice", "alice-pw") == "closed"
        shared = b.wait_event("defenderBan", timeout=10, key="127.0.0.6")
        assert shared["sharedByPeer"] and shared["origin"] == ban["origin"], shared
        assert ssh_login_from("127.0.0.6", b.port, "alice", "alice-pw") == "closed"
        assert a.wait_event("connectionRefused", reason="banned by the defender")
        assert metric(a, "portcullis_defender_bans_total", kind="address", origin="local") == 1
        assert metric(b, "portcullis_defender_bans_total", kind="address", origin="peer") == 1
        assert any(x["key"] == "127.0.0.6" for x in json.loads(b.http("/defender/bans")[1]))
        # Other addresses are untouched.
        assert ssh_login_from("127.0.0.7", b.port, "alice", "alice-pw") == "accepted"

        # A user guessed at from eight addresses (each far below the address threshold) is
        # locked everywhere; the safe zone may still log in as them.
        for n in range(8):
            assert ssh_login_from(f"127.0.1.{n + 1}", b.port, "bob", "wrong") == "refused"
        lock = b.wait_event("defenderBan", key="bob")
        assert lock["kind"] == "user"
        a.wait_event("defenderBan", timeout=10, key="bob", sharedByPeer=True)
        assert ssh_login_from("127.0.1.9", a.port, "bob", "bob-pw") == "refused"
        assert a.wait_event("logonFailure", user="bob", reason="user locked by the defender")
        assert ssh_login_from("127.0.0.2", a.port, "bob", "bob-pw") == "accepted"
        # The safe zone is never scored: 20 wrong passwords, still no ban.
        for _ in range(3):
            t = ssh_from("127.0.0.2", a.port)
            for _ in range(7):
                with pytest.raises(paramiko.AuthenticationException):
                    t.auth_password("alice", "wrong")
            t.close()
        assert ssh_login_from("127.0.0.2", a.port, "alice", "alice-pw") == "accepted"
        assert not any(e["key"] == "127.0.0.2" for e in a.events("defenderBan"))

        # A forged ban (wrong key) is dropped and counted.
        forged = json.dumps({"node": "x", "sent": int(time.time()), "bans": [
            {"kind": "address", "key": "127.0.0.7", "until": int(time.time()) + 600, "level": 1,
             "reason": "forged", "origin": "x"}]}).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\0" * 32 + forged, ("127.0.0.1", udp[1]))
        deadline = time.monotonic() + 10
        while metric(b, "portcullis_defender_datagrams_dropped_total", reason="bad MAC") < 1:
            assert time.monotonic() < deadline, "forged datagram not counted"
            time.sleep(0.1)
        assert ssh_login_from("127.0.0.7", b.port, "alice", "alice-pw") == "accepted"
        # Each pod's trail holds both bans, and says which pod made them.
        for g in gws:
            assert {(e["key"], e["origin"]) for e in g.events("defenderBan")} == {
                ("127.0.0.6", ban["origin"]), ("bob", lock["origin"])}
    finally:
        for g in gws:
            g.stop()


def test_idle_unauthenticated_sockets_take_only_their_own_share(passwords):
    """60 idle sockets from one address took every place it had. Connections not yet logged
    in now have a smaller per-address limit of their own: past it the next is closed before
    the banner and audited, sessions already logged in are untouched, and the login grace
    frees the places."""
    import socket

    d = fresh_dir("pre-auth-cap")
    (d / "disk").mkdir()
    g = Gateway(d, {
        "endpoints": [{"name": "disk", "type": "local", "root": str(d / "disk")}],
        "users": [{"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["r"]}],
        "roles": [{"name": "r", "mounts": [{"path": "/l", "endpoint": "disk", "verbs": ["list"]}]}],
        "limits": {"maxSessionsPerIp": 10, "maxUnauthenticatedPerIp": 4, "loginGraceSeconds": 3},
    })
    try:
        sessions = [g.paramiko("alice", password="alice-pw") for _ in range(2)]
        idle = [socket.create_connection(("127.0.0.1", g.port), timeout=5) for _ in range(4)]
        for s in idle:
            assert s.recv(100).startswith(b"SSH-2.0-")
        with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
            assert s.recv(100) == b"", "a fifth unauthenticated connection was served"
        g.wait_event("connectionRefused", reason="per-IP limit of connections not logged in reached")
        # The logged-in sessions work on; another address is not affected.
        assert sessions[0][0].listdir("/") == ["l"]
        with socket.create_connection(("127.0.0.1", g.port), timeout=5, source_address=("127.0.0.3", 0)) as s:
            assert s.recv(100).startswith(b"SSH-2.0-")
        # The login grace ends the idle ones; their places come back.
        time.sleep(4)
        sftp, t = g.paramiko("alice", password="alice-pw")
        assert sftp.listdir("/") == ["l"]
        t.close()
        for s in idle:
            s.close()
        for _, t in sessions:
            t.close()
    finally:
        g.stop()


def test_disabling_a_user_ends_idle_and_busy_sessions_at_once(passwords):
    """Revocation used to wait for the session's next file operation: an idle FTPS or SFTP
    session of a disabled user stayed logged in, and NOOP kept answering 200. Now a reload
    that disables the user ends every one of their sessions at once: an idle FTPS control
    connection is sent an unsolicited 421 and closed, an idle SFTP session is closed, and an
    upload in progress fails and is not committed."""
    import ftplib

    from ftps import Pki, free_port_range, ftps_login

    d = fresh_dir("revoke-ftps")
    pki = Pki(d / "pki")
    cert, key = pki.issue("gw", "localhost")
    disk = d / "disk"
    disk.mkdir()
    ftps_port = free_port()
    user = {"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["r"]}
    g = Gateway(d, {}, start=False)
    g.config.update({
        "listeners": [
            {"name": "sftp", "protocol": "sftp", "address": f"127.0.0.1:{g.port}", "zones": ["loopback"]},
            {"name": "ftps", "protocol": "ftps", "address": f"127.0.0.1:{ftps_port}", "zones": ["loopback"],
             "tls": {"keyRing": "gw"}, "passivePorts": {"min": (p := free_port_range(4)), "max": p + 3}},
        ],
        "keyRings": [{"name": "gw", "certificateFile": str(cert), "privateKeyFile": str(key)}],
        "endpoints": [{"name": "disk", "type": "local", "root": str(disk)}],
        "users": [user],
        "roles": [{"name": "r", "mounts": [{"path": "/l", "endpoint": "disk",
                                            "verbs": ["list", "read", "write"]}]}],
    })
    g.write_config(g.config)
    g.start()
    idle = ftps_login(ftps_port, pki.ca, "alice", "alice-pw")
    busy = ftps_login(ftps_port, pki.ca, "alice", "alice-pw")
    t = paramiko.Transport(("127.0.0.1", g.port))
    try:
        t.connect(username="alice", password="alice-pw")
        sftp = paramiko.SFTPClient.from_transport(t)
        assert sftp.listdir("/l") == []
        busy.voidcmd("TYPE I")
        data = busy.transfercmd("STOR /l/up.bin")
        data.sendall(b"a" * 65536)
        user["disabled"] = True
        g.write_config(g.config)
        g.wait_event("configReloaded")
        # The upload goes on sending; the gateway refuses the next write and fails it.
        try:
            for _ in range(64):
                data.sendall(b"b" * 65536)
        except OSError:
            pass
        try:
            data.unwrap()
        except (OSError, ValueError):
            pass
        data.close()
        with pytest.raises((ftplib.error_temp, ftplib.error_perm, EOFError, OSError)) as failed:
            busy.voidresp()
        assert not str(failed.value).startswith("2"), failed.value
        with pytest.raises((ftplib.error_temp, EOFError, OSError)) as after:
            busy.voidcmd("NOOP")
            busy.voidcmd("NOOP")
        if isinstance(after.value, ftplib.error_temp):
            assert str(after.value).startswith("421"), after.value
        # The idle FTPS connection is told without sending anything, then closed.
        idle.sock.settimeout(5)
        withdrawn = idle.getline()
        assert withdrawn.startswith("421 Access withdrawn"), withdrawn
        with pytest.raises(EOFError):
            idle.getline()  # closed after the 421
        # The idle SFTP session is closed without a request.
        deadline = time.monotonic() + 5
        while t.is_active() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not t.is_active(), "the idle SFTP session of a disabled user is closed"
        ends = [e for e in g.events("sessionEnd") if e.get("user") == "alice"]
        deadline = time.monotonic() + 10
        while len(ends) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            ends = [e for e in g.events("sessionEnd") if e.get("user") == "alice"]
        assert len(ends) == 3, ends
    finally:
        t.close()
        for f in (idle, busy):
            try:
                f.close()
            except OSError:
                pass
        g.stop()
    assert not (disk / "up.bin").exists(), "an upload by a revoked user is not committed"
    assert list(disk.iterdir()) == [], "its temporary file is gone too"


def test_a_mount_umask_and_file_size_limit_hold_on_both_protocols(passwords):
    """A client chose any permission bits (0o777 on a shared drop) and any size: SETSTAT to
    1 TiB made a sparse file of that size. Now a mount's umask is taken from every mode a
    client sets, and its maxFileBytes refuses a write, an append or a size change past it,
    over SFTP (an error status) and FTPS (552), leaving nothing behind."""
    import ftplib
    import io

    from ftps import Pki, free_port_range, ftps_login

    d = fresh_dir("mount-limits")
    pki = Pki(d / "pki")
    cert, key = pki.issue("gw", "localhost")
    disk = d / "disk"
    disk.mkdir()
    ftps_port = free_port()
    limit = 1 << 20
    g = Gateway(d, {}, start=False)
    g.config.update({
        "listeners": [
            {"name": "sftp", "protocol": "sftp", "address": f"127.0.0.1:{g.port}", "zones": ["loopback"]},
            {"name": "ftps", "protocol": "ftps", "address": f"127.0.0.1:{ftps_port}", "zones": ["loopback"],
             "tls": {"keyRing": "gw"}, "passivePorts": {"min": (p := free_port_range(4)), "max": p + 3}},
        ],
        "keyRings": [{"name": "gw", "certificateFile": str(cert), "privateKeyFile": str(key)}],
        "endpoints": [{"name": "disk", "type": "local", "root": str(disk)}],
        "users": [{"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["q"]}],
        "roles": [{"name": "q", "mounts": [{
            "path": "/q", "endpoint": "disk", "umask": "027", "maxFileBytes": limit,
            "verbs": ["list", "read", "write", "mkdir", "setattr", "delete"]}]}],
    })
    g.write_config(g.config)
    g.start()
    t = paramiko.Transport(("127.0.0.1", g.port))
    try:
        t.connect(username="alice", password="alice-pw")
        sftp = paramiko.SFTPClient.from_transport(t)
        sftp.putfo(io.BytesIO(b"k" * (limit // 2)), "/q/half.bin")
        sftp.chmod("/q/half.bin", 0o777)
        assert (disk / "half.bin").stat().st_mode & 0o7777 == 0o750
        sftp.mkdir("/q/d", 0o777)
        assert (disk / "d").stat().st_mode & 0o7777 == 0o750
        with pytest.raises(IOError, match="quota exceeded"):
            sftp.truncate("/q/half.bin", 1 << 40)
        assert (disk / "half.bin").stat().st_size == limit // 2
        sftp.truncate("/q/half.bin", limit)  # up to the limit is allowed
        sftp.truncate("/q/half.bin", limit // 2)
        # paramiko pipelines the writes and ignores CLOSE's status; it finds the file missing.
        with pytest.raises(IOError):
            sftp.putfo(io.BytesIO(b"x" * (2 * limit)), "/q/big.bin")
        assert not (disk / "big.bin").exists(), "an upload with a refused write is not committed"
        with pytest.raises(IOError, match="quota exceeded"):
            with sftp.open("/q/half.bin", "ab") as f:
                f.write(b"a" * (limit // 2 + 1))
                f.flush()
        assert (disk / "half.bin").stat().st_size <= limit
        # A write at a far offset is refused too: no sparse giant.
        with pytest.raises(IOError, match="quota exceeded"):
            with sftp.open("/q/sparse.bin", "wb") as f:
                f.seek(1 << 40)
                f.write(b"z")
                f.flush()
        sftp.close()
    finally:
        t.close()
    f = ftps_login(ftps_port, pki.ca, "alice", "alice-pw")
    try:
        # The gateway answers 552 and drops the data connection while the client still sends.
        f.voidcmd("TYPE I")
        conn = f.transfercmd("STOR /q/ftps-big.bin")
        try:
            for _ in range(32):
                conn.sendall(b"y" * 65536)
        except OSError:
            pass
        conn.close()
        with pytest.raises(ftplib.error_perm, match="^552 .*quota exceeded"):
            f.voidresp()
        f.storbinary("STOR /q/ftps-ok.bin", io.BytesIO(b"y" * limit))
        f.voidcmd("NOOP")
    finally:
        f.close()
        g.stop()
    names = sorted(p.name for p in disk.iterdir())
    assert names == ["d", "ftps-ok.bin", "half.bin"], f"nothing over the limit is left behind: {names}"
    assert (disk / "ftps-ok.bin").stat().st_size == limit
