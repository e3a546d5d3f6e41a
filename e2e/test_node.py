"""The product on a real node (#11): `e2e/cluster.sh up --node` runs the images this repository
builds under a real kubelet, containerd and runc, with kube-proxy for Services and kube-router
enforcing NetworkPolicy. Clients and backends live in network namespaces of their own, with
addresses from 198.18.0.0/15 (see cluster.sh for the plan):

    partner   198.18.32.2   inside the `partners` NetworkZone
    outsider  198.18.33.2   inside no zone (until a test adds it)
    lan       198.18.48.2   the backends (sshd and vsftpd)

Nothing here is emulated: the operator runs as the chart's two pods with in-cluster config, and
the gateway as the pods the operator builds."""

import base64
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from collector import read_records
from ftps import BACKEND_USER, Pki, Vsftpd
from harness import GATEWAY_BIN, ROOT, SSH_OPTS, Sshd, fresh_dir, hash_password, keygen, make_file, pubkey, sha256_file
from kube import Cluster

CHART = ROOT / "charts" / "portcullis"
VERSION = next(line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines()
               if line.startswith("version = "))
OP_NS = "portcullis-system"


class Netns:
    """A test host: a network namespace joined to the node by a veth pair (the node's end is
    named pc-*, so the node forwards for it), with one route, the test range via the node."""

    def __init__(self, name: str, third_octet: int):
        self.name = f"pc-{name}"
        self.address = f"198.18.{third_octet}.2"
        self.node_side = f"198.18.{third_octet}.1"
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        for cmd in (
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.name, "type", "veth", "peer", "name", "eth0", "netns", self.name],
            ["ip", "addr", "add", f"{self.node_side}/24", "dev", self.name],
            ["ip", "link", "set", self.name, "up"],
            ["ip", "-n", self.name, "addr", "add", f"{self.address}/24", "dev", "eth0"],
            ["ip", "-n", self.name, "link", "set", "eth0", "up"],
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
            ["ip", "-n", self.name, "route", "add", "198.18.0.0/15", "via", self.node_side],
        ):
            subprocess.run(cmd, check=True, capture_output=True)

    def run(self, *cmd: str, timeout: float = 300, check: bool = False, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} in {self.name} failed ({r.returncode}): "
                                 f"{r.stdout.decode(errors='replace')[-1500:]} {r.stderr.decode(errors='replace')[-1500:]}")
        return r

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(fresh_dir("node-cluster"), node=True)
    yield c
    c.down()


@pytest.fixture(scope="module")
def hosts():
    h = {"partner": Netns("partner", 32), "outsider": Netns("outsider", 33), "lan": Netns("lan", 48)}
    yield h
    for n in h.values():
        n.delete()


@pytest.fixture(scope="module")
def backend(hosts):
    s = Sshd(fresh_dir("node-sshd"), address=hosts["lan"].address, netns=hosts["lan"].name)
    yield s
    s.stop()


def pods(cluster, namespace: str, selector: str) -> list[dict]:
    return json.loads(cluster.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=namespace).stdout)["items"]


def ready(pod: dict) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def wait_pods_ready(cluster, namespace: str, selector: str, count: int, timeout: float = 120) -> list[dict]:
    def check():
        ps = [p for p in pods(cluster, namespace, selector) if not p["metadata"].get("deletionTimestamp")]
        return ps if len(ps) == count and all(ready(p) for p in ps) else None
    try:
        return cluster.wait_for(f"{count} ready pods {selector} in {namespace}", check, timeout=timeout)
    except AssertionError:
        print(cluster.kubectl("get", "pods", "-o", "wide", namespace=namespace).stdout)
        print(cluster.kubectl("get", "events", "--sort-by=.lastTimestamp", namespace=namespace).stdout[-4000:])
        for p in pods(cluster, namespace, selector):
            if not ready(p):
                for prev in ([], ["--previous"]):
                    r = cluster.kubectl("logs", p["metadata"]["name"], *prev, check=False, namespace=namespace)
                    print(f"logs {p['metadata']['name']} {prev}:", (r.stdout + r.stderr)[-3000:])
        raise


def container_process(pod: dict, comm: str) -> int:
    """The host pid of the pod's process named `comm`, found by the pod's uid in its cgroup."""
    uid = pod["metadata"]["uid"]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != comm[:15]:
                continue
            cgroup = (entry / "cgroup").read_text()
            if uid in cgroup or uid.replace("-", "_") in cgroup:
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process {comm} in pod {pod['metadata']['name']}")


