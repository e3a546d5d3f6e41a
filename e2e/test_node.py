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


def test_helm_runs_the_operator_as_two_pods_with_leader_election(cluster):
    """The chart as a user installs it: the image it names is the one e2e/images/build.sh built,
    the pods use the ServiceAccount token through in-cluster config (no kubeconfig), one leads
    and the other stands by."""
    helm(cluster, "install", "portcullis", str(CHART), "--namespace", OP_NS, "--create-namespace",
         "--set", "leaseDurationSeconds=8")
    ops = wait_pods_ready(cluster, OP_NS, "app.kubernetes.io/name=portcullis-operator", 2)
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
