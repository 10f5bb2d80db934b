"""The ImCluster CustomResourceDefinition, built as data.

The schema is written once here and rendered to `crds/imcluster.yaml` (`python -m
im_operator.crd > crds/imcluster.yaml`; a unit test keeps the two equal). Defaults live in the
schema so the API server fills them in and `kubectl get -o yaml` shows what the operator will
do; rules the schema types cannot say (min <= max, managed xor external) are CEL validations, so
a bad spec is refused at apply time. What only the operator can check (a Secret that does not
exist) is reported in status as Degraded.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

GROUP = "imstack.io"
VERSION = "v1alpha1"
PLURAL = "imclusters"
KIND = "ImCluster"

Schema = dict[str, Any]


def _int(default: int | None = None, *, minimum: int | None = None, maximum: int | None = None, desc: str = "") -> Schema:
    s: Schema = {"type": "integer"}
    if default is not None:
        s["default"] = default
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if desc:
        s["description"] = desc
    return s


def _str(default: str | None = None, *, enum: list[str] | None = None, desc: str = "", **extra: Any) -> Schema:
    s: Schema = {"type": "string"}
    if default is not None:
        s["default"] = default
    if enum:
        s["enum"] = enum
    if desc:
        s["description"] = desc
    s.update(extra)
    return s


def _obj(props: Schema, *, desc: str = "", default: Any = None, required: list[str] | None = None, rules: list[tuple[str, str]] | None = None) -> Schema:
    s: Schema = {"type": "object", "properties": props}
    if desc:
        s["description"] = desc
    if default is not None:
        s["default"] = default
    if required:
        s["required"] = required
    if rules:
        s["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    return s


QUANTITY_MAP: Schema = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
    },
}

RESOURCES = _obj(
    {"requests": QUANTITY_MAP, "limits": QUANTITY_MAP},
    desc="Container resources (requests/limits), as in a Pod spec.",
)
NODE_SELECTOR: Schema = {"type": "object", "additionalProperties": {"type": "string"}, "description": "Node labels the pods must match."}
TOLERATIONS: Schema = {
    "type": "array",
    "description": "Pod tolerations, as in a Pod spec.",
    "items": _obj(
        {
            "key": _str(),
            "operator": _str(enum=["Exists", "Equal"]),
            "value": _str(),
            "effect": _str(enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
            "tolerationSeconds": _int(),
        }
    ),
}


def _placement() -> Schema:
    return {"resources": RESOURCES, "nodeSelector": NODE_SELECTOR, "tolerations": TOLERATIONS}


SERVICE_TYPES = ["ClusterIP", "NodePort", "LoadBalancer"]
# http(s) and a host: the only URLs aiohttp (dispatch/offline_push.py) can POST to.
WEBHOOK_URL_PATTERN = "^https?://[^/\\s]+\\S*$"


def _access(kind: str, port: int) -> Schema:
    props: Schema = {
        "minReplicas": _int(2 if kind == "tcp" else 1, minimum=1, desc="Fewest access pods, whatever the load."),
        "maxReplicas": _int(10, minimum=1, desc="Most access pods the autoscaler may run."),
        "targetConnectionsPerPod": _int(10000, minimum=1, desc="Client connections one pod should hold; desired = ceil(total / target)."),
        "scaleDownStabilizationSeconds": _int(300, minimum=0, desc="A scale-down happens only if every recommendation in this window was lower."),
        "drainRatePerSecond": _int(200, minimum=1, desc="KICKs per second a draining pod sends (reconnect storms stay bounded)."),
        "drainTimeoutSeconds": _int(120, minimum=1, desc="Longest wait for a draining pod to empty, on scale-down and on SIGTERM."),
        "service": _obj(
            {
                "type": _str("LoadBalancer", enum=SERVICE_TYPES),
                "port": _int(port, minimum=1, maximum=65535),
                "nodePort": _int(minimum=30000, maximum=32767),
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            default={},
            desc="The client-facing Service.",
        ),
        "tlsSecretName": _str(desc="kubernetes.io/tls Secret mounted at /etc/imstack/tls; clients then speak TLS."),
        **_placement(),
    }
    if kind == "ws":
        props = {"enabled": {"type": "boolean", "default": True, "description": "Run WebSocket access pods."}, **props}
    return _obj(
        props,
        default={},
        desc=f"{'WebSocket' if kind == 'ws' else 'TCP'} access pods (`imstack access{' --ws' if kind == 'ws' else ''}`).",
        rules=[("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")],
    )


def _backing(name: str, *, replicas: int, size: str, image: str, desc: str, url_hint: str) -> Schema:
    managed = _obj(
        {
            "replicas": _int(replicas, minimum=1, maximum=7),
            "image": _str(image, desc=f"{name} image."),
            "storage": _obj(
                {"size": _str(size, desc="PVC size per pod."), "storageClassName": _str(desc="Empty: the cluster default.")},
                default={},
            ),
            **_placement(),
        },
        desc=f"Run {name} as a StatefulSet owned by the ImCluster.",
    )
    if name == "ZooKeeper":
        managed["x-kubernetes-validations"] = [{"rule": "self.replicas % 2 == 1", "message": "a ZooKeeper quorum needs an odd number of replicas"}]
    external = _obj(
        {
            "connectionString": _str(desc=f"Address of an existing {name} ({url_hint})."),
            "secretRef": _obj(
                {"name": _str(), "key": _str("connectionString")},
                required=["name"],
                desc="Read the connection string from this Secret key instead.",
            ),
        },
        desc=f"Use an existing {name}.",
        rules=[("has(self.connectionString) != has(self.secretRef)", "set exactly one of connectionString or secretRef")],
    )
    return _obj(
        {"managed": managed, "external": external},
        default={"managed": {}},
        desc=desc,
        rules=[("has(self.managed) != has(self.external)", "set exactly one of managed or external")],
    )


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Fill in `value` from the schema's defaults, nested ones included (structural defaulting)."""
    if schema.get("type") == "object" and isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif schema.get("type") == "array" and isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


