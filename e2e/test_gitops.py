"""GitOps: the folders of examples/gitops/ synced as Argo CD or Flux would, against the real
apiserver and the operator. Each overlay renders with `kubectl kustomize` and passes the
apiserver's schemas and CEL rules; applying a folder twice changes nothing (no object is
written, by us or by the operator); a CR removed from the folder is pruned and leaves the
gateway's config."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from harness import ROOT, fresh_dir, keygen
from kube import Cluster, Operator, small_policy

GITOPS = ROOT / "examples" / "gitops"
OVERLAYS = {"staging": "transfer-staging", "production": "transfer-production"}
# A valid OpenSSH public key: the backend's pinned host key in the example.
HOST_KEY = yaml.safe_load((GITOPS / "base" / "endpoint.yaml").read_text())["spec"]["hostKeys"][0]
POLICY_KINDS = ["networkzone", "keyring", "transferendpoint", "transferrole", "transferuser"]
OWNED_KINDS = ["secret", "deployment", "service", "networkpolicy", "poddisruptionbudget", "serviceaccount"]


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(fresh_dir("gitops-cluster"))
    yield c
    c.down()


# The installer's allowance for gateway images besides the default (chart value
# gateway.allowedImages), which test_an_image_the_installer_did_not_allow_is_refused uses.
ALLOWED_IMAGES = "registry.example/portcullis/*"


@pytest.fixture(scope="module")
def operator(cluster):
    op = Operator(cluster, fresh_dir("gitops-operator") / "operator.log",
                  extra_args=(f"--allowed-gateway-image={ALLOWED_IMAGES}",))
    cluster.wait_for("the operator to lead", op.is_leader, timeout=30)
    yield op
    op.stop()


def render(cluster: Cluster, folder: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(folder)).stdout) if d]


def sync(cluster: Cluster, folder: Path, ns: str) -> str:
    """What a GitOps tool does: server-side apply of the rendered folder, pruning what the
    folder no longer has. kubectl prunes server-side applied objects only through an ApplySet
    (a Secret recording what the folder applied); Argo CD and Flux keep their own record."""
    cluster.env["KUBECTL_APPLYSET"] = "true"
    return cluster.kubectl("apply", "--server-side", "--field-manager=gitops", "-k", str(folder),
                           "--prune", "--applyset=transfer-policy", namespace=ns).stdout


def versions(cluster: Cluster, ns: str) -> dict[str, str]:
    """resourceVersion of every object of ours and of the operator's in `ns`."""
    out = {}
    for kind in POLICY_KINDS + ["transfergateway"] + OWNED_KINDS:
        for o in cluster.items(kind, ns):
            out[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
    return out


def test_every_overlay_renders_and_the_apiserver_takes_it(cluster):
    """Each overlay renders, every object in it lands in the overlay's namespace, and the
    apiserver's schemas and CEL rules accept all of it (server-side dry run)."""
    for overlay, ns in OVERLAYS.items():
        docs = render(cluster, GITOPS / "overlays" / overlay)
        kinds = sorted(d["kind"] for d in docs)
        assert kinds.count("TransferGateway") == 1 and kinds.count("NetworkZone") == 2, kinds
        assert {d["metadata"]["namespace"] for d in docs} == {ns}, overlay
        assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "transfer-policy" for d in docs)
        cluster.namespace(ns)
        out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-k",
                              str(GITOPS / "overlays" / overlay), namespace=ns).stdout
        assert out.count("serverside-applied (server dry run)") == len(docs), out
    # The overlays differ as they say.
    staging = {(d["kind"], d["metadata"]["name"]): d for d in render(cluster, GITOPS / "overlays" / "staging")}
    production = {(d["kind"], d["metadata"]["name"]): d for d in render(cluster, GITOPS / "overlays" / "production")}
    assert staging[("NetworkZone", "partners")]["spec"]["cidrs"] == ["198.51.100.0/24"]
    assert production[("TransferGateway", "dmz")]["spec"]["replicas"] == 2
    assert ("TransferUser", "qa-bot") in staging and ("TransferUser", "qa-bot") not in production


