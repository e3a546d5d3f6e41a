"""FTPS test parts: a small PKI made with openssl, a real Debian vsftpd backend (TLS,
require_ssl_reuse=YES) on loopback high ports, and Python ftplib clients that resume the control
TLS session on data connections (as curl and lftp do; ftplib alone does not)."""

import ftplib
import os
import pwd
import socket
import ssl
import subprocess
from pathlib import Path

from harness import HANDED_OUT, SERVERS, free_port, wait_port

BACKEND_USER = "portcullis-ftp"
BACKEND_PASSWORD = "backend-pw"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Pki:
    """A CA that issues server and client certificates (ECDSA P-256)."""

    def __init__(self, dir: Path, name: str = "test CA"):
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = dir / "ca.key"
        self.ca = dir / "ca.pem"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(self.ca_key), "-out", str(self.ca), "-days", "30", "-subj", f"/CN={name}")
        self.serial = 0

    def issue(self, name: str, cn: str, server: bool = True, days: int = 30,
              ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A leaf for `cn` (SANs localhost, 127.0.0.1 and `ips` for servers); returns (cert, key)."""
        self.serial += 1
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        cert = self.dir / f"{name}.pem"
        ext = self.dir / f"{name}.ext"
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
        if server:
            sans = ",".join(["DNS:localhost", "IP:127.0.0.1", *(f"IP:{ip}" for ip in ips)])
            ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
        else:
            ext.write_text("extendedKeyUsage=clientAuth\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                 "-set_serial", str(1000 + self.serial), "-out", str(cert), "-days", str(days),
                 "-extfile", str(ext))
        return cert, key


def ensure_backend_user(home: Path) -> None:
    """The local account vsftpd logs the gateway in as (PAM; a shell from /etc/shells). Its home
    is this run's vsftpd root: an account left by a run in another checkout names that one's,
    and vsftpd fails every login after it is deleted (a cleartext `500 OOPS` that the gateway
    sees as a corrupt TLS record)."""
    if subprocess.run(["id", BACKEND_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", BACKEND_USER], check=True)
    elif not Path(pwd.getpwnam(BACKEND_USER).pw_dir).is_dir():
        subprocess.run(["usermod", "-d", str(home), BACKEND_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{BACKEND_USER}:{BACKEND_PASSWORD}".encode(), check=True)


class Vsftpd:
    """Debian's vsftpd with TLS required on control and data, `require_ssl_reuse=YES`."""

    def __init__(self, dir: Path, pki: Pki, implicit: bool = False, client_ca: Path | None = None,
                 address: str = "127.0.0.1", netns: str | None = None):
        """On loopback; or on `address` inside the network namespace `netns`."""
        self.dir = dir
        self.address = address
        dir.mkdir(parents=True, exist_ok=True)
        self.root = dir / "root"
        self.root.mkdir(exist_ok=True)
        ensure_backend_user(self.root)
        subprocess.run(["chown", BACKEND_USER, str(self.root)], check=True)
        self.port = free_port()
        # 16 passive ports were suspected (not proven) of a rare "No connection" under fifty
        # concurrent sessions: as we read vsftpd, it gives up after a few random picks in use.
        self.pasv = free_port_range(64)
        cert, key = pki.issue("vsftpd", "localhost")
        self.cert = cert
        self.ca = pki.ca
        Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
        self.config = dir / "vsftpd.conf"
        self.config.write_text(f"""listen=YES
listen_ipv6=NO
background=NO
listen_address={address}
listen_port={self.port}
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
local_root={self.root}
chroot_local_user=YES
allow_writeable_chroot=YES
pasv_enable=YES
pasv_min_port={self.pasv}
pasv_max_port={self.pasv + 63}
pasv_address={address}
ssl_enable=YES
rsa_cert_file={cert}
rsa_private_key_file={key}
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
ssl_ciphers=HIGH
seccomp_sandbox=NO
xferlog_enable=YES
log_ftp_protocol=YES
vsftpd_log_file={dir}/vsftpd.log
secure_chroot_dir=/var/run/vsftpd/empty
implicit_ssl={"YES" if implicit else "NO"}
""" + (f"require_cert=YES\nvalidate_cert=YES\nca_certs_file={client_ca}\n" if client_ca else ""))
        os.chmod(self.config, 0o600)
        self.implicit = implicit
        SERVERS.append(self)
        self.proc = subprocess.Popen([*(["ip", "netns", "exec", netns] if netns else []),
                                      "/usr/sbin/vsftpd", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=open(dir / "stderr.log", "wb"))
        wait_port(self.port, host=address)
        password_file = dir / "password"
        password_file.write_text(BACKEND_PASSWORD + "\n")
        self.password_file = password_file

    def endpoint(self, name: str, **extra) -> dict:
        e = {
            "name": name,
            "type": "ftps",
            "addresses": [f"{self.address}:{self.port}"],
            "caFile": str(self.ca),
            "serverName": "localhost",
            "username": BACKEND_USER,
            "passwordFile": str(self.password_file),
            "security": "implicit" if self.implicit else "explicit",
        }
        e.update(extra)
        return e

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def free_port_range(n: int) -> int:
    """The first of `n` consecutive ports free now (best effort: the gateway and vsftpd skip a
    port that gets taken meanwhile)."""
    for _ in range(200):
        base = free_port()
        # Disjoint from every port and range handed out before (see harness.HANDED_OUT).
        if base + n > 65000 or any(p in HANDED_OUT for p in range(base + 1, base + n)):
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            HANDED_OUT.update(range(base, base + n))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib's FTP_TLS, resuming the control connection's TLS session on data connections
    (what curl, lftp and FileZilla do; servers with require_ssl_reuse insist on it)."""

    source_address_for_data = None

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


def tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def ftps_login(port: int, ca: Path, user: str, password: str | None = "",
               cert: Path | None = None, key: Path | None = None,
               reuse: bool = True, encoding: str = "utf-8") -> ftplib.FTP_TLS:
    """An explicit FTPS session (AUTH TLS, login, PBSZ 0, PROT P) with ftplib."""
    cls = ReusingFTP_TLS if reuse else ftplib.FTP_TLS
    f = cls(context=tls_context(ca, cert, key), timeout=30, encoding=encoding)
    f.connect("localhost", port)
    f.auth()
    if password is None:
        resp = f.sendcmd(f"USER {user}")
        assert resp.startswith("232"), resp
    else:
        f.login(user, password)
    f.prot_p()
    return f


def raw_control(port: int, timeout: float = 10) -> tuple[socket.socket, "LineConn"]:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    c = LineConn(s)
    return s, c


class LineConn:
    """Reads FTP replies (multi-line aware) from a socket or TLS socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def reply(self) -> tuple[int, str]:
        first = self.line()
        code = int(first[:3])
        text = [first]
        if first[3:4] == "-":
            while True:
                l = self.line()
                text.append(l)
                if l[:3] == str(code) and l[3:4] == " ":
                    break
        return code, "\n".join(text)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.sock.sendall(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return self.reply()
