"""The light path of in-dialog ACKs and BYEs (proxy.py ``_peeked_request``, parser.py ``peek_request``).

It must do exactly what the whole path does (parse, ``_on_request``, ``_forward_in_dialog``, serialize) for
every request it takes, and leave every other one to the whole path: the property test below runs both
paths on the same traffic, plain and hostile (forged tags, foreign Routes, loops, Max-Forwards 0, a scanner's
User-Agent, control characters, bodies...), and compares every action, counter and table.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import UAC, UAS, Wire, feed, response_to, run_timers
from conftest import BASE_POLICY
from sipguard.policy import Engine, load_text
from sipguard.sip import DialogEnded, Local, Peer, ProxyCore, Request, Send, SipError, TimerConfig, parse
from sipguard.sip.parser import peek_request

KEY = b"k" * 32
T0 = 1000.0
UAC_CONTACT = "sip:uac@127.0.0.2:5062"
UAS_CONTACT = "sip:uas@127.0.0.3:5063"
THIRD = Peer("udp", "198.51.100.66", 5060)


def _core(light: bool = True) -> ProxyCore:
    timers = TimerConfig(t1_s=0.5, t2_s=4, t4_s=5, timer_c_s=180, dialog_timeout_s=60)
    core = ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(load_text(BASE_POLICY)), timers, route_key=KEY)
    core.light_requests = light
    return core


def _invite() -> bytes:
    return ("INVITE sip:+3250123400@127.0.0.3:5063 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-uac-1\r\n"
            "From: <sip:+3228807240@127.0.0.2>;tag=ft1\r\nTo: <sip:+3250123400@127.0.0.3>\r\n"
            "Call-ID: call-1@127.0.0.2\r\nCSeq: 1 INVITE\r\nContact: <sip:uac@127.0.0.2:5062>\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def _up(core: ProxyCore, wire: Wire) -> str:
    """A call up through ``core``; returns sipguard's Record-Route value as the UAS got it."""
    feed(core, _invite(), UAC, T0, wire)
    fwd = wire.last_to(UAS)
    assert isinstance(fwd, Request)
    feed(core, response_to(fwd, 180, "Ringing"), UAS, T0 + 0.01, wire)
    feed(core, response_to(fwd, 200, "OK"), UAS, T0 + 0.02, wire)
    (rr,) = fwd.get_all("record-route")
    return rr