def assert_restricted(pid: int) -> None:
    """What the pod's securityContext promises, read off the running process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert status["Uid"].split() == ["65532"] * 4, status["Uid"]
    assert status["Gid"].split()[0] == "65532", status["Gid"]
    assert status["CapEff"].strip() == "0000000000000000", status["CapEff"]
    assert status["CapPrm"].strip() == "0000000000000000", status["CapPrm"]
    assert status["Seccomp"].strip() == "2", status["Seccomp"]
    assert status["NoNewPrivs"].strip() == "1", status["NoNewPrivs"]
    # The root filesystem is mounted read-only: nothing in the container can write `/`.
    root = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"]
    assert root and "ro" in root[0][5].split(","), root


@pytest.fixture(scope="module")
def operator(cluster):
    """The chart, installed as a user installs it."""
    cluster.helm("install", "portcullis", str(CHART), "--namespace", OP_NS, "--create-namespace",
                 "--set", "leaseDurationSeconds=8", "--set", "gateway.metricsNamespaces={monitoring}")
    return wait_pods_ready(cluster, OP_NS, "app.kubernetes.io/name=portcullis-operator", 2)


def test_helm_runs_the_operator_as_two_pods_with_leader_election(cluster, operator):
    """The image the chart names is the one e2e/images/build.sh built, the pods use the
    ServiceAccount token through in-cluster config (no kubeconfig), one leads and the other
    stands by."""
    ops = operator
    for p in ops:
        (c,) = p["spec"]["containers"]
        assert c["image"] == f"ghcr.io/portcullis-dev/portcullis-operator:{VERSION}"
        assert not any("KUBECONFIG" == e["name"] for e in c.get("env", []))
        assert_restricted(container_process(p, "portcullis-operator"))
    names = {p["metadata"]["name"] for p in ops}

    def holder():
        lease = cluster.get("lease", "portcullis-operator", OP_NS)
        h = lease and lease["spec"].get("holderIdentity")
        return h if h in names else None
    cluster.wait_for("a pod to hold the lease", holder, timeout=60)


def test_the_examples_become_ready_restricted_gateway_pods(cluster, operator):
    """`kubectl apply -f examples/` with the backend Secret a user creates: the operator builds
    the gateway, the kubelet runs it from the image, its probes make it Ready, and the running
    processes are what the restricted profile promises."""
    ns = cluster.namespace("examples")
    d = fresh_dir("node-examples")
    cluster.kubectl("create", "secret", "generic", "mainframe-sftp-credentials",
                    f"--from-file=ssh-privatekey={keygen(d / 'id')}", namespace=ns)
    cluster.kubectl("apply", "-f", str(ROOT / "examples"), namespace=ns)
    gws = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=dmz", 2, timeout=180)
    cluster.wait_ready("transfergateway", "dmz", ns, timeout=60)
    for p in gws:
        (c,) = p["spec"]["containers"]
        assert c["image"] == f"ghcr.io/portcullis-dev/portcullis-gateway:{VERSION}"
        assert p["status"]["containerStatuses"][0]["restartCount"] == 0
        assert_restricted(container_process(p, "portcullis-gateway"))


def connects(source: Netns | int, address: str, port: int, timeout: float = 3.0) -> str:
    """'ok' when a TCP connection to `address:port` is accepted, else the error; made from a
    test host's netns, or from the network namespace of the process `source` (a pod's)."""
    enter = (["ip", "netns", "exec", source.name] if isinstance(source, Netns)
             else ["nsenter", f"--net=/proc/{source}/ns/net"])
    code = (f"import socket\ntry:\n s=socket.create_connection(({address!r},{port}),timeout={timeout})\n"
            " print('ok')\nexcept OSError as e:\n print(type(e).__name__, e)")
    return subprocess.run([*enter, "python3", "-c", code], capture_output=True, text=True,
                          timeout=timeout + 10).stdout.strip()


@pytest.fixture(scope="module")
def zones(cluster, operator, hosts, backend):
    """A gateway for the partners zone (198.18.32.0/24) with an SFTP endpoint in the LAN."""
    ns = cluster.namespace("zones")
    d = fresh_dir("node-zones")
    cluster.kubectl("create", "secret", "generic", "lan-creds",
                    f"--from-file=ssh-privatekey={backend.client_key}", namespace=ns)
    user_key = keygen(d / "partner")
    docs = [
        {"kind": "NetworkZone", "metadata": {"name": "partners"}, "spec": {"cidrs": ["198.18.32.0/24"]}},
        {"kind": "KeyRing", "metadata": {"name": "edge"}, "spec": {"issuer": {"type": "selfSigned"}}},
        {"kind": "TransferEndpoint", "metadata": {"name": "lan-sftp"},
         "spec": {"protocol": "sftp", "addresses": [{"host": backend.address, "port": backend.port}],
                  "hostKeys": [pubkey(backend.host_key)], "username": backend.user,
                  "credentials": {"secretName": "lan-creds"}}},
        {"kind": "TransferRole", "metadata": {"name": "exchange"},
         "spec": {"mounts": [{"path": "/lan", "endpoint": "lan-sftp", "backendPath": str(backend.root),
                              "verbs": ["list", "read", "write"]}]}},
        {"kind": "TransferUser", "metadata": {"name": "partner"},
         "spec": {"publicKeys": [pubkey(user_key)], "zones": ["partners"], "roles": ["exchange"]}},
        {"kind": "TransferGateway", "metadata": {"name": "gw"},
         "spec": {"hostKeyRing": "edge", "replicas": 1,
                  "listeners": [{"name": "sftp", "protocol": "sftp", "port": 2222, "zones": ["partners"]}]}},
    ]
    for doc in docs:
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", **doc}, ns)
    (pod,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=gw", 1, timeout=180)
    svc = cluster.get("service", "gw", ns)
    return {"ns": ns, "dir": d, "key": user_key, "user": "partner", "ip": svc["spec"]["clusterIP"], "pod": pod}


def sftp_from(host: Netns, target: dict, batch: str, check: bool = True) -> subprocess.CompletedProcess:
    """OpenSSH `sftp -b` from `host` to a gateway's Service on 2222, as the target's user."""
    batch_file = target["dir"] / f"batch-{time.monotonic_ns()}"
    batch_file.write_text(batch)
    return host.run("sftp", "-P", "2222", *SSH_OPTS, "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
                    "-i", str(target["key"]), "-b", str(batch_file), f"{target['user']}@{target['ip']}",
                    check=check, timeout=300)


def test_sftp_from_a_partner_netns_through_the_service_to_a_lan_backend(cluster, hosts, backend, zones):
    """100 MB each way, from a client in the partner zone, through the ClusterIP Service (kube-proxy)
    to the gateway pod, and on to sshd in the LAN netns; checksums equal at every hop."""
    d = zones["dir"]
    up = d / "up.bin"
    want = make_file(up, 100 * 1024 * 1024)
    sftp_from(hosts["partner"], zones, f"put {up} /lan/node-up.bin\nget /lan/node-up.bin {d / 'down.bin'}\n")
    assert sha256_file(backend.root / "node-up.bin") == want
    assert sha256_file(d / "down.bin") == want
    # The gateway saw the partner's own address (no masquerading on the way in).
    logs = cluster.kubectl("logs", "deployment/gw", namespace=zones["ns"]).stdout
    starts = [json.loads(line) for line in logs.splitlines()
              if line.startswith("{") and '"sessionStart"' in line]
    assert starts and all(r["peer"].rsplit(":", 1)[0] == hosts["partner"].address for r in starts), starts[-3:]


def test_a_client_outside_every_zone_is_stopped_by_the_network_policy(cluster, hosts, zones):
    """The enforcer drops or rejects the outsider's packets before they reach the gateway (which so
    has no record of them); once the zone admits its network, the same client gets in."""
    ip, ns = zones["ip"], zones["ns"]
    outsider = hosts["outsider"]
    assert connects(hosts["partner"], ip, 2222) == "ok"
    refused = connects(outsider, ip, 2222)
    assert refused != "ok", refused
    logs = cluster.kubectl("logs", "deployment/gw", namespace=ns).stdout
    assert outsider.address not in logs, [line for line in logs.splitlines() if outsider.address in line][:3]

    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "NetworkZone", "metadata": {"name": "partners"},
                   "spec": {"cidrs": ["198.18.32.0/24", "198.18.33.0/24"]}}, ns)
    try:
        cluster.wait_for("the outsider's network to be admitted",
                         lambda: connects(outsider, ip, 2222) == "ok", timeout=120, interval=1)
        # The gateway admits it once the kubelet has brought the new config into the pod.
        cluster.wait_for("the gateway to admit the outsider",
                         lambda: sftp_from(outsider, zones, "ls /lan\n", check=False).returncode == 0,
                         timeout=120, interval=2)
    finally:
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "NetworkZone",
                       "metadata": {"name": "partners"}, "spec": {"cidrs": ["198.18.32.0/24"]}}, ns)
    cluster.wait_for("the outsider's network to be refused again",
                     lambda: connects(outsider, ip, 2222) != "ok", timeout=120, interval=1)


def test_the_gateway_pod_reaches_only_the_backends_its_endpoints_name(cluster, hosts, backend, zones):
    """Egress: the endpoint's address and port, and not another service on the same LAN host."""
    lan = hosts["lan"]
    other = subprocess.Popen(["ip", "netns", "exec", lan.name, "python3", "-c",
                              "import socket,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                              f"s.bind(({lan.address!r},2399));s.listen(8)\nwhile True: s.accept()"])
    try:
        time.sleep(0.5)
        assert connects(hosts["partner"], lan.address, 2399) == "ok"  # the listener is there
        (pod,) = wait_pods_ready(cluster, zones["ns"], "app.kubernetes.io/instance=gw", 1)
        pid = container_process(pod, "portcullis-gateway")
        assert connects(pid, backend.address, backend.port) == "ok"
        blocked = connects(pid, lan.address, 2399)
        assert blocked != "ok", blocked
    finally:
        other.kill()
        other.wait()


def test_the_admin_port_is_not_reachable_from_outside_the_cluster(cluster, hosts, zones):
    (pod,) = wait_pods_ready(cluster, zones["ns"], "app.kubernetes.io/instance=gw", 1)
    pod_ip = pod["status"]["podIP"]
    admin = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "admin")
    # The node (the kubelet's probes) reaches it; a partner does not, by the pod's address or
    # through the Service, which does not carry it.
    assert subprocess.run(["curl", "-sf", "-m", "5", f"http://{pod_ip}:{admin}/healthz"]).returncode == 0
    assert connects(hosts["partner"], pod_ip, admin) != "ok"
    svc = cluster.get("service", "gw", zones["ns"])
    assert admin not in [p["port"] for p in svc["spec"]["ports"]]
    assert connects(hosts["partner"], zones["ip"], admin) != "ok"


def test_the_admin_port_admits_the_operator_and_the_metrics_namespace_only(cluster, operator, zones):
    """The gateway's admin port (/metrics, /config) inside the cluster: the operator's pods (they
    read /config) and pods in the chart's gateway.metricsNamespaces reach it; a pod in any other
    namespace does not, though it reaches other pods (the operator's metrics port)."""
    (gw,) = wait_pods_ready(cluster, zones["ns"], "app.kubernetes.io/instance=gw", 1)
    ip = gw["status"]["podIP"]
    admin = next(p["containerPort"] for p in gw["spec"]["containers"][0]["ports"] if p["name"] == "admin")
    op = operator[0]
    assert connects(container_process(op, "portcullis-operator"), ip, admin) == "ok"
    probes = {}
    for ns in ("monitoring", "elsewhere"):
        cluster.namespace(ns)
        cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "labels": {"app": "probe"}},
                       "spec": {"containers": [{"name": "probe", "image": f"localhost/portcullis/pause:{VERSION}",
                                                "imagePullPolicy": "Never"}]}}, ns)
        (pod,) = wait_pods_ready(cluster, ns, "app=probe", 1)
        probes[ns] = container_process(pod, "pause")
    assert connects(probes["monitoring"], ip, admin) == "ok"
    op_metrics = next(p["containerPort"] for p in op["spec"]["containers"][0]["ports"] if p["name"] == "metrics")
    assert connects(probes["elsewhere"], op["status"]["podIP"], op_metrics) == "ok"
    blocked = connects(probes["elsewhere"], ip, admin)
    assert blocked != "ok", blocked


