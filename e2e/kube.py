"""Helpers for the Kubernetes tests: the local control plane or node (e2e/cluster.sh), kubectl,
helm and the operator as a local process."""

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from harness import ROOT, free_port

OPERATOR_BIN = Path(os.environ.get("PORTCULLIS_OPERATOR", ROOT / "target" / "release" / "portcullis-operator"))


class Cluster:
    """`e2e/cluster.sh up` in its own state directory (with `node`, `up --node`: a real node
    runs the pods); `down` at the end."""

    def __init__(self, dir: Path, node: bool = False):
        self.dir = dir
        self.env = dict(os.environ, PORTCULLIS_CLUSTER_DIR=str(dir))
        out = subprocess.run(["bash", str(ROOT / "e2e" / "cluster.sh"), "up", *(["--node"] if node else [])],
                             env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            # What `up` started before it failed would outlive the test run otherwise.
            subprocess.run(["bash", str(ROOT / "e2e" / "cluster.sh"), "down"], env=self.env, capture_output=True)
            raise RuntimeError(f"cluster.sh up failed: {out.stderr[-3000:]}")
        export = out.stdout.strip().splitlines()[-1]
        assert export.startswith("export KUBECONFIG="), export
        self.kubeconfig = str(dir / "kubeconfig")
        self.bin = Path((dir / "bin").read_text().strip())
        self.env["KUBECONFIG"] = self.kubeconfig
        self.env["PATH"] = f"{self.bin}:{self.env['PATH']}"

    def down(self) -> None:
        subprocess.run(["bash", str(ROOT / "e2e" / "cluster.sh"), "down"], env=self.env, check=True)

    def helm(self, *args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.bin / "helm"), *args], capture_output=True, text=True, env=self.env)
        assert r.returncode == 0, f"helm {' '.join(args)} failed: {r.stderr}"
        return r

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                namespace: str | None = None) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / "kubectl")]
        if namespace:
            cmd += ["-n", namespace]
        r = subprocess.run(cmd + list(args), input=input, capture_output=True, text=True, env=self.env)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {r.stderr}")
        return r

    def apply(self, obj_or_yaml, namespace: str, check: bool = True) -> subprocess.CompletedProcess:
        text = obj_or_yaml if isinstance(obj_or_yaml, str) else json.dumps(obj_or_yaml)
        return self.kubectl("apply", "-f", "-", input=text, namespace=namespace, check=check)

    def get(self, kind: str, name: str, namespace: str) -> dict | None:
        r = self.kubectl("get", kind, name, "-o", "json", "--show-managed-fields", namespace=namespace,
                         check=False)
        if r.returncode != 0:
            if "NotFound" in r.stderr:
                return None
            raise AssertionError(r.stderr)
        return json.loads(r.stdout)

    def items(self, kind: str, namespace: str) -> list[dict]:
        return json.loads(self.kubectl("get", kind, "-o", "json", namespace=namespace).stdout)["items"]

    def namespace(self, name: str) -> str:
        self.kubectl("create", "namespace", name, check=False)
        return name

    def wait_for(self, what: str, fn, timeout: float = 30.0, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}; last: {last}")

    def condition(self, kind: str, name: str, namespace: str, type_: str = "Ready") -> dict | None:
        obj = self.get(kind, name, namespace)
        for c in ((obj or {}).get("status") or {}).get("conditions", []):
            if c["type"] == type_:
                return c
        return None

    def wait_ready(self, kind: str, name: str, namespace: str, status: str = "True",
                   reason: str | None = None, timeout: float = 30.0) -> dict:
        def check():
            c = self.condition(kind, name, namespace)
            if c and c["status"] == status and (reason is None or c["reason"] == reason):
                obj = self.get(kind, name, namespace)
                if obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
                    return c
            return None

        return self.wait_for(f"{kind}/{name} Ready={status} reason={reason}", check, timeout)

    def secret_data(self, name: str, namespace: str) -> dict[str, bytes]:
        import base64

        s = self.get("secret", name, namespace)
        return {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}



def small_policy(host_key: str, user_key: str, user: str = "alice") -> list[dict]:
    """A small policy whose gateway `gw` compiles: zone `lan`, key ring `keys`, SFTP endpoint
    `backend` (credentials in Secret `creds`, which the caller makes), role `ops`, and `user`."""
    docs = [
        {"kind": "NetworkZone", "metadata": {"name": "lan"}, "spec": {"cidrs": ["10.0.0.0/8"]}},
        {"kind": "KeyRing", "metadata": {"name": "keys"}, "spec": {"issuer": {"type": "selfSigned"}}},
        {"kind": "TransferEndpoint", "metadata": {"name": "backend"}, "spec": {
            "protocol": "sftp", "addresses": [{"host": "10.1.2.3", "port": 22}], "hostKeys": [host_key],
            "username": "u", "credentials": {"secretName": "creds"}}},
        {"kind": "TransferRole", "metadata": {"name": "ops"}, "spec": {"mounts": [
            {"path": "/in", "endpoint": "backend", "verbs": ["list"]}]}},
        {"kind": "TransferUser", "metadata": {"name": user}, "spec": {"publicKeys": [user_key], "roles": ["ops"]}},
        {"kind": "TransferGateway", "metadata": {"name": "gw"}, "spec": {"hostKeyRing": "keys", "listeners": [
            {"name": "sftp", "protocol": "sftp", "port": 2222, "zones": ["lan"]}]}},
    ]
    return [{"apiVersion": "portcullis.dev/v1alpha1", **d} for d in docs]

class Operator:
    """The release operator binary against the test cluster."""

    def __init__(self, cluster: Cluster, log: Path, identity: str = "op-1", lease_seconds: int = 4,
                 lease_namespace: str = "kube-system", kubeconfig: Path | None = None,
                 extra_args: tuple[str, ...] = ()):
        """Runs as the cluster admin, or as whoever `kubeconfig` names."""
        self.cluster = cluster
        self.metrics_port = free_port()
        self.log = log
        self.identity = identity
        self.proc = subprocess.Popen(
            [str(OPERATOR_BIN), "run", "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
             "--identity", identity, "--lease-namespace", lease_namespace,
             "--lease-duration-seconds", str(lease_seconds), *extra_args],
            env=dict(cluster.env, RUST_LOG="info,portcullis_operator=debug",
                     **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {})),
            stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
        )
        cluster.wait_for("operator metrics", lambda: self.metrics_text() is not None, timeout=20)

    def metrics_text(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    def metric(self, name: str, **labels) -> float:
        """Sums a metric over the series that match `labels`."""
        total = 0.0
        for line in (self.metrics_text() or "").splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            if series.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def is_leader(self) -> bool:
        return self.metric("portcullis_operator_leader") == 1

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
