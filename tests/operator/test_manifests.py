"""Unit tests: spec -> manifests (pure, no server)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from im_operator import crd, manifests, spec as specmod

OWNER = {"name": "im", "uid": "1234"}
ROOT = Path(__file__).resolve().parents[2]


def children(raw: dict, *, access: int = 3, ws: int = 1) -> dict[tuple[str, str], dict]:
    s = specmod.normalize(raw)
    objs = manifests.desired_children(s, name="im", namespace="team", owner=OWNER, access_replicas=access, ws_replicas=ws)
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_committed_crd_is_the_generated_one():
    assert (ROOT / "crds/imcluster.yaml").read_text() == crd.render()


def test_crd_is_structural_with_status_and_printer_columns():
    c = crd.crd()
    v = c["spec"]["versions"][0]
    assert v["subresources"] == {"status": {}}
    assert {col["name"] for col in v["additionalPrinterColumns"]} >= {"Ready", "Access", "Connections"}

    def walk(s, path="$"):
        # Structural: every node has a type, or preserves unknown fields, or is int-or-string.
        assert "type" in s or s.get("x-kubernetes-int-or-string") or "anyOf" in s, path
        for k, sub in s.get("properties", {}).items():
            walk(sub, f"{path}.{k}")
        if isinstance(s.get("items"), dict):
            walk(s["items"], f"{path}[]")
        if isinstance(s.get("additionalProperties"), dict):
            walk(s["additionalProperties"], f"{path}{{}}")

    walk(v["schema"]["openAPIV3Schema"])


def test_defaults_make_a_full_stack_with_owner_references_and_labels():
    objs = children({})
    kinds = {k for k, _ in objs}
    assert kinds == {"ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget"}
    for (kind, name), o in objs.items():
        md = o["metadata"]
        assert md["namespace"] == "team"
        assert md["ownerReferences"] == [{"apiVersion": "imstack.io/v1alpha1", "kind": "ImCluster", "name": "im", "uid": "1234", "controller": True, "blockOwnerDeletion": True}], name
        assert md["labels"]["app.kubernetes.io/instance"] == "im"
    for comp in ("access", "ws-access", "dispatch", "route"):
        assert ("Deployment", f"im-{comp}") in objs
        assert ("PodDisruptionBudget", f"im-{comp}") in objs
    for comp in ("zookeeper", "redis", "mongodb"):
        assert ("StatefulSet", f"im-{comp}") in objs
        hl = objs[("Service", f"im-{comp}-headless")]
        assert hl["spec"]["clusterIP"] == "None" and hl["spec"]["publishNotReadyAddresses"] is True


def test_access_deployment_settings():
    objs = children({"image": {"repository": "reg.example/imstack", "tag": "1.2.3", "pullPolicy": "Always"},
                     "access": {"drainTimeoutSeconds": 45, "drainRatePerSecond": 50, "tlsSecretName": "im-tls",
                                "service": {"type": "NodePort", "port": 7000, "nodePort": 31000},
                                "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
                                "nodeSelector": {"role": "edge"},
                                "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}]}}, access=4)
    dep = objs[("Deployment", "im-access")]
    assert dep["spec"]["replicas"] == 4
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 45 + manifests.GRACE_MARGIN_S
    assert pod["nodeSelector"] == {"role": "edge"}
    assert pod["tolerations"][0]["key"] == "edge"
    assert pod["volumes"] == [{"name": "tls", "secret": {"secretName": "im-tls"}}]
    c = pod["containers"][0]
    assert c["image"] == "reg.example/imstack/access:1.2.3" and c["imagePullPolicy"] == "Always"
    assert c["command"] == ["imstack", "access"]
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "256Mi"}}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9090}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9090}
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    env = env_of(c)
    assert env["IMSTACK_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["IMSTACK_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["IMSTACK_TLS_CERT"]["value"].endswith("tls.crt") and env["IMSTACK_DRAIN_RATE"]["value"] == "50"
    assert "IMSTACK_TOKEN_KEY" not in env  # keys only where the contract says (route)
    svc = objs[("Service", "im-access")]
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [{"name": "client", "port": 7000, "targetPort": 9000, "protocol": "TCP", "nodePort": 31000}]
    ws = objs[("Deployment", "im-ws-access")]["spec"]["template"]["spec"]["containers"][0]
    assert ws["command"] == ["imstack", "access", "--ws"] and ws["image"] == "reg.example/imstack/access:1.2.3"


def test_route_http_api_may_be_a_node_port_and_grpc_stays_in_the_cluster():
    objs = children({"route": {"service": {"type": "NodePort", "port": 8080, "nodePort": 30080, "annotations": {"a": "b"}}}})
    svc = objs[("Service", "im-route")]
    assert svc["spec"]["type"] == "NodePort" and svc["metadata"]["annotations"] == {"a": "b"}
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080},
        {"name": "grpc", "port": 50051, "targetPort": 50051},
    ]
    plain = children({})[("Service", "im-route")]  # the default: ClusterIP, no node port
    assert plain["spec"]["type"] == "ClusterIP" and "nodePort" not in plain["spec"]["ports"][0]


def test_route_gets_keys_from_secret_and_health_on_8080():
    objs = children({"route": {"replicas": 3}})
    dep = objs[("Deployment", "im-route")]
    assert dep["spec"]["replicas"] == 3
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = env_of(c)
    assert env["IMSTACK_TOKEN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "im-keys", "key": "tokenKey"}
    assert env["IMSTACK_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "im-keys", "key": "adminKey"}
    assert c["readinessProbe"]["httpGet"]["port"] == 8080
    assert c["envFrom"] == [{"configMapRef": {"name": "im-config"}}]


def test_every_role_has_a_headless_metrics_service_on_its_metrics_port():
    """What a ServiceMonitor scrapes (docs/operator.md, "Monitoring"): one Service per role,
    labelled imstack.io/metrics, with a port named `metrics` that targets the port the role
    serves /metrics on (docs/contracts.md), selecting exactly that role's pods."""
    objs = children({"access": {"service": {"type": "LoadBalancer"}}, "route": {"service": {"type": "NodePort"}}})
    metrics_port = {"access": 9090, "ws-access": 9090, "dispatch": 9090, "route": 8080}
    for comp, port in metrics_port.items():
        svc = objs[("Service", f"im-{comp}-metrics")]
        dep = objs[("Deployment", f"im-{comp}")]
        assert svc["metadata"]["labels"][manifests.METRICS_LABEL] == "true"
        assert svc["metadata"]["labels"]["app.kubernetes.io/component"] == comp
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        # A draining access pod is unready, and its drain is what the dashboard shows.
        assert svc["spec"]["publishNotReadyAddresses"] is True
        assert svc["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": port, "protocol": "TCP"}]
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert port in [p["containerPort"] for p in container["ports"]], (comp, container["ports"])
    # Only the metrics Services carry the label: a ServiceMonitor never scrapes a client
    # Service (a LoadBalancer or NodePort here) nor a store's headless Service.
    labelled = sorted(name for (kind, name), o in objs.items() if manifests.METRICS_LABEL in o["metadata"]["labels"])
    assert labelled == sorted(f"im-{c}-metrics" for c in metrics_port)
    for comp in ("access", "ws-access"):
        client = objs[("Service", f"im-{comp}")]["spec"]["ports"]
        assert 9090 not in [p["targetPort"] for p in client], "the metrics port stays off the client Services"


