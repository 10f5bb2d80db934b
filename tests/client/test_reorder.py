from im_runtime.client.reorder import Timeline
from im_runtime.proto import imstack_pb2 as pb


def msg(seq, mid=None, conv="s:a:b"):
    return pb.Message(message_id=mid or 1000 + seq, conversation_id=conv, seq=seq)


def test_in_order_and_duplicates():
    t = Timeline()
    assert [m.seq for m in t.offer(msg(1), 0)] == [1]
    assert t.offer(msg(1), 0) == []
    assert [m.seq for m in t.offer(msg(2), 0)] == [2]


def test_out_of_order_is_held_then_released_in_seq_order():
    t = Timeline()
    t.offer(msg(1), 0)
    assert t.offer(msg(3), 0) == [] and t.offer(msg(4), 0) == []
    assert t.gaps(0.1, after=0.5) == []
    assert t.gaps(1.0, after=0.5) == [("s:a:b", 1, 3)]
    assert [m.seq for m in t.offer(msg(2), 1.0)] == [2, 3, 4]
    assert t.gaps(5.0, after=0.5) == []


def test_own_sends_fill_their_slots():
    t = Timeline()
    t.offer(msg(1), 0)
    t.own_sent("s:a:b", 2, 9999, 0)
    assert [m.seq for m in t.offer(msg(3), 0)] == [3]


def test_skip_gap_delivers_held_in_order():
    t = Timeline()
    t.offer(msg(1), 0)
    t.offer(msg(5), 0)
    t.offer(msg(4), 0)
    assert [m.seq for m in t.skip_gap("s:a:b", 1)] == [4, 5]
    # a late message for a skipped slot is still delivered, never dropped
    assert [m.seq for m in t.offer(msg(2), 2)] == [2]


def test_conversations_are_independent():
    t = Timeline()
    t.offer(msg(1, conv="g:x"), 0)
    assert t.offer(msg(3, conv="g:x"), 0) == []
    assert [m.seq for m in t.offer(msg(7, conv="g:y"), 0)] == [7]
