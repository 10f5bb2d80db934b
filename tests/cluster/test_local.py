"""`imstack cluster up|down` starts the whole topology with its servers and stops all of it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cluster.conftest import ROOT, http_json

pytestmark = pytest.mark.timeout(240)


def test_cluster_up_prints_the_api_and_down_stops_everything(tmp_path):
    state = tmp_path / "cluster"
    cmd = [sys.executable, "-m", "im_runtime.cli", "cluster"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        out = subprocess.run(cmd + ["up", "--dir", str(state), "--http-port", "0", "--tcp-port", "0"],
                             capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
        assert out.returncode == 0, out.stderr + out.stdout
        info = json.loads((state / "cluster.json").read_text())
        assert info["http"] in out.stdout and info["admin_key"] in out.stdout
        status, ips = http_json(f"{info['http']}/v1/iplist")
        assert status == 200 and sorted(e["port"] for e in ips["tcp"]) == sorted(info["tcp"])
        pids = [p["pid"] for p in json.loads((state / "pids.json").read_text())]
        assert len(pids) == 3 + 1 + 2 + 2
    finally:
        down = subprocess.run(cmd + ["down", "--dir", str(state)], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
