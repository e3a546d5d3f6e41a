"""The operator against a real control plane (etcd, kube-apiserver, kube-controller-manager
built from pinned Go modules; e2e/cluster.sh): CRD validation by the apiserver, the objects
the operator builds, idempotence, status and Events, the full path from `kubectl apply` to an
SFTP transfer through an emulated pod, certificate renewal, restarts and leader election."""

import ftplib
import json
import subprocess
import time
from pathlib import Path

import pytest

from ftps import BACKEND_PASSWORD, BACKEND_USER, Pki, Vsftpd, free_port_range, ftps_login
from harness import ROOT, free_port, fresh_dir, keygen, make_file, pubkey, run_sftp, sha256_file, wait_port
from kube import Cluster, Operator
from podemu import PodEmulator


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(fresh_dir("cluster"))
    yield c
    c.down()


@pytest.fixture(scope="module")
def operator(cluster):
    op = Operator(cluster, fresh_dir("operator") / "operator.log")
    cluster.wait_for("the operator to lead", op.is_leader, timeout=30)
    yield op
    op.stop()


def credentials_secret(cluster, ns: str, name: str, key_path: Path) -> None:
    cluster.kubectl("create", "secret", "generic", name, f"--from-file=ssh-privatekey={key_path}",
                    namespace=ns)


# --- CRDs and examples -------------------------------------------------------------------------

def test_examples_apply_and_every_object_becomes_ready(cluster, operator):
    ns = cluster.namespace("examples")
    # The strictest Pod Security Standard: the gateway pods must be admitted under it.
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=v1.33")
    credentials_secret(cluster, ns, "mainframe-sftp-credentials", keygen(fresh_dir("examples") / "id"))
    cluster.kubectl("apply", "-f", str(ROOT / "examples"), namespace=ns)
    for kind in ["networkzone", "keyring", "transferendpoint", "transferrole", "transferuser"]:
        for obj in cluster.items(kind, ns):
            cluster.wait_ready(kind, obj["metadata"]["name"], ns)
    # The gateway compiled and every object is applied; Ready waits for its pods, which no
    # kubelet runs here: Reconciling, with the count.
    c = cluster.wait_ready("transfergateway", "dmz", ns, status="False", reason="PodsNotReady")
    assert c["message"] == "0 of 2 pods ready", c
    # A valid user who can never log in over FTPS (a key only) is told so in its status.
    c = cluster.condition("transferuser", "acme-payroll", ns)
    assert "FTPS logins are refused" in c["message"], c
    # `kubectl get` shows the printer columns.
    out = cluster.kubectl("get", "tgw", namespace=ns).stdout
    assert out.split("\n")[0].split() == ["NAME", "READY", "REASON", "REPLICAS", "LISTENERS",
                                          "CERT-EXPIRY", "AGE"]
    assert "sftp:2222" in out and "PodsNotReady" in out and "0/2" in out, out
    # `kubectl explain` documents fields.
    explain = cluster.kubectl("explain", "transfergateway.spec.listeners.zones").stdout
    assert "NetworkZones whose peers may connect" in explain


