"""End to end: the audit trail an auditor checks. The real gateway writes a chained trail with
signed Ed25519 checkpoints to a file; it is killed mid-stream and restarted; the product's own
`audit verify` CLI must pass the result and name each kind of tampering. An independent
verifier (Python, `cryptography`) checks the same signatures, so the format is not only
self-consistent."""

import hashlib
import io
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from collector import Collector
from harness import GATEWAY_BIN, Gateway, free_port, fresh_dir

VERBS = ["list", "read", "write", "delete", "mkdir", "rmdir", "rename", "setattr"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GATEWAY_BIN), *args], capture_output=True, text=True, timeout=120)


def verify(trail: Path, key: Path | None, *extra: str) -> subprocess.CompletedProcess:
    return cli("audit", "verify", *(["--key", str(key)] if key else []), *extra, str(trail))


@pytest.fixture
def signed(sshd, passwords):
    """A gateway whose trail is a file with a checkpoint every second, and its key pair."""
    d = fresh_dir("audit-signed")
    data = sshd.root / "audit-signed"
    subprocess.run(["rm", "-rf", str(data)], check=True)
    data.mkdir()
    r = cli("audit", "keygen", str(d / "signing.pem"))
    assert r.returncode == 0, r.stderr
    assert (d / "signing.pem").stat().st_mode & 0o077 == 0, "the private key is readable by others"
    trail = d / "trail"
    trail.mkdir()
    config = {
        "endpoints": [sshd.endpoint("backend")],
        "users": [{"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["rw"]}],
        "roles": [{"name": "rw", "mounts": [{"path": "/files", "endpoint": "backend", "backendPath": str(data),
                                              "verbs": VERBS}]}],
        "audit": {"stdout": False, "file": str(trail / "audit.jsonl"),
                  "signingKeyFile": str(d / "signing.pem"), "checkpointSeconds": 1},
    }
    g = Gateway(d, config)
    g.audit_path = trail / "audit.jsonl"
    yield g, trail, d / "signing.pub"
    g.stop()


def traffic(g: Gateway, stop: threading.Event) -> None:
    """Sessions that log in, write, list and leave, until told to stop (or the gateway dies)."""
    i = 0
    while not stop.is_set():
        try:
            t = paramiko.Transport(("127.0.0.1", g.port))
            t.connect(username="alice", password="alice-pw")
            s = paramiko.SFTPClient.from_transport(t)
            s.putfo(io.BytesIO(b"x" * 1000), f"/files/t{i % 5}.bin")
            s.listdir("/files")
            t.close()
        except Exception:
            time.sleep(0.05)
        i += 1


def independent_check(trail: Path, public_pem: Path) -> tuple[int, int]:
    """The chain and every checkpoint signature, checked without the product's code: (records,
    checkpoints)."""
    key = load_pem_public_key(public_pem.read_bytes())
    prev = "0" * 64
    seq = 0
    checkpoints = 0
    for line in (trail / "audit.jsonl").read_bytes().split(b"\n")[:-1]:
        line += b"\n"
        r = json.loads(line)
        assert r["v"] == 1
        assert r["seq"] == seq + 1 and r["prev"] == prev, r
        if r["event"] == "checkpoint":
            message = f"portcullis-audit-checkpoint/1\n{seq}\n{prev}\n{r['time']}\n".encode()
            key.verify(bytes.fromhex(r["signature"]), message)  # raises if bad
            checkpoints += 1
        seq, prev = r["seq"], hashlib.sha256(line).hexdigest()
    return seq, checkpoints


def test_a_killed_gateway_continues_its_signed_chain_and_verify_passes(signed):
    g, trail, pub = signed
    stop = threading.Event()
    worker = threading.Thread(target=traffic, args=(g, stop))
    worker.start()
    try:
        g.wait_event("checkpoint", timeout=15)
        time.sleep(0.5)
        g.stop(sig=signal.SIGKILL)  # mid-stream: sessions and records in flight
        killed_at = len(g.events())
        assert killed_at > 5
        # A live trail verifies (its tail is not signed yet), a closed one would not.
        r = verify(trail, pub, "--live")
        assert r.returncode == 0, r.stdout + r.stderr
        g.start()
        resumed = g.wait_event("chainResumed", timeout=10)
        deadline = time.monotonic() + 15
        while not any(e["event"] == "checkpoint" and e["seq"] > resumed["seq"] for e in g.events()):
            assert time.monotonic() < deadline, "no checkpoint after the restart"
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(60)
    assert g.stop() == 0
    events = g.events()
    resumed = [e for e in events if e["event"] == "chainResumed"]
    assert len(resumed) == 1 and resumed[0]["headLost"] is None, resumed
    assert events[-1]["event"] == "checkpoint", "a clean stop ends the trail with a signed checkpoint"

    r = verify(trail, pub)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"ok: {len(events)} records in 1 file(s)"), r.stdout
    assert "1 restart(s); signatures checked" in r.stdout, r.stdout
    assert independent_check(trail, pub)[0] == len(events)

    # Without a key only the chain is checked, and the summary says so.
    r = verify(trail, None)
    assert r.returncode == 0 and "NOT checked" in r.stdout, r.stdout


def test_verify_names_each_kind_of_tampering(signed, tmp_path):
    g, trail, pub = signed
    for _ in range(3):
        t = paramiko.Transport(("127.0.0.1", g.port))
        t.connect(username="alice", password="alice-pw")
        paramiko.SFTPClient.from_transport(t).listdir("/files")
        t.close()
    g.wait_event("sessionEnd")
    assert g.stop() == 0
    good = (trail / "audit.jsonl").read_bytes().split(b"\n")[:-1]
    good = [line + b"\n" for line in good]
    assert len(good) >= 10

    def check(lines: list[bytes], key: Path | None = pub) -> tuple[int, str]:
        d = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "audit.jsonl").write_bytes(b"".join(lines))
        r = verify(d, key)
        return r.returncode, r.stdout

    def rechain(lines):
        prev, out = "0" * 64, []
        for line in lines:
            r = json.loads(line)
            r["prev"] = prev
            line = (json.dumps(r, separators=(",", ":")) + "\n").encode()
            out.append(line)
            prev = hashlib.sha256(line).hexdigest()
        return out

    def edit(line: bytes) -> bytes:
        r = json.loads(line)
        r["time"] = "2000-01-01T00:00:00.000000Z"
        return (json.dumps(r, separators=(",", ":")) + "\n").encode()

    assert check(good)[0] == 0
    cases = {
        "edited": (good[:3] + [edit(good[3])] + good[4:], ":4: edited"),
        "deleted": (good[:3] + good[4:], ":4: deleted"),
        "inserted": (good[:5] + [good[2]] + good[5:], ":6: inserted"),
        "reordered": (good[:3] + [good[4], good[3]] + good[5:], ":4: reordered"),
        "truncated": (good[:-3], "unsigned tail"),
        "rebuilt": (rechain(good[:3] + [edit(good[3])] + good[4:]), "bad signature"),
    }
    for name, (lines, expected) in cases.items():
        rc, out = check(lines)
        assert rc == 1, (name, out)
        assert out.startswith("TAMPERED: ") and expected in out, (name, out)

    other = tmp_path / "other.pem"
    assert cli("audit", "keygen", str(other)).returncode == 0
    rc, out = check(good, key=tmp_path / "other.pub")
    assert rc == 1 and "unknown key" in out, out

    # The public key `audit public-key` derives is the one keygen wrote.
    r = cli("audit", "public-key", str(pub.with_suffix(".pem")))
    assert r.returncode == 0 and r.stdout == pub.read_text()


