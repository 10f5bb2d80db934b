"""ImCluster spec: defaults and the checks the schema cannot make.

`normalize(spec)` applies the CRD schema's own defaults (the same data the API server uses, from
crd.py), so the manifests do not depend on whether the server defaulted the object.
`problems(spec)` returns what is wrong with a spec in words; the operator reports them as the
`Degraded` condition with reason `InvalidSpec` and does not touch the children until fixed.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .crd import WEBHOOK_URL_PATTERN, apply_defaults, spec_schema

Spec = dict[str, Any]


def normalize(spec: Spec | None) -> Spec:
    """A deep copy of `spec` with every schema default filled in."""
    return apply_defaults(spec_schema(), copy.deepcopy(dict(spec or {})))


def problems(spec: Spec) -> list[str]:
    """Semantic errors in a normalized spec (the CEL rules again, for servers that skip them)."""
    out: list[str] = []
    for key in ("access", "wsAccess"):
        a = spec[key]
        if a["minReplicas"] > a["maxReplicas"]:
            out.append(f"spec.{key}: minReplicas ({a['minReplicas']}) exceeds maxReplicas ({a['maxReplicas']})")
    for key in ("zookeeper", "redis", "mongodb"):
        b = spec[key]
        if ("managed" in b) == ("external" in b):
            out.append(f"spec.{key}: set exactly one of managed or external")
        elif "external" in b:
            e = b["external"]
            if ("connectionString" in e) == ("secretRef" in e):
                out.append(f"spec.{key}.external: set exactly one of connectionString or secretRef")
    zk = spec["zookeeper"].get("managed")
    if zk and zk["replicas"] % 2 == 0:
        out.append(f"spec.zookeeper.managed.replicas: a quorum needs an odd number, got {zk['replicas']}")
    hook = spec.get("pushWebhook")
    if hook is not None and not re.match(WEBHOOK_URL_PATTERN, str(hook.get("url", ""))):
        out.append(f"spec.pushWebhook.url: an http:// or https:// URL is needed, got {hook.get('url', '')!r}")
    return out


def zk_root(spec: Spec, *, name: str, namespace: str) -> str:
    return spec.get("zkRoot") or f"/imstack/{namespace}-{name}"
