"""Server-side apply of rendered manifests to a real kube-apiserver, over plain HTTPS.

The chart tests send every object `helm template` renders as an apply patch with
`dryRun=All&fieldValidation=Strict`: the API server runs defaulting, schema validation (OpenAPI,
CRD schemas and CEL rules) and admission on it and stores nothing. The resource path of a
kind comes from the server's discovery documents, so a kind the server does not know fails.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass
class ApplyResult:
    status: int
    body: dict


class KubeApi:
    def __init__(self, url: str, token: str, ca_file: str) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> ApplyResult:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                return ApplyResult(resp.status, json.loads(resp.read() or b"{}"))
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return ApplyResult(err.code, json.loads(raw))
            except ValueError:
                return ApplyResult(err.code, {"message": raw.decode(errors="replace")})

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(collection path prefix, namespaced) of a kind, from discovery (not cached on a miss)."""
        key = (api_version, kind)
        if key not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            found = self.request("GET", base)
            assert found.status == 200, f"discovery of {api_version} failed: {found.status} {found.body}"
            for res in found.body.get("resources", []):
                if res["kind"] == kind and "/" not in res["name"]:
                    self._resources[key] = (f"{base}/{{ns}}{res['name']}", res["namespaced"])
                    break
            else:
                raise AssertionError(f"the API server does not serve {kind} in {api_version}")
        return self._resources[key]

    def path(self, obj: dict) -> str:
        prefix, namespaced = self._resource(obj["apiVersion"], obj["kind"])
        ns = f"namespaces/{obj['metadata']['namespace']}/" if namespaced else ""
        if namespaced:
            assert obj["metadata"].get("namespace"), f"{obj['kind']} {obj['metadata']['name']} has no namespace"
        return prefix.replace("{ns}", ns) + "/" + obj["metadata"]["name"]

    def apply(self, obj: dict, *, dry_run: bool) -> ApplyResult:
        query = "fieldManager=imstack-chart-test&force=true&fieldValidation=Strict"
        if dry_run:
            query += "&dryRun=All"
        return self.request("PATCH", f"{self.path(obj)}?{query}", json.dumps(obj).encode(),
                            "application/apply-patch+yaml")

    def get(self, obj: dict) -> ApplyResult:
        return self.request("GET", self.path(obj))
