"""Starts a stack for a benchmark in its own process, on free loopback ports, and reads its
RSS and CPU time from /proc (the load generator runs in other processes)."""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class StackProcess:
    proc: subprocess.Popen
    http_url: str
    tcp_port: int
    ws_port: int
    admin_key: str
    token_key: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def start_stack(*, extra_env: dict[str, str] | None = None, idle_timeout: float = 120.0) -> StackProcess:
    http, tcp, ws = free_port(), free_port(), free_port()
    admin_key, token_key = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
    env = dict(os.environ)
    env.update(
        IMSTACK_ADMIN_KEY=admin_key,
        IMSTACK_TOKEN_KEY=token_key,
        IMSTACK_LOG_LEVEL="WARNING",
        IMSTACK_RATE_PER_S="1000000",
        IMSTACK_IDLE_TIMEOUT=str(idle_timeout),
    )
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "im_runtime.cli", "up", "--http-port", str(http), "--tcp-port", str(tcp), "--ws-port", str(ws)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stack exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).read()  # noqa: S310
            return StackProcess(proc, url, tcp, ws, admin_key, token_key)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("stack did not become healthy within 30 s")
