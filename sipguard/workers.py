"""Several worker processes on one address: one per core (README, "One process per core"), sharing channel counts.

Owns: forking the workers, forwarding SIGHUP (reload) and SIGTERM/SIGINT (stop) to them,
restarting a worker that dies (after zeroing its column of the shared channel table, so
its calls' channels are free again), and giving up when a worker cannot start.
Leaves to each worker (a ``Server`` with a ``WorkerSlot``): its sockets, its admin
endpoint, its transactions and dialogs.

How traffic reaches the right worker: the supervisor binds each UDP listen address once per worker, the
sockets in one ``SO_REUSEPORT`` group in worker order, and attaches a classic BPF program to the group that
gives each datagram to the worker its Call-ID hashes to (transport/steer.py); each worker reads its own.
What the program cannot read (a compact ``i:`` header, a Call-ID far into the datagram), and everything
on a kernel that refuses the program (then one socket every worker reads), reaches some worker that
hands it to its owner over a local socket (a Unix datagram pair per worker, also made before the fork),
with the peer it came from (sip/pump.py ``Dispatch``).  So the calls of a peer that sends them all
from one socket (a PBX trunk, a carrier, SIPp ``-t u1``) are spread over every worker, and an
INVITE's retransmissions, its CANCEL and the ACK of a non-2xx reach the worker that holds it.  Via
and Record-Route name the worker's own port (listen port + 1 + index), so responses and in-dialog
requests come back to it directly.  A second sipguard cannot share the address: the supervisor holds an
abstract socket named after it (``_claim_addresses``), and one without ``--workers`` (no SO_REUSEPORT)
fails to bind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import systemd
from .config import Settings
from .policy import load
from .state.shared import SharedCounts
from .transport.steer import bind_steered
from .transport.stream import bind_stream
from .transport.udp import RCVBUF_BYTES, bind_udp, parse_listen

__all__ = ["run_workers"]

log = logging.getLogger("sipguard")


class MachineAdmin(ThreadingHTTPServer):
    """The admin address with ``--workers``: one answer for the machine, from the workers' own admin ports
    (admin port + 1 + index).  GET /healthz (every worker healthy), /accounts (the shared counts, the calls
    each worker holds added up), /calls and /bans (every worker's); POST /reload goes to worker 0, which has
    the supervisor reload them all.  /metrics stays per worker (each worker's admin port)."""

    daemon_threads = True

    def __init__(self, host: str, port: int, workers: int) -> None:
        self.worker_urls = [f"http://{host if ':' not in host else f'[{host}]'}:{port + 1 + i}" for i in range(workers)]
        super().__init__((host, port), _MachineHandler)

    def ask(self, index: int, path: str, method: str = "GET") -> tuple[int, bytes]:
        req = urllib.request.Request(self.worker_urls[index] + path, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), bytes(err.read())
        except OSError as err:
            return 503, f"worker {index}: {err}\n".encode()

    def merged(self, path: str) -> tuple[int, dict[str, object]]:
        answers = [self.ask(i, path) for i in range(len(self.worker_urls))]
        if any(status != 200 for status, _body in answers):
            return 503, {"error": "; ".join(body.decode(errors="replace").strip() for s, body in answers if s != 200)}
        parts = [json.loads(body) for _status, body in answers]
        key = path.split("?", 1)[0].strip("/")
        if key == "accounts":
            rows: dict[str, dict[str, object]] = {}
            for part in parts:
                for row in part["accounts"]:
                    seen = rows.setdefault(row["account"], {**row, "held_here": 0})
                    seen["active"] = max(int(seen["active"]), int(row["active"]))  # type: ignore[call-overload]
                    seen["held_here"] = int(seen["held_here"]) + int(row["held_here"])  # type: ignore[call-overload]
            return 200, {"accounts": list(rows.values())}
        return 200, {key: [row for part in parts for row in part[key]]}


class _MachineHandler(BaseHTTPRequestHandler):
    server: MachineAdmin

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - no access log on stderr
        pass

    def _answer(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            sick = [i for i in range(len(self.server.worker_urls)) if self.server.ask(i, "/healthz")[0] != 200]
            self._answer(200 if not sick else 503, b"ok\n" if not sick else f"workers not healthy: {sick}\n".encode(),
                         "text/plain")
        elif path in ("/accounts", "/calls", "/bans"):
            status, data = self.server.merged(self.path)
            self._answer(status, (json.dumps(data, indent=1) + "\n").encode())
        else:
            self._answer(404, b"not found (with --workers, /metrics is on each worker's admin port: admin port + 1 "
                              b"+ index)\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        if self.path == "/reload":
            status, body = self.server.ask(0, "/reload", "POST")
            self._answer(status, body, "text/plain")
        else:
            self._answer(404, b"not found\n", "text/plain")

class Sockets:
    """What the supervisor makes before forking and every worker inherits: the listen sockets (by listen
    spec: one every worker reads, or for UDP, when the kernel steers, one per worker in ``steered``); per worker, a Unix datagram pair (``inboxes[i]`` read by worker i, ``outboxes[i]`` written by
    the others to hand it a datagram); and ``drained``, a byte per worker in shared memory, 1 once it
    drained its calls (or is gone): a worker stops when every byte is 1, so that none leaves while another
    still hands it new INVITEs to answer 503."""

    def __init__(self, specs: tuple[str, ...], workers: int) -> None:
        self.drained = mmap.mmap(-1, max(workers, 1))
        self.listen: dict[str, socket.socket] = {}
        self.steered: dict[str, list[socket.socket]] = {}
        self.inboxes: list[socket.socket] = []
        self.outboxes: list[socket.socket] = []
        try:
            for spec in specs:
                transport, host, port = parse_listen(spec)
                if port == 0:
                    raise ValueError(f"{spec}: workers share a fixed port; port 0 is not allowed with --workers")
                group = bind_steered(host, port, workers) if transport == "udp" else None
                if group is not None:
                    self.steered[spec] = group
                    self.listen[spec] = group[0]
                else:
                    self.listen[spec] = bind_udp(host, port) if transport == "udp" else bind_stream(host, port)
            for _ in range(workers):
                inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                for end in (inbox, outbox):
                    end.setblocking(False)
                    try:
                        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
                        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF_BYTES)
                    except OSError:
                        pass
                self.inboxes.append(inbox)
                self.outboxes.append(outbox)
        except BaseException:
            self.close()
            raise

    def listen_of(self, index: int) -> dict[str, socket.socket]:
        """Worker ``index``'s listen sockets by spec: its own of a steered group, else the shared one."""
        return {spec: self.steered[spec][index] if spec in self.steered else sock for spec, sock in self.listen.items()}

    def close(self) -> None:
        for sock in [*self.listen.values(), *(s for group in self.steered.values() for s in group[1:]),
                     *self.inboxes, *self.outboxes]:
            sock.close()
        self.drained.close()


def _worker_main(settings: Settings, index: int, counts: SharedCounts, sockets: Sockets, ready_fd: int) -> int:
    from .server import Server, WorkerSlot

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the server's handler (reopen the decision log)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if settings.use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass

    async def main() -> None:
        server = Server(settings, worker=WorkerSlot(index, counts, sockets.listen_of(index), sockets.inboxes[index],
                                                    sockets.outboxes, sockets.drained))
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


def _claim_addresses(specs: tuple[str, ...]) -> list[socket.socket]:
    """One abstract Unix socket per listen address, named after it, held by the supervisor: the name can be
    bound once per host (network namespace), so a second sipguard with ``--workers`` says plainly that the
    address is served by another sipguard (binding the address itself would only say "in use")."""
    held: list[socket.socket] = []
    for spec in specs:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(f"\0sipguard {spec}")
        except OSError as err:
            sock.close()
            for other in held:
                other.close()
            raise OSError(err.errno, f"{spec} is served by another sipguard on this host already") from None
        held.append(sock)
    return held


def run_workers(settings: Settings, count: int) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT.  Raises PolicyError before forking if the policy is bad."""
    policy = load(settings.policy_path)
    specs = settings.listen or policy.service.listen
    claims = _claim_addresses(specs)  # held until the supervisor exits
    try:
        sockets = Sockets(specs, count)
    except BaseException:
        for claim in claims:
            claim.close()
        raise
    counts = SharedCounts(count, rows=max(4096, 4 * len(policy.accounts)))
    watched = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    children: dict[int, tuple[int, int]] = {}  # pid -> (worker index, read end of its ready pipe)
    admin_host, _sep, admin_port = (settings.admin or policy.service.admin).rpartition(":")
    machine = MachineAdmin(admin_host.strip("[]"), int(admin_port), count)  # bound before any fork: fails first

    def spawn(index: int) -> None:
        sockets.drained[index] = 0
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(ready_r)
                machine.socket.close()
                for claim in claims:
                    claim.close()
                code = _worker_main(settings, index, counts, sockets, ready_w)
            finally:
                os._exit(code)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        children[pid] = (index, ready_r)

    for index in range(count):
        spawn(index)
    threading.Thread(target=machine.serve_forever, name="admin", daemon=True).start()
    log.info("sipguard supervisor %d: %d workers; the machine's admin on %s:%s", os.getpid(), count, admin_host,
             admin_port)
    for spec in specs:
        if spec.startswith("udp:"):
            log.info("%s: %s", spec, "each worker reads its own socket, the kernel steering each datagram by its "
                     "Call-ID" if spec in sockets.steered else "every worker reads one socket (this kernel does "
                     "not steer by Call-ID) and hands other workers their calls")
    status = 0
    stopping = False
    ready = False  # told systemd (READY=1) once every worker answered
    period = systemd.watchdog_period_s()
    while children:
        # a short wait while the workers start (readiness), the watchdog's period once they run, else for good
        info = signal.sigtimedwait(watched, 0.1 if not ready else period or 3600.0)
        if not stopping and (not ready or info is None):
            healthy = all(machine.ask(i, "/healthz")[0] == 200 for i in range(count))
            if healthy and not ready:
                ready = True
                systemd.notify(f"READY=1\nSTATUS={count} workers")
            elif healthy and period is not None:
                systemd.notify("WATCHDOG=1")  # every worker's loop answered: the machine runs
        if info is None:
            continue
        sig = info.si_signo
        if sig in (signal.SIGHUP, signal.SIGUSR1):  # reload; reopen the decision log
            for pid in children:
                os.kill(pid, sig)
        elif sig in (signal.SIGTERM, signal.SIGINT):
            # the first: every worker drains; a second: every worker stops at once (docs/service.md)
            if not stopping:
                systemd.notify("STOPPING=1")
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
            sockets.drained[index] = 1  # gone: the others do not wait for it
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
    machine.shutdown()
    machine.server_close()
    for claim in claims:
        claim.close()
    sockets.close()
    return status
