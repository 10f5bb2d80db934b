"""The four images, as built by `make images` on the local Debian 12 base: what is in them,
what is not, and that each one starts its console script.

Every image is checked against the 200 MB target (measured here on imstack-base:bookworm:
access/dispatch/route 190 MB, operator 192 MB; docs/deploy.md). The operator image meets it by
installing only its own distribution (operator/pyproject.toml, no runtime dependencies) and by
two cuts in the kubernetes client that images/operator/Dockerfile explains;
test_operator_image_holds_only_what_the_operator_imports checks that they leave it working.
"""

from __future__ import annotations

import json

import pytest

from .conftest import IMAGES
from .tools import run

SIZE_LIMIT_MB = {"access": 200, "dispatch": 200, "route": 200, "operator": 200}
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


# What the runtime images need and the operator image must not carry (im_operator imports none).
RUNTIME_ONLY = ["im_runtime", "grpc", "uvloop", "redis", "hiredis", "pymongo", "bson", "dns", "google.protobuf",
                "websockets"]

OPERATOR_PROBE = """
import importlib.metadata as md, importlib.util as iu, json, pathlib, sys, time
t = time.perf_counter()
import kubernetes, kopf
from im_operator import handlers, kubeapi
client = kubernetes.client.ApiClient()
client.param_serialize("GET", "/api/v1/namespaces", header_params={"Accept": "application/json"},
                       auth_settings=["BearerToken"])
start = time.perf_counter() - t
# Modules imported so far that had no bytecode in the image: Python compiled them at this start.
compiled = sorted(n for n, m in list(sys.modules.items())
                  if getattr(m, "__cached__", None) and not pathlib.Path(m.__cached__).exists())
kube = pathlib.Path(kubernetes.__file__).parent
dists = {d.metadata["Name"].lower() for d in md.distributions()}
missing = [str(f) for d in md.distributions() for f in (d.files or []) if not pathlib.Path(d.locate_file(f)).exists()]
print(json.dumps({
    "start_s": start,
    "compiled": compiled,
    "aio": iu.find_spec("kubernetes.aio") is not None or (kube / "aio").exists(),
    "runtime_only": [m for m in sys.argv[1:] if iu.find_spec(m.split(".")[0]) is not None],
    "dists": sorted(dists),
    "script": [e.dist.metadata["Name"] for e in md.entry_points(group="console_scripts", name="imstack-operator")],
    "generated_pyc": sorted(p.name for d in ("api", "models") for p in (kube / "client" / d).rglob("*.pyc")
                            if not p.name.startswith("__init__.")),
    "client_pyc": (kube / "client" / "__pycache__").is_dir(),
    "missing_files": missing[:20],
}))
"""


@pytest.mark.timeout(1800)
def test_operator_image_holds_only_what_the_operator_imports(docker, images):
    """The operator image carries its own distribution only, kubernetes without `aio` and
    without bytecode for the generated API classes/models, and still starts: it imports kopf,
    its handlers and the client, and builds a request, all on a read-only root file system."""
    out = run([docker, "run", "--rm", "--network", "none", "--read-only", "--entrypoint", "python3", images["operator"],
               "-c", OPERATOR_PROBE, *RUNTIME_ONLY]).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert probe["aio"] is False, "kubernetes/aio is in the image"
    assert probe["runtime_only"] == [], f"runtime-only packages in the operator image: {probe['runtime_only']}"
    assert "imstack" not in probe["dists"] and "imstack-operator" in probe["dists"], probe["dists"]
    assert {"kopf", "kubernetes", "kazoo", "prometheus_client", "pyyaml"} <= set(probe["dists"]), probe["dists"]
    assert probe["script"] == ["imstack-operator"], probe["script"]
    assert probe["generated_pyc"] == [], "bytecode of kubernetes/client/{api,models} is in the image"
    assert probe["client_pyc"] is True, "the client core lost its install-time bytecode"
    assert probe["missing_files"] == [], f"dist-info RECORDs list files that are gone: {probe['missing_files']}"
    # The bytecode cut costs the start only the few models the client loads eagerly, compiled
    # in memory (start here ~0.55 s with or without the cut); not the operator's own modules,
    # kopf or the client core.
    assert probe["compiled"] and all(m.startswith("kubernetes.client.models.") for m in probe["compiled"]), probe
    assert len(probe["compiled"]) <= 10, probe["compiled"]
    print(f"operator image: imports and client in {probe['start_s']:.2f} s; compiled at start: {probe['compiled']}")