INVALID = {
    "port out of range": (
        "TransferGateway", {"hostKeyRing": "k", "listeners": [
            {"name": "a", "protocol": "sftp", "port": 70000, "zones": ["z"]}]},
        "should be less than or equal to 65535"),
    "passive range min > max": (
        "TransferGateway", {"listeners": [
            {"name": "a", "protocol": "ftps", "port": 21, "zones": ["z"], "keyRing": "k",
             "passivePorts": {"min": 30010, "max": 30000}}]},
        "passivePorts.min must not exceed passivePorts.max"),
    "malformed CIDR": (
        "NetworkZone", {"cidrs": ["10.0.0.0/33"]},
        "every entry must be a CIDR"),
    "unknown protocol": (
        "TransferGateway", {"hostKeyRing": "k", "listeners": [
            {"name": "a", "protocol": "gopher", "port": 70, "zones": ["z"]}]},
        'Unsupported value: "gopher"'),
    "FTPS listener without a key ring": (
        "TransferGateway", {"listeners": [
            {"name": "a", "protocol": "ftpsImplicit", "port": 990, "zones": ["z"]}]},
        "an FTPS listener needs keyRing"),
    "duplicate listener names": (
        "TransferGateway", {"hostKeyRing": "k", "listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]},
            {"name": "a", "protocol": "sftp", "port": 2223, "zones": ["z"]}]},
        "listener names must be unique"),
    "duplicate listener ports": (
        "TransferGateway", {"hostKeyRing": "k", "listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]},
            {"name": "b", "protocol": "sftp", "port": 2222, "zones": ["z"]}]},
        "listener ports must be unique"),
    "SFTP listener without host keys": (
        "TransferGateway", {"listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]}]},
        "SFTP listeners need hostKeyRing"),
    "SFTP endpoint without a pinned host key": (
        "TransferEndpoint", {"protocol": "sftp", "addresses": [{"host": "10.0.0.1", "port": 22}],
                             "username": "u", "credentials": {"secretName": "s"}},
        "needs at least one pinned host key"),
    "renewBefore not shorter than duration": (
        "KeyRing", {"issuer": {"type": "selfSigned"}, "duration": "1h", "renewBefore": "2h"},
        "renewBefore must be shorter than duration"),
    "FTPS listener without passive ports": (
        "TransferGateway", {"listeners": [
            {"name": "a", "protocol": "ftps", "port": 21, "zones": ["z"], "keyRing": "k"}]},
        "an FTPS listener needs passivePorts"),
    "FTPS endpoint without its TLS trust": (
        "TransferEndpoint", {"protocol": "ftps", "addresses": [{"host": "10.0.0.1", "port": 21}],
                             "username": "u", "credentials": {"secretName": "s"}},
        "an FTPS endpoint needs ftps"),
    "plaintext FTP backend without consent": (
        "TransferEndpoint", {"protocol": "ftps", "addresses": [{"host": "10.0.0.1", "port": 21}],
                             "username": "u", "credentials": {"secretName": "s"},
                             "ftps": {"security": "plaintext"}},
        "plaintext needs allowPlaintext: true"),
    "SITE subcommands without the verb site": (
        "TransferRole", {"mounts": [{"path": "/mf", "endpoint": "mf", "verbs": ["read"],
                                     "siteCommands": ["FILETYPE=JES"]}]},
        "siteCommands need the verb site"),
    "host keys on an FTPS endpoint (accepted and ignored before)": (
        "TransferEndpoint", {"protocol": "ftps", "addresses": [{"host": "10.0.0.1", "port": 21}],
                             "username": "u", "credentials": {"secretName": "s"}, "ftps": {"keyRing": "k"},
                             "hostKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG2d6v4bmT1bT8+3bT4v1lYz1c5o0G0bq7S4k3f3dW8x"]},
        "hostKeys apply to SFTP endpoints only"),
    "a private key on an FTPS endpoint (accepted and ignored before)": (
        "TransferEndpoint", {"protocol": "ftps", "addresses": [{"host": "10.0.0.1", "port": 21}],
                             "username": "u", "ftps": {"keyRing": "k"},
                             "credentials": {"secretName": "s", "privateKeyKey": "id"}},
        "credentials.privateKeyKey applies to SFTP endpoints only"),
    "lifetime on a tlsSecret key ring (accepted and ignored before)": (
        "KeyRing", {"issuer": {"type": "tlsSecret", "secretName": "t"}, "duration": "24h", "renewBefore": "8h"},
        "do not apply to a tlsSecret key ring"),
    "names on a tlsSecret key ring (accepted and ignored before)": (
        "KeyRing", {"issuer": {"type": "tlsSecret", "secretName": "t"}, "dnsNames": ["ftp.example"]},
        "do not apply to a tlsSecret key ring"),
    "NodePort with passive ports outside the node port range": (
        "TransferGateway", {"service": {"type": "NodePort"}, "listeners": [
            {"name": "a", "protocol": "ftps", "port": 2121, "zones": ["z"], "keyRing": "k",
             "passivePorts": {"min": 20000, "max": 20003}}]},
        "passivePorts must lie in the node port range"),
    "DNS resolver addresses with DNS egress off": (
        "TransferGateway", {"dns": {"enabled": False, "cidrs": ["169.254.20.10/32"]}, "listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]}], "hostKeyRing": "k"},
        "cidrs apply only while DNS egress is enabled"),
    "no audit sink at all": (
        "TransferGateway", {"audit": {"stdout": False}, "listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]}], "hostKeyRing": "k"},
        "at least one audit sink is required"),
    "an audit spool smaller than two files": (
        "TransferGateway", {"audit": {"file": {"rotateBytes": 1048576, "maxBytes": 1048576}}, "listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]}], "hostKeyRing": "k"},
        "maxBytes must be at least twice rotateBytes"),
    "an audit file rotated below 4 KiB": (
        "TransferGateway", {"audit": {"file": {"rotateBytes": 100}}, "listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]}], "hostKeyRing": "k"},
        "rotateBytes"),
    "CA issuer without a Secret": (
        "KeyRing", {"issuer": {"type": "ca"}},
        "issuer types tlsSecret and ca need secretName"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_the_apiserver_refuses_invalid_objects(cluster, case):
    kind, spec, message = INVALID[case]
    ns = cluster.namespace("invalid")
    obj = {"apiVersion": "portcullis.dev/v1alpha1", "kind": kind,
           "metadata": {"name": "bad"}, "spec": spec}
    r = cluster.apply(obj, ns, check=False)
    assert r.returncode != 0, f"{case}: accepted"
    assert message in r.stderr, r.stderr
    assert cluster.get(kind.lower(), "bad", ns) is None


# --- What the operator builds ------------------------------------------------------------------

def owned_by(obj: dict, gateway: dict) -> bool:
    refs = obj["metadata"].get("ownerReferences", [])
    return any(r["uid"] == gateway["metadata"]["uid"] and r.get("controller") for r in refs)


def test_built_objects_field_by_field(cluster, operator):
    ns = "examples"
    gw = cluster.wait_for("gateway", lambda: cluster.get("transfergateway", "dmz", ns))
    # Two replicas with FTPS: a Deployment each (passive slices, see test_node.py for why).
    dep = cluster.get("deployment", "dmz-r0", ns)
    assert cluster.get("deployment", "dmz", ns) is None
    for kind, name in [("deployment", "dmz-r0"), ("deployment", "dmz-r1"), ("service", "dmz"), ("networkpolicy", "dmz"),
                       ("poddisruptionbudget", "dmz"), ("serviceaccount", "dmz-gateway"),
                       ("secret", "dmz-config")]:
        obj = cluster.get(kind, name, ns)
        assert obj is not None, f"{kind}/{name} missing"
        assert owned_by(obj, gw), f"{kind}/{name} is not owned by the gateway"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "portcullis-operator"
        assert labels["app.kubernetes.io/instance"] == "dmz"
        assert labels["app.kubernetes.io/part-of"] == "portcullis"
        managers = {m["manager"] for m in obj["metadata"].get("managedFields", []) if m["operation"] == "Apply"}
        assert managers == {"portcullis-operator"}, managers

    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["selector"]["matchLabels"]["portcullis.dev/replica"] == "0"
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "dmz-gateway"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["command"] == ["portcullis-gateway"]
    assert c["args"] == ["run", "--config", "/etc/portcullis/config", "--passive-slice", "0/2"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9922, "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # A terminating pod keeps serving until the Service has let it go (test_node.py shows why).
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 5
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert c["resources"]["limits"] == {"memory": "1Gi"}
    passive = set(range(30000, 30005))  # replica 0's half of 30000-30009
    assert {p["containerPort"] for p in c["ports"]} == {2222, 2121, 9922, 7946} | passive
    assert {p["name"] for p in c["ports"] if p["containerPort"] in passive} == {f"pasv-{p}" for p in passive}
    other = cluster.get("deployment", "dmz-r1", ns)["spec"]["template"]["spec"]["containers"][0]
    assert other["args"][-2:] == ["--passive-slice", "1/2"]
    assert {p["containerPort"] for p in other["ports"]} == {2222, 2121, 9922, 7946} | set(range(30005, 30010))
    assert {p["protocol"] for p in c["ports"] if p["containerPort"] == 7946} == {"UDP"}
    # The example's audit file sink: an emptyDir sized above its 1 GiB spool, mounted writable.
    assert c["volumeMounts"] == [{"name": "config", "mountPath": "/etc/portcullis/config", "readOnly": True},
                                 {"name": "audit", "mountPath": "/var/log/portcullis"}]
    vol, audit = pod["volumes"]
    assert vol["secret"]["secretName"] == "dmz-config" and vol["secret"]["defaultMode"] == 0o440
    assert audit == {"name": "audit", "emptyDir": {"sizeLimit": str((1 << 30) + (64 << 20) + (16 << 20))}}
    assert len(spec["template"]["metadata"]["annotations"]["portcullis.dev/config-hash"]) == 16
    # Two replicas spread across nodes.
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0][
        "podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"

    svc = cluster.get("service", "dmz", ns)["spec"]
    assert svc["type"] == "LoadBalancer"
    # Every passive port, each targeted by the name only its replica's pods carry.
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["ports"]] == [
        ("sftp", 2222, 2222), ("ftps", 2121, 2121)] + [(f"pasv-{p}", p, f"pasv-{p}") for p in range(30000, 30010)]
    # Two replicas and FTPS: a client's data connections must reach its control connection's pod.
    assert svc["sessionAffinity"] == "ClientIP"
    assert sorted(svc["loadBalancerSourceRanges"]) == ["10.0.0.0/8", "2001:db8:100::/48", "203.0.113.0/24"]
    assert svc["externalTrafficPolicy"] == "Local"
    assert svc["selector"] == {"app.kubernetes.io/name": "portcullis-gateway", "app.kubernetes.io/instance": "dmz"}

    np = cluster.get("networkpolicy", "dmz", ns)["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    sftp_rule, ftps_rule, admin_rule, defender_in = np["ingress"]
    assert sorted(p["ipBlock"]["cidr"] for p in sftp_rule["from"]) == [
        "10.0.0.0/8", "2001:db8:100::/48", "203.0.113.0/24"]
    assert sftp_rule["ports"] == [{"port": 2222, "protocol": "TCP"}]
    # FTPS admits only the partners zone, on its control port and its passive range.
    assert sorted(p["ipBlock"]["cidr"] for p in ftps_rule["from"]) == ["2001:db8:100::/48", "203.0.113.0/24"]
    assert ftps_rule["ports"] == [{"port": 2121, "protocol": "TCP"},
                                  {"port": 30000, "endPort": 30009, "protocol": "TCP"}]
    assert admin_rule["ports"] == [{"port": 9922, "protocol": "TCP"}]
    # The replicas tell each other of defender bans, on UDP 7946, and only each other.
    gw_pods = {"podSelector": {"matchLabels": svc["selector"]}}
    assert defender_in == {"from": [gw_pods], "ports": [{"port": 7946, "protocol": "UDP"}]}
    backend_rule, defender_out, dns_rule = np["egress"]
    assert defender_out == {"to": [gw_pods], "ports": [{"port": 7946, "protocol": "UDP"}]}
    peers = cluster.get("service", "dmz-peers", ns)["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    assert peers["selector"] == svc["selector"]
    assert [(p["port"], p["protocol"]) for p in peers["ports"]] == [(7946, "UDP")]
    assert backend_rule == {"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}], "ports": [{"port": 22, "protocol": "TCP"}]}
    assert dns_rule["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert sorted((p["protocol"], p["port"]) for p in dns_rule["ports"]) == [("TCP", 53), ("UDP", 53)]

    pdb = cluster.get("poddisruptionbudget", "dmz", ns)["spec"]
    assert pdb["maxUnavailable"] == 1
    sa = cluster.get("serviceaccount", "dmz-gateway", ns)
    assert sa["automountServiceAccountToken"] is False

    # The kube-controller-manager turned the Deployment into a ReplicaSet and Pods, and Pod
    # Security admission (enforce=restricted on this namespace) admitted them.
    cluster.wait_for("a ReplicaSet", lambda: cluster.items("replicaset", ns))
    def gateway_pods():
        pods = [p for p in cluster.items("pod", ns)
                if p["metadata"]["labels"].get("app.kubernetes.io/instance") == "dmz"]
        return pods if len(pods) == 2 else None

    pods = cluster.wait_for("two gateway pods", gateway_pods)
    assert all(p["spec"]["securityContext"]["runAsUser"] == 65532 for p in pods)
    rs_events = [e for e in cluster.items("events.events.k8s.io", ns) if "violates PodSecurity" in (e.get("note") or "")]
    assert not rs_events, rs_events

    # The bundle Secret holds a config the gateway binary accepts.
    data = cluster.secret_data("dmz-config", ns)
    assert {"config.yaml", "defender.key", "hostkey-ed25519", "hostkey-ecdsa-p256", "endpoint-mainframe.key",
            "keyring-edge.crt", "keyring-edge.key"} <= set(data)
    bundle = fresh_dir("bundle-check")
    for k, v in data.items():
        (bundle / k).write_bytes(v)
    r = subprocess.run([str(ROOT / "target" / "release" / "portcullis-gateway"), "check", "--config", str(bundle)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_node_port_passive_ports_and_removed_fields_reach_the_cluster(cluster, operator):
    """Two defects a real cluster showed. A NodePort Service gave the passive ports random node
    ports, so PASV named ports nobody listened on: they now keep their number. And a field
    removed from the spec (a Service annotation, a resource limit) never left the built objects,
    because "the live object has every field we want" held for a subset: now applied."""
    ns = "examples"
    cluster.wait_for("gateway", lambda: cluster.get("transfergateway", "dmz", ns))

    def patch(spec: dict) -> None:
        cluster.kubectl("patch", "transfergateway", "dmz", "--type=merge", "-p",
                        json.dumps({"spec": spec}), namespace=ns)

    def service():
        return cluster.get("service", "dmz", ns)

    def container():
        return cluster.get("deployment", "dmz-r0", ns)["spec"]["template"]["spec"]["containers"][0]

    try:
        patch({"service": {"type": "NodePort", "annotations": {"lb.example/scheme": "internal"}},
               "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "2Gi"}},
               "placement": {"nodeSelector": {"node-pool": "dmz"},
                             "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "dmz",
                                              "effect": "NoSchedule"}]}})
        svc = cluster.wait_for("NodePort Service", lambda: (s := service())["spec"]["type"] == "NodePort"
                               and s["metadata"].get("annotations", {}).get("lb.example/scheme") and s)
        pasv = [p for p in svc["spec"]["ports"] if p["name"].startswith("pasv-")]
        assert len(pasv) == 10 and all(p["nodePort"] == p["port"] for p in pasv), pasv
        cluster.wait_for("the 2Gi limit", lambda: container()["resources"].get("limits") == {"memory": "2Gi"})
        pod = cluster.get("deployment", "dmz-r0", ns)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"node-pool": "dmz"}
        assert pod["tolerations"][0]["effect"] == 'NoSchedule'
        # Removed from the spec: gone from the objects.
        patch({"service": {"annotations": None}, "resources": {"limits": None}, "placement": None})
        cluster.wait_for("the annotation to go", lambda: "lb.example/scheme" not in
                         (service()["metadata"].get("annotations") or {}))
        cluster.wait_for("the limit to go", lambda: "limits" not in container()["resources"])
        cluster.wait_for("the placement to go", lambda: "nodeSelector" not in
                         cluster.get("deployment", "dmz-r0", ns)["spec"]["template"]["spec"])
    finally:
        patch({"service": {"type": "ClusterIP", "annotations": None}, "resources": None})
        cluster.wait_for("ClusterIP again", lambda: service()["spec"]["type"] == "ClusterIP")
        cluster.wait_for("the default limit", lambda: container()["resources"].get("limits") == {"memory": "1Gi"})


def test_reconciling_an_unchanged_world_writes_nothing(cluster, operator):
    ns = "examples"
    kinds = [("deployment", "dmz-r0"), ("deployment", "dmz-r1"), ("service", "dmz"), ("networkpolicy", "dmz"),
             ("poddisruptionbudget", "dmz"), ("serviceaccount", "dmz-gateway"), ("secret", "dmz-config"),
             ("secret", "edge-keyring"), ("transfergateway", "dmz"), ("keyring", "edge")]
    # Let the previous test's changes settle: the operator's writes, and the Deployment
    # controller's status updates for them.
    def settled():
        deps = [cluster.get("deployment", n, ns) for n in ("dmz-r0", "dmz-r1")]
        return all(d["status"].get("observedGeneration") == d["metadata"]["generation"] for d in deps)
    cluster.wait_for("the Deployments to settle", settled)
    cluster.wait_for("the operator to stop writing", lambda: (
        w := operator.metric("portcullis_operator_writes_total"), time.sleep(2),
        operator.metric("portcullis_operator_writes_total") == w)[-1], timeout=60)
    versions = {k: cluster.get(*k, ns)["metadata"]["resourceVersion"] for k in kinds}
    writes = operator.metric("portcullis_operator_writes_total")
    reconciles = operator.metric("portcullis_operator_reconciles_total", controller="transfergateway")
    # Touch every input kind without changing its meaning: each change triggers a reconcile.
    for kind, name in [("transfergateway", "dmz"), ("networkzone", "partners"), ("keyring", "edge"),
                       ("transferrole", "payroll-drop"), ("transferuser", "acme-payroll"),
                       ("transferendpoint", "mainframe")]:
        cluster.kubectl("annotate", kind, name, f"test/poke={time.time_ns()}", "--overwrite", namespace=ns)
    cluster.wait_for("reconciles", lambda: operator.metric(
        "portcullis_operator_reconciles_total", controller="transfergateway") >= reconciles + 2)
    time.sleep(2)
    # Status patches count as writes too (kind="TransferGateway/status" and so on).
    assert operator.metric("portcullis_operator_writes_total") == writes
    after = {k: cluster.get(*k, ns)["metadata"]["resourceVersion"] for k in kinds}
    changed = {k for k in kinds if after[k] != versions[k] and k[0] not in ("transfergateway", "keyring")}
    assert not changed, f"objects rewritten: {changed}"


# --- Status for broken references --------------------------------------------------------------

def test_a_broken_reference_names_itself_and_fixing_it_recovers(cluster, operator):
    ns = "examples"
    role = {"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferRole",
            "metadata": {"name": "ops"},
            "spec": {"mounts": [{"path": "/ops", "endpoint": "mainframe2", "verbs": ["list"]}]}}
    cluster.apply(role, ns)
    c = cluster.wait_ready("transfergateway", "dmz", ns, status="False", reason="EndpointNotFound")
    assert "role ops names endpoint mainframe2, which does not exist" in c["message"]
    # kstatus: a person must act.
    assert cluster.condition("transfergateway", "dmz", ns, "Stalled")["status"] == "True"
    assert cluster.condition("transfergateway", "dmz", ns, "Reconciling")["status"] == "False"
    rc = cluster.wait_ready("transferrole", "ops", ns, status="False", reason="EndpointNotFound")
    assert "mainframe2" in rc["message"]
    events = cluster.wait_for("a Warning event", lambda: [
        e for e in cluster.items("events.events.k8s.io", ns)
        if e["regarding"]["name"] == "dmz" and e["reason"] == "EndpointNotFound"])
    assert events[0]["type"] == "Warning"
    assert "mainframe2" in events[0]["note"]
    # The running config was kept: the bundle Secret still has the last good config.
    assert b"/ops" not in cluster.secret_data("dmz-config", ns)["config.yaml"]

    role["spec"]["mounts"][0]["endpoint"] = "mainframe"
    cluster.apply(role, ns)
    # Compiled and applied; no kubelet runs its pods here, so it is not Ready but Reconciling
    # (the new config's pods wait for the old ones, which wait for new ones to be ready).
    c = cluster.wait_for("the gateway to reconcile again", lambda: (
        c if (c := cluster.condition("transfergateway", "dmz", ns, "Reconciling"))["status"] == "True"
        else None))
    assert c["reason"] in ("RollingOut", "PodsNotReady"), c
    assert cluster.condition("transfergateway", "dmz", ns, "Stalled")["status"] == "False"
    cluster.wait_ready("transferrole", "ops", ns, status="True")
    cluster.wait_for("the new role in the bundle",
                     lambda: b"/ops" in cluster.secret_data("dmz-config", ns)["config.yaml"])


def test_a_missing_key_ring_and_credential_secret_are_named(cluster, operator):
    ns = cluster.namespace("broken")
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "NetworkZone",
                   "metadata": {"name": "z"}, "spec": {"cidrs": ["10.0.0.0/8"]}}, ns)
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferGateway",
                   "metadata": {"name": "gw"},
                   "spec": {"hostKeyRing": "nope", "listeners": [
                       {"name": "sftp", "protocol": "sftp", "port": 2222, "zones": ["z"]}]}}, ns)
    c = cluster.wait_ready("transfergateway", "gw", ns, status="False", reason="KeyRingNotFound")
    assert "hostKeyRing names key ring nope, which does not exist" in c["message"]
    assert cluster.get("deployment", "gw", ns) is None  # nothing is deployed from a broken config
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferEndpoint",
                   "metadata": {"name": "ep"},
                   "spec": {"protocol": "sftp", "addresses": [{"host": "10.0.0.9", "port": 22}],
                            "hostKeys": [pubkey(keygen(fresh_dir("broken") / "hk"))],
                            "username": "u", "credentials": {"secretName": "absent"}}}, ns)
    c = cluster.wait_ready("transferendpoint", "ep", ns, status="False", reason="SecretNotFound")
    assert "endpoint ep names Secret absent, which does not exist" in c["message"]


# --- Key ring issuers ------------------------------------------------------------------------------

def openssl(*args, input=None) -> str:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, text=True, check=True).stdout


def test_key_ring_issuers_ca_and_tls_secret_and_trust_bundles(cluster, operator):
    ns = cluster.namespace("issuers")
    d = fresh_dir("issuers")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
            "-subj", "/CN=corp-ca", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    cluster.kubectl("create", "secret", "tls", "corp-ca", f"--cert={d / 'ca.crt'}", f"--key={d / 'ca.key'}",
                    namespace=ns)
    cluster.kubectl("create", "secret", "generic", "partner-cas", f"--from-file=ca.crt={d / 'ca.crt'}",
                    namespace=ns)
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "KeyRing", "metadata": {"name": "signed"},
                   "spec": {"issuer": {"type": "ca", "secretName": "corp-ca"},
                            "dnsNames": ["ftps.corp.example"], "ipAddresses": ["192.0.2.10"],
                            "duration": "720h", "sshHostKeys": False,
                            "clientCas": [{"name": "partner-cas"}]}}, ns)
    cluster.wait_ready("keyring", "signed", ns)
    kr = cluster.get("keyring", "signed", ns)
    st = kr["status"]
    data = cluster.secret_data(st["secretName"], ns)
    (d / "leaf.crt").write_bytes(data["tls.crt"])
    # The leaf chains to the given CA and carries the names.
    assert "OK" in openssl("verify", "-CAfile", str(d / "ca.crt"), str(d / "leaf.crt"))
    text = openssl("x509", "-in", str(d / "leaf.crt"), "-noout", "-text")
    assert "DNS:ftps.corp.example" in text and "IP Address:192.0.2.10" in text
    fp = openssl("x509", "-in", str(d / "leaf.crt"), "-noout", "-fingerprint", "-sha256")
    assert fp.split("=")[1].strip().replace(":", "").lower() == st["certificateFingerprint"]
    # renewBefore defaults to a third of the lifetime.
    import datetime as dt
    na = dt.datetime.fromisoformat(st["notAfter"].replace("Z", "+00:00"))
    rt = dt.datetime.fromisoformat(st["renewalTime"].replace("Z", "+00:00"))
    lifetime = 720 * 3600 + 30
    assert abs((na - rt).total_seconds() - lifetime / 3) < 2
    assert data["client-cas.crt"] == (d / "ca.crt").read_bytes()
    assert "ssh_host_ed25519_key" not in data
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Ready": "True", "Issuing": "False"}

    # A duration that CEL's duration() accepts means the same to the operator: 1.5h is 1.5h
    # (it used to fail the operator's own parser and silently become the 90-day default).
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "KeyRing", "metadata": {"name": "fractional"},
                   "spec": {"issuer": {"type": "ca", "secretName": "corp-ca"}, "dnsNames": ["f.corp.example"],
                            "duration": "1.5h", "renewBefore": "30m", "sshHostKeys": False}}, ns)
    cluster.wait_ready("keyring", "fractional", ns)
    fst = cluster.get("keyring", "fractional", ns)["status"]
    na = dt.datetime.fromisoformat(fst["notAfter"].replace("Z", "+00:00"))
    rt = dt.datetime.fromisoformat(fst["renewalTime"].replace("Z", "+00:00"))
    assert abs((na - rt).total_seconds() - 1800) < 2
    left = (na - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 5000 < left <= 5400 + 30, left

    # tlsSecret: an existing kubernetes.io/tls Secret (as cert-manager keeps) is passed on and
    # followed when it changes.
    def make_tls(n):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "5",
                "-subj", f"/CN=managed-{n}", "-keyout", str(d / f"m{n}.key"), "-out", str(d / f"m{n}.crt"))
        yaml = cluster.kubectl("create", "secret", "tls", "managed", f"--cert={d / f'm{n}.crt'}",
                               f"--key={d / f'm{n}.key'}", "--dry-run=client", "-o", "yaml", namespace=ns).stdout
        cluster.apply(yaml, ns)
        return (d / f"m{n}.crt").read_bytes()

    first = make_tls(1)
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "KeyRing", "metadata": {"name": "managed"},
                   "spec": {"issuer": {"type": "tlsSecret", "secretName": "managed"}}}, ns)
    cluster.wait_ready("keyring", "managed", ns)
    assert cluster.secret_data("managed-keyring", ns)["tls.crt"] == first
    second = make_tls(2)
    cluster.wait_for("the key ring to follow its Secret",
                     lambda: cluster.secret_data("managed-keyring", ns)["tls.crt"] == second)


