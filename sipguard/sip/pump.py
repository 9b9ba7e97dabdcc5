"""Pump: one datagram in, through the core, the datagrams out; compiled with the core.

Every datagram used to cross four interpreted frames (the asyncio protocol, the server's
receive, its action loop, the listener's send) before and after the compiled core.  The pump
does that hop in compiled code: it makes the ``Peer``, calls ``ProxyCore.receive``, sends each
``Send`` through the ``sendto`` of the listener for its transport and address family, and hands
every other action, in order, to the server (``on_action``: claims, decisions, dialog events).
It arms the loop timer through the server only when the core's next deadline moves earlier.

Sockets stay with the listeners and everything with a side effect other than sending stays with
the server: the pump owns no socket and no clock (``now`` is the loop's ``time``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .actions import Action, Peer, Send
from .proxy import ProxyCore

__all__ = ["Pump"]

SendTo = Callable[[bytes, tuple[str, int]], Any]


class Pump:
    """Carries datagrams through ``core``.

    sendto: ``{(transport, family): sendto(data, (host, port))}``, family 4 or 6;
    on_action: called with each action that is not a ``Send`` (in order with the sends);
    on_error: called with the peer when the core raised (a bug: the server logs and counts it);
    arm: called with a deadline when the core's next deadline is earlier than the armed one;
    clock: the loop's ``time``.
    """

    def __init__(self, core: ProxyCore, sendto: dict[tuple[str, int], SendTo],
                 on_action: Callable[[Action], None], on_error: Callable[[Peer], None],
                 arm: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.core = core
        self.sendto = sendto
        self.on_action = on_action
        self.on_error = on_error
        self.arm = arm
        self.clock = clock
        self.armed_at = -1.0  # the deadline the loop timer is armed for; -1: none

    # asyncio's DatagramProtocol.datagram_received, for a UDP listener
    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.receive(data, Peer("udp", addr[0], addr[1]))

    def receive(self, data: bytes, peer: Peer) -> None:
        try:
            actions = self.core.receive(data, peer, self.clock())
            if actions:
                self.carry_out(actions)
            else:
                self.rearm()
        except Exception:  # the one guard: a bug must not stop the service
            self.on_error(peer)

    def carry_out(self, actions: list[Action]) -> None:
        sendto = self.sendto
        for action in actions:
            if isinstance(action, Send):
                dest = action.dest
                send = sendto.get((dest.transport, 6 if ":" in dest.host else 4))
                if send is not None:
                    send(action.data, (dest.host, dest.port))
            else:
                self.on_action(action)
        self.rearm()

    def rearm(self) -> None:
        at = self.core.next_deadline()
        if at is not None and (self.armed_at < 0 or at < self.armed_at):
            self.armed_at = at
            self.arm(at)

    def fired(self) -> None:
        """The loop timer ran: nothing is armed any more."""
        self.armed_at = -1.0
