"""A UAS's answer to an INVITE, for the tests' small UASes (raw sockets): its Via, From, Call-ID and CSeq, a To
with a tag of the UAS's."""

from __future__ import annotations

import socket
import ssl
import threading

from sipguard.sip import Request, parse
from sipguard.transport.stream import Framer


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


class StreamUas(Serving):
    """A UAS on TCP (TLS with ``ctx``) at ``ip``:``port`` (0: any): answers every INVITE 486 on the connection it
    came on; ``got``: every message, ``invites``: the Call-IDs of the INVITEs."""

    def __init__(self, ip: str, port: int = 0, ctx: ssl.SSLContext | None = None, tag: str = "uas1") -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((ip, port))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.tag = tag
        self.got: list[bytes] = []
        self.invites: list[str] = []
        self.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                raw, _addr = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            raw.settimeout(5)
            try:
                conn = self.ctx.wrap_socket(raw, server_side=True) if self.ctx is not None else raw
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            conn.settimeout(0.2)
            framer = Framer(65536)
            while not self.stop:
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, socket.timeout):
                    continue
                except (ssl.SSLError, OSError):
                    break
                if not chunk:
                    break
                for data in framer.feed(chunk):
                    self.got.append(data)
                    if data.startswith(b"INVITE"):
                        self.invites.append(parse(data).call_id)
                    reply = answer(data, tag=self.tag)
                    if reply is not None:
                        conn.sendall(reply)
            conn.close()

    def close(self) -> None:
        super().close()
        self.sock.close()
