"""A small Kubernetes REST layer over the official client's transport.

The operator needs a handful of verbs on a handful of kinds, always as plain dicts: server-side
apply (so a hand edit of a field the operator owns is put back, and fields others own, such as
status, are left alone), get, list by label, delete, and a merge patch. Going through
`ApiClient` keeps the kubeconfig / in-cluster authentication of the official client without its
typed models.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import kubernetes

FIELD_MANAGER = "imstack-operator"

# kind -> (api prefix, plural)
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
}
CHILD_KINDS = ("ConfigMap", "Service", "Deployment", "StatefulSet", "PodDisruptionBudget")


@dataclass
class KubeError(Exception):
    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


def load_client() -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or load_client()

    def _path(self, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = KINDS[kind]
        p = f"{prefix}/namespaces/{namespace}/{plural}"
        if name:
            p += f"/{name}"
        if sub:
            p += f"/{sub}"
        return p

    def request(self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None, content_type: str = "application/json", accept: str = "application/json") -> Any:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": accept}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = body  # the client serializes dicts as JSON (valid YAML for apply patches)
        m, url, h, b, pp = self.client.param_serialize(method, path, header_params=headers, body=data, auth_settings=["BearerToken"])
        resp = self.client.call_api(m, url, header_params=h, body=b, post_params=pp, _request_timeout=30)
        raw = resp.read()
        if resp.status >= 400:
            try:
                err = json.loads(raw)
                raise KubeError(resp.status, err.get("reason", ""), err.get("message", raw.decode(errors="replace")))
            except ValueError:
                raise KubeError(resp.status, "", raw.decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        md = obj["metadata"]
        return self.request(
            "PATCH",
            self._path(obj["kind"], md["namespace"], md["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", self._path(kind, namespace, name))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", self._path(obj["kind"], obj["metadata"]["namespace"]), body=obj)

    def list(self, kind: str, namespace: str, *, selector: dict[str, str]) -> list[dict[str, Any]]:
        sel = ",".join(f"{k}={v}" for k, v in selector.items())
        return self.request("GET", self._path(kind, namespace), query={"labelSelector": sel}).get("items", [])

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", self._path(kind, namespace, name), body={"propagationPolicy": "Background"})
        except KubeError as e:
            if e.status != 404:
                raise

    def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any], *, sub: str | None = None) -> dict[str, Any]:
        return self.request("PATCH", self._path(kind, namespace, name, sub), body=patch, content_type="application/merge-patch+json")
