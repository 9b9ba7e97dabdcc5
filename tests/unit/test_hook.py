"""The decision hook: the core asks it for every new out-of-dialog request, never for a re-INVITE."""

from __future__ import annotations

from helpers import UAC, UAS, Wire, feed, request, response_to
from sipguard.sip import Admission, Decided, DialogStarted, Local, Send, Peer, ProxyCore, Reject, Request, Settle, TimerConfig
from sipguard.sip.serializer import SetHeader


class Recorder:
    """A router that answers from a table keyed by the From user, and records what it was asked."""

    def __init__(self, answers: dict[str, Admission]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def admit(self, request: Request, source: Peer, now: float, routes: tuple[str, ...]) -> Admission:
        self.asked.append(request.method)
        user = (request.get("from") or "").split("sip:")[1].split("@")[0]
        return self.answers[user]

    def in_dialog(self, request: Request, account: str | None) -> tuple[object, ...]:
        return ()

    def refused(self, method: str, uri: str, source: Peer, status: int, why: str, cause: str) -> tuple[object, ...]:
        return ()

    def screen_packet(self, data: bytes, source: Peer, now: float) -> str | None:
        return None

    def screen_user_agent(self, user_agent: str | None, source: Peer, now: float) -> str | None:
        return None


def _core(router: Recorder) -> ProxyCore:
    return ProxyCore([Local("udp", "127.0.0.1", 5060)], router, TimerConfig())


def test_hook_can_reject_with_code_reason_and_headers() -> None:
    router = Recorder({"bad": Admission(reject=Reject(486, "Busy Here", (("warning", '399 sipguard "limit 2"'),)),
                                        decisions=("nope",))})
    core, wire = _core(router), Wire()
    actions = feed(core, request(from_user="bad"), UAC, 0.0, wire)
    assert wire.statuses_to(UAC) == [486] and wire.to(UAS) == []
    assert wire.last_to(UAC).get("warning") == '399 sipguard "limit 2"'
    assert [a.decision for a in actions if isinstance(a, Decided)] == ["nope"]


def test_hook_can_rewrite_headers() -> None:
    router = Recorder({"me": Admission(target=UAS, account="a", edits=(SetHeader("p-asserted-identity", "<sip:+3228807240@x>"),))})
    core, wire = _core(router), Wire()
    feed(core, request(from_user="me", extra=["P-Asserted-Identity: <sip:+999@x>"]), UAC, 0.0, wire)
    assert wire.last_to(UAS).get_all("p-asserted-identity") == ["<sip:+3228807240@x>"]


def test_hook_can_drop_silently() -> None:
    router = Recorder({"scanner": Admission(reject=Reject(403, "Forbidden"), silent=True)})
    core, wire = _core(router), Wire()
    feed(core, request(from_user="scanner"), UAC, 0.0, wire)
    assert wire.sent == [] and core.stats.drops["policy"] == 1


def test_a_claim_holds_the_invite_until_settled_and_a_refusal_rejects_it() -> None:
    refuse = Reject(486, "Busy Here")
    router = Recorder({"c": Admission(target=UAS, account="a", claim="claim-1", claim_reject=refuse)})
    core, wire = _core(router), Wire()
    actions = core.receive(request(from_user="c"), UAC, 0.0)  # not feed(): it would settle the claim
    wire.sent.extend(a for a in actions if isinstance(a, Send))
    settle = [a for a in actions if isinstance(a, Settle)]
    # nothing goes out while the claim is open: not the INVITE, nor its 100 (it follows the INVITE)
    assert len(settle) == 1 and wire.sent == []
    out = core.settled(settle[0].ticket, False, 0.1)
    assert [a.status for a in out] == [486]  # refused: the final alone
    actions = core.receive(request(from_user="c", call_id="c2", branch="z9hG4bK-2"), UAC, 0.2)
    ticket = next(a.ticket for a in actions if isinstance(a, Settle))
    out = core.settled(ticket, True, 0.3)
    assert any(isinstance(a, DialogStarted) for a in out)
    wire.sent.extend(a for a in out if isinstance(a, Send))
    fwd = wire.last_to(UAS)
    assert fwd.method == "INVITE" and fwd.call_id == "c2"
    assert [a.dest for a in out if isinstance(a, Send)] == [UAS, UAC]  # downstream first, then the 100
    assert wire.statuses_to(UAC) == [100]


def test_reinvite_does_not_ask_the_hook() -> None:
    router = Recorder({"+3228807240": Admission(target=UAS, account="a")})
    core, wire = _core(router), Wire()
    feed(core, request(), UAC, 0.0, wire)
    feed(core, response_to(wire.last_to(UAS), 200, "OK"), UAS, 0.1, wire)
    feed(core, request(ruri="sip:uas@127.0.0.3:5063", to_tag="uas-tag", cseq=2, branch="z9hG4bK-re",
                       extra=["Route: <sip:127.0.0.1:5060;lr>"]), UAC, 1.0, wire)
    assert router.asked == ["INVITE"]
    assert wire.last_to(UAS).to_tag == "uas-tag"