def test_the_argo_cd_and_flux_objects_name_folders_that_render(cluster):
    app = yaml.safe_load((GITOPS / "argocd" / "application.yaml").read_text())
    flux = yaml.safe_load((GITOPS / "flux" / "kustomization.yaml").read_text())
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert flux["spec"]["prune"] is True and flux["spec"]["wait"] is True
    for path, ns in [(app["spec"]["source"]["path"], app["spec"]["destination"]["namespace"]),
                     (flux["spec"]["path"].removeprefix("./"), flux["spec"]["targetNamespace"])]:
        docs = render(cluster, ROOT / path)
        assert {d["metadata"]["namespace"] for d in docs} == {ns}, path


def test_a_folder_synced_twice_changes_nothing_and_a_removed_user_leaves_the_gateway(cluster, operator):
    ns = cluster.namespace("transfer-staging")
    cluster.kubectl("create", "secret", "generic", "mainframe-sftp-credentials",
                    f"--from-file=ssh-privatekey={keygen(fresh_dir('gitops-keys') / 'id')}", namespace=ns)
    # A copy of the repository's folder, to edit as a pull request would.
    repo = fresh_dir("gitops-repo")
    shutil.copytree(GITOPS, repo / "gitops")
    staging = repo / "gitops" / "overlays" / "staging"

    sync(cluster, staging, ns)
    for kind in POLICY_KINDS:
        for o in cluster.items(kind, ns):
            cluster.wait_ready(kind, o["metadata"]["name"], ns, timeout=60)
    cluster.wait_ready("transfergateway", "dmz", ns, status="False", reason="PodsNotReady", timeout=60)
    config = cluster.secret_data("dmz-config", ns)["config.yaml"].decode()
    assert "qa-bot" in config and "acme-payroll" in config

    # Synced again, unchanged: nothing is written, by the sync or by the operator.
    time.sleep(3)  # the operator's own status writes of the first sync are done
    before, writes = versions(cluster, ns), operator.metric("portcullis_operator_writes_total")
    out = sync(cluster, staging, ns)
    assert "pruned" not in out, out
    time.sleep(5)  # long enough for the operator to have seen and reconciled anything
    assert versions(cluster, ns) == before
    assert operator.metric("portcullis_operator_writes_total") == writes

    # The pull request removes the test user: `policy diff` says what that does to access, the
    # sync prunes it and the gateway drops it.
    old = repo / "old.yaml"
    old.write_text(cluster.kubectl("kustomize", str(staging)).stdout)
    k = staging / "kustomization.yaml"
    k.write_text(k.read_text().replace("  - test-user.yaml\n", ""))
    new = repo / "new.yaml"
    new.write_text(cluster.kubectl("kustomize", str(staging)).stdout)
    diff = subprocess.run([str(PLUGIN), "policy", "diff", "-f", str(old), "-f", str(new), "-o", "markdown"],
                          capture_output=True, text=True, check=True).stdout
    assert diff == (
        "### Portcullis policy changes in `transfer-staging`\n\n**Users**\n\n"
        "- qa-bot: removed; loses list, write on /inbound; loses list, read on /outbound\n\n"), diff
    out = sync(cluster, staging, ns)
    assert "transferuser.portcullis.dev/qa-bot pruned" in out, out
    cluster.wait_for("qa-bot gone", lambda: cluster.get("transferuser", "qa-bot", ns) is None)
    cluster.wait_for("the gateway's config without qa-bot",
                     lambda: "qa-bot" not in cluster.secret_data("dmz-config", ns)["config.yaml"].decode(),
                     timeout=30)
    config = cluster.secret_data("dmz-config", ns)["config.yaml"].decode()
    assert "acme-payroll" in config
    # Nothing else was pruned: the credentials Secret the sync never made is still there.
    assert cluster.get("secret", "mainframe-sftp-credentials", ns) is not None
    st = json.dumps(cluster.get("transfergateway", "dmz", ns)["status"])
    assert "configHash" in st

    # `kubectl portcullis status` reads the same from the cluster.
    status = subprocess.run([str(PLUGIN), "status", "-n", ns], env=cluster.env, capture_output=True,
                            text=True, check=True).stdout
    gw = cluster.get("transfergateway", "dmz", ns)
    print(status)
    assert status.startswith(f"gateway {ns}/dmz\n"), status
    assert "  Ready:       False (PodsNotReady)" in status, status
    assert "  listener     sftp sftp port 2222 zones [partners, internal] at " in status, status
    assert f"  config       {gw['status']['configHash']} (NOT yet served by every ready pod)" in status, status
    assert "  key ring     edge: certificate until " in status and "SSH host keys (no expiry): SHA256:" in status, status