@pytest.fixture(scope="module")
def vsftpd(hosts):
    pki = Pki(fresh_dir("node-pki"))
    v = Vsftpd(fresh_dir("node-vsftpd"), pki, address=hosts["lan"].address, netns=hosts["lan"].name)
    v.pki = pki
    yield v
    v.stop()


def vsftpd_endpoint(cluster, ns: str, vsftpd, name: str) -> list[dict]:
    """A TransferEndpoint `name` for the LAN vsftpd and the KeyRing `lan-trust` holding its CA;
    the Secrets they name (password, CA) are created here."""
    cluster.kubectl("create", "secret", "generic", "vsftpd-credentials",
                    f"--from-file=password={vsftpd.password_file}", namespace=ns)
    cluster.kubectl("create", "secret", "generic", "vsftpd-ca", f"--from-file=ca.crt={vsftpd.ca}", namespace=ns)
    return [
        {"kind": "KeyRing", "metadata": {"name": "lan-trust"},
         "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": ["unused.local"], "sshHostKeys": False,
                  "backendCas": [{"name": "vsftpd-ca", "key": "ca.crt"}]}},
        {"kind": "TransferEndpoint", "metadata": {"name": name},
         "spec": {"protocol": "ftps", "addresses": [{"host": vsftpd.address, "port": vsftpd.port}],
                  "username": BACKEND_USER, "credentials": {"secretName": "vsftpd-credentials"},
                  "ftps": {"keyRing": "lan-trust", "serverName": "localhost",
                           "dataPorts": {"min": vsftpd.pasv, "max": vsftpd.pasv + 63}}}},
    ]


FTPS_NAME = "ftps.zones.test"


@pytest.fixture(scope="module")
def ftps(cluster, zones, backend, vsftpd):
    """Two gateway replicas with explicit and implicit FTPS for the partners zone, in front of
    vsftpd (/vs) and sshd (/lan); a user with a password."""
    ns, d = zones["ns"], zones["dir"]
    lan_ftps = vsftpd_endpoint(cluster, ns, vsftpd, "lan-vsftpd")
    cluster.kubectl("create", "secret", "generic", "ftp-password",
                    f"--from-literal=hash={hash_password('ftp-pw')}", namespace=ns)
    docs = [
        *lan_ftps,
        {"kind": "KeyRing", "metadata": {"name": "ftps-cert"},
         "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": [FTPS_NAME], "sshHostKeys": False}},
        {"kind": "TransferRole", "metadata": {"name": "ftp-exchange"},
         "spec": {"mounts": [
             {"path": "/lan", "endpoint": "lan-sftp", "backendPath": str(backend.root), "verbs": ["list", "read", "write"]},
             {"path": "/vs", "endpoint": "lan-vsftpd", "verbs": ["list", "read", "write"]}]}},
        {"kind": "TransferUser", "metadata": {"name": "ftpuser"},
         "spec": {"passwordHash": {"name": "ftp-password", "key": "hash"}, "zones": ["partners"],
                  "roles": ["ftp-exchange"]}},
        {"kind": "TransferGateway", "metadata": {"name": "edge"},
         "spec": {"hostKeyRing": "edge", "replicas": 2, "shutdownGraceSeconds": 5,
                  "listeners": [
                      {"name": "ftps", "protocol": "ftps", "port": 2121, "zones": ["partners"],
                       "keyRing": "ftps-cert", "passivePorts": {"min": 30000, "max": 30019}},
                      {"name": "implicit", "protocol": "ftpsImplicit", "port": 2990, "zones": ["partners"],
                       "keyRing": "ftps-cert", "passivePorts": {"min": 30020, "max": 30039}}]}},
    ]
    for doc in docs:
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", **doc}, ns)
    pods = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=edge", 2, timeout=180)
    ca = d / "ftps-ca.pem"
    ring = cluster.secret_data("ftps-cert-keyring", ns)
    ca.write_bytes(ring.get("ca.crt") or ring["tls.crt"])
    ip = cluster.get("service", "edge", ns)["spec"]["clusterIP"]
    return {"ns": ns, "dir": d, "ip": ip, "ca": ca, "pods": pods, "backend_root": backend.root}


def curl_from(host: Netns, ftps: dict, *args: str, ip: str | None = None, port: int = 2121,
              check: bool = True) -> subprocess.CompletedProcess:
    """curl in `host`, with the gateway's name resolved to the Service address (or `ip`) and
    its certificate checked against the key ring's CA."""
    return host.run("curl", "-sS", "--ssl-reqd", "--cacert", str(ftps["ca"]), "-u", "ftpuser:ftp-pw",
                    "--resolve", f"{FTPS_NAME}:{port}:{ip or ftps['ip']}", "--connect-timeout", "10",
                    "--max-time", "240", *args, check=check, timeout=300)


def test_ftps_explicit_and_implicit_through_the_service_to_both_backends(cluster, hosts, backend, vsftpd, ftps):
    """100 MB each way: explicit FTPS to vsftpd, implicit FTPS to sshd, passive data connections
    through the Service (EPSV, so the client dials the Service address again)."""
    d = ftps["dir"]
    src = d / "ftps-up.bin"
    want = make_file(src, 100 * 1024 * 1024)
    partner = hosts["partner"]
    curl_from(partner, ftps, "-T", str(src), f"ftp://{FTPS_NAME}:2121/vs/explicit.bin")
    assert sha256_file(vsftpd.root / "explicit.bin") == want
    curl_from(partner, ftps, "-o", str(d / "explicit-down.bin"), f"ftp://{FTPS_NAME}:2121/vs/explicit.bin")
    assert sha256_file(d / "explicit-down.bin") == want
    curl_from(partner, ftps, "-T", str(src), f"ftps://{FTPS_NAME}:2990/lan/implicit.bin", port=2990)
    assert sha256_file(backend.root / "implicit.bin") == want
    curl_from(partner, ftps, "-o", str(d / "implicit-down.bin"), f"ftps://{FTPS_NAME}:2990/lan/implicit.bin",
              port=2990)
    assert sha256_file(d / "implicit-down.bin") == want


def test_twenty_passive_transfers_from_one_client_reach_the_pod_that_offered_the_port(cluster, hosts, ftps):
    """One control connection, 20 transfers; each EPSV data connection dials the Service again.
    kube-proxy keeps ClientIP affinity per Service port, so affinity alone sends a data
    connection to either pod (the operator's first design, which failed here). With two
    replicas each offers its own slice of the passive range and the Service routes each passive
    port by name to that replica: all 20 succeed. The same run through a Service of the old
    shape (numbered target ports, ClientIP affinity) over the same pods fails for some of twenty
    partners."""
    ns, d = ftps["ns"], ftps["dir"]
    files = []
    for i in range(20):
        f = d / f"many-{i}.bin"
        make_file(f, 64 * 1024 + i)
        files.append(f)
    # Uploads under TLS 1.2 (curl under TLS 1.3 cannot chain uploads on one control connection:
    # docs/compatibility.md), downloads under TLS 1.3.
    uploads = ["--tls-max", "1.2"]
    for i, f in enumerate(files):
        uploads += ["-T", str(f), f"ftp://{FTPS_NAME}:2121/lan/many-{i}.bin"]
    downloads = ["--tlsv1.3"]
    for i in range(len(files)):
        downloads += ["-o", str(d / f"many-{i}.back"), f"ftp://{FTPS_NAME}:2121/lan/many-{i}.bin"]
    svc = cluster.get("service", "edge", ns)
    targets = {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]}
    assert targets[30000] == "pasv-30000" and targets[2121] == 2121, targets
    # Each replica is a Deployment of its own, offering its half of each range.
    offered = {}
    for p in ftps["pods"]:
        replica = p["metadata"]["labels"]["portcullis.dev/replica"]
        offered[replica] = sorted(c["containerPort"] for c in p["spec"]["containers"][0]["ports"]
                                  if c.get("name", "").startswith("pasv-"))
    assert offered == {"0": list(range(30000, 30010)) + list(range(30020, 30030)),
                       "1": list(range(30010, 30020)) + list(range(30030, 30040))}, offered
    curl_from(hosts["partner"], ftps, *uploads)
    curl_from(hosts["partner"], ftps, *downloads)
    for i, f in enumerate(files):
        assert sha256_file(ftps["backend_root"] / f"many-{i}.bin") == sha256_file(f)
        assert sha256_file(d / f"many-{i}.back") == sha256_file(f)

    # Twenty partners (source addresses), one download each: each first connection to a port
    # is a fresh random pick for kube-proxy, so through the old shape about half would fail.
    partner = hosts["partner"]
    sources = [f"198.18.32.{10 + i}" for i in range(20)]
    for src in sources:
        partner.run("ip", "addr", "add", f"{src}/24", "dev", "eth0", check=True)

    def each_partner(ip: str) -> list[str]:
        failed = []
        for i, src in enumerate(sources):
            r = curl_from(partner, ftps, "--interface", src, "-o", str(d / f"p{i}.back"),
                          f"ftp://{FTPS_NAME}:2121/lan/many-{i}.bin", ip=ip, check=False)
            if r.returncode != 0 or sha256_file(d / f"p{i}.back") != sha256_file(files[i]):
                failed.append(f"{src}: {r.stderr.decode(errors='replace').strip()[-200:]}")
        return failed

    assert each_partner(ftps["ip"]) == []
    old_shape = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge-old-shape"},
                 "spec": {"selector": {k: v for k, v in svc["spec"]["selector"].items()},
                          "sessionAffinity": "ClientIP",
                          "ports": [{"name": p["name"], "port": p["port"], "targetPort": p["port"]}
                                    for p in svc["spec"]["ports"]]}}
    cluster.apply(old_shape, ns)
    try:
        ip = cluster.get("service", "edge-old-shape", ns)["spec"]["clusterIP"]
        cluster.wait_for("the old-shape Service to carry connections",
                         lambda: connects(hosts["partner"], ip, 2121) == "ok", timeout=60, interval=1)
        failed = each_partner(ip)
        assert failed, "20 partners' passive transfers through per-port affinity all reached the right pod"
        print(f"old-shape Service: {len(failed)} of {len(sources)} failed:", *failed[:3], sep="\n")
    finally:
        cluster.kubectl("delete", "service", "edge-old-shape", namespace=ns)


