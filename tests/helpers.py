"""Builders for SIP messages and a bounded in-memory UAC <-> core <-> UAS pump."""

from __future__ import annotations

from dataclasses import dataclass, field

from sipguard.sip import DialogEnded, Peer, ProxyCore, Send, Settle, parse
from sipguard.sip.message import Request, Response

UAC = Peer("udp", "127.0.0.2", 5062)
UAS = Peer("udp", "127.0.0.3", 5063)
PROXY_HOST, PROXY_PORT = "127.0.0.1", 5060


def request(
    method: str = "INVITE",
    *,
    ruri: str = "sip:+3250123400@127.0.0.3:5063",
    branch: str = "z9hG4bK-uac-1",
    call_id: str = "call-1@127.0.0.2",
    from_tag: str = "ft1",
    to_tag: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    via_host: str = "127.0.0.2:5062",
    extra: list[str] | None = None,
    max_forwards: int | None = 70,
    body: bytes = b"",
    from_user: str = "+3228807240",
    from_display: str | None = None,
    rport: bool = False,
) -> bytes:
    to = "<sip:+3250123400@127.0.0.3>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via_host};branch={branch}" + (";rport" if rport else ""),
        f"From: {from_display + ' ' if from_display else ''}<sip:{from_user}@127.0.0.2>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:uac@127.0.0.2:5062>",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines.extend(extra or [])
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response_to(req: Request, status: int, reason: str = "X", *, to_tag: str | None = "uas-tag",
                extra: list[str] | None = None) -> bytes:
    """A UAS's response to a request it received (copies Via, Record-Route)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for key, name, value in req.headers:
        if key in ("via", "record-route", "from", "call-id", "cseq"):
            lines.append(f"{name}: {value}")
        elif key == "to":
            if to_tag and req.to_tag is None and status > 100:
                value += f";tag={to_tag}"
            lines.append(f"To: {value}")
    if status < 300 and status > 100:
        lines.append("Contact: <sip:uas@127.0.0.3:5063>")
    lines.extend(extra or [])
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Wire:
    """What the core sent, by destination."""

    sent: list[Send] = field(default_factory=list)

    def to(self, peer: Peer) -> list[Send]:
        return [s for s in self.sent if s.dest == peer]

    def last_to(self, peer: Peer):  # -> Request | Response
        sends = self.to(peer)
        assert sends, f"nothing was sent to {peer}"
        return parse(sends[-1].data)

    def statuses_to(self, peer: Peer) -> list[int]:
        return [s.status for s in self.to(peer) if s.status]

    def clear(self) -> None:
        self.sent.clear()


def settle(core: ProxyCore, actions: list, now: float, wire: Wire, store=None) -> list:
    """Do what the server does with claims: settle them (in ``store``, else grant), release on dialog end."""
    out = list(actions)
    for action in actions:
        if isinstance(action, Settle):
            granted = store.claim_now(action.claim) if store is not None else True
            more = core.settled(action.ticket, granted, now)
            wire.sent.extend(a for a in more if isinstance(a, Send))
            out.extend(settle(core, more, now, wire, store))
        elif isinstance(action, DialogEnded) and store is not None and action.claim is not None:
            store.release_now(action.claim)
    return out


def feed(core: ProxyCore, data: bytes, source: Peer, now: float, wire: Wire, store=None) -> list:
    actions = core.receive(data, source, now)
    wire.sent.extend(a for a in actions if isinstance(a, Send))
    return settle(core, actions, now, wire, store)


def run_timers(core: ProxyCore, until: float, wire: Wire, max_steps: int = 10000, store=None) -> list:
    """Fire every deadline up to ``until`` (bounded)."""
    actions: list = []
    for _ in range(max_steps):
        at = core.next_deadline()
        if at is None or at > until:
            return actions
        step = core.on_timer(at)
        wire.sent.extend(a for a in step if isinstance(a, Send))
        actions.extend(settle(core, step, at, wire, store))
    raise AssertionError("timers did not settle")


def as_request(data: bytes) -> Request:
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def as_response(data: bytes) -> Response:
    msg = parse(data)
    assert isinstance(msg, Response)
    return msg


# What sipguard does with the RFC 4475 / 5118 messages (tests/data), over UDP and TCP alike:
# well-formed requests inside a dialog (a To tag) that sipguard never admitted, and that carry no route
# token of its own: 481, never relayed, never 400
CORPUS_NO_DIALOG = {"wsinv.dat": 481, "mult-ip-in-header.dat": 481, "via-received-param-with-delim.dat": 481}

# file -> the status sipguard answers with (None: dropped, never answered)
CORPUS_EXPECTED_REPLY = {
    "badvers.dat": 505, "unkscm.dat": 416, "novelsc.dat": 416, "zeromf.dat": 483, "bext01.dat": 420,
    "unreason.dat": None, "noreason.dat": None, "bcast.dat": None, "scalarlg.dat": None, "bigcode.dat": None,
    # requests whose broken CSeq leaves no well-formed answer possible: dropped
    "scalar02.dat": None,
    # a preloaded Route to an address that is neither sipguard nor the account's upstream: refused
    "mpart01.dat": 403,
}
