"""Route: token check and the user -> access node session table (S5, S9).

The same object serves the all-in-one mode directly and the cluster mode behind gRPC.
"""
from __future__ import annotations

import time
from typing import Iterable

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import ErrorCode
from im_runtime.protocol.types import valid_uid
from im_runtime.route.tokens import TokenSigner
from im_runtime.storage.interfaces import OfflineStore, SessionStore


class RouteService:
    """`devices`: the timeline store, whose device registry learns of every sign-in (S18):
    a device that signed in once keeps its messages until it has them (or the retention
    limit passes), even if it never pulled."""

    def __init__(self, signer: TokenSigner, sessions: SessionStore, devices: OfflineStore | None = None) -> None:
        self.signer = signer
        self.sessions = sessions
        self.devices = devices

    async def authenticate(self, req: pb.AuthRequest, *, node: str, conn_id: int) -> pb.AuthResponse:
        now_ms = int(time.time() * 1000)
        if not valid_uid(req.uid):
            return pb.AuthResponse(code=ErrorCode.UNAUTHENTICATED, message="invalid uid", server_time=now_ms)
        if self.signer.verify(req.token, uid=req.uid) is None:
            return pb.AuthResponse(code=ErrorCode.UNAUTHENTICATED, message="bad or expired token", server_time=now_ms)
        await self.sessions.bind(req.uid, node, conn_id, req.device_id)
        if self.devices is not None:
            await self.devices.register(req.uid, req.device_id)
        return pb.AuthResponse(code=0, message="ok", server_time=now_ms)

    async def unbind(self, uid: str, *, node: str, conn_id: int) -> bool:
        return await self.sessions.unbind(uid, node, conn_id)

    async def lookup(self, uids: Iterable[str]) -> dict[str, list[str]]:
        return await self.sessions.lookup(uids)

    async def drop_node(self, node: str) -> int:
        return await self.sessions.drop_node(node)

    async def rebind(self, node: str, connections: Iterable[tuple[str, int, str]]) -> int:
        """Binds again every (uid, conn_id, device_id) an access node holds: the session table
        was lost (its epoch changed) while the connections stayed up."""
        count = 0
        for uid, conn_id, device_id in connections:
            if valid_uid(uid):
                await self.sessions.bind(uid, node, conn_id, device_id)
                count += 1
        return count