def test_ftps_through_a_node_port_service_with_two_replicas(cluster, hosts, backend, ftps):
    """`service.type: NodePort`: the control port is a node port of the apiserver's choosing,
    each passive port is the node port of the same number (PASV and EPSV name it), the client
    address survives (externalTrafficPolicy Local), so the zone's NetworkPolicy and the gateway
    both see the partner; with two replicas each passive port reaches the replica offering it."""
    ns, d = ftps["ns"], ftps["dir"]
    node_ip = "198.18.0.1"
    # The passive ports become node ports of the same numbers: take ten that no Service holds
    # yet (the apiserver gives other Services' ports random node ports, and one inside a fixed
    # range made this Service's creation fail now and then).
    taken = {p["nodePort"] for svc in json.loads(cluster.kubectl("get", "services", "-A", "-o", "json").stdout)["items"]
             for p in svc["spec"].get("ports", []) if p.get("nodePort")}
    lo = next(b for b in range(30300, 32700, 10) if not taken & set(range(b, b + 10)))
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferGateway", "metadata": {"name": "np"},
                   "spec": {"hostKeyRing": "edge", "replicas": 2, "service": {"type": "NodePort"},
                            "listeners": [{"name": "ftps", "protocol": "ftps", "port": 2121, "zones": ["partners"],
                                           "keyRing": "ftps-cert", "advertisedAddress": node_ip,
                                           "passivePorts": {"min": lo, "max": lo + 9}}]}}, ns)
    try:
        wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=np", 2, timeout=180)
        svc = cluster.get("service", "np", ns)
        assert svc["spec"]["type"] == "NodePort" and svc["spec"]["externalTrafficPolicy"] == "Local", svc["spec"]
        control = next(p["nodePort"] for p in svc["spec"]["ports"] if p["name"] == "ftps")
        pasv = {p["port"]: p["nodePort"] for p in svc["spec"]["ports"] if p["name"].startswith("pasv-")}
        assert pasv == {p: p for p in range(lo, lo + 10)}, pasv
        partner = hosts["partner"]
        cluster.wait_for("the node port to carry connections",
                         lambda: connects(partner, node_ip, control) == "ok", timeout=60, interval=1)
        src = d / "np-up.bin"
        want = make_file(src, 8 * 1024 * 1024)
        url = f"ftp://{FTPS_NAME}:{control}/lan/np"
        for i in range(6):
            # PASV (its reply names the advertised node address) and EPSV, alternately; several
            # transfers, so both replicas' slices are used.
            mode = ["--disable-epsv"] if i % 2 == 0 else []
            r = curl_from(partner, ftps, "-v", *mode, "-T", str(src), f"{url}-{i}.bin", ip=node_ip, port=control)
            if mode:
                assert "227 Entering Passive Mode (198,18,0,1," in r.stderr.decode(errors="replace")
            assert sha256_file(backend.root / f"np-{i}.bin") == want
            curl_from(partner, ftps, *mode, "-o", str(d / f"np-{i}.back"), f"{url}-{i}.bin", ip=node_ip, port=control)
            assert sha256_file(d / f"np-{i}.back") == want
        logs = "".join(cluster.kubectl("logs", p["metadata"]["name"], namespace=ns).stdout
                       for p in pods(cluster, ns, "app.kubernetes.io/instance=np"))
        starts = [json.loads(line) for line in logs.splitlines() if line.startswith("{") and '"sessionStart"' in line]
        assert len(starts) == 12 and all(r["peer"].rsplit(":", 1)[0] == partner.address for r in starts), starts[:3]
        # The outsider is outside every zone, through the node port too.
        assert connects(hosts["outsider"], node_ip, control) != "ok"
    finally:
        cluster.kubectl("delete", "transfergateway", "np", namespace=ns)


def test_deleting_the_leader_pod_hands_over_within_the_lease(cluster, operator, zones):
    """The standby operator pod takes the lease once the leader's pod is gone, and reconciles."""
    ns = zones["ns"]
    lease = cluster.get("lease", "portcullis-operator", OP_NS)
    leader = lease["spec"]["holderIdentity"]
    duration = lease["spec"]["leaseDurationSeconds"]
    started = time.monotonic()
    cluster.kubectl("delete", "pod", leader, "--wait=false", namespace=OP_NS)

    def new_holder():
        h = (cluster.get("lease", "portcullis-operator", OP_NS) or {}).get("spec", {}).get("holderIdentity")
        return h if h and h != leader else None
    holder = cluster.wait_for("the standby to take the lease", new_holder, timeout=duration * 3, interval=0.5)
    took = time.monotonic() - started
    assert took <= duration + 5, f"{holder} took the lease after {took:.1f}s (lease {duration}s)"
    # The new leader reconciles: a change to the gateway reaches its Deployment.
    cluster.kubectl("patch", "transfergateway", "gw", "--type=merge", "-p",
                    '{"spec":{"resources":{"requests":{"cpu":"150m","memory":"128Mi"}}}}', namespace=ns)
    cluster.wait_for("the new leader to reconcile", lambda: cluster.get("deployment", "gw", ns)["spec"]["template"][
        "spec"]["containers"][0]["resources"]["requests"]["cpu"] == "150m", timeout=60)
    wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=gw", 1, timeout=120)
    wait_pods_ready(cluster, OP_NS, "app.kubernetes.io/name=portcullis-operator", 2, timeout=120)


# An explicit FTPS session from a test host: argv is e2e's directory, the address, the CA file,
# the user and the password; what follows is the script's own part.
FTPS_LOGIN = r"""
import ftplib, hashlib, json, ssl, sys
sys.path.insert(0, sys.argv[1])
from ftps import ReusingFTP_TLS
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.check_hostname = False
f = ReusingFTP_TLS(context=ctx, timeout=30)
f.connect(sys.argv[2], 2121)
f.auth()
f.login(sys.argv[4], sys.argv[5])
f.prot_p()
"""

SESSION_SCRIPT = FTPS_LOGIN + r"""
print("cert", hashlib.sha256(f.sock.getpeercert(binary_form=True)).hexdigest(), flush=True)
sys.stdin.readline()  # held open until the test has seen the certificate change
print("noop", f.voidcmd("NOOP"), flush=True)
with open(sys.argv[6], "rb") as src:
    print("stor", f.storbinary("STOR /lan/after-rotation.bin", src), flush=True)
print("list", len(f.nlst("/lan")), flush=True)
f.quit()
"""


