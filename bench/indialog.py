"""In-dialog requests alone: µs (or instructions) per ACK and per BYE through the server's datagram path.

    python -m bench.indialog [--dialogs 3000] [--stop-after setup|ack|bye]

Sets up ``--dialogs`` calls through bench/call.py's harness (INVITE, 200: dialogs established), then
feeds every call's ACK, then every call's BYE, and prints µs per ACK and per BYE.  For instructions,
run it twice under callgrind, collecting only inside the datagram path, and take the difference:

    valgrind --tool=callgrind --toggle-collect=CPyDef_pump___Pump___receive \\
        .venv/bin/python -m bench.indialog --dialogs 2000 --stop-after setup   # then --stop-after ack

(the second minus the first, over the number of dialogs, is what one ACK costs).  Not a test.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

from .call import Harness, _in_dialog, _invite, _reply


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dialogs", type=int, default=3000)
    parser.add_argument("--stop-after", choices=("setup", "ack", "bye"), default="bye")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp))
        for n in range(200):  # warm the memos as a running server has them
            h.call(n)
        acks, byes = [], []
        for n in range(1000, 1000 + args.dialogs):
            h.feed(_invite(n), h.uac)
            fwd = next(d for d in h._take() if d.startswith(b"INVITE"))
            h.feed(_reply(fwd, "200 OK", f"uas{n}"), h.uas)
            ack, bye = _in_dialog(next(d for d in h._take() if d.startswith(b"SIP/2.0 200")), n)
            acks.append(ack)
            byes.append(bye)
        gc.collect()
        if args.stop_after == "setup":
            return
        receive = h.server.pump.receive
        t0 = time.perf_counter()
        for data in acks:
            receive(data, h.uac)
        t1 = time.perf_counter()
        if args.stop_after == "ack":
            return
        for data in byes:
            receive(data, h.uac)
        t2 = time.perf_counter()
        sent = len(h.wire.sent)
        if sent != 2 * args.dialogs:
            raise RuntimeError(f"{sent} datagrams relayed for {args.dialogs} ACKs and BYEs")
        print(f"µs per ACK {(t1 - t0) / args.dialogs * 1e6:.1f}, per BYE {(t2 - t1) / args.dialogs * 1e6:.1f} "
              f"({args.dialogs} dialogs)")


if __name__ == "__main__":
    main()
