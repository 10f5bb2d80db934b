"""Fixtures for the operator tests on a real control plane.

One control plane (etcd + kube-apiserver + kube-controller-manager's garbage collector), one
ZooKeeper and one operator process (`python -m im_operator.main`, kopf, reconcile every second)
per session; each test works in its own namespace. There is no kubelet: `play_kubelet()` writes
workload status through the API the way a cluster would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import kubernetes
import pytest

from im_operator import crd
from im_operator.kubeapi import Kube, KubeError
from tests.polling import poll
from tests.servers.kube import ControlPlane, free_port, start_control_plane
from tests.servers.zookeeper import ZooKeeperServer, start_zookeeper

CR_PATH = f"/apis/{crd.GROUP}/{crd.VERSION}/namespaces/{{ns}}/{crd.PLURAL}"


def wait_for(check: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition", interval: float = 0.2) -> Any:
    """Poll `check` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    return poll(check, timeout=timeout, what=what, interval=interval, tolerate=(KubeError, KeyError, TypeError, IndexError))


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory) -> Iterator[ControlPlane]:
    cp = start_control_plane(tmp_path_factory.mktemp("kube"), controller_manager=True)
    try:
        yield cp
    finally:
        cp.stop()


def install_crd(k: Kube) -> None:
    """Create the ImCluster CRD (crds/imcluster.yaml's content) and wait until it is served."""
    try:
        k.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=crd.crd())
    except KubeError as e:
        if e.status != 409:
            raise

    def established() -> bool:
        got = k.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.PLURAL}.{crd.GROUP}")
        return any(c["type"] == "Established" and c["status"] == "True" for c in got.get("status", {}).get("conditions", []))

    wait_for(established, what="ImCluster CRD established")
    wait_for(lambda: k.request("GET", f"/apis/{crd.GROUP}/{crd.VERSION}/{crd.PLURAL}") is not None, what="ImCluster API served")


def kube_for(cp: ControlPlane) -> Kube:
    return Kube(kubernetes.config.new_client_from_config(config_file=cp.kubeconfig))


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    k = kube_for(control_plane)
    install_crd(k)
    return k


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory) -> Iterator[ZooKeeperServer]:
    zk = start_zookeeper(tmp_path_factory.mktemp("zk"))
    try:
        yield zk
    finally:
        zk.stop()


class OperatorRunner:
    """The operator as a real process (`python -m im_operator.main`), restartable by tests."""

    def __init__(self, kubeconfig: str, log_dir: Path) -> None:
        self.kubeconfig, self.log_dir = kubeconfig, log_dir
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.metrics_port = 0

    def start(self) -> None:
        self.runs += 1
        log_path = self.log_dir / f"operator-{self.runs}.log"
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "IMSTACK_OPERATOR_INTERVAL": "1"}
        self.metrics_port = free_port()
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "im_operator.main", "--interval", "1", "--liveness", "",
                 "--metrics-port", str(self.metrics_port), "--metrics-host", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited at start: {log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()


@pytest.fixture(scope="session")
def operator_process(control_plane: ControlPlane, kube: Kube, tmp_path_factory) -> Iterator[OperatorRunner]:
    runner = OperatorRunner(control_plane.kubeconfig, Path(tmp_path_factory.mktemp("operator")))
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()
        if os.environ.get("IMSTACK_SHOW_OPERATOR_LOG"):
            for f in sorted(runner.log_dir.glob("*.log")):
                print(f.read_text()[-20000:])


@pytest.fixture
def namespace(kube: Kube, operator_process: OperatorRunner) -> Iterator[str]:
    operator_process.ensure_running()
    ns = make_namespace(kube)
    yield ns
    # No namespace controller runs here, so delete this test's ImClusters explicitly: the
    # operator must not keep reconciling them for the rest of the session.
    for item in kube.request("GET", CR_PATH.format(ns=ns)).get("items", []):
        delete_cluster(kube, ns, item["metadata"]["name"])


def make_namespace(kube: Kube) -> str:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    kube.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    return ns


def create_cluster(kube: Kube, ns: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": crd.KIND, "metadata": {"name": name, "namespace": ns}, "spec": spec}
    return kube.request("POST", CR_PATH.format(ns=ns), body=body)


def get_cluster(kube: Kube, ns: str, name: str) -> dict:
    return kube.request("GET", CR_PATH.format(ns=ns) + f"/{name}")


def patch_cluster(kube: Kube, ns: str, name: str, patch: dict) -> dict:
    return kube.request("PATCH", CR_PATH.format(ns=ns) + f"/{name}", body=patch, content_type="application/merge-patch+json")


def delete_cluster(kube: Kube, ns: str, name: str) -> None:
    kube.request("DELETE", CR_PATH.format(ns=ns) + f"/{name}", body={"propagationPolicy": "Background"})


def condition(cluster: dict, type_: str) -> dict | None:
    return next((c for c in (cluster.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def play_kubelet(kube: Kube, ns: str, name: str, *, ready: bool = True) -> int:
    """Write each workload's status as a cluster would once its pods are (or are not) ready."""
    sel = {"app.kubernetes.io/instance": name}
    n = 0
    for kind in ("Deployment", "StatefulSet"):
        for obj in kube.list(kind, ns, selector=sel):
            replicas = obj["spec"].get("replicas", 1)
            st = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": replicas,
                "readyReplicas": replicas if ready else 0,
                "updatedReplicas": replicas,
            }
            if kind == "Deployment":
                st["availableReplicas"] = replicas if ready else 0
            else:
                st["currentReplicas"] = replicas
                st["availableReplicas"] = replicas if ready else 0
            kube.merge_patch(kind, ns, obj["metadata"]["name"], {"status": st}, sub="status")
            n += 1
    return n


def events(kube: Kube, ns: str) -> list[dict]:
    return kube.request("GET", f"/api/v1/namespaces/{ns}/events").get("items", [])
