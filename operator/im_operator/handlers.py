"""kopf wiring: thin handlers that gather inputs and apply outputs (STYLE 7).

- create / update (spec) / resume: one reconcile pass without an autoscaling step, so a spec
  change shows at once.
- a timer every `IMSTACK_OPERATOR_INTERVAL` seconds (default 10): a full pass with one
  autoscaling step. The timer is also what puts back a child deleted or edited by hand.
Both go through the same per-ImCluster lock in `Reconciler`, so they never interleave.
Status is written through kopf's status patch; scale and error Events through `kopf.event`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from .crd import GROUP, PLURAL, VERSION
from .kubeapi import Kube
from .reconcile import Reconciler
from .zk import ZkPool

INTERVAL = float(os.environ.get("IMSTACK_OPERATOR_INTERVAL", "10"))

_state: dict[str, Any] = {}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.standalone = True
    # Progress in annotations only: status belongs to the ImCluster's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="imstack.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="imstack.io")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    _state["reconciler"] = Reconciler(Kube(), ZkPool())


@kopf.on.cleanup()
def shutdown(**_: Any) -> None:
    rec = _state.pop("reconciler", None)
    if rec is not None:
        rec.zkpool.close()


def _run(body: kopf.Body, patch: kopf.Patch, *, autoscale: bool) -> None:
    rec: Reconciler = _state["reconciler"]

    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message[:1000])

    result = rec.reconcile(dict(body), emit=emit, autoscale=autoscale)
    for key, value in result.items():
        patch.status[key] = value


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def apply_spec(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run(body, patch, autoscale=False)


@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL, initial_delay=min(INTERVAL, 1.0))
def tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run(body, patch, autoscale=True)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(uid: str, **_: Any) -> None:
    # optional=True: no finalizer; the children go by garbage collection (owner references).
    rec: Reconciler | None = _state.get("reconciler")
    if rec is not None:
        rec.forget(uid)
