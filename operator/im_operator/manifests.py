"""Spec -> desired child manifests (pure; STYLE 7).

`desired_children()` turns one normalized ImCluster spec into the list of objects the operator
server-side-applies: ConfigMap, StatefulSets + headless Services for the managed ZooKeeper,
Redis and MongoDB, Deployments for access / WebSocket access / dispatch / route, client-facing
Services, headless metrics Services (one per role, for a Prometheus Operator ServiceMonitor:
see `metrics_service()`) and PodDisruptionBudgets. Every object carries the same labels (so stale ones can be
found and pruned) and a controller owner reference to the ImCluster (so garbage collection
removes them with it). The key Secret is not here: it is created once, never re-applied
(`key_secret()`), so a reconcile can never rotate the token signing key.

The access replica count is an input: the autoscaler owns it, not the spec.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from .crd import GROUP, KIND, VERSION
from .spec import Spec, zk_root

Manifest = dict[str, Any]

MANAGED_BY = "imstack-operator"
COMPONENTS = ("access", "ws-access", "dispatch", "route", "zookeeper", "redis", "mongodb")
HEALTH_PORT = 9090
ROUTE_HTTP, ROUTE_GRPC = 8080, 50051
DISPATCH_PORT = 9100
TLS_DIR = "/etc/imstack/tls"
# SIGTERM makes an access pod drain (stop accepting, leave ipList, KICK at the drain rate);
# the grace period gives it the drain timeout plus a margin to flush and exit.
GRACE_MARGIN_S = 15
PRESTOP_SLEEP_S = 5
# The label a ServiceMonitor selects the metrics Services by (charts/im-stack, serviceMonitor).
METRICS_LABEL = "imstack.io/metrics"
METRICS_PORT_NAME = "metrics"


def labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "imstack",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": component}


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": owner["name"],
        "uid": owner["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_name(name: str, component: str) -> str:
    return f"{name}-{component}"


def headless_name(name: str, component: str) -> str:
    return f"{name}-{component}-headless"


def metrics_name(name: str, component: str) -> str:
    return f"{name}-{component}-metrics"


def secret_name(name: str) -> str:
    return f"{name}-keys"


def config_name(name: str) -> str:
    return f"{name}-config"


def _meta(name: str, namespace: str, component: str, owner: dict[str, Any], obj_name: str | None = None) -> dict[str, Any]:
    return {
        "name": obj_name or child_name(name, component),
        "namespace": namespace,
        "labels": labels(name, component),
        "ownerReferences": [owner_reference(owner)],
    }


def _placement(pod: dict[str, Any], comp: dict[str, Any]) -> dict[str, Any]:
    if comp.get("nodeSelector"):
        pod["nodeSelector"] = dict(comp["nodeSelector"])
    if comp.get("tolerations"):
        pod["tolerations"] = [dict(t) for t in comp["tolerations"]]
    return pod


def _resources(comp: dict[str, Any]) -> dict[str, Any]:
    r = comp.get("resources") or {}
    return {k: {q: str(v) for q, v in r[k].items()} for k in ("requests", "limits") if r.get(k)}


def _fqdn(pod: str, headless: str, namespace: str, port: int) -> str:
    return f"{pod}.{headless}.{namespace}.svc:{port}"


def _sts_hosts(name: str, namespace: str, component: str, replicas: int, port: int) -> list[str]:
    return [_fqdn(f"{child_name(name, component)}-{i}", headless_name(name, component), namespace, port) for i in range(replicas)]


def connection_settings(spec: Spec, *, name: str, namespace: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(ConfigMap data, env entries read from user Secrets) for IMSTACK_ZK/REDIS_URL/MONGO_URL."""
    data: dict[str, str] = {}
    env: list[dict[str, Any]] = []
    managed_urls = {
        "zookeeper": lambda m: ",".join(_sts_hosts(name, namespace, "zookeeper", m["replicas"], 2181)),
        "redis": lambda m: "redis://" + _sts_hosts(name, namespace, "redis", 1, 6379)[0] + "/0",
        "mongodb": lambda m: "mongodb://" + ",".join(_sts_hosts(name, namespace, "mongodb", m["replicas"], 27017)) + "/?replicaSet=rs0",
    }
    for comp, var in (("zookeeper", "IMSTACK_ZK"), ("redis", "IMSTACK_REDIS_URL"), ("mongodb", "IMSTACK_MONGO_URL")):
        b = spec[comp]
        if "managed" in b:
            data[var] = managed_urls[comp](b["managed"])
        elif "connectionString" in b["external"]:
            data[var] = b["external"]["connectionString"]
        else:
            ref = b["external"]["secretRef"]
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref.get("key", "connectionString")}}})
    return data, env


