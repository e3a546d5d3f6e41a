"""FTPS end to end: the real gateway binary with explicit and implicit FTPS listeners, real
clients (curl, lftp, Python ftplib, OpenSSH sftp), a real vsftpd (TLS, require_ssl_reuse) and
the real sshd as backends."""

import ftplib
import hashlib
import io
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from ftps import (
    Pki,
    LineConn,
    ReusingFTP_TLS,
    Vsftpd,
    free_port_range,
    ftps_login,
    raw_control,
    tls_context,
)
from harness import GATEWAY_BIN, Gateway, free_port, fresh_dir, make_file, sha256_file

GIB = 1 << 30
ALL_VERBS = ["list", "read", "write", "delete", "mkdir", "rmdir", "rename", "setattr", "site"]


@pytest.fixture(scope="module")
def pki():
    return Pki(fresh_dir("ftps-pki"))


@pytest.fixture(scope="module")
def vsftpd(pki):
    v = Vsftpd(fresh_dir("vsftpd"), pki)
    yield v
    v.stop()


@pytest.fixture(scope="module")
def vsftpd_implicit(pki):
    v = Vsftpd(fresh_dir("vsftpd-implicit"), pki, implicit=True)
    yield v
    v.stop()


@pytest.fixture(scope="module")
def gw(pki, vsftpd, vsftpd_implicit, sshd, passwords):
    d = fresh_dir("ftps-gateway")
    cert, key = pki.issue("gateway", "localhost")
    # The key ring files the gateway reads; rotation overwrites them in place.
    (d / "tls").mkdir()
    shutil.copy(cert, d / "tls" / "server.pem")
    shutil.copy(key, d / "tls" / "server.key")
    shutil.copy(pki.ca, d / "tls" / "clients-ca.pem")
    carol = pki.issue("carol", "carol", server=False)
    dave = pki.issue("dave", "dave", server=False)
    local = d / "local"
    local.mkdir()
    sftp_data = sshd.root / "ftps-gateway"
    shutil.rmtree(sftp_data, ignore_errors=True)
    sftp_data.mkdir()
    (sftp_data / "stall").mkdir()
    g = Gateway(d, {}, start=False)
    g.sftp_data = sftp_data
    g.ftps_port, g.implicit_port, g.active_port = free_port(), free_port(), free_port()
    g.pki, g.carol, g.dave, g.local = pki, carol, dave, local
    tls = {"keyRing": "gw", "clientCertificates": "optional"}
    g.config.update({
        "listeners": [
            {"name": "sftp", "protocol": "sftp", "address": f"127.0.0.1:{g.port}", "zones": ["loopback"]},
            {"name": "ftps", "protocol": "ftps", "address": f"127.0.0.1:{g.ftps_port}",
             "zones": ["loopback"], "tls": tls,
             "passivePorts": {"min": (p := free_port_range(32)), "max": p + 31}},
            {"name": "ftps-implicit", "protocol": "ftpsImplicit", "address": f"127.0.0.1:{g.implicit_port}",
             "zones": ["loopback"], "tls": tls,
             "passivePorts": {"min": (p := free_port_range(32)), "max": p + 31}},
            {"name": "ftps-active", "protocol": "ftps", "address": f"127.0.0.1:{g.active_port}",
             "zones": ["loopback"], "tls": tls, "dataTimeoutSeconds": 5,
             "activeMode": {"enabled": True, "noLowPorts": True, "noRedirect": True},
             "passivePorts": {"min": (p := free_port_range(8)), "max": p + 7}},
        ],
        "keyRings": [{"name": "gw", "certificateFile": "tls/server.pem", "privateKeyFile": "tls/server.key",
                      "clientCaFile": "tls/clients-ca.pem"}],
        "endpoints": [
            sshd.endpoint("sshd"),
            vsftpd.endpoint("vsftpd"),
            {"name": "local", "type": "local", "root": str(local)},
            vsftpd_implicit.endpoint("vsftpd-implicit"),
            # test_data_path stops these backends' processes mid-transfer.
            vsftpd_implicit.endpoint("vsftpd-stall", ioTimeoutSeconds=3),
            sshd.endpoint("sshd-stall", ioTimeoutSeconds=3),
        ],
        "roles": [{"name": "all", "mounts": [
            {"path": "/sftp", "endpoint": "sshd", "backendPath": str(sftp_data), "verbs": ALL_VERBS[:-1] + ["link"]},
            {"path": "/vs", "endpoint": "vsftpd", "verbs": ALL_VERBS, "siteCommands": ["HELP", "CHMOD"]},
            {"path": "/local", "endpoint": "local", "verbs": ALL_VERBS[:-1] + ["link"]},
            {"path": "/vsi", "endpoint": "vsftpd-implicit", "verbs": ALL_VERBS[:-1]},
            {"path": "/vstall", "endpoint": "vsftpd-stall", "verbs": ALL_VERBS[:-1]},
            {"path": "/sstall", "endpoint": "sshd-stall", "backendPath": str(sftp_data / "stall"),
             "verbs": ALL_VERBS[:-1]},
        ]}],
        "users": [
            {"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["all"]},
            {"name": "carol", "certificateNames": ["carol"], "zones": ["loopback"], "roles": ["all"]},
            {"name": "dave", "certificateNames": ["dave"], "passwordHash": passwords["bob-pw"],
             "authMethods": ["certificate,password"], "zones": ["loopback"], "roles": ["all"]},
        ],
        # test_data_path logs fifty clients in from one address at the same moment.
        "limits": {"maxAuthAttempts": 3, "maxSessionsPerIp": 100, "maxUnauthenticatedPerIp": 64},
    })
    g.write_config(g.config)
    g.start()
    yield g
    g.stop()


def curl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["curl", "-sS", "--max-time", "300", *args], capture_output=True)
    if check and r.returncode != 0:
        raise AssertionError(f"curl {args} failed ({r.returncode}): {r.stderr.decode()}")
    return r


def explicit_url(gw, path: str, user: str = "alice", pw: str = "alice-pw") -> str:
    return f"ftp://{user}:{pw}@localhost:{gw.ftps_port}{path}"


def implicit_url(gw, path: str, user: str = "alice", pw: str = "alice-pw") -> str:
    return f"ftps://{user}:{pw}@localhost:{gw.implicit_port}{path}"


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = fresh_dir("ftps-big")
    p = d / "big.bin"
    return p, make_file(p, GIB)


