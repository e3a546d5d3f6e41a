"""The data path as strangers use it: third-party clients and patterns the other suites do not
choose (paramiko pipelining 100+ WRITEs, OpenSSH `reput`/`reget`, curl `--next`, many
sessions at once), through the SFTP and FTPS listeners to every backend (sshd, vsftpd, a
local directory). Every file arrives whole with a matching SHA-256, or the client is told."""

import concurrent.futures
import contextlib
import hashlib
import io
import os
import signal
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from harness import keygen, make_file, sha256_file
from test_ftps_gateway import (  # noqa: F401  (fixtures)
    curl,
    explicit_url,
    gw,
    pki,
    vsftpd,
    vsftpd_implicit,
)

MIB = 1 << 20
MOUNTS = ["/local", "/sftp", "/vs"]


def backend_file(gw, vsftpd, path: str):
    """Where a gateway path's file lies on its backend, for a direct check."""
    mount, rel = path[1:].split("/", 1)
    return {"local": gw.local, "sftp": gw.sftp_data, "vs": vsftpd.root}[mount] / rel


def paramiko_session(gw, user="alice", password="alice-pw", timeout=120):
    t = paramiko.Transport(("127.0.0.1", gw.port))
    t.connect()
    t.auth_password(user, password)
    sftp = paramiko.SFTPClient.from_transport(t)
    # A hang must fail the test, not the CI run.
    sftp.get_channel().settimeout(timeout)
    return sftp, t


@pytest.mark.parametrize("mount", MOUNTS)
def test_paramiko_putfo_getfo_64mib(gw, vsftpd, mount):
    """paramiko keeps 100+ WRITEs in flight before it reads a reply; at 3.2 MB and up that
    used to wedge the session for good (the dispatcher waited on the reply writer, which
    waited on russh's session loop, which waited to deliver more WRITEs to the dispatcher)."""
    body = os.urandom(MIB) * 64
    digest = hashlib.sha256(body).hexdigest()
    sftp, t = paramiko_session(gw)
    try:
        path = f"{mount}/paramiko-64m.bin"
        attrs = sftp.putfo(io.BytesIO(body), path, confirm=True)
        assert attrs.st_size == len(body)
        back = io.BytesIO()
        sftp.getfo(path, back)
        assert hashlib.sha256(back.getvalue()).hexdigest() == digest
    finally:
        t.close()
    assert sha256_file(backend_file(gw, vsftpd, path)) == digest


@pytest.mark.parametrize("mount", MOUNTS)
def test_openssh_reput_and_reget_resume_on_every_backend(gw, vsftpd, mount, tmp_path):
    """`reput` opens with SSH_FXF_APPEND and pipelines writes at the right offsets; a local
    backend that let the kernel append them in thread order scrambled the file silently."""
    whole = tmp_path / "f20m.bin"
    digest = make_file(whole, 20 * MIB + 1234)
    part = tmp_path / "rp.bin"
    part.write_bytes(whole.read_bytes()[: 10 * MIB])
    path = f"{mount}/rp.bin"
    gw.sftp("alice", f"put {part} {path}\n", password="alice-pw")
    # `reput` resumes into the remote file from its current size.
    whole_named = tmp_path / "rp-whole" / "rp.bin"
    whole_named.parent.mkdir()
    whole.rename(whole_named)
    gw.sftp("alice", f"reput {whole_named} {path}\n", password="alice-pw")
    assert sha256_file(backend_file(gw, vsftpd, path)) == digest, "resumed upload differs"
    # `reget` resumes a partial download.
    local = tmp_path / "got.bin"
    local.write_bytes(whole_named.read_bytes()[: 7 * MIB + 5])
    gw.sftp("alice", f"reget {path} {local}\n", password="alice-pw")
    assert sha256_file(local) == digest, "resumed download differs"