def config_map(spec: Spec, *, name: str, namespace: str, owner: dict[str, Any]) -> Manifest:
    data, _ = connection_settings(spec, name=name, namespace=namespace)
    data.update(
        {
            "IMSTACK_ZK_ROOT": zk_root(spec, name=name, namespace=namespace),
            "IMSTACK_ROUTE_GRPC": f"{child_name(name, 'route')}.{namespace}.svc:{ROUTE_GRPC}",
            "IMSTACK_MONGO_DB": "imstack",
            "IMSTACK_LOG_FORMAT": "json",
        }
    )
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, namespace, "config", owner, config_name(name)), "data": data}


def key_secret(*, name: str, namespace: str, owner: dict[str, Any], token_key: str | None = None, admin_key: str | None = None) -> Manifest:
    """The token signing key and admin key; created once (see module docstring)."""
    token_key = token_key or secrets.token_urlsafe(48)
    admin_key = admin_key or secrets.token_urlsafe(32)
    enc = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(name, namespace, "keys", owner, secret_name(name)),
        "data": {"tokenKey": enc(token_key), "adminKey": enc(admin_key)},
    }


def _image(spec: Spec, what: str) -> str:
    img = spec["image"]
    return f"{img['repository']}/{what}:{img['tag']}"


def _runtime_env(spec: Spec, *, name: str, namespace: str, keys: bool) -> list[dict[str, Any]]:
    _, secret_env = connection_settings(spec, name=name, namespace=namespace)
    env = [
        {"name": "IMSTACK_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "IMSTACK_ADVERTISE_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *secret_env,
    ]
    if keys:
        for var, key in (("IMSTACK_ADMIN_KEY", "adminKey"), ("IMSTACK_TOKEN_KEY", "tokenKey")):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": key}}})
    return env


def timeline_env(spec: Spec) -> list[dict[str, Any]]:
    """The S18 timeline settings, for every role that opens the timelines: route (a sign-in
    registers the device) and dispatch. Both must agree, or route would evict devices that
    dispatch keeps (docs/storage.md, "Timeline")."""
    t = spec["timeline"]
    return [
        {"name": "IMSTACK_TIMELINE_RETENTION", "value": str(t["retentionSeconds"])},
        {"name": "IMSTACK_MAX_DEVICES", "value": str(t["maxDevices"])},
    ]


def dispatch_env(spec: Spec) -> list[dict[str, Any]]:
    """Dispatch's own settings: the timeline, the recall window, and the offline push webhook
    (spec.pushWebhook; absent: no IMSTACK_PUSH_WEBHOOK_* at all, the webhook is off). The
    token comes from the user's Secret, never from the spec, so it is not in the Deployment."""
    env = [*timeline_env(spec), {"name": "IMSTACK_RECALL_WINDOW", "value": str(spec["recallWindowSeconds"])}]
    hook = spec.get("pushWebhook")
    if hook:
        env += [
            {"name": "IMSTACK_PUSH_WEBHOOK_URL", "value": hook["url"]},
            {"name": "IMSTACK_PUSH_WEBHOOK_PREVIEW", "value": "1" if hook.get("preview", True) else "0"},
        ]
        ref = hook.get("tokenSecretRef")
        if ref:
            env.append({"name": "IMSTACK_PUSH_WEBHOOK_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref.get("key", "token")}}})
    return env


def _http_probes(port: int) -> dict[str, Any]:
    return {
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": port}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10, "failureThreshold": 3, "initialDelaySeconds": 10},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 2, "failureThreshold": 60},
    }


def _deployment(
    spec: Spec,
    *,
    name: str,
    namespace: str,
    owner: dict[str, Any],
    component: str,
    image: str,
    command: list[str],
    replicas: int,
    comp: dict[str, Any],
    ports: list[tuple[str, int]],
    health_port: int,
    keys: bool = False,
    extra_container: dict[str, Any] | None = None,
    extra_pod: dict[str, Any] | None = None,
) -> Manifest:
    container: dict[str, Any] = {
        "name": component,
        "image": image,
        "imagePullPolicy": spec["image"]["pullPolicy"],
        "command": command,
        "envFrom": [{"configMapRef": {"name": config_name(name)}}],
        "env": _runtime_env(spec, name=name, namespace=namespace, keys=keys),
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports],
        **_http_probes(health_port),
    }
    res = _resources(comp)
    if res:
        container["resources"] = res
    container.update(extra_container or {})
    pod: dict[str, Any] = {"containers": [container], **(extra_pod or {})}
    if spec["image"].get("pullSecrets"):
        pod["imagePullSecrets"] = [{"name": s} for s in spec["image"]["pullSecrets"]]
    _placement(pod, comp)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, component, owner),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(name, component)},
            # Add the new pod before draining an old one: no capacity dip during an upgrade.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels(name, component),
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(health_port)},
                },
                "spec": pod,
            },
        },
    }