def lftp(gw, script: str, user: str = "alice", pw: str = "alice-pw") -> subprocess.CompletedProcess:
    prelude = (
        "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate true; "
        f"set ssl:ca-file {gw.pki.ca}; set net:max-retries 1; set net:timeout 30; "
        f"open -u {user},{pw} ftp://localhost:{gw.ftps_port}; "
    )
    r = subprocess.run(["lftp", "-c", prelude + script], capture_output=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"lftp failed ({r.returncode}): {r.stdout.decode()} {r.stderr.decode()}")
    return r


# --- Round trips: every front end to every backend -------------------------------------------


@pytest.mark.parametrize("mount", ["/sftp", "/vs"])
def test_curl_explicit_and_implicit_round_trip_1gib(gw, big, mount, figure):
    """FTPS in (curl explicit up, curl implicit down) to SFTP and to FTPS backends."""
    src, digest = big
    t0 = time.monotonic()
    curl("--ssl-reqd", "--cacert", str(gw.pki.ca), "-T", str(src), explicit_url(gw, f"{mount}/big-curl.bin"))
    up = time.monotonic() - t0
    back = src.with_name(f"back-{mount[1:]}.bin")
    t0 = time.monotonic()
    curl("--cacert", str(gw.pki.ca), "-o", str(back), implicit_url(gw, f"{mount}/big-curl.bin"))
    down = time.monotonic() - t0
    assert sha256_file(back) == digest
    back.unlink()
    figure(f"ftps_1gib_upload_seconds_{mount[1:]}", round(up, 2))
    figure(f"ftps_1gib_download_seconds_{mount[1:]}", round(down, 2))
    ends = [e for e in gw.events("transferEnd") if e["path"] == f"{mount}/big-curl.bin"]
    assert [e["direction"] for e in ends[-2:]] == ["upload", "download"]
    for e in ends[-2:]:
        assert e["confidence"] == "High", e
        assert e["sha256"] == digest
        assert e["bytes"] == GIB
        assert e["channel"].startswith("TLSv1_3 "), e


def test_sftp_client_to_ftps_backend_1gib(gw, big, vsftpd):
    """SFTP in, FTPS (vsftpd) out: the bridge the other way, listing translated."""
    src, digest = big
    back = src.with_name("back-sftp.bin")
    r = gw.sftp("alice", f"put {src} /vs/big-sftp.bin\nls -l /vs\nget /vs/big-sftp.bin {back}\n",
                password="alice-pw", timeout=600)
    assert "big-sftp.bin" in r.stdout.decode()
    assert sha256_file(back) == digest
    assert sha256_file(vsftpd.root / "big-sftp.bin") == digest
    back.unlink()
    ends = [e for e in gw.events("transferEnd") if e["path"] == "/vs/big-sftp.bin"]
    assert [(e["direction"], e["confidence"], e["sha256"]) for e in ends[-2:]] == [
        ("upload", "High", digest), ("download", "High", digest)]


def test_lftp_round_trip_and_listing(gw, tmp_path):
    src = tmp_path / "l.bin"
    digest = make_file(src, 3_000_001)
    r = lftp(gw, f"put {src} -o /vs/lftp.bin; cls -l /vs; get /vs/lftp.bin -o {tmp_path}/l.back; "
                 f"put {src} -o /sftp/lftp.bin; cls -l /sftp; get /sftp/lftp.bin -o {tmp_path}/l2.back")
    out = r.stdout.decode()
    assert "lftp.bin" in out
    assert sha256_file(tmp_path / "l.back") == digest
    assert sha256_file(tmp_path / "l2.back") == digest


@pytest.mark.parametrize("mount", ["/vs", "/sftp", "/local"])
def test_lftp_mirror_reverse_and_pget_segments(gw, mount, tmp_path):
    """What lftp users do: `mirror -R` of a tree (nested directories, a name with spaces,
    an empty file) with parallel transfers, a second `mirror -R` that should find nothing to
    do, `mirror` back, and `pget -n 4` (four REST-offset RETRs of one file on four
    connections), to every backend. Every file compares equal by SHA-256. lftp's mirror sends
    `SITE CHMOD` after each upload: a mode change on every backend (it was refused on mounts
    without the verb `site`, and lftp exited 1)."""
    src = tmp_path / "tree"
    (src / "a" / "b").mkdir(parents=True)
    (src / "with space").mkdir()
    files = {
        "top.bin": 1_500_001,
        "a/mid.bin": 700_000,
        "a/b/deep.bin": 65_537,
        "with space/s p.txt": 12_345,
        "a/empty.txt": 0,
    }
    digests = {rel: make_file(src / rel, size) for rel, size in files.items()}
    dest = f"{mount}/mirror-{mount.strip('/')}"
    lftp(gw, f"mirror -R --parallel=3 {src} {dest}")
    again = lftp(gw, f"mirror -R -v {src} {dest}").stdout.decode()
    # vsftpd has no MLSD and lists times to the minute; the gateway's MLSD still gives the
    # second (MDTM per file), or lftp would find the copy older and send everything again.
    assert "Transferring file" not in again, f"a second mirror -R found changes: {again}"
    back = tmp_path / "back"
    lftp(gw, f"mirror --parallel=3 {dest} {back}")
    for rel, digest in digests.items():
        assert sha256_file(back / rel) == digest, rel
        assert (back / rel).stat().st_mode & 0o777 == (src / rel).stat().st_mode & 0o777, rel
    lftp(gw, f"pget -n 4 {dest}/top.bin -o {tmp_path}/pget.bin")
    assert sha256_file(tmp_path / "pget.bin") == digests["top.bin"]
    lftp(gw, f"rm -r {dest}")