# --- The full path -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deployed(cluster, operator, sshd, passwords):
    """A gateway applied with kubectl and running from its emulated pod, in front of a real
    sshd and a real vsftpd, with an SFTP and an explicit FTPS listener. Its key ring has a
    one-minute certificate so that renewal happens during the tests."""
    ns = cluster.namespace("full")
    d = fresh_dir("full")
    client_key = keygen(d / "alice_ed25519")
    credentials_secret(cluster, ns, "backend-credentials", sshd.client_key)
    pki = Pki(d / "pki")
    vs = Vsftpd(d / "vsftpd", pki)
    cluster.kubectl("create", "secret", "generic", "vsftpd-credentials",
                    f"--from-literal=password={BACKEND_PASSWORD}", namespace=ns)
    cluster.kubectl("create", "secret", "generic", "vsftpd-ca", f"--from-file=ca.crt={pki.ca}", namespace=ns)
    cluster.kubectl("create", "secret", "generic", "alice-password",
                    f"--from-literal=hash={passwords['alice-pw']}", namespace=ns)
    port, admin, ftps_port = free_port(), free_port(), free_port()
    pasv = free_port_range(8)
    docs = [
        {"kind": "NetworkZone", "metadata": {"name": "loopback"}, "spec": {"cidrs": ["127.0.0.0/8"]}},
        {"kind": "KeyRing", "metadata": {"name": "gw-keys"},
         "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": ["localhost"], "ipAddresses": ["127.0.0.1"],
                  "duration": "1m", "renewBefore": "35s"}},
        {"kind": "TransferEndpoint", "metadata": {"name": "backend"},
         "spec": {"protocol": "sftp", "addresses": [{"host": "127.0.0.1", "port": sshd.port}],
                  "hostKeys": [pubkey(sshd.host_key)], "username": sshd.user,
                  "credentials": {"secretName": "backend-credentials"}}},
        {"kind": "KeyRing", "metadata": {"name": "audit-keys"},
         "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": ["audit.local"], "sshHostKeys": False,
                  "auditSigningKey": True}},
        {"kind": "KeyRing", "metadata": {"name": "backend-trust"},
         "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": ["gateway.local"],
                  "backendCas": [{"name": "vsftpd-ca", "key": "ca.crt"}]}},
        {"kind": "TransferEndpoint", "metadata": {"name": "mainframe"},
         "spec": {"protocol": "ftps", "addresses": [{"host": "127.0.0.1", "port": vs.port}],
                  "username": BACKEND_USER, "credentials": {"secretName": "vsftpd-credentials"},
                  "ftps": {"keyRing": "backend-trust", "serverName": "localhost"}}},
        {"kind": "TransferRole", "metadata": {"name": "exchange"},
         "spec": {"mounts": [{"path": "/exchange", "endpoint": "backend", "backendPath": str(sshd.root),
                              "verbs": ["list", "read"]}]}},
        {"kind": "TransferRole", "metadata": {"name": "batch"},
         "spec": {"mounts": [{"path": "/mf", "endpoint": "mainframe",
                              "verbs": ["list", "read", "write", "setattr", "site"], "siteCommands": ["CHMOD"]}]}},
        {"kind": "TransferUser", "metadata": {"name": "alice"},
         "spec": {"publicKeys": [pubkey(client_key)], "passwordHash": {"name": "alice-password", "key": "hash"},
                  "roles": ["exchange", "batch"]}},
        {"kind": "TransferGateway", "metadata": {"name": "edge"},
         "spec": {"hostKeyRing": "gw-keys", "replicas": 1, "adminPort": admin,
                  "audit": {"signingKeyRing": "audit-keys", "checkpointSeconds": 1,
                            "file": {"rotateBytes": 65536, "maxBytes": 1048576}},
                  "listeners": [
                      {"name": "sftp", "protocol": "sftp", "port": port, "zones": ["loopback"]},
                      {"name": "ftps", "protocol": "ftps", "port": ftps_port, "zones": ["loopback"],
                       "keyRing": "gw-keys", "passivePorts": {"min": pasv, "max": pasv + 7},
                       "tls": {"minVersion": "1.3"}}]}},
    ]
    for doc in docs:
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", **doc}, ns)
    # Compiled and applied, but no pod is ready yet: not Ready (it used to say Ready with 0 of
    # 1 pods ready), Reconciling, not Stalled.
    c = cluster.wait_ready("transfergateway", "edge", ns, status="False", reason="PodsNotReady")
    assert c["message"] == "0 of 1 pods ready", c
    assert cluster.condition("transfergateway", "edge", ns, "Reconciling")["status"] == "True"
    assert cluster.condition("transfergateway", "edge", ns, "Stalled")["status"] == "False"
    pod = PodEmulator(ns, "edge", d / "pod", env=cluster.env, kubectl=str(cluster.bin / "kubectl"))
    pod.start()
    # The pod's readiness probe passes, its status says so, the Deployment counts it: Ready.
    # Ready also needs the pod to confirm, on its admin port, that it serves the config the
    # operator wrote: one hash definition on both sides.
    c = cluster.wait_ready("transfergateway", "edge", ns, timeout=60)
    assert "1 of 1 pods ready" in c["message"], c
    st = cluster.get("transfergateway", "edge", ns)["status"]
    assert c["message"].endswith(f"1 of 1 ready pods serve config {st['configHash'][:12]}"), c
    assert st["servedConfigHash"] == st["configHash"], st
    assert cluster.condition("transfergateway", "edge", ns, "Reconciling")["status"] == "False"
    wait_port(port)
    wait_port(ftps_port)

    class Deployed:
        pass

    x = Deployed()
    x.ns, x.dir, x.key, x.port, x.pod, x.sshd = ns, d, client_key, port, pod, sshd
    x.ftps_port, x.vsftpd = ftps_port, vs
    yield x
    pod.stop()
    vs.stop()


