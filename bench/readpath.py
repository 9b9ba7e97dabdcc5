"""What reading a worker's listen socket costs, per datagram: the event loop's datagram transport against
``drain`` (sip/pump.py), the reader a worker uses for its listen socket (up to 64 datagrams per turn).

    python -m bench.readpath [--datagrams 100000] [--bursts 2,8] [--rounds 3]

A child process sends SIP-sized datagrams over loopback in bursts (a pause of 0.2 ms after each), the
receiving process runs uvloop and counts them; printed: the receiver's CPU (user + system) per datagram,
per reader and burst size, the median of the rounds (alternating).  Small bursts are what a worker meets
at moderate load (a wake-up for one or two datagrams), where ``drain``'s end of batch (the socket's
"nothing left" raised as an exception) shows.  Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import time
from typing import Any

import uvloop

from sipguard.sip.pump import drain

_DATAGRAM = b"INVITE sip:+3225550100@127.0.0.1 SIP/2.0\r\n" + b"X-Pad: " + b"x" * 560 + b"\r\n\r\n"


class _Counter(asyncio.DatagramProtocol):
    def __init__(self, count: Any) -> None:
        self.datagram_received = count  # type: ignore[method-assign]


async def _receive(reader: str, datagrams: int, burst: int) -> float:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    dest = sock.getsockname()
    got = 0
    done: asyncio.Future[None] = loop.create_future()

    def count(data: bytes, addr: Any) -> None:
        nonlocal got
        got += 1
        if got >= datagrams and not done.done():
            done.set_result(None)

    transport = None
    if reader == "transport":
        transport, _protocol = await loop.create_datagram_endpoint(lambda: _Counter(count), sock=sock)
    else:
        loop.add_reader(sock.fileno(), drain, sock.recvfrom_into, memoryview(bytearray(65536)), count, 64)
    pid = os.fork()
    if pid == 0:  # the sender
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(0, datagrams, burst):
            for _ in range(burst):
                out.sendto(_DATAGRAM, dest)
            time.sleep(0.0002)
        os._exit(0)
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        await asyncio.wait_for(done, 120)
    finally:
        os.waitpid(pid, 0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    if transport is not None:
        transport.close()
    else:
        loop.remove_reader(sock.fileno())
        sock.close()
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / datagrams * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datagrams", type=int, default=100_000)
    parser.add_argument("--bursts", default="2,8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bursts = [int(b) for b in args.bursts.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for burst in bursts:
            for reader in ("transport", "drain"):
                cost = uvloop.run(_receive(reader, args.datagrams, burst))
                results.setdefault((reader, burst), []).append(cost)
    for (reader, burst), costs in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
        print(f"{reader:>9} burst {burst:>3}: {statistics.median(costs):6.2f} µs per datagram "
              f"({min(costs):.2f}-{max(costs):.2f} over {len(costs)} rounds)")


if __name__ == "__main__":
    main()
