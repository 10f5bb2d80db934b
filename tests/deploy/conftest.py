"""Fixtures of the deploy tests: the images, built once per session with the local base image.

No registry can be reached here, so the base is `imstack-base:bookworm` (a debootstrap of Debian
12 with python3, made by scripts/setup.d/50-docker.sh) instead of the Dockerfiles' default
python:3.11-slim. A missing docker daemon or base image fails the run with the step to run.
"""

from __future__ import annotations

import os
import subprocess
import tomllib

import pytest

from .tools import DOCKER_HINT, REPO, run

BASE_IMAGE = os.environ.get("IMSTACK_BASE_IMAGE", "imstack-base:bookworm")
IMAGES = ("access", "dispatch", "route", "operator")


def docker_bin() -> str:
    for path in ("/usr/bin/docker", "/usr/local/bin/docker"):
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"no docker client: {DOCKER_HINT}")


@pytest.fixture(scope="session")
def docker() -> str:
    client = docker_bin()
    info = subprocess.run([client, "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        raise RuntimeError(f"docker cannot reach dockerd ({info.stderr.strip()[:300]}): {DOCKER_HINT}")
    base = subprocess.run([client, "image", "inspect", BASE_IMAGE], capture_output=True, text=True, timeout=30)
    if base.returncode != 0:
        raise RuntimeError(f"base image {BASE_IMAGE} is missing: {DOCKER_HINT}")
    return client


@pytest.fixture(scope="session")
def images(docker) -> dict[str, str]:
    """name -> image reference, built by the same script as `make images` (layer-cached)."""
    tag = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    env = dict(os.environ, BASE_IMAGE=BASE_IMAGE, IMAGE_TAG=tag, IMAGE_REPO="imstack", DOCKER=docker,
               PYTHON=os.environ.get("PYTHON", "python3"))
    proc = run(["bash", str(REPO / "scripts" / "tools" / "build-images.sh")], env=env, timeout=1500)
    print(proc.stdout)
    return {name: f"imstack/{name}:{tag}" for name in IMAGES}
