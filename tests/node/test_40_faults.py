"""Pods deleted mid-traffic on a real node (`kubectl delete pod`): a dispatch pod, then a
ZooKeeper pod. Nothing acked is lost or duplicated; the ImCluster says Degraded while a
component runs short of pods and Ready again after, for the current generation.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from tests.node.conftest import FIGURES
from tests.node.stream import Stream


async def _delete_and_watch(stack, component: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Deletes the first Ready pod of `component`; returns when Degraded went True (seconds
    after the delete) and when Ready came back."""
    victim = stack.ready_pods(component)[0]["metadata"]["name"]
    status, body = stack.node.api("DELETE", f"/api/v1/namespaces/{stack.namespace}/pods/{victim}")
    assert status == 200, body
    t0 = time.monotonic()
    degraded_at = None
    deadline = t0 + 240
    while time.monotonic() < deadline:
        obj = await asyncio.to_thread(stack.imcluster)
        conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        current = all(c.get("observedGeneration") == obj["metadata"]["generation"] for c in conds.values())
        if degraded_at is None and conds.get("Degraded", {}).get("status") == "True":
            assert conds["Degraded"]["reason"] == "PodsUnavailable" and component in conds["Degraded"]["message"], conds["Degraded"]
            assert conds["Ready"]["status"] == "False"
            degraded_at = time.monotonic() - t0
        if degraded_at is not None and conds["Ready"]["status"] == "True" and conds["Degraded"]["status"] == "False" and current:
            return {"degraded_after_s": round(degraded_at, 1), "ready_after_s": round(time.monotonic() - t0, 1)}
        await asyncio.sleep(0.5)
    raise AssertionError(f"{component}: Degraded seen after {degraded_at}, Ready not back in time\n{stack.describe()}\n{stack.conditions()}")


async def test_deleted_dispatch_and_zookeeper_pods_lose_nothing(stack) -> None:
    stream = await Stream(stack, pairs=5, tag=f"ft{secrets.token_hex(3)}").start()
    try:
        await asyncio.sleep(3)
        FIGURES["delete_dispatch_pod"] = await _delete_and_watch(stack, "dispatch")
        await asyncio.sleep(3)
        FIGURES["delete_zookeeper_pod"] = await _delete_and_watch(stack, "zookeeper")
        await asyncio.sleep(3)
    finally:
        counts = await stream.stop(settle_s=45)
    FIGURES["faults_stream"] = counts.as_dict()
    print("faults stream:", counts.as_dict())
    assert counts.acked > 100 and counts.lost == 0 and counts.duplicated == 0, counts
