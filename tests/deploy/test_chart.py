"""charts/im-stack: lint, schema, rendering, least-privilege RBAC, CRD copy, and a server-side
dry-run of every rendered object against a real kube-apiserver.

Renderings checked: the defaults, the kind CI values (ci/kind-values.yaml), the managed-services
example (examples/external-services.yaml: external Redis/MongoDB/ZooKeeper) and a namespaced
install (operator.watchNamespaces).
"""

from __future__ import annotations

import json
import time
import tomllib

import pytest
import yaml

from .tools import CHART, REPO, by_kind, helm, render

KIND_VALUES = CHART / "ci" / "kind-values.yaml"
EXTERNAL_VALUES = CHART / "examples" / "external-services.yaml"
NAMESPACED = ["operator.watchNamespaces={team-a,team-b}"]
# The chart's ImCluster with the offline push webhook set from chart values (docs/deploy.md).
WEBHOOK = ["exampleCluster.enabled=true", "pushWebhook.url=https://push-gw.example.com/v1/offline",
           "pushWebhook.preview=false", "pushWebhook.tokenSecret.name=push-gw", "pushWebhook.tokenSecret.key=bearer"]

RENDERINGS = {
    "defaults": ((), []),
    "kind": ((KIND_VALUES,), []),
    "external": ((EXTERNAL_VALUES,), []),
    "namespaced": ((), NAMESPACED),
    "webhook": ((), WEBHOOK),
}


def chart_meta() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_helm_lint_strict(name):
    files, sets = RENDERINGS[name]
    args = ["lint", "--strict", str(CHART)]
    for f in files:
        args += ["--values", str(f)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize(
    "bad",
    [
        "operator.replicas=2",  # standalone kopf: two would reconcile the same ImCluster
        "operator.logFormat=xml",
        "operator.watchNamespaces={Not_A_Namespace}",
        "image.pullPolicy=Sometimes",
        "noSuchKey=1",
        "exampleCluster.name=Bad_Name",
        "pushWebhook.url=ftp://push.example.com",
        "pushWebhook.tokenSecret.name=Bad_Secret",
        "pushWebhook.retries=3",
    ],
)
def test_schema_refuses_bad_values(bad):
    proc = helm("template", "im-stack", str(CHART), "--set", bad, check=False)
    assert proc.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in proc.stderr.lower(), proc.stderr


def test_defaults_render_operator_crd_and_rbac_only():
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRole",
         "ClusterRoleBinding", "ClusterRoleBinding", "Deployment"]
    ), kinds
    assert not by_kind(objs, "ImCluster"), "the example ImCluster must be off by default"


def test_app_version_is_the_project_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart_meta()["appVersion"] == version


def test_operator_deployment():
    (dep,) = by_kind(render(), "Deployment")
    assert dep["metadata"]["namespace"] == "imstack-system"
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"imstack/operator:{chart_meta()['appVersion']}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' user
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert not [a for a in c["args"] if a.startswith("--namespace")], "defaults watch every namespace"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert pod["serviceAccountName"] == by_kind(render(), "ServiceAccount")[0]["metadata"]["name"]


