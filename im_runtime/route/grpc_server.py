"""The route service over gRPC (`imstack.v1.Route`, grpc.aio) plus `grpc.health.v1.Health`.

Access nodes call Authenticate / Unbind, dispatch nodes call Lookup; DropNode removes the
sessions of a dead access node (S9). The health service is served by hand (two tiny messages,
encoded here) so no extra package is needed: Check answers SERVING while `ready()` holds.
"""
from __future__ import annotations

import logging
from typing import Callable

import grpc

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.proto import imstack_pb2_grpc as pb_grpc
from im_runtime.route.service import RouteService

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING = 1, 2


class RouteServicer(pb_grpc.RouteServicer):
    def __init__(self, route: RouteService) -> None:
        self.route = route

    async def Authenticate(self, request: pb.AuthenticateRequest, context) -> pb.AuthenticateResponse:  # noqa: N802
        auth = pb.AuthRequest(uid=request.uid, token=request.token, timestamp=request.timestamp, device_id=request.device_id)
        resp = await self.route.authenticate(auth, node=request.access_node, conn_id=request.conn_id)
        return pb.AuthenticateResponse(code=resp.code, message=resp.message, server_time=resp.server_time)

    async def Unbind(self, request: pb.UnbindRequest, context) -> pb.UnbindResponse:  # noqa: N802
        return pb.UnbindResponse(removed=await self.route.unbind(request.uid, node=request.access_node, conn_id=request.conn_id))

    async def Lookup(self, request: pb.LookupRequest, context) -> pb.LookupResponse:  # noqa: N802
        found = await self.route.lookup(request.uids)
        return pb.LookupResponse(users=[pb.UserNodes(uid=uid, access_nodes=nodes) for uid, nodes in found.items()])

    async def DropNode(self, request: pb.DropNodeRequest, context) -> pb.DropNodeResponse:  # noqa: N802
        return pb.DropNodeResponse(sessions_removed=await self.route.drop_node(request.access_node))

    async def Rebind(self, request: pb.RebindRequest, context) -> pb.RebindResponse:  # noqa: N802
        bound = await self.route.rebind(request.access_node, ((c.uid, c.conn_id, c.device_id) for c in request.connections))
        return pb.RebindResponse(bound=bound)


def _health_handler(ready: Callable[[], bool]) -> grpc.GenericRpcHandler:
    async def check(request: bytes, context) -> bytes:
        # HealthCheckResponse{status = 1}: field 1, varint.
        return bytes([0x08, SERVING if ready() else NOT_SERVING])

    return grpc.method_handlers_generic_handler(
        HEALTH_SERVICE,
        {"Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=bytes, response_serializer=bytes)},
    )


async def start_grpc(route: RouteService, host: str, port: int, *, ready: Callable[[], bool] = lambda: True) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_RouteServicer_to_server(RouteServicer(route), server)
    server.add_generic_rpc_handlers((_health_handler(ready),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC on {host}:{port}")
    await server.start()
    log.info("route grpc listening", extra={"host": host, "port": bound})
    return server, bound
