#!/usr/bin/env python3
"""API requests the operator makes per change, with many users in one namespace.

Brings up its own control plane (e2e/cluster.sh, state in e2e/.work/bench-api-cluster), runs an
operator binary (PORTCULLIS_OPERATOR, else the release build), and applies one namespace: a
zone, a key ring, an endpoint, a role, a gateway and --users users, each with its own
password-hash Secret. Once everything is Ready and the operator has gone quiet, it makes each of
these changes in turn and counts the requests the apiserver served until the operator is quiet
again (no new request for --quiet seconds):

  - role:    the role's mounts change (every user and the gateway depend on it);
  - secret:  one user's password-hash Secret changes;
  - user:    one user's spec changes (a public key added).

Each change also reports the reconciles it caused, by controller
(`portcullis_operator_reconciles_total`). Counts come from the apiserver's own `apiserver_request_total`, by verb and resource, minus
the requests this script made itself (it keeps its own tally). WATCHes, Leases and Events are
left out. The control plane's own controllers and the apiserver's bootstrap add a little (they
are most of the "initial" figure outside our kinds and Secrets); `ours` sums only the six
Portcullis kinds and Secrets, which nothing else here touches. An operator that counts its own
requests (`portcullis_operator_api_requests_total`) is read too, as `operator_counted`.
`--json` prints it all as one JSON object.

  python3 bench/operator_api_requests.py [--users 500]
"""

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))
sys.path.insert(0, str(ROOT / "bench"))

from harness import fresh_dir, hash_password, keygen, pubkey  # noqa: E402
from kube import Cluster, Operator  # noqa: E402
from reconcile_latency import Api  # noqa: E402

GROUP = "/apis/portcullis.dev/v1alpha1/namespaces/bench"
SERIES = re.compile(r'^apiserver_request_total\{([^}]*)\} (\S+)$')


class CountingApi(Api):
    """The bench's own requests, tallied the way the apiserver labels them."""

    def __init__(self, cluster_dir: Path):
        super().__init__(cluster_dir)
        self.mine: Counter = Counter()

    def request(self, method: str, path: str, body=None, ctype="application/json") -> dict:
        verb = {"PATCH": "APPLY" if "apply-patch" in ctype else "PATCH"}.get(method, method)
        parts = path.split("?")[0].strip("/").split("/")
        # .../namespaces/NS/RESOURCE[/NAME]: a GET without a name is a LIST.
        i = parts.index("namespaces") + 2 if "namespaces" in parts else len(parts) - 1
        resource = parts[i] if i < len(parts) else parts[-1]
        if verb == "GET" and i == len(parts) - 1:
            verb = "LIST"
        self.mine[(verb, resource)] += 1
        return super().request(method, path, body, ctype)

    def served(self) -> Counter:
        """apiserver_request_total by (verb, resource), without this bench's own requests.
        The /metrics read itself is not a resource request and is not counted there."""
        self.conn.request("GET", "/metrics")
        r = self.conn.getresponse()
        text = r.read().decode()
        total: Counter = Counter()
        for line in text.splitlines():
            m = SERIES.match(line)
            if not m:
                continue
            labels = dict(kv.split("=", 1) for kv in re.findall(r'\w+="[^"]*"', m.group(1)))
            resource = labels.get("resource", '""').strip('"')
            if not resource or resource in ("leases", "events") or labels.get("verb") == '"WATCH"':
                continue
            total[(labels["verb"].strip('"'), resource)] += int(float(m.group(2)))
        return total - self.mine


OURS = {"secrets", "transferendpoints", "networkzones", "keyrings", "transferusers", "transferroles",
        "transfergateways"}


def operator_counted(op: Operator) -> Counter:
    """The operator's own tally of its requests, if it keeps one (WATCH left out)."""
    total: Counter = Counter()
    for line in (op.metrics_text() or "").splitlines():
        if not line.startswith("portcullis_operator_api_requests_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") != "WATCH":
            total[(labels["verb"], labels["resource"])] += int(float(line.rsplit(" ", 1)[1]))
    return total


def summary(c: Counter) -> dict:
    return {"requests": sum(c.values()),
            "ours": sum(n for (_, r), n in c.items() if r.split("/")[0] in OURS),
            "by_verb_resource": {f"{v} {r}": n for (v, r), n in sorted(c.items())}}


