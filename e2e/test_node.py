"""The product on a real node (#11): `e2e/cluster.sh up --node` runs the images this repository
builds under a real kubelet, containerd and runc, with kube-proxy for Services and kube-router
enforcing NetworkPolicy. Clients and backends live in network namespaces of their own, with
addresses from 198.18.0.0/15 (see cluster.sh for the plan):

    partner   198.18.32.2   inside the `partners` NetworkZone
    outsider  198.18.33.2   inside no zone (until a test adds it)
    lan       198.18.48.2   the backends (sshd)

Nothing here is emulated: the operator runs as the chart's two pods with in-cluster config, and
the gateway as the pods the operator builds."""

import base64
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness import ROOT, SSH_OPTS, Sshd, fresh_dir, keygen, make_file, pubkey, sha256_file
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


def helm(cluster, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([str(cluster.bin / "helm"), *args], capture_output=True, text=True, env=cluster.env)
    assert r.returncode == 0, r.stderr
    return r


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
            if uid in (entry / "cgroup").read_text() or uid.replace("-", "_") in (entry / "cgroup").read_text():
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
    helm(cluster, "install", "portcullis", str(CHART), "--namespace", OP_NS, "--create-namespace",
         "--set", "leaseDurationSeconds=8")
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


def connects(host: Netns | None, address: str, port: int, timeout: float = 3.0) -> str:
    """'ok' when a TCP connection from `host` (a netns, or with `pid_net` a pod's) is accepted,
    else the error."""
    code = (f"import socket\ntry:\n s=socket.create_connection(({address!r},{port}),timeout={timeout})\n"
            " print('ok')\nexcept OSError as e:\n print(type(e).__name__, e)")
    return host.run("python3", "-c", code, timeout=timeout + 10).stdout.decode().strip()


def connects_from_pod(pid: int, address: str, port: int, timeout: float = 3.0) -> str:
    code = (f"import socket\ntry:\n s=socket.create_connection(({address!r},{port}),timeout={timeout})\n"
            " print('ok')\nexcept OSError as e:\n print(type(e).__name__, e)")
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-c", code],
                          capture_output=True, text=True, timeout=timeout + 10).stdout.strip()


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
    return {"ns": ns, "dir": d, "key": user_key, "ip": svc["spec"]["clusterIP"], "pod": pod}


def sftp_from(host: Netns, zones: dict, batch: str, check: bool = True) -> subprocess.CompletedProcess:
    batch_file = zones["dir"] / f"batch-{time.monotonic_ns()}"
    batch_file.write_text(batch)
    return host.run("sftp", "-P", "2222", *SSH_OPTS, "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
                    "-i", str(zones["key"]), "-b", str(batch_file), f"partner@{zones['ip']}",
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
        assert connects_from_pod(pid, backend.address, backend.port) == "ok"
        blocked = connects_from_pod(pid, lan.address, 2399)
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
