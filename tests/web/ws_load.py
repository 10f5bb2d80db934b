"""A lean WebSocket load generator: many idle (optionally authenticated) connections from one
process, for measuring the gateway's memory per connection.

Each connection is a bare asyncio.Protocol that writes a fixed handshake and, when given a
token, one masked AUTH_REQ frame; it then stays idle (the measurement is about idle
connections, so no heartbeats). Sockets bind to several loopback source addresses
(127.0.0.2, 127.0.0.3, ...) to stay clear of the ephemeral-port range, and a process keeps
under the 20,000 open-file limit of this machine.

    python -m tests.web.ws_load --port 9001 --count 10000 --token-key KEY
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
from typing import Callable

from websockets.frames import Frame as WsFrame, Opcode

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import encode_message
from im_runtime.protocol.types import RequestType

PER_SOURCE_ADDRESS = 2_000


def handshake(host: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def masked_binary(data: bytes) -> bytes:
    return WsFrame(Opcode.BINARY, data).serialize(mask=True, extensions=[])


class IdleWs(asyncio.Protocol):
    __slots__ = ("auth", "ready", "buffer", "upgraded", "transport", "_request")

    def __init__(self, request: bytes, auth: bytes | None, ready: asyncio.Future) -> None:
        self.auth = auth
        self.ready = ready
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self._request = request

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.ready.done():
            return
        self.buffer += data
        if not self.upgraded:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(head.split(b"\r\n")[0].decode()))
                return
            self.upgraded = True
            if self.auth is None:
                self.ready.set_result(True)
                return
            self.transport.write(masked_binary(self.auth))  # type: ignore[union-attr]
        # AUTH_RESP: a small unmasked binary frame; 2-byte WebSocket header then our frame.
        if len(self.buffer) >= 2 + 20:
            request_type = int.from_bytes(self.buffer[2 + 8 : 2 + 12], "big")
            if request_type == RequestType.AUTH_RESP:
                resp = pb.AuthResponse.FromString(self.buffer[2 + 20 :])
                if resp.code == 0:
                    self.ready.set_result(True)
                else:
                    self.ready.set_exception(RuntimeError(f"auth refused: {resp.code} {resp.message}"))
            self.buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed: {exc}"))


async def open_idle(
    host: str,
    port: int,
    count: int,
    *,
    token_for: Callable[[str], str] | None = None,
    uid_prefix: str = "idle",
    concurrency: int = 200,
    first_source: int = 2,
) -> list[asyncio.Transport]:
    """Opens `count` connections (authenticated as uid_prefix-N when token_for is given)."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        uid = f"{uid_prefix}-{i}"
        auth = None
        if token_for is not None:
            auth = encode_message(RequestType.AUTH_REQ, 1, pb.AuthRequest(uid=uid, token=token_for(uid), device_id="load"))
        source = f"127.0.0.{first_source + i // PER_SOURCE_ADDRESS}"
        async with gate:
            ready = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda: IdleWs(handshake(host, port), auth, ready), host, port, local_addr=(source, 0)
            )
            await asyncio.wait_for(ready, 30)
            transports.append(transport)

    await asyncio.gather(*(one(i) for i in range(count)))
    return transports


async def _main(args: argparse.Namespace) -> None:
    token_for = None
    if args.token_key:
        from im_runtime.route.tokens import TokenSigner

        signer = TokenSigner(args.token_key.encode())
        token_for = lambda uid: signer.mint(uid).token  # noqa: E731
    started = time.monotonic()
    transports = await open_idle(args.host, args.port, args.count, token_for=token_for)
    print(f"{len(transports)} connections open in {time.monotonic() - started:.1f} s", flush=True)
    await asyncio.sleep(args.hold)
    for t in transports:
        t.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--token-key", default=None, help="sign AUTH tokens with the stack's IMSTACK_TOKEN_KEY")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to keep them open")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
