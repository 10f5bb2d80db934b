"""Status that tells the truth (pure).

Conditions are computed from what was observed this reconcile, never from what was intended:
a component counts as ready only when its workload's status says so, and `Ready` is True only
when every component is. Each condition keeps its `lastTransitionTime` until its status flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class ComponentStatus:
    desired: int
    ready: int
    updated: int | None = None  # pods at the current template (rollouts); None if unknown
    observed_current: bool = True  # workload status observedGeneration == its generation
    rolling: bool = False  # a rollout to a new template is under way


def workload_status(obj: dict[str, Any] | None) -> ComponentStatus:
    if obj is None:
        return ComponentStatus(desired=0, ready=0, observed_current=False)
    spec, st = obj.get("spec", {}), obj.get("status") or {}
    desired = int(spec.get("replicas", 1))
    gen = obj.get("metadata", {}).get("generation")
    observed = st.get("observedGeneration")
    updated = st.get("updatedReplicas")
    if obj.get("kind") == "StatefulSet":
        # A StatefulSet counts only existing pods as updated: a deleted pod lowers the count
        # without any rollout, so the revisions tell instead.
        rolling = bool(st.get("updateRevision")) and st.get("currentRevision") != st.get("updateRevision")
    else:
        rolling = updated is not None and int(updated) < desired
    return ComponentStatus(
        desired=desired,
        ready=int(st.get("readyReplicas", 0) or 0),
        updated=updated,
        observed_current=observed is not None and gen is not None and observed >= gen,
        rolling=rolling,
    )


def _cond(type_: str, ok: bool, reason: str, message: str, *, prev: dict[str, dict], now: str, generation: int | None) -> dict:
    status = "True" if ok else "False"
    old = prev.get(type_)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else now
    c = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        c["observedGeneration"] = generation
    return c


def lost_pods(components: dict[str, ComponentStatus], previous_components: dict[str, dict[str, int]] | None,
              previous: dict[str, dict]) -> list[str]:
    """Components running below their desired count with no change asked for: they were fully
    ready at this desired count before (or already reported so) and no rollout is under way.
    A pod that died, was evicted or deleted makes its component degraded until it is back;
    new pods of a fresh, scaled or rolling component only make it progress."""
    was_degraded = (previous.get("Degraded") or {}).get("reason") == "PodsUnavailable"
    out = []
    for name, c in components.items():
        if c.ready >= c.desired or not c.observed_current or c.rolling:
            continue
        before = (previous_components or {}).get(name) or {}
        was_ready = before.get("desiredReplicas") == c.desired and before.get("readyReplicas", 0) >= c.desired
        if was_ready or (was_degraded and f"{name} " in (previous.get("Degraded") or {}).get("message", "")):
            out.append(f"{name} {c.ready}/{c.desired}")
    return out


def conditions(
    *,
    previous: Iterable[dict] | None,
    now: str,
    generation: int | None,
    problems: list[str],
    errors: list[str],
    components: dict[str, ComponentStatus],
    autoscaling_ok: bool,
    autoscaling_reason: str,
    autoscaling_message: str,
    previous_components: dict[str, dict[str, int]] | None = None,
) -> list[dict]:
    prev = {c.get("type"): c for c in (previous or [])}
    lost = lost_pods(components, previous_components, prev)
    not_ready = [
        f"{name} {c.ready}/{c.desired}" for name, c in components.items() if c.ready < c.desired or not c.observed_current
    ]
    kw = dict(prev=prev, now=now, generation=generation)
    if problems:
        degraded = _cond("Degraded", True, "InvalidSpec", "; ".join(problems), **kw)
    elif errors:
        degraded = _cond("Degraded", True, "ReconcileFailed", "; ".join(errors)[:1000], **kw)
    elif lost:
        degraded = _cond("Degraded", True, "PodsUnavailable", "running below the desired count: " + ", ".join(lost), **kw)
    else:
        degraded = _cond("Degraded", False, "AsExpected", "", **kw)
    if problems:
        progressing = _cond("Progressing", False, "InvalidSpec", "fix the spec to continue", **kw)
        ready = _cond("Ready", False, "InvalidSpec", "; ".join(problems), **kw)
    elif not_ready:
        progressing = _cond("Progressing", True, "ComponentsNotReady", "waiting for " + ", ".join(not_ready), **kw)
        ready = _cond("Ready", False, "ComponentsNotReady", "not ready: " + ", ".join(not_ready), **kw)
    elif errors:
        progressing = _cond("Progressing", False, "ReconcileFailed", "; ".join(errors)[:1000], **kw)
        ready = _cond("Ready", False, "ReconcileFailed", "; ".join(errors)[:1000], **kw)
    else:
        progressing = _cond("Progressing", False, "Stable", "every component is at its desired state", **kw)
        ready = _cond("Ready", True, "AllComponentsReady", f"{len(components)} components ready", **kw)
    autoscaling = _cond("AutoscalingActive", autoscaling_ok, autoscaling_reason, autoscaling_message, **kw)
    return [ready, progressing, degraded, autoscaling]


def component_summary(components: dict[str, ComponentStatus]) -> dict[str, dict[str, int]]:
    return {name: {"desiredReplicas": c.desired, "readyReplicas": c.ready} for name, c in components.items()}
