"""The hash ring moves only the keys of a node that leaves, and spreads keys evenly."""
from collections import Counter

from im_runtime.cluster.ring import HashRing

KEYS = [f"g:group-{i}" for i in range(5000)]


def test_empty_ring_has_no_owner():
    assert HashRing().owner("g:x") is None


def test_owner_is_stable_and_deterministic():
    a = HashRing(["d1", "d2", "d3"])
    b = HashRing(["d3", "d1", "d2"])
    assert [a.owner(k) for k in KEYS] == [b.owner(k) for k in KEYS]


def test_removing_a_node_moves_only_its_keys():
    ring = HashRing(["d1", "d2", "d3"])
    before = {k: ring.owner(k) for k in KEYS}
    ring.remove("d2")
    after = {k: ring.owner(k) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved and all(before[k] == "d2" for k in moved)
    assert all(after[k] != "d2" for k in KEYS)


def test_adding_a_node_takes_keys_only_for_itself():
    ring = HashRing(["d1", "d2"])
    before = {k: ring.owner(k) for k in KEYS}
    ring.add("d3")
    moved = [k for k in KEYS if before[k] != ring.owner(k)]
    assert moved and all(ring.owner(k) == "d3" for k in moved)


def test_keys_spread_evenly():
    ring = HashRing(["d1", "d2", "d3", "d4"])
    counts = Counter(ring.owner(k) for k in KEYS)
    assert set(counts) == {"d1", "d2", "d3", "d4"}
    assert max(counts.values()) < 2 * min(counts.values())
