"""`imstack-operator`: run the ImCluster operator (kopf) in or out of a cluster.

    imstack-operator [--namespace NS ...] [--interval SECONDS] [--zk HOSTS] [--metrics-port 9090]

Without --namespace it watches ImClusters in every namespace. --zk overrides the ZooKeeper the
operator reads connection counts from (e.g. a port-forward when run outside the cluster).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(time.time(), 3), "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="imstack-operator", description=__doc__.splitlines()[0])
    ap.add_argument("--namespace", action="append", default=[], help="watch only these namespaces (repeatable)")
    ap.add_argument("--interval", type=float, default=None, help="reconcile/autoscale period in seconds (default 10)")
    ap.add_argument("--zk", default=None, help="ZooKeeper hosts the operator itself uses")
    ap.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint ('' to disable)")
    ap.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    ap.add_argument("--metrics-host", default="0.0.0.0")
    ap.add_argument("--log-format", choices=["json", "text"], default=os.environ.get("IMSTACK_LOG_FORMAT", "json"))
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.interval is not None:
        os.environ["IMSTACK_OPERATOR_INTERVAL"] = str(args.interval)
    if args.zk:
        os.environ["IMSTACK_OPERATOR_ZK"] = args.zk
    os.environ["IMSTACK_OPERATOR_NAMESPACES"] = ",".join(args.namespace)
    handler = logging.StreamHandler()
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)

    import kopf

    from . import handlers  # noqa: F401 - registers the handlers (reads the interval)

    scope = {"namespaces": args.namespace} if args.namespace else {"clusterwide": True}
    kopf.run(standalone=True, liveness_endpoint=args.liveness or None, **scope)


if __name__ == "__main__":
    main()
