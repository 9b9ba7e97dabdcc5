"""The pump between the sockets and the core: sends, hands on other actions, runs the one timer."""

from __future__ import annotations

from collections.abc import Callable

from helpers import UAC, request
from sipguard.sip import ProxyCore, parse
from sipguard.sip.actions import Action, DialogStarted, Peer, PerFamily, Settle
from sipguard.sip.message import Response
from sipguard.sip.pump import TICK_S, Dispatch, Pump
from sipguard.sip.raw import owner_of


class Loop:
    """The loop's clock and call_at, moved by hand: fires armed callbacks as time passes."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.armed: list[tuple[float, Callable[[], None], "Loop.Handle"]] = []
        self.fired_at: list[float] = []

    class Handle:
        def __init__(self) -> None:
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> "Loop.Handle":
        handle = Loop.Handle()
        self.armed.append((when, callback, handle))
        return handle

    def live(self) -> list[float]:
        return sorted(when for when, _cb, h in self.armed if not h.cancelled)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = sorted((w, i) for i, (w, _cb, h) in enumerate(self.armed) if not h.cancelled and w <= end)
            if not due:
                break
            when, i = due[0]
            _w, callback, handle = self.armed.pop(i)
            self.now = when
            self.fired_at.append(when)
            callback()
        self.now = end


def _pump(core: ProxyCore, loop: Loop) -> tuple[Pump, list[tuple[bytes, tuple[str, int]]], list[object]]:
    sent: list[tuple[bytes, tuple[str, int]]] = []
    other: list[object] = []

    def on_action(action: Action) -> None:
        other.append(action)
        if isinstance(action, Settle):
            pump.carry_out(core.settled(action.ticket, True, loop.time()))

    pump = Pump(core, {("udp", 4): lambda data, addr: sent.append((data, addr))}, on_action,
                lambda peer: other.append(("error", peer)), loop.call_at, loop.time)
    return pump, sent, other


def test_sends_go_out_and_other_actions_go_to_the_server_in_order(core: ProxyCore) -> None:
    loop = Loop()
    pump, sent, other = _pump(core, loop)
    pump.datagram_received(request(), ("127.0.0.2", 5062))
    kinds = [parse(data).status if data.startswith(b"SIP/") else parse(data).method for data, _addr in sent]
    assert kinds == ["INVITE", 100]  # the INVITE downstream after the claim, then 100 Trying upstream
    assert sent[0][1] == ("127.0.0.3", 5063) and sent[1][1] == ("127.0.0.2", 5062)
    assert [type(a) for a in other] == [Settle, DialogStarted]


def test_the_loop_timer_is_armed_per_tick_and_never_early(core: ProxyCore) -> None:
    loop = Loop()
    loop.now = 1000.003
    pump, sent, _other = _pump(core, loop)
    pump.receive(request(), UAC)
    deadline = core.next_deadline()  # Timer A of the first INVITE: now + T1
    assert deadline is not None
    (armed,) = loop.live()  # one loop timer, at the end of the deadline's tick
    assert deadline <= armed <= deadline + TICK_S
    # a second INVITE 1 ms later: its Timer A falls in the same tick, so no second loop timer
    loop.now += 0.001
    pump.receive(request(branch="z9hG4bK-uac-2", call_id="call-2@127.0.0.2"), UAC)
    assert loop.live() == [armed]
    before = len(sent)
    loop.advance(deadline - loop.now)  # the first deadline itself: the tick has not ended
    assert len(sent) == before
    loop.advance(TICK_S)
    # both INVITEs went downstream again, from one wake-up of the loop at the end of the tick
    assert [parse(d).method for d, _a in sent[before:]] == ["INVITE", "INVITE"]
    assert loop.fired_at == [armed]
    assert loop.live(), "the next retransmissions are armed"


def test_a_bug_behind_the_pump_is_reported_with_its_peer_and_the_pump_goes_on(core: ProxyCore) -> None:
    loop = Loop()
    errors: list[Peer | None] = []
    handed: list[object] = []
    broken = [True]

    def on_action(action: Action) -> None:
        if broken[0]:
            raise RuntimeError("a bug in the server's handling")
        handed.append(action)

    pump = Pump(core, {("udp", 4): lambda data, addr: None}, on_action, errors.append, loop.call_at, loop.time)
    pump.datagram_received(request(), ("127.0.0.2", 5062))
    assert errors == [UAC]
    broken[0] = False
    pump.datagram_received(request(branch="z9hG4bK-uac-9", call_id="call-9@127.0.0.2"), ("127.0.0.2", 5062))
    assert errors == [UAC] and [type(a) for a in handed] == [Settle]


def test_a_send_the_socket_refuses_becomes_a_503_upstream(core: ProxyCore) -> None:
    loop = Loop()
    sent: list[tuple[bytes, tuple[str, int]]] = []
    other: list[object] = []

    def sendto(data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] == "127.0.0.3":
            raise OSError(22, "Invalid argument")  # as a socket bound to loopback says for a remote address
        sent.append((data, addr))

    def on_action(action: Action) -> None:
        other.append(action)
        if isinstance(action, Settle):
            pump.carry_out(core.settled(action.ticket, True, loop.time()))

    pump = Pump(core, {("udp", 4): sendto}, on_action, lambda peer: other.append(("error", peer)), loop.call_at,
                loop.time)
    pump.datagram_received(request(), ("127.0.0.2", 5062))
    assert [parse(data).status for data, _addr in sent] == [100, 503]  # the batch's 100, then the failure's 503
    assert "Invalid argument" in (parse(sent[1][0]).get("warning") or "")
    assert [type(a).__name__ for a in other if not isinstance(a, tuple)] == [
        "Settle", "DialogStarted", "Decided", "DialogEnded"]
    assert ("error", UAC) not in other


def test_a_full_send_buffer_loses_the_datagram_and_the_timers_send_it_again(core: ProxyCore) -> None:
    loop = Loop()
    attempts: list[tuple[str, int]] = []

    def sendto(data: bytes, addr: tuple[str, int]) -> None:
        attempts.append(addr)
        if len(attempts) == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")

    pump = Pump(core, {("udp", 4): sendto}, lambda a: pump.carry_out(core.settled(a.ticket, True, loop.time()))
                if isinstance(a, Settle) else None, lambda peer: None, loop.call_at, loop.time)
    pump.datagram_received(request(), ("127.0.0.2", 5062))
    assert core.stats.drops["send_buffer_full"] == 1
    loop.advance(0.6)  # Timer A
    assert attempts.count(("127.0.0.3", 5063)) == 2


def _call_id_owned_by(owner: int, workers: int = 2) -> str:
    return next(c for c in (f"call-{n}@127.0.0.2" for n in range(100)) if owner_of(f"X\r\nCall-ID: {c}\r\n\r\n".encode(),
                                                                                   workers) == owner)


def test_dispatch_hands_a_foreign_call_to_its_owner_with_the_peer_it_came_from(core: ProxyCore) -> None:
    loop = Loop()
    pump, sent, _other = _pump(core, loop)
    handed: list[bytes] = []
    dispatch = Dispatch(pump, 0, [None, handed.append], lambda host: True)
    foreign = request(call_id=_call_id_owned_by(1))
    dispatch.datagram_received(foreign, ("127.0.0.2", 5062))
    assert handed == [b"127.0.0.2 5062\n" + foreign] and sent == [] and dispatch.handed == 1
    dispatch.datagram_received(request(call_id=_call_id_owned_by(0)), ("127.0.0.2", 5062))
    assert len(handed) == 1 and [parse(d).method for d, _a in sent if not d.startswith(b"SIP/")] == ["INVITE"]


def test_the_ack_of_an_overload_503_ends_at_the_worker_that_reads_it(core: ProxyCore) -> None:
    """Under overload every shed call sends an ACK for its 503: no hand-off for it, whoever owns the Call-ID;
    any other ACK of a foreign call is still handed over (its owner holds the transaction or the dialog)."""
    loop = Loop()
    pump, sent, _other = _pump(core, loop)
    handed: list[bytes] = []
    dispatch = Dispatch(pump, 0, [None, handed.append], lambda host: True)
    pump.shedder.forced = True
    foreign = _call_id_owned_by(1)
    dispatch.handed_over(b"127.0.0.2 5062\n" + request(call_id=foreign))  # the owner's view of a handed INVITE
    [(reply, _addr)] = sent
    shed = parse(reply)
    assert isinstance(shed, Response) and shed.status == 503 and (shed.to_tag or "").startswith("sgov-")
    ack = request("ACK", call_id=foreign, to_tag=shed.to_tag, cseq_method="ACK")
    dispatch.datagram_received(ack, ("127.0.0.2", 5062))
    assert handed == [] and pump.shedder.absorbed == 1
    other_ack = request("ACK", call_id=foreign, to_tag="callee", cseq_method="ACK")
    dispatch.datagram_received(other_ack, ("127.0.0.2", 5062))
    assert handed == [b"127.0.0.2 5062\n" + other_ack] and pump.shedder.absorbed == 1


def test_per_family_picks_by_transport_then_address_family_and_keeps_the_first() -> None:
    """What the core's local addresses and the pump's sockets are looked up in: the first value of a transport
    and family wins (the core's first listen address of a family sends), a destination with a ':' in its host
    is IPv6, and a transport or family with nothing is None (the core answers 503, the pump counts a failed
    send)."""
    table = PerFamily([("udp", 4, "udp4"), ("udp", 6, "udp6"), ("udp", 4, "udp4-second"), ("tcp", 4, "tcp4")])
    assert table.get(Peer("udp", "192.0.2.1", 5060)) == "udp4"
    assert table.get(Peer("udp", "2001:db8::1", 5060)) == "udp6"
    assert table.get(Peer("tcp", "192.0.2.1", 5060)) == "tcp4"
    assert table.get(Peer("tcp", "2001:db8::1", 5060)) is None
    assert table.get(Peer("tls", "192.0.2.1", 5061)) is None
