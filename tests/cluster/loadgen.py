"""A small 1:1 load generator for the cluster figures (until `imstack bench` runs against a
stack): `python -m tests.cluster.loadgen --url http://127.0.0.1:8080 --admin-key K`.

Worker processes each hold `--pairs` pairs of SDK clients (connected through ipList); every
user keeps `--window` sends in flight to its partner for `--seconds`. Receivers count the
messages they get and the end-to-end latency (send start -> delivered to the receiving app).
Prints delivered messages/s and latency percentiles as JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
import urllib.request
import uuid


def _token(url: str, admin_key: str, uid: str) -> str:
    req = urllib.request.Request(f"{url}/v1/tokens", data=json.dumps({"uid": uid}).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())["token"]


async def _worker(args: argparse.Namespace, index: int) -> dict:
    from im_runtime.client import ImClient
    from im_runtime.client.client import RetryPolicy

    tag = f"{uuid.uuid4().hex[:6]}-{index}"
    uids = [f"lg{i}-{tag}" for i in range(args.pairs * 2)]
    tokens = {u: _token(args.url, args.admin_key, u) for u in uids}
    clients = {}
    for u in uids:
        clients[u] = await ImClient(u, tokens[u], http_url=args.url, retry=RetryPolicy(attempts=10, ack_timeout=10)).connect()
    latencies: list[float] = []
    delivered = 0
    sent = 0
    start_at = time.monotonic() + 0.5
    end_at = start_at + args.seconds

    async def receive(c) -> None:  # type: ignore[no-untyped-def]
        nonlocal delivered
        while True:
            m = await c.inbox.get()
            now = time.monotonic()
            if start_at <= now <= end_at:
                delivered += 1
                latencies.append(now - float(m.content.decode()))

    async def send(u: str, peer: str) -> None:
        nonlocal sent
        c = clients[u]
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        while time.monotonic() < end_at:
            await c.send(peer, repr(time.monotonic()))
            sent += 1

    receivers = [asyncio.ensure_future(receive(c)) for c in clients.values()]
    senders = [asyncio.ensure_future(send(uids[i], uids[i ^ 1])) for i in range(len(uids)) for _ in range(args.window)]
    await asyncio.gather(*senders, return_exceptions=True)
    await asyncio.sleep(1.0)
    for t in receivers:
        t.cancel()
    for c in clients.values():
        await c.close()
    return {"delivered": delivered, "sent": sent, "latencies": latencies}


def _run_worker(args: argparse.Namespace, index: int, out) -> None:  # type: ignore[no-untyped-def]
    try:
        import uvloop  # type: ignore[import-not-found]

        result = uvloop.run(_worker(args, index))
    except ImportError:
        result = asyncio.run(_worker(args, index))
    out.put(result)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_run_worker, args=(args, i, out)) for i in range(args.workers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=args.seconds + 300) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    lat = sorted(x for r in results for x in r["latencies"])
    delivered = sum(r["delivered"] for r in results)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else float("nan")

    print(json.dumps({
        "clients": args.workers * args.pairs * 2, "window": args.window, "seconds": args.seconds,
        "sent": sum(r["sent"] for r in results), "delivered": delivered,
        "delivered_per_s": round(delivered / args.seconds), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
    }))


if __name__ == "__main__":
    main()