def quiet(api: CountingApi, seconds: float, timeout: float = 300) -> Counter:
    """Waits until the served count stops growing for `seconds`; returns it."""
    deadline = time.monotonic() + timeout
    last, since = api.served(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = api.served()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return now
    raise TimeoutError("the operator never went quiet")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--quiet", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cluster = Cluster(fresh_dir("bench-api-cluster"))
    op = Operator(cluster, fresh_dir("bench-api-operator") / "operator.log")
    try:
        cluster.wait_for("leader", op.is_leader, timeout=30)
        ns = cluster.namespace("bench")
        d = fresh_dir("bench-api-keys")
        api = CountingApi(cluster.dir)
        creds = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "type": "Opaque",
                 "stringData": {"ssh-privatekey": (keygen(d / "id")).read_text()}}
        api.apply("/api/v1/namespaces/bench/secrets/creds", creds)
        hk, uk = pubkey(keygen(d / "hk")), pubkey(keygen(d / "u"))
        objs = {
            "networkzones/lan": {"kind": "NetworkZone", "spec": {"cidrs": ["10.0.0.0/8"]}},
            "keyrings/keys": {"kind": "KeyRing", "spec": {"issuer": {"type": "selfSigned"}}},
            "transferendpoints/backend": {"kind": "TransferEndpoint", "spec": {
                "protocol": "sftp", "addresses": [{"host": "10.1.2.3", "port": 22}],
                "hostKeys": [hk], "username": "u", "credentials": {"secretName": "creds"}}},
            "transferroles/ops": {"kind": "TransferRole", "spec": {"mounts": [
                {"path": "/in", "endpoint": "backend", "verbs": ["list"]}]}},
            "transfergateways/gw": {"kind": "TransferGateway", "spec": {
                "hostKeyRing": "keys", "listeners": [{"name": "sftp", "protocol": "sftp", "port": 2222,
                                                      "zones": ["lan"]}]}},
        }
        hashed = hash_password("correct horse")

        def user(i: int, keys: list[str]) -> dict:
            return {"kind": "TransferUser", "spec": {
                "publicKeys": keys, "roles": ["ops"],
                "passwordHash": {"name": f"u{i}-pw", "key": "hash"},
                "authMethods": ["publickey", "password"]}}

        for i in range(a.users):
            api.apply(f"/api/v1/namespaces/bench/secrets/u{i}-pw", {
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"u{i}-pw"},
                "stringData": {"hash": hashed}})
            objs[f"transferusers/u{i}"] = user(i, [uk])
        t0 = time.monotonic()
        for path, o in objs.items():
            name = path.split("/")[1]
            api.apply(f"{GROUP}/{path}", {"apiVersion": "portcullis.dev/v1alpha1", "metadata": {"name": name}, **o})

        def all_ready() -> bool:
            items = api.request("GET", f"{GROUP}/transferusers")["items"]
            ready = [u for u in items if any(c["type"] == "Ready" and c["status"] == "True"
                                             for c in u.get("status", {}).get("conditions", []))]
            return len(ready) == a.users
        cluster.wait_for("every user Ready", all_ready, timeout=600, interval=1)
        # No node runs the pods here: the gateway is done once its config is served.
        cluster.wait_for("the gateway's config", lambda: (cluster.get("transfergateway", "gw", ns) or {})
                         .get("status", {}).get("configHash"), timeout=120)
        base = quiet(api, a.quiet, timeout=600)
        settle = time.monotonic() - t0
        results = {"users": a.users,
                   "initial": {"seconds_to_quiet": round(settle - a.quiet, 1), **summary(base),
                               "operator_counted": summary(operator_counted(op))}}

        def reconciles() -> dict[str, int]:
            return {c: int(op.metric("portcullis_operator_reconciles_total", controller=c))
                    for c in ("transfergateway", "keyring", "transferuser", "transferrole", "transferendpoint",
                              "networkzone")}

        def change(name: str, do):
            before, counted, r0 = quiet(api, a.quiet), operator_counted(op), reconciles()
            t = time.monotonic()
            do()
            after = quiet(api, a.quiet)
            r1 = reconciles()
            results[name] = {"seconds_to_quiet": round(time.monotonic() - t - a.quiet, 1),
                             **summary(after - before),
                             "reconciles": {c: r1[c] - r0[c] for c in r1 if r1[c] != r0[c]},
                             "operator_counted": summary(operator_counted(op) - counted)}

        change("role", lambda: api.apply(f"{GROUP}/transferroles/ops", {
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferRole", "metadata": {"name": "ops"},
            "spec": {"mounts": [{"path": "/out", "endpoint": "backend", "verbs": ["list", "read"]}]}}))
        change("secret", lambda: api.apply("/api/v1/namespaces/bench/secrets/u7-pw", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "u7-pw"},
            "stringData": {"hash": hash_password("another horse")}}))
        change("user", lambda: api.apply(f"{GROUP}/transferusers/u7", {
            "apiVersion": "portcullis.dev/v1alpha1", "metadata": {"name": "u7"},
            **user(7, [uk, hk])}))
        results["operator"] = {
            "reconciles": op.metric("portcullis_operator_reconciles_total"),
            "writes": op.metric("portcullis_operator_writes_total"),
        }
        if a.json:
            print(json.dumps(results))
        else:
            for k, v in results.items():
                print(k, json.dumps(v))
    finally:
        op.stop()
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