def test_ftplib_mlsd_list_nlst_and_file_commands(gw, tmp_path):
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        assert f.pwd() == "/"
        # The session's record names the control connection's protection.
        start = [e for e in gw.events("sessionStart") if e["protocol"] == "ftps"][-1]
        assert start["channel"].startswith("TLSv1_3 TLS13_"), start
        # The root lists exactly the role's mounts.
        mounts = sorted(m["path"].lstrip("/") for m in gw.config["roles"][0]["mounts"])
        assert sorted(n for n, _ in f.mlsd("/")) == mounts
        f.cwd("/vs")
        f.storbinary("STOR m.txt", open(__file__, "rb"))
        facts = dict(f.mlsd())["m.txt"]
        assert facts["type"] == "file" and int(facts["size"]) == Path(__file__).stat().st_size
        assert "m.txt" in f.nlst()
        lines = []
        f.retrlines("LIST", lines.append)
        assert any(l.startswith("-") and l.endswith(" m.txt") for l in lines), lines
        assert f.size("m.txt") == Path(__file__).stat().st_size
        assert f.sendcmd("MDTM m.txt").startswith("213 2")
        assert f.sendcmd("MLST m.txt").startswith("250-")
        f.mkd("sub")
        f.rename("m.txt", "sub/n.txt")
        assert f.nlst("sub") == ["n.txt"]
        f.delete("sub/n.txt")
        f.rmd("sub")
        with pytest.raises(ftplib.error_perm):
            f.size("sub/n.txt")
        # TYPE A converts line ends both ways; TYPE I does not.
        f.storlines("STOR text.txt", open_bytes(b"one\r\ntwo\r\n"))
        got = []
        f.retrbinary("RETR text.txt", got.append)
        assert b"".join(got) == b"one\ntwo\n"
        f.cwd("..")
        assert f.pwd() == "/"
    finally:
        f.quit()


def test_resumed_download_and_upload(gw, tmp_path):
    """REST before RETR and before STOR, through to both backends."""
    src = tmp_path / "r.bin"
    data_digest = make_file(src, 5_000_000)
    data = src.read_bytes()
    for mount in ["/vs", "/sftp", "/local"]:
        f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
        try:
            # Upload the first 2 MB, then resume from there.
            f.storbinary(f"STOR {mount}/r.bin", open_bytes(data[:2_000_000]))
            f.storbinary(f"STOR {mount}/r.bin", open_bytes(data[2_000_000:]), rest=2_000_000)
            assert f.size(f"{mount}/r.bin") == len(data)
            whole = []
            f.retrbinary(f"RETR {mount}/r.bin", whole.append)
            assert hashlib.sha256(b"".join(whole)).hexdigest() == data_digest
            tail = []
            f.retrbinary(f"RETR {mount}/r.bin", tail.append, rest=3_000_000)
            assert b"".join(tail) == data[3_000_000:]
        finally:
            f.quit()
    # curl resumes a download with REST too.
    part = tmp_path / "part.bin"
    part.write_bytes(data[:1_234_567])
    curl("--ssl-reqd", "--cacert", str(gw.pki.ca), "-C", "-", "-o", str(part), explicit_url(gw, "/vs/r.bin"))
    assert sha256_file(part) == data_digest


# --- The rules of the control channel ------------------------------------------------------------


def test_no_cleartext_login_and_starttls_injection_discarded(gw):
    s, c = raw_control(gw.ftps_port)
    try:
        assert c.reply()[0] == 220
        code, text = c.cmd("USER alice")
        assert code == 530 and "AUTH TLS" in text
        assert c.cmd("PASS alice-pw")[0] == 530
        assert c.cmd("FEAT")[0] == 211
        # AUTH TLS with a pipelined cleartext command behind it: the command is discarded.
        s.sendall(b"AUTH TLS\r\nUSER injected\r\n")
        assert c.reply()[0] == 234
        tls = tls_context(gw.pki.ca).wrap_socket(s, server_hostname="localhost")
        t = LineConn(tls)
        assert t.cmd("NOOP")[0] == 200  # the injected USER never produced a reply
        assert t.cmd("USER alice")[0] == 331
        assert t.cmd("PASS alice-pw")[0] == 230
        assert t.cmd("CCC")[0] == 533
        assert t.cmd("QUIT")[0] == 221
    finally:
        s.close()
    refused = [e for e in gw.events("ftpCommand") if e["verb"] in ("USER", "PASS") and e["reply"] == 530]
    assert refused and all(e["argument"] in ("alice", "********") for e in refused)
    assert not any("alice-pw" in l for l in gw.audit_path.read_text().splitlines())


@pytest.mark.parametrize("passive", ["PASV", "EPSV"])
def test_prot_c_and_unprotected_data_commands_refused(gw, passive):
    f = ReusingFTP_TLS(context=tls_context(gw.pki.ca), timeout=10)
    f.connect("localhost", gw.ftps_port)
    f.auth()
    f.login("alice", "alice-pw")
    try:
        assert f.sendcmd("PBSZ 0").startswith("200")
        with pytest.raises(ftplib.error_perm, match="^534"):
            f.sendcmd("PROT C")
        with pytest.raises(ftplib.error_perm, match="^521"):
            f.sendcmd(passive)
        with pytest.raises(ftplib.error_perm, match="^521"):
            f.sendcmd("LIST")
        assert f.sendcmd("PROT P").startswith("200")
        assert f.sendcmd(passive)[:3] in ("227", "229")
    finally:
        f.quit()


def test_malformed_overlong_and_unknown_commands_keep_the_session(gw):
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        with pytest.raises(ftplib.error_perm, match="^501"):
            f.sendcmd("PORT 1,2")
        with pytest.raises(ftplib.error_perm, match="^500"):
            f.sendcmd("FROBNICATE")
        with pytest.raises(ftplib.error_perm, match="^500"):
            f.sendcmd("NOOP " + "x" * 5000)
        with pytest.raises(ftplib.error_perm, match="^501"):
            f.sendcmd("TYPE Q")
        assert f.sendcmd("NOOP").startswith("200")
        assert f.nlst("/local") is not None  # data still works
    finally:
        f.quit()


# --- Data connection rules -----------------------------------------------------------------------


def test_data_connection_from_another_ip_is_refused(gw, tmp_path):
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        f.storbinary("STOR /local/steal.txt", open_bytes(b"secret payload"))
        _, port = parse_pasv(f.sendcmd("PASV"))
        # A thief on 127.0.0.2 reaches the port first, then the client.
        thief = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0), timeout=5)
        data = socket.create_connection(("127.0.0.1", port), timeout=5)
        f.putcmd("RETR /local/steal.txt")
        assert f.getresp().startswith("150")
        # The thief is dropped without a byte; the client's own connection gets the file.
        assert thief.recv(100) == b""
        thief.close()
        assert read_resumed(f, data) == b"secret payload"
        assert f.voidresp().startswith("226")
    finally:
        f.quit()
    e = gw.wait_event("dataConnectionRefused")
    assert e["from"].startswith("127.0.0.2:"), e


