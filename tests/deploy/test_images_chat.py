"""The images at work: route, dispatch, TCP access and WebSocket access (`--ws`) started from the
images built by `make images` (host network, every port on 127.0.0.1) against a real ZooKeeper,
Redis and FerretDB, then a 1:1 and a group chat driven through them (chat_check.py): two users
through the client SDK over TCP, the third over WebSocket.

Also checked on the running containers: Docker's health check (the Dockerfiles' HEALTHCHECK)
turns `healthy`, /readyz answers, the logs are JSON lines and /metrics is Prometheus text.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request

import pytest

from tests.servers.backends import backends
from tests.servers.zookeeper import free_port

from . import chat_check
from .tools import run

READY_TIMEOUT = 120.0


@pytest.fixture
def stores(tmp_path):
    with backends(tmp_path) as s:
        yield s.zk, s.redis, s.mongo


class Containers:
    def __init__(self, docker: str) -> None:
        self.docker = docker
        self.names: list[str] = []
        self.prefix = f"imstack-test-{secrets.token_hex(3)}"

    def start(self, role: str, image: str, env: dict[str, str], args: tuple[str, ...] = ()) -> str:
        name = f"{self.prefix}-{role}"
        cmd = [self.docker, "run", "-d", "--name", name, "--network", "host",
               "--health-interval", "1s", "--health-start-period", "2s"]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        run([*cmd, image, *args])
        self.names.append(name)
        return name

    def state(self, name: str) -> dict:
        return json.loads(run([self.docker, "inspect", "-f", "{{json .State}}", name]).stdout)

    def logs(self, name: str) -> str:
        proc = run([self.docker, "logs", name], check=False)
        return proc.stdout + proc.stderr

    def wait_healthy(self, deadline: float) -> None:
        pending = list(self.names)
        while pending:
            for name in list(pending):
                state = self.state(name)
                assert state["Running"], f"{name} exited ({state.get('ExitCode')}):\n{self.logs(name)[-3000:]}"
                if state.get("Health", {}).get("Status") == "healthy":
                    pending.remove(name)
            if pending:
                assert time.monotonic() < deadline, (
                    f"not healthy: {pending}\n" + "\n".join(f"--- {n}\n{self.logs(n)[-2000:]}" for n in pending))
                time.sleep(0.5)

    def remove_all(self) -> None:
        for name in self.names:
            run([self.docker, "rm", "-f", name], check=False)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def wait_ready(url: str, deadline: float) -> None:
    while True:
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready"
        time.sleep(0.3)


@pytest.mark.timeout(1800)
def test_chat_through_the_images(docker, images, stores, request):
    zk, redis, mongo = stores
    tag = secrets.token_hex(4)
    ports = {k: free_port() for k in ("http", "grpc", "link", "tcp", "ws", "m_dispatch", "m_access", "m_ws")}
    admin_key = secrets.token_urlsafe(24)
    common = {
        "IMSTACK_LISTEN_HOST": "127.0.0.1",  # loopback only, though on the host network
        "IMSTACK_ADVERTISE_HOST": "127.0.0.1",
        "IMSTACK_ZK": zk.hosts,
        "IMSTACK_ZK_ROOT": f"/imstack/image-test-{tag}",
        "IMSTACK_REDIS_URL": redis.url,
        "IMSTACK_MONGO_URL": mongo.url,
        "IMSTACK_MONGO_DB": f"imstack_{tag}",
        "IMSTACK_ROUTE_GRPC": f"127.0.0.1:{ports['grpc']}",
        "IMSTACK_ADMIN_KEY": admin_key,
        "IMSTACK_TOKEN_KEY": secrets.token_urlsafe(32),
        "IMSTACK_LOG_FORMAT": "json",
    }
    c = Containers(docker)
    try:
        c.start("route", images["route"], {**common, "IMSTACK_HTTP_PORT": str(ports["http"]),
                                           "IMSTACK_GRPC_PORT": str(ports["grpc"])})
        c.start("dispatch", images["dispatch"], {**common, "IMSTACK_NODE_ID": f"dispatch-{tag}",
                                                 "IMSTACK_LINK_PORT": str(ports["link"]),
                                                 "IMSTACK_METRICS_PORT": str(ports["m_dispatch"])})
        c.start("access", images["access"], {**common, "IMSTACK_NODE_ID": f"access-{tag}",
                                             "IMSTACK_TCP_PORT": str(ports["tcp"]),
                                             "IMSTACK_METRICS_PORT": str(ports["m_access"])})
        c.start("ws-access", images["access"], {**common, "IMSTACK_NODE_ID": f"ws-access-{tag}",
                                                "IMSTACK_WS_PORT": str(ports["ws"]),
                                                "IMSTACK_METRICS_PORT": str(ports["m_ws"])}, ("--ws",))
        deadline = time.monotonic() + READY_TIMEOUT
        c.wait_healthy(deadline)  # the images' own HEALTHCHECK
        for port in (ports["http"], ports["m_dispatch"], ports["m_access"], ports["m_ws"]):
            wait_ready(f"http://127.0.0.1:{port}/readyz", deadline)

        result = asyncio.run(chat_check.run(
            route_url=f"http://127.0.0.1:{ports['http']}", access=f"127.0.0.1:{ports['tcp']}",
            ws_url=f"ws://127.0.0.1:{ports['ws']}/ws", admin_key=admin_key))
        assert result["single_seq"][1] > result["single_seq"][0]

        status, text = http_get(f"http://127.0.0.1:{ports['m_access']}/metrics")
        assert status == 200 and "# TYPE" in text
        for name in c.names:
            lines = [ln for ln in c.logs(name).splitlines() if ln.strip()]
            assert lines, f"{name} logged nothing"
            json.loads(lines[0])  # structured logs
    except BaseException:
        for name in c.names:
            print(f"--- {name}\n{c.logs(name)[-4000:]}")
        raise
    finally:
        c.remove_all()