def _service(name: str, namespace: str, owner: dict[str, Any], component: str, ports: list[dict[str, Any]], *, svc_type: str = "ClusterIP", annotations: dict[str, str] | None = None) -> Manifest:
    meta = _meta(name, namespace, component, owner)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"type": svc_type, "selector": selector(name, component), "ports": ports},
    }


def _client_port(port_name: str, target: int, svc: dict[str, Any]) -> dict[str, Any]:
    """The Service port clients use, from the spec's service block (its nodePort only where the
    type opens one)."""
    sport: dict[str, Any] = {"name": port_name, "port": svc["port"], "targetPort": target, "protocol": "TCP"}
    if svc.get("nodePort") and svc["type"] != "ClusterIP":
        sport["nodePort"] = svc["nodePort"]
    return sport


def _headless(name: str, namespace: str, owner: dict[str, Any], component: str, ports: list[tuple[str, int]]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, component, owner, headless_name(name, component)),
        "spec": {
            "clusterIP": "None",
            # Peers must resolve each other before they are ready (a quorum forms first).
            "publishNotReadyAddresses": True,
            "selector": selector(name, component),
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports],
        },
    }


def metrics_service(name: str, namespace: str, owner: dict[str, Any], component: str, port: int) -> Manifest:
    """A headless Service over one role's pods with one port named `metrics` (the /metrics
    port: 9090 on access and dispatch, the HTTP port 8080 on route), labelled METRICS_LABEL.

    Separate from the client Services on purpose: those may be LoadBalancers or NodePorts
    (the metrics port must not be published with them), dispatch has none, and one label and
    one port name let a single ServiceMonitor scrape every role of every ImCluster. Headless:
    Prometheus scrapes each pod, no virtual IP is needed. Not-ready addresses are published
    because a draining access pod is not ready (its /readyz says so, to leave the client
    Service) and is exactly the pod whose metrics (drain state, KICKs) matter then."""
    meta = _meta(name, namespace, component, owner, metrics_name(name, component))
    meta["labels"][METRICS_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector(name, component),
            "ports": [{"name": METRICS_PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def _pdb(name: str, namespace: str, owner: dict[str, Any], component: str) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace, component, owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name, component)}},
    }


def _access(spec: Spec, *, name: str, namespace: str, owner: dict[str, Any], ws: bool, replicas: int) -> list[Manifest]:
    key, component = ("wsAccess", "ws-access") if ws else ("access", "access")
    a = spec[key]
    port = 9001 if ws else 9000
    extra_env: list[dict[str, Any]] = []
    extra_pod: dict[str, Any] = {"terminationGracePeriodSeconds": a["drainTimeoutSeconds"] + GRACE_MARGIN_S}
    container: dict[str, Any] = {
        # Give Service endpoints time to drop the pod before SIGTERM starts the drain.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
    }
    if a.get("tlsSecretName"):
        extra_env = [{"name": "IMSTACK_TLS_CERT", "value": f"{TLS_DIR}/tls.crt"}, {"name": "IMSTACK_TLS_KEY", "value": f"{TLS_DIR}/tls.key"}]
        container["volumeMounts"] = [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}]
        extra_pod["volumes"] = [{"name": "tls", "secret": {"secretName": a["tlsSecretName"]}}]
    dep = _deployment(
        spec,
        name=name,
        namespace=namespace,
        owner=owner,
        component=component,
        image=_image(spec, "access"),
        command=["imstack", "access", "--ws"] if ws else ["imstack", "access"],
        replicas=replicas,
        comp=a,
        ports=[("client", port), ("health", HEALTH_PORT)],
        health_port=HEALTH_PORT,
        extra_container=container,
        extra_pod=extra_pod,
    )
    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["env"] += extra_env
    c["env"].append({"name": "IMSTACK_DRAIN_RATE", "value": str(a["drainRatePerSecond"])})
    c["env"].append({"name": "IMSTACK_DRAIN_TIMEOUT", "value": str(a["drainTimeoutSeconds"])})
    svc = a["service"]
    return [
        dep,
        _service(name, namespace, owner, component, [_client_port("client", port, svc)], svc_type=svc["type"], annotations=svc.get("annotations")),
        metrics_service(name, namespace, owner, component, HEALTH_PORT),
        _pdb(name, namespace, owner, component),
    ]