def test_wrong_password_is_refused_promptly_and_may_be_retried(gw, tmp_path):
    """paramiko waited 30 s on a wrong password: the failure reply dropped `password` from the
    methods, so paramiko fell back to keyboard-interactive. A failure must list the methods
    that can still succeed, for known and unknown users alike, and a mistyped password may be
    retried on the same connection within maxAuthAttempts."""
    for user in ["alice", "nobody-such"]:
        t = paramiko.Transport(("127.0.0.1", gw.port))
        t.connect()
        try:
            t0 = time.monotonic()
            with pytest.raises(paramiko.AuthenticationException) as e:
                t.auth_password(user, "wrong")
            # BadAuthenticationType would mean `password` was no longer offered.
            assert not isinstance(e.value, paramiko.BadAuthenticationType), (user, e.value)
            assert time.monotonic() - t0 < 5, f"the refusal for {user} took too long"
        finally:
            t.close()
    # OpenSSH asks again on the same connection: a wrong password, then the right one.
    askpass = tmp_path / "askpass"
    count = tmp_path / "asked"
    askpass.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
if [ "$n" = 0 ]; then echo wrong; else echo alice-pw; fi
""")
    askpass.chmod(0o755)
    batch = tmp_path / "batch"
    batch.write_text("ls /\n")
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    before = len(gw.events("logonFailure"))
    r = subprocess.run(["sftp", "-P", str(gw.port), "-o", "StrictHostKeyChecking=no",
                        "-o", "UserKnownHostsFile=/dev/null", "-o", "PubkeyAuthentication=no",
                        "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=3", "-o", "BatchMode=no",
                        "-b", str(batch), "alice@127.0.0.1"],
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert count.read_text().strip() == "2", "OpenSSH was not asked twice"
    assert len(gw.events("logonFailure")) - before == 1


def test_paramiko_key_then_password_on_one_transport(gw, tmp_path):
    """paramiko's SSHClient tries its keys, then the password, on one transport, and asks for
    the userauth service again before each attempt. russh ignored the second request and
    paramiko waited out its 30 s timeout (fixed in the patched russh, vendor/README.md)."""
    key = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "stranger")))
    t = paramiko.Transport(("127.0.0.1", gw.port))
    t.connect()
    try:
        t0 = time.monotonic()
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_publickey("alice", key)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_password("alice", "mistyped")
        t.auth_password("alice", "alice-pw")
        assert t.is_authenticated()
        assert time.monotonic() - t0 < 5, "a retry on the same transport waited"
        sftp = paramiko.SFTPClient.from_transport(t)
        assert "local" in sftp.listdir("/")
    finally:
        t.close()


def test_curl_next_several_transfers_on_one_control_connection(gw, vsftpd, tmp_path):
    """curl `--next` keeps one control connection for several transfers. Under TLS 1.2 any mix
    works. Under TLS 1.3 curl offers a ticket once and keeps only the newest, so a data
    connection resumes from the ticket the previous one issued; upload data connections issue
    none (see the next test), so a transfer after a download or listing works, and one after
    an upload is refused with a clear 425 before any data (docs/compatibility.md)."""
    files = []
    for i in range(3):
        p = tmp_path / f"n{i}.bin"
        files.append((p, make_file(p, 3 * MIB + i)))
    before = len(gw.events("logonSuccess"))

    def run(tls_args, steps):
        args = []
        for s in steps:
            args += ["--ssl-reqd", "--cacert", str(gw.pki.ca), *tls_args, *s, "--next"]
        return curl(*args[:-1], check=False)

    # TLS 1.2: uploads back to back, then downloads.
    r12 = run(["--tls-max", "1.2"],
        [["-T", str(p), explicit_url(gw, f"/vs/next12-{i}.bin")] for i, (p, _) in enumerate(files)]
        + [["-o", str(tmp_path / f"b12-{i}.bin"), explicit_url(gw, f"/vs/next12-{i}.bin")] for i in range(3)])
    assert r12.returncode == 0, r12.stderr
    for i, (_, digest) in enumerate(files):
        assert sha256_file(vsftpd.root / f"next12-{i}.bin") == digest, i
        assert sha256_file(tmp_path / f"b12-{i}.bin") == digest, i

    # TLS 1.3: a listing and downloads chain (each issues the next ticket); an upload last.
    for i, (p, _) in enumerate(files):
        curl("--ssl-reqd", "--cacert", str(gw.pki.ca), "-T", str(p), explicit_url(gw, f"/vs/next13-{i}.bin"))
    steps = [["-l", explicit_url(gw, "/vs/")]]
    steps += [["-o", str(tmp_path / f"b13-{i}.bin"), explicit_url(gw, f"/vs/next13-{i}.bin")] for i in range(3)]
    steps.append(["-T", str(files[0][0]), explicit_url(gw, "/vs/next13-last.bin")])
    r13 = run(["--tlsv1.3"], steps)
    assert r13.returncode == 0, r13.stderr
    for i, (_, digest) in enumerate(files):
        assert sha256_file(tmp_path / f"b13-{i}.bin") == digest, i
    assert sha256_file(vsftpd.root / "next13-last.bin") == files[0][1]
    assert len(gw.events("logonSuccess")) - before == 2 + 3, "curl did not keep one control connection"

    # TLS 1.3, upload right after upload: the second is refused before any data, not lost.
    refused = len(gw.events("dataConnectionRefused"))
    r = run(["--tlsv1.3"], [["-T", str(p), explicit_url(gw, f"/vs/next13b-{i}.bin")] for i, (p, _) in enumerate(files[:2])])
    assert r.returncode != 0
    assert sha256_file(vsftpd.root / "next13b-0.bin") == files[0][1]
    assert not (vsftpd.root / "next13b-1.bin").exists()
    reasons = [e["reason"] for e in gw.events("dataConnectionRefused")[refused:]]
    assert reasons == ["data connection TLS did not resume the control connection's TLS session"], reasons


def test_curl_tls13_uploads_lose_nothing_to_an_unread_ticket(gw, vsftpd, tmp_path):
    """curl 7.88 reads an upload's data connection once, just before its close_notify; a TLS
    1.3 ticket that arrives after that is unread at close(), which then sends a TCP reset, and
    the reset discards what the gateway had not yet read (curl issue 6149). With one ticket per
    data connection, 11 of 45 such 2 MB uploads failed with 426 on loopback; upload data
    connections now get none."""
    src = tmp_path / "t.bin"
    digest = make_file(src, 2_000_000)
    for i in range(40):
        mount = ["/local", "/vs"][i % 2]
        curl("--ssl-reqd", "--tlsv1.3", "--cacert", str(gw.pki.ca), "-T", str(src), explicit_url(gw, f"{mount}/t13-{i}.bin"))
        where = gw.local if mount == "/local" else vsftpd.root
        assert sha256_file(where / f"t13-{i}.bin") == digest, i


def test_three_hundred_uploads_in_a_row_to_vsftpd_none_stalls(gw, vsftpd, tmp_path):
    """Every command to a backend leaves the gateway at once. suppaftp wrote commands without a
    flush, and tokio-rustls keeps written bytes in its buffer when the socket, or the task's
    cooperative budget, says "not now"; about one upload in 150 then never sent its STOR and
    waited out ioTimeoutSeconds (60 s) for a reply vsftpd could not give (the gateway's trace
    logged the STOR; tcpdump showed no byte of it). 300 uploads in a row; each must end well
    inside that timeout."""
    src = tmp_path / "r.bin"
    digest = make_file(src, 2_000_000)
    for i in range(300):
        p = subprocess.Popen(["curl", "-sS", "--max-time", "120", "--ssl-reqd", "--cacert", str(gw.pki.ca),
                              "-T", str(src), explicit_url(gw, f"/vs/row-{i}.bin")], stderr=subprocess.PIPE)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"upload {i} did not end within 20 s: {gw.events('transferStart')[-1]}")
        assert p.returncode == 0, (i, p.stderr.read().decode())
        assert sha256_file(vsftpd.root / f"row-{i}.bin") == digest, i
        (vsftpd.root / f"row-{i}.bin").unlink()


def test_fifty_concurrent_sessions_to_every_backend(gw, vsftpd, tmp_path):
    """50 sessions of 20 MB at once through both listeners to every backend, uploads and downloads mixed:
    no failure, every checksum equal, nothing left half-written. Backend FTPS connections used
    to share one TLS session cache, so a data connection resumed another connection's session
    and vsftpd (require_ssl_reuse) refused it."""
    src = tmp_path / "c.bin"
    digest = make_file(src, 20 * MIB + 77)
    for mount in MOUNTS:
        gw.sftp("alice", f"put {src} {mount}/seed.bin\n", password="alice-pw")

    def ftps_up(i, mount):
        curl("--ssl-reqd", "--cacert", str(gw.pki.ca), "-T", str(src), explicit_url(gw, f"{mount}/cu{i}.bin"))
        return f"{mount}/cu{i}.bin"

    def ftps_down(i, mount):
        out = tmp_path / f"cd{i}.bin"
        curl("--ssl-reqd", "--cacert", str(gw.pki.ca), "-o", str(out), explicit_url(gw, f"{mount}/seed.bin"))
        assert sha256_file(out) == digest, f"download {i} from {mount}"

    def sftp_up(i, mount):
        gw.sftp("alice", f"put {src} {mount}/su{i}.bin\n", password="alice-pw")
        return f"{mount}/su{i}.bin"

    def sftp_down(i, mount):
        out = tmp_path / f"sd{i}.bin"
        gw.sftp("alice", f"get {mount}/seed.bin {out}\n", password="alice-pw")
        assert sha256_file(out) == digest, f"download {i} from {mount}"

    kinds = [ftps_up, ftps_down, sftp_up, sftp_down]
    jobs = [(kinds[i % 4], i, MOUNTS[(i // 4) % 3]) for i in range(50)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda j: j[0](j[1], j[2]), jobs))
    uploaded = [r for r in results if r]
    assert len(uploaded) == 25
    for path in uploaded:
        assert sha256_file(backend_file(gw, vsftpd, path)) == digest, path
    # No temporary or empty file is left on any backend.
    for mount in MOUNTS:
        d = backend_file(gw, vsftpd, f"{mount}/x").parent
        assert no_leftovers(d) == [], mount
        assert [p.name for p in d.iterdir() if p.is_file() and p.stat().st_size == 0] == [], mount


def ftps(gw, encoding="utf-8"):
    from ftps import ftps_login

    return ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw", encoding=encoding)


@pytest.mark.parametrize("mount", MOUNTS)
def test_errors_tell_the_truth_the_same_way_on_every_backend(gw, vsftpd, mount):
    """A missing directory is 550/ENOENT everywhere (vsftpd answered LIST of one with an empty
    226); MKD of an existing directory is one answer whatever the backend; SFTP v3 RENAME never
    replaces, `posix-rename@openssh.com` does."""
    import ftplib

    sftp, t = paramiko_session(gw)
    f = ftps(gw)
    try:
        with pytest.raises(FileNotFoundError):
            sftp.listdir(f"{mount}/no-such-dir")
        for cmd in ["LIST", "MLSD", "NLST"]:
            with pytest.raises(ftplib.error_perm, match="^550"):
                f.retrlines(f"{cmd} {mount}/no-such-dir", lambda _: None)
        sftp.mkdir(f"{mount}/made")
        with pytest.raises(ftplib.error_perm, match="^550 File exists"):
            f.mkd(f"{mount}/made")
        with pytest.raises(OSError):
            sftp.mkdir(f"{mount}/made")
        sftp.rmdir(f"{mount}/made")

        sftp.putfo(io.BytesIO(b"one"), f"{mount}/r1.txt")
        sftp.putfo(io.BytesIO(b"two"), f"{mount}/r2.txt")
        with pytest.raises(OSError):
            sftp.rename(f"{mount}/r1.txt", f"{mount}/r2.txt")
        assert sftp.open(f"{mount}/r2.txt").read() == b"two"
        sftp.posix_rename(f"{mount}/r1.txt", f"{mount}/r2.txt")
        assert sftp.open(f"{mount}/r2.txt").read() == b"one"
        assert "r1.txt" not in sftp.listdir(mount)
        sftp.remove(f"{mount}/r2.txt")
    finally:
        f.quit()
        t.close()


def test_openssh_extensions_statvfs_fsync_limits(gw, tmp_path):
    """OpenSSH's `df` (statvfs@openssh.com) and `put -f` (fsync@openssh.com) work where the
    backend can; limits@openssh.com is read by every OpenSSH client at start."""
    src = tmp_path / "f.bin"
    digest = make_file(src, 1_000_003)
    out = gw.sftp("alice", f"df -h /local\ndf /sftp\nput -f {src} /local/fsync.bin\n"
                           f"put -f {src} /sftp/fsync.bin\n", password="alice-pw").stdout.decode()
    assert out.count("Size") + out.count("1K-blocks") >= 2, out
    assert sha256_file(gw.local / "fsync.bin") == digest
    assert sha256_file(gw.sftp_data / "fsync.bin") == digest
    # An FTP endpoint has no file-system figures: a clear refusal, and the session goes on.
    r = gw.sftp("alice", "df /vs\n", password="alice-pw", check=False)
    assert r.returncode != 0, (r.stdout + r.stderr).decode()
    refused = gw.wait_event("request", op="statvfs", path="/vs")
    assert refused["result"].startswith("not supported"), refused
    gw.sftp("alice", "ls /vs\n", password="alice-pw")


def test_openssh_hard_links_where_the_role_allows_them(gw, vsftpd, tmp_path):
    """OpenSSH's `ln` (hardlink@openssh.com): the verb `link` on both names, a second name for
    the same inode on the local and sshd endpoints, never replacing a name; refused where the
    role lacks `link` (/vs), with the denial audited."""
    src = tmp_path / "h.bin"
    digest = make_file(src, 100_001)
    for mount, root in (("local", gw.local), ("sftp", gw.sftp_data)):
        gw.sftp("alice", f"put {src} /{mount}/h.bin\nln /{mount}/h.bin /{mount}/h2.bin\n",
                password="alice-pw")
        assert os.stat(root / "h.bin").st_ino == os.stat(root / "h2.bin").st_ino, mount
        assert sha256_file(root / "h2.bin") == digest
        # An existing name is never replaced.
        (root / "taken.bin").write_bytes(b"keep")
        r = gw.sftp("alice", f"ln /{mount}/h.bin /{mount}/taken.bin\n", password="alice-pw", check=False)
        assert r.returncode != 0, (r.stdout + r.stderr).decode()
        assert (root / "taken.bin").read_bytes() == b"keep"
        gw.wait_event("request", op="hardlink", path=f"/{mount}/h.bin", result="ok")
    # Across endpoints: refused, nothing made.
    r = gw.sftp("alice", "ln /local/h.bin /sftp/x.bin\n", password="alice-pw", check=False)
    assert r.returncode != 0 and not (gw.sftp_data / "x.bin").exists()
    # /vs grants no `link`: denied by policy, audited, and the session goes on.
    (vsftpd.root / "l.txt").write_bytes(b"l")
    r = gw.sftp("alice", "ln /vs/l.txt /vs/l2.txt\n", password="alice-pw", check=False)
    assert r.returncode != 0 and not (vsftpd.root / "l2.txt").exists()
    gw.wait_event("policyDenied", op="link", path="/vs/l.txt")


def test_times_and_modes_through_an_ftps_backend(gw, vsftpd, tmp_path):
    """SFTP setstat of times and modes on an FTP endpoint: MFMT, or MDTM with a time
    (vsftpd), and SITE CHMOD. rclone's SetModTime and OpenSSH `put -p` depend on it."""
    sftp, t = paramiko_session(gw)
    try:
        sftp.putfo(io.BytesIO(b"x" * 1000), "/vs/times.txt")
        sftp.utime("/vs/times.txt", (1_600_000_000, 1_600_000_000))
        assert int(os.stat(vsftpd.root / "times.txt").st_mtime) == 1_600_000_000
        assert sftp.stat("/vs/times.txt").st_mtime == 1_600_000_000
        sftp.chmod("/vs/times.txt", 0o640)
        assert os.stat(vsftpd.root / "times.txt").st_mode & 0o777 == 0o640
        with pytest.raises(OSError):
            sftp.truncate("/vs/times.txt", 10)
    finally:
        t.close()
    # `put -p` sets the times on the open handle before it closes it.
    src = tmp_path / "p.bin"
    make_file(src, 300_000)
    os.utime(src, (1_500_000_000, 1_500_000_000))
    gw.sftp("alice", f"put -p {src} /vs/p.bin\n", password="alice-pw")
    assert int(os.stat(vsftpd.root / "p.bin").st_mtime) == 1_500_000_000


