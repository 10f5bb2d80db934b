"""Starts a real redis-server for tests (Debian package, scripts/setup.d/10-debian-packages.sh).

Each call gets its own process on a free loopback port with persistence off (`--save ""`), so
a test may FLUSHALL or kill it without touching anything else.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tests.servers.process import stop_process

_SETUP_HINT = "run `bash scripts/setup.d/10-debian-packages.sh` (or `make setup-test-deps`)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.process, grace=10)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
            return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")  # up, wants a password
    except OSError:
        return False


def cluster_node_port() -> int:
    """A free port whose cluster bus port (port + 10000, Redis's rule) is free and valid too:
    free_port() alone hands out ports up to 60999, whose bus port a node cannot open."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a Redis Cluster node")


def start_redis(
    tmp_dir: str | Path, *, maxmemory_policy: str = "noeviction", appendonly: bool = False, extra_args: Sequence[str] = (),
    pick_port: Callable[[], int] = free_port,
) -> RedisServer:
    """extra_args: more `--directive value` pairs (e.g. rename-command to emulate managed Redis)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"redis-server is not installed: {_SETUP_HINT}")
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between probe and bind: retry
        port = pick_port()
        log_path = tmp / f"redis-{port}.log"
        args = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no",
            "--dir", str(tmp), "--maxmemory-policy", maxmemory_policy,
            "--appendonly", "yes" if appendonly else "no", "--logfile", str(log_path), *extra_args,
        ]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _ping(port):
                return RedisServer(port=port, process=process, log_path=log_path)
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        last_error = f"exit={process.returncode} stderr={stderr.strip()} log={log.strip()}"
    raise RuntimeError(f"redis-server did not start on 127.0.0.1: {last_error}")


@dataclass
class RedisCluster:
    """A real Redis Cluster: `masters` redis-servers in cluster mode, slots split by
    `redis-cli --cluster create` (no replicas)."""

    nodes: list[RedisServer]
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"redis://127.0.0.1:{self.nodes[0].port}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_redis_cluster(tmp_dir: str | Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000) -> RedisCluster:
    """`masters` masters with `replicas` replicas each; a replica takes over a master that
    stays unreachable for node_timeout_ms."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError(f"redis-cli is not installed (Debian redis-tools): {_SETUP_HINT}")
    tmp = Path(tmp_dir)
    nodes: list[RedisServer] = []
    try:
        for i in range(masters * (1 + replicas)):
            node_dir = tmp / f"node{i}"
            nodes.append(start_redis(node_dir, pick_port=cluster_node_port, extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
            ]))
        out = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        deadline = time.monotonic() + 30
        while True:  # every node must agree the cluster is up before a test uses it
            states = [
                subprocess.run([cli, "-p", str(n.port), "cluster", "info"], capture_output=True, text=True, timeout=10).stdout
                for n in nodes
            ]
            replication = [
                subprocess.run([cli, "-p", str(n.port), "info", "replication"], capture_output=True, text=True, timeout=10).stdout
                for n in nodes
            ] if replicas else []
            # ...and every replica must have finished its first sync (`cluster_state:ok` comes sooner)
            synced = sum("master_link_status:up" in r for r in replication) == masters * replicas
            if all("cluster_state:ok" in s for s in states) and synced:
                return RedisCluster(nodes)
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not ok after 30 s: {states} {replication}")
            time.sleep(0.2)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
