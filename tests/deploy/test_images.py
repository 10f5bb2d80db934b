"""The four images, as built by `make images` on the local Debian 12 base: what is in them,
what is not, and that each one starts its console script.

Sizes are checked against the 200 MB target for access, dispatch and route; the operator image
carries kopf and the kubernetes client (most of its size) and gets its own bound.
"""

from __future__ import annotations

import json

import pytest

from .conftest import IMAGES
from .tools import run

SIZE_LIMIT_MB = {"access": 200, "dispatch": 200, "route": 200, "operator": 360}
HEALTH_PORT = {"access": 9090, "dispatch": 9090, "route": 8080}
ENTRYPOINT = {"access": ["imstack", "access"], "dispatch": ["imstack", "dispatch"],
              "route": ["imstack", "route"], "operator": ["imstack-operator"]}


def inspect(docker: str, ref: str) -> dict:
    return json.loads(run([docker, "image", "inspect", ref]).stdout)[0]


def sh(docker: str, ref: str, script: str) -> str:
    return run([docker, "run", "--rm", "--network", "none", "--entrypoint", "sh", ref, "-c", script]).stdout


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", IMAGES)
def test_image_config(docker, images, name):
    info = inspect(docker, images[name])
    cfg = info["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ENTRYPOINT[name]
    assert "/opt/imstack/bin" in next(e for e in cfg["Env"] if e.startswith("PATH="))
    if name in HEALTH_PORT:
        # In a pod the roles must listen on the pod IP, not on the process default 127.0.0.1.
        assert "IMSTACK_LISTEN_HOST=0.0.0.0" in cfg["Env"]
        test = " ".join(cfg["Healthcheck"]["Test"])
        assert "127.0.0.1:%s/healthz" in test and str(HEALTH_PORT[name]) in test
    size_mb = info["Size"] / 1e6
    assert size_mb < SIZE_LIMIT_MB[name], f"{name}: {size_mb:.0f} MB"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", IMAGES)
def test_image_holds_no_installers_compilers_or_caches(docker, images, name):
    out = sh(docker, images[name], """
        id -u
        for t in pip pip3 gcc cc c++ g++ ld make; do command -v "$t" && echo "FOUND $t"; done
        python3 -c 'import pip' 2>/dev/null && echo "FOUND pip module"
        python3 -c 'import setuptools' 2>/dev/null && echo "FOUND setuptools"
        for d in /root/.cache /wheelhouse /dist /src /var/lib/apt/lists/*.gz /var/cache/apt/archives/*.deb; do
          [ -e "$d" ] && echo "FOUND $d"
        done
        ls /etc/ssl/certs/ca-certificates.crt
        true
    """)
    lines = out.split()
    assert lines[0] == "10001", "runs as the non-root user"
    assert "FOUND" not in out, out


BINARY_DEPS = {
    "runtime": ["grpc", "uvloop", "hiredis", "google.protobuf", "aiohttp", "websockets", "pymongo", "redis",
                "kazoo", "prometheus_client", "im_runtime.proto.imstack_pb2_grpc"],
    "operator": ["kopf", "kubernetes", "kazoo", "pydantic_core"],
}


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", IMAGES)
def test_image_installs_console_script_and_loads_compiled_deps(docker, images, name):
    """The wheel's console script is installed, and the manylinux wheels from the host's
    wheelhouse load on the image's Python and glibc (a wrong platform tag fails here)."""
    script = ENTRYPOINT[name][0]
    target = "im_operator.main:main" if name == "operator" else "im_runtime.cli:main"
    mods = [*BINARY_DEPS["operator" if name == "operator" else "runtime"], target.split(":")[0]]
    code = (f"import importlib, importlib.metadata as m, shutil; "
            f"[importlib.import_module(x) for x in {mods!r}]; "
            f"print([e.value for e in m.entry_points(group='console_scripts') if e.name == {script!r}], "
            f"shutil.which({script!r}))")
    out = run([docker, "run", "--rm", "--network", "none", "--entrypoint", "python3", images[name], "-c", code]).stdout
    assert out.strip() == f"['{target}'] /opt/imstack/bin/{script}", out
    help_text = run([docker, "run", "--rm", "--network", "none", images[name], "--help"]).stdout
    expected = ("--namespace", "--liveness") if name == "operator" else ("--zk", "--metrics-port")
    assert all(flag in help_text for flag in expected), help_text
