"""Pump: one datagram in, through the core, the datagrams out; compiled with the core.

Every datagram used to cross four interpreted frames (the asyncio protocol, the server's
receive, its action loop, the listener's send) before and after the compiled core.  The pump
does that hop in compiled code: it makes the ``Peer``, calls ``ProxyCore.receive``, sends each
``Send`` through the ``sendto`` of the listener for its transport and address family, and hands
every other action, in order, to the server (``on_action``: claims, decisions, dialog events).
It also owns the one loop timer: armed at the core's next deadline rounded up to a tick
(``TICK_S``, 10 ms), and moved only when that tick is earlier than the armed one, so the deadlines
of many transactions that fall in one tick are served by one wake-up of the loop (RFC 3261's
timers start at T1 = 500 ms: firing up to 10 ms late is within what a UDP network jitters anyway).

Sockets stay with the listeners and everything with a side effect other than sending stays with
the server: the pump owns no socket and no clock (``now`` is the loop's ``time``, the timer the
loop's ``call_at``).  A send goes straight to the socket, so that a refusal is known at once:
a full send buffer loses the datagram (UDP; the SIP timers retransmit), any other error is a
transport error the core hears of (``ProxyCore.send_failed``: 503 upstream, the channel released).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Final

from .actions import Action, PerFamily, Peer, Send
from .proxy import ProxyCore
from .raw import owner_of
from .shed import Shedder
from .timers import TICK_S

__all__ = ["Pump", "Dispatch", "SendTo", "TICK_S", "drain"]

SendTo = Callable[[bytes, tuple[str, int]], Any]
_I: Final = 73  # b"I"[0]: a datagram that may be an INVITE
_A: Final = 65  # b"A"[0]: ... an ACK
_INVITE: Final = b"INVITE "
_ACK: Final = b"ACK "


class Pump:
    """Carries datagrams through ``core``, and runs its timers.

    sendto: ``{(transport, family): sendto(data, (host, port))}``, family 4 or 6;
    on_action: called with each action that is not a ``Send`` (in order with the sends);
    on_error: called when the core raised (a bug: the server logs and counts it), with the peer
        whose datagram it was, or None in a timer;
    call_at: the loop's ``call_at(when, callback)``, returning a handle with ``cancel()``;
    clock: the loop's ``time``;
    shedder: the overload control (sip/shed.py), which sees every INVITE and ACK before the core does.
    """

    def __init__(self, core: ProxyCore, sendto: dict[tuple[str, int], SendTo],
                 on_action: Callable[[Action], None], on_error: Callable[[Peer | None], None],
                 call_at: Callable[[float, Callable[[], None]], Any], clock: Callable[[], float],
                 tick_s: float = TICK_S, shedder: Shedder | None = None) -> None:
        self.core = core
        self.shedder = shedder if shedder is not None else Shedder()
        self._by_family: PerFamily[SendTo] = PerFamily((transport, family, send)
                                                       for (transport, family), send in sendto.items())
        self.on_action = on_action
        self.on_error = on_error
        self.call_at = call_at
        self.clock = clock
        self.tick_s = tick_s
        self.armed_at = -1.0  # the tick the loop timer is armed for; -1: none
        self.handle: Any = None

    # asyncio's DatagramProtocol.datagram_received, for a UDP listener
    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.receive(data, Peer("udp", addr[0], addr[1]))

    def receive(self, data: bytes, peer: Peer) -> None:
        if data:
            first = data[0]
            if first == _I and data.startswith(_INVITE):
                shed = self.shedder.consider(data, peer.host, peer.port)
                if shed is not None:  # answered 503 here, the core never sees it (sip/shed.py)
                    self.send_raw(shed[0], Peer(peer.transport, peer.host, shed[1]))
                    return
            elif first == _A and data.startswith(_ACK) and self.shedder.absorbs(data):
                return
        try:
            actions = self.core.receive(data, peer, self.clock())
            if actions:
                self.carry_out(actions)
            else:
                self.rearm()  # an absorbed message may still set a timer (an ACK: Timer I)
        except Exception:  # the one guard: a bug must not stop the service
            self.on_error(peer)

    def send_raw(self, data: bytes, dest: Peer) -> None:
        """A datagram no transaction keeps: lost when it cannot be sent (the peer retransmits its request)."""
        send = self._by_family.get(dest)
        if send is not None:
            try:
                send(data, (dest.host, dest.port))
            except OSError:
                self.core.stats.drops["send_buffer_full"] += 1

    def resolved(self, ticket: int, peers: list[Peer], why: str) -> None:
        """Where a named next hop went (the server's resolver): the core forwards, or answers 503."""
        try:
            self.carry_out(self.core.resolved(ticket, peers, why, self.clock()))
        except Exception:
            self.on_error(None)

    def stream_failed(self, data: bytes, dest: Peer, why: str) -> None:
        """A stream transport could not deliver ``data`` to ``dest`` (no connection could be made, or it closed
        first): the same transport error as a send the socket refused at once."""
        try:
            more = self.core.send_failed(Send(data, dest, "", 1 if data.startswith(b"SIP/2.0 ") else 0), why,
                                         self.clock())
            if more:
                self.carry_out(more)
        except Exception:
            self.on_error(dest)

    def carry_out(self, actions: list[Action]) -> None:
        failed: list[tuple[Send, str]] | None = None
        for action in actions:
            if isinstance(action, Send):
                dest = action.dest
                send = self._by_family.get(dest)
                why = ""
                if send is None:
                    why = "no socket for this transport and address family"
                else:
                    try:
                        send(action.data, (dest.host, dest.port))
                    except BlockingIOError:
                        self.core.stats.drops["send_buffer_full"] += 1
                    except OSError as err:
                        why = err.strerror or str(err)
                if why:
                    if failed is None:
                        failed = []
                    failed.append((action, why))
            else:
                self.on_action(action)
        if failed is not None:  # after the batch: its later sends (a 100 Trying) go before what the failure causes
            for action, why in failed:
                more = self.core.send_failed(action, why, self.clock())
                if more:
                    self.carry_out(more)
        self.rearm()

    def rearm(self) -> None:
        """Arm the loop timer for the core's next deadline, if that falls in an earlier tick."""
        at = self.core.next_deadline()
        if at is None:
            return
        tick = self.tick_s
        end = (int(at / tick) + 1) * tick  # the end of the deadline's tick (not ``//``: see TimerWheel.set)
        if end > at:  # never early (a float rounding could put ``end`` a hair before ``at``)
            at = end
        if self.armed_at < 0 or at < self.armed_at:
            if self.handle is not None:
                self.handle.cancel()
            self.armed_at = at
            self.handle = self.call_at(at, self.on_timer)

    def on_timer(self) -> None:
        """The loop timer: fire what is due, then arm for what comes next."""
        self.handle = None
        self.armed_at = -1.0
        try:
            self.carry_out(self.core.on_timer(self.clock()))
        except Exception:
            self.on_error(None)
            self.rearm()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.armed_at = -1.0


class Dispatch:
    """With ``--workers``: the receiver of the worker's listen socket (workers.py).  The kernel steers most new
    requests to their owner's socket already (transport/steer.py); what it could not, or all of it where the
    workers read one socket, some other worker reads and hands over here.

    A datagram whose Call-ID hashes to this worker (``owner_of``) goes through its pump; any other is
    handed to its owner over the owner's local socket, framed as ``HOST PORT\\n`` and the datagram, so
    that the owner sees the peer it came from.  Every datagram of a transaction that comes to the
    listen address (an INVITE, its retransmissions, its CANCEL and the ACK of a non-2xx) carries the
    same Call-ID, so it reaches the worker that holds the transaction; responses and in-dialog requests
    come to the owner's own port (its Via and Record-Route) and are not dispatched at all.

    The ACK of an overload 503 (its To tag says so, sip/shed.py) ends at whichever worker reads it, while
    that worker sheds too: under overload it is a datagram in every shed call, not worth a hand-off.

    A source that belongs to no account and is no upstream is dispatched by its address instead: one
    worker sees all its packets, so the edge's bucket and ban for it (policy/edge.py) are whole.

    handoff: per worker index, the ``send`` of its local socket (None for this worker);
    trusted: whether a source address is an account's or an upstream (the policy's; set again on reload).
    """

    def __init__(self, pump: Pump, index: int, handoff: list[Callable[[bytes], Any] | None],
                 trusted: Callable[[str], bool]) -> None:
        self.pump = pump
        self.index = index
        self.workers = len(handoff)
        self.handoff = handoff
        self.trusted = trusted
        self.handed = 0  # datagrams handed to another worker
        self.lost = 0  # ... that its local socket refused (its queue full: the peer retransmits)

    # asyncio's DatagramProtocol.datagram_received, for the shared listen socket
    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        host: str = addr[0]
        if data and data[0] == _A and data.startswith(_ACK) and self.pump.shedder.absorbs(data):
            return  # the ACK of a 503 this process's overload control sent: it ends here, whoever owns its Call-ID
        if self.trusted(host):
            owner = owner_of(data, self.workers)
        else:
            owner = zlib.crc32(host.encode()) % self.workers
        if owner == self.index:
            self.pump.receive(data, Peer("udp", host, addr[1]))
            return
        send = self.handoff[owner]
        if send is None:
            return
        try:
            send(b"%s %d\n" % (host.encode(), addr[1]) + data)
            self.handed += 1
        except OSError:
            self.lost += 1

    def handed_over(self, message: bytes) -> None:
        """One message from another worker's ``datagram_received``: the datagram and the peer it came from."""
        nl = message.find(b"\n")
        if nl < 0:
            return
        host, _sep, port = message[:nl].partition(b" ")
        if not port.isdigit():
            return
        self.pump.receive(message[nl + 1:], Peer("udp", host.decode("ascii", "replace"), int(port)))


def drain(recvfrom_into: Callable[[Any], tuple[int, Any]], buffer: memoryview, receive: Callable[[bytes, Any], None],
          batch: int) -> None:
    """The event loop's reader of a worker's listen socket: up to ``batch`` datagrams, each to ``receive``
    (``Dispatch.datagram_received``), then back to the loop.  A batch larger than the event loop's own (32
    per socket and turn) keeps new INVITEs from waiting behind the responses on the worker's own port.
    Read into one buffer (``recvfrom`` would allocate 64 KiB for each datagram and shrink it)."""
    for _ in range(batch):
        try:
            size, addr = recvfrom_into(buffer)
        except OSError:  # BlockingIOError: none left
            return
        receive(bytes(buffer[:size]), addr)
