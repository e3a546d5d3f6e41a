"""`kubectl portcullis policy explain` against the real thing: a folder of policy is compiled by
the plugin (`policy compile`, the operator's own compile step), the real gateway serves it with
the real sshd behind, and for each request of a table the plugin's decision must equal what a
real session from the request's source address is allowed to do: SFTP (paramiko) and explicit
FTPS (Python's ftplib).

The source addresses are 127.0.0.1 (zone `office`), 127.0.0.2 (zone `partners`) and
127.0.0.3 (no zone): loopback holds the whole 127.0.0.0/8."""

import ftplib
import io
import json
import socket
import ssl
import subprocess
from pathlib import Path

import paramiko

from ftps import ReusingFTP_TLS, free_port_range
from harness import ROOT, Gateway, free_port, fresh_dir, hash_password, keygen, pubkey

PLUGIN = ROOT / "target" / "release" / "kubectl-portcullis"


def plugin(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(PLUGIN), *args], capture_output=True, text=True, check=check, timeout=60)


def policy(sshd, gw: Gateway, data: Path, alice_key: Path, bob_hash: str, ftps_port: int,
           passive: int) -> str:
    """The folder's one file: zones, a key ring, an endpoint (the real sshd), two roles, five
    users and a gateway listening where the harness expects it (SFTP) and on `ftps_port`."""
    backend_key = sshd.client_key.read_text()
    return f"""
apiVersion: portcullis.dev/v1alpha1
kind: NetworkZone
metadata: {{name: office}}
spec: {{cidrs: [127.0.0.1/32]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: NetworkZone
metadata: {{name: partners}}
spec: {{cidrs: [127.0.0.2/32]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: KeyRing
metadata: {{name: edge}}
spec: {{issuer: {{type: selfSigned}}, dnsNames: [gw.test]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferEndpoint
metadata: {{name: backend}}
spec:
  protocol: sftp
  addresses: [{{host: 127.0.0.1, port: {sshd.port}}}]
  hostKeys: ['{pubkey(sshd.host_key)}']
  username: {sshd.user}
  credentials: {{secretName: backend-creds}}
---
apiVersion: v1
kind: Secret
metadata: {{name: backend-creds}}
stringData:
  ssh-privatekey: |
{''.join('    ' + l + chr(10) for l in backend_key.splitlines())}
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferRole
metadata: {{name: ops}}
spec:
  mounts:
    - {{path: /in, endpoint: backend, backendPath: {data}/in, verbs: [list, write, mkdir]}}
    - {{path: /out, endpoint: backend, backendPath: {data}/out, verbs: [list, read, delete, rename]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferRole
metadata: {{name: reports}}
spec:
  mounts:
    - {{path: /reports, endpoint: backend, backendPath: {data}/reports, verbs: [list, read]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferUser
metadata: {{name: alice}}
spec:
  publicKeys: ['{pubkey(alice_key)}']
  zones: [office]
  roles: [ops, reports]
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferUser
metadata: {{name: bob}}
spec:
  passwordHash: {{name: bob-pw, key: hash}}
  zones: [partners]
  roles: [reports]
---
apiVersion: v1
kind: Secret
metadata: {{name: bob-pw}}
stringData: {{hash: '{bob_hash}'}}
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferUser
metadata: {{name: carol}}
spec:
  publicKeys: ['{pubkey(alice_key)}']
  disabled: true
  roles: [ops]
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferUser
metadata: {{name: dave}}
spec:
  publicKeys: ['{pubkey(alice_key)}']
  expiresAt: "2020-01-01T00:00:00Z"
  roles: [ops]
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferUser
metadata: {{name: erin}}
spec:
  passwordHash: {{name: bob-pw, key: hash}}
  zones: [office]
  roles: [ops]
---
apiVersion: portcullis.dev/v1alpha1
kind: TransferGateway
metadata: {{name: dmz}}
spec:
  hostKeyRing: edge
  adminPort: {gw.admin_port}
  listeners:
    - {{name: sftp, protocol: sftp, port: {gw.port}, zones: [office, partners]}}
    - {{name: ftps, protocol: ftps, port: {ftps_port}, zones: [office, partners], keyRing: edge,
       passivePorts: {{min: {passive}, max: {passive + 15}}}}}
  defender: {{enabled: false}}
"""


