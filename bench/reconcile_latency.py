#!/usr/bin/env python3
"""Reconcile latency: from `kubectl apply` of a change to the operator reporting it.

Brings up its own control plane (e2e/cluster.sh, state in e2e/.work/bench-cluster), runs the
release operator, applies a small namespace (zone, key ring, endpoint, role, user, gateway), then
makes N changes of two kinds and times each from the apply request to:
  - gateway: `spec.limits.maxSessions` changed → the TransferGateway's Ready condition is True
    for the new generation (status.observedGeneration == metadata.generation);
  - role: a TransferRole's verbs changed → the gateway's config Secret holds the new rule.
Polls the apiserver directly over one keep-alive HTTPS connection every 2 ms.

  python3 bench/reconcile_latency.py [--changes 100]
"""

import argparse
import base64
import http.client
import json
import ssl
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))

from harness import fresh_dir, keygen, pubkey  # noqa: E402
from kube import Cluster, Operator  # noqa: E402


class Api:
    def __init__(self, cluster_dir: Path):
        cfg = (cluster_dir / "kubeconfig").read_text()
        server = next(line.split("server:")[1].strip() for line in cfg.splitlines() if "server:" in line)
        host, port = server.removeprefix("https://").split(":")
        pki = cluster_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.conn = http.client.HTTPSConnection(host, int(port), context=ctx)

    def request(self, method: str, path: str, body=None, ctype="application/json") -> dict:
        headers = {"Content-Type": ctype} if body is not None else {}
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data)

    def apply(self, path: str, obj: dict) -> dict:
        return self.request("PATCH", f"{path}?fieldManager=bench&force=true", obj,
                            ctype="application/apply-patch+yaml")


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=100)
    a = ap.parse_args()
    cluster = Cluster(fresh_dir("bench-cluster"))
    op = Operator(cluster, fresh_dir("bench-operator") / "operator.log")
    try:
        cluster.wait_for("leader", op.is_leader, timeout=30)
        ns = cluster.namespace("bench")
        d = fresh_dir("bench-keys")
        cluster.kubectl("create", "secret", "generic", "creds", f"--from-file=ssh-privatekey={keygen(d / 'id')}",
                        namespace=ns)
        base = "/apis/portcullis.dev/v1alpha1/namespaces/bench"
        api = Api(cluster.dir)
        objs = {
            "networkzones/lan": {"kind": "NetworkZone", "spec": {"cidrs": ["10.0.0.0/8"]}},
            "keyrings/keys": {"kind": "KeyRing", "spec": {"issuer": {"type": "selfSigned"}}},
            "transferendpoints/backend": {"kind": "TransferEndpoint", "spec": {
                "protocol": "sftp", "addresses": [{"host": "10.1.2.3", "port": 22}],
                "hostKeys": [pubkey(keygen(d / "hk"))], "username": "u", "credentials": {"secretName": "creds"}}},
            "transferroles/ops": {"kind": "TransferRole", "spec": {"mounts": [
                {"path": "/in", "endpoint": "backend", "verbs": ["list"]}]}},
            "transferusers/alice": {"kind": "TransferUser", "spec": {"publicKeys": [pubkey(keygen(d / "u"))],
                                                                     "roles": ["ops"]}},
            "transfergateways/gw": {"kind": "TransferGateway", "spec": {
                "hostKeyRing": "keys", "listeners": [{"name": "sftp", "protocol": "sftp", "port": 2222,
                                                      "zones": ["lan"]}]}},
        }
        for path, o in objs.items():
            name = path.split("/")[1]
            api.apply(f"{base}/{path}", {"apiVersion": "portcullis.dev/v1alpha1", "metadata": {"name": name}, **o})
        cluster.wait_ready("transfergateway", "gw", ns, timeout=60)

        gw_lat, role_lat = [], []
        for i in range(a.changes):
            spec = dict(objs["transfergateways/gw"]["spec"], limits={"maxSessions": 1000 + i})
            t0 = time.perf_counter()
            gen = api.apply(f"{base}/transfergateways/gw", {"apiVersion": "portcullis.dev/v1alpha1",
                                                            "kind": "TransferGateway", "metadata": {"name": "gw"},
                                                            "spec": spec})["metadata"]["generation"]
            while True:
                st = api.request("GET", f"{base}/transfergateways/gw").get("status", {})
                ready = [c for c in st.get("conditions", []) if c["type"] == "Ready"]
                if st.get("observedGeneration") == gen and ready and ready[0]["status"] == "True":
                    break
                time.sleep(0.002)
            gw_lat.append(time.perf_counter() - t0)

            marker = f"/m{i}"
            t0 = time.perf_counter()
            api.apply(f"{base}/transferroles/ops", {"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferRole",
                                                    "metadata": {"name": "ops"}, "spec": {"mounts": [
                                                        {"path": marker, "endpoint": "backend", "verbs": ["list"]}]}})
            while True:
                s = api.request("GET", "/api/v1/namespaces/bench/secrets/gw-config")
                if marker.encode() in base64.b64decode(s["data"]["config.yaml"]):
                    break
                time.sleep(0.002)
            role_lat.append(time.perf_counter() - t0)

        def summary(xs):
            return (f"median {statistics.median(xs) * 1000:.1f} ms, p99 {pct(xs, 99) * 1000:.1f} ms, "
                    f"max {max(xs) * 1000:.1f} ms")

        print(f"changes: {a.changes} of each kind")
        print(f"gateway spec change → Ready for the new generation: {summary(gw_lat)}")
        print(f"role change → the gateway's config Secret holds it:  {summary(role_lat)}")
        print(f"operator writes: {op.metric('portcullis_operator_writes_total'):.0f}, "
              f"reconciles: {op.metric('portcullis_operator_reconciles_total'):.0f}")
        for c in ["transfergateway", "transferrole", "transferuser"]:
            n = op.metric("portcullis_operator_reconcile_duration_seconds_count", controller=c)
            total = op.metric("portcullis_operator_reconcile_duration_seconds_sum", controller=c)
            print(f"  {c}: {n:.0f} reconciles, mean {total / max(n, 1) * 1000:.1f} ms each")
    finally:
        op.stop()
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
