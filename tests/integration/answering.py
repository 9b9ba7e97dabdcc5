"""A UAS's answer to an INVITE, for the tests' small UASes (raw sockets): its Via, From, Call-ID and CSeq, a To
with a tag of the UAS's."""

from __future__ import annotations

import threading

from sipguard.sip import Request, parse


def answer(data: bytes, status: str = "486 Busy Here", tag: str = "uas1") -> bytes | None:
    """The final response to ``data`` when it is an INVITE; None for anything else (an ACK, a response)."""
    msg = parse(data)
    if not isinstance(msg, Request) or msg.method != "INVITE":
        return None
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {v}" for k, _n, v in msg.headers if k == "via"]
    lines += [f"{n}: {v}" for k, n, v in msg.headers if k in ("from", "call-id", "cseq")]
    lines += [f"To: {msg.get('to')};tag={tag}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


class Serving:
    """A small server of a test on a thread of its own: ``_serve`` runs until ``close``; every wait in it is
    bounded by its socket's timeout, so that ``close`` ends it."""

    def __init__(self) -> None:
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=3)
