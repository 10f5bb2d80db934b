"""The operator's own distribution (operator/pyproject.toml, what the operator image installs)
stays in step with the top-level project (what developers install with `pip install -e
.[operator]`), and declares every package im_operator imports.

The operator image installs nothing else: an import of a package missing here (im_runtime,
say) would pass the in-venv operator tests and fail only in the image.
"""

from __future__ import annotations

import ast
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .tools import REPO

OPERATOR_SRC = REPO / "operator" / "im_operator"
# import name -> distribution, for the packages im_operator imports
IMPORT_DIST = {"kopf": "kopf", "kubernetes": "kubernetes", "kazoo": "kazoo",
               "prometheus_client": "prometheus-client", "yaml": "pyyaml"}


def project(path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def reqs(lines: list[str]) -> dict[str, str]:
    """name -> specifier, for requirements without markers (all of them here)."""
    out = {}
    for line in lines:
        r = Requirement(line)
        assert r.marker is None or r.marker.evaluate(), line
        out[canonicalize_name(r.name)] = str(r.specifier)
    return out


def test_operator_distribution_matches_the_top_level_project():
    top, op = project(REPO / "pyproject.toml"), project(REPO / "operator" / "pyproject.toml")
    assert op["name"] == "imstack-operator"
    assert op["version"] == top["version"]
    assert op["scripts"] == {"imstack-operator": top["scripts"]["imstack-operator"]}
    op_reqs = reqs(op["dependencies"])
    top_reqs = reqs(top["dependencies"]) | reqs(top["optional-dependencies"]["operator"])
    # Same bounds on both sides, so the image runs what the operator tests ran against.
    assert {n: top_reqs.get(n) for n in op_reqs} == op_reqs
    assert set(reqs(top["optional-dependencies"]["operator"])) <= set(op_reqs)


def test_operator_distribution_declares_what_im_operator_imports():
    imported: set[str] = set()
    for path in OPERATOR_SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "im_operator"}
    assert third_party, "the AST scan found no third-party import at all"
    assert third_party <= set(IMPORT_DIST), f"im_operator imports {sorted(third_party - set(IMPORT_DIST))}"
    declared = set(reqs(project(REPO / "operator" / "pyproject.toml")["dependencies"]))
    needed = {canonicalize_name(IMPORT_DIST[m]) for m in third_party}
    assert needed <= declared, f"imported but not declared: {sorted(needed - declared)}"