def test_a_reload_cannot_change_the_audit_settings(signed):
    g, trail, pub = signed
    c = dict(g.config)
    c["audit"] = dict(c["audit"], checkpointSeconds=30)
    g.write_config(c)
    rejected = g.wait_event("configRejected", timeout=20)
    assert any(e.startswith("audit: ") and "only at a restart" in e for e in rejected["errors"]), rejected
    status, body = g.http("/config")
    assert status == 200 and json.loads(body)["refused"] is not None, body


def failclosed_gateway(name: str, sshd, passwords, audit: dict, before_start=None) -> tuple[Gateway, Path, Path, object]:
    """A gateway with SFTP and explicit FTPS listeners in front of the real sshd, its trail in
    its own directory with the given audit settings, signed."""
    from ftps import Pki, free_port_range

    d = fresh_dir(name)
    pki = Pki(d / "pki")
    cert, key = pki.issue("gateway", "localhost")
    data = sshd.root / name
    subprocess.run(["rm", "-rf", str(data)], check=True)
    data.mkdir()
    assert cli("audit", "keygen", str(d / "signing.pem")).returncode == 0
    trail = d / "trail"
    trail.mkdir()
    if before_start:
        before_start(trail / "audit.jsonl")
    g = Gateway(d, {}, start=False)
    g.audit_path = trail / "audit.jsonl"
    g.ftps_port = free_port()
    g.pki = pki
    g.config.update({
        "listeners": [
            {"name": "sftp", "protocol": "sftp", "address": f"127.0.0.1:{g.port}", "zones": ["loopback"]},
            {"name": "ftps", "protocol": "ftps", "address": f"127.0.0.1:{g.ftps_port}", "zones": ["loopback"],
             "tls": {"keyRing": "gw"}, "passivePorts": {"min": (p := free_port_range(8)), "max": p + 7}},
        ],
        "keyRings": [{"name": "gw", "certificateFile": str(cert), "privateKeyFile": str(key)}],
        "endpoints": [sshd.endpoint("backend")],
        "users": [{"name": "alice", "passwordHash": passwords["alice-pw"], "zones": ["loopback"], "roles": ["rw"]}],
        "roles": [{"name": "rw", "mounts": [{"path": "/files", "endpoint": "backend", "backendPath": str(data),
                                              "verbs": VERBS}]}],
        "audit": {"stdout": False, "file": str(g.audit_path), "signingKeyFile": str(d / "signing.pem"),
                  "checkpointSeconds": 1, **audit},
    })
    g.write_config(g.config)
    return g, trail, d / "signing.pub", pki


