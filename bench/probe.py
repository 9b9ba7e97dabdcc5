"""A latency probe with microsecond resolution, run beside the SIPp load.

SIPp's response-time clock ticks in milliseconds (4 ms on the machine of BENCHMARKS.md), too coarse
to show what a proxy adds.  The probe is a small UAC (127.0.0.6) and UAS (127.0.0.7) of its own:
the UAC sends INVITEs at a low rate through the target (or straight to the UAS for the
baseline), times INVITE->200 and BYE->200 with ``time.perf_counter``, and ACKs and hangs up each
call so that the proxy's state stays tidy.  The UAS answers 200 at once, copying Via, From, To,
Call-ID, CSeq and Record-Route.

    python -m bench.probe --target 127.0.0.1:5060 --seconds 10 --rate 20
"""

from __future__ import annotations

import argparse
import socket
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
        start, h = _headers(data)
        method = start.split(" ", 1)[0]
        if method not in ("INVITE", "BYE"):
            continue
        to = h.get("to", [""])[0]
        if ";tag=" not in to:
            to += ";tag=probe-uas"
        lines = ["SIP/2.0 200 OK"]
        lines += [f"Via: {v}" for v in h.get("via", [])]
        lines += [f"Record-Route: {v}" for v in h.get("record-route", [])]
        lines += [f"From: {h['from'][0]}", f"To: {to}", f"Call-ID: {h['call-id'][0]}", f"CSeq: {h['cseq'][0]}",
                  f"Contact: <sip:probe@{PROBE_UAS_IP}:{sock.getsockname()[1]}>", "Content-Length: 0", "", ""]
        sock.sendto("\r\n".join(lines).encode(), addr)


def _request(method: str, ruri: str, via: str, n: int, cseq: int, to_tag: str | None, routes: list[str],
             branch: str) -> bytes:
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via};branch={branch}",
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


def run_probe(target: tuple[str, int] | None, seconds: float, rate: float, uas_port: int = 0) -> ProbeResult:
    """Probe through ``target`` (None: straight to the probe UAS) for ``seconds`` at ``rate`` calls/s.

    ``uas_port``: where the probe UAS listens (the proxy's policy must route the probe there).
    """
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    uas.bind((PROBE_UAS_IP, uas_port))
    uas_port = uas.getsockname()[1]
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uac.bind((PROBE_UAC_IP, 0))
    uac.settimeout(2.0)
    via = f"{PROBE_UAC_IP}:{uac.getsockname()[1]}"
    stop = threading.Event()
    thread = threading.Thread(target=_uas, args=(uas, stop), daemon=True)
    thread.start()
    dest = target or (PROBE_UAS_IP, uas_port)
    ruri = f"sip:+3250999999@{PROBE_UAS_IP}:{uas_port}"
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
            uac.sendto(_request("INVITE", ruri, via, n, 1, None, [], f"z9hG4bK-pi{n}"), dest)
            ok = None
            try:
                while ok is None:
                    data, _ = uac.recvfrom(65535)
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
            uac.sendto(_request("ACK", ruri, via, n, 1, to_tag, routes, f"z9hG4bK-pa{n}"), dest)
            t1 = time.perf_counter()
            uac.sendto(_request("BYE", ruri, via, n, 2, to_tag, routes, f"z9hG4bK-pb{n}"), dest)
            try:
                while True:
                    data, _ = uac.recvfrom(65535)
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
    args = parser.parse_args()
    target = None
    if args.target:
        host, _sep, port = args.target.rpartition(":")
        target = (host, int(port))
    print(summary(run_probe(target, args.seconds, args.rate, args.uas_port)))


if __name__ == "__main__":
    main()
