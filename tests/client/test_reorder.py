from im_runtime.client.reorder import Timeline
from im_runtime.proto import imstack_pb2 as pb


def msg(seq, mid=None, conv="s:a:b", sender="a", to="b"):
    m = pb.Message(message_id=mid or 1000 + seq, conversation_id=conv, seq=seq, to=to)
    setattr(m, "from", sender)
    return m


def seqs(messages):
    return [m.seq for m in messages]


def test_in_order_and_duplicates():
    t = Timeline("b")
    assert seqs(t.offer(msg(1), 0)) == [1]
    assert t.offer(msg(1), 0) == []
    assert seqs(t.offer(msg(2), 0)) == [2]


def test_out_of_order_is_held_then_released_in_seq_order():
    t = Timeline("b")
    t.offer(msg(1), 0)
    assert t.offer(msg(3), 0) == [] and t.offer(msg(4), 0) == []
    assert t.gaps(0.1, after=0.5) == []
    assert t.gaps(1.0, after=0.5) == [("s:a:b", 1, 3)]
    assert seqs(t.offer(msg(2), 1.0)) == [2, 3, 4]
    assert t.gaps(5.0, after=0.5) == []


def test_gap_fills_back_off_then_expire_in_order():
    t = Timeline("b")
    t.offer(msg(1), 0)
    t.offer(msg(4), 0)
    t.offer(msg(3), 0)
    asked = [now for now in (0.5, 0.6, 1.0, 1.6, 2.5, 4.6) if t.gaps(now, after=0.5)]
    assert asked == [0.5, 1.6, 4.6]  # 0.5 s, then waits of 1 s, 2 s: no history storm
    assert t.expire(9.0, after=10.0) == []
    assert seqs(t.expire(10.0, after=10.0)) == [3, 4]
    assert seqs(t.offer(msg(2), 11.0)) == [2]  # a late message is still delivered, never dropped


def test_first_sight_mid_conversation_waits_briefly_and_orders():
    t = Timeline("c")
    assert t.offer(msg(7, to="g", conv="g:x"), 0) == []
    assert t.offer(msg(6, to="g", conv="g:x"), 0.05) == []
    assert t.settle(0.1, after=0.2) == []
    assert seqs(t.settle(0.2, after=0.2)) == [6, 7]
    assert seqs(t.offer(msg(8, to="g", conv="g:x"), 0.3)) == [8]


def test_seq_one_never_waits():
    t = Timeline("b")
    assert seqs(t.offer(msg(1), 0)) == [1]


def test_own_sends_fill_their_slots_even_before_anything_arrived():
    t = Timeline("b")
    assert t.own_sent("s:a:b", 1, 9999, 0) == []
    assert seqs(t.offer(msg(2), 0)) == [2]
    t.own_sent("s:a:b", 3, 9998, 0)
    assert seqs(t.offer(msg(4), 0)) == [4]


def test_own_messages_found_in_history_are_never_delivered():
    t = Timeline("b")
    t.offer(msg(1), 0)
    t.expect_own(2002)  # our send starts
    t.offer(msg(3), 0)  # gap at 2, which is our own message whose ack is slow
    assert seqs(t.offer(msg(2, mid=2002, sender="b", to="a"), 1.0)) == [3]


def test_own_messages_sent_from_another_device_are_delivered_in_order():
    """Sender sync (S18): what the user sent from its phone reaches its laptop, marked by
    `from` being the user's own uid."""
    t = Timeline("b")
    t.offer(msg(1), 0)
    assert t.offer(msg(3, sender="b", to="a"), 0) == []
    got = t.offer(msg(2), 0)
    assert seqs(got) == [2, 3] and getattr(got[1], "from") == "b"


def test_chat_with_oneself_is_delivered():
    t = Timeline("a")
    note = msg(1, conv="s:a:a", sender="a", to="a")
    assert seqs(t.offer(note, 0)) == [1]


def test_conversations_are_independent():
    t = Timeline("z")
    t.offer(msg(1, conv="g:x", to="x"), 0)
    assert t.offer(msg(3, conv="g:x", to="x"), 0) == []
    assert seqs(t.offer(msg(1, conv="g:y", to="y", mid=5), 0)) == [1]


def gap(seq, conv="s:a:b"):
    marker = pb.Message(conversation_id=conv, seq=seq, content_type=-1)
    marker.gap = True
    return marker


def test_a_gap_marker_fills_its_slot_at_once():
    """History answers a seq that will never carry a message with a gap marker: what waited
    behind it is released without waiting for expire(), and the marker is never handed over."""
    t = Timeline("b")
    t.offer(msg(1), 0)
    assert t.offer(msg(3), 0) == [] and t.offer(msg(5), 0) == []
    assert t.gaps(0.5, after=0.5) == [("s:a:b", 1, 3)]
    assert seqs(t.offer(gap(2), 0.6)) == [3]
    assert seqs(t.offer(gap(4), 0.6)) == [5]
    assert t.gaps(100, after=0.5) == [] and t.expire(100, after=10) == []
    assert (t.gaps_skipped, t.gaps_given_up) == (2, 0)
    # a marker seen before the message-free slot's neighbours, and a second copy of one
    assert t.offer(gap(7), 0.7) == [] and t.offer(gap(7), 0.7) == []
    assert seqs(t.offer(msg(6), 0.7)) == [6]
    assert seqs(t.offer(msg(8), 0.7)) == [8]


def test_a_gap_marker_read_by_content_type_alone():
    """A client built from the v1 .proto without the `gap` field still sees content_type -1
    and message_id 0."""
    t = Timeline("b")
    t.offer(msg(1), 0)
    t.offer(msg(3), 0)
    assert seqs(t.offer(pb.Message(conversation_id="s:a:b", seq=2, content_type=-1), 0.1)) == [3]


def test_repeats_are_counted():
    t = Timeline("b")
    t.offer(msg(1), 0)
    t.offer(msg(1), 0)
    t.offer(msg(2), 0)
    assert t.repeats == 1
