"""The operator against a real control plane (etcd, kube-apiserver, kube-controller-manager
built from pinned Go modules; e2e/cluster.sh): CRD validation by the apiserver, the objects
the operator builds, idempotence, status and Events, key rings, restarts and leader election.
The operator runs here as a local process; the product as pods, with the full path from
`kubectl apply` to transfers, is in test_node.py."""

import base64
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from harness import ROOT, fresh_dir, keygen, pubkey
from kube import Cluster, Operator


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(fresh_dir("cluster"))
    yield c
    c.down()


@pytest.fixture(scope="module")
def operator(cluster):
    # As the chart's gateway.metricsNamespaces=[monitoring] runs it; a local process has no
    # namespace of its own (in a pod, POD_NAMESPACE is added).
    op = Operator(cluster, fresh_dir("operator") / "operator.log", extra_args=("--metrics-namespace=monitoring",))
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
        "spec.listeners[0].passivePorts: Invalid value: \"object\": min must not exceed max"),
    "an authentication method there is none of": (
        "TransferUser", {"passwordHash": {"name": "s", "key": "k"}, "authMethods": ["password,otp"]},
        "spec.authMethods[0]: Invalid value: \"password,otp\": spec.authMethods[0] in body should match"),
    "a minimum TLS version there is none of": (
        "TransferGateway", {"listeners": [
            {"name": "a", "protocol": "ftps", "port": 21, "zones": ["z"], "keyRing": "k",
             "passivePorts": {"min": 30000, "max": 30009}, "tls": {"minVersion": "1.1"}}]},
        "spec.listeners[0].tls.minVersion: Unsupported value: \"1.1\""),
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
    "audit key rotation on a key ring that makes no audit keys": (
        "KeyRing", {"issuer": {"type": "selfSigned"}, "auditKeyRotation": "720h"},
        "auditKeyRotation needs auditSigningKey: true"),
    "audit key rotation under an hour": (
        "KeyRing", {"issuer": {"type": "selfSigned"}, "auditSigningKey": True, "auditKeyRotation": "30m"},
        "auditKeyRotation must be a duration of at least 1h"),
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
    "a misspelt cipher suite (dropped unnoticed before)": (
        "TransferGateway", {"listeners": [
            {"name": "a", "protocol": "ftps", "port": 21, "zones": ["z"], "keyRing": "k",
             "passivePorts": {"min": 30000, "max": 30009},
             "tls": {"cipherSuites": ["TLS13_AES_256_GCM_SHA384", "TLS13_AES_128_GCM_SHA265"]}}]},
        "spec.listeners[0].tls.cipherSuites[1]: Unsupported value"),
    "TLS 1.2 cipher suites alone": (
        "TransferGateway", {"listeners": [
            {"name": "a", "protocol": "ftps", "port": 21, "zones": ["z"], "keyRing": "k",
             "passivePorts": {"min": 30000, "max": 30009},
             "tls": {"cipherSuites": ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]}}]},
        "cipherSuites must name at least one TLS 1.3 suite"),
    "a gateway named like another's replica": (
        "TransferGateway", {"hostKeyRing": "k", "listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]}]},
        "must not end in -r followed by digits", "dmz-r0"),
    "a gateway named like another's peer Service": (
        "TransferGateway", {"hostKeyRing": "k", "listeners": [
            {"name": "a", "protocol": "sftp", "port": 2222, "zones": ["z"]}]},
        "must not end in -peers", "dmz-peers"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_the_apiserver_refuses_invalid_objects(cluster, case):
    kind, spec, message, *name = INVALID[case]
    name = name[0] if name else "bad"
    ns = cluster.namespace("invalid")
    obj = {"apiVersion": "portcullis.dev/v1alpha1", "kind": kind,
           "metadata": {"name": name}, "spec": spec}
    r = cluster.apply(obj, ns, check=False)
    assert r.returncode != 0, f"{case}: accepted"
    assert message in r.stderr, r.stderr
    assert cluster.get(kind.lower(), name, ns) is None


def test_the_apiserver_takes_every_cipher_suite_the_gateway_has(cluster):
    """The CRD's cipherSuites and the gateway's own type (CipherSuite, whose list the gateway's
    tests hold equal to its TLS provider's) name the same suites."""
    text = (ROOT / "gateway" / "config" / "src" / "lib.rs").read_text()
    block = re.search(r"pub enum CipherSuite \{(.*?)\}", text, re.S).group(1)
    suites = re.findall(r"^\s*([A-Z0-9_]+),", block, re.M)
    assert len(suites) == 9, suites
    ns = cluster.namespace("suites")
    obj = {"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferGateway", "metadata": {"name": "all"},
           "spec": {"listeners": [{"name": "a", "protocol": "ftps", "port": 21, "zones": ["z"], "keyRing": "k",
                                   "passivePorts": {"min": 30000, "max": 30009},
                                   "tls": {"cipherSuites": suites}}]}}
    r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), namespace=ns, check=False)
    assert r.returncode == 0, r.stderr
    for near in ["TLS13_AES_256_GCM_SHA384 ", "tls13_aes_256_gcm_sha384", "TLS_RSA_WITH_AES_128_GCM_SHA256",
                 "TLS13_AES_128_CCM_SHA256"]:
        obj["spec"]["listeners"][0]["tls"]["cipherSuites"] = ["TLS13_AES_128_GCM_SHA256", near]
        r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), namespace=ns,
                            check=False)
        assert r.returncode != 0 and "cipherSuites[1]" in r.stderr, (near, r.stderr)


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
    # The admin port (/metrics, /config): the metrics namespace, by name; no other namespace.
    assert admin_rule == {"from": [{"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}]}}],
        "ports": [{"port": 9922, "protocol": "TCP"}]}
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
        # The counter moves when the reconcile ends, after it has written the Deployment.
        cluster.wait_for("the leader's reconcile to be counted", lambda: operator.metric(
            "portcullis_operator_reconciles_total", controller="transfergateway") > before)
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


def test_each_gateway_gets_its_own_audit_key_and_the_key_ring_publishes_every_one(cluster, operator):
    """A KeyRing with auditSigningKey is the signing authority of the gateways that name it: each
    gets its own Ed25519 key, kept only in its config Secret; the KeyRing's status publishes every
    public half. Removing the key from a gateway's config Secret rotates it: the new key is
    published and the old one stays listed as retired, so trails signed before stay verifiable.
    A deleted gateway's key stays published, retired."""
    ns = cluster.namespace("audit-keys")
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "KeyRing", "metadata": {"name": "signing"},
                   "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": ["audit.local"],
                            "auditSigningKey": True, "auditKeyRotation": "720h"}}, ns)
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "NetworkZone", "metadata": {"name": "z"},
                   "spec": {"cidrs": ["198.18.40.0/24"]}}, ns)
    for gw in ("east", "west"):
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferGateway", "metadata": {"name": gw},
                       "spec": {"hostKeyRing": "signing", "audit": {"signingKeyRing": "signing"},
                                "listeners": [{"name": "sftp", "protocol": "sftp", "port": 2222,
                                               "zones": ["z"]}]}}, ns)

    def published():
        return (cluster.get("keyring", "signing", ns).get("status") or {}).get("auditKeys", [])

    def current(gw):
        return [k for k in published() if k["gateway"] == gw and "retiredAt" not in k]

    def private(gw):
        return (cluster.secret_data(f"{gw}-config", ns) or {}).get("audit-signing.pem")

    cluster.wait_for("both gateways' keys published", lambda: current("east") and current("west"), timeout=60)
    (east,), (west,) = current("east"), current("west")
    assert east["keyId"] != west["keyId"] and east["publicKey"] != west["publicKey"]
    assert len(east["keyId"]) == 16 and east["createdAt"].endswith("Z"), east
    # Each gateway's status lists its own key, the same.
    gw_status = cluster.get("transfergateway", "east", ns)["status"]
    assert gw_status["auditKeys"] == [{k: v for k, v in east.items() if k != "gateway"}], gw_status
    # The private halves are in the config Secrets and nowhere else; the key ring's own Secret
    # has none.
    assert private("east").startswith(b"-----BEGIN PRIVATE KEY-----") and private("east") != private("west")
    assert "audit-signing.pem" not in cluster.secret_data("signing-keyring", ns)
    secrets = json.loads(cluster.kubectl("get", "secrets", "-o", "json", namespace=ns).stdout)["items"]
    for gw in ("east", "west"):
        holders = [x["metadata"]["name"] for x in secrets
                   if any(base64.b64decode(v) == private(gw) for v in (x.get("data") or {}).values())]
        assert holders == [f"{gw}-config"], holders

    # Rotation by hand: the key leaves east's config Secret.
    old_private = private("east")
    cluster.kubectl("patch", "secret", "east-config", "--type=json", "-p",
                    json.dumps([{"op": "remove", "path": "/data/audit-signing.pem"}]), namespace=ns)
    (east2,) = cluster.wait_for("east's new key published", lambda: (c := current("east")) and
                                c[0]["keyId"] != east["keyId"] and c, timeout=60)
    assert private("east") not in (None, old_private)
    (retired,) = [k for k in published() if k["keyId"] == east["keyId"]]
    assert retired["publicKey"] == east["publicKey"] and retired["retiredAt"].endswith("Z"), retired
    gw_keys = cluster.get("transfergateway", "east", ns)["status"]["auditKeys"]
    assert [k["keyId"] for k in gw_keys] == [east2["keyId"], east["keyId"]], gw_keys
    assert current("west") == [west]
    # Later reconciles keep the history as it is.
    before = published()
    cluster.kubectl("annotate", "keyring", "signing", "touch=1", namespace=ns)
    cluster.kubectl("annotate", "transfergateway", "east", "touch=1", namespace=ns)
    time.sleep(3)
    assert published() == before

    # A deleted gateway's key stays published, retired.
    cluster.kubectl("delete", "transfergateway", "west", namespace=ns)
    cluster.wait_for("west's key retired", lambda: not current("west") and any(
        k["keyId"] == west["keyId"] and "retiredAt" in k for k in published()), timeout=60)
    assert current("east") == [east2]


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