# (user, source address, verb, path). alice: key, office only; bob: password, partners only;
# carol: disabled; dave: expired.
REQUESTS = [
    ("alice", "127.0.0.1", "list", "/"),
    ("alice", "127.0.0.1", "list", "/in"),
    ("alice", "127.0.0.1", "list", "/out"),
    ("alice", "127.0.0.1", "list", "/reports"),
    ("alice", "127.0.0.1", "list", "/nowhere"),
    ("alice", "127.0.0.1", "read", "/out/data.csv"),
    ("alice", "127.0.0.1", "read", "/reports/q3.txt"),
    ("alice", "127.0.0.1", "read", "/in/drop.txt"),
    ("alice", "127.0.0.1", "write", "/in/new.txt"),
    ("alice", "127.0.0.1", "write", "/out/new.txt"),
    ("alice", "127.0.0.1", "write", "/reports/new.txt"),
    ("alice", "127.0.0.1", "write", "/new.txt"),
    ("alice", "127.0.0.1", "write", "/in/../out/sneaky.txt"),
    ("alice", "127.0.0.1", "delete", "/out/old.csv"),
    ("alice", "127.0.0.1", "delete", "/in/drop.txt"),
    ("alice", "127.0.0.1", "delete", "/reports/q3.txt"),
    ("alice", "127.0.0.1", "mkdir", "/in/batch"),
    ("alice", "127.0.0.1", "mkdir", "/out/batch"),
    ("alice", "127.0.0.1", "rmdir", "/in/old-dir"),
    ("alice", "127.0.0.1", "rename", "/out/move.csv"),
    ("alice", "127.0.0.1", "rename", "/in/drop2.txt"),
    ("alice", "127.0.0.1", "setattr", "/in/drop3.txt"),
    ("alice", "127.0.0.1", "setattr", "/out/data.csv"),
    ("alice", "127.0.0.1", "delete", "/out"),
    ("alice", "127.0.0.2", "list", "/"),
    ("alice", "127.0.0.3", "list", "/"),
    ("bob", "127.0.0.2", "list", "/"),
    ("bob", "127.0.0.2", "list", "/reports"),
    ("bob", "127.0.0.2", "read", "/reports/q3.txt"),
    ("bob", "127.0.0.2", "write", "/reports/b.txt"),
    ("bob", "127.0.0.2", "list", "/in"),
    ("bob", "127.0.0.2", "read", "/out/data.csv"),
    ("bob", "127.0.0.1", "list", "/"),
    ("carol", "127.0.0.1", "list", "/in"),
    ("dave", "127.0.0.1", "list", "/in"),
    ("mallory", "127.0.0.1", "list", "/"),
]


# Over explicit FTPS, which offers password and certificate logins only. erin: password,
# office, role ops; bob as above; alice has a key only, so FTPS refuses her at login.
FTPS_REQUESTS = [
    ("erin", "127.0.0.1", "list", "/in"),
    ("erin", "127.0.0.1", "list", "/reports"),
    ("erin", "127.0.0.1", "read", "/out/data.csv"),
    ("erin", "127.0.0.1", "read", "/in/drop.txt"),
    ("erin", "127.0.0.1", "write", "/in/ftps.txt"),
    ("erin", "127.0.0.1", "write", "/out/ftps.txt"),
    ("erin", "127.0.0.1", "delete", "/out/ftps-old.csv"),
    ("erin", "127.0.0.1", "delete", "/in/drop.txt"),
    ("erin", "127.0.0.1", "mkdir", "/in/ftps-batch"),
    ("erin", "127.0.0.1", "mkdir", "/out/ftps-batch"),
    ("erin", "127.0.0.1", "rename", "/out/ftps-move.csv"),
    ("erin", "127.0.0.2", "list", "/in"),
    ("bob", "127.0.0.2", "read", "/reports/q3.txt"),
    ("bob", "127.0.0.2", "write", "/reports/ftps.txt"),
    ("bob", "127.0.0.3", "list", "/reports"),
    ("alice", "127.0.0.1", "list", "/in"),
    ("mallory", "127.0.0.1", "list", "/"),
]


def ftps_session(port: int, user: str, source: str):
    """A real explicit FTPS session from `source` (control and data connections), or None when
    the gateway refuses it. The key ring's CA is not in the bundle, so the certificate is not
    verified here: what is compared is the policy decision, not the TLS trust (tested by the
    FTPS suites)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Data connections resume the control connection's TLS session, as the gateway requires.
    f = ReusingFTP_TLS(context=ctx, timeout=10, source_address=(source, 0))
    try:
        f.connect("127.0.0.1", port)
        f.login(user, "bob-pw")
        f.prot_p()
        return f
    except (ftplib.Error, OSError, EOFError):
        f.close()
        return None


def sftp_session(gw: Gateway, user: str, source: str, alice_key: Path):
    """A real SFTP session from `source`, or None when the gateway refuses it (connection
    closed before the handshake, or authentication failed)."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    try:
        sock.connect(("127.0.0.1", gw.port))
        t = paramiko.Transport(sock)
        t.connect()
        if user == "bob":
            t.auth_password(user, "bob-pw")
        else:
            t.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(str(alice_key)))
        client = paramiko.SFTPClient.from_transport(t)
        client.close = t.close  # a session ends with its transport
        return client
    except (paramiko.SSHException, EOFError, OSError):
        sock.close()
        return None


def sftp_read(c: paramiko.SFTPClient, path: str) -> None:
    with c.open(path, "r") as f:
        f.read()


def sftp_write(c: paramiko.SFTPClient, path: str) -> None:
    with c.open(path, "w") as f:
        f.write(b"x")


