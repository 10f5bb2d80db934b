"""Real ZooKeeper, Redis and FerretDB once per session; role processes per test.

Each test gets its own ZooKeeper root and Mongo database / Redis db so topologies of different
tests never see each other. Processes are started with `python -m im_runtime.cli <role>`, are
ready when their /readyz says so (bounded polling), and are always killed in teardown.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers.backends import Servers, backends
from tests.servers.redis import RedisServer, free_port, start_redis

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Servers:
    with backends(tmp_path_factory.mktemp("cluster-servers")) as started:
        yield started


def http_json(url: str, *, method: str = "GET", body: dict | None = None, key: str | None = None, timeout: float = 5.0):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {}),
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        return resp.status, json.loads(resp.read() or b"null")


@dataclass
class Proc:
    name: str
    role: str
    process: subprocess.Popen
    log_path: Path
    ports: dict[str, int]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


@dataclass
class Topology:
    servers: Servers
    base: Path
    zk_root: str = field(default_factory=lambda: f"/imstack/t-{uuid.uuid4().hex[:8]}")
    mongo_db: str = field(default_factory=lambda: f"imstack_{uuid.uuid4().hex[:8]}")
    admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    token_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    procs: list[Proc] = field(default_factory=list)
    grpc_port: int = 0
    http_port: int = 0
    redis: RedisServer | None = None  # a Redis of this test's own (restart_redis); else the session's
    extra_env: dict[str, str] = field(default_factory=dict)  # settings of one test (webhook URL, ...)

    @property
    def redis_url(self) -> str:
        return (self.redis or self.servers.redis).url

    def own_redis(self) -> RedisServer:
        """A Redis for this test alone, so that it may kill and restart it (stopped in teardown)."""
        self.redis = start_redis(self.base / "redis")
        return self.redis

    def restart_redis(self) -> float:
        """SIGKILL of this test's Redis, then a new empty one (no persistence) on the same port:
        everything Redis held is lost. Returns the seconds it was away."""
        assert self.redis is not None, "own_redis() first"
        port = self.redis.port
        began = time.monotonic()
        self.redis.process.kill()
        self.redis.process.wait(timeout=10)
        self.redis = start_redis(self.base / "redis", pick_port=lambda: port)
        return time.monotonic() - began

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            IMSTACK_ZK=self.servers.zk.hosts,
            IMSTACK_ZK_ROOT=self.zk_root,
            IMSTACK_REDIS_URL=self.redis_url,
            IMSTACK_MONGO_URL=self.servers.mongo.url,
            IMSTACK_MONGO_DB=self.mongo_db,
            IMSTACK_ROUTE_GRPC=f"127.0.0.1:{self.grpc_port}",
            IMSTACK_ADMIN_KEY=self.admin_key,
            IMSTACK_TOKEN_KEY=self.token_key,
            IMSTACK_LOG_FORMAT="json",
            IMSTACK_RATE_PER_S="100000",
            IMSTACK_ZK_SESSION_TIMEOUT="4",
            IMSTACK_DEDUP_PENDING_TTL="3",
            PYTHONPATH=str(ROOT),
        ) | self.extra_env

    def _spawn(self, role: str, name: str, args: list[str], ports: dict[str, int]) -> Proc:
        log_path = self.base / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "im_runtime.cli", role, "--node-id", name, *args],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            )
        proc = Proc(name, role, process, log_path, ports)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}")
            try:
                status, body = http_json(url, timeout=2)
                if status == 200:
                    return
                last = str(body)
            except (OSError, urllib.error.HTTPError) as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"{proc.name} not ready in {timeout}s ({last}):\n{proc.log_tail()}")

    def start_route(self) -> Proc:
        self.grpc_port, self.http_port = free_port(), free_port()
        proc = self._spawn("route", "route-1", ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)],
                           {"grpc": self.grpc_port, "http": self.http_port})
        self.wait_ready(proc, f"{self.http_url}/readyz")
        return proc

    def start_dispatch(self, name: str) -> Proc:
        link, metrics = free_port(), free_port()
        proc = self._spawn("dispatch", name, ["--link-port", str(link), "--metrics-port", str(metrics)], {"link": link, "metrics": metrics})
        self.wait_ready(proc, f"http://127.0.0.1:{metrics}/readyz")
        return proc

    def start_access(self, name: str, *, wait: bool = True, ws: bool = False) -> Proc:
        port, metrics = free_port(), free_port()
        kind = "ws" if ws else "tcp"
        args = ["--port", str(port), "--metrics-port", str(metrics)] + (["--ws"] if ws else [])
        proc = self._spawn("access", name, args, {kind: port, "metrics": metrics})
        if wait:
            self.wait_ready(proc, f"http://127.0.0.1:{metrics}/readyz")
        return proc

    def token(self, uid: str) -> str:
        from im_runtime.route.tokens import TokenSigner

        return TokenSigner(self.token_key.encode()).mint(uid).token

    def create_group(self, group_id: str, members: list[str]) -> None:
        status, _ = http_json(f"{self.http_url}/v1/groups", method="POST", body={"group_id": group_id, "members": members}, key=self.admin_key)
        assert status == 201

    def stop(self) -> None:
        for proc in self.procs:
            if proc.alive:
                proc.process.kill()
        for proc in self.procs:
            try:
                proc.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture
def topology(servers, tmp_path) -> Topology:
    topo = Topology(servers, tmp_path)
    yield topo
    topo.stop()