def metric(g: Gateway, name: str, **labels) -> float:
    for line in g.http("/metrics")[1].splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def trail_records(trail: Path) -> list[dict]:
    out = []
    for f in sorted(trail.iterdir()):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return sorted(out, key=lambda r: r["seq"])


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


REFUSED = "the audit trail cannot be made durable"


def test_a_full_spool_refuses_new_logins_and_transfers_until_files_are_shipped(sshd, passwords):
    """whenFull: refuse. Sessions fill a 16 KiB spool (4 KiB files); then OpenSSH sftp and
    ftplib logins are refused with the reason (SSH disconnect, FTP 421), sessions already in
    can list but not start a transfer (SFTP failure, FTP 451), and /readyz says 503. Shipping
    (deleting) the rotated files resumes service within seconds; the refusal and the recovery
    are in the trail, which verifies with the key."""
    import ftplib

    from ftps import ftps_login

    g, trail, pub, pki = failclosed_gateway(
        "audit-spool", sshd, passwords, {"rotateBytes": 4096, "maxBytes": 16384, "whenFull": "refuse"})
    g.start()
    try:
        sftp_a, t_a = g.paramiko("alice", password="alice-pw")
        ftp = ftps_login(g.ftps_port, pki.ca, "alice", "alice-pw")
        sessions = 0
        while metric(g, "portcullis_audit_refusing") == 0:
            try:
                s, t = g.paramiko("alice", password="alice-pw")
                s.listdir("/files")
                t.close()
            except Exception:
                pass  # the login that found the spool full
            sessions += 1
            assert sessions < 300, "the spool never filled"
        status, body = g.http("/readyz")
        assert status == 503 and REFUSED in body and "spool is full" in body, body

        r = g.sftp("alice", "ls /files\n", password="alice-pw", check=False)
        assert r.returncode != 0, r.stdout
        assert f"login refused: {REFUSED}".encode() in r.stderr, r.stderr
        with pytest.raises(ftplib.error_temp, match=r"^421 Service not available, login refused"):
            ftps_login(g.ftps_port, pki.ca, "alice", "alice-pw")

        # Sessions already in go on, but start no transfer.
        assert isinstance(sftp_a.listdir("/files"), list)
        with pytest.raises(IOError, match="transfer refused"):
            sftp_a.open("/files/refused.bin", "w")
        with pytest.raises(ftplib.error_temp, match=r"^451 .*transfer refused"):
            ftp.storbinary("STOR /files/refused-ftp.bin", io.BytesIO(b"x" * 100))
        assert metric(g, "portcullis_audit_refusals_total", refused="login") >= 2
        assert metric(g, "portcullis_audit_refusals_total", refused="transfer") >= 2
        before = trail_records(trail)
        degraded = [e for e in before if e["event"] == "auditDegraded"]
        assert len(degraded) == 1 and degraded[0]["cause"] == "spoolFull" and degraded[0]["refusing"], degraded
        refused_logins = [e for e in before if e["event"] == "logonFailure" and "failClosed" in e["reason"]]
        assert len(refused_logins) >= 2, refused_logins

        # Ship the rotated files (here: delete them); service resumes.
        for f in trail.iterdir():
            if f.name != "audit.jsonl":
                f.unlink()
        wait_until(lambda: metric(g, "portcullis_audit_refusing") == 0, 10, "service did not resume")
        assert g.http("/readyz")[0] == 200
        sftp_a.putfo(io.BytesIO(b"a" * 1000), "/files/after-a.bin")
        assert ftp.storbinary("STOR /files/after-ftp.bin", io.BytesIO(b"f" * 1000)).startswith("226")
        ftp.quit()
        g.sftp("alice", "ls /files\n", password="alice-pw")
        t_a.close()
    finally:
        assert g.stop() == 0
    restored = [e for e in trail_records(trail) if e["event"] == "auditRestored"]
    assert [e["cause"] for e in restored] == ["spoolFull"], restored
    r = verify(trail, pub)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "begins after " in r.stdout, r.stdout
    # Asked for the whole trail, the shipped files are missed.
    r = verify(trail, pub, "--from-start")
    assert r.returncode == 1 and "missing file" in r.stdout, r.stdout