# What each verb is for a client of each protocol.
SFTP_VERBS = {
    "list": lambda c, p: c.listdir(p),
    "read": sftp_read,
    "write": sftp_write,
    "delete": lambda c, p: c.remove(p),
    "mkdir": lambda c, p: c.mkdir(p),
    "rmdir": lambda c, p: c.rmdir(p),
    "rename": lambda c, p: c.rename(p, p + ".moved"),
    "setattr": lambda c, p: c.chmod(p, 0o640),
}
FTPS_VERBS = {
    "list": lambda f, p: f.nlst(p),
    "read": lambda f, p: f.retrbinary(f"RETR {p}", lambda _: None),
    "write": lambda f, p: f.storbinary(f"STOR {p}", io.BytesIO(b"x")),
    "delete": lambda f, p: f.delete(p),
    "mkdir": lambda f, p: f.mkd(p),
    "rename": lambda f, p: f.rename(p, p + ".moved"),
}


def attempt(client, verbs: dict, verb: str, path: str) -> bool:
    """Whether the gateway let `verb` on `path` through to the backend, and then closes the
    session."""
    if client is None:
        return False
    try:
        verbs[verb](client, path)
        return True
    except (IOError, OSError, EOFError, ftplib.Error):
        return False
    finally:
        client.close()


def compare(folder: Path, protocol: str, requests: list, real) -> list:
    """Each request explained by the plugin and tried for `real` (user, source, verb, path ->
    allowed); the table printed, and every decision required equal."""
    rows = []
    for user, source, verb, path in requests:
        out = plugin("policy", "explain", "-f", str(folder), "--user", user, "--from", source,
                     "--protocol", protocol, "-o", "json", verb, path, check=False)
        assert out.returncode in (0, 3), out.stderr
        decision = json.loads(out.stdout)
        assert decision["allow"] == (out.returncode == 0)
        rows.append((user, source, verb, path, decision["allow"], real(user, source, verb, path),
                     decision["rule"]))
    table = "\n".join(
        f"{'ok ' if e == r else 'BAD'} {protocol:<5} {u:<8} {src:<10} {v:<8} {p:<24} explain={'allow' if e else 'deny':<5} gateway={'allow' if r else 'deny':<5} {rule}"
        for u, src, v, p, e, r, rule in rows
    )
    print(table)
    assert all(e == r for _, _, _, _, e, r, _ in rows), table
    return rows


def test_explain_decides_as_the_running_gateway_does(sshd):
    assert PLUGIN.exists(), f"{PLUGIN} is missing: cargo build --release -p kubectl-portcullis"
    d = fresh_dir("policy_plugin")
    data = sshd.root / "policy_plugin"
    for sub, files in {
        "in": ["drop.txt", "drop2.txt", "drop3.txt"],
        "out": ["data.csv", "old.csv", "move.csv", "ftps-old.csv", "ftps-move.csv"],
        "reports": ["q3.txt"],
    }.items():
        (data / sub).mkdir(parents=True, exist_ok=True)
        for f in files:
            (data / sub / f).write_text(f"{sub}/{f}\n")
    (data / "in" / "old-dir").mkdir(exist_ok=True)
    alice_key = keygen(d / "alice")
    gw = Gateway(d / "gw", {}, start=False)
    folder = d / "policy"
    folder.mkdir()
    ftps_port, passive = free_port(), free_port_range(16)
    (folder / "policy.yaml").write_text(policy(sshd, gw, data, alice_key, hash_password("bob-pw"),
                                               ftps_port, passive))

    checked = plugin("policy", "check", "-f", str(folder), check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    bundle = d / "bundle"
    plugin("policy", "compile", "-f", str(folder), "--out", str(bundle))
    gw.start(config_arg=bundle / "config.yaml")
    try:
        rows = compare(folder, "sftp", REQUESTS,
                       lambda u, src, v, p: attempt(sftp_session(gw, u, src, alice_key), SFTP_VERBS, v, p))
        assert len(rows) >= 30
        # The table has both outcomes in numbers, and denials at every step.
        assert sum(e for *_, e, _, _ in rows) >= 10 and sum(not e for *_, e, _, _ in rows) >= 10
        # The same over FTPS, where the login methods are a step of their own.
        rows = compare(folder, "ftps", FTPS_REQUESTS,
                       lambda u, src, v, p: attempt(ftps_session(ftps_port, u, src), FTPS_VERBS, v, p))
        assert sum(e for *_, e, _, _ in rows) >= 6 and sum(not e for *_, e, _, _ in rows) >= 6
    finally:
        gw.stop()


def test_policy_check_reports_a_broken_folder_with_file_and_line(tmp_path):
    """The binary end to end: exit code, file:line, and the summary line."""
    (tmp_path / "role.yaml").write_text(
        "apiVersion: portcullis.dev/v1alpha1\nkind: TransferRole\nmetadata: {name: ops}\n"
        "spec:\n  mounts:\n    - {path: /in, endpoint: mainframe, verbs: [list, fly]}\n"
    )
    out = plugin("policy", "check", "-f", str(tmp_path), check=False)
    assert out.returncode == 1, out.stdout
    assert f"{tmp_path}/role.yaml:6: error [Schema] TransferRole ops: spec.mounts[0].verbs[1]" in out.stdout, out.stdout
    assert out.stdout.strip().endswith("1 error(s), 0 warning(s)"), out.stdout
