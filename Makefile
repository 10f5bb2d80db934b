# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
export IMSTACK_TOOLS ?= $(HOME)/.cache/imstack/tools

.PHONY: run test venv setup-test-deps proto check-proto clean images

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/imstack up

# Installs the real servers the tests talk to (ZooKeeper, Redis, FerretDB, the Kubernetes
# control plane, Docker, Chromium...): every script in scripts/setup.d runs in name order.
setup-test-deps:
	bash scripts/setup-test-deps.sh

test: venv setup-test-deps
	$(PY) -m pytest tests -q

proto: venv
	$(PY) -m im_runtime.proto.build

check-proto: venv
	$(PY) -m im_runtime.proto.build --check

clean:
	rm -rf $(VENV) build *.egg-info

# The distributed topology on loopback (ZooKeeper, Redis, FerretDB, route, 2 dispatch,
# 2 access), for people to try: prints the HTTP API address and the admin key.
.PHONY: cluster-up cluster-down
cluster-up: venv
	$(VENV)/bin/imstack cluster up --dir .cluster

cluster-down: venv
	$(VENV)/bin/imstack cluster down --dir .cluster

# The four container images (access, dispatch, route, operator); see docs/deploy.md.
# Variables: BASE_IMAGE (default python:3.11-slim), IMAGE_REPO, IMAGE_TAG, IMAGES.
images:
	bash scripts/tools/build-images.sh

# A real one-node Kubernetes cluster on this machine (tests/servers/node.py): containerd,
# kubelet, kube-proxy and CoreDNS in a network namespace of their own, the control plane beside
# them, every image the node tests run built and imported. Root only. Prints the kubeconfig.
.PHONY: node-up node-down
node-up: venv setup-test-deps
	$(PY) -m tests.servers.node up --dir .node

node-down: venv
	$(PY) -m tests.servers.node down --dir .node