def _statefulset(
    spec: Spec,
    *,
    name: str,
    namespace: str,
    owner: dict[str, Any],
    component: str,
    managed: dict[str, Any],
    container: dict[str, Any],
    mount: str,
    extra_containers: list[dict[str, Any]] | None = None,
    parallel: bool = False,
) -> Manifest:
    container = {"name": component, "image": managed["image"], "imagePullPolicy": "IfNotPresent", **container}
    container.setdefault("volumeMounts", []).append({"name": "data", "mountPath": mount})
    res = _resources(managed)
    if res:
        container["resources"] = res
    pod = _placement({"containers": [container, *(extra_containers or [])]}, managed)
    pvc_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": managed["storage"]["size"]}}}
    if managed["storage"].get("storageClassName"):
        pvc_spec["storageClassName"] = managed["storage"]["storageClassName"]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, namespace, component, owner),
        "spec": {
            "replicas": managed["replicas"],
            "serviceName": headless_name(name, component),
            "podManagementPolicy": "Parallel" if parallel else "OrderedReady",
            "selector": {"matchLabels": selector(name, component)},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": spec["pvcRetention"], "whenScaled": "Retain"},
            "template": {"metadata": {"labels": labels(name, component)}, "spec": pod},
            "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": labels(name, component)}, "spec": pvc_spec}],
        },
    }


def _exec_probe(cmd: str, period: int = 10) -> dict[str, Any]:
    return {"exec": {"command": ["sh", "-c", cmd]}, "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": 3}


def _zookeeper(spec: Spec, *, name: str, namespace: str, owner: dict[str, Any]) -> list[Manifest]:
    m = spec["zookeeper"]["managed"]
    hl = headless_name(name, "zookeeper")
    servers = " ".join(
        f"server.{i + 1}={child_name(name, 'zookeeper')}-{i}.{hl}.{namespace}.svc:2888:3888;2181" for i in range(m["replicas"])
    )
    container = {
        # Each pod its own id: myid = ordinal + 1, taken from the pod name.
        "command": ["sh", "-c", 'export ZOO_MY_ID=$(( ${HOSTNAME##*-} + 1 )); exec /docker-entrypoint.sh zkServer.sh start-foreground'],
        "env": [
            {"name": "ZOO_SERVERS", "value": servers},
            {"name": "ZOO_STANDALONE_ENABLED", "value": "false"},
            {"name": "ZOO_4LW_COMMANDS_WHITELIST", "value": "ruok,srvr,mntr"},
            {"name": "ZOO_CFG_EXTRA", "value": "quorumListenOnAllIPs=true"},
            {"name": "ZOO_DATA_DIR", "value": "/data"},
        ],
        "ports": [{"name": "client", "containerPort": 2181}, {"name": "peer", "containerPort": 2888}, {"name": "election", "containerPort": 3888}],
        "readinessProbe": _exec_probe("zkServer.sh status"),
        "livenessProbe": {**_exec_probe("zkServer.sh status", 15), "initialDelaySeconds": 30},
    }
    ports = [("client", 2181), ("peer", 2888), ("election", 3888)]
    return [
        _headless(name, namespace, owner, "zookeeper", ports),
        _statefulset(spec, name=name, namespace=namespace, owner=owner, component="zookeeper", managed=m, container=container, mount="/data", parallel=True),
        _pdb(name, namespace, owner, "zookeeper"),
    ]


def _redis(spec: Spec, *, name: str, namespace: str, owner: dict[str, Any]) -> list[Manifest]:
    m = spec["redis"]["managed"]
    primary = _sts_hosts(name, namespace, "redis", 1, 6379)[0].rsplit(":", 1)[0]
    # Persistence on (AOF + snapshots) and never evict: offline queues and sessions are data.
    # Protected mode off explicitly: started without a config file, a stock redis-server only
    # answers loopback (the official image patches that default; Debian's and others do not),
    # and the pods reach Redis over the pod network. Access is the Service's and NetworkPolicy's.
    script = (
        "args='--appendonly yes --save 900 1 --maxmemory-policy noeviction --protected-mode no --dir /data';"
        f' case "$HOSTNAME" in *-0) ;; *) args="$args --replicaof {primary} 6379";; esac;'
        " exec redis-server $args"
    )
    container = {
        "command": ["sh", "-c", script],
        "ports": [{"name": "redis", "containerPort": 6379}],
        "readinessProbe": _exec_probe("redis-cli ping | grep -q PONG", 5),
        "livenessProbe": {**_exec_probe("redis-cli ping", 15), "initialDelaySeconds": 15},
    }
    return [
        _headless(name, namespace, owner, "redis", [("redis", 6379)]),
        _statefulset(spec, name=name, namespace=namespace, owner=owner, component="redis", managed=m, container=container, mount="/data"),
        _pdb(name, namespace, owner, "redis"),
    ]