def argo_health(obj: dict) -> dict:
    """examples/gitops/argocd/health.lua on `obj`, run by a real Lua as Argo CD runs it."""
    r = subprocess.run(["lua5.4", str(ROOT / "e2e" / "lua_health.lua"), str(GITOPS / "argocd" / "health.lua")],
                       input=json.dumps(obj), capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_the_argo_cd_health_check_reads_real_status(cluster, operator):
    ns = cluster.namespace("health")
    cluster.kubectl("create", "secret", "generic", "creds",
                    f"--from-file=ssh-privatekey={keygen(fresh_dir('health-keys') / 'id')}", namespace=ns)
    for doc in small_policy(HOST_KEY, HOST_KEY, user="ok"):
        cluster.apply(doc, ns)
    for kind, name in [("networkzone", "lan"), ("keyring", "keys"), ("transferendpoint", "backend"),
                       ("transferrole", "ops"), ("transferuser", "ok")]:
        cluster.wait_ready(kind, name, ns, timeout=60)
        h = argo_health(cluster.get(kind, name, ns))
        assert h["status"] == "Healthy", (kind, name, h)
    cluster.wait_ready("transfergateway", "gw", ns, status="False", reason="PodsNotReady", timeout=60)
    assert argo_health(cluster.get("transfergateway", "gw", ns)) == {
        "status": "Progressing", "message": "PodsNotReady: 0 of 2 pods ready"}
    # A user naming a missing role: Degraded, and so is the gateway, whose config no longer
    # compiles (it keeps serving the last good one).
    cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferUser", "metadata": {"name": "broken"},
                   "spec": {"publicKeys": [HOST_KEY], "roles": ["nope"]}}, ns)
    cluster.wait_ready("transferuser", "broken", ns, status="False", reason="RoleNotFound")
    why = "RoleNotFound: user broken names role nope, which does not exist"
    assert argo_health(cluster.get("transferuser", "broken", ns)) == {"status": "Degraded", "message": why}
    cluster.wait_ready("transfergateway", "gw", ns, status="False", reason="RoleNotFound", timeout=60)
    assert argo_health(cluster.get("transfergateway", "gw", ns)) == {"status": "Degraded", "message": why}
    # A spec change the operator has not seen yet is Progressing, whatever the old status said.
    obj = cluster.get("transferuser", "ok", ns)
    obj["metadata"]["generation"] += 1
    assert argo_health(obj)["status"] == "Progressing"


SCHEMAS = str(ROOT / "crds" / "schemas") + "/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json"


