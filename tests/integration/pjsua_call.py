"""A real SIP user agent (PJSUA2) places one call through sipguard, then hangs up.

Run as a script (pjsua2 owns signals and threads; a crash must not take pytest down):
    python pjsua_call.py --bind 127.0.0.4 --proxy 127.0.0.1:5060 --to sip:+3250123400@127.0.0.3:5063
Prints one JSON line: the states the call went through and the final status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pjsua2 as pj


class Call(pj.Call):
    def __init__(self, account: pj.Account) -> None:
        super().__init__(account)
        self.states: list[str] = []
        self.last_status = 0

    @property
    def ended(self) -> bool:
        return any(state.startswith("DISCONN") for state in self.states)

    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802 (pjsua2 API)
        info = self.getInfo()
        self.states.append(info.stateText)
        self.last_status = info.lastStatusCode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--user", default="+3228807242")
    parser.add_argument("--hold-s", type=float, default=1.0)
    parser.add_argument("--timeout-s", type=float, default=20.0)
    args = parser.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    tcfg.boundAddress = args.bind
    tcfg.publicAddress = args.bind
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()

    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{args.user}@{args.bind}"
    acfg.sipConfig.proxies.append(f"sip:{args.proxy};lr")
    acfg.mediaConfig.transportConfig.boundAddress = args.bind
    acfg.natConfig.sipOutboundUse = 0
    account = pj.Account()
    account.create(acfg)

    call = Call(account)
    result: dict[str, object] = {"confirmed": False, "disconnected": False}
    call.makeCall(args.to, pj.CallOpParam(True))
    deadline = time.monotonic() + args.timeout_s
    while time.monotonic() < deadline and "CONFIRMED" not in call.states and not call.ended:
        ep.libHandleEvents(20)
    result["confirmed"] = "CONFIRMED" in call.states
    if result["confirmed"]:
        hold_until = time.monotonic() + args.hold_s
        while time.monotonic() < hold_until:
            ep.libHandleEvents(20)
        call.hangup(pj.CallOpParam(True))
    deadline = time.monotonic() + args.timeout_s
    while time.monotonic() < deadline and not call.ended:
        ep.libHandleEvents(20)
    # let the BYE's 200 OK be received
    for _ in range(10):
        ep.libHandleEvents(20)
    result["disconnected"] = call.ended
    result["states"] = call.states
    result["last_status"] = call.last_status
    print(json.dumps(result), flush=True)
    del call
    ep.libDestroy()
    return 0 if result["confirmed"] and result["disconnected"] else 1


if __name__ == "__main__":
    sys.exit(main())
