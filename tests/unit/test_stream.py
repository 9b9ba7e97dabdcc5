"""Framing SIP on a byte stream (transport/stream.py, RFC 3261 §18.3; RFC 5626 §3.5.1 keep-alives)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipguard.transport.stream import Framer

INVITE = (b"INVITE sip:+3228807249@127.0.0.1 SIP/2.0\r\n"
          b"Via: SIP/2.0/TCP 127.0.0.2:5062;branch=z9hG4bK-1\r\n"
          b"From: <sip:+3228807241@127.0.0.2>;tag=a\r\nTo: <sip:+3228807249@127.0.0.1>\r\n"
          b"Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0\r\ns=-\r\n")
OK = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.2:5062;branch=z9hG4bK-1\r\n"
      b"From: <sip:a@b>;tag=a\r\nTo: <sip:c@d>;tag=b\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n")
STREAM = INVITE + b"\r\n\r\n" + OK + b"\r\n" + INVITE


def test_messages_on_one_stream_are_framed_by_their_content_length() -> None:
    f = Framer(16384)
    assert f.feed(STREAM) == [INVITE, OK, INVITE]
    assert f.pings == 1  # the double CRLF between the first two: answered with one CRLF
    assert not f.buffer and not f.started


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_stream_gives_the_same_messages(cuts: list[int]) -> None:
    f = Framer(16384)
    got: list[bytes] = []
    edges = [0, *sorted(cuts), len(STREAM)]
    for a, b in zip(edges, edges[1:]):
        got += f.feed(STREAM[a:b])
    assert got == [INVITE, OK, INVITE]


def test_a_message_in_pieces_is_started_until_its_last_byte() -> None:
    f = Framer(16384)
    assert f.feed(INVITE[:30]) == [] and f.started
    assert f.feed(INVITE[30:-1]) == [] and f.started  # headers whole, body one byte short
    assert f.feed(INVITE[-1:]) == [INVITE] and not f.started


def test_a_message_without_content_length_is_handed_on_as_its_head_alone() -> None:
    """§18.3: mandatory on a stream; the core answers it 400 and the next message is read after its head."""
    head = INVITE.split(b"Content-Length")[0] + b"\r\n"
    f = Framer(16384)
    assert f.feed(head + OK) == [head, OK]


@pytest.mark.parametrize("data,why", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "not SIP"),  # a TLS ClientHello on the TCP port
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a SIP request or status line"),
    (INVITE.replace(b"Content-Length: 10", b"Content-Length: 10\r\nl: 10"), "more than one Content-Length"),
    (INVITE.replace(b"Content-Length: 10", b"Content-Length: eleven"), "is not a number"),
    (INVITE.replace(b"Content-Length: 10", b"Content-Length: 999999"), "over max_message_bytes"),
    (b"INVITE sip:x SIP/2.0\r\nSubject: " + b"a" * 20000, "headers longer than"),
])
def test_what_loses_the_framing_or_is_not_sip_closes_the_connection(data: bytes, why: str) -> None:
    f = Framer(16384)
    assert f.feed(OK + data) == [OK]  # what came before is still handed on
    assert why in f.error and not f.buffer
    assert f.feed(OK) == []  # and nothing more is read


def test_lone_crlfs_are_skipped_and_double_ones_counted_as_pings() -> None:
    f = Framer(16384)
    assert f.feed(b"\r\n\r\n") == [] and f.pings == 1 and not f.started
    assert f.feed(b"\r\n") == [] and f.pings == 1 and not f.started  # a pong from the peer: nothing to answer
    assert f.feed(b"\r\n\r\n\r\n\r\n" + OK) == [OK] and f.pings == 3


def test_closed_connections_are_logged_ten_a_minute_per_reason_then_counted(caplog) -> None:
    from sipguard.policy.model import Connections
    from sipguard.sip.actions import Peer
    from sipguard.transport.stream import StreamListener

    listener = StreamListener("tcp", "127.0.0.1", 0, Connections(), 16384)
    with caplog.at_level("WARNING", logger="sipguard"):
        for i in range(25):
            listener.log_close(Peer("tcp", "192.0.2.7", 40000 + i), "deadline: a message unfinished after 5 s")
        listener.log_close(Peer("tcp", "192.0.2.8", 1), "framing: not SIP")
        assert len(caplog.records) == 11  # ten of the deadline, the one of framing
        listener._log_minute(61.0)
    assert caplog.records[-1].getMessage() == ("TCP: 15 more connections closed (deadline) in the last minute, "
                                               "not logged one by one")
    caplog.clear()
    with caplog.at_level("WARNING", logger="sipguard"):
        listener.log_close(Peer("tcp", "192.0.2.7", 1), "deadline: again")  # a new minute: logged again
    assert len(caplog.records) == 1
