"""Delivered messages per second through the WebSocket gateway: `pairs` sender/receiver
pairs, each sender keeping a window of un-acked SEND_REQs open, each receiver acking its
pushes in batches. Counts a message when its PUSH reaches the receiver.

    python -m tests.web.ws_throughput --port 9001 --token-key KEY --pairs 50 --messages 400
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from websockets.asyncio.client import connect

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import encode_message
from im_runtime.protocol.types import RequestType

WINDOW = 32


def _head(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")


async def _auth(url: str, uid: str, token: str):
    ws = await connect(url, compression=None, max_size=None)
    await ws.send(encode_message(RequestType.AUTH_REQ, 1, pb.AuthRequest(uid=uid, token=token, device_id="bench")))
    while True:
        data = await ws.recv()
        if _head(data)[0] == RequestType.AUTH_RESP:
            assert pb.AuthResponse.FromString(data[20:]).code == 0
            return ws


async def run(url: str, token_for, *, pairs: int, messages: int, prefix: str = "tp") -> dict[str, float]:
    senders = [await _auth(url, f"{prefix}-s{i}", token_for(f"{prefix}-s{i}")) for i in range(pairs)]
    receivers = [await _auth(url, f"{prefix}-r{i}", token_for(f"{prefix}-r{i}")) for i in range(pairs)]
    delivered = 0
    done = asyncio.Event()  # set when every message reached its receiver
    total = pairs * messages

    async def receive(ws) -> None:
        # Like a real client: ack pushes promptly (a receiver with more than a few pending
        # gets PULL_NOTIFY instead, S11) and answer PULL_NOTIFY with an offline pull.
        nonlocal delivered
        seen: set[int] = set()
        pending: list[int] = []
        seq = 1000
        pulling = False
        while len(seen) < messages:
            data = await ws.recv()
            kind, _ = _head(data)
            if kind == RequestType.PUSH:
                batch = [pb.Message.FromString(data[20:])]
            elif kind == RequestType.PULL_OFFLINE_RESP:
                resp = pb.PullOfflineResponse.FromString(data[20:])
                batch = list(resp.messages)
                pulling = resp.has_more
                if pulling:
                    seq += 1
                    await ws.send(encode_message(RequestType.PULL_OFFLINE_REQ, seq, pb.PullOfflineRequest(cursor=resp.next_cursor, limit=200)))
            elif kind == RequestType.PULL_NOTIFY:
                if not pulling:
                    pulling = True
                    seq += 1
                    await ws.send(encode_message(RequestType.PULL_OFFLINE_REQ, seq, pb.PullOfflineRequest(cursor=0, limit=200)))
                continue
            else:
                continue
            for m in batch:
                pending.append(m.message_id)
                if m.message_id not in seen:
                    seen.add(m.message_id)
                    delivered += 1
            if len(pending) >= 4 or kind == RequestType.PULL_OFFLINE_RESP or len(seen) == messages:
                seq += 1
                await ws.send(encode_message(RequestType.PUSH_ACK, seq, pb.PushAck(message_ids=pending)))
                pending = []
        if delivered >= total:
            done.set()

    async def send(ws, to: str) -> None:
        await ws.send(encode_message(RequestType.ID_BATCH_REQ, 2, pb.IdBatchRequest(count=messages)))
        while True:
            data = await ws.recv()
            if _head(data)[0] == RequestType.ID_BATCH_RESP:
                ids = list(pb.IdBatchResponse.FromString(data[20:]).ids)
                break
        while len(ids) < messages:  # the server may cap a batch
            await ws.send(encode_message(RequestType.ID_BATCH_REQ, 3, pb.IdBatchRequest(count=messages - len(ids))))
            data = await ws.recv()
            if _head(data)[0] == RequestType.ID_BATCH_RESP:
                ids += list(pb.IdBatchResponse.FromString(data[20:]).ids)
        window = asyncio.Semaphore(WINDOW)
        acked = 0
        all_acked = asyncio.Event()

        async def read_acks() -> None:
            nonlocal acked
            while acked < messages:
                data = await ws.recv()
                if _head(data)[0] == RequestType.SEND_ACK:
                    assert pb.SendAck.FromString(data[20:]).code == 0
                    acked += 1
                    window.release()
            all_acked.set()

        reader = asyncio.create_task(read_acks())
        for n, message_id in enumerate(ids[:messages]):
            await window.acquire()
            req = pb.SendRequest(message_id=message_id, type=pb.SINGLE, to=to, content=b"x" * 64)
            await ws.send(encode_message(RequestType.SEND_REQ, 10 + n, req))
        await all_acked.wait()
        await reader

    started = time.monotonic()
    receiving = asyncio.gather(*(receive(ws) for ws in receivers))
    await asyncio.wait_for(
        asyncio.gather(receiving, *(send(ws, f"{prefix}-r{i}") for i, ws in enumerate(senders))), 180
    )
    elapsed = time.monotonic() - started
    for ws in senders + receivers:
        await ws.close()
    return {"pairs": pairs, "messages": total, "seconds": elapsed, "delivered_per_s": total / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:9001/ws")
    parser.add_argument("--token-key", required=True)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--prefix", default=f"tp{int(time.time()) % 100000}")
    args = parser.parse_args()
    from im_runtime.route.tokens import TokenSigner

    signer = TokenSigner(args.token_key.encode())
    figures = asyncio.run(run(args.url, lambda uid: signer.mint(uid).token, pairs=args.pairs, messages=args.messages, prefix=args.prefix))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
