"""Builds every image the test node runs (tests/node/images/README.md says what and why).

The imstack images come from scripts/tools/build-images.sh (`make images`), so the node runs
exactly what users get; the support images (pause, CoreDNS, ZooKeeper, Redis, FerretDB) from
the Dockerfiles beside this module. docker caches every layer: a second build is quick.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Callable

from tests.servers.kube import tools_bin
from tests.servers.node import COREDNS_IMAGE, PAUSE_IMAGE

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "images"
BASE_IMAGE = os.environ.get("IMSTACK_BASE_IMAGE", "imstack-base:bookworm")
ZOOKEEPER_IMAGE = "imstack-test/zookeeper:3.8"
REDIS_IMAGE = "imstack-test/redis:7.0"
FERRETDB_IMAGE = "imstack-test/ferretdb:1.24"
SETUP_HINT = "run `make setup-test-deps` (scripts/setup.d/35-kube-node.sh and 50-docker.sh)"


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def imstack_images(tag: str | None = None) -> dict[str, str]:
    tag = tag or project_version()
    return {name: f"imstack/{name}:{tag}" for name in ("access", "dispatch", "route", "operator")}


def _docker() -> str:
    for path in ("/usr/bin/docker", "/usr/local/bin/docker"):
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"no docker client: {SETUP_HINT}")


def _build(docker: str, name: str, ref: str, context: Path, log: Callable[[str], None]) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        [docker, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--label", f"io.imstack.test-image={name}",
         "-t", ref, str(context)],
        capture_output=True, text=True, timeout=1200,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building {ref} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    log(f"node images: {ref} in {time.monotonic() - start:.0f}s")


def _pause_binary(out: Path) -> None:
    """kubernetes' pause.c from the k8s.io/kubernetes module the node's binaries come from."""
    kube_mod = REPO / "scripts" / "tools" / "kube"
    version = next(line.split()[1] for line in (kube_mod / "go.mod").read_text().splitlines()
                   if line.strip().startswith("k8s.io/kubernetes "))
    listing = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], cwd=kube_mod,
                             capture_output=True, text=True, timeout=600, env=dict(os.environ, GOFLAGS="-mod=mod"))
    if listing.returncode != 0:
        raise RuntimeError(f"go mod download k8s.io/kubernetes@{version}: {listing.stderr[-1000:]}")
    import json

    source = Path(json.loads(listing.stdout)["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build the pause image")
    subprocess.run(["gcc", "-Os", "-static", "-DVERSION=3.10-imstack", "-o", str(out), str(source)], check=True,
                   capture_output=True, timeout=300)
    subprocess.run(["strip", str(out)], check=False, capture_output=True)


def build_support_images(*, progress: Callable[[str], None] = print) -> list[str]:
    docker = _docker()
    if subprocess.run([docker, "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        raise RuntimeError(f"base image {BASE_IMAGE} is missing: {SETUP_HINT}")
    binaries = {"coredns": tools_bin() / "coredns", "ferretdb-server": tools_bin() / "ferretdb-server"}
    for name, path in binaries.items():
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"{name} not found at {path}: {SETUP_HINT}")
    refs = []
    with tempfile.TemporaryDirectory(prefix="imstack-node-images-") as tmp:
        for name, ref, extra in (
            ("pause", PAUSE_IMAGE, None),
            ("coredns", COREDNS_IMAGE, binaries["coredns"]),
            ("zookeeper", ZOOKEEPER_IMAGE, None),
            ("redis", REDIS_IMAGE, None),
            ("ferretdb", FERRETDB_IMAGE, binaries["ferretdb-server"]),
        ):
            context = Path(tmp) / name
            shutil.copytree(HERE / name, context)
            if name == "pause":
                _pause_binary(context / "pause")
            elif extra is not None:
                shutil.copy2(extra, context / extra.name)
            _build(docker, name, ref, context, progress)
            refs.append(ref)
    return refs


def build_imstack_images(*, progress: Callable[[str], None] = print, tag: str | None = None) -> list[str]:
    images = imstack_images(tag)
    env = dict(os.environ, BASE_IMAGE=BASE_IMAGE, IMAGE_TAG=tag or project_version(), IMAGE_REPO="imstack", DOCKER=_docker(),
               PYTHON=os.environ.get("PYTHON", "python3"))
    start = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "tools" / "build-images.sh")], env=env, capture_output=True, text=True,
                          timeout=1800, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"make images failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    progress(f"node images: imstack images in {time.monotonic() - start:.0f}s")
    return list(images.values())


def build_node_images(*, progress: Callable[[str], None] = print) -> list[str]:
    """Every image the node tests run, support images first (pause before anything starts)."""
    return build_support_images(progress=progress) + build_imstack_images(progress=progress)