def test_mfmt_on_the_ftps_front_end(gw):
    f = ftps(gw)
    try:
        assert "MFMT" in f.sendcmd("FEAT")
        f.storbinary("STOR /local/m.txt", io.BytesIO(b"m"))
        assert f.sendcmd("MFMT 20200102030405 /local/m.txt").startswith("213 Modify=20200102030405")
        assert f.sendcmd("MDTM /local/m.txt") == "213 20200102030405"
        assert int(os.stat(gw.local / "m.txt").st_mtime) == 1_577_934_245
        import ftplib

        with pytest.raises(ftplib.error_perm, match="^501"):
            f.sendcmd("MFMT 20201302030405 /local/m.txt")
        assert f.sendcmd("NOOP").startswith("200")
    finally:
        f.quit()


def no_leftovers(d):
    return sorted(p.name for p in d.iterdir() if ".portcullis-" in p.name)


@pytest.mark.parametrize("mount", MOUNTS)
def test_a_failed_upload_never_looks_complete(gw, vsftpd, mount, tmp_path):
    """Atomic uploads (the default): a client that dies mid-upload leaves neither a partial
    file under the real name nor a temporary file; the file it would have replaced stays."""
    target = backend_file(gw, vsftpd, f"{mount}/atomic.bin")
    target.parent.mkdir(parents=True, exist_ok=True)
    sftp, t = paramiko_session(gw)
    try:
        sftp.putfo(io.BytesIO(b"the old, whole file"), f"{mount}/atomic.bin")
    finally:
        t.close()
    # SFTP: the connection drops halfway through the upload.
    sftp, t = paramiko_session(gw)
    fh = sftp.open(f"{mount}/atomic.bin", "wb")
    fh.write(os.urandom(3 * MIB))
    fh.flush()
    assert target.read_bytes() == b"the old, whole file"
    t.close()
    gw.wait_event("transferEnd", timeout=30, path=f"{mount}/atomic.bin", confidence="NoEOF")
    # FTPS: curl killed mid-transfer.
    src = tmp_path / "big.bin"
    make_file(src, 64 * MIB)
    p = subprocess.Popen(["curl", "-sS", "--ssl-reqd", "--cacert", str(gw.pki.ca), "--limit-rate", "4M",
                          "-T", str(src), explicit_url(gw, f"{mount}/atomic.bin")])
    time.sleep(2)
    p.kill()
    p.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ends = [e for e in gw.events("transferEnd") if e["path"] == f"{mount}/atomic.bin"]
        if len(ends) >= 3:
            break
        time.sleep(0.1)
    assert ends[-1]["confidence"] in ("NoEOF", "Low"), ends[-1]
    assert "partial upload was removed" in ends[-1]["detail"], ends[-1]
    assert target.read_bytes() == b"the old, whole file"
    assert no_leftovers(target.parent) == []