def sftp(x, batch: str, check: bool = True) -> subprocess.CompletedProcess:
    r = run_sftp(x.port, x.dir, "alice", batch, key=x.key, check=check, timeout=60)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def test_full_path_sftp_through_the_emulated_pod_and_a_live_role_change(cluster, deployed):
    x = deployed
    # The pod runs as the template's non-root user.
    status = Path(f"/proc/{x.pod.proc.pid}/status").read_text()
    assert "\nUid:\t65532\t" in status, status
    (x.sshd.root / "report.csv").write_text("id,amount\n1,100\n")
    up = x.dir / "upload.txt"
    up.write_text("hello through kubernetes\n")
    r = sftp(x, "ls /exchange\nget /exchange/report.csv " + str(x.dir / "report.csv") + "\n")
    assert "report.csv" in r.stdout
    assert (x.dir / "report.csv").read_text() == "id,amount\n1,100\n"
    # Writing is not granted yet.
    r = sftp(x, f"put {up} /exchange/upload.txt\n", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr + r.stdout
    assert not (x.sshd.root / "upload.txt").exists()

    pid = x.pod.proc.pid
    before = cluster.get("transfergateway", "edge", x.ns)["status"]["configHash"]
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferRole",
                   "metadata": {"name": "exchange"},
                   "spec": {"mounts": [{"path": "/exchange", "endpoint": "backend",
                                        "backendPath": str(x.sshd.root),
                                        "verbs": ["list", "read", "write"]}]}}, x.ns)

    def uploaded():
        r = sftp(x, f"put {up} /exchange/upload.txt\n", check=False)
        return r.returncode == 0

    cluster.wait_for("the new rule in the running gateway", uploaded, timeout=30, interval=0.5)
    assert (x.sshd.root / "upload.txt").read_text() == up.read_text()
    # The status follows: the pod confirms the new config.
    def confirmed():
        st = cluster.get("transfergateway", "edge", x.ns)["status"]
        return st.get("servedConfigHash") == st["configHash"] != before and st

    st = cluster.wait_for("the pod to confirm the new config", confirmed, timeout=30, interval=0.5)
    assert cluster.condition("transfergateway", "edge", x.ns, "Ready")["status"] == "True", st
    assert x.pod.proc.pid == pid and x.pod.proc.poll() is None, "the gateway restarted"
    assert x.pod.audit("configReloaded"), "no configReloaded audit record"


