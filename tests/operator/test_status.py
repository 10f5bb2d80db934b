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
