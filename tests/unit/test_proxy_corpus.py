"""RFC 4475 / RFC 5118 messages through the whole core: what is answered, what is forwarded."""

from __future__ import annotations

import pytest

from conftest import corpus
from helpers import CORPUS_EXPECTED_REPLY as EXPECTED_REPLY, CORPUS_NO_DIALOG as NO_DIALOG, Wire, feed
from sipguard.sip import Peer, parse

ROWS = corpus("rfc4475") + corpus("rfc5118")
SOURCE = Peer("udp", "127.0.0.2", 5062)
@pytest.fixture
def policy_text(policy_text: str) -> str:
    # the torture messages present strangers' caller IDs: this test is about SIP, not screening
    return policy_text + "    rules: {caller_id: off}\n"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["file"])
def test_corpus_through_the_proxy(core, clock, row) -> None:
    wire = Wire()
    feed(core, row["bytes"], SOURCE, clock.now, wire)
    forwarded = [s for s in wire.sent if s.status == 0]  # requests we sent on
    replies = [s.status for s in wire.sent if s.status != 0]
    name = row["file"]
    if name in EXPECTED_REPLY:
        expected = EXPECTED_REPLY[name]
        assert replies == ([expected] if expected else [])
        assert forwarded == []
    elif row["class"] == "invalid" or name in ("insuf.dat", "multi01.dat", "mcl01.dat", "ipv6-bug-abnf-3-colons.dat"):
        assert forwarded == [], "a malformed message must never be forwarded"
        assert replies in ([400], []), replies
    elif name in NO_DIALOG:
        assert replies == [NO_DIALOG[name]] and forwarded == []
    else:
        assert 400 not in replies
        assert len(forwarded) == 1, f"{name}: a well-formed request is forwarded"
        out = parse(forwarded[0].data)  # and what we forward is itself well-formed
        assert out.vias[0].host == "127.0.0.1"