@pytest.fixture(scope="module")
def kubeconform() -> str:
    """kubeconform pinned by e2e/kubeconform/go.mod, built once and cached."""
    return subprocess.run(["bash", str(ROOT / "e2e" / "kubeconform" / "build.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()


def conform(kubeconform: str, text: str) -> dict[str, list[tuple[str, str]]]:
    """kubeconform -strict with only crds/schemas/ (offline): NAME → [(path, message)] for each
    resource, empty when valid."""
    r = subprocess.run([kubeconform, "-strict", "-verbose", "-output", "json", "-schema-location", SCHEMAS, "-"],
                       input=text, capture_output=True, text=True)
    out = {}
    for res in json.loads(r.stdout)["resources"] or []:
        errors = [(e["path"], e["msg"]) for e in res.get("validationErrors") or []]
        if res["status"] == "statusError":
            errors = [("", res["msg"])]
        out[res["name"]] = errors
    return out


GATEWAY = """apiVersion: portcullis.dev/v1alpha1
kind: TransferGateway
metadata: {name: NAME}
spec:
  hostKeyRing: edge
  listeners: [{name: sftp, protocol: sftp, port: 2222, zones: [lan]}]
"""


# One gateway per kind of schema error (NAME is replaced by the case's name).
BAD_GATEWAYS = {
    "typo": GATEWAY.replace("  listeners:", "  listners:"),
    "type": GATEWAY.replace("spec:\n", "spec:\n  replicas: two\n"),
    "enum": GATEWAY.replace("protocol: sftp", "protocol: ftp"),
    "range": GATEWAY.replace("port: 2222", "port: 70000"),
    "top": GATEWAY + "specs: {}\n",
    "version": GATEWAY.replace("v1alpha1", "v1alpha2"),
}


def test_kubeconform_checks_our_kinds_with_the_json_schemas(cluster, kubeconform):
    """What a user's CI gets from crds/schemas/ with kubeconform, offline: the examples and both
    overlays are valid (kubeconform reports valid resources too, so nothing is skipped), and
    each kind of schema error is named by its path."""
    examples = "\n---\n".join(p.read_text() for p in sorted((ROOT / "examples").glob("*.yaml")))
    for text in [examples] + [cluster.kubectl("kustomize", str(GITOPS / "overlays" / o)).stdout for o in OVERLAYS]:
        result = conform(kubeconform, text)
        assert result and all(errors == [] for errors in result.values()), result
    result = conform(kubeconform, "---\n".join(t.replace("NAME", n) for n, t in BAD_GATEWAYS.items()))
    assert ("/spec", "additional properties 'listners' not allowed") in result["typo"], result
    assert result["type"] == [("/spec/replicas", "got string, want integer")], result
    assert [p for p, _ in result["enum"]] == ["/spec/listeners/0/protocol"], result
    assert [p for p, _ in result["range"]] == ["/spec/listeners/0/port"], result
    assert result["top"] == [("", "additional properties 'specs' not allowed")], result
    assert result["version"] == [("", "could not find schema for TransferGateway")], result


def test_what_only_the_apiserver_catches(cluster, kubeconform):
    """JSON Schema has no CEL: a gateway with two listeners on one port passes kubeconform, and
    the apiserver's server-side dry run refuses it. docs/gitops.md says to run both."""
    dup = GATEWAY.replace("NAME", "dup").replace(
        "listeners: [{name: sftp, protocol: sftp, port: 2222, zones: [lan]}]",
        "listeners: [{name: a, protocol: sftp, port: 2222, zones: [lan]}, "
        "{name: b, protocol: sftp, port: 2222, zones: [lan]}]")
    assert conform(kubeconform, dup) == {"dup": []}
    ns = cluster.namespace("dry-run")
    r = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=dup, namespace=ns,
                        check=False)
    assert r.returncode != 0 and "listener ports must be unique" in r.stderr, r.stderr


def test_an_image_the_installer_did_not_allow_is_refused(cluster, operator):
    """Whoever may set a gateway's image runs code in the DMZ with its Secrets, so the operator
    deploys only its default image and what the installer allowed (here the operator runs with
    --allowed-gateway-image=registry.example/portcullis/*, the chart's gateway.allowedImages).
    Any other is refused by name, and the running Deployment keeps its image."""
    ns = cluster.namespace("images")
    for d in [
        {"kind": "NetworkZone", "metadata": {"name": "lan"}, "spec": {"cidrs": ["10.0.0.0/8"]}},
        {"kind": "KeyRing", "metadata": {"name": "keys"}, "spec": {"issuer": {"type": "selfSigned"}}},
        {"kind": "TransferUser", "metadata": {"name": "u"}, "spec": {"publicKeys": [HOST_KEY]}},
    ]:
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", **d}, ns)

    def gateway(image: str | None) -> None:
        spec = {"hostKeyRing": "keys", "replicas": 1,
                "listeners": [{"name": "sftp", "protocol": "sftp", "port": 2222, "zones": ["lan"]}]}
        if image:
            spec["image"] = image
        cluster.apply({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferGateway",
                       "metadata": {"name": "gw"}, "spec": spec}, ns)

    def deployed_image() -> str | None:
        d = cluster.get("deployment", "gw", ns)
        return d and d["spec"]["template"]["spec"]["containers"][0]["image"]

    default = cluster.get("crd", "transfergateways.portcullis.dev", "")["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]["properties"]["image"]["default"]
    gateway(None)
    cluster.wait_ready("transfergateway", "gw", ns, status="False", reason="PodsNotReady", timeout=60)
    assert deployed_image() == default
    # Allowed by the installer's prefix: deployed.
    gateway("registry.example/portcullis/portcullis-gateway:0.1.0")
    cluster.wait_for("the allowed image deployed",
                     lambda: deployed_image() == "registry.example/portcullis/portcullis-gateway:0.1.0")
    # Not allowed: refused, named, and the running Deployment keeps the allowed image.
    gateway("evil.example/gw:latest")
    c = cluster.wait_ready("transfergateway", "gw", ns, status="False", reason="ImageNotAllowed")
    assert c["message"].startswith("image evil.example/gw:latest is not the operator's default"), c
    assert "gateway.allowedImages" in c["message"], c
    assert cluster.condition("transfergateway", "gw", ns, "Stalled")["status"] == "True"
    time.sleep(2)
    assert deployed_image() == "registry.example/portcullis/portcullis-gateway:0.1.0"


def test_a_named_secret_that_changes_or_goes_reaches_the_gateway(cluster, operator):
    """The operator keeps the Secrets policy objects name, fetched once; a rotated one must
    still reach the gateway's config, and a deleted one must be reported, not served from the
    operator's copy."""
    ns = cluster.namespace("rotation")
    d = fresh_dir("rotation-keys")

    def credentials(key: Path) -> None:
        text = cluster.kubectl("create", "secret", "generic", "creds", f"--from-file=ssh-privatekey={key}",
                               "--dry-run=client", "-o", "yaml", namespace=ns).stdout
        cluster.kubectl("apply", "-f", "-", input=text, namespace=ns)

    credentials(keygen(d / "first"))
    for doc in small_policy(HOST_KEY, HOST_KEY, user="u"):
        cluster.apply(doc, ns)

    def served_key() -> bytes | None:
        s = cluster.get("secret", "gw-config", ns)
        return s and cluster.secret_data("gw-config", ns).get("endpoint-backend.key")

    cluster.wait_for("the first key in the gateway's config",
                     lambda: served_key() == (d / "first").read_bytes(), timeout=60)
    credentials(keygen(d / "second"))
    cluster.wait_for("the rotated key in the gateway's config",
                     lambda: served_key() == (d / "second").read_bytes(), timeout=30)
    cluster.kubectl("delete", "secret", "creds", namespace=ns)
    c = cluster.wait_ready("transferendpoint", "backend", ns, status="False", reason="SecretNotFound")
    assert "Secret creds" in c["message"], c
    cluster.wait_ready("transfergateway", "gw", ns, status="False", reason="SecretNotFound")
    # The last good config stays in force.
    assert served_key() == (d / "second").read_bytes()


PLUGIN = ROOT / "target" / "release" / "kubectl-portcullis"
FIXTURES = ROOT / "operator" / "plugin" / "tests" / "fixtures"


def plugin_check(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(PLUGIN), "policy", "check", *args], input=input, capture_output=True,
                          text=True, timeout=60)


def test_policy_check_passes_both_overlays_and_the_examples(cluster):
    """What docs/gitops.md's pull-request job runs: each overlay rendered by kustomize, and the
    examples, pass `kubectl portcullis policy check`."""
    for o in OVERLAYS:
        rendered = cluster.kubectl("kustomize", str(GITOPS / "overlays" / o)).stdout
        r = plugin_check("-f", "-", input=rendered)
        assert r.returncode == 0 and " 0 error(s)" in r.stdout, (o, r.stdout, r.stderr)
        assert "1 gateway(s) compiled" in r.stdout, r.stdout
    examples = [str(p) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    r = plugin_check(*[a for p in examples for a in ("-f", p)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_policy_check_admits_what_the_apiserver_admits(cluster):
    """The plugin's offline schema and CEL check against the real apiserver's, object by object:
    for every fixture (the broken ones, the valid base) and every kind of error the kubeconform
    test uses, the plugin reports a Schema error exactly when a server-side dry run is refused."""
    ns = cluster.namespace("plugin-vs-apiserver")
    cases = {p.name: p.read_text() for p in sorted(FIXTURES.glob("**/*.yaml"))}
    bad = {**BAD_GATEWAYS, "suffix": GATEWAY.replace("NAME", "gw-r1")}
    cases.update({f"gateway-{k}": v.replace("NAME", "gw") for k, v in bad.items()})
    verdicts = []
    for name, text in cases.items():
        offline = "[Schema]" in plugin_check("-f", "-", input=text).stdout
        live = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=text,
                               namespace=ns, check=False)
        verdicts.append((name, offline, live.returncode != 0, live.stderr.strip()[-200:]))
    table = "\n".join(f"{'ok ' if o == l else 'BAD'} {n:<40} plugin={'refuse' if o else 'admit':<6} "
                      f"apiserver={'refuse' if l else 'admit':<6} {e}" for n, o, l, e in verdicts)
    print(table)
    assert all(o == l for _, o, l, _ in verdicts), table
    assert sum(l for _, _, l, _ in verdicts) >= 8, table