def _in_dialog(method: str, rr: str, *, callee: bool = False, branch: str = "z9hG4bK-r1", extra: tuple[str, ...] = (),
               routes: tuple[str, ...] | None = None, max_forwards: str | None = "70", body: bytes = b"") -> bytes:
    """An ACK or BYE as a UA sends it inside the call: from the caller (to the UAS's Contact) or the callee."""
    ruri, via, tags = ((UAC_CONTACT, "127.0.0.3:5063", ("uas-tag", "ft1")) if callee
                       else (UAS_CONTACT, "127.0.0.2:5062", ("ft1", "uas-tag")))
    lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/UDP {via};branch={branch}"]
    lines += [f"Route: {r}" for r in (routes if routes is not None else (rr,))]
    lines += [f"From: <sip:a@x>;tag={tags[0]}", f"To: <sip:b@y>;tag={tags[1]}", "Call-ID: call-1@127.0.0.2",
              f"CSeq: {1 if method == 'ACK' else 2} {method}"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += list(extra)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def _trace(core: ProxyCore, data: bytes, source: Peer) -> tuple[list[str], Wire]:
    """Feed an in-dialog request to a core whose call is up, a retransmission of it, the far end's 200 to a
    BYE, then every timer for 40 s: what the core did, as text, and what it sent."""
    wire = Wire()
    seen = [repr(a) for a in feed(core, data, source, T0 + 1, wire)]
    seen += [repr(a) for a in feed(core, data, source, T0 + 1.2, wire)]  # a retransmission
    forwarded = [s for s in wire.sent if s.status == 0 and s.method == "BYE"]
    if forwarded:
        try:
            fwd = parse(forwarded[0].data)
        except SipError:
            fwd = None
        if isinstance(fwd, Request):
            far = forwarded[0].dest
            seen += [repr(a) for a in feed(core, response_to(fwd, 200, "OK", to_tag=None), far, T0 + 1.5, wire)]
    seen += [repr(a) for a in run_timers(core, T0 + 40, wire)]
    stats = core.stats
    seen += [f"requests {sorted(stats.requests.items())}", f"responses {sorted(stats.responses.items())}",
             f"replies {sorted(stats.replies.items())}", f"drops {sorted(stats.drops.items())}",
             f"errors {sorted(stats.parse_errors.items())}", f"tokens {stats.token_relays}",
             f"dialogs {core.dialog_count}", f"transactions {core.transaction_count}"]
    return seen, wire


def _both(data: bytes | Callable[[str], bytes], source: Peer) -> tuple[ProxyCore, list[str], Wire]:
    """The same traffic through a core with the light path and one without: what each did must be the same.
    ``data``: the request, ``{RR}`` standing for sipguard's Record-Route; or what makes it from that."""
    runs = []
    for light in (True, False):
        core = _core(light)
        rr = _up(core, Wire())
        request = data(rr) if callable(data) else data.replace(b"{RR}", rr.encode())
        seen, wire = _trace(core, request, source)
        runs.append((core, seen, wire))
    (light_core, light_seen, wire), (_whole, whole_seen, _w) = runs
    assert light_seen == whole_seen
    return light_core, light_seen, wire


# ---------------------------------------------------------------- the plain case takes it
def test_an_ack_and_a_bye_as_uas_send_them_take_the_light_path_and_do_what_the_whole_path_does() -> None:
    for method, callee in (("ACK", False), ("BYE", False), ("BYE", True)):
        data = _in_dialog(method, "{RR}", callee=callee)
        core, seen, wire = _both(data, UAS if callee else UAC)
        # a retransmitted ACK is relayed again; a retransmitted BYE is absorbed by its transaction (whole path)
        assert core.stats.light_requests == (2 if method == "ACK" else 1), (method, callee)
        sent = [s for s in wire.sent if s.status == 0]
        assert [s.dest for s in sent][:1] == [UAC if callee else UAS]
        fwd = parse(sent[0].data)
        assert isinstance(fwd, Request) and fwd.method == method and fwd.get_all("route") == []
        assert fwd.max_forwards == 69 and fwd.vias[0].host == "127.0.0.1" and len(fwd.vias) == 2
        if method == "BYE":
            assert any("DialogEnded" in s and "'bye'" in s for s in seen)
            assert [s.status for s in wire.sent if s.status] == [200]  # the far end's 200, once


def test_a_bye_with_no_answer_gets_408_from_the_request_it_parses_only_then() -> None:
    core = _core()
    rr = _up(core, Wire())
    wire = Wire()
    feed(core, _in_dialog("BYE", rr, extra=("User-Agent: PBX 1.0",)), UAC, T0 + 1, wire)
    assert core.stats.light_requests == 1
    (txn,) = [t for t in core.transactions() if t.method == "BYE"]
    assert txn.request is None and txn.received  # not parsed on the way through
    run_timers(core, T0 + 40, wire)
    (answer,) = [parse(s.data) for s in wire.to(UAC)]
    assert answer.status == 408 and answer.call_id == "call-1@127.0.0.2" and answer.cseq == 2
    assert answer.vias[0].branch == "z9hG4bK-r1"


def test_a_transport_error_on_a_light_bye_answers_503() -> None:
    core = _core()
    rr = _up(core, Wire())
    actions = core.receive(_in_dialog("BYE", rr), UAC, T0 + 1)
    (send,) = [a for a in actions if isinstance(a, Send)]
    more = core.send_failed(send, "no route to host", T0 + 1)
    (answer,) = [parse(a.data) for a in more if isinstance(a, Send)]
    assert answer.status == 503 and b"no route to host" in [a for a in more if isinstance(a, Send)][0].data


# ---------------------------------------------------------------- attacks: the whole path decides, as before
ATTACKS = {
    # a BYE of another call carrying this call's Route (its token signs this Call-ID): 403
    "forged call-id": (lambda rr: _in_dialog("BYE", rr).replace(b"call-1@", b"call-2@"), UAC, 403),
    # forged tags: no dialog held matches them; the route token proves the call, as after a restart: relayed
    "forged tags": (lambda rr: _in_dialog("BYE", rr).replace(b"tag=ft1", b"tag=x1").replace(b"tag=uas-tag",
                                                                                              b"tag=x2"), UAC, 200),
    # a Route of its own after ours, towards a third host: 403, never sent there
    "route out": (lambda rr: _in_dialog("BYE", rr, routes=(rr, "<sip:198.51.100.66;lr>")), UAC, 403),
    # a Request-URI at a third host: 403
    "ruri out": (lambda rr: _in_dialog("BYE", rr).replace(UAS_CONTACT.encode(), b"sip:x@198.51.100.66"), UAC, 403),
    # the callee's BYE sent from a third host: 403
    "third host": (lambda rr: _in_dialog("BYE", rr, callee=True), THIRD, 403),
    # Max-Forwards 0: 483
    "hops": (lambda rr: _in_dialog("BYE", rr, max_forwards="0"), UAC, 483),
    # a Via of sipguard's own on it (a loop, or a forgery): the whole path's loop check
    "our via": (lambda rr: _in_dialog("BYE", rr).replace(b"Via: SIP/2.0/UDP 127.0.0.2:5062", b"Via: SIP/2.0/UDP "
                                                           b"127.0.0.1:5060"), UAC, None),
    # a Route of ours in another spelling (not as we wrote it): the whole path reads it
    "respelled route": (lambda rr: _in_dialog("BYE", rr, routes=(rr.replace(";lr", ";LR"),)), UAC, 200),
}


def test_every_attack_goes_to_the_whole_path_and_ends_as_it_did() -> None:
    for name, (build, source, status) in ATTACKS.items():
        core, seen, wire = _both(build, source)
        assert core.stats.light_requests == 0, name
        answered = [s.status for s in wire.sent if s.status and s.dest != UAS]
        if status is None:
            continue
        if status == 200:
            assert answered == [200], (name, answered)
        else:
            assert answered[:1] == [status], (name, answered)
            assert all(s.dest != THIRD for s in wire.sent if s.status == 0), name
            assert [s for s in wire.sent if s.status == 0 and s.method == "BYE"] == [], name


def test_a_second_bye_after_the_dialog_ended_goes_by_the_route_tokens_proof() -> None:
    core = _core()
    rr = _up(core, Wire())
    wire = Wire()
    feed(core, _in_dialog("BYE", rr), UAC, T0 + 1, wire)
    assert core.dialog_count == 0 and core.stats.light_requests == 1
    feed(core, _in_dialog("BYE", rr, branch="z9hG4bK-again"), UAC, T0 + 2, wire)
    # the route token still proves the call was admitted: relayed, counted as such, no channel touched twice
    assert core.stats.token_relays == 1 and core.stats.light_requests == 1


def test_a_user_agent_on_a_light_bye_is_screened_as_on_the_whole_path() -> None:
    """The call's own ends are trusted (an account's source, its upstream): a scanner's name from them is never
    dropped, on either path; from anyone else the request leaves the light path (not an end of the dialog)."""
    data = _in_dialog("BYE", "{RR}", callee=True, extra=("User-Agent: friendly-scanner",))
    core, seen, wire = _both(data, UAS)
    assert core.stats.light_requests == 1 and core.stats.drops["scanner"] == 0 and core.dialog_count == 0
    core, seen, wire = _both(data, THIRD)
    drops = core.stats.drops
    assert core.stats.light_requests == 0 and core.dialog_count == 1
    assert (drops["scanner"], drops["banned"]) == (1, 1)  # then banned: its retransmission is dropped unread


# ---------------------------------------------------------------- the property: both paths, any request
def _spell(draw, key: str) -> str:
    forms = {"Via": ["Via", "v", "VIA", "via "], "From": ["From", "f", "from"], "To": ["To", "t", "TO"],
             "Call-ID": ["Call-ID", "i", "call-id"], "CSeq": ["CSeq", "cseq"],
             "Max-Forwards": ["Max-Forwards", "max-forwards"], "Content-Length": ["Content-Length", "l"],
             "Route": ["Route", "route"]}[key]
    return draw(st.sampled_from([forms[0]] * 2 + forms[1:]))


@st.composite
def in_dialog_traffic(draw) -> tuple[bytes, Peer]:
    # half the requests plain in every respect (the light path's), half with odd forms anywhere (the whole
    # path's, and the near misses): both paths get exercised on the same kinds of requests
    plain = draw(st.booleans())

    def usually(common: str, *odd: str) -> str:
        return common if plain else draw(st.sampled_from([common] * (2 * len(odd) + 2) + list(odd)))

    method = usually("BYE", "ACK", "INFO", "ack")
    callee = draw(st.booleans())
    ruri, via_host, tags = ((UAC_CONTACT, "127.0.0.3:5063", ["uas-tag", "ft1"]) if callee
                            else (UAS_CONTACT, "127.0.0.2:5062", ["ft1", "uas-tag"]))
    ruri = usually(ruri, "sip:x@198.51.100.66", "sip:127.0.0.1:5060", "tel:+3250123400", "sip:uas@127.0.0.3:5063?a=b",
                   "SIP:uas@127.0.0.3:5063", "sip:uas@127.0.0.3:5063;transport=tcp", "sips:uas@127.0.0.3:5063")
    source = UAS if callee else UAC
    where = usually("same", "third", "port")
    if where == "third":
        source = THIRD
    elif where == "port":
        source = Peer("udp", source.host, 40000)
    via = usually(f"SIP/2.0/UDP {via_host};branch=z9hG4bK-p{draw(st.integers(0, 3))}",
                  f"SIP/2.0/UDP {via_host};branch=z9hG4bK-p1;rport", f"SIP/2.0/UDP pbx.example;branch=z9hG4bK-p2",
                  f"SIP/2.0/UDP {via_host};branch=old-2543", f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-loop",
                  f"SIP/2.0/UDP {via_host};branch=z9hG4bK-p3;received=10.0.0.9",
                  f"SIP/2.0/UDP {via_host};branch=z9hG4bK-p4, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-x",
                  f"SIP/3.0/UDP {via_host};branch=z9hG4bK-p5", "SIP/2.0/UDP ;branch=z9hG4bK-p6")
    fields = [f"{_spell(draw, 'Via')}: {via}"]
    if usually("one", "two") == "two":
        fields.append(f"Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bK-{draw(st.integers(0, 9))}")
    routes = usually("ours", "none", "ours+foreign", "foreign", "ours twice", "list", "respelled", "ours, other token")
    route_values = {"ours": ["{RR}"], "none": [], "ours+foreign": ["{RR}", "<sip:198.51.100.66;lr>"],
                    "foreign": ["<sip:198.51.100.66;lr>"], "ours twice": ["{RR}", "{RR}"],
                    "list": ["{RR}, <sip:198.51.100.66;lr>"], "respelled": ["<sip:127.0.0.1:5060;lr>"],
                    "ours, other token": ["<sip:127.0.0.1:5060;lr;sgt=00000000000000000000deadbeef>"]}[routes]
    fields += [f"{_spell(draw, 'Route')}: {r}" for r in route_values]
    if usually("right", "forged") == "forged":
        tags[1] = "forged"
    display = usually("", '"Display" ')
    fields.append(f"{_spell(draw, 'From')}: {display}<sip:a@x>;tag={tags[0]}")
    fields.append(f"{_spell(draw, 'To')}: <sip:b@y>" + usually(f";tag={tags[1]}", ""))
    fields.append(f"{_spell(draw, 'Call-ID')}: " + usually("call-1@127.0.0.2", "other@x", "call 1"))
    cseq_method = usually(method, "INVITE", "BYE")
    fields.append(f"{_spell(draw, 'CSeq')}: {usually('2', '1', '2147483648', '07')}{usually(' ', '  ')}{cseq_method}")
    mf = usually("70", "absent", "0", "1", "300", "0070", " 69 ", "x")
    if mf != "absent":
        fields.append(f"{_spell(draw, 'Max-Forwards')}:{mf if mf.startswith(' ') else ' ' + mf}")
    fields += [usually("Contact: <sip:ua@127.0.0.2:5062>", "Contact: <sip:ua@", "Contact: *",
                       "Contact: <sip:a@x>, <sip:b@y>", "m: <sip:ua@127.0.0.2>")]
    extras = ["User-Agent: PBX 1.0", "User-Agent: friendly-scanner", "Subject: hello", "Record-Route: <sip:x;lr>",
              "Record-Route: <sip:x;lr>, <sip:y;lr>", "Date: Sat, 13 Nov 2010 23:29:00 GMT", "Date: never",
              "Proxy-Require: foo", "X-Tab: a\tb", "X-Ctl: a\x01b", "X-Utf: caf\u00e9", "Bad Name: x", "NoColon",
              "X-Folded: a\r\n b", "X-Bare: a\nb", "X-Bare-End: a\n", "Require: 100rel", "User-Agent: two"]
    fields += draw(st.lists(st.sampled_from(extras[:5] if plain else extras), max_size=3))
    body = usually("", "v=0\n")
    cl = usually(str(len(body)), "absent", "00", str(len(body) + 5))
    if cl != "absent":
        fields.append(f"{_spell(draw, 'Content-Length')}: {cl}")
    order = draw(st.permutations(fields))
    head = f"{method} {ruri} SIP/2.0\r\n" + "\r\n".join(order)
    tail = usually("", "trailing junk")
    return (head + "\r\n\r\n" + body + tail).encode("utf-8", "surrogateescape"), source


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(in_dialog_traffic())
def test_whichever_path_reads_an_in_dialog_request_the_same_things_happen(traffic: tuple[bytes, Peer]) -> None:
    data, source = traffic
    _both(data, source)


@settings(max_examples=400, deadline=None)
@given(in_dialog_traffic())
def test_what_peek_request_reads_parse_reads_the_same(traffic: tuple[bytes, Peer]) -> None:
    data = traffic[0].replace(b"{RR}", b"<sip:127.0.0.1:5060;lr;sgt=0123456789abcdef0123abcdef01>")
    peek = peek_request(data)
    if peek is None:
        return
    msg = parse(data)  # never raises for what the light path takes
    assert isinstance(msg, Request)
    assert (peek.method, peek.uri, peek.call_id, peek.from_tag, peek.to_tag, peek.cseq, peek.max_forwards) == \
           (msg.method, msg.uri, msg.call_id, msg.from_tag, msg.to_tag, msg.cseq, msg.max_forwards)
    assert peek.ruri == msg.ruri and (peek.via,) == msg.vias and msg.body == b""
    assert peek.routes == msg.get_all("route") and peek.user_agent == msg.get("user-agent")
    assert msg.get("proxy-require") is None and msg.get("date") is None
    if msg.max_forwards == 0:
        return  # never forwarded (the whole path: 483, an ACK dropped)
    # the bytes it forwards are the request's own but for the edits, every line as received
    ours = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx"
    out = peek.forwarded(ours, None)
    fwd = parse(out)
    assert isinstance(fwd, Request) and fwd.get_all("route") == [] and fwd.vias[1:] == msg.vias
    assert fwd.max_forwards == (70 if msg.max_forwards is None else min(msg.max_forwards, 256) - 1)
    kept = [line for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")
            if not re.match(rb"(?i)(route|max-forwards|content-length|l)\s*:", line)]
    assert [line for line in out.split(b"\r\n\r\n")[0].split(b"\r\n") if line != b"Via: " + ours.encode()
            and not re.match(rb"(Max-Forwards|Content-Length):", line)] == kept
    assert out.endswith(b"\r\nContent-Length: 0\r\n\r\n")