def test_a_disk_that_refuses_records_closes_the_gateway_and_loses_nothing(sshd, passwords):
    """failClosed (the default): the trail's file is /dev/full, so every write fails (ENOSPC).
    The gateway starts but is not ready, refuses logins with the reason, and keeps every record
    in memory; once the file takes writes, all of them land in order from daemonStart on,
    service resumes, and the trail verifies."""
    g, trail, pub, _ = failclosed_gateway(
        "audit-devfull", sshd, passwords, {}, before_start=lambda p: p.symlink_to("/dev/full"))
    g.start(ready="/healthz")
    try:
        wait_until(lambda: g.http("/readyz")[0] == 503, 10, "ready with an unwritable trail")
        assert "No space left on device" in g.http("/readyz")[1]
        r = g.sftp("alice", "ls /files\n", password="alice-pw", check=False)
        assert r.returncode != 0 and f"login refused: {REFUSED}".encode() in r.stderr, r.stderr
        # The disk takes writes again.
        g.audit_path.unlink()
        g.audit_path.write_text("")
        wait_until(lambda: g.http("/readyz")[0] == 200, 10, "service did not resume")
        g.sftp("alice", "put /etc/hostname /files/h\n", password="alice-pw")
    finally:
        assert g.stop() == 0
    events = g.events()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "daemonStart", kinds[:3]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert kinds.index("auditDegraded") < kinds.index("auditRestored"), kinds
    assert events[kinds.index("auditDegraded")]["cause"] == "writeError"
    refused = [e for e in events if e["event"] == "logonFailure"]
    assert refused and all("failClosed" in e["reason"] for e in refused), refused
    assert any(e["event"] == "transferEnd" and e["path"] == "/files/h" for e in events)
    r = verify(trail, pub)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_transfer_receipt_is_checked_offline_with_the_public_key(signed, tmp_path):
    """Every transfer's record is signed on its own (a checkpoint follows it at once), so
    `audit receipt` gives a partner two lines that prove the transfer and nothing about anyone
    else's; `audit check-receipt` and an independent check with `cryptography` accept them, and
    any change to the record is refused."""
    g, trail, pub = signed
    payload = b"receipt me " * 1000
    s, t = g.paramiko("alice", password="alice-pw")
    s.putfo(io.BytesIO(payload), "/files/receipt.bin")
    t.close()
    end = g.wait_event("transferEnd", path="/files/receipt.bin")
    assert end["sha256"] == hashlib.sha256(payload).hexdigest()
    r = cli("audit", "receipt", "--transfer", end["transfer"], str(trail))
    assert r.returncode == 0, r.stderr
    receipt = tmp_path / "receipt.jsonl"
    receipt.write_text(r.stdout)
    lines = r.stdout.encode().split(b"\n")[:-1]
    assert len(lines) == 2 and json.loads(lines[0])["transfer"] == end["transfer"]

    r = cli("audit", "check-receipt", "--key", str(pub), str(receipt))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"ok: transfer {end['transfer']}: upload of /files/receipt.bin by alice"), r.stdout
    assert f"{len(payload)} bytes, sha256 {end['sha256']}, confidence High" in r.stdout, r.stdout

    # Independently: the checkpoint signs (seq, sha256 of the record's line, its time).
    record, checkpoint = lines[0] + b"\n", json.loads(lines[1])
    seq, head = json.loads(record)["seq"], hashlib.sha256(record).hexdigest()
    assert checkpoint["seq"] == seq + 1 and checkpoint["prev"] == head
    message = f"portcullis-audit-checkpoint/1\n{seq}\n{head}\n{checkpoint['time']}\n".encode()
    load_pem_public_key(pub.read_bytes()).verify(bytes.fromhex(checkpoint["signature"]), message)

    forged = tmp_path / "forged.jsonl"
    forged.write_text(receipt.read_text().replace(end["sha256"], "0" * 64, 1))
    r = cli("audit", "check-receipt", "--key", str(pub), str(forged))
    assert r.returncode == 1 and r.stdout.startswith("NOT VALID"), r.stdout
    r = cli("audit", "receipt", "--transfer", "no-such-transfer", str(trail))
    assert r.returncode == 1 and "no transferEnd record" in r.stderr, r.stderr


