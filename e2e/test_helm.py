"""The Helm chart against the real control plane: it installs, its CRDs are the generated ones,
its Deployment is hardened, and its RBAC is enough for the operator to do its whole job (the
operator runs here with the chart's ServiceAccount token, not as cluster admin)."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from harness import ROOT, fresh_dir, keygen, pubkey
from kube import OPERATOR_BIN, Cluster, Operator, small_policy

CHART = ROOT / "charts" / "portcullis"


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(fresh_dir("helm-cluster"))
    yield c
    c.down()


def sa_kubeconfig(cluster, ns: str, sa: str) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `sa` of `ns` (a fresh token)."""
    token = cluster.kubectl("create", "token", sa, "--duration=1h", namespace=ns).stdout.strip()
    kc = cluster.dir / f"{ns}-{sa}.kubeconfig"
    server = [line.split("server:")[1].strip() for line in (cluster.dir / "kubeconfig").read_text().splitlines()
              if "server:" in line][0]
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server,
                                               "certificate-authority": str(cluster.dir / "pki" / "ca.crt")}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa", "namespace": ns}}],
        "current-context": "c"}))
    return kc


def policy_docs(cluster, ns: str) -> list[dict]:
    """`small_policy` for namespace `ns`, with the endpoint's credentials Secret made there."""
    d = fresh_dir(f"helm-{ns}")
    cluster.kubectl("create", "secret", "generic", "creds", f"--from-file=ssh-privatekey={keygen(d / 'id')}",
                    namespace=ns)
    return small_policy(pubkey(keygen(d / "hk")), pubkey(keygen(d / "u")))


