"""Unit tests: conditions from observed state (pure)."""

from im_operator.status import ComponentStatus, conditions, workload_status


def conds(**kw):
    base = dict(previous=None, now="2026-01-01T00:00:00Z", generation=3, problems=[], errors=[], components={},
                autoscaling_ok=True, autoscaling_reason="Stable", autoscaling_message="")
    base.update(kw)
    return {c["type"]: c for c in conditions(**base)}


def test_ready_only_when_every_component_is():
    c = conds(components={"access": ComponentStatus(2, 1), "route": ComponentStatus(2, 2)})
    assert c["Ready"]["status"] == "False" and "access 1/2" in c["Ready"]["message"]
    assert c["Progressing"]["status"] == "True"
    c = conds(components={"access": ComponentStatus(2, 2), "route": ComponentStatus(2, 2)})
    assert c["Ready"]["status"] == "True" and c["Progressing"]["status"] == "False"
    assert c["Degraded"]["status"] == "False" and c["Ready"]["observedGeneration"] == 3


def test_invalid_spec_is_degraded_and_transition_time_kept():
    c = conds(problems=["spec.access: minReplicas (5) exceeds maxReplicas (2)"])
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "InvalidSpec"
    assert c["Ready"]["status"] == "False"
    again = conds(previous=list(c.values()), now="2026-01-01T00:05:00Z", problems=["x"])
    assert again["Degraded"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_workload_status_reads_ready_and_generation():
    s = workload_status({"metadata": {"generation": 2}, "spec": {"replicas": 3}, "status": {"readyReplicas": 3, "observedGeneration": 1}})
    assert (s.desired, s.ready, s.observed_current) == (3, 3, False)
    assert workload_status(None).observed_current is False


def test_a_lost_pod_degrades_until_it_is_back():
    ready = {"desiredReplicas": 2, "readyReplicas": 2}
    # Fully ready before, one pod gone now, no rollout: Degraded, and Ready false.
    c = conds(components={"dispatch": ComponentStatus(2, 1, updated=2)}, previous_components={"dispatch": ready})
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "PodsUnavailable"
    assert "dispatch 1/2" in c["Degraded"]["message"] and c["Ready"]["status"] == "False"
    # Still down next pass (the previous summary now says 1/2): stays Degraded, same transition time.
    again = conds(previous=list(c.values()), now="2026-01-01T00:00:30Z", components={"dispatch": ComponentStatus(2, 1, updated=2)},
                  previous_components={"dispatch": {"desiredReplicas": 2, "readyReplicas": 1}})
    assert again["Degraded"]["status"] == "True" and again["Degraded"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    # Back: Degraded clears, Ready again.
    back = conds(previous=list(again.values()), components={"dispatch": ComponentStatus(2, 2, updated=2)},
                 previous_components={"dispatch": {"desiredReplicas": 2, "readyReplicas": 1}})
    assert back["Degraded"]["status"] == "False" and back["Ready"]["status"] == "True"


def test_new_scaled_or_rolling_pods_only_progress():
    # First creation: never ready before.
    c = conds(components={"route": ComponentStatus(2, 0, updated=2)}, previous_components=None)
    assert c["Degraded"]["status"] == "False" and c["Progressing"]["status"] == "True"
    # Scaled from 1 to 3: the earlier desired count differs.
    c = conds(components={"access": ComponentStatus(3, 1, updated=3)}, previous_components={"access": {"desiredReplicas": 1, "readyReplicas": 1}})
    assert c["Degraded"]["status"] == "False"
    # A rollout in progress (fewer pods at the new template than desired).
    c = conds(components={"access": ComponentStatus(2, 1, updated=1, rolling=True)}, previous_components={"access": {"desiredReplicas": 2, "readyReplicas": 2}})
    assert c["Degraded"]["status"] == "False" and c["Progressing"]["status"] == "True"


def test_rollouts_are_read_per_workload_kind():
    dep = {"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 1}}
    assert workload_status(dep).rolling
    # A StatefulSet whose pod was deleted: fewer updated pods, same revision: no rollout.
    sts = {"kind": "StatefulSet", "metadata": {"generation": 1}, "spec": {"replicas": 3},
           "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2, "currentRevision": "r1", "updateRevision": "r1"}}
    assert not workload_status(sts).rolling
    sts["status"]["updateRevision"] = "r2"
    assert workload_status(sts).rolling
