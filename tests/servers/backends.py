"""ZooKeeper, Redis and FerretDB (as MongoDB) together: what the cluster-mode tests run on."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.servers.ferretdb import FerretDB, start_ferretdb
from tests.servers.redis import RedisServer, start_redis
from tests.servers.zookeeper import ZooKeeperServer, start_zookeeper


@dataclass
class Servers:
    zk: ZooKeeperServer
    redis: RedisServer
    mongo: FerretDB


@contextmanager
def backends(base: Path) -> Iterator[Servers]:
    """Starts the three under `base`; whatever started is stopped, also when a start fails."""
    started: list = []
    try:
        zk = start_zookeeper(base / "zk")
        started.append(zk)
        redis = start_redis(base / "redis")
        started.append(redis)
        mongo = start_ferretdb(base / "ferretdb")
        started.append(mongo)
        yield Servers(zk, redis, mongo)
    finally:
        for server in reversed(started):
            server.stop()
