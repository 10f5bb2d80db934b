"""Dispatch's cache of where users are (cluster/presence.py) and the pusher that uses it:
pushes need no route round trip, and a session change on an access node reaches the cache
before it can mislead a push."""
from __future__ import annotations

import asyncio

from im_runtime.cluster.dispatch import ClusterPusher
from im_runtime.cluster.links import ClientLink, LinkServer
from im_runtime.cluster.presence import SessionCache
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import encode_message
from im_runtime.protocol.types import RequestType
from im_runtime.storage.memory import memory_stores


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_hits_after_a_lookup_and_expires():
    clock = Clock()
    cache = SessionCache(positive_ttl=10, negative_ttl=1, clock=clock)
    assert cache.get("bob") is None
    started = cache.lookup_started()
    cache.lookup_done(started, ["bob", "nobody"], {"bob": ["a1"]})
    assert cache.get("bob") == ("a1",) and cache.get("nobody") == ()
    clock.now = 2
    assert cache.get("nobody") is None and cache.get("bob") == ("a1",)  # "no session" lives shorter
    clock.now = 11
    assert cache.get("bob") is None


def test_a_change_during_a_lookup_keeps_its_answer_out():
    """The lookup may have read the store before the change: its answer must not be kept."""
    cache = SessionCache()
    started = cache.lookup_started()
    cache.invalidate(["bob"])  # bob moved while the lookup ran
    cache.lookup_done(started, ["bob", "carol"], {"bob": ["a1"], "carol": ["a1"]})
    assert cache.get("bob") is None and cache.get("carol") == ("a1",)
    started = cache.lookup_started()  # a lookup that starts after the change is kept
    cache.lookup_done(started, ["bob"], {"bob": ["a2"]})
    assert cache.get("bob") == ("a2",)
    started = cache.lookup_started()
    cache.clear()  # a relinked access node: everything read before is suspect
    cache.lookup_done(started, ["dave"], {"dave": ["a1"]})
    assert cache.get("dave") is None and len(cache) == 0
    cache.invalidate(["erin"])  # no lookup in flight: nothing to remember
    started = cache.lookup_started()
    cache.lookup_done(started, ["erin"], {})
    assert cache.get("erin") == ()


async def _linked(links: LinkServer, node_id: str, got: list) -> ClientLink:
    _, link = await asyncio.get_running_loop().create_connection(
        lambda: ClientLink(node_id, lambda uids, frame: got.append((uids, frame))), "127.0.0.1", links.port
    )
    await link.call(RequestType.LINK_REGISTER, pb.LinkRegister(node_id=node_id).SerializeToString(), timeout=5)
    return link


async def _until(predicate, what: str) -> None:
    for _ in range(250):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_pusher_delivers_in_call_order_with_few_lookups_and_follows_a_session_move():
    stores = memory_stores()
    cache = SessionCache()
    links = LinkServer(lambda fwd: None, on_sessions_changed=lambda uids, everything: cache.invalidate(uids))
    await links.start("127.0.0.1", 0)
    on_a1: list = []
    on_a2: list = []
    a1 = await _linked(links, "a1", on_a1)
    a2 = await _linked(links, "a2", on_a2)
    pusher = ClusterPusher(stores.sessions, links, cache)
    try:
        await stores.sessions.bind("bob", "a1", 1, "")
        await stores.sessions.bind("carol", "a1", 2, "")
        frames = [encode_message(RequestType.PUSH, 0, pb.Message(message_id=i, seq=i)) for i in range(1, 201)]
        for i, frame in enumerate(frames):
            await pusher.deliver(["bob", "nobody"] if i % 2 else ["bob", "carol"], frame)
        await _until(lambda: len(on_a1) == len(frames), "every push on a1")
        assert [f for _, f in on_a1] == frames  # in call order, one DELIVER per push
        assert on_a1[0][0] == ["bob", "carol"] and on_a1[1][0] == ["bob"]
        assert pusher.lookups <= 2  # the first pushes' users are looked up together, then cached
        # bob reconnects on a2: a2 binds him, then says so over its link (SESSION_CHANGED)
        await stores.sessions.unbind("bob", "a1", 1)
        await stores.sessions.bind("bob", "a2", 3, "")
        a2.send(RequestType.SESSION_CHANGED, pb.SessionChanged(uids=["bob"]).SerializeToString())
        await _until(lambda: cache.get("bob") is None, "the change to reach the cache")
        moved = encode_message(RequestType.PUSH, 0, pb.Message(message_id=999, seq=999))
        await pusher.deliver(["bob"], moved)
        await _until(lambda: on_a2, "the push on a2")
        assert on_a2 == [(["bob"], moved)] and on_a1[-1][1] == frames[-1]
    finally:
        pusher.close()
        a1.close()
        a2.close()
        await links.close()
