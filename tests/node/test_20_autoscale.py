"""Autoscaling from real load on a real node (K3): the access pods publish the connections real
clients hold, the operator adds pods, new clients land on them through ipList; when the load
goes, the emptiest pod is drained (its clients KICKed to another pod, at the drain rate) and
removed, the busiest never. A counted message stream runs through all of it.

tests/node/node-values.yaml: targetConnectionsPerPod 100, 1..3 pods, 20 s stabilization,
drain rate 50/s.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time

from im_runtime.client import ImClient
from tests.node.conftest import FIGURES
from tests.node.stream import Stream

LOAD = 250  # idle clients on the first pod: ceil(250 / 100) = 3 pods
ON_BUSIEST, ON_SECOND = 40, 16


async def _clients(stack, n: int, *, tag: str, host: str | None = None) -> list[ImClient]:  # type: ignore[no-untyped-def]
    """n signed-in SDK clients: on `host` directly, or wherever ipList sends each one."""
    out: list[ImClient] = []
    for i in range(n):
        uid = f"{tag}{i}"
        token = await asyncio.to_thread(stack.token, uid)
        if host:
            client = ImClient(uid, token, host=host, port=9000, device_id="load", heartbeat_s=10)
        else:
            client = ImClient(uid, token, http_url=stack.route_url, device_id="load", heartbeat_s=10)
        await asyncio.wait_for(client.connect(), 30)
        out.append(client)
    return out


async def _close(clients: list[ImClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


def _connections(ip: str) -> int:
    """Authenticated connections an access pod reports on its own /metrics (ipList leaves a
    draining pod out, so it cannot say)."""
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=3) as r:  # noqa: S310
            text = r.read().decode()
    except OSError:
        return 0
    m = re.search(r'^imstack_authenticated_connections\{kind="tcp"\} ([0-9.e+]+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


async def _time_reconnects(clients: list[ImClient], times: list[float]) -> None:
    """Appends the time of each client's first reconnect (sampled every 10 ms) until cancelled."""
    before = [c.reconnects for c in clients]
    moved: set[int] = set()
    while len(moved) < len(clients):
        for i, c in enumerate(clients):
            if i not in moved and c.reconnects != before[i]:
                times.append(time.monotonic())
                moved.add(i)
        await asyncio.sleep(0.01)


def _access_pods(stack) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """pod IP -> pod name of the Ready, not terminating access pods."""
    return {p["status"]["podIP"]: p["metadata"]["name"] for p in stack.ready_pods("access")}