def test_a_passive_port_waits_past_racers_from_the_same_address(gw):
    """Behind one NAT address, another host can reach a passive port before the client. The
    first connection from the client's address used to win the port: a silent one stalled the
    transfer into a 425, one with its own TLS session got a 425 for the client. Now every
    connection from the address is handshaken (a few at once); the one that resumes this
    control connection's TLS session is the data connection, and the others are refused and
    audited."""
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    before = len(gw.events("dataConnectionRefused"))
    try:
        f.storbinary("STOR /local/race.txt", io.BytesIO(b"raced payload"))
        _, port = parse_pasv(f.sendcmd("PASV"))
        # A silent racer, then one that completes a TLS handshake of its own, then the client.
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        racer_tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
        racer_result = []

        def race():
            try:
                t = tls_context(gw.pki.ca).wrap_socket(racer_tcp, server_hostname="localhost")
                racer_result.append(t.recv(100))
            except (ssl.SSLError, OSError) as e:
                racer_result.append(e)

        racer = threading.Thread(target=race)
        racer.start()
        data = socket.create_connection(("127.0.0.1", port), timeout=10)
        f.putcmd("RETR /local/race.txt")
        assert f.getresp().startswith("150")
        assert read_resumed(f, data) == b"raced payload"
        assert f.voidresp().startswith("226")
        racer.join(10)
        # The racer's connection was closed without a byte of the file.
        assert racer_result and (racer_result[0] == b"" or isinstance(racer_result[0], Exception)), racer_result
        silent.close()
        # The port is closed now: nothing more connects to this transfer.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).recv(1)
    finally:
        f.quit()
    # Both racers are refused and audited (the racer as not resuming, or as superseded when
    # the client's handshake finished first; the silent one as superseded).
    deadline = time.monotonic() + 10
    while len(refused := gw.events("dataConnectionRefused")[before:]) < 2:
        assert time.monotonic() < deadline, refused
        time.sleep(0.1)
    assert all(e["from"].startswith("127.0.0.1:") for e in refused), refused
    assert any("superseded" in e["reason"] for e in refused), refused


def test_a_stalled_data_connection_times_out_and_the_session_lives_on(gw):
    """A client that stopped sending mid-upload held its file, its backend connection and its
    slot for ever. Now a data connection idle for the listener's dataTimeoutSeconds (5 s on
    this listener) fails the transfer with 426; the control connection stays usable."""
    f = ftps_login(gw.active_port, gw.pki.ca, "alice", "alice-pw")
    try:
        _, port = parse_pasv(f.sendcmd("PASV"))
        data = socket.create_connection(("127.0.0.1", port), timeout=30)
        f.putcmd("STOR /local/stalled.bin")
        assert f.getresp().startswith("150")
        tls = f.context.wrap_socket(data, server_hostname="localhost", session=f.sock.session)
        tls.sendall(b"x" * 100_000)
        t0 = time.monotonic()
        with pytest.raises(ftplib.error_temp, match="^426.*idle"):
            f.getresp()
        assert 4 <= time.monotonic() - t0 < 20
        tls.close()
        assert f.sendcmd("NOOP").startswith("200")
    finally:
        f.quit()
    end = gw.wait_event("transferEnd", path="/local/stalled.bin")
    assert end["confidence"] != "High", end


def test_data_connection_without_tls_session_reuse_is_refused(gw):
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw", reuse=False)
    try:
        with pytest.raises((ftplib.error_temp, ftplib.error_perm, ssl.SSLError, OSError)):
            f.nlst("/local")
            f.voidresp()
    finally:
        f.close()
    # The refusal is queued for the audit writer as the connection is dropped; the client may
    # see the drop first.
    deadline = time.monotonic() + 10
    while not any("did not resume" in e["reason"] for e in gw.events("dataConnectionRefused")):
        assert time.monotonic() < deadline, "no dataConnectionRefused record saying why"
        time.sleep(0.1)
    # The same client resuming the session works.
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    assert "steal.txt" in " ".join(f.nlst("/local")) or f.nlst("/local") is not None
    f.quit()


def test_active_mode_rules(gw):
    # Default listener: active mode is off.
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    with pytest.raises(ftplib.error_perm, match="^502"):
        f.sendcmd("PORT 127,0,0,1,0,22")
    f.quit()
    # Active listener with NOLOWPORTS and NOREDIRECT.
    f = ftps_login(gw.active_port, gw.pki.ca, "alice", "alice-pw")
    try:
        with pytest.raises(ftplib.error_perm, match="^504.*below 1024"):
            f.sendcmd("PORT 127,0,0,1,0,22")
        with pytest.raises(ftplib.error_perm, match="^504.*address"):
            f.sendcmd("EPRT |1|127.0.0.2|40000|")
        # A legitimate active transfer works (the gateway connects back; TLS on top).
        f.set_pasv(False)
        f.storbinary("STOR /local/active.txt", open_bytes(b"active mode"))
        got = []
        f.retrbinary("RETR /local/active.txt", got.append)
        assert b"".join(got) == b"active mode"
    finally:
        f.quit()
    refusals = [e["reason"] for e in gw.events("dataConnectionRefused")]
    assert any("127.0.0.1:22" in r and "PrivilegedPort" in r for r in refusals)
    assert any("127.0.0.2:40000" in r and "ThirdParty" in r for r in refusals)


def test_abor_mid_transfer_426_then_226_and_noeof(gw, big):
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        shutil.copy(big[0], gw.local / "abort.bin")
        conn = f.transfercmd("RETR /local/abort.bin")
        assert len(conn.recv(65536)) > 0
        f.putcmd("ABOR")
        assert f.getline().startswith("426")
        conn.close()
        assert f.getline().startswith("226")
        assert f.sendcmd("NOOP").startswith("200")
    finally:
        f.close()
    e = gw.wait_event("transferEnd", path="/local/abort.bin")
    assert e["confidence"] == "NoEOF" and "ABOR" in e["detail"], e


# --- Authentication ------------------------------------------------------------------------------


