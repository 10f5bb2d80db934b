"""A client's heartbeat is answered while its send waits on a hung dispatch node: a client
whose send takes longer than its heartbeat timeout must not take the connection for dead."""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import FrameDecoder, decode_body, encode_message
from im_runtime.protocol.types import RequestType

pytestmark = pytest.mark.timeout(120)


async def test_heartbeat_answered_while_a_send_waits_on_a_frozen_dispatch_node(topology):
    topology.start_route()
    dispatch = topology.start_dispatch("dispatch-1")
    access = topology.start_access("access-1")
    reader, writer = await asyncio.open_connection("127.0.0.1", access.ports["tcp"])
    decoder = FrameDecoder(max_body=1 << 20)
    frames: list = []

    async def next_of(request_type: int, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            for i, frame in enumerate(frames):
                if frame.request_type == request_type:
                    frames.pop(i)
                    return frame
            left = deadline - time.monotonic()
            assert left > 0, f"no {RequestType(request_type).name} within {timeout} s"
            data = await asyncio.wait_for(reader.read(65536), left)
            assert data, "connection closed"
            frames.extend(decoder.receive_data(data))

    try:
        writer.write(encode_message(RequestType.AUTH_REQ, 1, pb.AuthRequest(uid="hb-alice", token=topology.token("hb-alice"))))
        assert decode_body(RequestType.AUTH_RESP, (await next_of(RequestType.AUTH_RESP, 10)).body).code == 0
        writer.write(encode_message(RequestType.ID_BATCH_REQ, 2, pb.IdBatchRequest(count=1)))
        message_id = decode_body(RequestType.ID_BATCH_RESP, (await next_of(RequestType.ID_BATCH_RESP, 10)).body).ids[0]
        dispatch.process.send_signal(signal.SIGSTOP)  # hung, not dead: its link stays open
        try:
            send = pb.SendRequest(message_id=message_id, type=pb.SINGLE, to="hb-bob", content=b"hi")
            writer.write(encode_message(RequestType.SEND_REQ, 3, send))
            await asyncio.sleep(0.5)  # the send is in flight, waiting on the frozen node
            started = time.monotonic()
            writer.write(encode_message(RequestType.HEARTBEAT_REQ, 4))
            beat = await next_of(RequestType.HEARTBEAT_RESP, 2)
            assert beat.sequence == 4 and time.monotonic() - started < 2
            assert not any(f.request_type == RequestType.SEND_ACK for f in frames)  # still waiting
        finally:
            dispatch.process.send_signal(signal.SIGCONT)
        ack = decode_body(RequestType.SEND_ACK, (await next_of(RequestType.SEND_ACK, 15)).body)
        assert ack.code == 0 and ack.seq == 1
    finally:
        writer.close()
