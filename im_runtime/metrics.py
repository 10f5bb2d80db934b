"""Prometheus metrics shared by every role (one registry per process).

Names follow `imstack_<what>_<unit>`; the roles label by `role` so one all-in-one process
and separate processes export the same series.
"""
from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTIONS = Gauge("imstack_connections", "Open client connections", ["kind"], registry=REGISTRY)
AUTHENTICATED = Gauge("imstack_authenticated_connections", "Authenticated client connections", ["kind"], registry=REGISTRY)
PROTOCOL_ERRORS = Counter("imstack_protocol_errors_total", "ERROR frames sent", ["code"], registry=REGISTRY)
DROPPED_SLOW = Counter("imstack_slow_client_drops_total", "Connections dropped for a full write buffer", registry=REGISTRY)
OFFLINE_BACKLOG = Gauge("imstack_offline_backlog", "Messages waiting in offline queues", registry=REGISTRY)
AUTH_RESULTS = Counter("imstack_auth_total", "Authentication attempts", ["result"], registry=REGISTRY)
KICKS = Counter("imstack_kicks_total", "KICK frames sent", ["reason"], registry=REGISTRY)
# Drain state of the access node (set_draining). Registered by the first access node, so only
# access processes export it, from their start on: a dashboard counts the access pods and
# shows drain state per pod with it before any client connects.
DRAINING = Gauge("imstack_draining", "1 while this access node drains (refuses new clients, KICKs its own)", registry=None)
_draining_registered = False


def set_draining(value: bool) -> None:
    global _draining_registered
    if not _draining_registered:
        REGISTRY.register(DRAINING)
        _draining_registered = True
    DRAINING.set(1 if value else 0)


def exposition() -> bytes:
    return generate_latest(REGISTRY)


class Labelled:
    """Cached labelled children: `.labels()` costs more than the increment on a hot path."""

    def __init__(self, metric) -> None:  # type: ignore[no-untyped-def]
        self._metric = metric
        self._children: dict[str, object] = {}

    def __call__(self, label: str):  # type: ignore[no-untyped-def]
        child = self._children.get(label)
        if child is None:
            child = self._children[label] = self._metric.labels(label)
        return child


connections = Labelled(CONNECTIONS)
authenticated = Labelled(AUTHENTICATED)


class Hot:
    """Counters on the message path as plain ints (no lock per increment); the collector
    below turns them into Prometheus samples when /metrics is scraped. One event loop per
    process, so plain increments are safe."""

    __slots__ = (
        "frames_in", "frames_out", "messages_in_single", "messages_in_group", "messages_out",
        "pull_notifies", "acks", "duplicates", "offline_writes", "send_buckets", "send_sum", "send_count",
    )

    BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self) -> None:
        self.frames_in: dict[str, int] = {}
        self.frames_out: dict[str, int] = {}
        self.messages_in_single = 0
        self.messages_in_group = 0
        self.messages_out = 0
        self.pull_notifies = 0
        self.acks = 0
        self.duplicates = 0
        # Entries written into offline queues (one per receiver of a message). With `acks`
        # (entries removed) it gives the backlog's growth in cluster mode, where the backlog
        # itself lives in Redis and no process holds its total.
        self.offline_writes = 0
        self.send_buckets = [0] * (len(self.BUCKETS) + 1)
        self.send_sum = 0.0
        self.send_count = 0

    def observe_send(self, seconds: float) -> None:
        self.send_buckets[bisect_left(self.BUCKETS, seconds)] += 1
        self.send_sum += seconds
        self.send_count += 1


HOT = Hot()


class _HotCollector:
    def collect(self):  # type: ignore[no-untyped-def]
        h = HOT
        frames_in = CounterMetricFamily("imstack_frames_in", "Frames received from clients", labels=["kind"])
        for kind, n in sorted(h.frames_in.items()):
            frames_in.add_metric([kind], n)
        frames_out = CounterMetricFamily("imstack_frames_out", "Frames written to clients", labels=["kind"])
        for kind, n in sorted(h.frames_out.items()):
            frames_out.add_metric([kind], n)
        messages_in = CounterMetricFamily("imstack_messages_in", "Messages accepted (SEND_REQ acked)", labels=["type"])
        messages_in.add_metric(["single"], h.messages_in_single)
        messages_in.add_metric(["group"], h.messages_in_group)
        yield frames_in
        yield frames_out
        yield messages_in
        yield CounterMetricFamily("imstack_messages_out", "Messages pushed to connections", value=h.messages_out)
        yield CounterMetricFamily("imstack_pull_notify", "PULL_NOTIFY sent instead of a push", value=h.pull_notifies)
        yield CounterMetricFamily("imstack_push_acks", "Offline entries removed by PUSH_ACK", value=h.acks)
        yield CounterMetricFamily("imstack_offline_writes", "Entries written into offline queues (one per receiver)", value=h.offline_writes)
        yield CounterMetricFamily("imstack_duplicate_sends", "Re-sent messages answered from the de-dup store", value=h.duplicates)
        cumulative, buckets = 0, []
        for bound, n in zip(list(Hot.BUCKETS) + [float("inf")], h.send_buckets):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "imstack_send_seconds", "Server time from SEND_REQ to SEND_ACK", buckets=buckets, sum_value=h.send_sum
        )


REGISTRY.register(_HotCollector())
