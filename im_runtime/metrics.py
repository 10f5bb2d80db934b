"""Prometheus metrics shared by every role (one registry per process).

Names follow `imstack_<what>_<unit>`; the roles label by `role` so one all-in-one process
and separate processes export the same series.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTIONS = Gauge("imstack_connections", "Open client connections", ["kind"], registry=REGISTRY)
AUTHENTICATED = Gauge("imstack_authenticated_connections", "Authenticated client connections", ["kind"], registry=REGISTRY)
FRAMES_IN = Counter("imstack_frames_in_total", "Frames received from clients", ["kind"], registry=REGISTRY)
FRAMES_OUT = Counter("imstack_frames_out_total", "Frames written to clients", ["kind"], registry=REGISTRY)
PROTOCOL_ERRORS = Counter("imstack_protocol_errors_total", "ERROR frames sent", ["code"], registry=REGISTRY)
DROPPED_SLOW = Counter("imstack_slow_client_drops_total", "Connections dropped for a full write buffer", registry=REGISTRY)
MESSAGES_IN = Counter("imstack_messages_in_total", "Messages accepted (SEND_REQ acked)", ["type"], registry=REGISTRY)
MESSAGES_OUT = Counter("imstack_messages_out_total", "Messages pushed to connections", registry=REGISTRY)
PULL_NOTIFIES = Counter("imstack_pull_notify_total", "PULL_NOTIFY sent instead of a push", registry=REGISTRY)
ACKS = Counter("imstack_push_acks_total", "Offline entries removed by PUSH_ACK", registry=REGISTRY)
DUPLICATES = Counter("imstack_duplicate_sends_total", "Re-sent messages answered from the de-dup store", registry=REGISTRY)
OFFLINE_BACKLOG = Gauge("imstack_offline_backlog", "Messages waiting in offline queues", registry=REGISTRY)
SEND_LATENCY = Histogram(
    "imstack_send_seconds",
    "Server time from SEND_REQ to SEND_ACK",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
AUTH_RESULTS = Counter("imstack_auth_total", "Authentication attempts", ["result"], registry=REGISTRY)
KICKS = Counter("imstack_kicks_total", "KICK frames sent", ["reason"], registry=REGISTRY)


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


frames_in = Labelled(FRAMES_IN)
frames_out = Labelled(FRAMES_OUT)
connections = Labelled(CONNECTIONS)
authenticated = Labelled(AUTHENTICATED)
messages_in = Labelled(MESSAGES_IN)
