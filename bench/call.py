"""Micro-benchmark of whole calls through the server, without sockets.

    python -m bench.call [--calls 5000] [--repeat 5] [--profile] [--by-message] [--handoff]
    python -m bench.call --gc-pause 1500

Replays complete calls (INVITE / 100 / 180 / 200 / ACK / BYE / 200, as the load benchmark's
SIPp scenarios send them) through the server's datagram path (``Server.pump``) on the benchmark policy: parse,
attribution, every policy rule, the channel claim, transactions, dialogs, timers, metrics
and the bytes sent, everything but the system calls.  Prints µs per call inside the server (median and
spread of the repeats).  ``--profile`` prints a cProfile table of one repeat instead.
``--gc-pause RATE``: what Python's cyclic GC costs one worker carrying RATE calls/s (``gc_pause``).
``--shed``: instead, what an INVITE shed by the overload control costs (sip/shed.py: read raw, answered 503
statelessly) and the ACK of its 503 (absorbed), the process held overloaded by its test hook; every INVITE from
one source, so that the per-source fairness bookkeeping runs too.
``--handoff``: each INVITE enters as with ``--workers 2`` on one socket: through the shared socket's
``Dispatch`` of worker 1, which hands the half of the calls whose Call-ID worker 0 owns over a real Unix
datagram pair (send, receive, the peer line read back) -- the system calls included here -- so that
the difference from a run without it is what the hand-off costs per call.
Not a test: nothing is asserted beyond the calls completing.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from sipguard.config import Settings
from sipguard.server import Server, timer_config, tune_gc
from sipguard.sip import Local, Peer, ProxyCore
from sipguard.sip.pump import Dispatch

from .micro import SDP
from .policy import UAC_IP, benchmark_policy

UAS_IP = "127.0.0.3"
UAS_PORT = 5063
PROXY = ("127.0.0.1", 5060)


class _Clock:
    """Stands in for the event loop: a clock the harness moves; the one armed timer runs when due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pace = 1.0  # the harness's 10 ms of clock per call, times this (--gc-pause: the rate of one worker)
        self.spent = 0.0
        self.at: float | None = None
        self.callback: Callable[[], None] | None = None

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> "_Clock":
        self.at, self.callback = when, callback
        return self

    def cancel(self) -> None:
        self.at = self.callback = None

    def advance(self, seconds: float) -> None:
        self.now += seconds * self.pace
        if self.at is not None and self.callback is not None and self.at <= self.now:
            callback, self.at, self.callback = self.callback, None, None
            t0 = time.perf_counter()
            callback()
            self.spent += time.perf_counter() - t0


class _Wire:
    """A listener that keeps what the server sends, instead of a socket."""

    family = 4

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, int]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr[0], addr[1]))


def _headers(data: bytes, *names: str) -> list[str]:
    out = []
    for line in data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]:
        if line.split(":", 1)[0].strip().lower() in names:
            out.append(line)
    return out


