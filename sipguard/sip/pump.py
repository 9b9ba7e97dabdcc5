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

from collections.abc import Callable
from typing import Any

from .actions import Action, Peer, Send
from .proxy import ProxyCore
from .timers import TICK_S

__all__ = ["Pump", "SendTo", "TICK_S"]

SendTo = Callable[[bytes, tuple[str, int]], Any]


class Pump:
    """Carries datagrams through ``core``, and runs its timers.

    sendto: ``{(transport, family): sendto(data, (host, port))}``, family 4 or 6;
    on_action: called with each action that is not a ``Send`` (in order with the sends);
    on_error: called when the core raised (a bug: the server logs and counts it), with the peer
        whose datagram it was, or None in a timer;
    call_at: the loop's ``call_at(when, callback)``, returning a handle with ``cancel()``;
    clock: the loop's ``time``.
    """

    def __init__(self, core: ProxyCore, sendto: dict[tuple[str, int], SendTo],
                 on_action: Callable[[Action], None], on_error: Callable[[Peer | None], None],
                 call_at: Callable[[float, Callable[[], None]], Any], clock: Callable[[], float],
                 tick_s: float = TICK_S) -> None:
        self.core = core
        self.sendto = sendto
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
        try:
            actions = self.core.receive(data, peer, self.clock())
            if actions:
                self.carry_out(actions)
            else:
                self.rearm()  # an absorbed message may still set a timer (an ACK: Timer I)
        except Exception:  # the one guard: a bug must not stop the service
            self.on_error(peer)

    def carry_out(self, actions: list[Action]) -> None:
        sendto = self.sendto
        failed: list[tuple[Send, str]] | None = None
        for action in actions:
            if isinstance(action, Send):
                dest = action.dest
                send = sendto.get((dest.transport, 6 if ":" in dest.host else 4))
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
