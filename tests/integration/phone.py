"""A caller that holds its calls until the test hangs them up: a minimal UAC over a real UDP socket.

SIPp holds a call for a fixed pause (``-d``), which races a loaded machine; this UAC keeps a call up
until ``hangup()``, so a test says exactly which calls are up when it checks something.  It speaks
just enough RFC 3261 for that: INVITE (retransmitted on T1 until a response), ACK for the final (for a
2xx along the route set, to the callee's Contact), BYE, and the 200 to a BYE from the other side.
Every wait is bounded.
"""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass, field

from sipguard.sip import Request, Response, parse
from sipguard.sip.message import parse_name_addr, parse_uri

_ids = itertools.count(1)


@dataclass
class Call:
    call_id: str
    from_tag: str
    callee: str
    caller: str
    request_uri: str
    status: int = 0
    response: Response | None = None
    to_tag: str | None = None
    route: list[str] = field(default_factory=list)
    target: str = ""  # the callee's Contact
    cseq: int = 1
    headers: dict[str, str] = field(default_factory=dict)  # of the final response


class Phone:
    """One UDP socket on ``ip``; calls go to sipguard at ``proxy``."""

    def __init__(self, ip: str, proxy: tuple[str, int], port: int = 0, t1_s: float = 0.2) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, port))
        self.ip, self.port = self.sock.getsockname()
        self.proxy = proxy
        self.t1_s = t1_s

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Phone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls
    def call(self, callee: str, caller: str = "+3228807241", *, request_uri: str | None = None,
             extra: list[str] | None = None, display: str | None = None, timeout_s: float = 10.0,
             call_id: str | None = None) -> Call:
        """Place a call and wait (bounded) for its final response; a 2xx is ACKed and the call stays up."""
        n = next(_ids)
        call = Call(call_id or f"phone-{n}-{time.monotonic_ns()}@{self.ip}", f"ft{n}", callee, caller,
                    request_uri or f"sip:{callee}@{self.proxy[0]}:{self.proxy[1]}")
        branch = f"z9hG4bK-ph{n}-{time.monotonic_ns()}"
        shown = f"{display} " if display else ""
        lines = [f"INVITE {call.request_uri} SIP/2.0", self._via(branch),
                 f"From: {shown}<sip:{caller}@{self.ip}>;tag={call.from_tag}", f"To: <sip:{callee}@{self.proxy[0]}>",
                 f"Call-ID: {call.call_id}", "CSeq: 1 INVITE", f"Contact: <sip:phone@{self.ip}:{self.port}>",
                 "Max-Forwards: 70", *(extra or [])]
        final = self._transaction(lines, "INVITE", timeout_s)
        call.status, call.response = final.status, final
        call.headers = {k: v for k, _n, v in final.headers}
        call.to_tag = final.to_tag
        if final.status >= 300:  # ACK hop-by-hop, same branch (RFC 3261 §17.1.1.3)
            self._send([f"ACK {call.request_uri} SIP/2.0", self._via(branch),
                        f"From: <sip:{caller}@{self.ip}>;tag={call.from_tag}", f"To: {final.get('to')}",
                        f"Call-ID: {call.call_id}", "CSeq: 1 ACK", "Max-Forwards: 70"])
            return call
        call.route = list(reversed(final.get_all("record-route")))
        contact = final.get("contact")
        call.target = parse_name_addr(contact).uri if contact else call.request_uri
        self._send(self._in_dialog(call, "ACK", f"z9hG4bK-ack{n}-{time.monotonic_ns()}", 1), self._next_hop(call))
        return call

    def hangup(self, call: Call, timeout_s: float = 10.0) -> int:
        """BYE along the route set; the status of its final response."""
        call.cseq += 1
        final = self._transaction(self._in_dialog(call, "BYE", f"z9hG4bK-bye{time.monotonic_ns()}", call.cseq),
                                  "BYE", timeout_s, self._next_hop(call))
        return final.status

    @staticmethod
    def _next_hop(call: Call) -> tuple[str, int]:
        """Where an in-dialog request goes: the first Route (loose routing), else the remote target."""
        uri = parse_uri(parse_name_addr(call.route[0]).uri if call.route else call.target)
        return uri.hostport()

    def serve(self, timeout_s: float, until_method: str = "BYE") -> list[Request]:
        """Answer the requests that come in (200) until one of ``until_method`` did, or ``timeout_s``; them."""
        seen: list[Request] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                break
            msg = parse(data)
            if isinstance(msg, Request):
                self._answer(msg, addr)
                seen.append(msg)
                if msg.method == until_method:
                    break
        return seen

    def request(self, lines: list[str], method: str, timeout_s: float = 5.0) -> Response:
        """Send a hand-made request (its own Via and all) and wait for its final response."""
        return self._transaction(lines, method, timeout_s)

    def via(self, branch: str) -> str:
        return self._via(branch)

    def send(self, lines: list[str]) -> None:
        """Send a hand-made request to sipguard and wait for nothing."""
        self._send(lines)

    # ------------------------------------------------------------------ wire
    def _via(self, branch: str) -> str:
        return f"Via: SIP/2.0/UDP {self.ip}:{self.port};branch={branch};rport"

    def _in_dialog(self, call: Call, method: str, branch: str, cseq: int) -> list[str]:
        return [f"{method} {call.target} SIP/2.0", self._via(branch),
                *(f"Route: {r}" for r in call.route),
                f"From: <sip:{call.caller}@{self.ip}>;tag={call.from_tag}",
                f"To: <sip:{call.callee}@{self.proxy[0]}>;tag={call.to_tag}",
                f"Call-ID: {call.call_id}", f"CSeq: {cseq} {method}", "Max-Forwards: 70"]

    def _send(self, lines: list[str], dest: tuple[str, int] | None = None) -> None:
        self.sock.sendto(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode(), dest or self.proxy)

    def _transaction(self, lines: list[str], method: str, timeout_s: float,
                     dest: tuple[str, int] | None = None) -> Response:
        """Send, retransmit on T1 (doubling) until any response, and return the final one."""
        deadline = time.monotonic() + timeout_s
        interval, provisional = self.t1_s, False
        self._send(lines, dest)
        next_retransmit = time.monotonic() + interval
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, min(next_retransmit, deadline) - time.monotonic()))
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                if not provisional:
                    self._send(lines, dest)
                    interval *= 2
                next_retransmit = time.monotonic() + interval
                continue
            msg = parse(data)
            if isinstance(msg, Request):
                self._answer(msg, addr)
                continue
            if msg.cseq_method != method:
                continue
            if msg.status < 200:
                provisional = True
                continue
            return msg
        raise AssertionError(f"no final response to {method} within {timeout_s} s")

    def _answer(self, req: Request, source: tuple[str, int]) -> None:
        """A request from the other side (a BYE): 200 OK, back where it came from."""
        if req.method == "ACK":
            return
        lines = ["SIP/2.0 200 OK", *(f"Via: {v}" for v in req.get_all("via")),
                 f"From: {req.get('from')}", f"To: {req.get('to')}", f"Call-ID: {req.call_id}",
                 f"CSeq: {req.cseq} {req.method}"]
        self.sock.sendto(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode(), source)
