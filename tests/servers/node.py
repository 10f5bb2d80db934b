"""A real one-node Kubernetes cluster for the node tests: pods of imstack run under a kubelet.

No kind cluster can run on these machines, so the node is made of the same parts kind runs,
built from the Go module proxy (scripts/setup.d/30 and 35) and Debian's packages:

    host network namespace                      node network namespace (made by this run)
    ----------------------                      ------------------------------------------
    etcd (127.0.0.1)                            containerd (CRI; runc; CNI bridge + host-local)
    kube-apiserver  10.201.0.1:6443  <-veth->   kubelet (node IP 10.201.0.2), kube-proxy (iptables)
    kube-controller-manager (all controllers,   bridge imcni0 10.244.0.1/24 -> pods 10.244.0.x
      hostPath provisioner), kube-scheduler     CoreDNS as a pod behind the kube-dns Service

The node's network lives in a namespace of its own, joined to the host by one veth pair with
addresses the run picks; the host gets routes to the pod and Service ranges through it and
nothing else. The node namespace has no default route, so no pod can send a packet anywhere but
to the pods, the node and the API server. Only the network namespace is entered (`nsenter
--net`): containerd and the kubelet see the host's mounts and cgroups, as on a real node.

Nothing can be pulled: every image is imported into the node's containerd from dockerd
(`docker save | ctr images import`), and re-imported only when its image id changes. The
containerd root lives in the tools cache, so imported images survive across runs.

    node = start_node(base_dir)              # -> KubeNode, every part up, CoreDNS ready
    node.load_images(["imstack/access:0.1.0", ...])
    node.kubeconfig / node.url / node.token  # admin access for tests, helm and the operator
    node.stop()                              # pods deleted, processes stopped, network removed

`python -m tests.servers.node up|down|status` (`make node-up` / `make node-down`) runs the same
node for people, its state in `.node/`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tests.polling import TimedOut, poll
from tests.servers.kube import ControlPlane, _kubeconfig, _make_pki, _Proc, _spawn, free_port, tools_bin

NODE_HINT = "install and build it with `bash scripts/setup.d/35-kube-node.sh` (or `make setup-test-deps`)"
CNI_BIN = Path("/usr/lib/cni")
NODE_NAME = "imstack-node"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
COREDNS_IMAGE = "imstack-test/coredns:1.14"
HOSTPATH_PV_DIR = Path("/tmp/hostpath_pv")  # where kube-controller-manager's hostPath provisioner puts volumes


@dataclass(frozen=True)
class NodeNetwork:
    """Names and addresses of the node's network; all of them made by this run."""

    netns: str = "imstack-node"
    host_if: str = "imk-host"
    node_if: str = "imk-node"
    bridge: str = "imcni0"
    host_ip: str = "10.201.0.1"
    node_ip: str = "10.201.0.2"
    prefix: int = 30
    pod_cidr: str = "10.244.0.0/24"
    pod_gateway: str = "10.244.0.1"
    service_cidr: str = "10.97.0.0/16"
    api_service_ip: str = "10.97.0.1"
    dns_ip: str = "10.97.0.10"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    def in_node(self, argv: list[str]) -> list[str]:
        """argv run inside the node's network namespace only (mounts and cgroups stay the host's)."""
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]


def _run(argv: list[str], *, check: bool = True, timeout: float = 60, input: bytes | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()[:2000]}")
    return proc