def _expand_defaults(schema: Schema) -> Schema:
    """Make every object default complete: the API server checks defaults against CEL rules
    as written, before filling nested defaults into them."""
    for sub in schema.get("properties", {}).values():
        _expand_defaults(sub)
    if isinstance(schema.get("items"), dict):
        _expand_defaults(schema["items"])
    if isinstance(schema.get("default"), dict):
        schema["default"] = apply_defaults(schema, copy.deepcopy(schema["default"]))
    return schema


def spec_schema() -> Schema:
    return _expand_defaults(_spec_schema())


def _spec_schema() -> Schema:
    return _obj(
        {
            "image": _obj(
                {
                    "repository": _str("imstack", desc="Prefix of the images: <repository>/access, /dispatch, /route."),
                    "tag": _str("0.1.0"),
                    "pullPolicy": _str("IfNotPresent", enum=["Always", "IfNotPresent", "Never"]),
                    "pullSecrets": {"type": "array", "items": {"type": "string"}},
                },
                default={},
            ),
            "zkRoot": _str(desc="Root znode of this cluster; default /imstack/<namespace>-<name>.", pattern="^/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"),
            "pvcRetention": _str("Retain", enum=["Retain", "Delete"], desc="What happens to managed PVCs when the ImCluster (or a StatefulSet) is deleted."),
            "access": _access("tcp", 9000),
            "wsAccess": _access("ws", 9001),
            "dispatch": _obj({"replicas": _int(2, minimum=1), **_placement()}, default={}, desc="Dispatch pods."),
            "route": _obj(
                {
                    "replicas": _int(2, minimum=1),
                    "service": _obj(
                        {
                            "type": _str("ClusterIP", enum=SERVICE_TYPES),
                            "port": _int(8080, minimum=1, maximum=65535),
                            "nodePort": _int(minimum=30000, maximum=32767, desc="Node port of the HTTP API (type NodePort or LoadBalancer)."),
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                        default={},
                        desc="The Service of the HTTP API (and of gRPC, which stays in the cluster).",
                    ),
                    **_placement(),
                },
                default={},
                desc="Route pods (HTTP API 8080, gRPC 50051).",
            ),
            "zookeeper": _backing("ZooKeeper", replicas=3, size="1Gi", image="zookeeper:3.9", desc="ZooKeeper (discovery, connection counts, drains).", url_hint="host:port,host:port"),
            "redis": _backing("Redis", replicas=1, size="1Gi", image="redis:7.2", desc="Redis (sessions, sequences, offline queues).", url_hint="redis://host:6379/0"),
            "mongodb": _backing("MongoDB", replicas=1, size="5Gi", image="mongo:7.0", desc="MongoDB (message history).", url_hint="mongodb://host:27017/?replicaSet=rs0"),
            "pushWebhook": _obj(
                {
                    "url": _str(desc="Where dispatch POSTs one JSON call per message whose receivers have no connected device (IMSTACK_PUSH_WEBHOOK_URL).", pattern=WEBHOOK_URL_PATTERN),
                    "preview": {"type": "boolean", "default": True, "description": "Put the start of text messages in the calls (IMSTACK_PUSH_WEBHOOK_PREVIEW); false leaves message text out."},
                    "tokenSecretRef": _obj(
                        {"name": _str(), "key": _str("token")},
                        required=["name"],
                        desc="Secret key whose value is sent as `Authorization: Bearer <token>` (IMSTACK_PUSH_WEBHOOK_TOKEN).",
                    ),
                },
                required=["url"],
                desc="Offline push webhook (docs/protocol.md, \"Offline push webhook\"): the gateway a team runs in front of APNs / FCM. Absent: off.",
            ),
            "timeline": _obj(
                {
                    "retentionSeconds": _int(7 * 24 * 3600, minimum=60, desc="Longest a timeline entry, and a device unseen, is kept (IMSTACK_TIMELINE_RETENTION)."),
                    "maxDevices": _int(16, minimum=1, desc="Devices kept per user; past it the least recently seen leaves (IMSTACK_MAX_DEVICES)."),
                },
                default={},
                desc="S18 timelines in Redis, one per user with a cursor per device (docs/storage.md).",
            ),
            "recallWindowSeconds": _int(120, minimum=0, desc="How long after sending a message its sender may recall it (IMSTACK_RECALL_WINDOW); 0 refuses every recall."),
        },
        desc="Desired state of one IM stack.",
    )


def crd() -> Schema:
    cond = "@.type=='{}'"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "imcluster", "kind": KIND, "shortNames": ["imc"], "listKind": "ImClusterList"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(" + cond.format("Ready") + ")].status"},
                        {"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(" + cond.format("Ready") + ")].reason"},
                        {"name": "Access", "type": "integer", "jsonPath": ".status.components.access.readyReplicas"},
                        {"name": "Desired", "type": "integer", "jsonPath": ".status.autoscaling.desiredReplicas"},
                        {"name": "Connections", "type": "integer", "jsonPath": ".status.connections"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "An IM stack: access, WebSocket access, dispatch, route, and their ZooKeeper, Redis and MongoDB.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {**spec_schema(), "default": {}},
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    import yaml

    header = "# Generated by `python -m im_operator.crd`; edit operator/im_operator/crd.py instead.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
