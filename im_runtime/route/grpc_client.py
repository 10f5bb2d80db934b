"""Client of the route gRPC service, used by access (Authenticate/Unbind) and dispatch (Lookup).

Every call has a deadline; UNAVAILABLE is retried by gRPC's own retry policy (service config,
exponential backoff) and then once more here after a short pause, so a route replica that
restarts costs a client a delay rather than an error.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Iterable

import grpc

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.proto import imstack_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "imstack.v1.Route"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class RouteClient:
    def __init__(self, target: str, *, timeout: float = 5.0, attempts: int = 3) -> None:
        self.target = target
        self.timeout = timeout
        self.attempts = attempts
        self.channel = grpc.aio.insecure_channel(
            target, options=[("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1)]
        )
        self.stub = pb_grpc.RouteStub(self.channel)

    async def _call(self, method, request):  # type: ignore[no-untyped-def]
        delay = 0.1
        for attempt in range(self.attempts):
            try:
                return await method(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.attempts - 1:
                    raise
                log.warning("route unavailable; retrying", extra={"target": self.target, "attempt": attempt + 1})
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def authenticate(self, req: pb.AuthRequest, *, node: str, conn_id: int) -> pb.AuthResponse:
        resp = await self._call(
            self.stub.Authenticate,
            pb.AuthenticateRequest(
                uid=req.uid, token=req.token, timestamp=req.timestamp, device_id=req.device_id, access_node=node, conn_id=conn_id
            ),
        )
        return pb.AuthResponse(code=resp.code, message=resp.message, server_time=resp.server_time)

    async def unbind(self, uid: str, *, node: str, conn_id: int) -> bool:
        resp = await self._call(self.stub.Unbind, pb.UnbindRequest(uid=uid, access_node=node, conn_id=conn_id))
        return resp.removed

    async def lookup(self, uids: Iterable[str]) -> dict[str, list[str]]:
        resp = await self._call(self.stub.Lookup, pb.LookupRequest(uids=list(uids)))
        return {u.uid: list(u.access_nodes) for u in resp.users}

    async def drop_node(self, node: str) -> int:
        resp = await self._call(self.stub.DropNode, pb.DropNodeRequest(access_node=node))
        return resp.sessions_removed

    async def rebind(self, node: str, connections: list[tuple[str, int, str]]) -> int:
        request = pb.RebindRequest(
            access_node=node,
            connections=[pb.BoundConnection(uid=u, conn_id=c, device_id=d) for u, c, d in connections],
        )
        return (await self._call(self.stub.Rebind, request)).bound

    async def health(self) -> bool:
        call = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=bytes, response_deserializer=bytes
        )
        try:
            raw = await call(b"", timeout=self.timeout)
        except grpc.aio.AioRpcError:
            return False
        return raw == bytes([0x08, 1])

    async def close(self) -> None:
        await self.channel.close()
