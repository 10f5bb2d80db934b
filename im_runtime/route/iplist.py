"""ipList (S4, S16): access nodes, least loaded first, as IP addresses (HttpDNS style)."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True, slots=True)
class AccessEndpoint:
    node_id: str
    kind: str  # "tcp" or "ws"
    host: str
    port: int
    connections: int
    draining: bool = False


class IpListSource(Protocol):
    async def endpoints(self) -> list[AccessEndpoint]: ...


def as_ip(host: str) -> str:
    """Hosts are handed out as IP addresses so a hijacked DNS cannot redirect clients."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return socket.gethostbyname(host)


def iplist(endpoints: list[AccessEndpoint]) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {"tcp": [], "ws": []}
    for ep in sorted(endpoints, key=lambda e: (e.connections, e.node_id)):
        if ep.draining or ep.kind not in out:
            continue
        out[ep.kind].append({"host": as_ip(ep.host), "port": ep.port, "connections": ep.connections})
    return out


class LocalIpList:
    """The all-in-one answer: this process's own gateways."""

    def __init__(self) -> None:
        self._gateways: list[tuple[str, str, Callable[[], int], Callable[[], int], Callable[[], bool]]] = []

    def add(self, kind: str, host: str, port: Callable[[], int], count: Callable[[], int], draining: Callable[[], bool]) -> None:
        self._gateways.append((kind, host, port, count, draining))

    async def endpoints(self) -> list[AccessEndpoint]:
        return [
            AccessEndpoint("local-" + kind, kind, host, port(), count(), draining())
            for kind, host, port, count, draining in self._gateways
        ]