def _reply(request: bytes, status: str, to_tag: str, body: bytes = b"", rr: bool = True) -> bytes:
    """What the SIPp UAS sends: the request's Via, From, To (+tag), Call-ID, CSeq, Record-Route.
    Like SIPp's ``[last_Via:]``, every Via on one line: ``Via: ours, the caller's``."""
    lines = [f"SIP/2.0 {status}"]
    names = ("from", "call-id", "cseq") + (("record-route",) if rr else ())
    vias = [line.split(":", 1)[1].strip() for line in _headers(request, "via")]
    lines.append("Via: " + ", ".join(vias))
    for line in _headers(request, "from", "to", "call-id", "cseq", "record-route"):
        name = line.split(":", 1)[0].strip().lower()
        if name == "to":
            lines.append(line if ";tag=" in line else f"{line};tag={to_tag}")
        elif name in names:
            lines.append(line)
    lines.append(f"Contact: <sip:{UAS_IP}:{UAS_PORT};transport=UDP>")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _uac_request(method: str, n: int, cseq: int, to: str, routes: list[str], branch: str,
                 target: str = f"{UAS_IP}:{UAS_PORT}") -> bytes:
    lines = [
        f"{method} sip:+3250555{n % 10000:04d}@{target} SIP/2.0",
        f"Via: SIP/2.0/UDP {UAC_IP}:5062;branch={branch}",
        f'From: "sipp" <sip:+3228807241@{UAC_IP}:5062>;tag=bench{n}',
        to,
        f"Call-ID: {n}-bench@{UAC_IP}",
        f"CSeq: {cseq} {method}",
        *routes,
        "Max-Forwards: 70",
        f"Contact: <sip:sipp@{UAC_IP}:5062>",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _in_dialog(ok: bytes, n: int) -> tuple[bytes, bytes]:
    """The UAC's ACK and BYE for call ``n``, from the 200 it got: its To (with the tag), its Record-Route as Route."""
    to = _headers(ok, "to")[0]
    routes = [line.replace("Record-Route", "Route", 1) for line in _headers(ok, "record-route")]
    return (_uac_request("ACK", n, 1, to, routes, f"z9hG4bK-bench-{n}-2"),
            _uac_request("BYE", n, 2, to, routes, f"z9hG4bK-bench-{n}-3"))


def _invite(n: int) -> bytes:
    head = (
        f"INVITE sip:+3250555{n % 10000:04d}@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {UAC_IP}:5062;branch=z9hG4bK-bench-{n}-1\r\n"
        f'From: "sipp" <sip:+3228807241@{UAC_IP}:5062>;tag=bench{n}\r\n'
        f"To: <sip:+3250555{n % 10000:04d}@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-bench@{UAC_IP}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:sipp@{UAC_IP}:5062>\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: sipguard bench\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


class Harness:
    def __init__(self, workdir: Path, handoff: bool = False) -> None:
        policy = workdir / "policy.yaml"
        policy.write_text(benchmark_policy(PROXY[1], 9090, UAS_PORT))
        self.server = Server(Settings(str(policy), decision_log=str(workdir / "decisions.jsonl")),
                             registry=CollectorRegistry())
        self.clock = _Clock()
        self.wire = _Wire()
        self.server._loop = self.clock  # type: ignore[assignment]
        # the core as Server.start() builds it, minus the sockets
        self.server.core = ProxyCore([Local("udp", *PROXY)], self.server.router(),
                                     timer_config(self.server.policy))
        self.server.pump = self.server.make_pump({("udp", 4): self.wire.sendto})
        self.spent = 0.0  # seconds inside the server (the harness's own message building excluded)
        self.by_kind: dict[str, float] = {}
        self.uac = Peer("udp", UAC_IP, 5062)
        self.uas = Peer("udp", UAS_IP, UAS_PORT)
        self.reader: Dispatch | None = None
        if handoff:  # this process is worker 0 and worker 1 at once: worker 1 reads, hands worker 0's calls over
            self.inbox, self.outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            pump = self.server.pump
            self.reader = Dispatch(pump, 1, [self.outbox.send, None], lambda host: True)
            self.owner = Dispatch(pump, 0, [None, self.outbox.send], lambda host: True)

    def feed_shared(self, data: bytes, source: Peer) -> None:
        """A datagram read from the shared listen socket (--handoff): dispatched, maybe handed over."""
        assert self.reader is not None
        t0 = time.perf_counter()
        self.reader.datagram_received(data, (source.host, source.port))
        if self.reader.handed:
            self.reader.handed = 0
            self.owner.handed_over(self.inbox.recv(70000))
        self.spent += time.perf_counter() - t0

    def _take(self) -> list[bytes]:
        sent = [d for d, _h, _p in self.wire.sent]
        self.wire.sent.clear()
        return sent

    def feed(self, data: bytes, source: Peer) -> None:
        t0 = time.perf_counter()
        self.server.pump.receive(data, source)
        spent = time.perf_counter() - t0
        self.spent += spent
        # by message: the method, or the status and the CSeq method of a response
        first = data[:12].split(b" ")
        kind = first[0].decode() if not data.startswith(b"SIP/") else (
            first[1].decode() + (" BYE" if b" BYE\r\n" in data else " INVITE"))
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + spent

    def up(self, n: int) -> tuple[bytes, str]:
        """Call ``n`` up: INVITE, 180, 200, ACK.  Returns its BYE, and the callee's tag."""
        s, clock = self, self.clock
        if self.reader is not None:
            s.feed_shared(_invite(n), self.uac)
        else:
            s.feed(_invite(n), self.uac)
        sent = self._take()
        fwd = next(d for d in sent if d.startswith(b"INVITE"))
        tag = f"uas{n}"
        clock.advance(0.0005)
        s.feed(_reply(fwd, "180 Ringing", tag), self.uas)
        clock.advance(0.0005)
        s.feed(_reply(fwd, "200 OK", tag, SDP), self.uas)
        ack, bye = _in_dialog(next(d for d in self._take() if d.startswith(b"SIP/2.0 200")), n)
        clock.advance(0.0005)
        s.feed(ack, self.uac)
        return bye, tag

    def call(self, n: int) -> None:
        """Call ``n`` from INVITE to the 200 of its BYE."""
        s, clock = self, self.clock
        bye, tag = self.up(n)
        clock.advance(0.001)
        s.feed(bye, self.uac)
        relayed = next(d for d in self._take() if d.startswith(b"BYE"))
        s.feed(_reply(relayed, "200 OK", tag, rr=False), self.uas)
        if not self._take():
            raise RuntimeError("the BYE's 200 was not forwarded")
        clock.advance(0.0075)  # 10 ms per call: transactions expire (64*T1) within a run


def measure(calls: int, repeat: int, profile: bool = False, by_message: bool = False,
            handoff: bool = False) -> list[float]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeat):
            h = Harness(Path(tmp), handoff)
            base = r * calls
            for n in range(200):  # warm the memos and caches as a running server has them
                h.call(base + n)
            tune_gc()  # as Server.start() does
            prof = cProfile.Profile() if profile else None
            h.spent = h.clock.spent = 0.0
            h.by_kind.clear()
            if prof:
                prof.enable()
            for n in range(200, calls):
                h.call(base + n)
            if prof:
                prof.disable()
                pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("ROWS", "35")))
                return []
            results.append((h.spent + h.clock.spent) / (calls - 200) * 1e6)
            if by_message and r == repeat - 1:
                total = h.spent + h.clock.spent
                for kind, spent in sorted(h.by_kind.items(), key=lambda kv: -kv[1]):
                    print(f"  {kind:<12}{spent / (calls - 200) * 1e6:8.1f} µs per call  {100 * spent / total:4.0f}%")
                print(f"  {'timers':<12}{h.clock.spent / (calls - 200) * 1e6:8.1f} µs per call  "
                      f"{100 * h.clock.spent / total:4.0f}%")
            if h.server.core.dialog_count != 0:
                raise RuntimeError(f"{h.server.core.dialog_count} dialogs left")
    return results


