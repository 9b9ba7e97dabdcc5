"""With ``--workers``: one UDP socket per worker on the listen address, and the kernel choosing the worker.

The workers' listen sockets form one ``SO_REUSEPORT`` group, bound by the supervisor in worker order
(the group's socket i is worker i's), with a classic BPF program attached to the group
(``SO_ATTACH_REUSEPORT_CBPF``) that finds the datagram's ``Call-ID`` header and returns the worker its
value hashes to: the same hash as ``owner_of`` (sip/raw.py ``call_id_hash``).  So a new INVITE from a
trunk that sends every call from one socket goes straight to the worker that will own the call, its
retransmissions, CANCEL and the ACK of a non-2xx too, and no worker reads a datagram to hand it on.

What the program does not find (a compact ``i:`` header, another spelling, a Call-ID line further than
``SCAN_END`` bytes into the datagram, more than three blanks after the colon) the kernel gives to a socket
of its own choosing (its hash of the addresses; for a datagram shorter than the scan the program stops
and says worker 0), and that worker's ``Dispatch`` (sip/pump.py) hands it to the owner as before: the
steering saves work, it decides nothing.  A kernel that refuses the program (not Linux, or no classic
BPF for reuseport groups) leaves the design before it: one socket every worker reads.

Classic BPF has no loops and no backward jumps: the search is unrolled, four instructions per byte
position (``SCAN_START`` to ``SCAN_END``), and the hash eight per Call-ID byte, under the kernel's limit
of 4,096 instructions.  In the program, offsets count from the start of the UDP payload (the kernel
pulls the UDP header before it runs a reuseport program).  tests/unit/test_steer.py runs the program in
an interpreter against ``owner_of``, and through the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

from ..sip.raw import HASH_BYTES, HASH_MIX, HASH_MUL
from .udp import bind_udp

__all__ = ["steering_program", "bind_steered", "Insn", "SCAN_START", "SCAN_END", "NOT_STEERED"]

SO_ATTACH_REUSEPORT_CBPF = 51  # Linux, asm-generic/socket.h (not in the socket module)
BPF_MAXINSNS = 4096
SCAN_START = 14  # the shortest request line and its CRLF come first ("ACK sip:a SIP/2.0" is 17 bytes)
SCAN_END = 880  # the last position where "\nCall-ID:" is looked for
NOT_STEERED = 0xFFFFFFFF  # an index past the group's end: the kernel picks a socket by its own hash

Insn = tuple[int, int, int, int]  # code, jt, jf, k (struct sock_filter)

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x20
_LD_W_IND = 0x40
_LD_B_IND = 0x50
_LD_IMM = 0x00
_LD_MEM = 0x60
_LDX_IMM = 0x01
_LDX_MEM = 0x61
_ST = 0x02
_STX = 0x03
_ADD_K = 0x04
_ADD_X = 0x0C
_MUL_K = 0x24
_RSH_K = 0x74
_MOD_K = 0x94
_JA = 0x05
_JEQ_K = 0x15
_JGT_K = 0x25
_RET_K = 0x06
_RET_A = 0x16
_TAX = 0x07
_TXA = 0x87

_NL_CAL = int.from_bytes(b"\nCal", "big")  # a word load is big-endian (network order)
_L_ID = int.from_bytes(b"l-ID", "big")


def steering_program(workers: int) -> list[Insn]:
    """The program for a group of ``workers`` sockets: the index of the Call-ID's owner, or NOT_STEERED."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    prog: list[Insn] = []
    found: list[int] = []  # the "ja FOUND" to patch, by place
    # 1. the search: at each position p, the word "\nCal"; on a match X = p + 1 (the "C")
    for p in range(SCAN_START, SCAN_END + 1):
        prog.append((_LD_W_ABS, 0, 0, p))
        prog.append((_JEQ_K, 0, 2, _NL_CAL))
        prog.append((_LDX_IMM, 0, 0, p + 1))
        found.append(len(prog))
        prog.append((_JA, 0, 0, 0))
    prog.append((_RET_K, 0, 0, NOT_STEERED))
    here = len(prog)
    for at in found:
        prog[at] = (_JA, 0, 0, here - at - 1)
    # 2. the rest of the name: "l-ID" at X + 3, ":" at X + 7; then X past the colon
    prog += [
        (_LD_W_IND, 0, 0, 3),
        (_JEQ_K, 1, 0, _L_ID),
        (_RET_K, 0, 0, NOT_STEERED),
        (_LD_B_IND, 0, 0, 7),
        (_JEQ_K, 1, 0, ord(":")),
        (_RET_K, 0, 0, NOT_STEERED),
        (_TXA, 0, 0, 0),
        (_ADD_K, 0, 0, 8),
        (_TAX, 0, 0, 0),
    ]
    # 3. up to three blanks (SP or HTAB) skipped
    for _ in range(3):
        prog += [
            (_LD_B_IND, 0, 0, 0),
            (_JEQ_K, 1, 0, ord(" ")),
            (_JEQ_K, 0, 3, ord("\t")),
            (_TXA, 0, 0, 0),
            (_ADD_K, 0, 0, 1),
            (_TAX, 0, 0, 0),
        ]
    # each block's "not a blank" jumps over the next blocks to the value's first byte, which must be no blank
    # nor control byte (an empty value, a fourth blank, a bare LF: not steered; owner_of strips such bytes)
    blank_jumps = [len(prog) - 6 * (3 - b) + 2 for b in range(3)]
    first = len(prog)
    for at in blank_jumps:
        prog[at] = (_JEQ_K, 0, first - at - 1, ord("\t"))
    prog += [
        (_LD_B_IND, 0, 0, 0),
        (_JGT_K, 1, 0, 0x20),
        (_RET_K, 0, 0, NOT_STEERED),
    ]
    # 4. the hash: M[0] = h, M[1] = the value's start; per byte, stop at a blank or control byte
    prog += [(_STX, 0, 0, 1), (_LD_IMM, 0, 0, 0), (_ST, 0, 0, 0)]
    ends: list[int] = []  # conditional jumps to the end, through the nearest trampoline after them
    pending: list[int] = []
    for i in range(HASH_BYTES):
        if i and i % 16 == 0:  # a trampoline: jumps reach 255 instructions at most, the end is further
            prog.append((_JA, 0, 0, 1))
            tramp = len(prog)
            prog.append((_JA, 0, 0, 0))
            for at in pending:
                code, jt, _jf, k = prog[at]
                prog[at] = (code, jt, tramp - at - 1, k)
            ends.append(tramp)
            pending = []
        prog += [
            (_LD_B_IND, 0, 0, i),
            (_JGT_K, 0, 0, 0x20),
        ]
        pending.append(len(prog) - 1)
        prog += [
            (_TAX, 0, 0, 0),
            (_LD_MEM, 0, 0, 0),
            (_MUL_K, 0, 0, HASH_MUL),
            (_ADD_X, 0, 0, 0),
            (_ST, 0, 0, 0),
            (_LDX_MEM, 0, 0, 1),
        ]
    end = len(prog)
    for at in pending:
        code, jt, _jf, k = prog[at]
        prog[at] = (code, jt, end - at - 1, k)
    for at in ends:
        prog[at] = (_JA, 0, 0, end - at - 1)
    prog += [
        (_LD_MEM, 0, 0, 0),
        (_MUL_K, 0, 0, HASH_MIX),
        (_RSH_K, 0, 0, 16),
        (_MOD_K, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    ]
    if len(prog) > BPF_MAXINSNS:
        raise AssertionError(f"steering program of {len(prog)} instructions: over the kernel's {BPF_MAXINSNS}")
    for code, jt, jf, _k in prog:
        if jt > 255 or jf > 255:
            raise AssertionError("a conditional jump over 255 instructions")
    return prog


def _attach(sock: socket.socket, prog: list[Insn]) -> None:
    """SO_ATTACH_REUSEPORT_CBPF: struct sock_fprog {unsigned short len; struct sock_filter *filter;}."""
    filters = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *insn) for insn in prog))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)  # the kernel copies the program


def bind_steered(host: str, port: int, workers: int) -> list[socket.socket] | None:
    """``workers`` UDP sockets on ``host:port`` in one reuseport group, steered by the Call-ID: socket i is
    worker i's.  None when this kernel cannot steer (the caller binds one shared socket instead).  OSError
    (EADDRINUSE, ...) as ``bind_udp`` raises it when the address is taken."""
    reuseport = getattr(socket, "SO_REUSEPORT", None)
    if reuseport is None or workers < 2:
        return None
    group: list[socket.socket] = []
    try:
        for _ in range(workers):
            group.append(bind_udp(host, port, reuseport=True))
        _attach(group[0], steering_program(workers))
    except OSError as err:
        for sock in group:
            sock.close()
        if err.errno in (errno.EINVAL, errno.ENOPROTOOPT, errno.EPERM, errno.ENOMEM):
            return None
        raise
    return group