def test_helm_install_and_the_operator_works_with_the_charts_rbac(cluster):
    cluster.helm("lint", str(CHART))
    out = cluster.helm("install", "portcullis", str(CHART), "--namespace", "portcullis-system",
                       "--create-namespace", "--wait=false").stdout
    ns = "portcullis-system"
    # The notes give a new user the next three steps, with this release's names filled in.
    notes = out.split("NOTES:", 1)[1]
    assert "1. Check that it runs" in notes and "2. Declare transfer policy" in notes and "3. Watch it" in notes
    assert "kubectl -n portcullis-system get lease portcullis-operator" in notes, notes
    assert "app.kubernetes.io/instance=portcullis" in notes, notes
    dep = cluster.get("deployment", "portcullis-operator", ns)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["args"][0] == "run" and "--manage-crds" in c["args"]
    assert dep["spec"]["replicas"] == 2
    # Two replicas: the apiserver holds the operator's PodDisruptionBudget.
    assert cluster.get("pdb", "portcullis-operator", ns)["spec"]["maxUnavailable"] == 1
    # The chart's CRD copies are what the cluster serves (crds/ is installed by cluster.sh;
    # a unit test keeps the two directories equal).
    served = json.loads(cluster.kubectl("get", "crd", "transfergateways.portcullis.dev", "-o", "json").stdout)
    assert served["spec"]["versions"][0]["name"] == "v1alpha1"

    # An upgrade that adds a field: the cluster serves the KeyRing CRD as an older release
    # installed it, without auditKeyRotation (Helm never upgrades crds/), so the apiserver
    # refuses the field.
    old_crd = json.loads(cluster.kubectl("get", "crd", "keyrings.portcullis.dev", "-o", "json").stdout)
    spec_schema = old_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec_schema["properties"]["auditKeyRotation"]
    spec_schema["x-kubernetes-validations"] = [v for v in spec_schema["x-kubernetes-validations"]
                                               if "auditKeyRotation" not in v["rule"]]
    cluster.kubectl("replace", "-f", "-", input=json.dumps(old_crd))
    rotating = {"apiVersion": "portcullis.dev/v1alpha1", "kind": "KeyRing", "metadata": {"name": "rotating"},
                "spec": {"issuer": {"type": "selfSigned"}, "auditSigningKey": True, "auditKeyRotation": "720h"}}
    cluster.wait_for("the old CRD to be served", lambda: 'unknown field "spec.auditKeyRotation"' in
                     cluster.apply(rotating, ns, check=False).stderr, timeout=30)

    # Run the operator as the chart's ServiceAccount.
    kc = sa_kubeconfig(cluster, ns, "portcullis-operator")
    op = Operator(cluster, fresh_dir("helm-operator") / "operator.log", identity="chart-sa",
                  lease_namespace=ns, kubeconfig=kc, extra_args=("--manage-crds",))
    try:
        cluster.wait_for("the chart operator to lead", op.is_leader, timeout=30)
        # Leading, it applied its own CRDs with the chart's RBAC: the new field is served, and
        # each CRD names the operator version that applied it.
        cluster.wait_for("the upgraded CRD", lambda: cluster.apply(rotating, ns, check=False).returncode == 0,
                         timeout=30)
        assert cluster.get("keyring", "rotating", ns)["spec"]["auditKeyRotation"] == "720h"
        version = subprocess.run([str(OPERATOR_BIN), "--version"], capture_output=True, text=True).stdout.split()[-1]
        for kind in ["transfergateways", "transferendpoints", "networkzones", "keyrings", "transferusers",
                     "transferroles"]:
            crd = cluster.get("crd", f"{kind}.portcullis.dev", None)
            assert crd["metadata"]["annotations"]["portcullis.dev/operator-version"] == version, kind
            assert any(m["manager"] == "portcullis-operator" for m in crd["metadata"]["managedFields"]), kind
        # Exactly those six: no other CRD may be read or patched.
        sa = f"--as=system:serviceaccount:{ns}:portcullis-operator"
        for verb, crd, want in [("patch", "keyrings.portcullis.dev", "yes"), ("get", "keyrings.portcullis.dev", "yes"),
                                ("patch", "leases.coordination.k8s.io", "no"), ("delete", "keyrings.portcullis.dev", "no"),
                                ("create", "keyrings.portcullis.dev", "no")]:
            r = cluster.kubectl("auth", "can-i", verb, f"customresourcedefinitions/{crd}", sa, check=False)
            assert r.stdout.strip() == want, (verb, crd, r.stdout, r.stderr)
        app = cluster.namespace("chart-app")
        for doc in policy_docs(cluster, app):
            cluster.apply(doc, app)
        # Compiled and applied (no kubelet runs the pods here: Reconciling, not Stalled).
        cluster.wait_ready("transfergateway", "gw", app, status="False", reason="PodsNotReady")
        for kind in ["deployment", "service", "networkpolicy", "poddisruptionbudget"]:
            assert cluster.get(kind, "gw", app) is not None, kind
        assert cluster.get("lease", "portcullis-operator", ns) is not None
        # Once pods are ready, it lists them to ask each which config it serves; read-only.
        for verb, want in [("list", "yes"), ("delete", "no"), ("create", "no")]:
            r = cluster.kubectl("auth", "can-i", verb, "pods", sa, namespace=app, check=False)
            assert r.stdout.strip() == want, (verb, r.stdout, r.stderr)
        # Forbidden errors would have been counted by category.
        assert op.metric("portcullis_operator_reconcile_errors_total", category="Forbidden") == 0
        log = op.log.read_text()
        assert "forbidden" not in log.lower(), log[-2000:]
    finally:
        op.stop()


