"""The kernel's steering of a worker's datagrams (transport/steer.py) against the owner user space computes.

Two checks of the classic BPF program: an interpreter here runs it on datagrams of every shape and must
agree with ``owner_of`` wherever the program steers at all; and the kernel runs it on a real reuseport
group on loopback, where every datagram must arrive at the socket of its owner.  And how a worker reads
its socket of the group (sip/pump.py ``drain``).
"""

from __future__ import annotations

import select
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.run import free_port  # one helper for the benchmark and the tests
from sipguard.sip.pump import drain
from sipguard.sip.raw import call_id_hash, call_id_of, owner_of
from sipguard.transport.steer import NOT_STEERED, SCAN_END, Insn, bind_steered, steering_program


def run(prog: list[Insn], data: bytes) -> int:
    """Classic BPF as the kernel runs it (only the instructions the program uses); a load past the end: 0."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    mask = 0xFFFFFFFF
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code in (0x20, 0x40):  # ld word abs / ind
            at = k if code == 0x20 else x + k
            if at + 4 > len(data):
                return 0
            a = int.from_bytes(data[at:at + 4], "big")
        elif code == 0x50:  # ld byte ind
            if x + k + 1 > len(data):
                return 0
            a = data[x + k]
        elif code == 0x00:
            a = k
        elif code == 0x60:
            a = mem[k]
        elif code == 0x01:
            x = k
        elif code == 0x61:
            x = mem[k]
        elif code == 0x02:
            mem[k] = a
        elif code == 0x03:
            mem[k] = x
        elif code == 0x04:
            a = (a + k) & mask
        elif code == 0x0C:
            a = (a + x) & mask
        elif code == 0x24:
            a = (a * k) & mask
        elif code == 0x74:
            a >>= k
        elif code == 0x94:
            a %= k
        elif code == 0x07:
            x = a
        elif code == 0x87:
            a = x
        elif code == 0x05:
            pc += k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x25:
            pc += jt if a > k else jf
        elif code == 0x06:
            return k
        elif code == 0x16:
            return a
        else:
            raise AssertionError(f"opcode {code:#x} not interpreted")


def _invite(call_id: bytes, *, name: bytes = b"Call-ID", gap: bytes = b" ", before: int = 0) -> bytes:
    filler = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 40) for i in range(before))
    return (b"INVITE sip:+3225550100@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-1\r\n"
            b"From: <sip:pbx@127.0.0.2>;tag=a\r\nTo: <sip:+3225550100@127.0.0.1>\r\n" + filler
            + name + b":" + gap + call_id + b"\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


PROGRAMS = {n: steering_program(n) for n in (2, 3, 4)}

CALL_IDS = st.binary(min_size=1, max_size=80).filter(lambda b: call_id_of(_invite(b)) is not None)


def test_the_program_fits_the_kernel_and_has_no_long_jump() -> None:
    for prog in PROGRAMS.values():
        assert len(prog) <= 4096
        assert all(jt <= 255 and jf <= 255 for _c, jt, jf, _k in prog)
        assert prog[-1][0] in (0x06, 0x16)


@settings(max_examples=300, deadline=None)
@given(CALL_IDS, st.sampled_from([2, 3, 4]), st.sampled_from([b" ", b"", b"\t", b"  \t", b"    "]),
       st.integers(0, 20))
def test_the_program_steers_to_the_owner_or_not_at_all(call_id: bytes, workers: int, gap: bytes,
                                                     before: int) -> None:
    data = _invite(call_id, gap=gap, before=before)
    got = run(PROGRAMS[workers], data)
    if got == NOT_STEERED or data.find(b"\nCall-ID:") > SCAN_END:
        return  # the kernel's own choice; Dispatch hands it on
    assert got == owner_of(data, workers)


@given(st.text(alphabet="abcdef0123456789-@.", min_size=1, max_size=60), st.sampled_from([2, 3, 4]))
def test_every_plain_call_id_is_steered(call_id: str, workers: int) -> None:
    """What PBXs, carriers and SIPp send (hex, UUIDs, counters @ host) is steered: no hand-off."""
    data = _invite(call_id.encode())
    assert run(PROGRAMS[workers], data) == owner_of(data, workers) == call_id_hash(call_id.encode()) % workers


def test_what_the_program_leaves_to_the_workers() -> None:
    prog = PROGRAMS[2]
    assert run(prog, _invite(b"abc@h", name=b"i")) in (0, NOT_STEERED)  # compact form: the kernel's choice
    assert run(prog, _invite(b"abc@h", name=b"Call-Info")) == NOT_STEERED
    assert run(prog, _invite(b"abc@h", gap=b"    ")) == NOT_STEERED  # four blanks
    far = _invite(b"abc@h", before=30)
    assert far.find(b"\nCall-ID:") > SCAN_END and run(prog, far) in (0, NOT_STEERED)
    assert run(prog, b"\r\n\r\n") == 0  # a keepalive: shorter than the search (worker 0 reads it)


def test_calls_spread_over_the_workers() -> None:
    for workers, prog in PROGRAMS.items():
        owners = [run(prog, _invite(b"%d-4711@127.0.0.2" % n)) for n in range(3000)]
        for w in range(workers):
            assert abs(owners.count(w) - 3000 / workers) < 3000 / workers * 0.15


@pytest.mark.parametrize("workers,host,source", [(2, "127.0.0.1", "127.0.0.2"), (3, "127.0.0.1", "127.0.0.2"),
                                                  (2, "::1", "::1")])
def test_the_kernel_delivers_each_datagram_to_its_owner(workers: int, host: str, source: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            pytest.skip(f"no {host} on this machine")
    port = free_port(host)
    group = bind_steered(host, port, workers)
    assert group is not None, "this kernel refused the steering program"
    sender = socket.socket(family, socket.SOCK_DGRAM)
    sender.bind((source, 0))  # one socket, as a trunk sends
    try:
        sent: dict[bytes, int] = {}
        for n in range(300):
            data = _invite(b"%x-%d@10.1.2.3" % (n * 7919, n))
            sent[data] = owner_of(data, workers)
            sender.sendto(data, (host, port))
        got: dict[bytes, int] = {}
        for _ in range(50):  # bounded: every datagram is on loopback already
            ready, _w, _x = select.select(group, [], [], 0.1)
            if not ready:
                break
            for sock in ready:
                while True:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    got[data] = group.index(sock)
        assert got == sent
        assert len(set(sent.values())) == workers
    finally:
        sender.close()
        for sock in group:
            sock.close()


def test_a_group_is_not_joined_by_a_plain_socket() -> None:
    """A second sipguard (one process, no SO_REUSEPORT) on the steered address fails to bind."""
    port = free_port()
    group = bind_steered("127.0.0.1", port, 2)
    assert group is not None
    try:
        from sipguard.transport.udp import bind_udp

        with pytest.raises(OSError, match="in use"):
            bind_udp("127.0.0.1", port)
    finally:
        for sock in group:
            sock.close()


def test_a_worker_reads_its_listen_socket_in_batches_and_keeps_each_datagram() -> None:
    """sip/pump.py ``drain``: at most a batch per turn of the loop, each datagram its own bytes (not a view of
    the one buffer they are read into), and an empty socket ends the batch quietly."""
    listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # the 100 datagrams all wait in it
    listen.bind(("127.0.0.1", 0))
    listen.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.2", 0))
    sent = [_invite(b"%d-batch@h" % n) for n in range(100)]
    for data in sent:
        sender.sendto(data, listen.getsockname())
    got: list[tuple[bytes, tuple[str, int]]] = []
    buffer = memoryview(bytearray(65536))
    turns = []
    for _ in range(4):
        before = len(got)
        drain(listen.recvfrom_into, buffer, lambda data, addr: got.append((data, addr)), 64)
        turns.append(len(got) - before)
    listen.close()
    sender.close()
    assert turns == [64, 36, 0, 0]
    assert [data for data, _addr in got] == sent
    assert {addr[0] for _data, addr in got} == {"127.0.0.2"}
