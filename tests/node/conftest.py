"""Fixtures of the node tests: a real one-node Kubernetes cluster, the chart installed on it, and
an example ImCluster whose every pod really runs (tests/servers/node.py, tests/node/images.py).

One node and one stack per session: building the images, starting the node and bringing the
ImCluster to Ready take minutes, and the tests are steps of one story (ready, chat, autoscale,
upgrade, faults) in file order. Figures the tests measure are collected in `FIGURES`, printed at
the end of the run and written to build/node-figures.json (docs/operator.md quotes them).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.node.images import build_node_images, project_version
from tests.polling import poll
from tests.servers.kube import tools_bin
from tests.servers.node import KubeNode, start_node

REPO = Path(__file__).resolve().parents[2]
VALUES = Path(__file__).resolve().parent / "node-values.yaml"
NAMESPACE = "imstack-system"
CLUSTER = "im-node"
ROUTE_NODE_PORT = 30080
FIGURES: dict[str, Any] = {}


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 1.0, on_timeout: Callable[[], str] | None = None) -> Any:
    return poll(check, timeout=timeout, what=what, interval=interval, detail=on_timeout)


@dataclass
class Stack:
    """The ImCluster of the chart's example, as the tests see it from the host."""

    node: KubeNode
    namespace: str = NAMESPACE
    name: str = CLUSTER
    admin_key: str = ""
    route_url: str = ""
    status_log: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def imcluster(self) -> dict[str, Any]:
        status, body = self.node.api("GET", f"/apis/imstack.io/v1alpha1/namespaces/{self.namespace}/imclusters/{self.name}")
        assert status == 200, f"get ImCluster: {status} {body}"
        return body

    def conditions(self) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in self.imcluster().get("status", {}).get("conditions", [])}

    def pods(self, component: str | None = None) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name}"
        if component:
            selector += f",app.kubernetes.io/component={component}"
        return self.node.pods(self.namespace, selector)

    def ready_pods(self, component: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(component) if _ready(p) and not p["metadata"].get("deletionTimestamp")]

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        status, body = self.node.api("GET", f"/api/v1/namespaces/{self.namespace}/events")
        assert status == 200
        items = body["items"]
        return [e for e in items if reason is None or e.get("reason") == reason]

    def describe(self) -> str:
        return self.node.describe_pods(self.namespace)

    def iplist(self) -> dict[str, list[dict[str, Any]]]:
        import urllib.request

        with urllib.request.urlopen(f"{self.route_url}/v1/iplist", timeout=5) as r:  # noqa: S310
            return json.loads(r.read())

    def token(self, uid: str) -> str:
        import urllib.request

        req = urllib.request.Request(f"{self.route_url}/v1/tokens", data=json.dumps({"uid": uid}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return json.loads(r.read())["token"]

    def create_group(self, group_id: str, members: list[str]) -> None:
        import urllib.request

        req = urllib.request.Request(f"{self.route_url}/v1/groups", data=json.dumps({"group_id": group_id, "members": members}).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            assert r.status in (200, 201)

    def wait_ready(self, *, timeout: float, what: str = "ImCluster Ready") -> float:
        """Seconds until the Ready condition is True for the current generation."""
        start = time.monotonic()

        def ready() -> bool:
            obj = self.imcluster()
            conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            self.status_log.append((time.monotonic(), {t: c["status"] for t, c in conds.items()}))
            ok = conds.get("Ready", {}).get("status") == "True"
            return ok and conds["Ready"].get("observedGeneration") == obj["metadata"]["generation"]

        wait_until(ready, timeout=timeout, what=what, interval=1.0, on_timeout=self.describe)
        return time.monotonic() - start


def _ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status", {})
    return st.get("phase") == "Running" and any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", []))


def helm(*args: str, kubeconfig: str, timeout: float = 600) -> str:
    binary = tools_bin() / "helm"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"helm not found at {binary}: run `make setup-test-deps` (scripts/setup.d/45-helm-actionlint.sh)")
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, KUBECONFIG=kubeconfig, HELM_CACHE_HOME="/tmp/imstack-helm-cache",
                                   HELM_CONFIG_HOME="/tmp/imstack-helm-config", HELM_DATA_HOME="/tmp/imstack-helm-data"))
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def node(tmp_path_factory) -> Iterator[KubeNode]:
    start = time.monotonic()
    refs = build_node_images(progress=print)
    FIGURES["images_build_s"] = round(time.monotonic() - start, 1)
    start = time.monotonic()
    n = start_node(tmp_path_factory.mktemp("node"), images=refs)
    FIGURES["node_start_s"] = round(time.monotonic() - start, 1)
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="session")
def stack(node: KubeNode) -> Stack:
    """`helm install` of the chart with tests/node/node-values.yaml; returns once the example
    ImCluster is Ready (every pod Ready, from the kubelet's probes)."""
    s = Stack(node=node)
    start = time.monotonic()
    helm("install", "im-stack", str(REPO / "charts" / "im-stack"), "-n", NAMESPACE, "--create-namespace",
         "-f", str(VALUES), "--set", f"image.tag={project_version()}", "--wait", "--timeout", "5m", kubeconfig=node.kubeconfig)
    FIGURES["helm_install_s"] = round(time.monotonic() - start, 1)
    FIGURES["apply_to_ready_s"] = round(s.wait_ready(timeout=600) + FIGURES["helm_install_s"], 1)
    status, secret = node.api("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{CLUSTER}-keys")
    assert status == 200, secret
    s.admin_key = base64.b64decode(secret["data"]["adminKey"]).decode()
    s.route_url = f"http://{node.net.node_ip}:{ROUTE_NODE_PORT}"
    wait_until(lambda: s.iplist()["tcp"], timeout=60, what="ipList lists an access pod")
    return s


def srvr(host: str, port: int = 2181) -> dict[str, str]:
    """ZooKeeper's `srvr` four-letter word, as a dict of its lines."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"srvr")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return dict(line.split(": ", 1) for line in data.decode().splitlines() if ": " in line)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not FIGURES:
        return
    terminalreporter.write_sep("-", "node figures")
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"{key}: {value}")
    out = REPO / "build" / "node-figures.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(FIGURES, indent=1))