def test_a_namespaced_install_reconciles_its_namespaces_only_with_roles(cluster):
    """watchNamespaces: the chart binds Roles in the listed namespaces only (and a ClusterRole
    for nothing but the six CRDs), and the operator, run as the chart's ServiceAccount with the
    chart's flags, reconciles there and nowhere else, with no Forbidden on the way."""
    ns = "scoped-system"
    teams = [cluster.namespace(n) for n in ("team-a", "team-b", "team-c")]
    cluster.helm("install", "scoped", str(CHART), "--namespace", ns, "--create-namespace", "--wait=false",
                 "--set", "fullnameOverride=scoped-operator", "--set", "watchNamespaces={team-a,team-b}")
    try:
        # What the chart granted: the listed namespaces' Secrets, none elsewhere.
        sa = f"--as=system:serviceaccount:{ns}:scoped-operator"
        for verb, where, want in [("list", "team-a", "yes"), ("watch", "team-b", "yes"), ("get", "team-c", "no"),
                                  ("list", "default", "no")]:
            r = cluster.kubectl("auth", "can-i", verb, "secrets", sa, namespace=where, check=False)
            assert r.stdout.strip() == want, (verb, where, r.stdout, r.stderr)
        r = cluster.kubectl("auth", "can-i", "list", "secrets", "--all-namespaces", sa, check=False)
        assert r.stdout.strip() == "no", r.stdout
        dep = cluster.get("deployment", "scoped-operator", ns)["spec"]["template"]["spec"]["containers"][0]["args"]
        flags = tuple(a for a in dep if a.startswith("--watch-namespace=") or a == "--manage-crds")
        assert flags == ("--manage-crds", "--watch-namespace=team-a", "--watch-namespace=team-b"), dep

        for team in ("team-a", "team-c"):
            for doc in policy_docs(cluster, team):
                cluster.apply(doc, team)
        op = Operator(cluster, fresh_dir("helm-scoped") / "operator.log", identity="scoped",
                      lease_namespace=ns, kubeconfig=sa_kubeconfig(cluster, ns, "scoped-operator"),
                      extra_args=flags)
        try:
            cluster.wait_for("the scoped operator to lead", op.is_leader, timeout=30)
            cluster.wait_ready("transfergateway", "gw", "team-a", status="False", reason="PodsNotReady")
            for kind in ["deployment", "service", "networkpolicy", "poddisruptionbudget"]:
                assert cluster.get(kind, "gw", "team-a") is not None, kind
            assert cluster.get("keyring", "keys", "team-a")["status"]["secretName"] == "keys-keyring"
            # A change in a watched namespace after start arrives too (team-b was empty).
            for doc in policy_docs(cluster, "team-b"):
                cluster.apply(doc, "team-b")
            cluster.wait_ready("transfergateway", "gw", "team-b", status="False", reason="PodsNotReady")
            # team-c is not its business: nothing read, nothing written there.
            time.sleep(3)
            assert "status" not in cluster.get("transfergateway", "gw", "team-c"), "team-c reconciled"
            assert "status" not in cluster.get("keyring", "keys", "team-c")
            assert cluster.get("deployment", "gw", "team-c") is None
            assert op.metric("portcullis_operator_reconcile_errors_total", category="Forbidden") == 0
            log = op.log.read_text()
            assert "forbidden" not in log.lower(), log[-3000:]
        finally:
            op.stop()
    finally:
        cluster.helm("uninstall", "scoped", "--namespace", ns)
        for team in teams:
            cluster.kubectl("delete", "namespace", team, "--wait=false")


BAD_VALUES = {
    "replicas=two": "at '/replicas': got string, want integer",
    "replicas=-1": "at '/replicas': minimum",
    "leaseDurationSeconds=-5": "at '/leaseDurationSeconds': minimum",
    "leaseDurationSeconds=1": "at '/leaseDurationSeconds': minimum",
    "logFormat=xml": "at '/logFormat': value must be one of",
    "metricsPort=80": "at '/metricsPort': minimum",
    "metricsPort=70000": "at '/metricsPort': maximum",
    "image.pullPolicy=Sometimes": "at '/image/pullPolicy': value must be one of",
    "image.repository=": "at '/image/repository'",
    "replicaCount=3": "additional properties 'replicaCount' not allowed",
    "resources.requests.memory=lots": "at '/resources/requests/memory'",
    "resources.limit.memory=1Gi": "additional properties 'limit' not allowed",
    "gateway.allowedImages={*}": "at '/gateway/allowedImages/0'",
    "gateway.allowedImages={a b}": "at '/gateway/allowedImages/0'",
    "gateway.images={x}": "additional properties 'images' not allowed",
    "gateway.metricsNamespaces={Monitoring}": "at '/gateway/metricsNamespaces/0'",
    "logLevel=verbose": "at '/logLevel': value must be one of",
    "extraArgs={rm -rf /}": "at '/extraArgs/0'",
    "serviceAccount.create=false": "at '/serviceAccount/name': minLength",
    "priorityClassName=Bad_Name": "at '/priorityClassName'",
    "serviceMonitor.interval=soon": "at '/serviceMonitor/interval'",
    "podDisruptionBudget.minAvailable=1": "additional properties 'minAvailable' not allowed",
    "fullnameOverride=Acme_Ops": "at '/fullnameOverride'",
    "crds.upgrade=true": "additional properties 'upgrade' not allowed",
    "watchNamespaces={Team_A}": "at '/watchNamespaces/0'",
    "watchNamespaces=team-a": "at '/watchNamespaces': got string, want array",
    "podSecurityContext.runAsUser=-1": "at '/podSecurityContext/runAsUser': minimum",
    "podSecurityContext.seccompProfile.type=Lax": "at '/podSecurityContext/seccompProfile/type'",
    "securityContext.priviledged=true": "additional properties 'priviledged' not allowed",
}


