"""The operator image at work, with the chart's identity: the chart is installed into a real
kube-apiserver (RBAC authorizer on), the operator container runs on a token of the chart's
ServiceAccount with a read-only root file system, and reconciles the chart's example ImCluster.

So the least-privilege RBAC is shown to be enough for what the operator really does (no 403),
and the image's entrypoint, kopf liveness endpoint and kubeconfig login work. No kubelet runs
here: the children are API objects; nothing starts.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import pytest
import yaml

from tests.servers.kube import free_port, start_control_plane

from .kubeapply import KubeApi
from .tools import CHART, helm, run

NS = "imstack-system"


@pytest.fixture
def cluster(tmp_path):
    cp = start_control_plane(tmp_path / "kube")
    try:
        yield cp, KubeApi(cp.url, cp.token, cp.ca_file)
    finally:
        cp.stop()


def service_account_kubeconfig(api: KubeApi, cp, path) -> None:
    req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    res = api.request("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/im-stack/token", json.dumps(req).encode(),
                      "application/json")
    assert res.status == 201, res.body
    ca = base64.b64encode(open(cp.ca_file, "rb").read()).decode()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "t", "cluster": {"server": cp.url, "certificate-authority-data": ca}}],
        "users": [{"name": "sa", "user": {"token": res.body["status"]["token"]}}],
        "contexts": [{"name": "sa", "context": {"cluster": "t", "user": "sa", "namespace": NS}}],
    }))
    path.chmod(0o644)  # read by the image's non-root user


def names(api: KubeApi, path: str) -> set[str]:
    res = api.request("GET", path)
    assert res.status == 200, res.body
    return {item["metadata"]["name"] for item in res.body["items"]}


@pytest.mark.timeout(1800)
def test_operator_image_reconciles_with_the_charts_rbac(docker, images, cluster, tmp_path):
    cp, api = cluster
    # The chart's own operator Deployment is scaled to 0: there is no kubelet to run it; the
    # same image runs under docker instead, as that Deployment's ServiceAccount.
    helm("install", "im-stack", str(CHART), "--kubeconfig", str(cp.kubeconfig), "--namespace", NS,
         "--create-namespace", "--values", str(CHART / "ci" / "kind-values.yaml"), "--set", "operator.replicas=0")
    kubeconfig = tmp_path / "sa-kubeconfig"
    service_account_kubeconfig(api, cp, kubeconfig)
    health = free_port()
    name = f"imstack-test-operator-{health}"
    run([docker, "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
         "-v", f"{kubeconfig}:/kube/config:ro", "-e", "KUBECONFIG=/kube/config", images["operator"],
         f"--liveness=http://127.0.0.1:{health}/healthz", "--interval=2"])
    try:
        want_deployments = {f"im-demo-{c}" for c in ("access", "ws-access", "dispatch", "route")}
        want_statefulsets = {f"im-demo-{c}" for c in ("zookeeper", "redis", "mongodb")}
        deadline = time.monotonic() + 90
        while True:
            state = json.loads(run([docker, "inspect", "-f", "{{json .State}}", name]).stdout)
            logs = run([docker, "logs", name], check=False)
            out = logs.stdout + logs.stderr
            assert state["Running"], f"operator exited ({state['ExitCode']}):\n{out[-3000:]}"
            done = (want_deployments <= names(api, f"/apis/apps/v1/namespaces/{NS}/deployments")
                    and want_statefulsets <= names(api, f"/apis/apps/v1/namespaces/{NS}/statefulsets")
                    and "im-demo-keys" in names(api, f"/api/v1/namespaces/{NS}/secrets"))
            if done:
                break
            assert time.monotonic() < deadline, f"children not created:\n{out[-3000:]}"
            time.sleep(1)
        # The workloads run the images `make images` builds, as kind has them (never pulled).
        for component, image in (("access", "access"), ("ws-access", "access"), ("dispatch", "dispatch"),
                                 ("route", "route")):
            dep = api.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/im-demo-{component}").body
            (container,) = [c for c in dep["spec"]["template"]["spec"]["containers"]]
            assert container["image"] == images[image], (component, container["image"])
            assert container["imagePullPolicy"] == "Never"
        imc = api.request("GET", f"/apis/imstack.io/v1alpha1/namespaces/{NS}/imclusters/im-demo").body
        conditions = {c["type"]: c for c in imc.get("status", {}).get("conditions", [])}
        assert conditions.get("Degraded", {}).get("status") == "False", conditions
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as resp:
            assert resp.status == 200  # kopf's liveness endpoint, as the chart's probe sees it
        # The chart's memory limit leaves room for what the operator really uses.
        usage = run([docker, "stats", "--no-stream", "--format", "{{.MemUsage}}", name]).stdout.split("/")[0].strip()
        used_mib = float(usage[:-3]) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[usage[-3:]]
        limit_mib = int(yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["resources"]["limits"]["memory"][:-2])
        print(f"operator memory: {used_mib:.0f} MiB of the chart's {limit_mib} MiB limit")
        assert used_mib < 0.75 * limit_mib, f"{used_mib:.0f} MiB used, limit {limit_mib} MiB"
        out = run([docker, "logs", name], check=False)
        text = out.stdout + out.stderr
        assert "Forbidden" not in text and " 403" not in text, text[-3000:]
    finally:
        run([docker, "rm", "-f", name], check=False)