def test_certificate_only_and_certificate_plus_password(gw):
    carol_cert, carol_key = gw.carol
    f = ftps_login(gw.ftps_port, gw.pki.ca, "carol", None, cert=carol_cert, key=carol_key)
    assert f.nlst("/") is not None
    f.quit()
    gw.wait_event("logonSuccess", user="carol", methods=["certificate"])
    dave_cert, dave_key = gw.dave
    f = ftps_login(gw.ftps_port, gw.pki.ca, "dave", "bob-pw", cert=dave_cert, key=dave_key)
    f.quit()
    gw.wait_event("logonSuccess", user="dave", methods=["certificate", "password"])
    # Dave's password without his certificate is not enough; carol's certificate is not dave's.
    for cert in [None, carol_cert]:
        f = ReusingFTP_TLS(context=tls_context(gw.pki.ca, cert, carol_key if cert else None), timeout=10)
        f.connect("localhost", gw.ftps_port)
        f.auth()
        with pytest.raises(ftplib.error_perm, match="^530"):
            f.login("dave", "bob-pw")
        f.close()
    # Carol without a certificate is asked for a password and refused.
    f = ReusingFTP_TLS(context=tls_context(gw.pki.ca), timeout=10)
    f.connect("localhost", gw.ftps_port)
    f.auth()
    assert f.sendcmd("USER carol").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        f.sendcmd("PASS whatever")
    f.close()


def test_too_many_failed_logins_close_the_connection(gw):
    f = ReusingFTP_TLS(context=tls_context(gw.pki.ca), timeout=10)
    f.connect("localhost", gw.ftps_port)
    f.auth()
    for _ in range(2):
        with pytest.raises(ftplib.error_perm, match="^530"):
            f.login("alice", "wrong")
    with pytest.raises((ftplib.error_temp, ftplib.error_perm, EOFError)):
        f.login("alice", "wrong")
        f.sendcmd("NOOP")
    f.close()


def test_site_goes_through_policy(gw, vsftpd):
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        f.cwd("/vs")
        f.storbinary("STOR site.txt", open_bytes(b"x"))
        # Allowed: forwarded, and vsftpd's own answer comes back (its code included).
        assert f.sendcmd("SITE CHMOD 600 site.txt").startswith("200")
        with pytest.raises(ftplib.error_perm, match="^550"):
            f.sendcmd("SITE CHMOD 600 no-such-file")
        with pytest.raises(ftplib.error_perm, match="^550.*allow-list"):
            f.sendcmd("SITE FILETYPE=JES")
        # Path arguments are mapped through the mount like any path: the client's /vs/site.txt
        # is the backend's /site.txt (it used to reach vsftpd verbatim and miss).
        assert f.sendcmd("SITE CHMOD 640 /vs/site.txt").startswith("200")
        assert (vsftpd.root / "site.txt").stat().st_mode & 0o7777 == 0o640
        # SITE CHMOD is a mode change like SETSTAT's: authorized by `setattr` on the path's
        # own mount (here /local, which has it and no `site`), so a missing file there is 550.
        with pytest.raises(ftplib.error_perm, match="^550 No such file"):
            f.sendcmd("SITE CHMOD 644 ../local/x")
        # setuid, setgid and sticky are never honoured; a malformed mode is refused.
        with pytest.raises(ftplib.error_perm, match="^550.*setuid"):
            f.sendcmd("SITE CHMOD 4755 site.txt")
        with pytest.raises(ftplib.error_perm, match="^5"):
            f.sendcmd("SITE CHMOD rwx site.txt")
        assert (vsftpd.root / "site.txt").stat().st_mode & 0o7777 == 0o640
        # Another allowed subcommand may not smuggle a path.
        with pytest.raises(ftplib.error_perm, match="^550.*names a path"):
            f.sendcmd("SITE HELP ../../etc")
        f.cwd("/local")
        with pytest.raises(ftplib.error_perm, match="^550"):
            f.sendcmd("SITE CHMOD 644 x")
    finally:
        f.quit()
    denied = gw.events("policyDenied")
    assert any(e["op"] == "site" for e in denied)
    # Each CHMOD is audited as the setstat it is, with the client's path.
    chmods = [e for e in gw.events("request") if e["op"] == "setstat"]
    assert any(e["path"] == "/vs/site.txt" for e in chmods), chmods


def test_a_denial_is_in_the_audit_chain_before_the_reply_that_reports_it(gw):
    """The denial record is queued before the command's own record (it used to be spawned, so
    the two could land in either order): fifty denied commands on one session alternate
    denial, command, denial, command in seq order."""
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        f.cwd("/vs")
        for i in range(50):
            with pytest.raises(ftplib.error_perm, match="^550.*names a path"):
                f.sendcmd(f"SITE HELP ../order{i}")
        deadline = time.monotonic() + 10
        while True:
            recs = [e for e in gw.events() if
                    (e["event"] == "policyDenied" and "order" in e["reason"]) or
                    (e["event"] == "ftpCommand" and e["verb"] == "SITE" and "order" in (e.get("argument") or ""))]
            if len(recs) == 100 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        f.quit()
    recs.sort(key=lambda e: e["seq"])
    assert len(recs) == 100, recs
    assert len({e["session"] for e in recs}) == 1, recs
    kinds = [e["event"] for e in recs]
    assert kinds == ["policyDenied", "ftpCommand"] * 50, kinds
    for d, c in zip(recs[::2], recs[1::2]):
        assert c["reply"] == 550 and c["argument"].split("../")[1] in d["reason"], (d, c)


# --- Backend behaviour ---------------------------------------------------------------------------


def test_twenty_uploads_to_vsftpd_over_tls13_none_truncated(gw, vsftpd, tmp_path):
    # The backend leg negotiates TLS 1.3 (vsftpd on OpenSSL 3).
    r = subprocess.run(["openssl", "s_client", "-starttls", "ftp", "-connect", f"127.0.0.1:{vsftpd.port}",
                        "-CAfile", str(vsftpd.ca), "-brief"], input=b"", capture_output=True, timeout=20)
    assert b"Protocol version: TLSv1.3" in r.stdout + r.stderr, r.stderr
    src = tmp_path / "u.bin"
    digest = make_file(src, 24 * 1024 * 1024 + 123)
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        for i in range(20):
            with open(src, "rb") as fh:
                assert f.storbinary(f"STOR /vs/u{i}.bin", fh).startswith("226")
    finally:
        f.quit()
    for i in range(20):
        assert sha256_file(vsftpd.root / f"u{i}.bin") == digest, i


