"""ZooKeeper registry (S1, S2, S4): ephemeral registrations, child watches, drain requests.

kazoo's threaded client does the ZooKeeper work; everything it reports is bridged into the
asyncio loop with `loop.call_soon_threadsafe`, and blocking calls run in the default executor.
A lost (expired) session is recovered without restarting the process: kazoo reconnects with a
new session, and on every CONNECTED transition we re-create the ephemeral nodes we own (their
last data), so the node re-appears in the cluster. Child watches survive session loss (kazoo
re-arms them). Layout and data: docs/contracts.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import Any, Callable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError

log = logging.getLogger(__name__)

WORKER_IDS = 1024  # snowflake: 10 bits of worker id


class ZkRegistry:
    def __init__(self, hosts: str, root: str, *, session_timeout: float | None = None) -> None:
        # How long a dead process's ephemeral nodes outlive it (S9: clients of a dead access
        # node are steered elsewhere once it expires).
        if session_timeout is None:
            session_timeout = float(os.environ.get("IMSTACK_ZK_SESSION_TIMEOUT", "10"))
        self.hosts = hosts
        self.root = root.rstrip("/")
        self.client = KazooClient(hosts=hosts, timeout=session_timeout)
        self._owned: dict[str, bytes] = {}  # path -> data of ephemerals we must keep alive
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = False
        self.sessions_recovered = 0
        self._lost = False
        # Called on the loop after an expired session was replaced and our nodes re-created.
        self.on_recovered: Callable[[], Any] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self, timeout: float = 15.0) -> None:
        self._loop = asyncio.get_running_loop()
        self.client.add_listener(self._on_state)
        await self._run(self.client.start, timeout)
        self.connected = True
        for sub in ("dispatch", "access/tcp", "access/ws", "drain", "workers"):
            await self._run(self.client.ensure_path, f"{self.root}/{sub}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Deletes our ephemerals (others see us leave at once) and closes the session;
        bounded, so a process whose ZooKeeper is gone still exits."""
        with self._lock:
            owned = list(self._owned)
            self._owned.clear()

        def close() -> None:
            if self.connected:
                for path in owned:
                    try:
                        self.client.delete(path)
                    except Exception:
                        pass
            self.client.stop()
            self.client.close()

        try:
            await asyncio.wait_for(self._run(close), timeout)
        except asyncio.TimeoutError:
            log.warning("zookeeper did not close in time")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _on_state(self, state: str) -> None:
        # Runs on kazoo's thread: must not block; work goes to a spawned greenlet/thread.
        if state == KazooState.LOST:
            self._lost = True
            self.connected = False
            log.warning("zookeeper session lost")
        elif state == KazooState.SUSPENDED:
            self.connected = False
            log.warning("zookeeper connection suspended")
        elif state == KazooState.CONNECTED:
            self.connected = True
            recovered = self._lost
            if recovered:
                self._lost = False
                self.sessions_recovered += 1
                log.info("zookeeper session re-established: re-registering")
            self.client.handler.spawn(self._restore, recovered)

    def _restore(self, recovered: bool = False) -> None:
        """Re-creates our ephemerals that are missing or held by an older session."""
        with self._lock:
            owned = dict(self._owned)
        session_id = self.client.client_id[0] if self.client.client_id else None
        for path, data in owned.items():
            try:
                stat = self.client.exists(path)
                if stat is not None and stat.ephemeralOwner == session_id:
                    continue
                if stat is not None:
                    self.client.delete(path)
                self.client.create(path, data, ephemeral=True, makepath=True)
                log.info("re-registered", extra={"path": path})
            except NodeExistsError:
                pass
            except Exception:
                log.warning("re-register failed", extra={"path": path}, exc_info=True)
        if recovered and self.on_recovered is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(_call, lambda _: self.on_recovered(), None)  # type: ignore[misc]

    # ---- own registrations --------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    async def register(self, path: str, data: dict) -> None:
        raw = json.dumps(data).encode()
        with self._lock:
            self._owned[path] = raw

        def create() -> None:
            try:
                self.client.create(path, raw, ephemeral=True, makepath=True)
            except NodeExistsError:
                # Left by a previous incarnation whose session has not expired yet.
                self.client.delete(path)
                self.client.create(path, raw, ephemeral=True, makepath=True)

        await self._run(create)

    async def update(self, path: str, data: dict) -> None:
        raw = json.dumps(data).encode()
        with self._lock:
            if path not in self._owned:
                return
            self._owned[path] = raw
        try:
            await self._run(self.client.set, path, raw)
        except NoNodeError:
            await self._run(self._restore)

    async def unregister(self, path: str) -> None:
        with self._lock:
            self._owned.pop(path, None)
        try:
            await self._run(self.client.delete, path)
        except NoNodeError:
            pass

    async def worker_id(self) -> int:
        """A snowflake worker id no live dispatch node holds: an ephemeral sequential znode
        under <root>/workers, its number mod 1024 (retried if a live one has the same)."""
        def take() -> int:
            for _ in range(WORKER_IDS):
                path = self.client.create(self.path("workers", "w-"), b"", ephemeral=True, sequence=True, makepath=True)
                mine = int(path.rsplit("-", 1)[1]) % WORKER_IDS
                others = [c for c in self.client.get_children(self.path("workers")) if c != path.rsplit("/", 1)[1]]
                if all(int(c.rsplit("-", 1)[1]) % WORKER_IDS != mine for c in others):
                    with self._lock:
                        self._owned[path] = b""
                    return mine
            raise RuntimeError("no free snowflake worker id (1024 live dispatch nodes?)")

        return await self._run(take)

    # ---- reading ------------------------------------------------------------------------

    async def children_data(self, path: str) -> dict[str, dict]:
        """Children of path with their JSON data (children that vanish meanwhile are skipped)."""
        def read() -> dict[str, dict]:
            out: dict[str, dict] = {}
            try:
                names = self.client.get_children(path)
            except NoNodeError:
                return out
            for name in names:
                try:
                    raw, _ = self.client.get(f"{path}/{name}")
                    out[name] = json.loads(raw or b"{}")
                except (NoNodeError, ValueError):
                    continue
            return out

        return await self._run(read)

    async def exists(self, path: str) -> bool:
        return await self._run(self.client.exists, path) is not None

    def watch_children(self, path: str, callback: Callable[[dict[str, dict]], Any]) -> None:
        """Calls callback(children with data) on the loop now and whenever children change."""
        loop = self._loop
        assert loop is not None, "start() first"

        read_lock = threading.Lock()

        def read() -> None:
            # Off kazoo's event thread (watch callbacks must not block); re-reads the current
            # children so two quick changes cannot be reported out of order.
            with read_lock:
                data: dict[str, dict] = {}
                try:
                    names = self.client.get_children(path)
                except NoNodeError:
                    names = []
                except Exception:
                    log.warning("zookeeper read failed", extra={"path": path}, exc_info=True)
                    return
                for name in names:
                    try:
                        raw, _ = self.client.get(f"{path}/{name}")
                        data[name] = json.loads(raw or b"{}")
                    except (NoNodeError, ValueError):
                        continue
                    except Exception:
                        log.warning("zookeeper read failed", extra={"path": path}, exc_info=True)
                loop.call_soon_threadsafe(_call, callback, data)

        def changed(children: list[str]) -> None:
            self.client.handler.spawn(read)

        self.client.ChildrenWatch(path, changed)

    def watch_data(self, path: str, callback: Callable[[dict | None], Any]) -> None:
        """Calls callback(data or None when the node does not exist) on the loop on change."""
        loop = self._loop
        assert loop is not None, "start() first"

        def changed(raw: bytes | None, stat: object) -> None:
            data: dict | None = None
            if stat is not None:
                try:
                    data = json.loads(raw or b"{}")
                except ValueError:
                    data = {}
            loop.call_soon_threadsafe(_call, callback, data)

        self.client.DataWatch(path, changed)


def _call(callback: Callable[[Any], Any], arg: Any) -> None:
    result = callback(arg)
    if asyncio.iscoroutine(result):
        asyncio.ensure_future(result)


def now() -> int:
    return int(time.time())
