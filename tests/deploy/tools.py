"""Where the deploy tests find their tools, and small helpers to run them.

helm and actionlint are built from the Go module proxy into $IMSTACK_TOOLS/bin by
scripts/setup.d/45-helm-actionlint.sh; docker is Debian's, started by scripts/setup.d/50-docker.sh.
A missing tool raises with the name of the setup step, so the run fails loudly (never skips).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "im-stack"
TOOLS_BIN = Path(os.environ.get("IMSTACK_TOOLS", Path.home() / ".cache/imstack/tools")) / "bin"
HELM_HINT = "run `bash scripts/setup.d/45-helm-actionlint.sh` (or `make setup-test-deps`)"
DOCKER_HINT = "run `bash scripts/setup.d/50-docker.sh` (or `make setup-test-deps`)"


def tool(name: str, hint: str) -> str:
    path = TOOLS_BIN / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"{name} not found in {TOOLS_BIN} nor on PATH: {hint}")


def run(cmd: list[str], *, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
            f"stderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([tool("helm", HELM_HINT), *args], check=check)


def render(*values_files: Path, sets: list[str] = (), namespace: str = "imstack-system") -> list[dict]:
    """`helm template --include-crds` of the chart; the rendered objects, in order."""
    args = ["template", "im-stack", str(CHART), "--namespace", namespace, "--include-crds"]
    for f in values_files:
        args += ["--values", str(f)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]