async def _wait(check, *, timeout: float, what: str, stack, interval: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n{stack.describe()}\n{stack.imcluster().get('status')}")


async def test_access_pods_follow_the_connections(stack) -> None:
    tag = secrets.token_hex(3)
    first = _access_pods(stack)
    assert len(first) == 1, first
    (first_ip, first_pod), = first.items()
    stream = await Stream(stack, pairs=5, tag=f"as{tag}").start()
    load: list[ImClient] = []
    late: list[ImClient] = []
    watcher: asyncio.Task[None] | None = None
    try:
        # Load rises: LOAD real clients on the one pod.
        load = await _clients(stack, LOAD, tag=f"ld{tag}-", host=first_ip)
        t_loaded = time.monotonic()
        await _wait(lambda: sum(n["connections"] for n in stack.iplist()["tcp"]) >= LOAD, timeout=30, stack=stack,
                    what="the access pod to publish its connections")
        t_published = time.monotonic()
        pods = await _wait(lambda: (p if len(p := _access_pods(stack)) >= 2 else None), timeout=180, stack=stack,
                           what="a second access pod")
        t_second = time.monotonic()
        pods = await _wait(lambda: (p if len(p := _access_pods(stack)) == math.ceil((LOAD + 10) / 100) else None),
                           timeout=180, stack=stack, what="three access pods")
        t_third = time.monotonic()
        FIGURES["scale_up_first_pod_ready_s"] = round(t_second - t_loaded, 1)
        FIGURES["scale_up_all_pods_ready_s"] = round(t_third - t_loaded, 1)
        FIGURES["scale_up_counts_published_s"] = round(t_published - t_loaded, 1)
        assert stack.imcluster()["status"]["autoscaling"]["desiredReplicas"] == 3
        new_ips = set(pods) - {first_ip}
        await _wait(lambda: {n["host"] for n in stack.iplist()["tcp"]} == set(pods), timeout=30, stack=stack,
                    what="ipList to list the new pods")

        # New clients land on the new pods through ipList (least loaded first).
        late = await _clients(stack, ON_BUSIEST, tag=f"lt{tag}-")
        assert {c.host for c in late} <= new_ips, {c.host for c in late}
        busiest_ip = max(new_ips, key=lambda ip: sum(c.host == ip for c in late))
        await asyncio.sleep(4)  # a fresh count from every pod (every 3 s), so ipList sees the busiest
        second = await _clients(stack, ON_SECOND, tag=f"l2{tag}-")
        assert all(c.host != busiest_ip and c.host in new_ips for c in second), {c.host for c in second}
        late += second
        busiest_pod = pods[busiest_ip]

        # Load goes: the first pod empties; the stabilization window must pass before anything
        # is removed, then pods go one at a time, emptiest first.
        await _close(load)
        load = []
        t_dropped = time.monotonic()
        # The operator's status shows a drain only after it began, and 16 KICKs at 50/s take a third
        # of a second: so the counts are sampled before any drain, and the KICKs timed client-side.
        kicked_at: list[float] = []
        watcher = asyncio.create_task(_time_reconnects(second, kicked_at))
        last_count = {ip: await asyncio.to_thread(_connections, ip) for ip in pods}
        drains: list[tuple[str, float, int]] = []  # node id, when the drain was seen, its connections before
        emptied: dict[str, float] = {}  # node id -> when its connections reached 0
        gone: dict[str, float] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = (await asyncio.to_thread(stack.imcluster)).get("status", {})
            drain = status.get("autoscaling", {}).get("tcp", {}).get("drain")
            if drain and all(d[0] != drain["nodeId"] for d in drains):
                ip = next((i for i, name in pods.items() if name == drain["nodeId"]), None)
                drains.append((drain["nodeId"], time.monotonic(), last_count.get(ip, 0) if ip else 0))
            if not drain:
                for ip, name in pods.items():
                    if all(d[0] != name for d in drains):
                        last_count[ip] = await asyncio.to_thread(_connections, ip)
            for node_id, _, _ in drains:
                ip = next((i for i, name in pods.items() if name == node_id), None)
                if node_id not in emptied and ip and await asyncio.to_thread(_connections, ip) == 0:
                    emptied[node_id] = time.monotonic()
            now_pods = {p["metadata"]["name"] for p in await asyncio.to_thread(stack.pods, "access")}
            for name in pods.values():
                if name not in now_pods and name not in gone:
                    gone[name] = time.monotonic()
            assert busiest_pod in now_pods, f"the busiest pod {busiest_pod} was removed; drains {drains}"
            if len(gone) == 2 and len(now_pods) == 1:
                break
            await asyncio.sleep(0.5)
        assert len(gone) == 2, f"expected two pods removed, got {gone}; drains {drains}\n{stack.describe()}"
        assert busiest_pod not in gone and set(gone) == set(pods.values()) - {busiest_pod}
        assert [d[0] for d in drains] and {d[0] for d in drains} <= set(gone), drains
        first_drain_at = min(t for _, t, _ in drains)
        assert first_drain_at - t_dropped >= 15, f"drained {first_drain_at - t_dropped:.1f}s after the load went (window 20 s)"
        # The drain of the pod that still held clients: they were KICKed to the busiest pod.
        held = [d for d in drains if d[2] > 0]
        assert held, f"no drained pod held clients: {drains}"
        FIGURES["drains"] = [{"clients": n, "to_empty_s": round(emptied.get(node_id, gone[node_id]) - at, 1),
                              "to_pod_gone_s": round(gone[node_id] - at, 1)} for node_id, at, n in drains]
        # KICKs go out at the drain rate (50/s): n clients take about n / 50 s, never all at once.
        await _wait(lambda: len(kicked_at) >= len(second), timeout=30, stack=stack, what="every client of the drained pod to reconnect")
        watcher.cancel()
        kick_spread = max(kicked_at) - min(kicked_at)
        FIGURES["drain_kick_spread_s"] = {"clients": len(second), "spread_s": round(kick_spread, 2)}
        assert kick_spread >= (len(second) - 1) / 50 * 0.8, f"{len(second)} clients KICKed within {kick_spread:.2f}s: faster than the drain rate"
        FIGURES["scale_down_first_drain_after_load_drop_s"] = round(first_drain_at - t_dropped, 1)
        await _wait(lambda: all(h["host"] == busiest_ip for h in stack.iplist()["tcp"]), timeout=30, stack=stack,
                    what="ipList to list only the busiest pod")
        await asyncio.sleep(3)
        moved = [c for c in second if c.connected.is_set()]
        assert all(c.host == busiest_ip for c in moved), {c.host for c in moved}
        assert all(c.reconnects >= 1 for c in second), [c.reconnects for c in second]
    finally:
        if watcher:
            watcher.cancel()
        await _close(load + late)
        counts = await stream.stop()
    FIGURES["autoscale_stream"] = counts.as_dict()
    print("autoscale stream:", counts.as_dict())
    assert counts.acked > 100 and counts.lost == 0 and counts.duplicated == 0, counts
    assert counts.failed == 0, counts