def test_implicit_ftps_backend(gw, vsftpd_implicit, tmp_path):
    src = tmp_path / "i.bin"
    digest = make_file(src, 2_000_000)
    curl("--ssl-reqd", "--cacert", str(gw.pki.ca), "-T", str(src), explicit_url(gw, "/vsi/i.bin"))
    assert sha256_file(vsftpd_implicit.root / "i.bin") == digest
    back = tmp_path / "i.back"
    curl("--cacert", str(gw.pki.ca), "-o", str(back), implicit_url(gw, "/vsi/i.bin"))
    assert sha256_file(back) == digest
    # The backend leg is on record, with the protocol it used.
    legs = [e for e in gw.events("backendConnected") if e["endpoint"] == "vsftpd-implicit"]
    assert legs and all(e["protocol"] == "ftps-implicit" and e["attempt"] == 1 for e in legs), legs
    assert legs[-1]["address"] == f"127.0.0.1:{vsftpd_implicit.port}" and legs[-1]["hostKey"] is None, legs
    # How that leg was protected: the TLS version, the suite its keys were made with, and
    # vsftpd's own certificate, verified.
    served = hashlib.sha256(ssl.PEM_cert_to_DER_cert(vsftpd_implicit.cert.read_text())).hexdigest()
    shape = re.compile(rf"TLSv1_3 TLS13_(AES_256_GCM_SHA384|AES_128_GCM_SHA256|CHACHA20_POLY1305_SHA256) "
                       rf"cert-sha256:{served}|TLSv1_2 TLS_ECDHE_(RSA|ECDSA)_WITH_\w+ cert-sha256:{served}")
    assert all(shape.fullmatch(e["channel"]) for e in legs), (served, legs)
    # The suite is the one vsftpd settles on with a TLS client offering the same suites in the
    # same order (Python's OpenSSL, straight to vsftpd).
    direct = ssl.create_default_context(cafile=str(vsftpd_implicit.ca))
    with socket.create_connection(("127.0.0.1", vsftpd_implicit.port), timeout=10) as raw:
        with direct.wrap_socket(raw, server_hostname="localhost") as tls:
            name, version, _ = tls.cipher()
    assert version == "TLSv1.3" and name.startswith("TLS_"), (version, name)
    assert legs[-1]["channel"].split()[:2] == ["TLSv1_3", "TLS13_" + name.removeprefix("TLS_")], (name, legs[-1])


