"""A rolling upgrade on a real node: the ImCluster's image tag changes under a counted message
stream. Access pods are replaced one at a time (a new pod first, maxUnavailable 0); each old pod
drains on SIGTERM, KICKing its clients to a live pod at the drain rate. Nothing is lost or
duplicated, and the reconnects are spread over time, not a storm.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time

from im_runtime.client import ImClient
from tests.node.conftest import FIGURES
from tests.node.images import imstack_images, project_version
from tests.node.stream import Stream

NEW_TAG = f"{project_version()}-rollout"
IDLE = 60
DRAIN_RATE = 50  # node-values.yaml: access.drainRatePerSecond


async def test_rolling_upgrade_loses_nothing(stack) -> None:
    node = stack.node
    # The new release: the same images under a new tag, imported like any other.
    refs = []
    for name in ("access", "dispatch", "route"):
        old = imstack_images()[name]
        new = f"imstack/{name}:{NEW_TAG}"
        subprocess.run(["docker", "tag", old, new], check=True, capture_output=True, timeout=60)
        refs.append(new)
    await asyncio.to_thread(node.load_images, refs)

    tag = secrets.token_hex(3)
    stream = await Stream(stack, pairs=5, tag=f"up{tag}").start()
    idle: list[ImClient] = []
    reconnect_times: list[float] = []
    try:
        for i in range(IDLE):
            uid = f"idle{i}-{tag}"
            token = await asyncio.to_thread(stack.token, uid)
            idle.append(await ImClient(uid, token, http_url=stack.route_url, device_id="idle").connect())
        old_pods = {p["metadata"]["name"] for p in stack.pods("access")}
        generation = stack.imcluster()["metadata"]["generation"]
        status, body = node.api("PATCH", f"/apis/imstack.io/v1alpha1/namespaces/{stack.namespace}/imclusters/{stack.name}",
                                {"spec": {"image": {"tag": NEW_TAG}}}, content_type="application/merge-patch+json")
        assert status == 200, body
        t0 = time.monotonic()
        seen = [c.reconnects for c in idle]

        def rolled() -> bool:
            pods = stack.pods("access")
            names = {p["metadata"]["name"] for p in pods}
            images = {c["image"] for p in pods for c in p["spec"]["containers"]}
            return not (names & old_pods) and images == {f"imstack/access:{NEW_TAG}"}

        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            for i, c in enumerate(idle):
                if c.reconnects != seen[i]:
                    reconnect_times.extend([time.monotonic()] * (c.reconnects - seen[i]))
                    seen[i] = c.reconnects
            if rolled() and all(c.connected.is_set() for c in idle):
                break
            await asyncio.sleep(0.1)
        assert rolled(), f"access pods not replaced in time\n{stack.describe()}"
        FIGURES["rollout_access_pods_replaced_s"] = round(time.monotonic() - t0, 1)
        FIGURES["rollout_ready_s"] = round(await asyncio.to_thread(stack.wait_ready, timeout=300) + time.monotonic() - t0, 1)
        assert stack.imcluster()["status"]["conditions"][0]["observedGeneration"] == generation + 1
        for component in ("dispatch", "route", "ws-access"):
            images = {c["image"] for p in stack.ready_pods(component) for c in p["spec"]["containers"]}
            assert images == {f"imstack/{component.replace('ws-', '')}:{NEW_TAG}"}, (component, images)
    finally:
        counts = await stream.stop()
        await asyncio.gather(*(c.close() for c in idle))
    FIGURES["rollout_stream"] = counts.as_dict()
    print("rollout stream:", counts.as_dict(), "idle reconnects:", len(reconnect_times))
    assert counts.acked > 100 and counts.lost == 0 and counts.duplicated == 0 and counts.failed == 0, counts
    # Every idle client moved (its pod was replaced) about once, spread at the drain rate.
    assert IDLE <= len(reconnect_times) <= 2 * IDLE, len(reconnect_times)
    spread = max(reconnect_times) - min(reconnect_times)
    FIGURES["rollout_idle_reconnects"] = len(reconnect_times)
    FIGURES["rollout_reconnect_spread_s"] = round(spread, 2)
    assert spread >= (IDLE - 1) / DRAIN_RATE * 0.8, f"{len(reconnect_times)} reconnects within {spread:.2f}s: faster than {DRAIN_RATE}/s"