def test_no_ws_access_no_ws_metrics_service():
    objs = children({"wsAccess": {"enabled": False}})
    assert ("Service", "im-ws-access-metrics") not in objs
    assert ("Service", "im-access-metrics") in objs


def test_managed_backends_config_and_statefulsets():
    objs = children({"pvcRetention": "Delete", "zookeeper": {"managed": {"replicas": 5, "storage": {"size": "2Gi", "storageClassName": "fast"}}},
                     "mongodb": {"managed": {"replicas": 3}}})
    cm = objs[("ConfigMap", "im-config")]["data"]
    zk_hosts = cm["IMSTACK_ZK"].split(",")
    assert len(zk_hosts) == 5 and zk_hosts[0] == "im-zookeeper-0.im-zookeeper-headless.team.svc:2181"
    assert cm["IMSTACK_REDIS_URL"] == "redis://im-redis-0.im-redis-headless.team.svc:6379/0"
    assert cm["IMSTACK_MONGO_URL"].endswith("/?replicaSet=rs0") and cm["IMSTACK_MONGO_URL"].count("27017") == 3
    assert cm["IMSTACK_ZK_ROOT"] == "/imstack/team-im"
    zk = objs[("StatefulSet", "im-zookeeper")]["spec"]
    assert zk["replicas"] == 5 and zk["podManagementPolicy"] == "Parallel"
    assert zk["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    pvc = zk["volumeClaimTemplates"][0]["spec"]
    assert pvc["resources"]["requests"]["storage"] == "2Gi" and pvc["storageClassName"] == "fast"
    zc = zk["template"]["spec"]["containers"][0]
    servers = {e["name"]: e["value"] for e in zc["env"]}["ZOO_SERVERS"].split()
    assert len(servers) == 5 and servers[4].startswith("server.5=im-zookeeper-4.")
    assert "ZOO_MY_ID=$(( ${HOSTNAME##*-} + 1 ))" in zc["command"][2]
    redis = objs[("StatefulSet", "im-redis")]["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "--maxmemory-policy noeviction" in redis and "--appendonly yes" in redis
    assert "--protected-mode no" in redis  # pods reach it over the pod network
    mongo = objs[("StatefulSet", "im-mongodb")]["spec"]["template"]["spec"]
    assert "--replSet" in mongo["containers"][0]["command"]
    assert "rs.initiate" in mongo["containers"][1]["command"][2] and "im-mongodb-2." in mongo["containers"][1]["command"][2]


def test_external_backends_make_no_statefulsets():
    objs = children({"zookeeper": {"external": {"connectionString": "zk1:2181,zk2:2181"}},
                     "redis": {"external": {"secretRef": {"name": "redis-conn", "key": "url"}}},
                     "mongodb": {"external": {"connectionString": "mongodb://m:27017"}},
                     "wsAccess": {"enabled": False}})
    assert not [k for k in objs if k[0] == "StatefulSet"]
    assert ("Deployment", "im-ws-access") not in objs
    cm = objs[("ConfigMap", "im-config")]["data"]
    assert cm["IMSTACK_ZK"] == "zk1:2181,zk2:2181" and "IMSTACK_REDIS_URL" not in cm
    env = env_of(objs[("Deployment", "im-dispatch")]["spec"]["template"]["spec"]["containers"][0])
    assert env["IMSTACK_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-conn", "key": "url"}


def test_key_secret_is_random_and_well_formed():
    a = manifests.key_secret(name="im", namespace="team", owner=OWNER)
    b = manifests.key_secret(name="im", namespace="team", owner=OWNER)
    assert a["data"]["tokenKey"] != b["data"]["tokenKey"]
    assert len(base64.b64decode(a["data"]["tokenKey"])) >= 48


def test_spec_problems_are_reported():
    s = specmod.normalize({"access": {"minReplicas": 5, "maxReplicas": 2}, "zookeeper": {"managed": {"replicas": 2}},
                           "redis": {"external": {}}})
    p = specmod.problems(s)
    assert any("minReplicas (5) exceeds maxReplicas (2)" in x for x in p)
    assert any("odd number" in x for x in p)
    assert any("spec.redis.external" in x for x in p)
    assert specmod.problems(specmod.normalize({})) == []


def test_example_in_docs_is_valid():
    text = (ROOT / "docs/operator.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    doc = yaml.safe_load(block)
    assert doc["kind"] == "ImCluster"
    assert specmod.problems(specmod.normalize(doc["spec"])) == []


# ---- offline push webhook, timeline, recall window (issue 12 settings) ------------------


def _spec_validator():
    """The CRD's spec schema as JSON Schema (the x-kubernetes-* keys are ignored by jsonschema;
    the API server checks the same types, patterns, bounds and required fields)."""
    import jsonschema

    return jsonschema.Draft7Validator(crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


HOOK = {"url": "https://push.example.com/v1/offline", "preview": False, "tokenSecretRef": {"name": "push-gw"}}


def test_push_webhook_renders_into_dispatch_env_with_the_token_from_a_secret():
    objs = children({"pushWebhook": HOOK})
    env = env_of(objs[("Deployment", "im-dispatch")]["spec"]["template"]["spec"]["containers"][0])
    assert env["IMSTACK_PUSH_WEBHOOK_URL"] == {"name": "IMSTACK_PUSH_WEBHOOK_URL", "value": HOOK["url"]}
    assert env["IMSTACK_PUSH_WEBHOOK_PREVIEW"]["value"] == "0"
    # the token never sits in the Deployment: a secretKeyRef, key defaulted to "token"
    assert env["IMSTACK_PUSH_WEBHOOK_TOKEN"] == {
        "name": "IMSTACK_PUSH_WEBHOOK_TOKEN", "valueFrom": {"secretKeyRef": {"name": "push-gw", "key": "token"}}
    }
    # only dispatch calls the webhook; the ConfigMap (read by every role) does not name it
    for dep in ("im-route", "im-access", "im-ws-access"):
        names = env_of(objs[("Deployment", dep)]["spec"]["template"]["spec"]["containers"][0])
        assert not any(n.startswith("IMSTACK_PUSH_WEBHOOK") for n in names), dep
    assert not any(k.startswith("IMSTACK_PUSH_WEBHOOK") for k in objs[("ConfigMap", "im-config")]["data"])


def test_push_webhook_defaults_preview_on_and_no_token_and_is_off_when_absent():
    env = env_of(children({"pushWebhook": {"url": "http://10.0.0.9:8080/hook"}})[("Deployment", "im-dispatch")]["spec"]["template"]["spec"]["containers"][0])
    assert env["IMSTACK_PUSH_WEBHOOK_PREVIEW"]["value"] == "1"
    assert "IMSTACK_PUSH_WEBHOOK_TOKEN" not in env
    plain = env_of(children({})[("Deployment", "im-dispatch")]["spec"]["template"]["spec"]["containers"][0])
    assert not any(n.startswith("IMSTACK_PUSH_WEBHOOK") for n in plain)


def test_timeline_and_recall_window_reach_route_and_dispatch_alike():
    objs = children({"timeline": {"retentionSeconds": 86400, "maxDevices": 4}, "recallWindowSeconds": 300})
    dispatch = env_of(objs[("Deployment", "im-dispatch")]["spec"]["template"]["spec"]["containers"][0])
    route = env_of(objs[("Deployment", "im-route")]["spec"]["template"]["spec"]["containers"][0])
    for env in (dispatch, route):  # route registers devices at sign-in: it must evict as dispatch does
        assert env["IMSTACK_TIMELINE_RETENTION"]["value"] == "86400"
        assert env["IMSTACK_MAX_DEVICES"]["value"] == "4"
    assert dispatch["IMSTACK_RECALL_WINDOW"]["value"] == "300"
    assert "IMSTACK_RECALL_WINDOW" not in route
    defaults = env_of(children({})[("Deployment", "im-dispatch")]["spec"]["template"]["spec"]["containers"][0])
    assert (defaults["IMSTACK_TIMELINE_RETENTION"]["value"], defaults["IMSTACK_MAX_DEVICES"]["value"],
            defaults["IMSTACK_RECALL_WINDOW"]["value"]) == ("604800", "16", "120")


def test_rendered_env_is_what_the_runtime_reads(monkeypatch):
    """The names and value formats the operator writes are the ones im_runtime.config reads:
    the dispatch container's env, with the Secret's value as the kubelet would put it, gives
    the runtime's webhook and timeline settings."""
    from im_runtime.config import Settings
    from im_runtime.dispatch import offline_push

    objs = children({"pushWebhook": HOOK, "timeline": {"retentionSeconds": 3600, "maxDevices": 3}, "recallWindowSeconds": 30})
    for e in objs[("Deployment", "im-dispatch")]["spec"]["template"]["spec"]["containers"][0]["env"]:
        if e["name"] == "IMSTACK_PUSH_WEBHOOK_TOKEN":
            monkeypatch.setenv(e["name"], "s3cret")  # the kubelet resolves the secretKeyRef
        elif "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    s = Settings()
    assert (s.timeline_retention_s, s.max_devices, s.recall_window_s) == (3600.0, 3, 30.0)
    hook = offline_push.from_settings(s)
    assert hook is not None
    assert (hook.settings.url, hook.settings.preview, hook.settings.token) == (HOOK["url"], False, "s3cret")
    monkeypatch.setenv("IMSTACK_PUSH_WEBHOOK_PREVIEW", "1")
    assert Settings().push_webhook_preview is True


@pytest.mark.parametrize(
    "bad",
    [
        {"pushWebhook": {"preview": True}},  # no url
        {"pushWebhook": {"url": "ftp://push.example.com"}},
        {"pushWebhook": {"url": "https://"}},
        {"pushWebhook": {"url": "https://x", "tokenSecretRef": {"key": "token"}}},  # no Secret name
        {"timeline": {"retentionSeconds": 0}},
        {"timeline": {"maxDevices": 0}},
        {"recallWindowSeconds": -1},
    ],
)
def test_crd_schema_refuses_bad_webhook_and_timeline_settings(bad):
    assert list(_spec_validator().iter_errors(specmod.normalize(bad))), bad


def test_crd_schema_accepts_the_webhook_example_and_problems_check_the_url_again():
    v = _spec_validator()
    good = specmod.normalize({"pushWebhook": HOOK, "timeline": {"retentionSeconds": 60, "maxDevices": 1}, "recallWindowSeconds": 0})
    assert list(v.iter_errors(good)) == []
    assert specmod.problems(good) == []
    # for API servers that skip the schema's pattern, the operator reports it as InvalidSpec
    bad = specmod.normalize({"pushWebhook": {"url": "mailto:ops@example.com"}})
    assert any("spec.pushWebhook.url" in p for p in specmod.problems(bad))
