"""Unit tests: connection counts over time -> scaling step (pure, no server)."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from im_operator.scaling import Kind, PodLoad, Policy, State, desired_replicas, from_dict, step, to_dict

P = Policy(min_replicas=2, max_replicas=8, target_per_pod=100, stabilization_s=60, drain_timeout_s=30)


def loads(*counts: int, draining: set[str] = frozenset()) -> list[PodLoad]:
    return [PodLoad(f"access-{i}", c, f"access-{i}" in draining) for i, c in enumerate(counts)]


def test_desired_is_ceil_clamped():
    assert desired_replicas(0, P) == 2
    assert desired_replicas(201, P) == 3
    assert desired_replicas(300, P) == 3
    assert desired_replicas(10_000, P) == 8


def test_scale_up_is_immediate():
    s = State(replicas=2)
    r = step(s, loads(300, 300), now=0, policy=P)
    assert r.action.kind is Kind.SCALE_UP and r.action.replicas == 6 and r.state.replicas == 6
    assert "600 connections" in r.action.reason


def test_no_scale_down_inside_the_window_then_drain_the_emptiest():
    s = State(replicas=4)
    t = 0.0
    r = step(s, loads(150, 150, 150, 150), now=t, policy=P)  # desired 6 -> up
    assert r.action.kind is Kind.SCALE_UP
    s = r.state
    while t < 55:
        t += 5
        r = step(s, loads(50, 10, 80, 30, 0, 40), now=t, policy=P)  # desired 3 for a while
        assert r.action.kind is Kind.NONE, t
        s = r.state
    t = 61
    r = step(s, loads(50, 10, 80, 30, 0, 40), now=t, policy=P)
    assert r.action.kind is Kind.START_DRAIN and r.action.node_id == "access-4"  # the emptiest
    assert r.state.replicas == 6  # replicas drop only after the drain
    s = r.state
    r = step(s, loads(50, 10, 80, 30, 0, 40, draining={"access-4"}), now=62, policy=P)
    assert r.action.kind is Kind.SCALE_DOWN and r.action.replicas == 5 and r.action.node_id == "access-4"
    s = r.state
    # The next pod follows without another full window, and it is again the emptiest (not a draining one).
    r = step(s, loads(50, 10, 80, 30, 40), now=63, policy=P)
    assert r.action.kind is Kind.START_DRAIN and r.action.node_id == "access-1"


def test_drain_waits_for_empty_or_timeout():
    s = State(replicas=3, hold_until=0)
    r = step(s, loads(20, 5, 30), now=100, policy=P)
    assert r.action.kind is Kind.START_DRAIN and r.action.node_id == "access-1"
    s = r.state
    r = step(s, loads(20, 3, 30), now=110, policy=P)
    assert r.action.kind is Kind.NONE and "3 left" in r.action.reason
    s = r.state
    r = step(s, loads(20, 2, 30), now=131, policy=P)  # deadline = 130
    assert r.action.kind is Kind.SCALE_DOWN and r.state.replicas == 2 and "timeout" in r.action.reason


def test_load_coming_back_cancels_a_drain():
    s = State(replicas=3, hold_until=0)
    s = step(s, loads(20, 5, 30), now=100, policy=P).state
    assert s.drain is not None
    r = step(s, loads(200, 5, 200), now=101, policy=P)  # desired 5 > 3
    assert r.action.kind is Kind.CANCEL_DRAIN and r.state.drain is None and r.state.replicas == 3
    r = step(r.state, loads(200, 5, 200), now=102, policy=P)
    assert r.action.kind is Kind.SCALE_UP and r.state.replicas == 5


def test_noisy_count_never_flaps():
    rng = random.Random(7)
    s = State(replicas=2)
    replicas = []
    for i in range(600):  # 10 minutes at one sample per second
        total = rng.randint(250, 420)  # desired bounces between 3 and 5
        per = [total // 5] * 5
        r = step(s, loads(*per), now=float(i), policy=P)
        s = r.state
        replicas.append(s.replicas)
    changes = sum(1 for a, b in zip(replicas, replicas[1:]) if a != b)
    assert all(b >= a for a, b in zip(replicas, replicas[1:])), "never scaled down under noise"
    assert changes <= 3 and replicas[-1] == 5


def test_bounds_edit_applies_at_once():
    r = step(State(replicas=12), loads(10), now=0, policy=P)
    assert r.action.kind is Kind.SCALE_DOWN and r.state.replicas == 8
    r = step(State(replicas=1), loads(10), now=0, policy=P)
    assert r.action.kind is Kind.SCALE_UP and r.state.replicas == 2


def test_state_round_trips_through_status():
    s = step(State(replicas=3, hold_until=0), loads(20, 5, 30), now=100, policy=P).state
    back = from_dict(to_dict(s), default_replicas=2)
    assert back == s
    assert from_dict(None, default_replicas=2) == State(replicas=2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=8), min_size=1, max_size=120),
       st.integers(min_value=1, max_value=5))
def test_invariants_over_random_load(samples, dt):
    """Whatever the counts: replicas stay in bounds, go down one at a time only after a drain of
    the emptiest non-draining pod, and a drain never targets the busiest of several pods."""
    s = State(replicas=2)
    draining: set[str] = set()
    for i, counts in enumerate(samples):
        pods = [PodLoad(f"p{j}", c, f"p{j}" in draining) for j, c in enumerate(counts)]
        before = s.replicas
        r = step(s, pods, now=float(i * dt), policy=P)
        s = r.state
        assert P.min_replicas <= s.replicas <= P.max_replicas
        assert s.replicas >= before - 1
        if s.replicas < before:
            assert r.action.kind is Kind.SCALE_DOWN and r.action.node_id is not None
        if r.action.kind is Kind.START_DRAIN:
            candidates = [p for p in pods if not p.draining]
            victim = next(p for p in candidates if p.node_id == r.action.node_id)
            assert victim.connections == min(p.connections for p in candidates)
            if len({p.connections for p in candidates}) > 1:
                assert victim.connections < max(p.connections for p in candidates)
            draining.add(victim.node_id)
        if r.action.kind in (Kind.CANCEL_DRAIN, Kind.SCALE_DOWN):
            draining.discard(r.action.node_id or "")
