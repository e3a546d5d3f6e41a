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

from harness import GATEWAY_BIN, Gateway, fresh_dir

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
