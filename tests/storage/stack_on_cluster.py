"""The all-in-one stack on the cluster stores (real redis-server + FerretDB), for measuring the
whole delivery path with Redis and MongoDB in it (not a test; run by hand):

    .venv/bin/python -m tests.storage.stack_on_cluster            # prints the bench command
    .venv/bin/imstack bench throughput --url ... --token-key ... --server-pid ...

Starts its own servers on free loopback ports and stops them on Ctrl-C / SIGTERM.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import signal
import tempfile

import uvloop

from im_runtime.allinone import AllInOne
from im_runtime.config import Settings
from im_runtime.storage.cluster import cluster_stores
from tests.servers.ferretdb import start_ferretdb
from tests.servers.redis import free_port, start_redis


async def main(redis_url: str, mongo_url: str) -> None:
    settings = Settings(
        http_port=free_port(), tcp_port=free_port(), ws_port=free_port(),
        admin_key=secrets.token_urlsafe(16), token_key=secrets.token_urlsafe(32), rate_per_s=100_000,
    )
    stores = await cluster_stores(redis_url, mongo_url, "imstack_bench", dedup_ttl_s=600)
    stack = AllInOne(settings, stores=stores)
    await stack.start()
    print(
        f".venv/bin/imstack bench throughput --url http://127.0.0.1:{stack.http_port} "
        f"--token-key {settings.token_key} --admin-key {settings.admin_key} --server-pid {os.getpid()}",
        flush=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await stack.close()
    await stores.close()


if __name__ == "__main__":
    tmp = tempfile.mkdtemp(prefix="imstack-stack-")
    redis, mongo = start_redis(tmp), start_ferretdb(tmp)
    try:
        uvloop.run(main(redis.url, mongo.url))
    finally:
        mongo.stop()
        redis.stop()