def test_full_path_ftps_through_the_emulated_pod_to_vsftpd_and_sshd(cluster, deployed):
    """FTPS as the operator configures it: TLS 1.3 with the key ring's certificate (verified
    against the operator's CA), FTPS to vsftpd with the trusted CA from another key ring, FTPS
    to the SFTP backend, and SITE through the role's allow-list."""
    x = deployed
    kr = cluster.get("keyring", "gw-keys", x.ns)["status"]
    ca = x.dir / "gw-ca.pem"
    ca.write_bytes(cluster.secret_data(kr["secretName"], x.ns)["ca.crt"])
    (x.sshd.root / "ledger.csv").write_text("id\n7\n")
    src = x.dir / "batch.bin"
    digest = make_file(src, 5_000_000)
    base = f"ftp://alice:alice-pw@localhost:{x.ftps_port}"
    tls13 = ["--ssl-reqd", "--cacert", str(ca), "--tlsv1.3"]
    subprocess.run(["curl", "-sS", *tls13, "-T", str(src), f"{base}/mf/batch.bin"], check=True, timeout=60)
    assert sha256_file(x.vsftpd.root / "batch.bin") == digest
    back = x.dir / "batch.back"
    subprocess.run(["curl", "-sS", *tls13, "-o", str(back), f"{base}/mf/batch.bin"], check=True, timeout=60)
    assert sha256_file(back) == digest
    r = subprocess.run(["curl", "-sS", *tls13, f"{base}/exchange/ledger.csv"], check=True, timeout=60,
                       capture_output=True)
    assert r.stdout == b"id\n7\n"
    # TLS 1.2 is below this listener's floor.
    r = subprocess.run(["curl", "-sS", "--ssl-reqd", "--cacert", str(ca), "--tls-max", "1.2",
                        f"{base}/mf/"], capture_output=True, timeout=60)
    assert r.returncode != 0
    f = ftps_login(x.ftps_port, ca, "alice", "alice-pw")
    try:
        f.cwd("/mf")
        assert f.sendcmd("SITE CHMOD 600 batch.bin").startswith("200")
        with pytest.raises(ftplib.error_perm, match="^550"):
            f.sendcmd("SITE EXEC rm -rf /")
        # A path argument is mapped through the mount: the client's absolute path works too.
        assert f.sendcmd("SITE CHMOD 640 /mf/batch.bin").startswith("200")
    finally:
        f.quit()
    ends = [e for e in x.pod.audit("transferEnd") if e["path"] == "/mf/batch.bin"]
    assert [(e["direction"], e["confidence"], e["sha256"]) for e in ends] == [
        ("upload", "High", digest), ("download", "High", digest)]
    assert all(e["channel"].startswith("TLSv1_3") for e in ends)


