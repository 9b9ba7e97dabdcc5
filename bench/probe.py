"""A latency probe with microsecond resolution, run beside the SIPp load.

SIPp's response-time clock ticks in milliseconds (4 ms on the machine of BENCHMARKS.md), too coarse
to show what a proxy adds.  The probe is a small UAC (127.0.0.6) and UAS (127.0.0.7) of its own:
the UAC sends INVITEs at a low rate through the target (or straight to the UAS for the
baseline), times INVITE->200 and BYE->200 with ``time.perf_counter``, and ACKs and hangs up each
call so that the proxy's state stays tidy.  The UAS answers 200 at once, copying Via, From, To,
Call-ID, CSeq and Record-Route.

    python -m bench.probe --target 127.0.0.1:5060 --seconds 10 --rate 20 [--link tcp|tls --cert F --key F]

With ``--link tcp`` or ``tls`` the probe's UAC holds one connection to the target and its UAS accepts them
(TLS with the benchmark's certificate; the UAC does not verify it): the added latency of the transport the
load travels over.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import threading
import time
from dataclasses import dataclass

PROBE_UAC_IP = "127.0.0.6"
PROBE_UAS_IP = "127.0.0.7"
PROBE_CALLER = "+3228807350"  # in the probe account's block of the benchmark policy


@dataclass
class ProbeResult:
    sent: int
    answered: int
    invite_us: list[float]
    bye_us: list[float]

    def percentile(self, which: str, q: float) -> float | None:
        values = sorted(self.invite_us if which == "invite" else self.bye_us)
        if not values:
            return None
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _headers(data: bytes) -> tuple[str, dict[str, list[str]]]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    out: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _sep, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], out


def _answer(data: bytes, port: int) -> bytes | None:
    """The probe UAS's 200 to an INVITE or BYE (None for anything else)."""
    start, h = _headers(data)
    method = start.split(" ", 1)[0]
    if method not in ("INVITE", "BYE"):
        return None
    to = h.get("to", [""])[0]
    if ";tag=" not in to:
        to += ";tag=probe-uas"
    lines = ["SIP/2.0 200 OK"]
    lines += [f"Via: {v}" for v in h.get("via", [])]
    lines += [f"Record-Route: {v}" for v in h.get("record-route", [])]
    lines += [f"From: {h['from'][0]}", f"To: {to}", f"Call-ID: {h['call-id'][0]}", f"CSeq: {h['cseq'][0]}",
              f"Contact: <sip:probe@{PROBE_UAS_IP}:{port}>", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def _stream_uas(sock: socket.socket, stop: threading.Event, ctx: ssl.SSLContext | None) -> None:
    """Accept connections (TLS with ``ctx``) and answer on each what the UDP UAS answers."""
    from sipguard.transport.stream import Framer

    sock.settimeout(0.2)
    port = sock.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        framer = Framer(65536)
        conn.settimeout(0.2)
        while not stop.is_set():
            try:
                chunk = conn.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except OSError:
                break
            if not chunk:
                break
            for data in framer.feed(chunk):
                reply = _answer(data, port)
                if reply is not None:
                    conn.sendall(reply)
        conn.close()

    while not stop.is_set():
        try:
            raw, _addr = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            conn = ctx.wrap_socket(raw, server_side=True) if ctx is not None else raw
        except (OSError, ssl.SSLError):
            raw.close()
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


class _Uac:
    """The probe UAC's one socket to ``dest``: a datagram socket, or a connection (TCP, TLS unverified)."""

    def __init__(self, dest: tuple[str, int], link: str) -> None:
        from sipguard.transport.stream import Framer

        self.dest = dest
        self.link = link
        family = socket.SOCK_DGRAM if link == "udp" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_INET, family)
        sock.bind((PROBE_UAC_IP, 0))
        sock.settimeout(2.0)
        self.via = f"{PROBE_UAC_IP}:{sock.getsockname()[1]}"
        if link != "udp":
            sock.connect(dest)
            if link == "tls":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(sock, server_hostname=dest[0])
        self.sock = sock
        self.framer = Framer(65536)
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.link == "udp":
            self.sock.sendto(data, self.dest)
        else:
            self.sock.sendall(data)

    def recv(self) -> bytes:
        if self.link == "udp":
            return self.sock.recvfrom(65535)[0]
        while not self.pending:
            chunk = self.sock.recv(65535)
            if not chunk:
                raise TimeoutError("the connection closed")
            self.pending += self.framer.feed(chunk)
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def _uas(sock: socket.socket, stop: threading.Event) -> None:
    """Answer every INVITE and BYE with 200 at once; ignore ACKs."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        except OSError:
            return
        reply = _answer(data, sock.getsockname()[1])
        if reply is not None:
            sock.sendto(reply, addr)


def _request(method: str, ruri: str, via: str, n: int, cseq: int, to_tag: str | None, routes: list[str],
             branch: str, link: str = "udp") -> bytes:
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{link.upper()} {via};branch={branch}",
        f"From: <sip:{PROBE_CALLER}@{via}>;tag=probe{n}",
        f"To: <sip:+3250999999@{PROBE_UAS_IP}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: probe-{n}@{PROBE_UAC_IP}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:probe@{via}>",
        "Max-Forwards: 70",
    ]
    lines += [f"Route: {r}" for r in routes]
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def run_probe(target: tuple[str, int] | None, seconds: float, rate: float, uas_port: int = 0, link: str = "udp",
              cert: str = "", key: str = "") -> ProbeResult:
    """Probe through ``target`` (None: straight to the probe UAS) for ``seconds`` at ``rate`` calls/s.

    ``uas_port``: where the probe UAS listens (the proxy's policy must route the probe there); ``link``: udp,
    tcp or tls (the UAS presents ``cert`` / ``key``).
    """
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if link == "udp" else socket.SOCK_STREAM)
    uas.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    uas.bind((PROBE_UAS_IP, uas_port))
    uas_port = uas.getsockname()[1]
    stop = threading.Event()
    if link == "udp":
        thread = threading.Thread(target=_uas, args=(uas, stop), daemon=True)
    else:
        uas.listen(16)
        ctx = None
        if link == "tls":
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
        thread = threading.Thread(target=_stream_uas, args=(uas, stop, ctx), daemon=True)
    thread.start()
    dest = target or (PROBE_UAS_IP, uas_port)
    uac = _Uac(dest, link)
    via = uac.via
    ruri = f"sip:+3250999999@{PROBE_UAS_IP}:{uas_port}" + ("" if link == "udp" else f";transport={link}")
    result = ProbeResult(0, 0, [], [])
    gap = 1.0 / rate
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < deadline:
            n += 1
            began = time.monotonic()
            result.sent += 1
            t0 = time.perf_counter()
            uac.send(_request("INVITE", ruri, via, n, 1, None, [], f"z9hG4bK-pi{n}", link))
            ok = None
            try:
                while ok is None:
                    data = uac.recv()
                    start, h = _headers(data)
                    if start.startswith("SIP/2.0 200") and h.get("cseq", [""])[0].endswith("INVITE"):
                        ok = (time.perf_counter() - t0, h)
            except TimeoutError:
                continue
            result.answered += 1
            result.invite_us.append(ok[0] * 1e6)
            h = ok[1]
            to_tag = h["to"][0].split(";tag=", 1)[1].split(";", 1)[0]
            routes = list(reversed(h.get("record-route", [])))
            uac.send(_request("ACK", ruri, via, n, 1, to_tag, routes, f"z9hG4bK-pa{n}", link))
            t1 = time.perf_counter()
            uac.send(_request("BYE", ruri, via, n, 2, to_tag, routes, f"z9hG4bK-pb{n}", link))
            try:
                while True:
                    data = uac.recv()
                    start, h = _headers(data)
                    if start.startswith("SIP/2.0 200") and h.get("cseq", [""])[0].endswith("BYE"):
                        result.bye_us.append((time.perf_counter() - t1) * 1e6)
                        break
            except TimeoutError:
                pass
            time.sleep(max(0.0, gap - (time.monotonic() - began)))
    finally:
        stop.set()
        thread.join(timeout=2)
        uac.close()
        uas.close()
    return result


def summary(result: ProbeResult) -> str:
    parts = [f"{result.answered}/{result.sent} answered"]
    for which in ("invite", "bye"):
        values = result.invite_us if which == "invite" else result.bye_us
        if values:
            parts.append(f"{which.upper()}->200 p50 {statistics.median(values):.0f} µs, "
                         f"p99 {result.percentile(which, 0.99):.0f} µs")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", help="HOST:PORT of the proxy; omit for the direct baseline")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--uas-port", type=int, default=0)
    parser.add_argument("--link", choices=("udp", "tcp", "tls"), default="udp")
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    args = parser.parse_args()
    target = None
    if args.target:
        host, _sep, port = args.target.rpartition(":")
        target = (host, int(port))
    print(summary(run_probe(target, args.seconds, args.rate, args.uas_port, args.link, args.cert, args.key)))


if __name__ == "__main__":
    main()
