"""The sans-I/O codec: bytes in, events out, no server needed (STYLE 1-3)."""
import struct

from hypothesis import given, settings, strategies as st

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import (
    HEADER,
    CodecError,
    Frame,
    FrameDecoder,
    FrameError,
    encode_frame,
    encode_message,
    try_decode_body,
)
from im_runtime.protocol.types import ErrorCode, RequestType


def test_header_is_five_big_endian_uint32():
    data = encode_frame(RequestType.SEND_REQ, 7, b"abc", version=3)
    assert len(data) == 23
    assert struct.unpack(">IIIII", data[:20]) == (20, 3, 10, 7, 3)
    assert data[20:] == b"abc"


def test_roundtrip_message():
    req = pb.SendRequest(message_id=42, type=pb.SINGLE, to="bob", content=b"hi")
    events = FrameDecoder().receive_data(encode_message(RequestType.SEND_REQ, 9, req))
    assert len(events) == 1 and isinstance(events[0], Frame)
    body, problem = try_decode_body(events[0].request_type, events[0].body)
    assert problem is None and body == req and events[0].sequence == 9


def test_many_frames_in_one_chunk_and_split_anywhere():
    stream = b"".join(encode_frame(RequestType.HEARTBEAT_REQ, i) for i in range(5)) + encode_frame(
        RequestType.AUTH_REQ, 6, b"x" * 100
    )
    whole = FrameDecoder().receive_data(stream)
    for cut in range(len(stream)):
        dec = FrameDecoder()
        parts = dec.receive_data(stream[:cut]) + dec.receive_data(stream[cut:])
        assert parts == whole
    assert [e.sequence for e in whole] == [0, 1, 2, 3, 4, 6]


def test_bad_head_length_is_fatal_bad_frame():
    dec = FrameDecoder()
    events = dec.receive_data(HEADER.pack(21, 1, 3, 1, 0))
    assert events == [FrameError(ErrorCode.BAD_FRAME, "head_length must be 20, got 21", True)]
    assert dec.closed and dec.receive_data(encode_frame(3, 1)) == []


def test_body_over_limit_refused_before_body_arrives():
    dec = FrameDecoder(max_body=1000)
    events = dec.receive_data(HEADER.pack(20, 1, 10, 1, 1001))  # header only
    assert len(events) == 1 and events[0].code == ErrorCode.FRAME_TOO_LARGE and events[0].fatal
    assert dec.buffered == 0


def test_body_at_limit_accepted():
    dec = FrameDecoder(max_body=1000)
    events = dec.receive_data(encode_frame(10, 1, b"\0" * 1000))
    assert isinstance(events[0], Frame) and len(events[0].body) == 1000


def test_valid_frames_before_a_fatal_error_are_kept():
    events = FrameDecoder().receive_data(encode_frame(3, 1) + HEADER.pack(0, 0, 0, 0, 0))
    assert isinstance(events[0], Frame) and isinstance(events[1], FrameError)


def test_unknown_type_and_bad_body_are_not_fatal():
    _, problem = try_decode_body(777, b"")
    assert problem.code == ErrorCode.NOT_FOUND and not problem.fatal
    _, problem = try_decode_body(RequestType.SEND_REQ, b"\xff\xff\xff")
    assert problem.code == ErrorCode.BAD_BODY and not problem.fatal


def test_encoder_refuses_out_of_range_fields():
    for bad in ((-1, 0), (0, 1 << 32)):
        try:
            encode_frame(*bad)
        except CodecError:
            continue
        raise AssertionError("expected CodecError")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=16, max_value=300))
def test_fuzz_whole_equals_byte_by_byte_and_never_raises(data, max_body):
    whole = FrameDecoder(max_body=max_body).receive_data(data)
    dec = FrameDecoder(max_body=max_body)
    bytewise = []
    for i in range(len(data)):
        bytewise += dec.receive_data(data[i : i + 1])
    assert whole == bytewise
    for event in whole:
        if isinstance(event, Frame):
            try_decode_body(event.request_type, event.body)  # must not raise


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(RequestType)), st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=8
    ),
    st.binary(max_size=40),
)
def test_fuzz_valid_stream_with_garbage_tail(frames, tail):
    stream = b"".join(encode_frame(t, s, b) for t, s, b in frames)
    events = FrameDecoder().receive_data(stream + tail)
    decoded = [e for e in events if isinstance(e, Frame)]
    assert [(e.request_type, e.sequence, e.body) for e in decoded[: len(frames)]] == [
        (int(t), s, b) for t, s, b in frames
    ]
    for event in events:
        if isinstance(event, Frame):
            try_decode_body(event.request_type, event.body)