@pytest.mark.parametrize("mount", MOUNTS)
def test_names_with_leading_and_trailing_spaces_round_trip(gw, vsftpd, mount):
    """vsftpd has no MLSD; its LIST lines were parsed with the leading spaces of a name cut,
    so the file was listed under a name that did not reach it."""
    d = backend_file(gw, vsftpd, f"{mount}/names")
    d.mkdir(exist_ok=True)
    for n in ["  lead.txt", "trail.txt ", "mid  dle.txt"]:
        (d / n).write_bytes(n.encode())
        if mount == "/vs":
            os.chown(d / n, os.stat(vsftpd.root).st_uid, -1)
    sftp, t = paramiko_session(gw)
    try:
        names = sorted(sftp.listdir(f"{mount}/names"))
        assert names == sorted(["  lead.txt", "trail.txt ", "mid  dle.txt"]), names
        for n in names:
            assert sftp.open(f"{mount}/names/{n}").read() == n.encode(), n
    finally:
        t.close()


# Names as bytes: Latin-1 (a Windows client's "café"), bytes that no decoder accepts, U+FFFD
# sent as UTF-8 (a lossy decoder's output, which must stay a name of its own), a code point of
# the block the gateway carries raw bytes in (it must not be mistaken for one), and UTF-8.
BYTE_NAMES = [b"caf\xe9.txt", b"bad\xfe\x80.bin", "\ufffd.txt".encode(),
              "\uefe9.txt".encode(), "plain-\u00e9.txt".encode()]


