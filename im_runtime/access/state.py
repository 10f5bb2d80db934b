"""Client connection states and what each allows (STYLE 4: transitions in one place, as data).

connected --AUTH ok--> authenticated --KICK/drain--> draining --> closed
Any state --fatal frame error / idle / transport lost--> closed.
"""
from __future__ import annotations

import enum

from im_runtime.protocol.types import CLIENT_REQUESTS, RequestType


class ConnState(enum.Enum):
    CONNECTED = "connected"
    AUTHENTICATED = "authenticated"
    DRAINING = "draining"
    CLOSED = "closed"


# Request types each state processes; anything else a client may send is refused with
# UNAUTHENTICATED (before auth) or ignored (draining/closed: the connection is going away).
ALLOWED: dict[ConnState, frozenset[int]] = {
    ConnState.CONNECTED: frozenset({RequestType.AUTH_REQ, RequestType.HEARTBEAT_REQ}),
    ConnState.AUTHENTICATED: frozenset(CLIENT_REQUESTS),
    ConnState.DRAINING: frozenset({RequestType.HEARTBEAT_REQ, RequestType.PUSH_ACK}),
    ConnState.CLOSED: frozenset(),
}

TRANSITIONS: dict[ConnState, frozenset[ConnState]] = {
    ConnState.CONNECTED: frozenset({ConnState.AUTHENTICATED, ConnState.DRAINING, ConnState.CLOSED}),
    ConnState.AUTHENTICATED: frozenset({ConnState.DRAINING, ConnState.CLOSED}),
    ConnState.DRAINING: frozenset({ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}


class InvalidTransition(Exception):
    pass


def transition(current: ConnState, target: ConnState) -> ConnState:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"{current.value} -> {target.value}")
    return target