def test_chart_values_are_typed_ranged_and_closed(cluster):
    """values.schema.json: a value of the wrong type, out of range or unknown fails `helm lint
    --strict` and `helm template` (what install renders) with the value's path, where it was
    accepted before (and the operator then crash-looped on a negative lease)."""
    cluster.helm("lint", "--strict", str(CHART))
    for setting, message in BAD_VALUES.items():
        for cmd in (["lint", "--strict"], ["template", "portcullis"]):
            r = subprocess.run([str(cluster.bin / "helm"), *cmd, str(CHART), "--set", setting],
                               capture_output=True, text=True, env=cluster.env)
            assert r.returncode != 0, (setting, cmd, "accepted")
            assert message in r.stdout + r.stderr, (setting, cmd, r.stdout, r.stderr)
    # A user's good values pass.
    good = ["replicas=3", "leaseDurationSeconds=30", "logFormat=text", "metricsPort=9090",
            "resources.requests.memory=128974848", "resources.limits.cpu=500m", "podAnnotations.a=b"]
    cluster.helm("lint", "--strict", str(CHART), *[a for s in good for a in ("--set", s)])
    # Allowed gateway images reach the operator's arguments, one flag each; none by default.
    out = cluster.helm("template", "portcullis", str(CHART), "--kube-version", "1.33.0", "--set",
                       "gateway.allowedImages={registry.example/portcullis/*,mirror.example/gw:1.2.3}").stdout
    assert "- --allowed-gateway-image=registry.example/portcullis/*\n" in out, out
    assert "- --allowed-gateway-image=mirror.example/gw:1.2.3\n" in out, out
    assert "--allowed-gateway-image" not in cluster.helm("template", "portcullis", str(CHART), "--kube-version", "1.33.0").stdout
    out = cluster.helm("template", "portcullis", str(CHART), "--kube-version", "1.33.0", "--set",
                       "gateway.metricsNamespaces={monitoring,observability}").stdout
    assert "- --metrics-namespace=monitoring\n" in out and "- --metrics-namespace=observability\n" in out, out
    # The operator itself refuses what the schema refuses, by name, instead of going on with a
    # default (log format) or a Lease that cannot work.
    for arg, says in [("--lease-duration-seconds=1", "--lease-duration-seconds"),
                      ("--log-format=xml", "--log-format"),
                      ("--allowed-gateway-image=*", "--allowed-gateway-image"),
                      ("--metrics-namespace=Bad_NS", "--metrics-namespace")]:
        r = subprocess.run([str(OPERATOR_BIN), "run", arg], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and says in r.stderr and "invalid value" in r.stderr, (arg, r.returncode, r.stderr)


def render(cluster, *sets: str, api_versions: tuple[str, ...] = ()) -> dict[tuple[str, str], dict]:
    """`helm template` with `--set` each of `sets`: (kind, name) → object."""
    import yaml
    args = ["template", "portcullis", str(CHART), "--kube-version", "1.33.0", "--namespace", "ops"]
    for a in api_versions:
        args += ["--api-versions", a]
    for s in sets:
        args += ["--set", s]
    docs = [d for d in yaml.safe_load_all(cluster.helm(*args).stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_the_charts_operational_values_take_effect(cluster):
    """Each value an operator of the chart may set reaches the objects: log level, extra flags,
    the ServiceAccount (made, or an existing one named, with annotations), priority class,
    spread constraints, the security contexts, fullnameOverride, the operator's
    PodDisruptionBudget, and a ServiceMonitor, which fails the install by name where the
    cluster lacks the kind."""
    objs = render(cluster)
    dep = objs[("Deployment", "portcullis-operator")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in dep["containers"][0]["env"]}
    assert env["RUST_LOG"] == "info,kube_runtime=warn,kube_client=warn"
    assert dep["serviceAccountName"] == "portcullis-operator"
    assert ("ServiceAccount", "portcullis-operator") in objs
    pdb = objs[("PodDisruptionBudget", "portcullis-operator")]["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": {
        "app.kubernetes.io/name": "portcullis-operator", "app.kubernetes.io/instance": "portcullis"}}}
    assert not any(k == "ServiceMonitor" for k, _ in objs)
    assert "priorityClassName" not in dep and "topologySpreadConstraints" not in dep

    objs = render(cluster, "logLevel=debug", "extraArgs={--lease-name=blue}", "replicas=1",
                  "serviceAccount.create=false", "serviceAccount.name=platform-ops",
                  "priorityClassName=system-cluster-critical",
                  "topologySpreadConstraints[0].maxSkew=1",
                  "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
                  "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway")
    dep = objs[("Deployment", "portcullis-operator")]["spec"]["template"]["spec"]
    (c,) = dep["containers"]
    assert {e["name"]: e.get("value") for e in c["env"]}["RUST_LOG"].startswith("debug,")
    assert c["args"][-1] == "--lease-name=blue"
    assert dep["serviceAccountName"] == "platform-ops"
    assert not any(k == "ServiceAccount" for k, _ in objs)
    subjects = [s for (k, _), o in objs.items() if k in ("ClusterRoleBinding", "RoleBinding") for s in o["subjects"]]
    assert subjects and all(s["name"] == "platform-ops" for s in subjects), subjects
    assert dep["priorityClassName"] == "system-cluster-critical"
    assert dep["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert not any(k == "PodDisruptionBudget" for k, _ in objs)  # one replica: nothing to keep

    sa = render(cluster, "serviceAccount.annotations.iam\\.example/role=transfer")[("ServiceAccount", "portcullis-operator")]
    assert sa["metadata"]["annotations"] == {"iam.example/role": "transfer"}

    # The default security contexts meet the restricted Pod Security Standard (the install test
    # runs the operator under them); an installer may change them, e.g. for OpenShift's ranges.
    dep = render(cluster)[("Deployment", "portcullis-operator")]["spec"]["template"]["spec"]
    assert dep["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert dep["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    dep = render(cluster, "podSecurityContext.runAsUser=null", "podSecurityContext.runAsGroup=null",
                 "podSecurityContext.fsGroup=2000", "securityContext.capabilities.drop={ALL,NET_RAW}",
                 )[("Deployment", "portcullis-operator")]["spec"]["template"]["spec"]
    assert dep["securityContext"] == {"runAsNonRoot": True, "fsGroup": 2000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert dep["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL", "NET_RAW"]}

    # crds.manage: false leaves CRD upgrades to the installer: no flag, and no right to them.
    objs = render(cluster, "crds.manage=false")
    assert "--manage-crds" not in objs[("Deployment", "portcullis-operator")]["spec"]["template"]["spec"]["containers"][0]["args"]
    rules = objs[("ClusterRole", "portcullis-portcullis-operator")]["rules"]
    assert not any("apiextensions.k8s.io" in r["apiGroups"] for r in rules), rules

    # fullnameOverride names every object; the cluster-scoped ones otherwise carry the release.
    default = {k for k in render(cluster)}
    assert ("ClusterRole", "portcullis-portcullis-operator") in default, default
    named = render(cluster, "fullnameOverride=acme-ops")
    assert {name for _, name in named} == {"acme-ops", "acme-ops-leader-election", "acme-ops-metrics"}, named.keys()
    assert named[("Deployment", "acme-ops")]["spec"]["template"]["spec"]["serviceAccountName"] == "acme-ops"
    assert named[("ClusterRoleBinding", "acme-ops")]["roleRef"]["name"] == "acme-ops"
    assert named[("RoleBinding", "acme-ops-leader-election")]["subjects"][0]["name"] == "acme-ops"

    # A ServiceMonitor where the cluster has the kind; a clear failure where it has not.
    r = subprocess.run([str(cluster.bin / "helm"), "template", "portcullis", str(CHART), "--kube-version", "1.33.0",
                        "--set", "serviceMonitor.enabled=true"], capture_output=True, text=True, env=cluster.env)
    assert r.returncode != 0 and "this cluster has no ServiceMonitor kind" in r.stderr, r.stderr
    sm = render(cluster, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom",
                api_versions=("monitoring.coreos.com/v1/ServiceMonitor",))[("ServiceMonitor", "portcullis-operator")]
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