def test_the_pod_trail_verifies_with_the_key_ring_public_key(cluster, deployed):
    """spec.audit through the operator: the KeyRing makes the signing key and publishes its
    public half; the pod writes a signed, rotated trail into its emptyDir; `audit verify --key`
    with the key from the KeyRing status passes over it, and a transfer's receipt checks."""
    x = deployed
    st = cluster.get("keyring", "audit-keys", x.ns)["status"]
    assert st["auditPublicKey"].startswith("-----BEGIN PUBLIC KEY-----"), st
    assert len(st["auditKeyId"]) == 16, st
    secret = cluster.secret_data("audit-keys-keyring", x.ns)
    assert b"PRIVATE KEY" in secret["audit-signing.pem"]
    pub = x.dir / "audit-keys.pub"
    pub.write_text(st["auditPublicKey"])
    up = x.dir / "audited.txt"
    up.write_text("audited through kubernetes\n" * 100)
    sftp(x, f"put {up} /mf/audited.txt\n")
    trail = x.pod.dir / "volumes" / "audit"

    def end_and_checkpoint():
        recs = [json.loads(line) for f in sorted(trail.iterdir()) for line in f.read_text().splitlines()
                if line.startswith("{")]
        ends = [r for r in recs if r["event"] == "transferEnd" and r["path"] == "/mf/audited.txt"]
        return ends and any(r["event"] == "checkpoint" and r["seq"] > ends[-1]["seq"] for r in recs) and ends[-1]

    end = cluster.wait_for("the pod's trail to sign the transfer", end_and_checkpoint, timeout=30, interval=0.5)
    assert end["confidence"] == "High", end
    gateway_bin = str(ROOT / "target" / "release" / "portcullis-gateway")
    r = subprocess.run([gateway_bin, "audit", "verify", "--live", "--key", str(pub), str(trail)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "signatures checked" in r.stdout, r.stdout
    receipt = subprocess.run([gateway_bin, "audit", "receipt", "--transfer", end["transfer"], str(trail)],
                             capture_output=True, text=True)
    assert receipt.returncode == 0, receipt.stderr
    (x.dir / "receipt.jsonl").write_text(receipt.stdout)
    r = subprocess.run([gateway_bin, "audit", "check-receipt", "--key", str(pub), str(x.dir / "receipt.jsonl")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"ok: transfer {end['transfer']}: upload of /mf/audited.txt"), r.stdout
    assert f"signed by key {st['auditKeyId']}" in r.stdout, r.stdout


def test_certificate_renewal_reaches_the_running_gateway_without_dropping_sessions(cluster, deployed):
    import paramiko

    x = deployed
    kr0 = cluster.get("keyring", "gw-keys", x.ns)["status"]
    # An SFTP session opened before the renewal.
    t = paramiko.Transport(("127.0.0.1", x.port))
    t.connect()
    t.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(str(x.key)))
    sf = paramiko.SFTPClient.from_transport(t)
    assert "report.csv" in sf.listdir("/exchange")
    host_key_before = t.get_remote_server_key().get_base64()

    # renewBefore 35s of a 60s lifetime: renewal is due about 25s after issue.
    kr1 = cluster.wait_for("a renewed certificate", lambda: (
        (s := cluster.get("keyring", "gw-keys", x.ns)["status"])["certificateFingerprint"]
        != kr0["certificateFingerprint"] and s), timeout=90, interval=1)
    import datetime as dt
    assert dt.datetime.fromisoformat(kr1["notAfter"].replace("Z", "+00:00")) > \
        dt.datetime.fromisoformat(kr0["notAfter"].replace("Z", "+00:00"))
    # Renewed before the old one expired.
    issued = dt.datetime.now(dt.timezone.utc)
    assert issued < dt.datetime.fromisoformat(kr0["notAfter"].replace("Z", "+00:00"))
    # SSH host keys are stable across renewals.
    assert kr1["hostKeyFingerprints"] == kr0["hostKeyFingerprints"]

    # The running gateway reloaded the new certificate from its mounted Secret.
    def reloaded():
        for e in x.pod.audit("configReloaded"):
            if any(c["sha256"] == kr1["certificateFingerprint"] for c in e["certificates"]):
                return e
        return None

    cluster.wait_for("the gateway to load the renewed certificate", reloaded, timeout=30)
    # The session opened before the renewal goes on working.
    with sf.open("/exchange/report.csv") as f:
        assert f.read() == b"id,amount\n1,100\n"
    sf.close()
    t.close()
    # A new connection sees the same host key.
    t2 = paramiko.Transport(("127.0.0.1", x.port))
    t2.connect()
    assert t2.get_remote_server_key().get_base64() == host_key_before
    t2.close()
    kr_events = [e for e in cluster.items("events.events.k8s.io", x.ns)
                 if e["regarding"]["name"] == "gw-keys" and e["reason"] == "Issued"]
    assert len(kr_events) >= 1


# --- Operator lifecycle ------------------------------------------------------------------------------

def test_operator_restart_converges(cluster, operator):
    ns = "examples"
    assert operator.stop() == 0  # graceful shutdown on SIGTERM
    # Change the world while no operator runs.
    cluster.kubectl("patch", "transfergateway", "dmz", "--type=merge", "-p", '{"spec":{"replicas":3}}',
                    namespace=ns)
    restarted = Operator(cluster, operator.log, identity="op-1b")
    try:
        cluster.wait_for("the restarted operator to lead", restarted.is_leader, timeout=30)
        cluster.wait_for("the third replica's Deployment",
                         lambda: (d := cluster.get("deployment", "dmz-r2", ns))
                         and d["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "2/3")
        # Applied, and the restarted operator reports the rollout (no kubelet runs it here).
        c = cluster.wait_for("Reconciling after the restart", lambda: (
            c if (c := cluster.condition("transfergateway", "dmz", ns, "Reconciling"))["status"] == "True"
            and c["observedGeneration"] == cluster.get("transfergateway", "dmz", ns)["metadata"]["generation"]
            else None))
        assert c["reason"] in ("RollingOut", "PodsNotReady"), c
        assert cluster.get("transfergateway", "dmz", ns)["status"]["replicas"] == "0/3"
    finally:
        # Hand the module's operator fixture a live process again.
        operator.proc, operator.metrics_port = restarted.proc, restarted.metrics_port


def test_leader_election_only_one_operator_reconciles(cluster, operator):
    ns = "examples"
    second = Operator(cluster, operator.log, identity="op-2")
    try:
        time.sleep(3)
        assert operator.is_leader() and not second.is_leader()
        assert second.metric("portcullis_operator_reconciles_total") == 0
        before = operator.metric("portcullis_operator_reconciles_total", controller="transfergateway")
        cluster.kubectl("patch", "transfergateway", "dmz", "--type=merge", "-p", '{"spec":{"replicas":2}}',
                        namespace=ns)
        cluster.wait_for("the leader to reconcile",
                         lambda: cluster.get("deployment", "dmz-r1", ns)["spec"]["template"]["spec"][
                             "containers"][0]["args"][-1] == "1/2")
        assert operator.metric("portcullis_operator_reconciles_total", controller="transfergateway") > before
        assert second.metric("portcullis_operator_reconciles_total") == 0
        # The leader stops: the standby takes over and reconciles.
        operator.stop()
        cluster.wait_for("the standby to lead", second.is_leader, timeout=30)
        cluster.kubectl("patch", "transfergateway", "dmz", "--type=merge", "-p", '{"spec":{"replicas":1}}',
                        namespace=ns)
        # One replica: one Deployment again, holding the whole passive range.
        cluster.wait_for("the new leader to reconcile",
                         lambda: (d := cluster.get("deployment", "dmz", ns)) and d["spec"]["replicas"] == 1)
        assert second.metric("portcullis_operator_reconciles_total", controller="transfergateway") > 0
    finally:
        operator.proc, operator.metrics_port = second.proc, second.metrics_port


def test_key_ring_secrets_outlive_the_key_ring_unless_asked_and_host_keys_import(cluster, operator, tmp_path):
    """Partners pin the host keys and trust the CA: deleting a KeyRing keeps its Secrets by
    default (they were garbage-collected with it), and a KeyRing made again under the same name
    takes them up. `deletionPolicy: Delete` removes them. Host keys made elsewhere are imported
    by putting them in the key ring's Secret before the KeyRing exists (docs/kubernetes.md)."""
    ns = cluster.namespace("retain")

    def ring(name, **spec):
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "KeyRing", "metadata": {"name": name},
                       "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": ["r.example"], **spec}}, ns)
        cluster.wait_ready("keyring", name, ns)
        return cluster.get("keyring", name, ns)["status"]

    def delete(name):
        cluster.kubectl("delete", "keyring", name, "--wait=true", namespace=ns)

    first = ring("kept")
    delete("kept")
    time.sleep(3)  # time for the garbage collector, had it anything to collect
    assert cluster.get("secret", "kept-keyring", ns) is not None
    assert cluster.get("secret", "kept-ca", ns) is not None
    again = ring("kept")
    assert again["hostKeyFingerprints"] == first["hostKeyFingerprints"]
    assert again["caFingerprint"] == first["caFingerprint"]

    ring("gone", deletionPolicy="Delete")
    delete("gone")
    for s in ("gone-keyring", "gone-ca"):
        cluster.wait_for(f"{s} to be collected", lambda: cluster.get("secret", s, ns) is None, timeout=60)

    # Import: an ed25519 host key from elsewhere, in a kubernetes.io/tls Secret of the key
    # ring's name (any certificate; the operator issues its own).
    key = tmp_path / "imported"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    fp = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key) + ".pub"], check=True,
                        capture_output=True, text=True).stdout.split()[1]
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=placeholder", "-keyout", str(tmp_path / "p.key"), "-out", str(tmp_path / "p.crt"))
    cluster.kubectl("create", "secret", "tls", "imported-keyring", f"--cert={tmp_path / 'p.crt'}",
                    f"--key={tmp_path / 'p.key'}", namespace=ns)
    import base64
    cluster.kubectl("patch", "secret", "imported-keyring", "--type=merge", "-p", json.dumps(
        {"data": {"ssh_host_ed25519_key": base64.b64encode(key.read_bytes()).decode()}}), namespace=ns)
    st = ring("imported")
    assert fp in st["hostKeyFingerprints"], (fp, st["hostKeyFingerprints"])


def test_deleting_a_gateway_removes_what_it_owns(cluster, operator):
    ns = "examples"
    cluster.kubectl("delete", "transfergateway", "dmz", "--wait=true", namespace=ns)
    for kind, name in [("deployment", "dmz"), ("deployment", "dmz-r0"), ("deployment", "dmz-r1"),
                       ("deployment", "dmz-r2"), ("service", "dmz"), ("networkpolicy", "dmz"),
                       ("poddisruptionbudget", "dmz"), ("serviceaccount", "dmz-gateway"),
                       ("secret", "dmz-config")]:
        cluster.wait_for(f"{kind}/{name} to be collected", lambda: cluster.get(kind, name, ns) is None,
                         timeout=60)
    cluster.wait_for("the ReplicaSet to be collected", lambda: not cluster.items("replicaset", ns), timeout=60)
