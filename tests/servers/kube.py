"""Start a real Kubernetes control plane for a test: etcd + kube-apiserver (+ optionally
kube-controller-manager running only the garbage collector).

No kind cluster can run on these machines, so this is the cluster the operator tests (and the
chart's server-side dry-runs) talk to. The binaries are built from the Go module proxy by
scripts/setup.d/30-kube-control-plane.sh into $IMSTACK_TOOLS/bin. There is no kubelet and no
scheduler: tests play the cluster by writing child status through the API.

The fixture makes a throwaway CA, a serving certificate for 127.0.0.1, service-account signing
keys and a static admin token (group system:masters), and writes a kubeconfig that the
kubernetes client, kubectl and kopf can use. API (other areas reuse it, keep it stable):

    cp = start_control_plane(tmp_dir)     # -> ControlPlane
    cp.kubeconfig  # path;  cp.url  # "https://127.0.0.1:PORT";  cp.token;  cp.ca_file
    cp.stop()
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.process import stop_process

SETUP_HINT = "build it with `bash scripts/setup.d/30-kube-control-plane.sh` (or `make setup-test-deps`)"


def tools_bin() -> Path:
    return Path(os.environ.get("IMSTACK_TOOLS", Path.home() / ".cache/imstack/tools")) / "bin"


def _binary(name: str) -> str:
    path = tools_bin() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(f"{name} not found at {path}: {SETUP_HINT}")
    return str(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found (needed to make the test cluster's certificates)")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path, *, ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
    """CA, serving certificate for `ips` (and the kubernetes Service names), SA signing keys."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=imstack-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    names = ",".join([*(f"IP:{ip}" for ip in ips), "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                      "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"])
    (d / "san.ext").write_text(f"subjectAltName={names}\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver", "-keyout", "server.key", "-out", "server.csr", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-extfile", "san.ext", "-out", "server.crt", cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


@dataclass
class _Proc:
    name: str
    process: subprocess.Popen
    log_path: Path
    log_file: object

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process, grace=15)
        self.log_file.close()


def _spawn(name: str, args: list[str], base: Path) -> _Proc:
    log_path = base / f"{name}.log"
    log_file = open(log_path, "wb")
    p = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=base)
    return _Proc(name, p, log_path, log_file)


@dataclass
class ControlPlane:
    url: str
    kubeconfig: str
    token: str
    ca_file: str
    base: Path
    procs: list[_Proc] = field(default_factory=list)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


def _wait(proc: _Proc, check, what: str, deadline: float) -> None:
    last: object = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}; log tail:\n{proc.tail()}")
        try:
            if check():
                return
        except Exception as exc:  # not up yet; bounded by the deadline
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"{what} not ready in time ({last!r}); {proc.name} log tail:\n{proc.tail()}")


def start_control_plane(
    tmp_dir: Path | str,
    *,
    controller_manager: bool = False,
    controllers: tuple[str, ...] = ("garbagecollector",),
    timeout: float = 120.0,
) -> ControlPlane:
    """etcd + kube-apiserver on free loopback ports; returns once /readyz answers ok.

    With `controller_manager=True` a kube-controller-manager runs `controllers` (default: only
    the garbage collector, for ownerReferences -> cascading deletion); the workload controllers
    would fight tests that play the kubelet by writing Deployment status.
    """
    etcd_bin, apiserver_bin = _binary("etcd"), _binary("kube-apiserver")
    kcm_bin = _binary("kube-controller-manager") if controller_manager else None
    base = Path(tmp_dir) / f"kube-{os.getpid()}-{time.monotonic_ns()}"
    base.mkdir(parents=True)
    _make_pki(base)
    token = secrets.token_hex(16)
    (base / "tokens.csv").write_text(f'{token},imstack-admin,imstack-admin,"system:masters"\n')
    deadline = time.monotonic() + timeout
    cp = ControlPlane(url="", kubeconfig=str(base / "kubeconfig"), token=token, ca_file=str(base / "ca.crt"), base=base)
    try:
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = _spawn("etcd", [
            etcd_bin, "--name", "default", "--data-dir", str(base / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ], base)
        cp.procs.append(etcd)

        def etcd_ok() -> bool:
            with urllib.request.urlopen(etcd_url + "/health", timeout=2) as r:
                return b"true" in r.read()

        _wait(etcd, etcd_ok, "etcd", deadline)

        port = free_port()
        cp.url = f"https://127.0.0.1:{port}"
        api = _spawn("kube-apiserver", [
            apiserver_bin,
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={base}", f"--tls-cert-file={base / 'server.crt'}", f"--tls-private-key-file={base / 'server.key'}",
            f"--client-ca-file={base / 'ca.crt'}", f"--token-auth-file={base / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={base / 'sa.pub'}", f"--service-account-signing-key-file={base / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # No kubelet and no token controller: pods made by tests need no service account.
            "--disable-admission-plugins=ServiceAccount",
            # 127.0.0.1 is not a valid Endpoints address; nothing needs the kubernetes Service here.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false", "--profiling=false", "--allow-privileged=true",
            "--v=0",
        ], base)
        cp.procs.append(api)
        (base / "kubeconfig").write_text(_kubeconfig(cp.url, cp.ca_file, token))
        _wait(api, lambda: cp.get("/readyz")[0] == 200, "kube-apiserver", deadline)

        if kcm_bin:
            kcm = _spawn("kube-controller-manager", [
                kcm_bin, f"--kubeconfig={cp.kubeconfig}", f"--controllers={','.join(controllers)}",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                "--use-service-account-credentials=false", f"--authentication-kubeconfig={cp.kubeconfig}",
                f"--authorization-kubeconfig={cp.kubeconfig}", "--v=1",
            ], base)
            cp.procs.append(kcm)

            def kcm_ok() -> bool:
                return b"garbage" in kcm.log_path.read_bytes().lower() or b"Started" in kcm.log_path.read_bytes()

            _wait(kcm, kcm_ok, "kube-controller-manager", deadline)
    except BaseException:
        cp.stop()
        raise
    return cp


def _kubeconfig(url: str, ca_file: str, token: str) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: imstack-test
  cluster:
    server: {url}
    certificate-authority: {ca_file}
users:
- name: imstack-admin
  user:
    token: {token}
contexts:
- name: imstack-test
  context:
    cluster: imstack-test
    user: imstack-admin
    namespace: default
current-context: imstack-test
"""
