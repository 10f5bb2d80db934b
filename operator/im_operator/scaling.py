"""Connection counts over time -> one scaling step (pure; STYLE 7).

The access pods publish their client-connection counts in ZooKeeper; the operator samples them
every reconcile and calls `step()`, which returns the next state and at most one action:

- desired = ceil(total / target), clamped to [min, max].
- Up: at once, straight to desired (a connection storm must not wait). A pending drain is
  cancelled, since its capacity is needed again.
- Down: only when every recommendation in the last `stabilization_s` was below the current
  count (the HPA's rule, so a noisy count never flaps), and only one pod at a time:
  start draining the pod with the fewest connections (never the busiest), wait until it is
  empty or the drain timeout passes, then lower replicas by one (the operator first sets
  `controller.kubernetes.io/pod-deletion-cost` so the ReplicaSet removes that same pod).

State is plain data so the operator can keep it in the ImCluster status (it survives a restart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Iterable


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    target_per_pod: int
    stabilization_s: float
    drain_timeout_s: float


@dataclass(frozen=True)
class PodLoad:
    """One access registration: `<root>/access/<kind>/<node_id>`."""

    node_id: str
    connections: int
    draining: bool = False
    pod: str = ""  # the Kubernetes pod (the node_id there); for pod-deletion-cost


@dataclass(frozen=True)
class Drain:
    node_id: str
    started_at: float
    deadline: float


@dataclass(frozen=True)
class State:
    replicas: int
    # (time, desired) samples within the stabilization window, oldest first, desired decreasing.
    history: tuple[tuple[float, int], ...] = ()
    drain: Drain | None = None
    last_reason: str = ""
    last_scale_at: float | None = None
    # No scale-down before this: a full window after the operator started, after a scale-up and
    # after a cancelled drain. A finished drain does not reset it, so a long way down still goes
    # one pod per drain, without waiting a whole window between pods.
    hold_until: float | None = None


class Kind(str, Enum):
    NONE = "None"
    SCALE_UP = "ScaleUp"
    START_DRAIN = "StartDrain"
    CANCEL_DRAIN = "CancelDrain"
    SCALE_DOWN = "ScaleDown"  # a drain finished: lower replicas by one


@dataclass(frozen=True)
class Action:
    kind: Kind
    replicas: int
    reason: str = ""
    node_id: str | None = None  # the drained pod (START_DRAIN, CANCEL_DRAIN, SCALE_DOWN)


@dataclass(frozen=True)
class Result:
    state: State
    action: Action
    desired: int  # this sample's clamped recommendation
    total: int
    stable_desired: int  # highest recommendation in the window: what a scale-down may go to
    notes: list[str] = field(default_factory=list)


def desired_replicas(total: int, policy: Policy) -> int:
    raw = math.ceil(total / policy.target_per_pod) if total > 0 else 0
    return max(policy.min_replicas, min(policy.max_replicas, raw))


def step(state: State, loads: Iterable[PodLoad], *, now: float, policy: Policy) -> Result:
    loads = list(loads)
    total = sum(max(0, p.connections) for p in loads)
    desired = desired_replicas(total, policy)
    # A monotonic queue: a sample is dropped once a later one is at least as high, since the
    # window's maximum can no longer be it. The history stays a few entries long.
    kept = [(t, d) for t, d in state.history if now - t < policy.stabilization_s]
    while kept and kept[-1][1] <= desired:
        kept.pop()
    history = tuple(kept) + ((now, desired),)
    stable = history[0][1]
    hold_until = state.hold_until if state.hold_until is not None else now + policy.stabilization_s
    state = replace(state, history=history, hold_until=hold_until)

    def result(s: State, a: Action) -> Result:
        return Result(state=s, action=a, desired=desired, total=total, stable_desired=stable)

    # Out of bounds (min/max edited): move into them at once, no drain for a max cut.
    bounded = max(policy.min_replicas, min(policy.max_replicas, state.replicas))
    if bounded != state.replicas and state.drain is None:
        reason = f"replicas {state.replicas} outside [{policy.min_replicas}, {policy.max_replicas}]"
        s = replace(state, replicas=bounded, last_reason=reason, last_scale_at=now)
        kind = Kind.SCALE_UP if bounded > state.replicas else Kind.SCALE_DOWN
        return result(s, Action(kind, bounded, reason))

    if desired > state.replicas:
        reason = f"{total} connections need {desired} pods at {policy.target_per_pod} per pod"
        if state.drain is not None:
            # The drained pod's capacity is needed: stop the drain; the scale-up follows next step.
            s = replace(state, drain=None, hold_until=now + policy.stabilization_s)
            return result(s, Action(Kind.CANCEL_DRAIN, state.replicas, f"drain cancelled: {reason}", state.drain.node_id))
        s = replace(state, replicas=desired, last_reason=reason, last_scale_at=now, hold_until=now + policy.stabilization_s)
        return result(s, Action(Kind.SCALE_UP, desired, reason))

    if state.drain is not None:
        d = state.drain
        if stable >= state.replicas:
            s = replace(state, drain=None, hold_until=now + policy.stabilization_s)
            return result(s, Action(Kind.CANCEL_DRAIN, state.replicas, "load came back during the drain", d.node_id))
        pod = next((p for p in loads if p.node_id == d.node_id), None)
        if pod is None or pod.connections == 0 or now >= d.deadline:
            why = "gone" if pod is None else ("empty" if pod.connections == 0 else f"drain timeout with {pod.connections} connections left")
            n = state.replicas - 1
            reason = f"drained {d.node_id} ({why}); {total} connections need {stable} pods"
            s = replace(state, replicas=n, drain=None, last_reason=reason, last_scale_at=now)
            return result(s, Action(Kind.SCALE_DOWN, n, reason, d.node_id))
        return result(state, Action(Kind.NONE, state.replicas, f"draining {d.node_id}: {pod.connections} left"))

    if stable < state.replicas and now >= hold_until:
        candidates = [p for p in loads if not p.draining]
        if not candidates:
            return result(state, Action(Kind.NONE, state.replicas, "no registered pod to drain"))
        victim = min(candidates, key=lambda p: (p.connections, p.node_id))
        s = replace(state, drain=Drain(victim.node_id, started_at=now, deadline=now + policy.drain_timeout_s))
        reason = f"{total} connections need {stable} pods; draining {victim.node_id} ({victim.connections} connections)"
        return result(s, Action(Kind.START_DRAIN, state.replicas, reason, victim.node_id))
    return result(state, Action(Kind.NONE, state.replicas))


def to_dict(state: State) -> dict:
    out: dict = {"replicas": state.replicas, "history": [[round(t, 3), d] for t, d in state.history], "lastReason": state.last_reason}
    if state.last_scale_at is not None:
        out["lastScaleAt"] = state.last_scale_at
    if state.hold_until is not None:
        out["holdUntil"] = state.hold_until
    if state.drain is not None:
        out["drain"] = {"nodeId": state.drain.node_id, "startedAt": state.drain.started_at, "deadline": state.drain.deadline}
    return out


def from_dict(data: dict | None, *, default_replicas: int) -> State:
    if not data or "replicas" not in data:
        return State(replicas=default_replicas)
    drain = data.get("drain")
    return State(
        replicas=int(data["replicas"]),
        history=tuple((float(t), int(d)) for t, d in data.get("history", [])),
        drain=Drain(drain["nodeId"], float(drain["startedAt"]), float(drain["deadline"])) if drain else None,
        last_reason=data.get("lastReason", ""),
        last_scale_at=data.get("lastScaleAt"),
        hold_until=data.get("holdUntil"),
    )