def _rules(objs: list[dict]) -> list[dict]:
    return [r for o in objs if o["kind"] in ("ClusterRole", "Role") for r in o["rules"]]


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_rbac_is_least_privilege(name):
    files, sets = RENDERINGS[name]
    rules = _rules(render(*files, sets=sets))
    granted: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in r[field], f"wildcard in {r}"
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(r["verbs"]), r
        for g in r["apiGroups"]:
            for res in r["resources"]:
                granted.setdefault((g, res), set()).update(r["verbs"])
    # What the operator does (docs/operator.md, "RBAC the operator needs") is granted ...
    needs = {
        ("imstack.io", "imclusters"): {"get", "list", "watch", "patch"},
        ("imstack.io", "imclusters/status"): {"get", "patch"},
        ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
        ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "services"): {"get", "list", "create", "patch", "delete"},
        ("", "configmaps"): {"get", "list", "create", "patch", "delete"},
        ("policy", "poddisruptionbudgets"): {"get", "list", "create", "patch", "delete"},
        ("", "secrets"): {"get", "create"},
        ("", "pods"): {"get", "list", "patch"},
        ("", "events"): {"create"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    for key, verbs in needs.items():
        assert verbs <= granted.get(key, set()), f"{key} lacks {verbs - granted.get(key, set())}"
    # ... and nothing it does not do.
    assert granted[("", "pods")] == {"get", "list", "patch"}, "pods: only pod-deletion-cost patches"
    assert "delete" not in granted[("", "secrets")]
    assert not {k for k in granted if k[1] in ("nodes", "clusterroles", "roles", "rolebindings",
                                              "clusterrolebindings", "serviceaccounts")}
    cluster_wide = {r for o in render(*files, sets=sets) if o["kind"] == "ClusterRole"
                    for r in (o["metadata"]["name"],)}
    assert cluster_wide, "the CRD/namespace read is cluster-scoped"


def test_watch_namespaces_grants_roles_per_namespace():
    objs = render(sets=NAMESPACED)
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(objs, "RoleBinding")) == ["team-a", "team-b"]
    # The only ClusterRole left reads CRDs and namespaces.
    (cr,) = by_kind(objs, "ClusterRole")
    assert {res for r in cr["rules"] for res in r["resources"]} == {"customresourcedefinitions", "namespaces"}
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in cr["rules"])
    (dep,) = by_kind(objs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_external_services_example():
    objs = render(EXTERNAL_VALUES)
    (imc,) = by_kind(objs, "ImCluster")
    assert imc["apiVersion"] == "imstack.io/v1alpha1"
    assert imc["metadata"]["namespace"] == "im"
    spec = imc["spec"]
    assert set(spec["zookeeper"]) == {"external"} and "connectionString" in spec["zookeeper"]["external"]
    assert spec["redis"]["external"]["secretRef"]["name"] == "chat-redis"
    assert spec["mongodb"]["external"]["secretRef"]["name"] == "chat-mongo"
    assert [r["metadata"]["namespace"] for r in by_kind(objs, "Role")] == ["im"]


def test_push_webhook_values_reach_the_dispatch_pods():
    """pushWebhook.* becomes the chart ImCluster's spec.pushWebhook, and the operator renders
    that into the dispatch Deployment's env (the token from the named Secret key)."""
    from im_operator import manifests, spec as specmod

    (imc,) = by_kind(render(sets=WEBHOOK), "ImCluster")
    hook = imc["spec"]["pushWebhook"]
    assert hook == {"url": "https://push-gw.example.com/v1/offline", "preview": False,
                    "tokenSecretRef": {"name": "push-gw", "key": "bearer"}}
    spec = specmod.normalize(imc["spec"])
    assert specmod.problems(spec) == []
    objs = manifests.desired_children(spec, name=imc["metadata"]["name"], namespace="imstack-system",
                                      owner={"name": "im-demo", "uid": "1"}, access_replicas=2, ws_replicas=1)
    (dispatch,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "im-demo-dispatch"]
    env = {e["name"]: e for e in dispatch["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IMSTACK_PUSH_WEBHOOK_URL"]["value"] == hook["url"]
    assert env["IMSTACK_PUSH_WEBHOOK_PREVIEW"]["value"] == "0"
    assert env["IMSTACK_PUSH_WEBHOOK_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "push-gw", "key": "bearer"}}
    # no token Secret named: no Authorization, and preview stays on by default
    (plain,) = by_kind(render(sets=["exampleCluster.enabled=true", "pushWebhook.url=http://10.1.2.3:8080/hook"]), "ImCluster")
    assert plain["spec"]["pushWebhook"] == {"url": "http://10.1.2.3:8080/hook", "preview": True}
    # and without pushWebhook.url the example's spec is passed through untouched
    (kind,) = by_kind(render(KIND_VALUES), "ImCluster")
    assert kind["spec"] == yaml.safe_load(KIND_VALUES.read_text())["exampleCluster"]["spec"]


@pytest.mark.parametrize(
    "sets, why",
    [
        (["pushWebhook.url=https://push.example.com"], "enable exampleCluster"),
        (["exampleCluster.enabled=true", "pushWebhook.url=https://a.example.com",
          "exampleCluster.spec.pushWebhook.url=https://b.example.com"], "not both"),
    ],
)
def test_push_webhook_values_that_would_do_nothing_or_clash_fail_the_render(sets, why):
    args = ["template", "im-stack", str(CHART)]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args, check=False)
    assert proc.returncode != 0 and why in proc.stderr, proc.stderr


def test_kind_values_match_kind_config():
    """The NodePorts of the kind example are the ones kind-config.yaml maps to the laptop."""
    (imc,) = by_kind(render(KIND_VALUES), "ImCluster")
    cfg = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    mapped = {m["containerPort"]: m["hostPort"]
              for n in cfg["nodes"] for m in n.get("extraPortMappings", [])}
    assert mapped[imc["spec"]["access"]["service"]["nodePort"]] == 9000
    assert mapped[imc["spec"]["wsAccess"]["service"]["nodePort"]] == 9001
    assert mapped[imc["spec"]["route"]["service"]["nodePort"]] == 8080
    assert imc["spec"]["route"]["service"]["type"] == "NodePort"
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 1
    for n in cfg["nodes"]:
        for m in n.get("extraPortMappings", []):
            assert m["listenAddress"] == "127.0.0.1", "only the laptop itself reaches the stack"


def test_crd_copy_is_crds_imcluster_yaml():
    """The chart installs crds/imcluster.yaml from its own crds/ folder: Helm creates those before
    it maps the templates, so an ImCluster can be installed in the same release."""
    copy = CHART / "crds" / "imcluster.yaml"
    assert copy.read_bytes() == (REPO / "crds" / "imcluster.yaml").read_bytes(), (
        "charts/im-stack/crds/imcluster.yaml differs from crds/imcluster.yaml: "
        "cp crds/imcluster.yaml charts/im-stack/crds/imcluster.yaml"
    )
    (crd,) = by_kind(render(), "CustomResourceDefinition")
    source = yaml.safe_load(copy.read_text())
    assert crd == source, "the chart must install the CRD unchanged"
    # RBAC and the example speak the CRD's group and version.
    group, version = source["spec"]["group"], source["spec"]["versions"][0]["name"]
    assert any(group in r["apiGroups"] for r in _rules(render()))
    (imc,) = by_kind(render(KIND_VALUES), "ImCluster")
    assert imc["apiVersion"] == f"{group}/{version}"


# --- server-side dry run against a real kube-apiserver ---------------------------------------


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    from tests.servers.kube import start_control_plane

    from .kubeapply import KubeApi

    cp = start_control_plane(tmp_path_factory.mktemp("kube"))
    try:
        api = KubeApi(cp.url, cp.token, cp.ca_file)
        api.kubeconfig = str(cp.kubeconfig)
        yield api
    finally:
        cp.stop()


def _apply_for_real(api, obj: dict) -> None:
    res = api.apply(obj, dry_run=False)
    assert res.status in (200, 201), f"{obj['kind']} {obj['metadata']['name']}: {res.status} {res.body}"


@pytest.mark.timeout(240)
def test_every_rendered_object_passes_server_side_dry_run(kube):
    (crd,) = by_kind(render(), "CustomResourceDefinition")
    # The CRD itself is applied for real first (a dry-run ImCluster needs a served kind) ...
    _apply_for_real(kube, crd)
    deadline = time.monotonic() + 60
    while True:
        status = kube.get(crd).body.get("status", {})
        if any(c["type"] == "Established" and c["status"] == "True" for c in status.get("conditions") or []):
            break
        assert time.monotonic() < deadline, f"CRD not Established: {status}"
        time.sleep(0.2)
    for ns in ("imstack-system", "im", "team-a", "team-b"):
        _apply_for_real(kube, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # ... then every object of every rendering goes through a dry run, strictly validated.
    failures, applied = [], 0
    for name, (files, sets) in RENDERINGS.items():
        for obj in render(*files, sets=sets):
            res = kube.apply(obj, dry_run=True)
            applied += 1
            if res.status not in (200, 201):
                failures.append(f"[{name}] {obj['kind']} {obj['metadata']['name']}: {res.status} "
                                f"{res.body.get('message', res.body)}")
    assert not failures, "\n".join(failures)
    assert applied >= 30, applied
    # The dry run really validates: an ImCluster the CRD refuses is refused here too.
    (imc,) = by_kind(render(KIND_VALUES), "ImCluster")
    imc["spec"]["access"].update(minReplicas=5, maxReplicas=2)
    res = kube.apply(imc, dry_run=True)
    assert res.status == 422, (res.status, res.body)
    assert "minReplicas" in res.body.get("message", "")
    # And nothing was stored by the dry runs.
    (dep,) = by_kind(render(), "Deployment")
    assert kube.get(dep).status == 404


@pytest.mark.timeout(240)
def test_helm_install_upgrade_uninstall_on_a_real_apiserver(kube):
    """What a platform team runs: install (CRD from crds/ first, then the operator and an
    ImCluster in the same release), upgrade, uninstall. No kubelet here, so nothing starts; the
    API objects are what is checked."""
    ns = "helm-e2e"
    base = ["--kubeconfig", kube.kubeconfig, "--namespace", ns]
    helm("install", "im-stack", str(CHART), *base, "--create-namespace", "--values", str(KIND_VALUES))
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "im-stack-operator", "namespace": ns}}
    imc = {"apiVersion": "imstack.io/v1alpha1", "kind": "ImCluster", "metadata": {"name": "im-demo", "namespace": ns}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "imclusters.imstack.io"}}
    got = kube.get(dep)
    assert got.status == 200, got.body
    assert "--interval=10" in got.body["spec"]["template"]["spec"]["containers"][0]["args"]
    got = kube.get(imc)
    assert got.status == 200, got.body
    assert got.body["spec"]["pvcRetention"] == "Retain", "the CRD's defaults were applied"
    assert got.body["spec"]["access"]["service"]["nodePort"] == 30900

    # The installed RBAC, through the API server's own authorizer, for the operator's identity.
    sa = f"system:serviceaccount:{ns}:im-stack"
    for verb, group, resource, where in [
        ("patch", "imstack.io", "imclusters", "anywhere"), ("patch", "imstack.io", "imclusters/status", "x"),
        ("create", "apps", "deployments", "x"), ("delete", "apps", "statefulsets", "x"),
        ("patch", "", "services", "x"), ("create", "", "secrets", "x"), ("patch", "", "pods", "x"),
        ("create", "", "events", "x"), ("delete", "policy", "poddisruptionbudgets", "x"),
        ("list", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ]:
        assert can(kube, sa, verb, group, resource, where), f"the operator cannot {verb} {resource}"
    for verb, group, resource, where in [
        ("delete", "", "pods", "x"), ("create", "", "pods", "x"), ("delete", "", "secrets", "x"),
        ("get", "", "nodes", ""), ("create", "", "serviceaccounts", "x"),
        ("update", "rbac.authorization.k8s.io", "clusterroles", ""),
        ("delete", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ]:
        assert not can(kube, sa, verb, group, resource, where), f"the operator may {verb} {resource}"

    helm("upgrade", "im-stack", str(CHART), *base, "--values", str(KIND_VALUES), "--set", "operator.intervalSeconds=5")
    got = kube.get(dep)
    assert "--interval=5" in got.body["spec"]["template"]["spec"]["containers"][0]["args"]
    assert kube.get(imc).status == 200, "an upgrade keeps the ImCluster"

    helm("uninstall", "im-stack", *base, "--wait", "--timeout", "60s")
    assert kube.get(dep).status == 404
    assert kube.get(crd).status == 200, "Helm keeps the CRD (and with it every other ImCluster)"


def can(kube, user: str, verb: str, group: str, resource: str, namespace: str) -> bool:
    """SubjectAccessReview: may `user` (a service account) do this, per the live RBAC?"""
    ns = user.split(":")[2]
    res, _, sub = resource.partition("/")
    attrs = {"verb": verb, "group": group, "resource": res}
    if sub:
        attrs["subresource"] = sub
    if namespace:
        attrs["namespace"] = namespace
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                                                "system:authenticated"], "resourceAttributes": attrs}}
    out = kube.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", json.dumps(review).encode(),
                       "application/json")
    assert out.status == 201, out.body
    return bool(out.body["status"].get("allowed"))


@pytest.mark.timeout(240)
def test_namespaced_install_grants_only_its_namespaces(kube):
    ns = "ops"
    # Helm puts each Role into its namespace: the watched namespaces exist first.
    for name in ("team-a", "team-b"):
        _apply_for_real(kube, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    helm("install", "im-ops", str(CHART), "--kubeconfig", kube.kubeconfig, "--namespace", ns, "--create-namespace",
         "--set", "operator.watchNamespaces={team-a}")
    sa = f"system:serviceaccount:{ns}:im-ops-im-stack"
    assert can(kube, sa, "create", "apps", "deployments", "team-a")
    assert can(kube, sa, "watch", "imstack.io", "imclusters", "team-a")
    assert not can(kube, sa, "create", "apps", "deployments", "team-b")
    assert not can(kube, sa, "watch", "imstack.io", "imclusters", "team-b")
    assert not can(kube, sa, "get", "", "secrets", "kube-system")
    assert can(kube, sa, "list", "", "namespaces", "")
    helm("uninstall", "im-ops", "--kubeconfig", kube.kubeconfig, "--namespace", ns)
