"""The users' kind CI workflow: actionlint-clean, and wired to this repository's files."""

from __future__ import annotations

import shutil

import yaml

from .tools import HELM_HINT, REPO, by_kind, render, run, tool

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def test_workflows_pass_actionlint():
    assert WORKFLOWS, "no workflow in .github/workflows"
    assert shutil.which("shellcheck"), f"shellcheck (actionlint checks run: scripts with it) is missing: {HELM_HINT}"
    proc = run([tool("actionlint", HELM_HINT), "-no-color", *map(str, WORKFLOWS)], check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kind_workflow_builds_loads_installs_waits_and_chats():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "kind-e2e.yml").read_text())
    steps = wf["jobs"]["kind"]["steps"]
    text = "\n".join(str(s.get("run", "")) + str(s.get("with", "")) for s in steps)
    order = ["make images", "kind-config.yaml", "kind load docker-image", "helm install im-stack charts/im-stack",
             "--for=condition=Ready", "tests.deploy.chat_check"]
    positions = [text.find(marker) for marker in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions))
    assert positions == sorted(positions), "steps out of order"
    # The names the workflow uses are the ones the chart and the operator produce.
    (imc,) = by_kind(render(REPO / "charts/im-stack/ci/kind-values.yaml"), "ImCluster")
    name = imc["metadata"]["name"]
    assert f"imcluster/{name}" in text and f"secret {name}-keys" in text
    # The chat check reaches route and access through the NodePorts kind-config.yaml maps.
    cfg = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    host_port = {m["containerPort"]: m["hostPort"] for n in cfg["nodes"] for m in n.get("extraPortMappings", [])}
    route_port = host_port[imc["spec"]["route"]["service"]["nodePort"]]
    access_port = host_port[imc["spec"]["access"]["service"]["nodePort"]]
    assert f"--route-url http://127.0.0.1:{route_port}" in text and f"--access 127.0.0.1:{access_port}" in text
    assert "port-forward" not in text
    for image in ("access", "dispatch", "route", "operator"):
        assert (REPO / "images" / image / "Dockerfile").is_file()
    assert "for name in access dispatch route operator" in text


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The lint is real: an unknown expression context and an unquoted shell variable fail it."""
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  j:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ nosuch.context }}\n      - run: cp $SRC $DST\n"
    )
    proc = run([tool("actionlint", HELM_HINT), "-no-color", str(bad)], check=False, cwd=tmp_path)
    assert proc.returncode != 0
    assert "nosuch" in proc.stdout and "SC2086" in proc.stdout, proc.stdout