def _ack_of(reply: bytes, n: int) -> bytes:
    """The UAC's ACK of a non-2xx final response to ``_invite(n)`` (RFC 3261 17.1.1.3: its To, with the tag)."""
    to = _headers(reply, "to")[0]
    return _uac_request("ACK", n, 1, to, [], f"z9hG4bK-bench-{n}-1", f"{PROXY[0]}:{PROXY[1]}")


def shed_cost(calls: int, repeat: int) -> tuple[list[float], list[float]]:
    """µs per shed INVITE and per absorbed ACK, inside the server (no system calls), over ``repeat`` runs."""
    invites, acks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp))
        for n in range(200):
            h.call(n)
        tune_gc()
        shedder = h.server.pump.shedder
        shedder.forced = True  # what the test hook does (docs/overload.md): every new non-emergency INVITE shed
        shedder.tick(h.clock.now, 0.0)
        if not shedder.active:
            raise RuntimeError("the forced overload did not start")
        pump = h.server.pump
        for r in range(repeat):
            numbers = range((r + 1) * calls, (r + 2) * calls)
            sent = [_invite(n) for n in numbers]
            t0 = time.perf_counter()
            for data in sent:
                pump.receive(data, h.uac)
            t1 = time.perf_counter()
            replies = h._take()
            if len(replies) != calls or not all(d.startswith(b"SIP/2.0 503 ") for d in replies):
                raise RuntimeError("not every INVITE was answered 503")
            answers = [_ack_of(d, n) for d, n in zip(replies, numbers)]
            absorbed = shedder.absorbed
            t2 = time.perf_counter()
            for data in answers:
                pump.receive(data, h.uac)
            t3 = time.perf_counter()
            if shedder.absorbed - absorbed != calls or h._take():
                raise RuntimeError("not every ACK of a 503 was absorbed")
            invites.append((t1 - t0) / calls * 1e6)
            acks.append((t3 - t2) / calls * 1e6)
    return invites, acks