def test_the_collector_gets_every_record_across_an_outage_and_the_spool_drains(sshd, passwords):
    """audit.collector: under a load of SFTP sessions the HTTPS collector goes away for 3 s and
    comes back. Every record of the trail reaches it (0 lost); after deduplication by (source,
    seq) none is doubled; the lines it holds are the trail byte for byte (its chain and
    signatures verify); and the shipped rotated files are gone from the pod's spool."""
    from ftps import Pki

    pki = Pki(fresh_dir("audit-collector-pki"))
    collector = Collector(*pki.issue("collector", "localhost"))
    g, trail, pub, _ = failclosed_gateway("audit-collector", sshd, passwords, {
        "rotateBytes": 8192, "maxBytes": 4 << 20,
        "collector": {"url": f"https://localhost:{collector.port}/ingest", "caFile": str(pki.ca),
                      "batchRecords": 50, "source": "gw-0"}})
    g.start()
    stop = threading.Event()
    worker = threading.Thread(target=traffic, args=(g, stop))
    worker.start()
    try:
        wait_until(lambda: collector.received > 100, 30, "nothing reached the collector")
        collector.stop()
        time.sleep(3)
        wait_until(lambda: metric(g, "portcullis_audit_ship_failures_total") > 0, 10, "the outage went unnoticed")
        collector.start()
        time.sleep(2)
    finally:
        stop.set()
        worker.join(60)
    assert g.stop() == 0
    last = g.events()[-1]["seq"]
    seqs = sorted(seq for (source, seq) in collector.records)
    assert seqs == list(range(1, last + 1)), f"lost: {sorted(set(range(1, last + 1)) - set(seqs))[:20]}"
    print(f"collector: {last} records, {collector.received - len(collector.records)} sent twice (dedup)")
    shipped = fresh_dir("audit-collector-shipped")
    (shipped / "audit.jsonl").write_bytes(b"".join(collector.records[("gw-0", s)] for s in seqs))
    r = verify(shipped, pub)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(trail.glob("audit-*.jsonl")) == [], "shipped rotated files were kept"
    assert any(json.loads(line)["event"] == "fileStart" for line in collector.records.values())


def test_delete_oldest_names_the_records_it_deleted_and_that_the_collector_never_had_them(sshd, passwords):
    """`whenFull: deleteOldest` with the collector unreachable: service goes on, the oldest
    rotated files go, and each `auditFilesDeleted` says which records (`firstSeq..lastSeq`) and
    that they were not shipped; the trail left begins right after them and verifies."""
    from ftps import Pki

    pki = Pki(fresh_dir("audit-delete-pki"))
    g, trail, pub, _ = failclosed_gateway("audit-delete", sshd, passwords, {
        "rotateBytes": 4096, "maxBytes": 16384, "whenFull": "deleteOldest",
        "collector": {"url": f"https://localhost:{free_port()}/ingest", "caFile": str(pki.ca), "source": "gw-0"}})
    g.start()

    def records() -> list[dict]:
        return [json.loads(line) for f in trail.glob("audit*.jsonl") for line in f.read_text().splitlines()
                if line.startswith("{")]
    stop = threading.Event()
    worker = threading.Thread(target=traffic, args=(g, stop))
    worker.start()
    try:
        wait_until(lambda: sum(r["event"] == "auditFilesDeleted" for r in records()) >= 2, 60,
                   "no files were deleted")
    finally:
        stop.set()
        worker.join(60)
    # Still serving: deleteOldest never refuses.
    t = paramiko.Transport(("127.0.0.1", g.port))
    t.connect(username="alice", password="alice-pw")
    t.close()
    assert g.stop() == 0
    recs = records()
    deletions = sorted((r for r in recs if r["event"] == "auditFilesDeleted"), key=lambda r: r["seq"])
    for d in deletions:
        assert d["unshipped"] is True and d["files"] and 1 <= d["firstSeq"] <= d["lastSeq"] < d["seq"], d
        assert d["files"][0].endswith(f"-{d['firstSeq']:020}.jsonl"), d
    for a, b in zip(deletions, deletions[1:]):
        assert b["firstSeq"] == a["lastSeq"] + 1, (a, b)
    assert min(r["seq"] for r in recs) == deletions[-1]["lastSeq"] + 1
    r = verify(trail, pub)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "begins after" in r.stdout, r.stdout