def test_plaintext_backend_needs_consent_and_is_audited_at_start(tmp_path):
    base = {
        "listeners": [{"name": "s", "protocol": "sftp", "address": f"127.0.0.1:{free_port()}", "zones": ["z"]}],
        "zones": [{"name": "z", "cidrs": ["127.0.0.0/8"]}],
        "endpoints": [{"name": "legacy", "type": "ftps", "addresses": ["127.0.0.1:21"], "security": "plaintext",
                       "username": "u", "passwordFile": str(tmp_path / "pw")}],
    }
    (tmp_path / "pw").write_text("x\n")
    g = Gateway(fresh_dir("ftps-plaintext"), base, start=False)
    r = subprocess.run([str(GATEWAY_BIN), "check", "--config", str(g.config_path)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "endpoints[0].security: a plaintext FTP backend needs allowPlaintext: true" in r.stdout + r.stderr
    g.config["endpoints"][0]["allowPlaintext"] = True
    g.write_config(g.config)
    g.start()
    try:
        assert g.wait_event("daemonStart")["plaintextEndpoints"] == ["legacy"]
    finally:
        g.stop()


def test_tls_policy_required_client_certificates_and_advertised_address(gw, tmp_path):
    """A listener that requires a client certificate, allows one TLS 1.3 cipher suite, and
    advertises a NAT address in PASV; and an endpoint that presents a client certificate to a
    vsftpd that requires one."""
    pki = gw.pki
    mtls_vs = Vsftpd(fresh_dir("vsftpd-mtls"), pki, client_ca=pki.ca)
    gcert, gkey = pki.issue("gateway-client", "portcullis-gateway", server=False)
    d = fresh_dir("ftps-policy")
    g = Gateway(d, {}, start=False)
    port = free_port()
    pasv = free_port_range(4)
    g.config.update({
        "listeners": [{"name": "strict", "protocol": "ftpsImplicit", "address": f"127.0.0.1:{port}",
                       "zones": ["loopback"], "advertisedAddress": "192.0.2.10",
                       "passivePorts": {"min": pasv, "max": pasv + 3},
                       "tls": {"keyRing": "gw", "minVersion": "1.3", "clientCertificates": "required",
                               "cipherSuites": ["TLS13_CHACHA20_POLY1305_SHA256"]}}],
        "keyRings": [{"name": "gw", "certificateFile": str(gw.dir / "tls" / "server.pem"),
                      "privateKeyFile": str(gw.dir / "tls" / "server.key"), "clientCaFile": str(pki.ca)}],
        "endpoints": [mtls_vs.endpoint("mtls", clientCertificateFile=str(gcert), clientKeyFile=str(gkey))],
        "roles": [{"name": "r", "mounts": [{"path": "/m", "endpoint": "mtls", "verbs": ["list", "read", "write"]}]}],
        "users": [{"name": "carol", "certificateNames": ["carol"], "zones": ["loopback"], "roles": ["r"]}],
    })
    g.write_config(g.config)
    g.start()
    try:
        carol_cert, carol_key = gw.carol
        # No certificate: the handshake fails.
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            t = tls_context(pki.ca).wrap_socket(s, server_hostname="localhost")
            LineConn(t).reply()
        # With carol's certificate: TLS 1.3 with the one allowed suite, and USER logs in.
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        t = tls_context(pki.ca, carol_cert, carol_key).wrap_socket(s, server_hostname="localhost")
        c = LineConn(t)
        assert c.reply()[0] == 220
        assert t.version() == "TLSv1.3" and t.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"
        assert c.cmd("USER carol")[0] == 232
        assert c.cmd("PBSZ 0")[0] == 200 and c.cmd("PROT P")[0] == 200
        code, text = c.cmd("PASV")
        assert code == 227 and "(192,0,2,10," in text, text
        c.cmd("QUIT")
        t.close()
        # Through to the vsftpd that requires the gateway's client certificate.
        src = tmp_path / "m.bin"
        digest = make_file(src, 1_000_000)
        ftps_url = f"ftps://carol:@localhost:{port}/m/m.bin"
        curl("--cacert", str(pki.ca), "--cert", str(carol_cert), "--key", str(carol_key), "-T", str(src), ftps_url)
        assert sha256_file(mtls_vs.root / "m.bin") == digest
    finally:
        g.stop()
        mtls_vs.stop()


def test_changing_into_a_mount_logs_in_to_its_endpoint_before_any_file_command(gw):
    """FTP clients change into a directory before they ask for its files; the gateway logs in to
    the mount's endpoint then, in the background, so the first SIZE or RETR does not wait for
    the endpoint's login (curl then sleeps up to a second before its next command: the
    whole-command figures in docs/performance.md)."""
    before = {e["session"] for e in gw.events("sessionStart")}
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        session = next(e["session"] for e in gw.events("sessionStart") if e["session"] not in before)
        f.cwd("/")
        f.cwd("/vsi")
        # Nothing after the CWD: the connection is the CWD's doing.
        leg = gw.wait_event("backendConnected", session=session, endpoint="vsftpd-implicit")
        assert leg["protocol"] == "ftps-implicit", leg
        assert f.sendcmd("NOOP").startswith("200")
    finally:
        f.quit()
    legs = [e for e in gw.events("backendConnected") if e["session"] == session]
    # One connection for the metadata commands; changing into the virtual root makes none.
    assert [e["endpoint"] for e in legs] == ["vsftpd-implicit"], legs


def test_unreachable_backend_is_a_clear_error(gw):
    endpoint = gw.config["endpoints"][1]
    good = endpoint["addresses"]
    reloads = len(gw.events("configReloaded"))
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    f.storbinary("STOR /vs/reach.txt", open_bytes(b"reachable"))
    try:
        endpoint["addresses"] = ["127.0.0.1:1"]
        gw.write_config(gw.config)
        wait_reloads(gw, reloads + 1)
        with pytest.raises(ftplib.error_temp, match="^451.*unavailable"):
            f.size("/vs/reach.txt")
        assert f.sendcmd("NOOP").startswith("200")
        # Failover: a dead first address, a live second one.
        endpoint["addresses"] = ["127.0.0.1:1", *good]
        gw.write_config(gw.config)
        wait_reloads(gw, reloads + 2)
        assert f.size("/vs/reach.txt") == len(b"reachable")
    finally:
        f.quit()
        endpoint["addresses"] = good
        gw.write_config(gw.config)
        wait_reloads(gw, reloads + 3)


def test_listener_tls_follows_a_reload_and_open_sessions_keep_theirs(gw):
    """A listener's TLS config is built once per config generation, not per connection, and a
    reload rebuilds it: raising the floor to TLS 1.3 refuses a new TLS 1.2 handshake at once,
    while a session opened before goes on, its data connections included."""
    listener = gw.config["listeners"][1]
    assert listener["name"] == "ftps"
    old = listener["tls"]
    reloads = len(gw.events("configReloaded"))

    def tls12_login():
        f = ReusingFTP_TLS(context=tls_context(gw.pki.ca), timeout=30)
        f.context.maximum_version = ssl.TLSVersion.TLSv1_2
        f.connect("localhost", gw.ftps_port)
        f.auth()
        f.login("alice", "alice-pw")
        f.prot_p()
        return f

    before = tls12_login()
    assert before.sock.version() == "TLSv1.2"
    try:
        listener["tls"] = {**old, "minVersion": "1.3"}
        gw.write_config(gw.config)
        wait_reloads(gw, reloads + 1)
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
            tls12_login()
        f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
        assert f.sock.version() == "TLSv1.3"
        f.quit()
        before.storbinary("STOR /local/tls12.txt", open_bytes(b"still here"))
        assert (gw.local / "tls12.txt").read_bytes() == b"still here"
        assert before.sendcmd("NOOP").startswith("200")
    finally:
        before.quit()
        listener["tls"] = old
        gw.write_config(gw.config)
        wait_reloads(gw, reloads + 2)
    after = tls12_login()
    assert after.sock.version() == "TLSv1.2"
    after.quit()


def wait_reloads(gw, n: int) -> None:
    deadline = time.monotonic() + 15
    while len(gw.events("configReloaded")) < n:
        assert time.monotonic() < deadline, "the gateway did not reload"
        time.sleep(0.05)


# --- Rotation ------------------------------------------------------------------------------------


def test_certificate_rotation_with_a_session_open(gw, pki):
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    old = f.sock.getpeercert(binary_form=True)
    try:
        cert, key = pki.issue("gateway-2", "localhost")
        # Key first, then certificate: the reload that sees a mismatched pair is rejected and
        # the one after it loads.
        shutil.copy(key, gw.dir / "tls" / "server.key")
        shutil.copy(cert, gw.dir / "tls" / "server.pem")
        new_sha = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(c["sha256"] == new_sha for e in gw.events("configReloaded") for c in e["certificates"]):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the gateway never loaded the new certificate")
        # The live session continues, data connections included (they resume its session).
        assert f.nlst("/local") is not None
        assert f.sendcmd("NOOP").startswith("200")
        # A new login sees the new certificate.
        g = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
        assert g.sock.getpeercert(binary_form=True) != old
        assert hashlib.sha256(g.sock.getpeercert(binary_form=True)).hexdigest() == new_sha
        g.quit()
    finally:
        f.quit()


# --- helpers -------------------------------------------------------------------------------------


def open_bytes(b: bytes):
    return io.BytesIO(b)


def read_resumed(f: ftplib.FTP_TLS, data: socket.socket) -> bytes:
    """A download's bytes off the data connection `data`, its TLS resuming the session of the
    control connection `f` (as curl, lftp and FileZilla do)."""
    tls = f.context.wrap_socket(data, server_hostname="localhost", session=f.sock.session)
    got = b""
    while chunk := tls.recv(65536):
        got += chunk
    tls.close()
    return got


def parse_pasv(resp: str) -> tuple[str, int]:
    nums = resp[resp.index("(") + 1 : resp.index(")")].split(",")
    return ".".join(nums[:4]), int(nums[4]) * 256 + int(nums[5])


def test_audit_never_holds_a_password_or_a_raw_line_separator(gw, tmp_path):
    """`PASS<TAB>secret` used to be recorded as the verb `PASS\\tSECRET…`, and `PASSsecret`
    (no separator) echoed in the 500 reply the audit records; U+2028/U+2029/U+0085 in a path
    were written raw, which log shippers read as line breaks."""
    before = len(gw.audit_path.read_bytes())
    f = ftplib.FTP_TLS(context=tls_context(gw.pki.ca), timeout=30)
    f.connect("localhost", gw.ftps_port)
    f.auth()
    f.sendcmd("USER alice")
    with pytest.raises(ftplib.error_perm):
        f.sendcmd("PASS\tTab-Secret-1")
    f.sendcmd("USER alice")
    with pytest.raises(ftplib.error_perm):
        f.sendcmd("PASSGlued-Secret-2")
    f.sendcmd("USER alice")
    assert f.sendcmd("PASS\talice-pw").startswith("230")
    with pytest.raises(ftplib.error_perm):
        f.sendcmd("SIZE /local/a\u2028b\u2029c\u0085d")
    f.quit()
    # ftpCommand records are queued, not awaited: wait until the SIZE one is written.
    deadline = time.monotonic() + 10
    while not (sizes := [e for e in gw.events("ftpCommand")
                         if e["verb"] == "SIZE" and "\u2028" in (e["argument"] or "")]):
        assert time.monotonic() < deadline, "the SIZE command was not recorded"
        time.sleep(0.05)
    written = gw.audit_path.read_bytes()[before:]
    for secret in (b"Tab-Secret", b"TAB-SECRET", b"Glued-Secret", b"GLUED-SECRET", b"alice-pw"):
        assert secret not in written, secret
    for raw in ("\u2028", "\u2029", "\u0085"):
        assert raw.encode() not in written, repr(raw)
    assert sizes[-1]["argument"] == "/local/a\u2028b\u2029c\u0085d", "the path is kept, escaped"
    passes = [e for e in gw.events("ftpCommand") if e["verb"] == "PASS"]
    assert passes[-3:] and all(e["argument"] in (None, "********") for e in passes[-3:])


def test_unauthenticated_line_flood_is_bounded(gw):
    """20,000 blank lines before AUTH TLS wrote 20,000 ftpCommand records. A connection that
    sends more than 16 refused (or 64 any) commands before a login is closed with 421, and
    the audit holds a bounded number of records for it."""
    before = len(gw.events())
    s, c = raw_control(gw.ftps_port)
    try:
        assert c.reply()[0] == 220
        # A line at a time, each reply read: a flood sent at once would make the gateway's
        # close a reset, which discards the replies still unread here.
        codes = []
        try:
            for _ in range(20000):
                codes.append(c.cmd(b"\r\n")[0])
                if codes[-1] == 421:
                    break
        except (EOFError, OSError, ValueError):
            pass
    finally:
        s.close()
    assert codes and codes[-1] == 421 and len(codes) <= 18, (len(codes), codes[-3:])
    time.sleep(0.5)
    mine = [e for e in gw.events()[before:] if e["event"] in ("ftpCommand", "connectionRefused")]
    assert len(mine) <= 18, len(mine)
    assert any(e["event"] == "connectionRefused" and "too many commands before a login" in e["reason"]
               for e in mine), mine[-2:]
    # Others are not affected.
    f = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    assert f.pwd() == "/"
    f.quit()


def test_one_session_holds_at_most_four_ftps_backend_files(gw, vsftpd):
    """Every file open on an FTPS endpoint is a backend connection of its own: 19 handles
    in one SFTP session reached vsftpd's per-address limit and locked other users out. Now a
    session holds at most limits.maxBackendConnectionsPerSession (default 4) files there at
    once; the next open is refused with the reason, and closing one makes room."""
    t = paramiko.Transport(("127.0.0.1", gw.port))
    try:
        t.connect(username="alice", password="alice-pw")
        sftp = paramiko.SFTPClient.from_transport(t)
        sftp.putfo(io.BytesIO(b"c" * 1000), "/vs/cap.txt")
        held = [sftp.open("/vs/cap.txt", "rb") for _ in range(4)]
        with pytest.raises(IOError, match="too many open files on endpoint vsftpd"):
            sftp.open("/vs/cap.txt", "rb")
        # Other endpoints are not held back by this one's limit.
        sftp.putfo(io.BytesIO(b"l" * 10), "/local/cap.txt")
        held.pop().close()
        with sftp.open("/vs/cap.txt", "rb") as f:
            assert f.read() == b"c" * 1000
        for f in held:
            assert f.read() == b"c" * 1000
            f.close()
        sftp.remove("/vs/cap.txt")
        sftp.remove("/local/cap.txt")
    finally:
        t.close()


def test_a_session_holds_one_passive_port_however_often_it_asks(gw):
    """One user sending EPSV again and again must not empty the listener's pool (32 ports
    here): each PASV/EPSV withdraws the session's earlier offer and gives its port back. After
    40 requests on one connection, another session still gets a port, and the last offered
    port is the only one this session can still use."""
    import re

    a = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    b = ftps_login(gw.ftps_port, gw.pki.ca, "alice", "alice-pw")
    try:
        ports = []
        for i in range(40):
            reply = a.sendcmd("EPSV" if i % 2 else "PASV")
            if reply.startswith("229"):
                ports.append(int(re.search(r"\(\|\|\|(\d+)\|\)", reply).group(1)))
            else:
                h = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", reply).groups()
                ports.append(int(h[4]) * 256 + int(h[5]))
        reply = b.sendcmd("EPSV")
        assert reply.startswith("229"), "the pool is not empty"
        taken = {ports[-1], int(re.search(r"\(\|\|\|(\d+)\|\)", reply).group(1))}
        # Only the last offer is open: the earlier ports were closed again.
        for p in set(ports[-6:-1]) - taken:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", p), timeout=2).close()
        assert a.sendcmd("NOOP").startswith("200"), "the session goes on"
    finally:
        a.close()
        b.close()
