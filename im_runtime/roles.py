"""`imstack access|dispatch|route` (one role per process) and `imstack cluster up|down`.

Settings come from, lowest first: a config file (`--config`, lines `IMSTACK_NAME=value`, the
names of docs/contracts.md), the environment, then flags.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from im_runtime import logs
from im_runtime.config import Settings
from im_runtime.runtime import tune_gc

log = logging.getLogger(__name__)

_COMMON = {
    "--node-id": "node_id", "--zk": "zk", "--zk-root": "zk_root", "--route-grpc": "route_grpc",
    "--host": "host", "--advertise-host": "advertise_host", "--metrics-port": "metrics_port",
}
_STORES = {"--redis-url": "redis_url", "--mongo-url": "mongo_url", "--mongo-db": "mongo_db"}


def load_config_file(path: str) -> None:
    """Fills os.environ from `IMSTACK_NAME=value` lines; the real environment wins."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            name, value = line.split("=", 1)
            os.environ.setdefault(name.strip(), value.strip().strip('"'))


def _settings(args: argparse.Namespace, flags: dict[str, str]) -> Settings:
    if args.config:
        load_config_file(args.config)
    settings = Settings()
    for field in flags.values():
        value = getattr(args, field, None)
        if value is not None:
            setattr(settings, field, type(getattr(settings, field))(value))
    return settings


def _add(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    parser.add_argument("--config", default=None, help="file of IMSTACK_NAME=value lines (docs/contracts.md)")
    parser.add_argument("--log-format", choices=["json", "text"], default=None)
    for flag, field in flags.items():
        parser.add_argument(flag, dest=field, default=None)


async def _serve(role) -> None:  # type: ignore[no-untyped-def]
    await role.start()
    tune_gc()  # as the all-in-one process does: the default GC threshold ran every few messages
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, role.terminate)
    loop.add_signal_handler(signal.SIGINT, role.terminate)
    await role.stopped.wait()
    log.info("shutting down")
    await role.close()


def _run(role) -> int:  # type: ignore[no-untyped-def]
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(_serve(role))
    else:
        uvloop.run(_serve(role))  # grpc.aio runs on uvloop too
    return 0


def cmd_access(args: argparse.Namespace) -> int:
    from im_runtime.cluster.access import AccessRole

    settings = _settings(args, _COMMON | {"--idle-timeout": "idle_timeout"})
    if args.port is not None:
        setattr(settings, "ws_port" if args.ws else "tcp_port", int(args.port))
    logs.configure(fmt=args.log_format)
    return _run(AccessRole(settings, kind="ws" if args.ws else "tcp", drain_rate=args.drain_rate, grace_s=args.grace))


def cmd_dispatch(args: argparse.Namespace) -> int:
    from im_runtime.cluster.dispatch import DispatchRole

    settings = _settings(args, _COMMON | _STORES | {"--link-port": "link_port", "--id-mode": "id_mode", "--push-webhook": "push_webhook_url"})
    logs.configure(fmt=args.log_format)
    return _run(DispatchRole(settings))


def cmd_route(args: argparse.Namespace) -> int:
    from im_runtime.cluster.route import RouteRole

    settings = _settings(
        args, _COMMON | _STORES | {"--http-port": "http_port", "--grpc-port": "grpc_port", "--admin-key": "admin_key", "--token-key": "token_key"}
    )
    logs.configure(fmt=args.log_format)
    return _run(RouteRole(settings))


def cmd_cluster(args: argparse.Namespace) -> int:
    from im_runtime.cluster import local

    if args.action == "up":
        return local.up(args.dir, access=args.access, dispatch=args.dispatch, http_port=args.http_port, first_tcp_port=args.tcp_port)
    return local.down(args.dir)


def add_role_parsers(sub) -> None:  # type: ignore[no-untyped-def]
    access = sub.add_parser("access", help="run one access node (cluster mode)")
    _add(access, _COMMON | {"--port": "port", "--idle-timeout": "idle_timeout"})
    access.add_argument("--ws", action="store_true", help="WebSocket gateway instead of TCP")
    access.add_argument("--drain-rate", type=float, default=float(os.environ.get("IMSTACK_DRAIN_RATE", "200")),
                        help="KICKs per second when draining on SIGTERM (env IMSTACK_DRAIN_RATE, default 200)")
    access.add_argument("--grace", type=float, default=float(os.environ.get("IMSTACK_DRAIN_TIMEOUT", "25")),
                        help="seconds to drain on SIGTERM before exiting (env IMSTACK_DRAIN_TIMEOUT, default 25)")
    access.set_defaults(func=cmd_access)

    dispatch = sub.add_parser("dispatch", help="run one dispatch node (cluster mode)")
    _add(dispatch, _COMMON | _STORES | {"--link-port": "link_port", "--id-mode": "id_mode", "--push-webhook": "push_webhook_url"})
    dispatch.set_defaults(func=cmd_dispatch)

    route = sub.add_parser("route", help="run one route node: HTTP API + gRPC (cluster mode)")
    _add(route, _COMMON | _STORES | {"--http-port": "http_port", "--grpc-port": "grpc_port", "--admin-key": "admin_key", "--token-key": "token_key"})
    route.set_defaults(func=cmd_route)

    cluster = sub.add_parser("cluster", help="start/stop a local topology (ZooKeeper, Redis, FerretDB, 1 route, 2 dispatch, 2 access)")
    cluster.add_argument("action", choices=["up", "down"])
    cluster.add_argument("--dir", default=os.environ.get("IMSTACK_CLUSTER_DIR", ".cluster"), help="state folder (pids, logs, data)")
    cluster.add_argument("--access", type=int, default=2)
    cluster.add_argument("--dispatch", type=int, default=2)
    cluster.add_argument("--http-port", type=int, default=8080, help="route HTTP port (0: any free port)")
    cluster.add_argument("--tcp-port", type=int, default=9000, help="first access TCP port (0: any free ports)")
    cluster.set_defaults(func=cmd_cluster)


if __name__ == "__main__":
    print("use `imstack access|dispatch|route`", file=sys.stderr)