def gc_pause(rate: float, rounds: int = 5) -> None:
    """What Python's cyclic GC costs one worker carrying ``rate`` calls/s (docs/compiled.md, "Objects the GC
    never sees"): its young collections while it carries 32 s of calls (the transactions Timers J/L/M keep),
    then the full collection the server runs every GC_FULL_EVERY_S, over that live state."""
    young: list[float] = []
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 0:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            young.append(time.perf_counter() - started[0])

    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp))
        for n in range(200):
            h.call(n)
        tune_gc()  # as Server.start() does
        h.clock.pace = 1.0 / (rate * 0.010)  # call() moves the clock 10 ms: now 1/rate
        live = int(rate * 32)
        gc.collect()
        before = len(gc.get_objects())
        gc.callbacks.append(watch)
        t0 = time.perf_counter()
        for n in range(200, 200 + live):
            h.call(n)
        spent = time.perf_counter() - t0
        gc.callbacks.remove(watch)
        print(f"one worker at {rate:.0f} calls/s, {live} calls (32 s of transactions): "
              f"{len(young)} young collections, {sum(young) / live * 1e6:.1f} µs per call "
              f"({100 * sum(young) / spent:.1f}% of the calls' time), longest {max(young, default=0) * 1e3:.1f} ms")
        gc.collect(0)  # the youngest generation's tuples and dicts of plain values are untracked when it is collected
        tracked = len(gc.get_objects()) - before
        full = []
        first = 200 + live
        for _ in range(rounds):  # each after a second more of calls, as the server's would be
            for n in range(first, first + int(rate)):
                h.call(n)
            first += int(rate)
            t0 = time.perf_counter()
            gc.collect()
            full.append(time.perf_counter() - t0)
        print(f"objects the GC tracks more than before the calls: {tracked}; "
              f"a full collection: median {statistics.median(full) * 1e3:.1f} ms "
              f"(first {full[0] * 1e3:.1f}, max {max(full) * 1e3:.1f}, {rounds} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--by-message", action="store_true", help="where the time goes, by message (last repeat)")
    parser.add_argument("--handoff", action="store_true", help="INVITEs through the workers' dispatch (see above)")
    parser.add_argument("--gc-pause", type=float, metavar="RATE",
                        help="instead: what the cyclic GC costs one worker at RATE calls/s (see gc_pause)")
    parser.add_argument("--shed", action="store_true", help="instead: what a shed INVITE and its ACK cost (see above)")
    args = parser.parse_args()
    if args.shed:
        invites, acks = shed_cost(args.calls, args.repeat)
        print(f"shed INVITE (503 sent) and the ACK of its 503, µs inside the server ({args.calls} x {args.repeat})")
        print(f"INVITE median {statistics.median(invites):.2f}  min {min(invites):.2f}  max {max(invites):.2f}")
        print(f"ACK    median {statistics.median(acks):.2f}  min {min(acks):.2f}  max {max(acks):.2f}")
        return
    if args.gc_pause:
        gc_pause(args.gc_pause)
        return
    results = measure(args.calls, args.repeat, args.profile, args.by_message, args.handoff)
    if results:
        print(f"whole call through the server{', INVITEs dispatched as by 2 workers' if args.handoff else ''}, "
              f"µs per call inside the server ({args.calls} calls x {args.repeat} repeats)")
        print(f"median {statistics.median(results):.1f}  min {min(results):.1f}  max {max(results):.1f}")


if __name__ == "__main__":
    main()
