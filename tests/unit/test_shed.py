"""Raw reads of a datagram (sip/raw.py), the workers' dispatch by Call-ID, and the overload shedder
(sip/shed.py): what is shed, what never is, fairness, the state's start and end, and a real socket's
queue age (transport/udp.py ``head_age``)."""

from __future__ import annotations

import socket
import time

from hypothesis import given, strategies as st

from helpers import request
from sipguard.policy.emergency import EmergencyNumbers
from sipguard.sip.parser import parse
from sipguard.sip.message import Response
from sipguard.sip.raw import call_id_hash, call_id_of, owner_of, read_head, reply_port, stateless_reply
from sipguard.sip.shed import CALM_S, TARGET, TICK_S, WINDOW_S, Shedder, fair_share
from sipguard.transport.udp import SO_TIMESTAMPNS, head_age

SOS = EmergencyNumbers(("112", "100", "101"), "BE")


def _invite(n: int = 1, **kw: object) -> bytes:
    kw.setdefault("call_id", f"call-{n}@127.0.0.2")
    kw.setdefault("branch", f"z9hG4bK-{n}")
    return request("INVITE", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- raw reads
def test_call_id_in_every_spelling_and_none_without() -> None:
    assert call_id_of(_invite(call_id="abc@h")) == b"abc@h"
    compact = _invite().replace(b"Call-ID: call-1@127.0.0.2", b"i:  xyz@h ")
    assert call_id_of(compact) == b"xyz@h"
    odd = _invite().replace(b"Call-ID:", b"CALL-id  :")
    assert call_id_of(odd) == b"call-1@127.0.0.2"
    assert call_id_of(_invite().replace(b"Call-ID: call-1@127.0.0.2\r\n", b"")) is None
    # a Call-ID line in the body is not the request's
    body_only = _invite().replace(b"Call-ID: call-1@127.0.0.2\r\n", b"") + b"\r\nCall-ID: in-body"
    assert call_id_of(body_only) is None


@given(st.text(alphabet="abcdefghijklmnop0123456789-@.", min_size=1, max_size=40), st.integers(1, 8))
def test_owner_is_the_hash_of_the_call_id_whatever_the_spelling(call_id: str, workers: int) -> None:
    expected = call_id_hash(call_id.encode()) % workers
    assert owner_of(_invite(call_id=call_id), workers) == expected
    assert owner_of(_invite(call_id=call_id).replace(b"Call-ID:", b"i:"), workers) == expected


def test_owners_spread_calls_evenly() -> None:
    owners = [owner_of(_invite(n), 2) for n in range(2000)]
    assert 900 < owners.count(0) < 1100


def test_a_stateless_503_is_a_valid_response_to_the_request() -> None:
    data = _invite(extra=["Via: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-b", "X-Other: kept out"],
                   rport=True)
    # a second Via and a folded From: both copied, the fold joined
    data = data.replace(b"From: <sip:", b"From:\r\n <sip:")
    head = read_head(data)
    assert head is not None and not head.to_tag and head.via_count == 2
    reply = parse(stateless_reply(head, 503, b"Service Unavailable", b"sgov-1", b"Retry-After: 2\r\n"))
    req = parse(data)
    assert isinstance(reply, Response) and reply.status == 503
    assert [str(v) for v in reply.vias] == [str(v) for v in req.vias]
    assert reply.call_id == req.call_id and reply.cseq == 1 and reply.cseq_method == "INVITE"
    assert reply.from_tag == "ft1" and reply.to_tag == "sgov-1"
    assert reply.get("retry-after") == "2" and reply.get("x-other") is None


def test_read_head_refuses_a_request_missing_a_field() -> None:
    for name in (b"Via", b"From", b"To", b"CSeq", b"Call-ID"):
        data = b"\r\n".join(line for line in _invite().split(b"\r\n") if not line.startswith(name + b":"))
        assert read_head(data) is None, name
    assert read_head(_invite(to_tag="x")).to_tag  # type: ignore[union-attr]


def test_reply_port_follows_rport_else_the_sent_by() -> None:
    assert reply_port(b"SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport", 40000) == 40000
    assert reply_port(b"SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1", 40000) == 5070
    assert reply_port(b"SIP/2.0/UDP pbx.example;branch=z9hG4bK-1", 40000) == 5060
    assert reply_port(b"SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK-1", 40000) == 5060
    assert reply_port(b"SIP/2.0/UDP [2001:db8::1]:5080;branch=z9hG4bK-1", 40000) == 5080


# ---------------------------------------------------------------- fairness
def test_fair_share_is_max_min_fair() -> None:
    assert fair_share(100, [5, 200]) == 95  # the quiet source gets all it asks, the noisy one the rest
    assert fair_share(100, [200, 200]) == 50
    assert fair_share(100, [10, 20]) == 90  # under the budget: nobody is held back
    assert fair_share(0, [3]) == 1 and fair_share(10, []) == 10


@given(st.integers(1, 500), st.lists(st.integers(1, 300), min_size=1, max_size=20))
def test_fair_share_never_exceeds_the_budget_and_spends_it(budget: int, demands: list[int]) -> None:
    share = fair_share(budget, demands)
    used = sum(min(d, share) for d in demands)
    assert used <= max(budget, len(demands))  # at least one each, else within the budget
    if sum(demands) > budget and share > 1:
        assert sum(min(d, share + 1) for d in demands) > budget or share >= max(demands)  # the largest such


# ---------------------------------------------------------------- the shedder
def _overloaded(shedder: Shedder, now: float = 100.0) -> float:
    """Three samples in a row over the threshold: the state starts.  Returns the clock after them."""
    assert shedder.tick(now, 0.0) == ""
    assert shedder.tick(now + TICK_S, 1.0) == ""
    assert shedder.tick(now + 2 * TICK_S, 1.0) == ""
    assert shedder.tick(now + 3 * TICK_S, 1.0) == "start"
    return now + 3 * TICK_S


def test_nothing_is_shed_until_the_queue_stays_long() -> None:
    shedder = Shedder(0.04, 2)
    assert all(shedder.consider(_invite(n), "10.0.0.1", 5060) is None for n in range(50))
    # two long samples (a pause of the garbage collector, a burst) are not enough
    assert shedder.tick(100.0, 1.0) == shedder.tick(100.02, 0.5) == "" and not shedder.active
    assert shedder.tick(100.04, 0.0) == "" and shedder.tick(100.06, 0.05) == "" and shedder.shed == 0


def test_forced_overload_sheds_new_invites_only() -> None:
    shedder = Shedder(0.02, 7)
    shedder.emergency = SOS.datagram
    shedder.forced = True
    assert shedder.consider(_invite(1, call_id="known"), "10.0.0.1", 5060) is not None  # shed
    reply, port = shedder.consider(_invite(2, rport=True), "10.0.0.1", 40000)  # type: ignore[misc]
    assert port == 40000 and b"SIP/2.0 503 " in reply and b"Retry-After: 7\r\n" in reply
    assert shedder.consider(_invite(3, ruri="sip:112@10.0.0.9"), "10.0.0.1", 5060) is None  # emergency
    assert shedder.consider(_invite(4, ruri="urn:service:sos.fire"), "10.0.0.1", 5060) is None
    assert shedder.consider(_invite(5, to_tag="callee"), "10.0.0.1", 5060) is None  # a re-INVITE
    assert shedder.consider(b"INVITE sip:x SIP/2.0\r\n\r\n", "10.0.0.1", 5060) is None  # malformed: the parser's
    assert shedder.shed == 2
    # the ACK of a 503 of ours ends here; any other ACK goes on
    ack = request("ACK", to_tag="sgov-0000abcd", call_id="call-2@127.0.0.2")
    assert shedder.absorbs(ack) and not shedder.absorbs(request("ACK", to_tag="callee"))
    # only the To tag says so: a caller whose own From tag happens to start the same way keeps its ACK
    assert not shedder.absorbs(request("ACK", to_tag="callee", from_tag="sgov-0000abcd"))
    assert not shedder.absorbs(request("ACK", to_tag="callee", from_tag="sgov-1", extra=["Subject: tag=sgov-"]))
    assert shedder.absorbs(request("ACK", to_tag="sgov-0000abcd", from_tag="sgov-1"))  # both: the To's counts
    spaced = request("ACK", to_tag="sgov-0000abcd").replace(b">;tag=sgov-", b"> ; tag=sgov-")
    compact = request("ACK", to_tag="sgov-0000abcd").replace(b"\r\nTo: ", b"\r\nt : ")
    assert shedder.absorbs(spaced) and shedder.absorbs(compact)
    in_uri = request("ACK").replace(b"To: <sip:+3250123400@127.0.0.3>", b"To: <sip:+3250123400@127.0.0.3;tag=sgov-1>")
    assert b";tag=sgov-1>" in in_uri and not shedder.absorbs(in_uri)  # a URI parameter is not the To's tag


def test_the_retransmission_of_an_invite_let_through_is_never_shed() -> None:
    shedder = Shedder(0.02, 2)
    first = _invite(1)
    assert shedder.consider(first, "10.0.0.1", 5060) is None  # before the overload: let through
    shedder.forced = True
    assert shedder.consider(first, "10.0.0.1", 5060) is None  # its retransmission: still the core's
    assert shedder.consider(_invite(2), "10.0.0.1", 5060) is not None


def test_the_budget_is_shared_fairly_and_shrinks_while_the_queue_stays_long() -> None:
    shedder = Shedder(0.04, 2)
    for n in range(200):  # 200 INVITEs per window before the overload: more than could be served
        shedder.consider(_invite(n), "10.0.0.1", 5060)
    now = _overloaded(shedder)
    assert shedder.budget == 100  # half of them
    serial = 1000

    def window(noisy: int, quiet: int) -> tuple[int, int]:
        """A window's INVITEs, spread evenly over its samples."""
        nonlocal serial, now
        passed = [0, 0]
        slots = round(WINDOW_S / TICK_S)
        for _slot in range(slots):
            for i in range(max(noisy, quiet) // slots):
                for k, (host, count) in enumerate((("10.0.0.1", noisy), ("10.0.0.2", quiet))):
                    if i < count // slots:
                        serial += 1
                        passed[k] += shedder.consider(_invite(serial), host, 5060) is None
            now += TICK_S
            shedder.tick(now, 1.0)  # the queue stays long
        return passed[0], passed[1]

    window(300, 10)  # a noisy trunk and a quiet PBX: the shares are set from this window's demand
    budget = shedder.budget
    assert budget == 50  # 100 halved: the queue stayed long, far over the target (a mean of 1 s, not 12 ms)
    noisy, quiet = window(300, 10)
    assert quiet == 10  # the quiet source gets all it asks
    assert noisy == budget - 10  # the noisy one the rest of the budget
    window(300, 10)
    assert shedder.budget < budget


def test_a_share_is_let_through_paced_over_the_window_not_at_its_start() -> None:
    """A burst at a window's start gets a fifth of the share; the rest is let through as the window goes on,
    and what a source did not use early carries over within the window."""
    shedder = Shedder(0.04, 2)
    kept = 0.04 * TARGET * 0.75  # a queue delay between half the target and the target: the budget is kept
    for n in range(200):
        shedder.consider(_invite(n), "10.0.0.1", 5060)
    now = _overloaded(shedder)  # budget 100: one source, its share the whole budget
    assert shedder.share == 100
    serial = 1000

    def burst(count: int) -> int:
        nonlocal serial
        passed = 0
        for _ in range(count):
            serial += 1
            passed += shedder.consider(_invite(serial), "10.0.0.1", 5060) is None
        return passed

    assert burst(300) == 20  # the window's first fifth; the other 280 shed
    now += TICK_S
    shedder.tick(now, kept)  # the second sample: two fifths so far
    assert burst(300) == 20
    now += TICK_S
    shedder.tick(now, kept)
    now += TICK_S
    shedder.tick(now, kept)  # the fourth: four fifths, of which 40 are still unused
    assert burst(300) == 40
    now += TICK_S
    shedder.tick(now, kept)
    assert burst(300) == 20 and shedder.allowed == shedder.share == 100  # the whole share, no more
    now += TICK_S
    shedder.tick(now, kept)  # a new window (the mean between half the target and the target: kept)
    assert shedder.share == 100 and shedder.allowed == 20 and burst(300) == 20


def test_the_budget_grows_back_once_the_queue_is_short() -> None:
    shedder = Shedder(0.04, 2)
    for n in range(100):
        shedder.consider(_invite(n), "10.0.0.1", 5060)
    now = _overloaded(shedder)
    serial = 1000

    def window(delay: float) -> int:
        nonlocal now, serial
        for _ in range(100):  # more than the budget: some shed in every window, the state goes on
            serial += 1
            shedder.consider(_invite(serial), "10.0.0.1", 5060)
        for _ in range(5):
            now += TICK_S
            shedder.tick(now, delay)
        assert shedder.active
        return shedder.budget

    target = 0.04 * TARGET  # 12 ms: three tenths of the threshold
    budget = shedder.budget
    assert window(target * 1.5) < budget  # a mean over the target: smaller
    budget = shedder.budget
    assert window(target * 0.75) == budget  # between half the target and the target: kept
    assert window(target * 0.25) > budget  # under half the target: grows


def test_the_state_ends_once_nothing_was_shed_for_a_while() -> None:
    shedder = Shedder(0.04, 2)
    now = _overloaded(shedder)
    shedder.consider(_invite(1), "10.0.0.1", 5060)
    events = []
    t = now
    while t < now + CALM_S + 1:
        t += TICK_S
        events.append(shedder.tick(t, 0.0))  # the queue is short again
    assert events.count("end") == 1 and not shedder.active
    assert shedder.consider(_invite(2), "10.0.0.1", 5060) is None


def test_head_age_reads_how_long_the_oldest_datagram_waited() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        time.sleep(0.1)  # the kernel turns its receive stamps on a moment after the first socket asks
        assert head_age(rx, time.time_ns()) == 0.0  # nothing waits
        tx.sendto(b"first", rx.getsockname())
        time.sleep(0.05)
        tx.sendto(b"second", rx.getsockname())
        age = head_age(rx, time.time_ns())
        assert 0.045 < age < 1.0
        assert rx.recv(100) == b"first"  # peeked, not taken
        assert head_age(rx, time.time_ns()) < 0.04  # now "second" is the oldest
    finally:
        rx.close()
        tx.close()


@given(st.lists(st.sampled_from([b"tag=sgov-1", b";", b"<", b">", b":", b"To", b"t", b"From", b" ", b"\r\n", b"\n",
                                 b"x"]), max_size=30))
def test_the_to_tag_test_never_raises_and_needs_our_tag(pieces: list[bytes]) -> None:
    shedder = Shedder(0.04, 2)
    shedder.shed = 1
    data = b"ACK sip:x SIP/2.0\r\n" + b"".join(pieces)
    assert shedder.absorbs(data) in (True, False)
    if b"tag=sgov-" not in data:
        assert not shedder.absorbs(data)