def _mongodb(spec: Spec, *, name: str, namespace: str, owner: dict[str, Any]) -> list[Manifest]:
    m = spec["mongodb"]["managed"]
    members = ",".join(f"{{_id:{i},host:'{h}'}}" for i, h in enumerate(_sts_hosts(name, namespace, "mongodb", m["replicas"], 27017)))
    initiate = f"rs.initiate({{_id:'rs0',members:[{members}]}})"
    # The replica set is initialised once, from pod 0, when rs.status() says it is not yet.
    init_script = (
        'case "$HOSTNAME" in *-0) ;; *) exec sleep infinity;; esac;'
        " for i in $(seq 1 300); do"
        ' mongosh --quiet --eval "db.adminCommand({ping:1}).ok" >/dev/null 2>&1 && break; sleep 2; done;'
        f' mongosh --quiet --eval "try {{ rs.status().ok }} catch (e) {{ {initiate} }}";'
        " exec sleep infinity"
    )
    container = {
        "command": ["mongod", "--replSet", "rs0", "--bind_ip_all", "--dbpath", "/data/db"],
        "ports": [{"name": "mongodb", "containerPort": 27017}],
        "readinessProbe": _exec_probe("mongosh --quiet --eval 'db.adminCommand({ping:1}).ok' | grep -q 1"),
        "livenessProbe": {**_exec_probe("mongosh --quiet --eval 'db.adminCommand({ping:1}).ok'", 20), "initialDelaySeconds": 30},
    }
    sidecar = {"name": "rs-init", "image": m["image"], "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", init_script]}
    return [
        _headless(name, namespace, owner, "mongodb", [("mongodb", 27017)]),
        _statefulset(
            spec, name=name, namespace=namespace, owner=owner, component="mongodb", managed=m, container=container, mount="/data/db", extra_containers=[sidecar], parallel=True
        ),
        _pdb(name, namespace, owner, "mongodb"),
    ]


def desired_children(spec: Spec, *, name: str, namespace: str, owner: dict[str, Any], access_replicas: int, ws_replicas: int) -> list[Manifest]:
    """Every child object of one ImCluster (except the key Secret), in apply order."""
    kw = dict(name=name, namespace=namespace, owner=owner)
    out: list[Manifest] = [config_map(spec, **kw)]
    if "managed" in spec["zookeeper"]:
        out += _zookeeper(spec, **kw)
    if "managed" in spec["redis"]:
        out += _redis(spec, **kw)
    if "managed" in spec["mongodb"]:
        out += _mongodb(spec, **kw)
    route = spec["route"]
    route_dep = _deployment(
        spec, **kw, component="route", image=_image(spec, "route"), command=["imstack", "route"], replicas=route["replicas"], comp=route,
        ports=[("http", ROUTE_HTTP), ("grpc", ROUTE_GRPC)], health_port=ROUTE_HTTP, keys=True,
    )
    route_dep["spec"]["template"]["spec"]["containers"][0]["env"] += timeline_env(spec)
    out += [
        route_dep,
        _service(
            name, namespace, owner, "route",
            [_client_port("http", ROUTE_HTTP, route["service"]), {"name": "grpc", "port": ROUTE_GRPC, "targetPort": ROUTE_GRPC}],
            svc_type=route["service"]["type"], annotations=route["service"].get("annotations"),
        ),
        metrics_service(name, namespace, owner, "route", ROUTE_HTTP),
        _pdb(name, namespace, owner, "route"),
    ]
    d = spec["dispatch"]
    dispatch_dep = _deployment(
        spec, **kw, component="dispatch", image=_image(spec, "dispatch"), command=["imstack", "dispatch"], replicas=d["replicas"], comp=d,
        ports=[("link", DISPATCH_PORT), ("health", HEALTH_PORT)], health_port=HEALTH_PORT,
    )
    dispatch_dep["spec"]["template"]["spec"]["containers"][0]["env"] += dispatch_env(spec)
    out += [
        dispatch_dep,
        metrics_service(name, namespace, owner, "dispatch", HEALTH_PORT),
        _pdb(name, namespace, owner, "dispatch"),
    ]
    out += _access(spec, **kw, ws=False, replicas=access_replicas)
    if spec["wsAccess"]["enabled"]:
        out += _access(spec, **kw, ws=True, replicas=ws_replicas)
    return out
