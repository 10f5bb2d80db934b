"""Memory per idle WebSocket connection (issue 4: at most 16 KiB at 10,000 connections).

`imstack up` runs in its own process so its RSS is the gateway's alone; a lean load
generator (tests/web/ws_load.py) opens authenticated idle connections from this process.
The test uses 2,000 connections to stay quick; `python -m tests.web.test_ws_memory 10000`
gives the 10,000-connection figure for docs/benchmarks.md.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from im_runtime.route.tokens import TokenSigner
from tests.web.ws_load import open_idle

ROOT = Path(__file__).resolve().parents[2]
TOKEN_KEY = "ws-memory-token-key-0123456789"
TARGET_BYTES = 16 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _ws_connections(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/iplist", timeout=5) as resp:  # noqa: S310
        return sum(e["connections"] for e in json.loads(resp.read())["ws"])


async def _wait_connections(http_port: int, expected: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (n := await asyncio.to_thread(_ws_connections, http_port)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{n} ws connections, expected {expected}")
        await asyncio.sleep(0.2)


async def measure(count: int, *, warmup: int = 200) -> dict[str, float]:
    """Starts a stack, opens warmup then `count` authenticated idle connections; RSS figures."""
    http_port, tcp_port, ws_port = _free_port(), _free_port(), _free_port()
    env = os.environ | {
        "IMSTACK_HTTP_PORT": str(http_port),
        "IMSTACK_TCP_PORT": str(tcp_port),
        "IMSTACK_WS_PORT": str(ws_port),
        "IMSTACK_TOKEN_KEY": TOKEN_KEY,
        "IMSTACK_ADMIN_KEY": "ws-memory-admin",
        "IMSTACK_IDLE_TIMEOUT": "3600",
        "IMSTACK_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "im_runtime.cli", "up"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    transports = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await asyncio.to_thread(_ws_connections, http_port)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"imstack up did not start: {proc.stderr.read() if proc.stderr else ''}")
                await asyncio.sleep(0.2)
        signer = TokenSigner(TOKEN_KEY.encode())
        token_for = lambda uid: signer.mint(uid).token  # noqa: E731
        transports += await open_idle("127.0.0.1", ws_port, warmup, token_for=token_for, uid_prefix="warm")
        await _wait_connections(http_port, warmup)
        await asyncio.sleep(1)
        before = _rss(proc.pid)
        started = time.monotonic()
        transports += await open_idle(
            "127.0.0.1", ws_port, count, token_for=token_for, uid_prefix="idle", first_source=10
        )
        open_s = time.monotonic() - started
        await _wait_connections(http_port, warmup + count)
        await asyncio.sleep(2)  # let the loop settle (freed handshake buffers)
        after = _rss(proc.pid)
        return {
            "connections": count,
            "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20,
            "bytes_per_connection": (after - before) / count,
            "open_seconds": open_s,
        }
    finally:
        for t in transports:
            t.abort()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.timeout(180)
async def test_idle_authenticated_ws_connection_costs_at_most_16_kib():
    figures = await measure(2_000)
    assert figures["bytes_per_connection"] <= TARGET_BYTES, figures


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(json.dumps(asyncio.run(measure(n)), indent=1))
