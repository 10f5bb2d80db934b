"""`imstack bench throughput` and `imstack bench connections`.

Both run the load generator in processes of its own (and, unless --url names a running
stack, start an all-in-one stack in another process), print a readable table, and with
--json one JSON object. Figures and the commands that made them go in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import array
import json
import multiprocessing as mp
import statistics
import sys
import time
import urllib.request
from typing import Any

from im_runtime.bench.conn import Peer
from im_runtime.bench.loadgen import ConnectionsJob, ThroughputJob, connections_process, throughput_process
from im_runtime.bench.stackproc import StackProcess, cpu_seconds, rss_kib, start_stack


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="load tests against a running stack or one it starts")
    kinds = bench.add_subparsers(dest="bench_kind", required=True)

    tp = kinds.add_parser("throughput", help="delivered messages/s and delivery latency")
    tp.add_argument("--rate", type=float, default=0, help="messages/s sent in all (0 = as fast as acks allow)")
    tp.add_argument("--duration", type=float, default=10.0, help="seconds of measured load")
    tp.add_argument("--clients", type=int, default=200, help="client connections (each sends and receives)")
    tp.add_argument("--size", type=int, default=64, help="message content bytes (at least 8)")
    tp.add_argument("--group-size", type=int, default=0, help="send to groups of this many members instead of 1:1")
    tp.add_argument("--window", type=int, default=2, help="sends in flight per client when --rate is 0")
    tp.add_argument("--procs", type=int, default=1, help="load generator processes")
    tp.add_argument("--ws", action="store_true", help="WebSocket clients instead of TCP")
    _common(tp)
    tp.set_defaults(func=run_bench)

    cn = kinds.add_parser("connections", help="server RSS per idle authenticated connection")
    cn.add_argument("--count", type=int, default=15_000, help="idle authenticated connections to hold")
    cn.add_argument("--procs", type=int, default=4, help="load generator processes (each holds under 20,000 files)")
    cn.add_argument("--addresses", type=int, default=4, help="local addresses 127.0.0.2.. to connect from")
    cn.add_argument("--hold", type=float, default=5.0, help="seconds to hold the connections before measuring")
    cn.add_argument("--ws", action="store_true", help="WebSocket connections instead of TCP")
    _common(cn)
    cn.set_defaults(func=run_bench)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="route HTTP address of a running stack (default: start one)")
    p.add_argument("--admin-key", default=None, help="admin key of the running stack (tokens, groups)")
    p.add_argument("--token-key", default=None, help="token signing key of the running stack (mint locally)")
    p.add_argument("--server-pid", type=int, default=None, help="pid of the running stack's process (RSS, CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


class Target:
    """The stack under test: one this command started, or one named by --url."""

    def __init__(self, args: argparse.Namespace, *, idle_timeout: float = 120.0) -> None:
        self.owned: StackProcess | None = None
        if args.url:
            self.url = args.url.rstrip("/")
            self.admin_key = args.admin_key
            self.token_key = args.token_key
            self.pid = args.server_pid
        else:
            self.owned = start_stack(idle_timeout=idle_timeout)
            self.url, self.admin_key, self.token_key, self.pid = (
                self.owned.http_url, self.owned.admin_key, self.owned.token_key, self.owned.pid,
            )
        nodes = json.loads(urllib.request.urlopen(f"{self.url}/v1/iplist", timeout=10).read())  # noqa: S310
        self.tcp = (nodes["tcp"][0]["host"], int(nodes["tcp"][0]["port"]))
        self.ws = (nodes["ws"][0]["host"], int(nodes["ws"][0]["port"])) if nodes.get("ws") else None

    def endpoint(self, *, ws: bool) -> tuple[str, int]:
        if ws and self.ws is None:
            raise SystemExit("the stack has no WebSocket gateway")
        return self.ws if ws else self.tcp  # type: ignore[return-value]

    def users(self, kind: str, count: int) -> tuple[str, list[str], dict[str, str]]:
        """A run tag, `count` fresh uids under it, and a token for each."""
        run = f"{kind}{int(time.time() * 1000) % 10_000_000}"
        uids = [f"{run}u{i}" for i in range(count)]
        _progress(f"bench: minting {len(uids)} tokens")
        return run, uids, self.tokens(uids)

    def tokens(self, uids: list[str]) -> dict[str, str]:
        if self.token_key:
            from im_runtime.route.tokens import TokenSigner

            signer = TokenSigner(self.token_key.encode())
            return {u: signer.mint(u).token for u in uids}
        if not self.admin_key:
            raise SystemExit("a running stack needs --admin-key or --token-key")
        return {u: self._admin("/v1/tokens", {"uid": u})["token"] for u in uids}

    def group(self, group_id: str, members: list[str]) -> None:
        self._admin("/v1/groups", {"group_id": group_id, "members": members})

    def _admin(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"},
        )
        return json.loads(urllib.request.urlopen(req, timeout=10).read())  # noqa: S310

    def stop(self) -> None:
        if self.owned is not None:
            self.owned.stop()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def _progress(text: str) -> None:
    """Progress goes to stderr, so --json leaves stdout to the one JSON object."""
    print(text, file=sys.stderr, flush=True)


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    if args.size < 8:
        raise SystemExit("--size must be at least 8 (the send timestamp)")
    target = Target(args)
    try:
        host, port = target.endpoint(ws=args.ws)
        run, uids, tokens = target.users("b", args.clients)
        peers: list[Peer] = []
        if args.group_size > 1:
            for g in range(0, len(uids), args.group_size):
                members = uids[g : g + args.group_size]
                if len(members) < 2:
                    continue
                target.group(f"{run}g{g}", members)
                peers += [Peer(u, tokens[u], f"{run}g{g}", True) for u in members]
        else:
            for i in range(0, len(uids) - 1, 2):
                a, b = uids[i], uids[i + 1]
                peers += [Peer(a, tokens[a], b, False), Peer(b, tokens[b], a, False)]
        ctx = mp.get_context("fork")
        ready_events, results = [], ctx.Queue()
        go, start_at = ctx.Event(), ctx.Value("d", 0.0)
        procs, progress = [], []
        per_client = args.rate / len(peers) if args.rate > 0 else 0.0
        for k in range(args.procs):
            share = peers[k :: args.procs]
            job = ThroughputJob(
                host=host, port=port, peers=share, rate_per_client=per_client,
                window=args.window, duration=args.duration, size=args.size,
                local_addr=f"127.0.0.{2 + k % 200}", ws_path="/ws" if args.ws else None,
            )
            ready = ctx.Event()
            ready_events.append(ready)
            counts = ctx.Array("q", 3, lock=False)  # sent, delivered, errors (see run_throughput)
            progress.append(counts)
            p = ctx.Process(target=throughput_process, args=(job, ready, go, start_at, results, counts), daemon=True)
            p.start()
            procs.append(p)
        deadline = time.monotonic() + 120
        for ready in ready_events:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                raise SystemExit("load generator did not connect within 120 s")
        cpu0 = cpu_seconds(target.pid) if target.pid else None
        start_at.value = time.time() + 0.5
        go.set()
        _progress(f"bench: {len(peers)} clients in {args.procs} processes, {args.duration:.0f} s of load")
        time.sleep(max(0.0, start_at.value - time.time()))
        last = (0, 0)
        for s in range(int(args.duration)):
            time.sleep(1)
            sent, delivered, errs = (sum(c[i] for c in progress) for i in range(3))
            _progress(
                f"bench: {s + 1}/{int(args.duration)} s  sent {sent - last[0]:,}/s  delivered {delivered - last[1]:,}/s"
                f"  (so far {delivered:,} delivered, {errs} errors)"
            )
            last = (sent, delivered)
        outcomes = [results.get(timeout=args.duration + 60) for _ in procs]
        cpu1 = cpu_seconds(target.pid) if target.pid else None
        rss = rss_kib(target.pid) if target.pid else None
        for p in procs:
            p.join(timeout=10)
        errors = [o[1] for o in outcomes if o[0] == "error"]
        if errors:
            raise SystemExit(f"load generator failed: {errors[0]}")
        sent = sum(o[1] for o in outcomes)
        acked = sum(o[2] for o in outcomes)
        delivered = sum(o[3] for o in outcomes)
        errs = sum(o[4] for o in outcomes)
        notifies = sum(o[5] for o in outcomes)
        latencies: list[float] = []
        durations = []
        for o in outcomes:
            values = array.array("d")
            values.frombytes(o[6])
            durations.append(values[-1])
            latencies += values[:-1]
        latencies.sort()
        duration = statistics.median(durations)
        return {
            "mode": "group" if args.group_size > 1 else "single",
            "transport": "ws" if args.ws else "tcp",
            "clients": len(peers),
            "rate_target": args.rate,
            "duration_s": round(duration, 2),
            "size": args.size,
            "group_size": args.group_size,
            "sent_per_s": round(sent / duration, 1),
            "acked_per_s": round(acked / duration, 1),
            "delivered_per_s": round(delivered / duration, 1),
            "p50_ms": round(_percentile(latencies, 0.50), 2),
            "p99_ms": round(_percentile(latencies, 0.99), 2),
            "p999_ms": round(_percentile(latencies, 0.999), 2),
            "errors": errs,
            "pull_notifies": notifies,
            "server_cpu_s": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
            "server_rss_kib": rss,
            "generator_procs": args.procs,
        }
    finally:
        target.stop()


def bench_connections(args: argparse.Namespace) -> dict[str, Any]:
    target = Target(args, idle_timeout=600.0)
    try:
        host, port = target.endpoint(ws=args.ws)
        _, uids, tokens = target.users("c", args.count)
        peers = [Peer(u, tokens[u], u, False) for u in uids]
        addrs = [f"127.0.0.{2 + i}" for i in range(args.addresses)]
        # a first connection loads whatever the server loads lazily, so the baseline is fair
        warm = ConnectionsJob(host=host, port=port, peers=peers[:1], local_addrs=addrs, ws_path="/ws" if args.ws else None)
        ctx = mp.get_context("fork")
        results = ctx.Queue()
        stop_warm, warm_ready = ctx.Event(), ctx.Event()
        wp = ctx.Process(target=connections_process, args=(warm, warm_ready, stop_warm, results), daemon=True)
        wp.start()
        warm_ready.wait(60)
        first = results.get(timeout=60)
        if first[0] == "error":
            raise SystemExit(f"load generator failed: {first[1]}")
        time.sleep(1.0)
        rss0 = rss_kib(target.pid) if target.pid else None
        stop = ctx.Event()
        procs, readies = [], []
        rest = peers[1:]
        for k in range(args.procs):
            job = ConnectionsJob(
                host=host, port=port, peers=rest[k :: args.procs], local_addrs=addrs[k % len(addrs) :] + addrs[: k % len(addrs)],
                ws_path="/ws" if args.ws else None,
            )
            ready = ctx.Event()
            p = ctx.Process(target=connections_process, args=(job, ready, stop, results), daemon=True)
            p.start()
            procs.append(p)
            readies.append(ready)
        opened = failed = 0
        t0 = time.monotonic()
        for _ in procs:
            msg = results.get(timeout=600)
            if msg[0] == "error":
                raise SystemExit(f"load generator failed: {msg[1]}")
            opened += msg[1]
            failed += msg[2]
            _progress(f"bench: {opened + 1} connections open")
        open_s = time.monotonic() - t0
        time.sleep(args.hold)
        rss1 = rss_kib(target.pid) if target.pid else None
        stop.set()
        stop_warm.set()
        alive = 0
        for _ in range(len(procs) + 1):  # every worker and the warm-up connection report
            msg = results.get(timeout=60)
            alive += msg[1] if msg[0] == "done" else 0
        for p in procs + [wp]:
            p.join(timeout=30)
        per_conn = (rss1 - rss0) / opened if rss0 is not None and rss1 is not None and opened else None
        return {
            "transport": "ws" if args.ws else "tcp",
            "connections": opened + 1,
            "failed": failed,
            "alive_at_end": alive,
            "open_s": round(open_s, 1),
            "server_rss_before_kib": rss0,
            "server_rss_after_kib": rss1,
            "server_rss_per_conn_kib": round(per_conn, 2) if per_conn is not None else None,
            "generator_procs": args.procs,
        }
    finally:
        target.stop()


def run_bench(args: argparse.Namespace) -> int:
    result = bench_throughput(args) if args.bench_kind == "throughput" else bench_connections(args)
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        print(f"imstack bench {args.bench_kind}")
        for key, value in result.items():
            print(f"  {key:<{width}}  {value}")
    return 0