def create_network(net: NodeNetwork) -> None:
    """The node namespace, the veth pair, forwarding inside the node, routes on the host."""
    if os.geteuid() != 0:
        raise RuntimeError("the test node needs root (network namespaces, containerd, kubelet)")
    delete_network(net)  # a run that died leaves its namespace behind
    _run(["ip", "netns", "add", net.netns])
    _run(["ip", "link", "add", net.host_if, "type", "veth", "peer", "name", net.node_if, "netns", net.netns])
    _run(["ip", "addr", "add", f"{net.host_ip}/{net.prefix}", "dev", net.host_if])
    _run(["ip", "link", "set", net.host_if, "up"])
    inside = net.in_node
    _run(inside(["ip", "link", "set", "lo", "up"]))
    _run(inside(["ip", "addr", "add", f"{net.node_ip}/{net.prefix}", "dev", net.node_if]))
    _run(inside(["ip", "link", "set", net.node_if, "up"]))
    # The node routes between its pods, the host and Service IPs; the host never forwards.
    _run(inside(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
    # The host reaches pods and ClusterIPs through the node, like a machine on the node's LAN.
    for cidr in (net.pod_cidr, net.service_cidr):
        _run(["ip", "route", "replace", cidr, "via", net.node_ip, "dev", net.host_if])


def delete_network(net: NodeNetwork) -> None:
    for cidr in (net.pod_cidr, net.service_cidr):
        _run(["ip", "route", "del", cidr], check=False)
    _run(["ip", "link", "del", net.host_if], check=False)
    if Path(net.netns_path).exists():
        _run(["ip", "netns", "del", net.netns], check=False)


def _binary(name: str) -> str:
    path = tools_bin() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(f"{name} not found at {path}: {NODE_HINT}")
    return str(path)


def _system_binary(name: str) -> str:
    found = shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)
    if not found:
        raise RuntimeError(f"{name} not found on PATH: {NODE_HINT}")
    return found


def node_state_dir() -> Path:
    """Kept across runs (the tools cache): containerd's images, so each is imported once."""
    return tools_bin().parent / "node"


def _cni_config(net: NodeNetwork) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "imstack-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                # Nothing leaves the node: no masquerade towards an outside that is not there.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.pod_cidr, "gateway": net.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _containerd_config(*, root: Path, state: Path, socket_path: Path, cni_conf_dir: Path) -> str:
    return f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket_path}"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_unprivileged_ports = true
  # CAP_SYS_RESOURCE is not in this machine's bounding set: no process may lower its
  # oom_score_adj, so the kubelet's -998 for pod sandboxes failed every pod in runc ("failed to
  # update /proc/self/oom_score_adj: Permission denied"). Clamp to containerd's own value.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf_dir}"
