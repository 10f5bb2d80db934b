"""kopf wiring: thin handlers that gather inputs and apply outputs (STYLE 7).

- create / update (spec) / resume: one reconcile pass without an autoscaling step, so a spec
  change shows at once.
- a periodic loop every `IMSTACK_OPERATOR_INTERVAL` seconds (default 10), started once at
  operator startup: it lists the ImClusters and runs a full pass with one autoscaling step on
  each. It is also what puts back a child deleted or edited by hand.

Why not `kopf.timer`: kopf puts a finalizer on every object that has a timer or daemon, so an
ImCluster could then only be deleted while the operator runs (an uninstalled operator leaves
it hanging in Terminating). With a plain loop no finalizer is ever added and deletion is
garbage collection alone. Every pass goes through the same per-ImCluster lock in `Reconciler`,
and the loop reads each ImCluster fresh from the API, so the autoscaler never acts on stale
status. Status is written with a merge patch of the status subresource.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from typing import Any

import kopf

from .crd import GROUP, KIND, PLURAL, VERSION
from .kubeapi import Kube, KubeError
from .reconcile import Reconciler
from .zk import ZkPool

log = logging.getLogger(__name__)

INTERVAL = float(os.environ.get("IMSTACK_OPERATOR_INTERVAL", "10"))
# Comma-separated namespaces to watch (set by main from --namespace); empty: all.
NAMESPACES = [n for n in os.environ.get("IMSTACK_OPERATOR_NAMESPACES", "").split(",") if n]

_state: dict[str, Any] = {}


def post_event(kube: Kube, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    md = body["metadata"]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": md["name"], "namespace": md["namespace"], "uid": md["uid"]},
        "type": type_,
        "reason": reason,
        "message": message[:1000],
        "source": {"component": "imstack-operator"},
        "reportingComponent": "imstack-operator",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        kube.request("POST", f"/api/v1/namespaces/{md['namespace']}/events", body=event)
    except KubeError as e:  # an Event lost is logged, never fatal
        log.warning("event %s for %s/%s not posted: %s", reason, md["namespace"], md["name"], e)


def _cr_path(namespace: str | None = None, name: str | None = None) -> str:
    p = f"/apis/{GROUP}/{VERSION}"
    if namespace:
        p += f"/namespaces/{namespace}"
    p += f"/{PLURAL}"
    return p + (f"/{name}" if name else "")


def _pass(body: dict[str, Any], *, autoscale: bool) -> dict[str, Any]:
    rec: Reconciler = _state["reconciler"]
    return rec.reconcile(body, emit=lambda t, r, m: post_event(rec.kube, body, t, r, m), autoscale=autoscale)


def _tick_all() -> None:
    rec: Reconciler = _state["reconciler"]
    bodies: list[dict[str, Any]] = []
    for ns in NAMESPACES or [None]:
        bodies += rec.kube.request("GET", _cr_path(ns)).get("items", [])
    for body in bodies:
        md = body["metadata"]
        if md.get("deletionTimestamp"):
            continue
        try:
            status = _pass(body, autoscale=True)
            rec.kube.request("PATCH", _cr_path(md["namespace"], md["name"]) + "/status", body={"status": status},
                             content_type="application/merge-patch+json")
        except KubeError as e:
            if e.status != 404:  # 404: deleted meanwhile
                log.warning("reconcile of %s/%s failed: %s", md["namespace"], md["name"], e)
        except Exception:  # noqa: BLE001 - one bad ImCluster must not stop the others
            log.exception("reconcile of %s/%s failed", md["namespace"], md["name"])


async def _loop() -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await asyncio.to_thread(_tick_all)
        except Exception:  # noqa: BLE001 - e.g. the API server briefly away; next round retries
            log.exception("periodic reconcile failed")
        await asyncio.sleep(max(0.05, INTERVAL - (loop.time() - started)))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.standalone = True
    # Progress in annotations only: status belongs to the ImCluster's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="imstack.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="imstack.io")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    _state["reconciler"] = Reconciler(Kube(), ZkPool())
    _state["task"] = asyncio.create_task(_loop())


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    task = _state.pop("task", None)
    if task is not None:
        task.cancel()
    rec = _state.pop("reconciler", None)
    if rec is not None:
        rec.zkpool.close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def apply_spec(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    for key, value in _pass(dict(body), autoscale=False).items():
        patch.status[key] = value


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(uid: str, **_: Any) -> None:
    # optional=True: no finalizer; the children go by garbage collection (owner references).
    rec: Reconciler | None = _state.get("reconciler")
    if rec is not None:
        rec.forget(uid)