def served_certificate(host: Netns, ip: str) -> str:
    """The SHA-256 of the certificate a new explicit FTPS connection is shown; "" when none
    was (a refused or failed handshake must not read as a new certificate)."""
    r = host.run("bash", "-c", f"openssl s_client -connect {ip}:2121 -starttls ftp -servername {FTPS_NAME} "
                 "</dev/null 2>/dev/null | openssl x509 -outform der", timeout=30)
    return hashlib.sha256(r.stdout).hexdigest() if r.returncode == 0 and r.stdout else ""


def test_a_short_lived_certificate_rotates_through_the_kubelet_without_a_restart(cluster, hosts, backend, zones, ftps):
    """A key ring with a one-minute certificate: the operator renews it, the kubelet updates the
    Secret volume, the gateway reloads. New connections get the new certificate, the pod is not
    restarted, and a session opened before the renewal goes on (NOOP, an upload, a listing)."""
    ns, d = zones["ns"], zones["dir"]
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "KeyRing", "metadata": {"name": "short"},
                   "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": [FTPS_NAME], "sshHostKeys": False,
                            "duration": "1m", "renewBefore": "35s"}}, ns)
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferGateway", "metadata": {"name": "rot"},
                   "spec": {"replicas": 1, "listeners": [
                       {"name": "ftps", "protocol": "ftps", "port": 2121, "zones": ["partners"],
                        "keyRing": "short", "passivePorts": {"min": 30100, "max": 30109}}]}}, ns)
    (pod,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=rot", 1, timeout=180)
    ip = cluster.get("service", "rot", ns)["spec"]["clusterIP"]
    ring = cluster.secret_data("short-keyring", ns)
    ca = d / "short-ca.pem"
    ca.write_bytes(ring.get("ca.crt") or ring["tls.crt"])
    payload = d / "rotation.bin"
    want = make_file(payload, 1024 * 1024)

    session = subprocess.Popen(["ip", "netns", "exec", hosts["partner"].name, "python3", "-c", SESSION_SCRIPT,
                                str(ROOT / "e2e"), ip, str(ca), "ftpuser", "ftp-pw", str(payload)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = session.stdout.readline().split()
        assert first and first[0] == "cert", (first, session.stderr.read() if session.poll() is not None else "")
        old = first[1]
        assert served_certificate(hosts["partner"], ip) == old
        new = cluster.wait_for("new connections to get a renewed certificate",
                               lambda: (c := served_certificate(hosts["partner"], ip)) and c != old and c,
                               timeout=150, interval=2)
        assert new != old
        out, err = session.communicate("go\n", timeout=60)
        assert session.returncode == 0, err
        lines = dict(line.split(" ", 1) for line in out.splitlines())
        assert lines["noop"].startswith("200") and lines["stor"].startswith("226"), out
        assert int(lines["list"]) >= 1
        assert sha256_file(backend.root / "after-rotation.bin") == want
    finally:
        if session.poll() is None:
            session.kill()
    (after,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=rot", 1)
    assert after["metadata"]["name"] == pod["metadata"]["name"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    logs = cluster.kubectl("logs", after["metadata"]["name"], namespace=ns).stdout
    # The gateway recorded the reload that brought the renewed certificate.
    assert '"event":"configReloaded"' in logs, logs[-2000:]


PROBE_SCRIPT = r"""
import os, socket, sys, time
ip, port, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ok = failed = 0
errors = []
while not os.path.exists(stop_file):
    try:
        with socket.create_connection((ip, port), timeout=5) as s:
            s.settimeout(5)
            banner = s.recv(64)
            if not banner.startswith(b"SSH-2.0-"):
                raise OSError(f"banner {banner!r}")
        ok += 1
    except OSError as e:
        failed += 1
        errors.append(f"{time.time():.2f} {type(e).__name__}: {e}")
    time.sleep(0.05)
print(ok, failed)
print("\n".join(errors[:20]))
"""


def test_a_listener_change_rolls_out_without_refusing_a_connection(cluster, hosts, zones):
    """A listener change restarts the pods (maxUnavailable 0, one surge pod). A client connecting
    every 50 ms through the Service all along is never refused: the old pod leaves the Service's
    endpoints before it stops accepting."""
    ns, d = zones["ns"], zones["dir"]
    (old,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=gw", 1)
    stop = d / "probe-stop"
    stop.unlink(missing_ok=True)
    probe = subprocess.Popen(["ip", "netns", "exec", hosts["partner"].name, "python3", "-c", PROBE_SCRIPT,
                              zones["ip"], "2222", str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        cluster.kubectl("patch", "transfergateway", "gw", "--type=json", "-p", json.dumps([
            {"op": "add", "path": "/spec/listeners/-",
             "value": {"name": "sftp2", "protocol": "sftp", "port": 2223, "zones": ["partners"]}}]),
            namespace=ns)

        def rolled():
            ps = [p for p in pods(cluster, ns, "app.kubernetes.io/instance=gw")]
            return (len(ps) == 1 and ps[0]["metadata"]["name"] != old["metadata"]["name"] and ready(ps[0])
                    and not ps[0]["metadata"].get("deletionTimestamp"))
        cluster.wait_for("the new pod alone", rolled, timeout=180, interval=0.5)
        time.sleep(3)
    finally:
        stop.touch()
        out, _ = probe.communicate(timeout=30)
    counts, *errors = out.splitlines()
    ok, failed = map(int, counts.split())
    assert ok > 20 and failed == 0, f"{failed} of {ok + failed} connections failed: {errors}"


def test_a_pod_deleted_mid_upload_fails_the_upload_and_a_retry_reaches_the_other_replica(cluster, hosts, backend, ftps):
    """The pod holding an upload is deleted: it serves through its preStop sleep, drains for
    shutdownGraceSeconds (5 s here), then ends the session. The client gets an error, the audit
    (read as the pod dies) does not call the transfer complete, nothing is left under the
    target name, and the retry, through the same Service, succeeds on a pod that is up."""
    ns, d = ftps["ns"], ftps["dir"]
    src = d / "slow.bin"
    want = make_file(src, 64 * 1024 * 1024)
    target = backend.root / "slow.bin"
    target.unlink(missing_ok=True)
    upload = subprocess.Popen(
        ["ip", "netns", "exec", hosts["partner"].name, "curl", "-sS", "--ssl-reqd", "--cacert", str(ftps["ca"]),
         "-u", "ftpuser:ftp-pw", "--resolve", f"{FTPS_NAME}:2121:{ftps['ip']}", "--limit-rate", "1M",
         "-T", str(src), f"ftp://{FTPS_NAME}:2121/lan/slow.bin"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    live = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=edge", 2)

    def holder():
        for p in live:
            logs = cluster.kubectl("logs", p["metadata"]["name"], namespace=ns).stdout
            if '"transferStart"' in logs and '"/lan/slow.bin"' in logs:
                return p
        return None
    pod = cluster.wait_for("the upload to start", holder, timeout=30, interval=0.5)
    name = pod["metadata"]["name"]
    stream = subprocess.Popen([str(cluster.bin / "kubectl"), "-n", ns, "logs", "-f", name],
                              env=cluster.env, stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    cluster.kubectl("delete", "pod", name, "--wait=false", namespace=ns)
    try:
        _, err = upload.communicate(timeout=120)
    finally:
        if upload.poll() is None:
            upload.kill()
    failed_after = time.monotonic() - started
    assert upload.returncode != 0, "the upload did not fail"
    records, _ = stream.communicate(timeout=60)
    ends = [json.loads(line) for line in records.splitlines()
            if line.startswith("{") and '"transferEnd"' in line and '"/lan/slow.bin"' in line]
    assert ends and ends[-1]["confidence"] in ("Low", "NoEOF"), (upload.returncode, err, records[-3000:])
    assert not target.exists(), "a partial upload looks complete"
    assert 5 <= failed_after <= 40, f"the client's error came {failed_after:.1f}s after the delete"

    # The retry goes through the same Service to a pod that is up: the other replica, or
    # the deleted one's replacement if it is ready by then.
    curl_from(hosts["partner"], ftps, "-T", str(src), f"ftp://{FTPS_NAME}:2121/lan/slow.bin")
    assert sha256_file(target) == want
    served = [p["metadata"]["name"] for p in pods(cluster, ns, "app.kubernetes.io/instance=edge")
              if any('"transferEnd"' in line and '"/lan/slow.bin"' in line and '"High"' in line
                     for line in cluster.kubectl("logs", p["metadata"]["name"], namespace=ns).stdout.splitlines())]
    assert served and name not in served, served
    wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=edge", 2, timeout=120)


# --- The full path: what the pod emulator used to stand in for -----------------------------------

FULL_NAME = "full.zones.test"


@pytest.fixture(scope="module")
def full(cluster, operator, hosts, backend, vsftpd):
    """A gateway as a regulated user runs it: SFTP and explicit FTPS (TLS 1.3 only) for the
    partners zone, in front of sshd and vsftpd in the LAN; a signed audit trail in a file sink
    (an emptyDir) besides stdout; a one-minute certificate, so that renewals happen during the
    tests. It is applied while the node is cordoned, so that its status is seen before any pod
    is ready."""
    ns = cluster.namespace("full")
    d = fresh_dir("node-full")
    key = keygen(d / "alice")
    exchange = backend.root / "full"
    exchange.mkdir(exist_ok=True)
    (exchange / "report.csv").write_text("id,amount\n1,100\n")
    cluster.kubectl("create", "secret", "generic", "lan-creds",
                    f"--from-file=ssh-privatekey={backend.client_key}", namespace=ns)
    lan_ftps = vsftpd_endpoint(cluster, ns, vsftpd, "mainframe")
    cluster.kubectl("create", "secret", "generic", "alice-password",
                    f"--from-literal=hash={hash_password('alice-pw')}", namespace=ns)
    docs = [
        *lan_ftps,
        {"kind": "NetworkZone", "metadata": {"name": "partners"}, "spec": {"cidrs": ["198.18.32.0/24"]}},
        {"kind": "KeyRing", "metadata": {"name": "gw-keys"},
         "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": [FULL_NAME], "duration": "1m", "renewBefore": "35s"}},
        {"kind": "KeyRing", "metadata": {"name": "audit-keys"},
         "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": ["audit.local"], "sshHostKeys": False,
                  "auditSigningKey": True}},
        {"kind": "TransferEndpoint", "metadata": {"name": "lan-sftp"},
         "spec": {"protocol": "sftp", "addresses": [{"host": backend.address, "port": backend.port}],
                  "hostKeys": [pubkey(backend.host_key)], "username": backend.user,
                  "credentials": {"secretName": "lan-creds"}}},
        {"kind": "TransferRole", "metadata": {"name": "exchange"},
         "spec": {"mounts": [{"path": "/exchange", "endpoint": "lan-sftp", "backendPath": str(exchange),
                              "verbs": ["list", "read"]}]}},
        {"kind": "TransferRole", "metadata": {"name": "batch"},
         "spec": {"mounts": [{"path": "/mf", "endpoint": "mainframe",
                              "verbs": ["list", "read", "write", "setattr", "site"], "siteCommands": ["CHMOD"]}]}},
        {"kind": "TransferUser", "metadata": {"name": "alice"},
         "spec": {"publicKeys": [pubkey(key)], "passwordHash": {"name": "alice-password", "key": "hash"},
                  "zones": ["partners"], "roles": ["exchange", "batch"]}},
        {"kind": "TransferGateway", "metadata": {"name": "edge"},
         "spec": {"hostKeyRing": "gw-keys", "replicas": 1,
                  "audit": {"signingKeyRing": "audit-keys", "checkpointSeconds": 1,
                            "file": {"rotateBytes": 65536, "maxBytes": 1048576}},
                  "listeners": [
                      {"name": "sftp", "protocol": "sftp", "port": 2222, "zones": ["partners"]},
                      {"name": "ftps", "protocol": "ftps", "port": 2121, "zones": ["partners"],
                       "keyRing": "gw-keys", "passivePorts": {"min": 30200, "max": 30207},
                       "tls": {"minVersion": "1.3"}}]}},
    ]
    node = "node/portcullis-node"
    cluster.kubectl("cordon", node)
    try:
        for doc in docs:
            cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", **doc}, ns)
        # Compiled and applied, but its pod cannot be scheduled: not Ready (it once said Ready
        # with 0 of 1 pods ready), Reconciling, not Stalled.
        c = cluster.wait_ready("transfergateway", "edge", ns, status="False", reason="PodsNotReady", timeout=60)
        assert c["message"] == "0 of 1 pods ready", c
        assert cluster.condition("transfergateway", "edge", ns, "Reconciling")["status"] == "True"
        assert cluster.condition("transfergateway", "edge", ns, "Stalled")["status"] == "False"
    finally:
        cluster.kubectl("uncordon", node)
    (pod,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=edge", 1, timeout=180)
    # Ready once the pod's probe passes and the pod confirms, on its admin port, that it serves
    # the config the operator wrote: one hash definition on both sides.
    c = cluster.wait_ready("transfergateway", "edge", ns, timeout=60)
    st = cluster.get("transfergateway", "edge", ns)["status"]
    assert c["message"].endswith(f"1 of 1 ready pods serve config {st['configHash'][:12]}"), c
    assert st["servedConfigHash"] == st["configHash"], st
    assert cluster.condition("transfergateway", "edge", ns, "Reconciling")["status"] == "False"
    ring = cluster.secret_data("gw-keys-keyring", ns)
    ca = d / "gw-ca.pem"
    ca.write_bytes(ring.get("ca.crt") or ring["tls.crt"])
    trail = audit_dir(cluster, pod)
    assert trail.is_dir(), trail
    return {"ns": ns, "dir": d, "key": key, "user": "alice", "ip": cluster.get("service", "edge", ns)["spec"]["clusterIP"],
            "pod": pod, "ca": ca, "trail": trail, "exchange": exchange}


def audit_dir(cluster, pod: dict) -> Path:
    """The pod's `audit` emptyDir, where the kubelet keeps it on the node."""
    return (cluster.dir / "node" / "kubelet" / "pods" / pod["metadata"]["uid"] / "volumes"
            / "kubernetes.io~empty-dir" / "audit")


def audit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GATEWAY_BIN), "audit", *args], capture_output=True, text=True)


def audit_key(cluster, ns: str, d: Path, gateway: str = "edge") -> tuple[Path, dict]:
    """Gateway `gateway`'s current audit key as the `audit-keys` KeyRing publishes it, written to
    a file; and the published entry (which the gateway's own status lists the same)."""
    def published():
        keys = (cluster.get("keyring", "audit-keys", ns).get("status") or {}).get("auditKeys", [])
        own = (cluster.get("transfergateway", gateway, ns).get("status") or {}).get("auditKeys", [])
        current = [k for k in keys if k["gateway"] == gateway and "retiredAt" not in k]
        return (len(current) == 1 and own and {**own[0], "gateway": gateway} == current[0]
                and current[0])
    entry = cluster.wait_for(f"the key ring to publish {gateway}'s audit key", published, timeout=30, interval=0.5)
    pub = d / f"{gateway}-audit.pub"
    pub.write_text(entry["publicKey"])
    return pub, entry


def wait_signed_end(cluster, trail: Path, path: str) -> tuple[list[dict], dict]:
    """The trail's records once the last transfer of `path` has ended and a checkpoint signs it."""
    def signed():
        recs = trail_records(trail)
        ends = [r for r in recs if r["event"] == "transferEnd" and r["path"] == path]
        return ends and any(r["event"] == "checkpoint" and r["seq"] > ends[-1]["seq"] for r in recs) and (recs, ends[-1])
    return cluster.wait_for(f"the pod's trail to sign {path}", signed, timeout=30, interval=0.5)


def checked_receipt(trail: Path, pub: Path, transfer: str, d: Path) -> str:
    """`audit receipt` for `transfer`, then `audit check-receipt` with the key: its output."""
    receipt = audit_cli("receipt", "--transfer", transfer, str(trail))
    assert receipt.returncode == 0, receipt.stdout + receipt.stderr
    (d / f"receipt-{transfer}.jsonl").write_text(receipt.stdout)
    r = audit_cli("check-receipt", "--key", str(pub), str(d / f"receipt-{transfer}.jsonl"))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def trail_records(trail: Path) -> list[dict]:
    """The pod's audit files, read on the node, in order."""
    return [json.loads(line) for f in sorted(trail.iterdir()) for line in f.read_text().splitlines()
            if line.startswith("{")]


def test_sftp_through_the_pod_and_a_live_role_change_without_a_restart(cluster, hosts, full):
    """A role change reaches the running pod through the kubelet's Secret update: a write refused
    before is allowed after, the pod is the same process, and its status confirms the new config."""
    x, partner = full, hosts["partner"]
    d = x["dir"]
    r = sftp_from(partner, x, f"ls /exchange\nget /exchange/report.csv {d / 'report.csv'}\n")
    assert "report.csv" in r.stdout.decode()
    assert (d / "report.csv").read_text() == "id,amount\n1,100\n"
    up = d / "upload.txt"
    up.write_text("hello through kubernetes\n")
    r = sftp_from(partner, x, f"put {up} /exchange/upload.txt\n", check=False)
    assert r.returncode != 0 and b"Permission denied" in r.stderr + r.stdout, r
    assert not (x["exchange"] / "upload.txt").exists()

    ns = x["ns"]
    before = cluster.get("transfergateway", "edge", ns)["status"]["configHash"]
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferRole", "metadata": {"name": "exchange"},
                   "spec": {"mounts": [{"path": "/exchange", "endpoint": "lan-sftp", "backendPath": str(x["exchange"]),
                                        "verbs": ["list", "read", "write"]}]}}, ns)
    cluster.wait_for("the new rule in the running gateway",
                     lambda: sftp_from(partner, x, f"put {up} /exchange/upload.txt\n", check=False).returncode == 0,
                     timeout=120, interval=2)
    assert (x["exchange"] / "upload.txt").read_text() == up.read_text()

    def confirmed():
        st = cluster.get("transfergateway", "edge", ns)["status"]
        return st.get("servedConfigHash") == st["configHash"] != before and st
    cluster.wait_for("the pod to confirm the new config", confirmed, timeout=60, interval=0.5)
    assert cluster.condition("transfergateway", "edge", ns, "Ready")["status"] == "True"
    (pod,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=edge", 1)
    assert pod["metadata"]["name"] == x["pod"]["metadata"]["name"]
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert any(r["event"] == "configReloaded" for r in trail_records(x["trail"]))


SITE_SCRIPT = FTPS_LOGIN + r"""
f.cwd("/mf")
out = {"relative": f.sendcmd("SITE CHMOD 600 batch.bin")}
try:
    out["exec"] = f.sendcmd("SITE EXEC rm -rf /")
except ftplib.error_perm as e:
    out["exec"] = str(e)
out["absolute"] = f.sendcmd("SITE CHMOD 640 /mf/batch.bin")
f.quit()
print(json.dumps(out))
"""


def test_ftps_tls13_through_the_pod_to_vsftpd_and_sshd_with_site_commands(cluster, hosts, vsftpd, full):
    """FTPS as the operator configures it: TLS 1.3 only, the key ring's certificate checked by
    name against its CA; on to vsftpd (trusting the CA from another key ring) and to sshd; SITE
    only as the role's allow-list says; every transfer audited High with its digest."""
    x, partner = full, hosts["partner"]
    d = x["dir"]
    (x["exchange"] / "ledger.csv").write_text("id\n7\n")
    src = d / "batch.bin"
    digest = make_file(src, 5_000_000)
    tls13 = ["curl", "-sS", "--ssl-reqd", "--cacert", str(x["ca"]), "-u", "alice:alice-pw",
             "--resolve", f"{FULL_NAME}:2121:{x['ip']}", "--connect-timeout", "10", "--tlsv1.3"]
    base = f"ftp://{FULL_NAME}:2121"
    partner.run(*tls13, "-T", str(src), f"{base}/mf/batch.bin", check=True)
    assert sha256_file(vsftpd.root / "batch.bin") == digest
    partner.run(*tls13, "-o", str(d / "batch.back"), f"{base}/mf/batch.bin", check=True)
    assert sha256_file(d / "batch.back") == digest
    assert partner.run(*tls13, f"{base}/exchange/ledger.csv", check=True).stdout == b"id\n7\n"
    # TLS 1.2 is below this listener's floor.
    r = partner.run("curl", "-sS", "--ssl-reqd", "--cacert", str(x["ca"]), "--resolve", f"{FULL_NAME}:2121:{x['ip']}",
                    "--tls-max", "1.2", f"{base}/mf/")
    assert r.returncode != 0, r
    r = partner.run("python3", "-c", SITE_SCRIPT, str(ROOT / "e2e"), x["ip"], str(x["ca"]), "alice", "alice-pw",
                    check=True)
    site = json.loads(r.stdout)
    assert site["relative"].startswith("200") and site["absolute"].startswith("200"), site
    assert site["exec"].startswith("550"), site
    assert (vsftpd.root / "batch.bin").stat().st_mode & 0o777 == 0o640

    def ends():
        e = [r for r in trail_records(x["trail"]) if r["event"] == "transferEnd" and r["path"] == "/mf/batch.bin"]
        return len(e) == 2 and e
    got = cluster.wait_for("both transfers in the trail", ends, timeout=30, interval=0.5)
    assert [(e["direction"], e["confidence"], e["sha256"]) for e in got] == [
        ("upload", "High", digest), ("download", "High", digest)]
    assert all(e["channel"].startswith("TLSv1_3") for e in got), got


def test_the_pod_trail_verifies_with_the_key_ring_public_key(cluster, hosts, full):
    """spec.audit through the operator: the gateway's signing key is made for it and kept in its
    config Secret only, and its signing KeyRing publishes the public half; the pod writes a
    signed, rotated trail into its emptyDir; `audit verify --key` with the key from the KeyRing
    status passes over it (read on the node), and a transfer's receipt checks."""
    x = full
    ns, d = x["ns"], x["dir"]
    pub, st = audit_key(cluster, ns, d)
    assert st["publicKey"].startswith("-----BEGIN PUBLIC KEY-----"), st
    assert len(st["keyId"]) == 16, st
    # The private half is in the gateway's config Secret, and in no other Secret of the namespace.
    private = cluster.secret_data("edge-config", ns)["audit-signing.pem"]
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----"), private[:40]
    secrets = json.loads(cluster.kubectl("get", "secrets", "-o", "json", namespace=ns).stdout)["items"]
    holders = [s["metadata"]["name"] for s in secrets
               if private in [base64.b64decode(v) for v in (s.get("data") or {}).values()]]
    assert holders == ["edge-config"], holders
    up = d / "audited.txt"
    up.write_text("audited through kubernetes\n" * 100)
    sftp_from(hosts["partner"], x, f"put {up} /mf/audited.txt\n")

    _, end = wait_signed_end(cluster, x["trail"], "/mf/audited.txt")
    assert end["confidence"] == "High", end
    r = audit_cli("verify", "--live", "--key", str(pub), str(x["trail"]))
    assert r.returncode == 0 and "signatures checked" in r.stdout, r.stdout + r.stderr
    checked = checked_receipt(x["trail"], pub, end["transfer"], d)
    assert checked.startswith(f"ok: transfer {end['transfer']}: upload of /mf/audited.txt"), checked
    assert f"signed by key {st['keyId']}" in checked, checked


SFTP_SESSION_SCRIPT = r"""
import socket, sys, paramiko
ip, key = sys.argv[1], sys.argv[2]
t = paramiko.Transport(socket.create_connection((ip, 2222), timeout=30))
t.connect()
t.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(key))
sf = paramiko.SFTPClient.from_transport(t)
print("hostkey", t.get_remote_server_key().get_base64(), " ".join(sf.listdir("/exchange")), flush=True)
sys.stdin.readline()  # held open until the test has seen the renewal reach the gateway
with sf.open("/exchange/report.csv") as f:
    print("read", f.read().hex(), flush=True)
sf.close()
t.close()
t2 = paramiko.Transport(socket.create_connection((ip, 2222), timeout=30))
t2.connect()
print("newkey", t2.get_remote_server_key().get_base64(), flush=True)
t2.close()
"""


def test_certificate_renewal_reaches_the_pod_without_dropping_an_sftp_session(cluster, hosts, full):
    """The one-minute certificate is renewed before it expires; the pod loads it from the Secret
    volume the kubelet updates; an SFTP session opened before goes on, and the SSH host key
    stays the same across the renewal."""
    import datetime as dt

    x = full
    ns = x["ns"]
    kr0 = cluster.get("keyring", "gw-keys", ns)["status"]
    session = subprocess.Popen(["ip", "netns", "exec", hosts["partner"].name, "python3", "-c", SFTP_SESSION_SCRIPT,
                                x["ip"], str(x["key"])],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = session.stdout.readline().split()
        assert first and first[0] == "hostkey", (first, session.stderr.read() if session.poll() is not None else "")
        assert "report.csv" in first[2:], first
        host_key = first[1]
        # renewBefore 35s of a 60s lifetime: renewal is due about 25s after issue.
        kr1 = cluster.wait_for("a renewed certificate", lambda: (
            (s := cluster.get("keyring", "gw-keys", ns)["status"])["certificateFingerprint"]
            != kr0["certificateFingerprint"] and s), timeout=90, interval=1)
        parse = lambda t: dt.datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
        assert parse(kr1["notAfter"]) > parse(kr0["notAfter"])
        assert dt.datetime.now(dt.timezone.utc) < parse(kr0["notAfter"]), "renewed only after expiry"
        assert kr1["hostKeyFingerprints"] == kr0["hostKeyFingerprints"]

        def reloaded():
            return any(r["event"] == "configReloaded"
                       and any(c["sha256"] == kr1["certificateFingerprint"] for c in r["certificates"])
                       for r in trail_records(x["trail"]))
        cluster.wait_for("the pod to load the renewed certificate", reloaded, timeout=120, interval=1)
        out, err = session.communicate("go\n", timeout=60)
        assert session.returncode == 0, err
    finally:
        if session.poll() is None:
            session.kill()
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert bytes.fromhex(lines["read"]) == b"id,amount\n1,100\n"
    assert lines["newkey"] == host_key
    (pod,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=edge", 1)
    assert pod["metadata"]["name"] == x["pod"]["metadata"]["name"]
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    issued = [e for e in cluster.items("events.events.k8s.io", ns)
              if e["regarding"]["name"] == "gw-keys" and e["reason"] == "Issued"]
    assert issued


def test_a_killed_gateway_container_continues_its_trail_with_ids_that_do_not_repeat(cluster, hosts, full):
    """SIGKILL the gateway in its pod: the kubelet restarts the container, which finds its trail
    in the emptyDir and continues the one chain. In a container the pid is the same every run,
    so ids built from it repeated (`1-1-t1` twice) and `audit receipt` could not tell the
    transfers apart; every session and transfer id in the trail is unique, and the new
    transfer's receipt checks."""
    x = full
    ns, d = x["ns"], x["dir"]
    up = d / "around-restart.txt"
    up.write_text("around a restart\n" * 50)
    sftp_from(hosts["partner"], x, f"put {up} /mf/before-restart.txt\n")
    (pod,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=edge", 1)
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    os.kill(container_process(pod, "portcullis-gateway"), signal.SIGKILL)

    def restarted():
        (p,) = pods(cluster, ns, "app.kubernetes.io/instance=edge")
        return p["status"]["containerStatuses"][0]["restartCount"] > restarts and ready(p) and p
    pod = cluster.wait_for("the kubelet to restart the gateway", restarted, timeout=120, interval=1)
    assert pod["metadata"]["uid"] == x["pod"]["metadata"]["uid"], "the pod was replaced, not restarted"
    cluster.wait_for("the restarted gateway to serve",
                     lambda: sftp_from(hosts["partner"], x, f"put {up} /mf/after-restart.txt\n", check=False).returncode == 0,
                     timeout=60, interval=1)

    recs, end = wait_signed_end(cluster, x["trail"], "/mf/after-restart.txt")
    assert any(r["event"] == "chainResumed" for r in recs)
    sessions = [r["session"] for r in recs if r["event"] == "sessionStart"]
    transfers = [r["transfer"] for r in recs if r["event"] == "transferEnd"]
    assert len(set(sessions)) == len(sessions), sorted(sessions)
    assert len(set(transfers)) == len(transfers), sorted(transfers)
    pub, _ = audit_key(cluster, ns, d)
    r = audit_cli("verify", "--live", "--key", str(pub), str(x["trail"]))
    assert r.returncode == 0 and "restart" in r.stdout, r.stdout + r.stderr
    checked_receipt(x["trail"], pub, end["transfer"], d)


def test_the_pod_ships_its_trail_to_a_collector_across_an_outage(cluster, hosts, full):
    """spec.audit.collector through the operator: the pod ships its file sink to an HTTPS
    collector in the LAN (the NetworkPolicy lets it reach that address and port, nothing else),
    the collector is down for a while under traffic and comes back, and then holds every record
    from seq 1 on (0 lost), byte for byte (its copy verifies with the KeyRing's key), while the
    shipped rotated files are gone from the pod's emptyDir."""
    x, lan = full, hosts["lan"]
    ns, d = x["ns"], x["dir"]
    pki = Pki(fresh_dir("node-collector-pki"))
    cert, key = pki.issue("collector", "collector", ips=(lan.address,))
    cluster.kubectl("create", "secret", "generic", "collector-ca", f"--from-file=ca.crt={pki.ca}", namespace=ns)
    out = d / "collected.tsv"

    def collector() -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", lan.name, "python3", str(ROOT / "e2e" / "collector.py"),
                              "--cert", str(cert), "--key", str(key), "--address", lan.address, "--port", "8443",
                              "--out", str(out)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "listening"
        return p

    running = collector()
    try:
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferGateway", "metadata": {"name": "ship"},
                       "spec": {"hostKeyRing": "gw-keys", "replicas": 1,
                                "audit": {"signingKeyRing": "audit-keys", "checkpointSeconds": 1,
                                          "file": {"rotateBytes": 16384, "maxBytes": 4194304},
                                          "collector": {"url": f"https://{lan.address}:8443/ingest",
                                                        "ca": {"name": "collector-ca"}, "batchRecords": 50}},
                                "listeners": [{"name": "sftp", "protocol": "sftp", "port": 2222,
                                               "zones": ["partners"]}]}}, ns)
        (pod,) = wait_pods_ready(cluster, ns, "app.kubernetes.io/instance=ship", 1, timeout=180)
        name = pod["metadata"]["name"]
        target = {**x, "ip": cluster.get("service", "ship", ns)["spec"]["clusterIP"]}
        trail = audit_dir(cluster, pod)
        up = d / "shipped.txt"
        up.write_text("shipped\n" * 1000)
        admin = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "admin")

        def ship_failures() -> float:
            text = subprocess.run(["curl", "-sf", "-m", "5", f"http://{pod['status']['podIP']}:{admin}/metrics"],
                                  capture_output=True, text=True).stdout
            return sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("portcullis_audit_ship_failures_total"))

        for i in range(8):
            sftp_from(hosts["partner"], target, f"put {up} /mf/shipped-{i}.txt\n")
        cluster.wait_for("records at the collector", lambda: len(read_records(out)[0]) > 20, timeout=30)
        running.kill()
        running.wait()
        for i in range(8, 16):
            sftp_from(hosts["partner"], target, f"put {up} /mf/shipped-{i}.txt\n")
        cluster.wait_for("the outage to be noticed", lambda: ship_failures() > 0, timeout=60, interval=1)
        running = collector()

        def caught_up():
            last = max(json.loads(line)["seq"] for f in trail.glob("audit*.jsonl")
                       for line in f.read_text().splitlines() if line.startswith("{"))
            records, _ = read_records(out)
            return sorted(s for (_, s) in records) == list(range(1, last + 1)) and (records, last)
        records, last = cluster.wait_for("every record at the collector", caught_up, timeout=120, interval=1)
    finally:
        running.kill()
        running.wait()
    assert {source for (source, _) in records} == {name}, {source for (source, _) in records}
    _, received = read_records(out)
    print(f"collector: {last} records, {received - len(records)} sent twice (dedup)")
    events = [json.loads(line)["event"] for line in records.values()]
    assert events.count("fileStart") >= 2 and events.count("checkpoint") >= 1, events[:20]
    copy = fresh_dir("node-collected")
    (copy / "audit.jsonl").write_bytes(b"".join(records[(name, s)] for s in range(1, last + 1)))
    pub, _ = audit_key(cluster, ns, d, "ship")
    r = audit_cli("verify", "--live", "--key", str(pub), str(copy))
    assert r.returncode == 0, r.stdout + r.stderr
    cluster.wait_for("the shipped rotated files to leave the spool",
                     lambda: list(trail.glob("audit-*.jsonl")) == [], timeout=30, interval=1)
    cluster.kubectl("delete", "transfergateway", "ship", namespace=ns)
