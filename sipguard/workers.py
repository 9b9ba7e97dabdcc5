"""Several worker processes on one address: one per core (SPEC §7), sharing channel counts.

Owns: forking the workers, forwarding SIGHUP (reload) and SIGTERM/SIGINT (stop) to them,
restarting a worker that dies (after zeroing its column of the shared channel table, so
its calls' channels are free again), and giving up when a worker cannot start.
Leaves to each worker (a ``Server`` with a ``WorkerSlot``): its sockets, its admin
endpoint, its transactions and dialogs.

How traffic reaches the right worker: every worker binds the shared listen address with
SO_REUSEPORT, and the kernel hands each datagram to one of them by its source and
destination (so a retransmission, a CANCEL or an ACK for a non-2xx reaches the worker
that saw the INVITE); Via and Record-Route name the worker's own port (listen port + 1 +
index), so responses and in-dialog requests come back to it.  A peer that sends every
call from one socket (a PBX trunk, SIPp ``-t u1``) is served by one worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from .config import Settings
from .policy import load
from .state.shared import SharedCounts

__all__ = ["run_workers"]

log = logging.getLogger("sipguard")

def _worker_main(settings: Settings, index: int, counts: SharedCounts, ready_fd: int) -> int:
    from .server import Server, WorkerSlot

    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    if settings.use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass

    async def main() -> None:
        server = Server(settings, worker=WorkerSlot(index, counts))
        await server.start()
        os.write(ready_fd, b"1")  # the supervisor tells "could not start" from "died later" by this
        os.close(ready_fd)
        await server.serve_forever()

    try:
        asyncio.run(main())
    except Exception as err:  # the supervisor reports it and decides
        log.error("worker %d: %s", index, err)
        return 1
    return 0


def run_workers(settings: Settings, count: int) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT.  Raises PolicyError before forking if the policy is bad."""
    policy = load(settings.policy_path)
    counts = SharedCounts(count, rows=max(4096, 4 * len(policy.accounts)))
    watched = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    children: dict[int, tuple[int, int]] = {}  # pid -> (worker index, read end of its ready pipe)

    def spawn(index: int) -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(ready_r)
                code = _worker_main(settings, index, counts, ready_w)
            finally:
                os._exit(code)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        children[pid] = (index, ready_r)

    for index in range(count):
        spawn(index)
    log.info("sipguard supervisor %d: %d workers", os.getpid(), count)
    status = 0
    stopping = False
    while children:
        sig = signal.sigwait(watched)
        if sig == signal.SIGHUP:
            for pid in children:
                os.kill(pid, signal.SIGHUP)
        elif sig in (signal.SIGTERM, signal.SIGINT) and not stopping:
            stopping = True
            for pid in children:
                os.kill(pid, signal.SIGTERM)
        while True:  # reap every child that ended (SIGCHLD, or any signal: do not miss one)
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index, ready_r = children.pop(pid)
            try:
                started = os.read(ready_r, 1) == b"1"
            except BlockingIOError:
                started = False
            os.close(ready_r)
            counts.forget_worker(index)
            if stopping:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if not started:
                log.error("worker %d could not start (exit %d): stopping", index, code)
                status = 1
                stopping = True
                for other in children:
                    os.kill(other, signal.SIGTERM)
                continue
            log.error("worker %d ended (exit %d); its channels are released and it is restarted", index, code)
            spawn(index)
    return status