def test_every_record_type_appears_through_sftp_and_ftps(sshd, passwords):
    """One gateway, both protocols, the events an auditor asks about: a failed login, a denied
    operation, an aborted and a completed transfer on each protocol; a backend failover (the
    endpoint's first address is dead); and a reload. Each appears in the trail, tied to its
    protocol or session, and the trail verifies with the key."""
    import ftplib
    import os
    import socket

    from ftps import ftps_login

    g, trail, pub, pki = failclosed_gateway("audit-every", sshd, passwords, {})
    data = sshd.root / "audit-every"
    (data / "big.bin").write_bytes(os.urandom(8 << 20))
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    g.config["endpoints"] = [sshd.endpoint("backend", addresses=[f"127.0.0.1:{dead.getsockname()[1]}",
                                                                 f"127.0.0.1:{sshd.port}"])]
    g.config["roles"][0]["mounts"].append(
        {"path": "/ro", "endpoint": "backend", "backendPath": str(data), "verbs": ["list", "read"]})
    g.write_config(g.config)
    g.start()
    try:
        # SFTP: a wrong password, a completed upload, a denied write, an abandoned download.
        with pytest.raises(paramiko.AuthenticationException):
            g.paramiko("alice", password="wrong")
        s, t = g.paramiko("alice", password="alice-pw")
        s.putfo(io.BytesIO(b"s" * 10000), "/files/sftp-done.bin")
        with pytest.raises(IOError):
            s.open("/ro/sftp-denied.bin", "w")
        f = s.open("/files/big.bin")
        f.read(32768)
        f.close()
        t.close()
        # FTPS: the same.
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftps_login(g.ftps_port, pki.ca, "alice", "wrong")
        ftp = ftps_login(g.ftps_port, pki.ca, "alice", "alice-pw")
        assert ftp.storbinary("STOR /files/ftps-done.bin", io.BytesIO(b"f" * 10000)).startswith("226")
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.storbinary("STOR /ro/ftps-denied.bin", io.BytesIO(b"x"))
        conn = ftp.transfercmd("RETR /files/big.bin")
        assert len(conn.recv(65536)) > 0
        ftp.putcmd("ABOR")
        assert ftp.getline().startswith("426")
        conn.close()
        assert ftp.getline().startswith("226")
        ftp.quit()
        # A reload.
        g.config["limits"] = {"idleTimeoutSeconds": 600}
        g.write_config(g.config)
        g.wait_event("configReloaded", timeout=20)
    finally:
        dead.close()
        assert g.stop() == 0
    events = g.events()
    sessions = {e["session"]: e["protocol"] for e in events if e["event"] == "sessionStart"}
    for protocol in ["sftp", "ftps"]:
        mine = {s for s, p in sessions.items() if p == protocol}
        failed = [e for e in events if e["event"] == "logonFailure" and e["protocol"] == protocol]
        assert failed and failed[0]["reason"] == "wrong password", (protocol, failed)
        denied = [e for e in events if e["event"] == "policyDenied" and e["session"] in mine]
        assert denied and denied[0]["path"] == f"/ro/{protocol}-denied.bin", (protocol, denied)
        ends = {e["path"]: e for e in events if e["event"] == "transferEnd" and e["session"] in mine}
        assert ends[f"/files/{protocol}-done.bin"]["confidence"] == "High", (protocol, ends)
        assert ends["/files/big.bin"]["confidence"] == "NoEOF", (protocol, ends)
        legs = [e for e in events if e["event"] == "backendConnected" and e["session"] in mine]
        assert legs and all(e["attempt"] == 2 and e["channel"].startswith("SSH-2.0 ") for e in legs), (protocol, legs)
        starts = [e for e in events if e["event"] == "sessionStart" and e["session"] in mine]
        assert all(e["channel"] for e in starts), starts
    assert any(e["event"] == "configReloaded" for e in events)
    assert events[-1]["event"] == "checkpoint"
    r = verify(trail, pub)
    assert r.returncode == 0, r.stdout + r.stderr