"""


def _kubelet_config(net: NodeNetwork, *, socket_path: Path, resolv: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Reachable only from this machine's own namespaces: no client certificates.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "address": net.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "cgroupDriver": "cgroupfs",
        # These machines mount cgroup v1 (with v2 beside it); kubelet 1.35 refuses v1 unless told.
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{socket_path}",
        "clusterDNS": [net.dns_ip],
        "clusterDomain": "cluster.local",
        "resolvConf": str(resolv),
        # Images are imported, never pulled: garbage collection must never remove one.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "maxPods": 110,
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "oomScoreAdj": 0,  # see restrict_oom_score_adj in the containerd config
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def _kube_proxy_config(net: NodeNetwork, *, kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": net.pod_cidr,
        "hostnameOverride": NODE_NAME,
        "bindAddress": net.node_ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{net.node_ip}/32"],
        "oomScoreAdj": 0,  # lowering it needs CAP_SYS_RESOURCE, which this machine withholds
        # The conntrack table size is global to the machine: leave it alone; timeouts are per
        # namespace but also left as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
    }


def _addons(net: NodeNetwork) -> list[dict[str, Any]]:
    """What kubeadm would add: CoreDNS (as a pod, behind the kube-dns Service) and a default
    StorageClass served by kube-controller-manager's hostPath provisioner."""
    dns_labels = {"k8s-app": "kube-dns"}
    corefile = (
        ".:53 {\n    errors\n    health :8080\n    ready :8181\n"
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       pods insecure\n       ttl 5\n    }\n"
        "    cache 5\n}\n"
    )
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"}, "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system", "labels": dns_labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dns_labels},
                "template": {
                    "metadata": {"labels": dns_labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "priorityClassName": "system-cluster-critical",
                        "containers": [{
                            "name": "coredns",
                            "image": COREDNS_IMAGE,
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                      {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": dns_labels},
            "spec": {
                "clusterIP": net.dns_ip,
                "selector": dns_labels,
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                          {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}],
            },
        },
        {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubernetes.io/host-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        },
    ]


def _wait(what: str, check: Callable[[], Any], *, deadline: float, procs: Iterable[_Proc] = (), interval: float = 0.5) -> Any:
    """Polls `check` until truthy; a part that exits or the deadline fails it with log tails."""
    procs = list(procs)

    def alive_and(check=check) -> Any:  # type: ignore[no-untyped-def]
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with {p.process.returncode} while waiting for {what}; log tail:\n{p.tail()}")
        try:
            return check()
        except Exception as exc:  # not up yet; bounded by the deadline
            raise _NotYet(exc) from exc

    try:
        return poll(alive_and, timeout=max(0.0, deadline - time.monotonic()), what=what, interval=interval, tolerate=(_NotYet,),
                    detail=lambda: "\n".join(f"--- {p.name}:\n{p.tail(3000)}" for p in procs))
    except TimedOut as e:
        raise RuntimeError(str(e)) from None


class _NotYet(Exception):
    """A check that raised: not up yet (a dead process, raised as RuntimeError, is final)."""


@dataclass
class KubeNode:
    """The running node; `stop()` undoes everything `start_node` did."""

    base: Path
    net: NodeNetwork
    url: str = ""
    kubeconfig: str = ""
    token: str = ""
    ca_file: str = ""
    containerd_socket: Path = Path()
    procs: list[_Proc] = field(default_factory=list)
    lock_fd: int | None = None

    @property
    def control_plane(self) -> ControlPlane:
        """The same view of the API the control-plane-only tests use."""
        return ControlPlane(url=self.url, kubeconfig=self.kubeconfig, token=self.token, ca_file=self.ca_file, base=self.base)

    # -- API access (plain HTTPS, so the fixture needs no client library) ------------------------
    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 15, content_type: str = "application/json") -> tuple[int, Any]:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
                return r.status, _decoded(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _decoded(e.read())

    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply of one object (field manager imstack-node)."""
        kind, meta = obj["kind"], obj["metadata"]
        group_version = obj["apiVersion"]
        plural = {"StorageClass": "storageclasses", "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
                  "ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps", "Deployment": "deployments",
                  "Service": "services", "Namespace": "namespaces"}[kind]
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        ns = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
        path = f"{prefix}{ns}/{plural}/{meta['name']}?fieldManager=imstack-node&force=true"
        status, reply = self.api("PATCH", path, obj, content_type="application/apply-patch+yaml")
        if status >= 300:
            raise RuntimeError(f"apply {kind} {meta['name']}: {status} {reply}")

    def pods(self, namespace: str | None = None, selector: str = "") -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        if selector:
            path += "?labelSelector=" + urllib.request.quote(selector)
        status, reply = self.api("GET", path)
        if status != 200:
            raise RuntimeError(f"list pods: {status} {reply}")
        return reply["items"]

    def pod_log(self, namespace: str, pod: str, container: str | None = None, tail: int = 40) -> str:
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log?tailLines={tail}"
        if container:
            path += f"&container={container}"
        status, reply = self.api("GET", path)
        return reply if isinstance(reply, str) else json.dumps(reply)[:2000]

    def describe_pods(self, namespace: str | None = None) -> str:
        """Pod phases, container states and recent events: what a failing wait should print."""
        lines = []
        for p in self.pods(namespace):
            meta, st = p["metadata"], p.get("status", {})
            states = [f"{c['name']}={next(iter(c.get('state', {'?': 0})))}{'(ready)' if c.get('ready') else ''} restarts={c.get('restartCount', 0)}"
                      for c in st.get("containerStatuses", [])]
            lines.append(f"{meta['namespace']}/{meta['name']}: {st.get('phase')} {st.get('podIP', '')} {' '.join(states)}")
        path = f"/api/v1/namespaces/{namespace}/events" if namespace else "/api/v1/events"
        status, reply = self.api("GET", path)
        if status == 200:
            for e in reply["items"][-25:]:
                lines.append(f"  event {e['involvedObject'].get('name')}: {e.get('reason')}: {e.get('message', '')[:200]}")
        return "\n".join(lines)

    # -- images ----------------------------------------------------------------------------------
    def ctr(self, *args: str, timeout: float = 300, input: bytes | None = None) -> subprocess.CompletedProcess:
        return _run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args], timeout=timeout, input=input)

    def load_images(self, refs: Iterable[str], *, docker: str = "docker") -> list[str]:
        """Imports docker images into the node's containerd; returns the refs that were new or
        changed. An image whose docker id was imported before is left as it is."""
        stamps_path = node_state_dir() / "imported.json"
        stamps = json.loads(stamps_path.read_text()) if stamps_path.exists() else {}
        have = set(self.ctr("images", "list", "-q").stdout.decode().split())
        imported = []
        for ref in refs:
            image_id = _run([docker, "image", "inspect", "-f", "{{.Id}}", ref]).stdout.decode().strip()
            full = ref if "/" in ref.split(":")[0] and "." in ref.split("/")[0] else f"docker.io/{ref if '/' in ref else 'library/' + ref}"
            if stamps.get(ref) == image_id and full in have:
                continue
            save = subprocess.Popen([docker, "save", ref], stdout=subprocess.PIPE)
            try:
                proc = subprocess.run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", "images", "import",
                                       "--no-unpack=false", "-"], stdin=save.stdout, capture_output=True, timeout=600)
            finally:
                save.stdout.close()
                save.wait(timeout=600)
            if proc.returncode != 0 or save.returncode != 0:
                raise RuntimeError(f"importing {ref} into the node's containerd failed: {proc.stderr.decode(errors='replace')[-1500:]}")
            stamps[ref] = image_id
            imported.append(ref)
            stamps_path.write_text(json.dumps(stamps, indent=1))
        return imported

    # -- teardown --------------------------------------------------------------------------------
    def delete_workloads(self, *, timeout: float = 90) -> None:
        """Deletes every namespace the tests made and every pod, and waits (bounded) for the
        kubelet to stop them, so no container outlives the node."""
        status, reply = self.api("GET", "/api/v1/namespaces")
        if status == 200:
            for ns in reply["items"]:
                name = ns["metadata"]["name"]
                if name not in ("default", "kube-system", "kube-public", "kube-node-lease"):
                    self.api("DELETE", f"/api/v1/namespaces/{name}")
        for p in self.pods():
            m = p["metadata"]
            self.api("DELETE", f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}", {"gracePeriodSeconds": 2})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.ctr("containers", "list", "-q", timeout=20).stdout.strip():
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                return
            time.sleep(1)

    def stop(self, *, graceful: bool = False) -> None:
        """Stops the node. Pods are killed with their cgroups (seconds); `graceful` first lets
        the kubelet stop them the Kubernetes way (a minute or more: access pods drain)."""
        if graceful and any(p.name == "kubelet" and p.alive() for p in self.procs) and self.url:
            try:
                self.delete_workloads()
            except Exception as exc:  # best effort: the kill below still runs
                print(f"node: deleting workloads failed: {exc}", file=sys.stderr)
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        _kill_leftovers(self.containerd_socket, self.base)
        delete_network(self.net)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _decoded(raw: bytes) -> Any:
    """JSON replies as objects; text ones (/readyz, pod logs) as str."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _kill_leftovers(socket_path: Path, *bases: Path) -> None:
    """Container shims and pod processes that outlive containerd, the kubelet's cgroups, and
    the mounts under the node's state: a stopped node leaves none of them."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(socket_path).encode() in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    cgroups = Path("/sys/fs/cgroup")
    for controller in cgroups.iterdir() if cgroups.exists() else ():
        kubepods = controller / "kubepods"
        if not kubepods.is_dir():
            continue
        for procs_file in kubepods.rglob("cgroup.procs"):
            try:
                for pid in procs_file.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    time.sleep(0.5)
    for controller in cgroups.iterdir() if cgroups.exists() else ():
        kubepods = controller / "kubepods"
        if kubepods.is_dir():
            for d in sorted((p for p in kubepods.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                try:
                    d.rmdir()
                except OSError:
                    pass
            try:
                kubepods.rmdir()
            except OSError:
                pass
    # The kubelet makes its root dir a mount of its own and mounts volumes below it; containerd
    # mounts snapshots and shm under its root and state. The last node's base counts too.
    last = node_state_dir() / "last-base"
    ours = [str(node_state_dir()), "/run/imstack-node", "/run/netns/cni-", "/var/run/netns/cni-", *(str(b) for b in bases)]
    if last.exists():
        ours.append(last.read_text().strip())
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for m in sorted(mounts, key=len, reverse=True):
        if any(m.startswith(prefix) for prefix in ours if prefix):
            subprocess.run(["umount", "-l", m], capture_output=True)
    for ns in Path("/var/run/netns").glob("cni-*"):
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
    # host-local IPAM keeps a file per address it handed out; pods killed here never released
    # theirs, and the /24 would run dry after a few runs.
    shutil.rmtree("/var/lib/cni/networks/imstack-node", ignore_errors=True)


def _write_kubeconfig(path: Path, url: str, ca: str, token: str) -> str:
    path.write_text(_kubeconfig(url, ca, token))
    return str(path)


def start_node(base_dir: Path | str, *, net: NodeNetwork = NodeNetwork(), timeout: float = 300.0,
               images: Iterable[str] = (), docker: str = "docker", detach: bool = False) -> KubeNode:
    """The whole node, up: returns once the Node is Ready and CoreDNS answers.

    `images` are imported before the kubelet starts (the pause and CoreDNS images must be among
    them, or already imported). `detach` starts every process in its own session, so the node
    outlives this Python process (`make node-up`)."""
    for tool in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
        _binary(tool)
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "conntrack", "nsenter"):
        _system_binary(tool)
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not (CNI_BIN / plugin).exists():
            raise RuntimeError(f"CNI plugin {plugin} not in {CNI_BIN}: {NODE_HINT}")

    base = Path(base_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    run_dir = Path("/run/imstack-node")  # sockets: their paths must stay short
    node = KubeNode(base=base, net=net, containerd_socket=run_dir / "containerd.sock")
    node.lock_fd = _take_node_lock(run_dir, deadline=time.monotonic() + float(os.environ.get("IMSTACK_NODE_LOCK_WAIT", "1800")))
    spawn = _detached_spawn if detach else _spawn
    deadline = time.monotonic() + timeout
    try:
        _kill_leftovers(node.containerd_socket)
        node_state_dir().mkdir(parents=True, exist_ok=True)
        (node_state_dir() / "last-base").write_text(str(base))
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        create_network(net)

        pki = base / "pki"
        pki.mkdir(exist_ok=True)
        _make_pki(pki, ips=("127.0.0.1", net.host_ip, net.api_service_ip))
        node.ca_file = str(pki / "ca.crt")
        tokens = {name: os.urandom(16).hex() for name in ("admin", "kubelet", "proxy")}
        node.token = tokens["admin"]
        (pki / "tokens.csv").write_text(
            f'{tokens["admin"]},imstack-admin,imstack-admin,"system:masters"\n'
            f'{tokens["kubelet"]},system:node:{NODE_NAME},kubelet-{NODE_NAME},"system:nodes"\n'
            f'{tokens["proxy"]},system:kube-proxy,kube-proxy\n'
        )

        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = spawn("etcd", [
            _binary("etcd"), "--name", "node", "--data-dir", str(base / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"node=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync", "--log-level", "warn",
        ], base)
        node.procs.append(etcd)
        _wait("etcd", lambda: b"true" in urllib.request.urlopen(etcd_url + "/health", timeout=2).read(), deadline=deadline, procs=[etcd])

        node.url = f"https://{net.host_ip}:6443"
        api = spawn("kube-apiserver", [
            _binary("kube-apiserver"), f"--etcd-servers={etcd_url}",
            f"--bind-address={net.host_ip}", f"--advertise-address={net.host_ip}", "--secure-port=6443",
            f"--cert-dir={pki}", f"--tls-cert-file={pki / 'server.crt'}", f"--tls-private-key-file={pki / 'server.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={net.service_cidr}", "--service-node-port-range=30000-32767",
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-priority-and-fairness=false", "--profiling=false", "--allow-privileged=true", "--v=0",
        ], base)
        node.procs.append(api)
        node.kubeconfig = _write_kubeconfig(base / "kubeconfig", node.url, node.ca_file, node.token)
        _wait("kube-apiserver", lambda: node.api("GET", "/readyz")[0] == 200, deadline=deadline, procs=[etcd, api])

        kcm = spawn("kube-controller-manager", [
            _binary("kube-controller-manager"), f"--kubeconfig={node.kubeconfig}", "--controllers=*",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--authentication-kubeconfig={node.kubeconfig}", f"--authorization-kubeconfig={node.kubeconfig}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false", "--enable-hostpath-provisioner=true",
            f"--service-cluster-ip-range={net.service_cidr}", "--node-monitor-grace-period=20s", "--v=1",
        ], base)
        sched = spawn("kube-scheduler", [
            _binary("kube-scheduler"), f"--kubeconfig={node.kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--authentication-kubeconfig={node.kubeconfig}", f"--authorization-kubeconfig={node.kubeconfig}", "--v=1",
        ], base)
        node.procs += [kcm, sched]

        # containerd, inside the node's network: the CNI bridge it makes lives there.
        state = node_state_dir()
        state.mkdir(parents=True, exist_ok=True)
        cni_conf = base / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-imstack.conflist").write_text(json.dumps(_cni_config(net), indent=1))
        (base / "containerd.toml").write_text(_containerd_config(root=state / "containerd", state=run_dir / "containerd-state",
                                                                 socket_path=node.containerd_socket, cni_conf_dir=cni_conf))
        containerd = spawn("containerd", net.in_node(["containerd", "--config", str(base / "containerd.toml")]), base)
        node.procs.append(containerd)
        _wait("containerd", lambda: node.ctr("version", timeout=10).returncode == 0, deadline=deadline, procs=[containerd])
        # Pods' bridged traffic must pass iptables (Service replies between pods on the bridge).
        _run(net.in_node(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"]), check=False)
        node.ctr("containers", "list")  # the k8s.io namespace exists from here on
        for ref in node.ctr("containers", "list", "-q").stdout.decode().split():
            subprocess.run(["ctr", "--address", str(node.containerd_socket), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", ref], capture_output=True)
            subprocess.run(["ctr", "--address", str(node.containerd_socket), "-n", "k8s.io", "containers", "rm", ref], capture_output=True)
        node.load_images(images, docker=docker)

        resolv = base / "resolv.conf"
        resolv.write_text("# pods with dnsPolicy Default: no name server beyond the cluster's\nnameserver %s\n" % net.dns_ip)
        kubelet_dir = base / "kubelet"
        kubelet_dir.mkdir(exist_ok=True)
        (base / "kubelet-config.json").write_text(json.dumps(_kubelet_config(net, socket_path=node.containerd_socket, resolv=resolv), indent=1))
        kubelet_kc = _write_kubeconfig(base / "kubelet.kubeconfig", node.url, node.ca_file, tokens["kubelet"])
        kubelet = spawn("kubelet", net.in_node([
            _binary("kubelet"), f"--config={base / 'kubelet-config.json'}", f"--kubeconfig={kubelet_kc}",
            f"--root-dir={kubelet_dir}", f"--hostname-override={NODE_NAME}", f"--node-ip={net.node_ip}",
            "--v=1",
        ]), base)
        node.procs.append(kubelet)
        proxy_kc = _write_kubeconfig(base / "kube-proxy.kubeconfig", node.url, node.ca_file, tokens["proxy"])
        (base / "kube-proxy-config.json").write_text(json.dumps(_kube_proxy_config(net, kubeconfig=Path(proxy_kc)), indent=1))
        proxy = spawn("kube-proxy", net.in_node([_binary("kube-proxy"), f"--config={base / 'kube-proxy-config.json'}", "--v=1"]), base)
        node.procs.append(proxy)

        def node_ready() -> bool:
            status, n = node.api("GET", f"/api/v1/nodes/{NODE_NAME}")
            return status == 200 and any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))

        _wait("Node Ready", node_ready, deadline=deadline, procs=[api, containerd, kubelet, proxy, kcm, sched])
        for obj in _addons(net):
            node.apply(obj)

        def dns_ready() -> bool:
            pods = node.pods("kube-system", "k8s-app=kube-dns")
            statuses = [c for p in pods for c in p.get("status", {}).get("containerStatuses", [])]
            return bool(statuses) and all(c.get("ready") for c in statuses)

        try:
            _wait("CoreDNS", dns_ready, deadline=deadline, procs=[kubelet, containerd])
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{node.describe_pods('kube-system')}") from None
        _wait("cluster DNS answers", lambda: _dns_answers(net, "kubernetes.default.svc.cluster.local") == net.api_service_ip, deadline=deadline)
    except BaseException:
        if os.environ.get("IMSTACK_NODE_KEEP_ON_FAILURE") != "1":  # set it to look at a node that failed to start
            node.stop()
        raise
    return node


def _take_node_lock(run_dir: Path, *, deadline: float) -> int:
    """One node per machine (its addresses and names are fixed): a second test run waits for
    the first to stop, bounded; a node left running by `make node-up` is never torn down."""
    fd = os.open("/run/imstack-node.lock", os.O_CREAT | os.O_RDWR, 0o600)
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            sock = run_dir / "containerd.sock"
            if sock.exists() and subprocess.run(["ctr", "--address", str(sock), "version"], capture_output=True, timeout=10).returncode == 0:
                os.close(fd)
                raise RuntimeError(f"a test node is already running (containerd at {sock}): stop it with `make node-down` first")
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError("another test run holds the node (/run/imstack-node.lock) and did not finish in time") from None
            if not told:
                print("node: another test run holds the node; waiting for it", file=sys.stderr)
                told = True
            time.sleep(5)


def _dns_answers(net: NodeNetwork, name: str) -> str | None:
    """The A record for `name` from the cluster DNS Service, asked from the host over UDP."""
    query = os.urandom(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, (net.dns_ip, 53))
        reply = s.recv(512)
    if len(reply) < 16 or reply[3] & 0x0F != 0 or int.from_bytes(reply[6:8], "big") == 0:
        return None
    return ".".join(str(b) for b in reply[-4:])


def _detached_spawn(name: str, args: list[str], base: Path) -> _Proc:
    log_path = base / f"{name}.log"
    log_file = open(log_path, "wb")
    p = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=base, start_new_session=True)
    return _Proc(name, p, log_path, log_file)


# -- `make node-up` / `make node-down` --------------------------------------------------------------
def _cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.node", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--dir", default=".node", help="state and logs (default .node)")
    parser.add_argument("--images", nargs="*", default=None, help="docker images to import (default: the node tests' set)")
    args = parser.parse_args()
    base = Path(args.dir).resolve()
    state_file = base / "state.json"
    if args.action == "up":
        if state_file.exists():
            print(f"a node is already recorded in {state_file}; run `make node-down` first", file=sys.stderr)
            return 1
        from tests.node.images import build_node_images

        refs = args.images if args.images is not None else build_node_images(progress=print)
        node = start_node(base, images=refs, detach=True)
        state_file.write_text(json.dumps({"pids": {p.name: p.process.pid for p in node.procs}, "url": node.url,
                                          "kubeconfig": node.kubeconfig}, indent=1))
        print(f"node up: API {node.url}, kubeconfig {node.kubeconfig}; pods reachable from this machine on {node.net.pod_cidr}")
        return 0
    if args.action == "status":
        print(state_file.read_text() if state_file.exists() else "no node recorded")
        return 0
    state = json.loads(state_file.read_text()) if state_file.exists() else {"pids": {}}
    node = KubeNode(base=base, net=NodeNetwork(), url=state.get("url", ""), kubeconfig=state.get("kubeconfig", ""),
                    containerd_socket=Path("/run/imstack-node/containerd.sock"))
    if node.kubeconfig and Path(node.kubeconfig).exists():
        node.ca_file = str(base / "pki" / "ca.crt")
        node.token = (base / "pki" / "tokens.csv").read_text().split(",", 1)[0]
        try:
            node.delete_workloads(timeout=20)
        except Exception as exc:
            print(f"node down: deleting workloads failed ({exc}); stopping anyway", file=sys.stderr)
    for name in ("kube-proxy", "kubelet", "containerd", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
        pid = state["pids"].get(name)
        if pid:
            _stop_pid(pid)
    _kill_leftovers(node.containerd_socket, base)
    delete_network(node.net)
    state_file.unlink(missing_ok=True)
    print("node down")
    return 0


def _stop_pid(pid: int, grace: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(_cli())
