"""One reconcile pass of an ImCluster: gather inputs, call the pure parts, apply the outputs.

Order of a pass: check the spec (bad -> Degraded, children untouched); make the key Secret if it
does not exist; take one autoscaling step per access kind from the ZooKeeper counts; server-side
apply every desired child (a child deleted or edited by hand is put back); prune children that
are no longer desired; read the children's status back and report conditions from it.

The autoscaler state is kept in memory per ImCluster and mirrored into status, from where it is
reloaded after an operator restart (a drain in progress is resumed, not forgotten).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from . import manifests, metrics, scaling, spec as specmod, status as statusmod, zk as zkmod
from .kubeapi import CHILD_KINDS, Kube, KubeError

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# The drained pod must be the one the ReplicaSet removes: lowest cost goes first.
DRAINED_POD_COST = "-1000000"

Emit = Callable[[str, str, str], None]  # (type Normal|Warning, reason, message)

ACCESS_KINDS = (("tcp", "access", "access"), ("ws", "wsAccess", "ws-access"))


@dataclass
class _Memory:
    scalers: dict[str, scaling.State] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)  # warnings already posted as Events
    warned_now: set[str] = field(default_factory=set)  # ... and those still true this pass
    lock: threading.Lock = field(default_factory=threading.Lock)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy_for(access: dict[str, Any]) -> scaling.Policy:
    return scaling.Policy(
        min_replicas=access["minReplicas"],
        max_replicas=access["maxReplicas"],
        target_per_pod=access["targetConnectionsPerPod"],
        stabilization_s=access["scaleDownStabilizationSeconds"],
        drain_timeout_s=access["drainTimeoutSeconds"],
    )


class Reconciler:
    def __init__(self, kube: Kube, zkpool: zkmod.ZkPool, *, clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.zkpool = zkpool
        self.clock = clock
        self._memory: dict[str, _Memory] = {}
        self._lock = threading.Lock()

    def memory(self, uid: str) -> _Memory:
        with self._lock:
            return self._memory.setdefault(uid, _Memory())

    def forget(self, uid: str) -> None:
        with self._lock:
            self._memory.pop(uid, None)

    # -- inputs ---------------------------------------------------------------------------

    def zk_hosts(self, spec: dict[str, Any], *, name: str, namespace: str) -> str:
        override = os.environ.get("IMSTACK_OPERATOR_ZK")
        if override:
            return override
        z = spec["zookeeper"]
        if "managed" in z:
            data, _ = manifests.connection_settings(spec, name=name, namespace=namespace)
            return data["IMSTACK_ZK"]
        ext = z["external"]
        if "connectionString" in ext:
            return ext["connectionString"]
        ref = ext["secretRef"]
        sec = self.kube.get("Secret", namespace, ref["name"])
        key = ref.get("key", "connectionString")
        if sec is None or key not in (sec.get("data") or {}):
            raise LookupError(f"secret {ref['name']} key {key} not found")
        return base64.b64decode(sec["data"][key]).decode()

    def missing_secrets(self, spec: dict[str, Any], namespace: str) -> list[str]:
        names: list[str] = []
        for key in ("access", "wsAccess"):
            if spec[key].get("tlsSecretName") and (key == "access" or spec[key]["enabled"]):
                names.append(spec[key]["tlsSecretName"])
        for key in ("zookeeper", "redis", "mongodb"):
            ref = spec[key].get("external", {}).get("secretRef")
            if ref:
                names.append(ref["name"])
        hook_ref = (spec.get("pushWebhook") or {}).get("tokenSecretRef")
        if hook_ref:
            names.append(hook_ref["name"])
        return [f"secret {n} not found" for n in dict.fromkeys(names) if self.kube.get("Secret", namespace, n) is None]

    # -- the pass -------------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any], *, emit: Emit, autoscale: bool = True) -> dict[str, Any]:
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        mem = self.memory(uid)
        with mem.lock:
            mem.warned_now = set()
            try:
                return self._reconcile(body, name=name, namespace=namespace, uid=uid, mem=mem, emit=emit, autoscale=autoscale)
            finally:
                # A warning that stopped being true is forgotten, so it is posted again if it returns.
                mem.warned &= mem.warned_now

    def _warn_once(self, mem: _Memory, emit: Emit, reason: str, message: str) -> None:
        key = f"{reason}:{message}"
        mem.warned_now.add(key)
        if key not in mem.warned:
            mem.warned.add(key)
            emit("Warning", reason, message)

    def _reconcile(self, body, *, name, namespace, uid, mem: _Memory, emit: Emit, autoscale: bool) -> dict[str, Any]:
        spec = specmod.normalize(body.get("spec"))
        old_status = body.get("status") or {}
        generation = body["metadata"].get("generation")
        owner = {"name": name, "uid": uid}
        problems = specmod.problems(spec)
        errors: list[str] = []
        out: dict[str, Any] = {"observedGeneration": generation}
        if problems:
            metrics.RECONCILES.labels(namespace, name, "invalid_spec").inc()
            for p in problems:
                self._warn_once(mem, emit, "InvalidSpec", p)
            out["conditions"] = statusmod.conditions(
                previous=old_status.get("conditions"), now=_now_iso(), generation=generation, problems=problems, errors=[],
                components={}, autoscaling_ok=False, autoscaling_reason="InvalidSpec", autoscaling_message="spec is invalid",
            )
            return out

        errors += self.missing_secrets(spec, namespace)
        try:
            if self.kube.get("Secret", namespace, manifests.secret_name(name)) is None:
                self.kube.create(manifests.key_secret(name=name, namespace=namespace, owner=owner))
                emit("Normal", "KeysCreated", f"generated token signing and admin keys in secret {manifests.secret_name(name)}")
        except KubeError as e:
            if e.status != 409:  # 409: made by a concurrent pass
                errors.append(f"key secret: {e}")

        # Autoscaling (K3): one step per access kind.
        replicas: dict[str, int] = {}
        auto_ok, auto_reason, auto_msg = True, "Stable", ""
        connections = 0
        msgs: list[str] = []
        saved = old_status.get("autoscaling") or {}
        zk_client = None
        root = specmod.zk_root(spec, name=name, namespace=namespace)
        if not autoscale:
            # A spec-change pass reads no counts: keep what the last autoscaling pass reported.
            connections = int(old_status.get("connections", 0) or 0)
            prev = next((c for c in old_status.get("conditions", []) if c.get("type") == "AutoscalingActive"), None)
            if prev:
                auto_ok, auto_reason, auto_msg = prev.get("status") == "True", prev.get("reason", "Stable"), prev.get("message", "")
        else:
            try:
                zk_client = self.zkpool.get(self.zk_hosts(spec, name=name, namespace=namespace))
            except Exception as e:  # noqa: BLE001 - reported, never fatal
                auto_ok, auto_reason, auto_msg = False, "ZooKeeperUnavailable", f"cannot read connection counts: {e}"
                self._warn_once(mem, emit, "ZooKeeperUnavailable", auto_msg)
        now = self.clock()
        last_reason = saved.get("lastScaleReason", "")
        last_time = saved.get("lastScaleTime")
        for kind, key, component in ACCESS_KINDS:
            a = spec[key]
            if key == "wsAccess" and not a["enabled"]:
                mem.scalers.pop(kind, None)
                continue
            policy = policy_for(a)
            state = mem.scalers.get(kind) or scaling.from_dict(saved.get(kind), default_replicas=a["minReplicas"])
            if zk_client is not None:
                try:
                    loads = zkmod.read_loads(zk_client, root, kind)
                    res = scaling.step(state, loads, now=now, policy=policy)
                    connections += res.total
                    self._act(res, loads=loads, kind=kind, component=component, access=a, root=root, namespace=namespace, zk_client=zk_client, emit=emit)
                    state = res.state
                    labels = (namespace, name, component)
                    metrics.CONNECTIONS.labels(*labels).set(res.total)
                    metrics.DRAINING.labels(*labels).set(1 if state.drain else 0)
                    if res.action.kind is not scaling.Kind.NONE:
                        metrics.SCALE_EVENTS.labels(*labels, res.action.kind.value).inc()
                        last_reason, last_time = f"{component}: {res.action.reason}", _now_iso()
                    if state.drain is not None:
                        auto_reason = "Draining"
                        msgs.append(f"{component}: draining {state.drain.node_id} ({res.action.reason})")
                    else:
                        msgs.append(f"{component}: {res.total} connections, {state.replicas} pods (desired {res.stable_desired})")
                except Exception as e:  # noqa: BLE001
                    auto_ok, auto_reason, auto_msg = False, "ZooKeeperUnavailable", f"{component}: {e}"
                    self._warn_once(mem, emit, "AutoscalingFailed", auto_msg)
            else:
                state = replace(state, replicas=max(a["minReplicas"], min(a["maxReplicas"], state.replicas)))
            mem.scalers[kind] = state
            replicas[kind] = state.replicas
            metrics.DESIRED.labels(namespace, name, component).set(state.replicas)

        if auto_ok and msgs:
            auto_msg = "; ".join(msgs)
        children = manifests.desired_children(
            spec, name=name, namespace=namespace, owner=owner, access_replicas=replicas["tcp"], ws_replicas=replicas.get("ws", 0)
        )
        for obj in children:
            try:
                self.kube.apply(obj)
            except KubeError as e:
                errors.append(f"{obj['kind']} {obj['metadata']['name']}: {e}")
        errors += self._prune(children, name=name, namespace=namespace, uid=uid, emit=emit)
        if zk_client is not None:
            self._cleanup_drains(zk_client, root, mem)
        for e in errors:
            self._warn_once(mem, emit, "ReconcileError", e)

        components: dict[str, statusmod.ComponentStatus] = {}
        for obj in children:
            if obj["kind"] in ("Deployment", "StatefulSet"):
                comp = obj["metadata"]["labels"]["app.kubernetes.io/component"]
                try:
                    components[comp] = statusmod.workload_status(self.kube.get(obj["kind"], namespace, obj["metadata"]["name"]))
                except KubeError as e:
                    errors.append(str(e))
                    components[comp] = statusmod.workload_status(None)
        out["components"] = statusmod.component_summary(components)
        out["connections"] = connections
        auto: dict[str, Any] = {"desiredReplicas": replicas["tcp"], "lastScaleReason": last_reason, "zkRoot": root}
        if last_time:
            auto["lastScaleTime"] = last_time
        if "ws" in replicas:
            auto["wsDesiredReplicas"] = replicas["ws"]
        for kind, st in mem.scalers.items():
            auto[kind] = scaling.to_dict(st)
        out["autoscaling"] = auto
        metrics.RECONCILES.labels(namespace, name, "error" if errors else "ok").inc()
        out["conditions"] = statusmod.conditions(
            previous=old_status.get("conditions"), now=_now_iso(), generation=generation, problems=[], errors=errors,
            components=components, autoscaling_ok=auto_ok, autoscaling_reason=auto_reason, autoscaling_message=auto_msg or last_reason,
            previous_components=old_status.get("components"),
        )
        return out

    # -- outputs --------------------------------------------------------------------------

    def _act(self, res: scaling.Result, *, loads: list[scaling.PodLoad], kind: str, component: str, access: dict, root: str, namespace: str, zk_client, emit: Emit) -> None:
        a = res.action
        if a.kind is scaling.Kind.SCALE_UP:
            emit("Normal", "ScaledUp", f"{component} -> {a.replicas} pods: {a.reason}")
        elif a.kind is scaling.Kind.START_DRAIN:
            assert a.node_id and res.state.drain
            zkmod.request_drain(zk_client, root, a.node_id, rate_per_s=access["drainRatePerSecond"], deadline=res.state.drain.deadline)
            emit("Normal", "DrainStarted", f"{component}: {a.reason}")
        elif a.kind is scaling.Kind.CANCEL_DRAIN:
            assert a.node_id
            zkmod.cancel_drain(zk_client, root, a.node_id)
            emit("Normal", "DrainCancelled", f"{component}: {a.node_id}: {a.reason}")
        elif a.kind is scaling.Kind.SCALE_DOWN:
            if a.node_id:
                pod = next((p.pod for p in loads if p.node_id == a.node_id and p.pod), a.node_id)
                try:
                    self.kube.merge_patch("Pod", namespace, pod, {"metadata": {"annotations": {DELETION_COST: DRAINED_POD_COST}}})
                except KubeError as e:
                    emit("Warning", "DeletionCostFailed", f"pod {pod}: {e}")
            emit("Normal", "ScaledDown", f"{component} -> {a.replicas} pods: {a.reason}")

    def _cleanup_drains(self, zk_client, root: str, mem: _Memory) -> None:
        """A drain znode is deleted once its pod is gone (its registration expired)."""
        active = {s.drain.node_id for s in mem.scalers.values() if s.drain}
        try:
            alive = zkmod.registered(zk_client, root)
            for node_id in zkmod.drain_requests(zk_client, root):
                if node_id not in alive and node_id not in active:
                    zkmod.cancel_drain(zk_client, root, node_id)
        except Exception as e:  # noqa: BLE001 - retried next pass
            log.warning("drain cleanup under %s failed: %s", root, e)

    def _prune(self, children: list[dict], *, name: str, namespace: str, uid: str, emit: Emit) -> list[str]:
        want = {(c["kind"], c["metadata"]["name"]) for c in children}
        sel = {"app.kubernetes.io/instance": name, "app.kubernetes.io/managed-by": manifests.MANAGED_BY}
        errors: list[str] = []
        for kind in CHILD_KINDS:
            try:
                for obj in self.kube.list(kind, namespace, selector=sel):
                    md = obj["metadata"]
                    ours = any(r.get("uid") == uid for r in md.get("ownerReferences", []))
                    if ours and (kind, md["name"]) not in want:
                        self.kube.delete(kind, namespace, md["name"])
                        emit("Normal", "Pruned", f"deleted {kind} {md['name']}: no longer in the spec")
            except KubeError as e:
                errors.append(f"prune {kind}: {e}")
        return errors
