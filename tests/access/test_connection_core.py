"""Admission rules of PROTOCOL.md on the sans-I/O connection core."""
from im_runtime.access.connection import Admitted, ConnectionCore, Reply
from im_runtime.access.state import ConnState, InvalidTransition, transition
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import FrameDecoder, HEADER, decode_body, encode_frame, encode_message
from im_runtime.protocol.types import ErrorCode, RequestType


def _error_of(reply: Reply) -> pb.Error:
    (frame,) = FrameDecoder().receive_data(reply.data)
    assert frame.request_type == RequestType.ERROR
    return decode_body(RequestType.ERROR, frame.body)


def _admit(core, data):
    return [core.admit(e) for e in core.receive_data(data)]


def test_before_auth_only_auth_and_heartbeat():
    core = ConnectionCore()
    (hb,) = _admit(core, encode_frame(RequestType.HEARTBEAT_REQ, 5))
    assert isinstance(hb, Reply) and not hb.close
    (frame,) = FrameDecoder().receive_data(hb.data)
    assert (frame.request_type, frame.sequence) == (RequestType.HEARTBEAT_RESP, 5)
    (send,) = _admit(core, encode_message(RequestType.SEND_REQ, 6, pb.SendRequest(message_id=1)))
    assert _error_of(send).code == ErrorCode.UNAUTHENTICATED and not send.close
    (auth,) = _admit(core, encode_message(RequestType.AUTH_REQ, 7, pb.AuthRequest(uid="a", token="t")))
    assert isinstance(auth, Admitted) and auth.message.uid == "a"


def test_unknown_type_and_server_types_refused_connection_stays():
    core = ConnectionCore()
    for request_type in (5, 12, 100, 110, 99999):
        (reply,) = _admit(core, encode_frame(request_type, 1))
        assert _error_of(reply).code == ErrorCode.NOT_FOUND and not reply.close


def test_bad_body_is_400_and_not_fatal():
    core = ConnectionCore()
    (reply,) = _admit(core, encode_frame(RequestType.AUTH_REQ, 3, b"\x0a\xff"))
    assert _error_of(reply).code == ErrorCode.BAD_BODY and not reply.close


def test_fatal_errors_close():
    core = ConnectionCore(max_body=100)
    (reply,) = _admit(core, HEADER.pack(20, 1, 10, 1, 101))
    assert _error_of(reply).code == ErrorCode.FRAME_TOO_LARGE and reply.close
    core = ConnectionCore()
    (reply,) = _admit(core, HEADER.pack(19, 1, 10, 1, 0))
    assert _error_of(reply).code == ErrorCode.BAD_FRAME and reply.close


def test_authenticated_admits_every_client_request():
    core = ConnectionCore()
    core.authenticated("alice", "phone")
    (send,) = _admit(core, encode_message(RequestType.SEND_REQ, 1, pb.SendRequest(message_id=1, to="b")))
    assert isinstance(send, Admitted) and send.request_type == RequestType.SEND_REQ
    (unread,) = _admit(core, encode_frame(RequestType.UNREAD_REQ, 2))
    assert isinstance(unread, Admitted) and unread.message is None


def test_websocket_message_must_be_exactly_one_frame():
    core = ConnectionCore()
    two = encode_frame(RequestType.HEARTBEAT_REQ, 1) * 2
    (event,) = core.receive_message(two)
    assert event.code == ErrorCode.BAD_FRAME and event.fatal
    core = ConnectionCore()
    (event,) = core.receive_message(encode_frame(RequestType.HEARTBEAT_REQ, 1)[:10])
    assert event.code == ErrorCode.BAD_FRAME
    core = ConnectionCore()
    (frame,) = core.receive_message(encode_frame(RequestType.HEARTBEAT_REQ, 1))
    assert frame.request_type == RequestType.HEARTBEAT_REQ


def test_failed_auths_are_bounded():
    core = ConnectionCore()
    assert not any(core.auth_failed() for _ in range(4))
    assert core.auth_failed()


def test_state_table_refuses_going_back():
    assert transition(ConnState.CONNECTED, ConnState.AUTHENTICATED) is ConnState.AUTHENTICATED
    try:
        transition(ConnState.CLOSED, ConnState.AUTHENTICATED)
    except InvalidTransition:
        return
    raise AssertionError("closed -> authenticated must be refused")


def test_draining_ignores_new_requests_but_takes_acks():
    core = ConnectionCore()
    core.authenticated("a", "")
    core.drain()
    (send,) = _admit(core, encode_message(RequestType.SEND_REQ, 1, pb.SendRequest(message_id=1)))
    assert send is None
    (ack,) = _admit(core, encode_message(RequestType.PUSH_ACK, 2, pb.PushAck(message_ids=[1])))
    assert isinstance(ack, Admitted)
