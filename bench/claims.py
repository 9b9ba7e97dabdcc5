"""What a channel claim through Redis costs: the client's CPU per claim and the claims per second, with 1 to
N claims in flight, through the real ``RedisStore`` (its batches), against a redis-server of its own.

    python -m bench.claims [--claims 20000] [--in-flight 1,8,32,128]

Each claim is followed by its release (the claim script, then ``ZREM``), as a call does; 100 accounts with
a limit they never reach.  CPU µs per claim is this process's CPU time (``time.process_time``) over the
claims: what a sipguard node pays.  redis-server runs on the same machine and is not in that figure.
BENCHMARKS.md, "Shared channel counts through Redis", has the figures and the server's side
(``redis-benchmark`` with the claim script).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import subprocess
import tempfile
import time

from sipguard.state.claim import ChannelClaim
from sipguard.state.redis_store import RedisStore

from .run import free_tcp_port


async def _measure(url: str, claims: int, in_flight: int) -> tuple[float, float]:
    """(CPU µs per claim, claims per second) with ``in_flight`` claims outstanding at any time."""
    store = RedisStore(url, f"bench-{in_flight}", prefix=f"bench{in_flight}", lease_s=30)
    await store.start([])
    assert store.available, "redis-server did not answer"
    left = claims
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    started = 0

    def claimed(claim: ChannelClaim, granted: bool, _count: int) -> None:
        nonlocal left
        assert granted
        store.release_now(claim)
        left -= 1
        if left == 0:
            done.set_result(None)
        else:
            launch()

    def launch() -> None:
        nonlocal started
        if started >= claims:
            return
        started += 1
        claim = ChannelClaim(f"acct{started % 100}", 1_000_000, f"call-{started}")
        store.claim_soon(claim, functools.partial(claimed, claim))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(in_flight):
        launch()
    await done
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await store.close()
    return cpu / claims * 1e6, claims / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=20000)
    parser.add_argument("--in-flight", default="1,8,32,128")
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    port = free_tcp_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", workdir], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            print(f"{'in flight':>9}  {'CPU µs/claim':>12}  {'claims/s':>9}")
            for n in (int(x) for x in args.in_flight.split(",")):
                cpu_us, rate = asyncio.run(_measure(f"redis://127.0.0.1:{port}/0", args.claims, n))
                print(f"{n:>9}  {cpu_us:>12.1f}  {rate:>9.0f}")
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
