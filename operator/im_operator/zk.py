"""ZooKeeper side of autoscaling (kazoo), per docs/contracts.md.

Reads `<root>/access/<kind>/<node_id>` registrations (ephemeral JSON with `connections`,
`draining`, `pod`) and writes / deletes the persistent drain requests `<root>/drain/<node_id>`.
One kazoo client per ZooKeeper connection string, shared by every ImCluster that uses it.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError, NodeExistsError

from .scaling import PodLoad

log = logging.getLogger(__name__)


class ZkPool:
    def __init__(self, *, timeout: float = 5.0, retry_after: float = 15.0) -> None:
        self._clients: dict[str, KazooClient] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._timeout = timeout
        self._retry_after = retry_after

    def get(self, hosts: str) -> KazooClient:
        with self._lock:
            client = self._clients.get(hosts)
            if client is None or not client.connected:
                failed = self._failed.get(hosts)
                if failed and time.monotonic() - failed[0] < self._retry_after:
                    # A ZooKeeper that is not up yet (a new managed quorum) must not stall every
                    # reconcile pass for the connect timeout.
                    raise ConnectionError(f"ZooKeeper {hosts} unreachable: {failed[1]}")
                if client is not None:
                    try:
                        client.stop()
                        client.close()
                    except Exception:  # a dead client; replaced below
                        pass
                client = KazooClient(hosts=hosts, timeout=self._timeout)
                try:
                    client.start(timeout=self._timeout)
                except Exception as e:
                    self._failed[hosts] = (time.monotonic(), repr(e))
                    client.stop()
                    client.close()
                    self._clients.pop(hosts, None)
                    raise ConnectionError(f"ZooKeeper {hosts} unreachable: {e!r}") from e
                self._failed.pop(hosts, None)
                self._clients[hosts] = client
            return client

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                try:
                    c.stop()
                    c.close()
                except Exception:
                    pass
            self._clients.clear()


def read_loads(zk: KazooClient, root: str, kind: str) -> list[PodLoad]:
    """The access registrations of one kind; a node with a drain request counts as draining."""
    base = f"{root}/access/{kind}"
    try:
        names = zk.get_children(base)
    except NoNodeError:
        return []
    draining = set(drain_requests(zk, root))
    out: list[PodLoad] = []
    for node_id in sorted(names):
        try:
            raw, _ = zk.get(f"{base}/{node_id}")
            data = json.loads(raw or b"{}")
        except NoNodeError:
            continue  # gone between the listing and the read
        except ValueError:
            log.warning("unreadable registration %s/%s", base, node_id)
            continue
        out.append(
            PodLoad(
                node_id=node_id,
                pod=str(data.get("pod") or node_id),
                connections=int(data.get("connections", 0) or 0),
                draining=bool(data.get("draining")) or node_id in draining,
            )
        )
    return out


def drain_requests(zk: KazooClient, root: str) -> list[str]:
    try:
        return zk.get_children(f"{root}/drain")
    except NoNodeError:
        return []


def request_drain(zk: KazooClient, root: str, node_id: str, *, rate_per_s: int, deadline: float) -> None:
    data = json.dumps({"rate_per_s": rate_per_s, "deadline": deadline, "requested_at": time.time()}).encode()
    path = f"{root}/drain/{node_id}"
    try:
        zk.create(path, data, makepath=True)
    except NodeExistsError:
        zk.set(path, data)


def cancel_drain(zk: KazooClient, root: str, node_id: str) -> None:
    try:
        zk.delete(f"{root}/drain/{node_id}")
    except NoNodeError:
        pass


def registered(zk: KazooClient, root: str) -> set[str]:
    out: set[str] = set()
    for kind in ("tcp", "ws"):
        try:
            out.update(zk.get_children(f"{root}/access/{kind}"))
        except NoNodeError:
            pass
    return out