def raw_listdir(sftp, path: bytes) -> list[bytes]:
    """The names of an SFTP directory as the server sent them (paramiko's `listdir` decodes
    them as UTF-8 and fails on anything else)."""
    from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR

    t, msg = sftp._request(CMD_OPENDIR, path)
    assert t == CMD_HANDLE
    handle = msg.get_binary()
    names = []
    try:
        while True:
            try:
                t, msg = sftp._request(CMD_READDIR, handle)
            except EOFError:
                return names
            assert t == CMD_NAME
            for _ in range(msg.get_int()):
                names.append(msg.get_string())
                msg.get_string()  # longname
                paramiko.SFTPAttributes._from_msg(msg)
    finally:
        sftp._request(CMD_CLOSE, handle)


@pytest.mark.parametrize("mount", MOUNTS)
def test_names_that_are_not_utf8_round_trip_byte_for_byte(gw, vsftpd, mount):
    """SFTP v3 and FTP names are bytes. A backend's `caf\\xe9.txt` was listed as
    `caf\\ufffd.txt`, a name that reached no file, and a client's was refused; now each name
    is listed, read, written, renamed and deleted as the bytes it is, over SFTP and FTPS, on
    every backend, and lands on the backend under exactly those bytes."""
    d = bytes(backend_file(gw, vsftpd, f"{mount}/bytenames"))
    os.makedirs(d, exist_ok=True)
    owner = os.stat(vsftpd.root).st_uid if mount == "/vs" else -1
    os.chown(d, owner, -1)
    on_backend, by_sftp = BYTE_NAMES[:2], BYTE_NAMES[2:]
    for n in on_backend:
        with open(os.path.join(d, n), "wb") as f:
            f.write(n)
        os.chown(os.path.join(d, n), owner, -1)
    base = mount.encode() + b"/bytenames/"
    sftp, t = paramiko_session(gw)
    try:
        for n in by_sftp:
            with sftp.open(base + n, "wb") as f:
                f.write(n)
        assert sorted(raw_listdir(sftp, base.rstrip(b"/"))) == sorted(BYTE_NAMES)
        for n in BYTE_NAMES:
            with sftp.open(base + n, "rb") as f:
                assert f.read() == n, n
            assert sftp.stat(base + n).st_size == len(n), n
        sftp.rename(base + BYTE_NAMES[0], base + b"moved\xe9")
        sftp.remove(base + b"moved\xe9")
    finally:
        t.close()
    assert sorted(os.listdir(d)) == sorted(BYTE_NAMES[1:])

    # 0xFF is Telnet's IAC: suppaftp sends it doubled (RFC 959) and vsftpd reads command lines
    # literally, so on vsftpd such a name lists but cannot be reached. It must fail, never
    # reach another file.
    iac = os.path.join(d, b"iac\xff")
    with open(iac, "wb") as f:
        f.write(b"iac")
    os.chown(iac, owner, -1)
    sftp, t = paramiko_session(gw)
    try:
        assert b"iac\xff" in raw_listdir(sftp, base.rstrip(b"/"))
        if mount == "/vs":
            with pytest.raises(FileNotFoundError):
                sftp.open(base + b"iac\xff", "rb").read()
        else:
            assert sftp.open(base + b"iac\xff", "rb").read() == b"iac"
    finally:
        t.close()
    os.remove(iac)

    # FTP: Latin-1 maps each byte to one character, so ftplib sends and reads bytes unchanged.
    f = ftps(gw, encoding="latin-1")
    try:
        lat = [n.decode("latin-1") for n in BYTE_NAMES[1:]]
        folder = f"{mount}/bytenames"
        assert sorted(f.nlst(folder)) == sorted(lat)
        for n in lat:
            got = io.BytesIO()
            f.retrbinary(f"RETR {folder}/{n}", got.write)
            assert got.getvalue() == n.encode("latin-1"), n
        name = b"ftp\xe9\xfe.txt".decode("latin-1")
        f.storbinary(f"STOR {folder}/{name}", io.BytesIO(b"by ftp"))
        assert open(os.path.join(d, b"ftp\xe9\xfe.txt"), "rb").read() == b"by ftp"
        f.rename(f"{folder}/{name}", f"{folder}/{name}2")
        f.delete(f"{folder}/{name}2")
        assert f.mkd(f"{folder}/dir\xe9").endswith("dir\xe9")
        assert os.path.isdir(os.path.join(d, b"dir\xe9"))
        f.rmd(f"{folder}/dir\xe9")
    finally:
        f.quit()
    assert sorted(os.listdir(d)) == sorted(BYTE_NAMES[1:])


def descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, p in parents.items() if p == parent]
        out += kids
        todo += kids
    return out


@contextlib.contextmanager
def stopped(pid: int):
    """The server's per-connection processes stopped (SIGSTOP): connections stay open and
    nothing answers, the way a hung backend looks; the listener itself keeps running."""
    procs = descendants(pid)
    assert procs, "no connection process to stop"
    for p in procs:
        os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in procs:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("mount", ["/vstall", "/sstall"])
def test_a_stalled_backend_fails_the_transfer_within_its_io_timeout(gw, vsftpd_implicit, sshd, mount):
    """An endpoint that stops answering mid-transfer (its processes stopped) must end in a
    failure the client sees within the endpoint's ioTimeoutSeconds (3 s here), never a hang;
    the upload is not left under its name, the audit says so, and the session goes on."""
    server = vsftpd_implicit if mount == "/vstall" else sshd
    root = vsftpd_implicit.root if mount == "/vstall" else gw.sftp_data / "stall"
    (root / "dl.bin").write_bytes(os.urandom(48 * MIB))
    os.chown(root / "dl.bin", os.stat(root).st_uid, -1)
    sftp, t = paramiko_session(gw, timeout=60)
    try:
        # Upload: the backend stops taking data.
        f = sftp.open(f"{mount}/up.bin", "wb")
        f.write(b"u" * MIB)
        with stopped(server.proc.pid):
            began = time.monotonic()
            with pytest.raises(OSError):
                for _ in range(256):
                    f.write(b"u" * MIB)
                f.close()
            failed_after = time.monotonic() - began
            # The handle is closed while the backend is still stopped; the close fails too.
            with contextlib.suppress(OSError):
                f.close()
        print(f"{mount} upload failed {failed_after:.1f} s into the stall")
        assert failed_after < 30, failed_after
        end = gw.wait_event("transferEnd", path=f"{mount}/up.bin")
        assert end["confidence"] != "High", end
        assert not (root / "up.bin").exists()

        # Download: the backend stops sending.
        f = sftp.open(f"{mount}/dl.bin", "rb")
        f.read(MIB)
        with stopped(server.proc.pid):
            began = time.monotonic()
            with pytest.raises(OSError):
                while f.read(MIB):
                    pass
            failed_after = time.monotonic() - began
            with contextlib.suppress(OSError):
                f.close()
        print(f"{mount} download failed {failed_after:.1f} s into the stall")
        assert failed_after < 30, failed_after
        end = gw.wait_event("transferEnd", path=f"{mount}/dl.bin")
        assert end["confidence"] != "High", end
    finally:
        t.close()
    # The gateway reconnects once the backend answers again.
    sftp, t = paramiko_session(gw)
    try:
        assert "dl.bin" in sftp.listdir(mount)
    finally:
        t.close()


def test_noop_during_a_transfer_is_answered_after_it_and_freezes_nothing(gw):
    """A NOOP (or any command but ABOR) sent during a transfer used to spin a worker at
    100%: the line went back on the backlog and came straight back out. Now it is held and
    answered after the transfer's 226, and the gateway keeps serving everyone meanwhile."""
    import socket

    f = ftps(gw)
    try:
        conn = f.transfercmd("STOR /local/noop.bin")
        body = os.urandom(MIB)
        h = hashlib.sha256()
        noops = 0
        for i in range(20):
            conn.sendall(body)
            h.update(body)
            if i % 4 == 0:
                f.sock.sendall(b"NOOP\r\n")
                noops += 1
                t0 = time.monotonic()
                assert gw.http("/readyz")[0] == 200
                with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
                    assert s.recv(64).startswith(b"SSH-2.0-")
                assert time.monotonic() - t0 < 3, "the gateway stalled"
        conn.unwrap()
        conn.close()
        assert f.voidresp().startswith("226")
        for _ in range(noops):
            assert f.getresp().startswith("200")
        assert f.sendcmd("NOOP").startswith("200")
    finally:
        f.quit()
    assert sha256_file(gw.local / "noop.bin") == h.hexdigest()
