"""Micro-benchmark of the per-INVITE hot path: parse, attribute + decide, serialize, whole core.

    python -m bench.micro [--n 20000] [--repeat 7]

Prints µs per message (median of the repeats, and the spread) for each step, on the
benchmark policy (50 accounts, every rule enforcing).  Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

from sipguard.policy import Engine, load_text
from sipguard.sip import Local, Peer, ProxyCore, Request, Settle, TimerConfig, parse, serialize

from .policy import UAC_IP, benchmark_policy

SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def invite(n: int) -> bytes:
    head = (
        f"INVITE sip:+3250555{n % 10000:04d}@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-bench-{n}\r\n"
        f'From: "sipp" <sip:+3228807241@127.0.0.2:5062>;tag=bench{n}\r\n'
        f"To: <sip:+3250555{n % 10000:04d}@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-bench@127.0.0.2\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:sipp@127.0.0.2:5062>\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: sipguard bench\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def measure(n: int, repeat: int) -> dict[str, list[float]]:
    policy = load_text(benchmark_policy(5060, 9090, 5063))
    source = Peer("udp", UAC_IP, 5062)
    datas = [invite(i) for i in range(n)]
    results: dict[str, list[float]] = {"parse": [], "decide": [], "serialize": [], "core.receive (INVITE)": []}
    for r in range(repeat):
        engine = Engine(policy)
        msgs: list[Request] = []
        t0 = time.perf_counter()
        for data in datas:
            msgs.append(parse(data))  # type: ignore[arg-type]  # every one is an INVITE
        t1 = time.perf_counter()
        adms = []
        now = r * 1000.0
        for i, msg in enumerate(msgs):
            adms.append(engine.admit(msg, source, now + i * 1e-3))  # 1000 calls/s of arrivals
        t2 = time.perf_counter()
        for msg, adm in zip(msgs, adms):
            serialize(msg, adm.edits)
        t3 = time.perf_counter()
        core = ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(policy), TimerConfig())
        t4 = time.perf_counter()
        for i, data in enumerate(datas):
            for action in core.receive(data, source, now + i * 1e-3):
                if isinstance(action, Settle):  # granted at once, as the in-memory store does
                    core.settled(action.ticket, True, now + i * 1e-3)
        t5 = time.perf_counter()
        assert all(a.reject is None for a in adms), "the benchmark policy must admit every call"
        for key, seconds in zip(results, (t1 - t0, t2 - t1, t3 - t2, t5 - t4)):
            results[key].append(seconds / n * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    results = measure(args.n, args.repeat)
    print(f"hot path, µs per INVITE ({args.n} INVITEs x {args.repeat} repeats, benchmark policy)")
    print(f"{'step':<26}{'median':>10}{'min':>10}{'max':>10}")
    for key, values in results.items():
        print(f"{key:<26}{statistics.median(values):>10.2f}{min(values):>10.2f}{max(values):>10.2f}")


if __name__ == "__main__":
    main()
