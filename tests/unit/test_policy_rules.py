"""Caller-ID screening, emergency caller ID and fax, as tables of request -> decision (pure engine)."""

from __future__ import annotations

import pytest

from helpers import as_request, request
from sipguard.policy import Engine, load_text
from sipguard.policy.decision import Mode, Verdict
from sipguard.sip import Peer
from sipguard.sip.serializer import RemoveAll, SetHeader

POLICY = """
service:
  listen: ["udp:127.0.0.1:5060"]
  upstreams:
    pbx: "sip:127.0.0.3:5060"
    carrier: "sip:127.0.0.7:5060"
    abroad: {uri: "sip:127.0.0.8:5060", international: true}
  inbound_caller_id: {allow: ["+3225550000-+3225550099"]}
  country: BE
  emergency_numbers: ["112", "100", "101"]
accounts:
  acme:
    kind: hosted
    match: {sources: ["127.0.1.0/24"]}
    upstream: pbx
    users:
      - {name: Michel, sip_users: ["201", "201m"], site: hq}
      - {name: Lotte, sip_users: ["204"]}
    devices:
      - {name: Door, type: door_phone, sip_users: ["290"], site: depot}
    sites:
      hq: {address: "Avenue Léon Champagne 3, 1480 Saintes", sources: ["127.0.1.0/28"], emergency_caller_id: "+3228807240"}
      depot: {address: "Industrieweg 12, 9000 Gent", sources: ["127.0.1.16/28"], emergency_caller_id: "+3292001100"}
    numbers:
      - {range: "+3228807240-+3228807249", site: hq}
      - {number: "+3292001100", site: depot}
  trunk:
    kind: trunk
    channels: 2
    match: {sources: ["127.0.2.1/32"]}
    upstream: carrier
    deliver_to: "sip:127.0.2.1:5060"
    numbers: [{range: "+3250123400-+3250123499", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3250123400"}}
  rewriter:
    kind: trunk
    channels: 2
    match: {sources: ["127.0.3.1/32"]}
    upstream: carrier
    numbers: [{range: "+3250999000-+3250999009", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels"}}
    default_number: "+3250999001"
    on_caller_id_mismatch: rewrite
  shadowed:
    kind: trunk
    channels: 2
    match: {sources: ["127.0.4.1/32"]}
    upstream: carrier
    numbers: [{range: "+3250888000-+3250888009", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels"}}
    rules: {caller_id: shadow}
"""

HQ, DEPOT, ROAMING = "127.0.1.2", "127.0.1.20", "127.0.1.200"
TRUNK, REWRITER, SHADOWED = "127.0.2.1", "127.0.3.1", "127.0.4.1"


@pytest.fixture
def engine() -> Engine:
    """An engine per test: an engine keeps auto-dialer windows (a table of many calls from one trunk would
    read as a dialer)."""
    return Engine(load_text(POLICY))


fresh = engine


def admit(engine: Engine, source: str, *, from_user: str, ruri_user: str = "+3250555555", headers=()):
    data = request(ruri=f"sip:{ruri_user}@127.0.0.3", from_user=from_user, extra=list(headers))
    return engine.admit(as_request(data), Peer("udp", source, 5060), 0.0)


def rules(adm) -> dict:
    return {d.rule: d for d in adm.decisions}


# ------------------------------------------------------------------ caller ID (terms: general 4)
CALLER_ID = [
    # (case, source, From user, extra headers, admitted?, reason fragment)
    ("own number in E.164", TRUNK, "+3250123401", [], True, None),
    ("own number in national format", TRUNK, "050123401", [], True, None),
    ("own number in 00 format", TRUNK, "003250123401", [], True, None),
    ("foreign From", TRUNK, "+3299999999", [], False, "From +3299999999 is not a number of trunk"),
    ("foreign PAI, own From", TRUNK, "+3250123401", ["P-Asserted-Identity: <sip:+3299999999@x>"], False,
     "p-asserted-identity +3299999999"),
    ("foreign PPI", TRUNK, "+3250123401", ["P-Preferred-Identity: <tel:+3299999999>"], False,
     "p-preferred-identity +3299999999"),
    ("foreign Remote-Party-ID", TRUNK, "+3250123401", ['Remote-Party-ID: "x" <sip:+3299999999@x>;party=calling'],
     False, "remote-party-id +3299999999"),
    ("another account's number", TRUNK, "+3228807241", [], False, "not a number of trunk"),
    ("anonymous with own PAI", TRUNK, "anonymous", ["Privacy: id", "P-Asserted-Identity: <sip:+3250123402@x>"],
     True, None),
    ("anonymous From only, own PAI", TRUNK, "anonymous", ["P-Asserted-Identity: <tel:+3250123402>"], True, None),
    ("anonymous without asserted identity", TRUNK, "anonymous", ["Privacy: id"], False,
     "anonymous call without an asserted identity"),
    ("anonymous with foreign PAI", TRUNK, "anonymous", ["Privacy: id", "P-Asserted-Identity: <tel:+3299999999>"],
     False, "+3299999999"),
    ("trunk presenting no number", TRUNK, "pbx", [], False, "the trunk presents no number"),
    ("hosted extension as From user", HQ, "201", [], True, None),
    ("hosted unknown SIP user", HQ, "999x", [], False, "no number and no SIP user"),
    ("hosted own number", HQ, "+3228807245", [], True, None),
    ("forwarded call: Diversion names an own number", TRUNK, "+3299999999",
     ["Diversion: <sip:+3250123405@x>;reason=unconditional"], True, None),
    ("forwarded call: History-Info names an own number", TRUNK, "+3299999999",
     ["History-Info: <sip:+3250123405@x>;index=1"], True, None),
    ("Diversion naming a foreign number does not help", TRUNK, "+3299999999",
     ["Diversion: <sip:+3299999998@x>;reason=unconditional"], False, "+3299999999"),
    ("forwarded call: the own number in the second Diversion", TRUNK, "+3299999999",
     ["Diversion: <sip:+3299999998@x>", "Diversion: <sip:+3250123405@x>"], True, None),
    ("forwarded call: a malformed Diversion, then an own one", TRUNK, "+3299999999",
     ["Diversion: <sip:+32 5@x", "Diversion: <sip:+3250123405@x>"], True, None),
    ("Privacy: id does not hide a foreign From number", TRUNK, "+3299999999",
     ["Privacy: id", "P-Asserted-Identity: <sip:+3250123402@x>"], False, "From +3299999999"),
    ("Privacy: id with an own From number and no PAI", TRUNK, "+3250123401", ["Privacy: id"], True, None),
    ("hosted, Privacy: header; id, own PAI", HQ, "lobby", ["Privacy: header; id", "P-Asserted-Identity: <tel:+3228807242>"],
     True, None),
    ("hosted, Privacy: user,ID, own PAI", HQ, "lobby", ["Privacy: user,ID", "P-Asserted-Identity: <tel:+3228807242>"],
     True, None),
    ("hosted, Privacy: none is no anonymity", HQ, "lobby", ["Privacy: none", "P-Asserted-Identity: <tel:+3228807242>"],
     False, "no number and no SIP user"),
    ("hosted, anonymous From in any case, own PAI", HQ, "Anonymous", ["P-Asserted-Identity: <tel:+3228807242>"],
     True, None),
    ("trunk PBX user with an own PAI", TRUNK, "pbx", ["P-Asserted-Identity: <sip:+3250123402@x>"], True, None),
    ("trunk PBX user with a PAI that is no number", TRUNK, "pbx", ["P-Asserted-Identity: <sip:pbx@x>"], False,
     "is not a number"),
    ("bare addr-spec PAI, foreign", TRUNK, "+3250123401", ["P-Asserted-Identity: sip:+3299999999@x"], False,
     "p-asserted-identity +3299999999"),
    ("bare addr-spec PAI with parameters, foreign", TRUNK, "+3250123401",
     ["P-Asserted-Identity: sip:+3299999999@x;user=phone"], False, "p-asserted-identity +3299999999"),
    ("bare tel: PAI, own", TRUNK, "pbx", ["P-Asserted-Identity: tel:+3250123402"], True, None),
    ("two PAIs, the second foreign", TRUNK, "+3250123401",
     ["P-Asserted-Identity: <sip:+3250123402@x>, <tel:+3299999999>"], False, "+3299999999"),
]


@pytest.mark.parametrize("case,source,from_user,headers,admitted,fragment", CALLER_ID, ids=[c[0] for c in CALLER_ID])
def test_caller_id(engine, case, source, from_user, headers, admitted, fragment) -> None:
    adm = admit(engine, source, from_user=from_user, headers=headers)
    decision = rules(adm).get("caller_id")
    if admitted:
        assert adm.reject is None and adm.target is not None
        assert decision is None or decision.verdict is Verdict.FLAG  # forwarded calls are flagged
    else:
        assert adm.reject is not None and adm.reject.status == 403
        assert decision is not None and decision.verdict is Verdict.REJECT and fragment in decision.reason
        warning = dict(adm.reject.headers)["warning"]
        assert warning.startswith('399 sipguard "caller ID not allowed') and fragment in warning


def test_forwarded_call_is_flagged_with_the_diverting_number(engine) -> None:
    adm = admit(engine, TRUNK, from_user="+3299999999", headers=["Diversion: <sip:+3250123405@x>"])
    decision = rules(adm)["caller_id"]
    assert decision.verdict is Verdict.FLAG and dict(decision.evidence)["diverted_from"] == "+3250123405"


def test_mismatch_rewritten_to_the_default_number_where_the_policy_says_so(engine) -> None:
    adm = admit(engine, REWRITER, from_user="+3299999999", headers=["P-Preferred-Identity: <tel:+3299999999>"])
    assert adm.reject is None
    decision = rules(adm)["caller_id"]
    assert decision.verdict is Verdict.REWRITE and dict(decision.evidence)["rewritten_to"] == "+3250999001"
    assert SetHeader("p-asserted-identity", "<sip:+3250999001@127.0.0.2;user=phone>") in adm.edits
    assert RemoveAll("p-preferred-identity") in adm.edits


def test_shadow_mode_records_and_lets_through(engine) -> None:
    adm = admit(engine, SHADOWED, from_user="+3299999999")
    assert adm.reject is None and adm.edits == ()
    decision = rules(adm)["caller_id"]
    assert decision.verdict is Verdict.REJECT and decision.mode is Mode.SHADOW


def test_inbound_calls_are_not_screened_and_go_to_deliver_to(engine) -> None:
    data = request(ruri="sip:+3250123410@127.0.0.1", from_user="+3299999999")
    adm = engine.admit(as_request(data), Peer("udp", "127.0.0.7", 5060), 0.0)
    assert adm.reject is None and adm.direction == "inbound" and adm.account == "trunk"
    assert adm.target == Peer("udp", "127.0.2.1", 5060)
    assert adm.claim is not None and adm.claim.account == "trunk"  # inbound calls hold a channel too


def test_inbound_national_called_number(engine) -> None:
    data = request(ruri="sip:050123410@127.0.0.1", from_user="+3299999999")
    adm = engine.admit(as_request(data), Peer("udp", "127.0.0.7", 5060), 0.0)
    assert adm.account == "trunk"


# ------------------------------------------------------------------ emergency (terms: BT 7, SIP trunking 4)
EMERGENCY = [
    # (case, source, From user, PAI, called, location (how), action, asserted number)
    ("site A presenting a site-B number", HQ, "+3292001100", None, "112", "verified source", "rewritten",
     "+3228807240"),
    ("site A presenting a site-A number: untouched", HQ, "+3228807243", None, "112", "verified source", "kept", None),
    ("site by device: door phone at the depot", HQ, "290", None, "112", "verified device", "rewritten", "+3292001100"),
    ("site by user: Michel at hq from the depot network", DEPOT, "201", None, "101", "verified user", "rewritten",
     "+3228807240"),
    ("site by source network: depot", DEPOT, "+3292001100", None, "100", "verified source", "kept", None),
    ("PAI decides over From", DEPOT, "+3292001100", "<sip:+3228807243@x>", "112", "verified source", "rewritten",
     "+3292001100"),
    ("roaming softphone with an own number: kept, unverified", ROAMING, "204", "<tel:+3228807244>", "112",
     "unverified unverified", "kept", None),
    ("roaming with a foreign number: the account default, unverified", ROAMING, "+3299999999", None, "112",
     "unverified unverified", "rewritten", "+3228807240"),
    ("trunk without site sources: unverified", TRUNK, "+3250123404", None, "112", "unverified unverified", "kept", None),
    ("emergency number dialled with separators", HQ, "+3292001100", None, "1-1-2", "verified source", "rewritten",
     "+3228807240"),
]


@pytest.mark.parametrize("case,source,from_user,pai,called,location,action,asserted", EMERGENCY,
                         ids=[e[0] for e in EMERGENCY])
def test_emergency(fresh, case, source, from_user, pai, called, location, action, asserted) -> None:
    headers = [f"P-Asserted-Identity: {pai}"] if pai else []
    adm = admit(fresh, source, from_user=from_user, ruri_user=called, headers=headers)
    assert adm.reject is None and adm.emergency
    decision = rules(adm)["emergency"]
    ev = dict(decision.evidence)
    location, how = location.split()
    assert (ev["location"], ev["located_by"], ev["caller_id_action"]) == (location, how, action)
    assert ev["called"] == called
    pai_edits = [e for e in adm.edits if isinstance(e, SetHeader) and e.key == "p-asserted-identity"]
    presented = pai.strip("<>").split(":")[1].split("@")[0] if pai else from_user
    assert ev["presented"] == fresh.plan.normalize(presented)
    if asserted:
        assert pai_edits and pai_edits[0].value.startswith(f"<sip:{asserted}@")
        assert decision.verdict is Verdict.REWRITE and ev["caller_id"] == asserted
    else:
        assert not pai_edits
        assert ev["caller_id"] == ev["presented"]  # the audit trail names the number that was sent
    if location == "unverified":
        assert "location unverified" in decision.reason and decision.logged


def test_emergency_is_never_blocked_by_caller_id(engine) -> None:
    adm = admit(engine, TRUNK, from_user="+3299999999", ruri_user="112")
    assert adm.reject is None and "caller_id" not in rules(adm)


def test_emergency_claim_is_marked(engine) -> None:
    adm = admit(engine, TRUNK, from_user="+3250123401", ruri_user="112")
    assert adm.claim is not None and adm.claim.emergency


def test_rewrite_from_where_configured() -> None:
    engine = Engine(load_text(POLICY.replace("  country: BE", "  country: BE\n  rewrite_from: true")))
    adm = admit(engine, HQ, from_user="+3292001100", ruri_user="112")
    from_edit = [e for e in adm.edits if isinstance(e, SetHeader) and e.key == "from"]
    assert from_edit and from_edit[0].value == "<sip:+3228807240@127.0.0.2>;tag=ft1"


# ------------------------------------------------------------------ fax (§4.5)
T38 = b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=image 4000 udptl t38\r\n"


def test_t38_offer_is_recognised_and_not_blocked(engine) -> None:
    data = request(ruri="sip:+3250555555@127.0.0.3", from_user="+3250123401", body=T38)
    adm = engine.admit(as_request(data), Peer("udp", TRUNK, 5060), 0.0)
    assert adm.reject is None
    assert rules(adm)["fax"].verdict is Verdict.FLAG


def test_t38_in_a_reinvite_is_recognised(engine) -> None:
    data = request(ruri="sip:x@127.0.0.3", to_tag="t", body=T38)
    assert [d.rule for d in engine.in_dialog(as_request(data), "trunk")] == ["fax"]
    assert engine.in_dialog(as_request(request(to_tag="t", body=b"v=0\r\n")), "trunk") == ()


def test_non_invite_requests_carry_no_claim(engine) -> None:
    data = request("MESSAGE", ruri="sip:+3250555555@127.0.0.3", from_user="+3299999999")
    adm = engine.admit(as_request(data), Peer("udp", TRUNK, 5060), 0.0)
    assert adm.claim is None and adm.reject is None


# ------------------------------------------------------------------ display names read as numbers (terms: general 4)
DISPLAY = [
    # (case, From display name, extra headers, admitted?, reason fragment)
    ("display name of a foreign number", '"+3299999999"', [], False, "From display name +3299999999 is not"),
    ("display name of a foreign number, national format", '"02 999 99 99"', [], False, "From display name +3229999999"),
    ("display name of an own number", '"+32 50 12 34 01"', [], True, None),
    ("display name that is a name", '"Reception desk"', [], True, None),
    ("display name that is an extension", "201", [], True, None),
    ("P-Asserted-Identity display name of a foreign number", None,
     ['P-Asserted-Identity: "+3299999999" <sip:+3250123402@x>'], False, "p-asserted-identity display name +3299999999"),
    ("P-Asserted-Identity display name of an own number", None,
     ['P-Asserted-Identity: "+3250123402" <sip:+3250123402@x>'], True, None),
    ("a display name without quotes", "+3299999999", [], False, "From display name +3299999999"),
]


def test_a_display_name_saying_anonymous_makes_no_call_anonymous(fresh) -> None:
    data = request(ruri="sip:+3250555555@127.0.0.3", from_user="+3299999999", from_display='"Anonymous"',
                   extra=["P-Asserted-Identity: <sip:+3250123402@x>"])
    adm = fresh.admit(as_request(data), Peer("udp", TRUNK, 5060), 0.0)
    assert adm.reject is not None and "From +3299999999 is not a number of trunk" in rules(adm)["caller_id"].reason


@pytest.mark.parametrize("case,display,headers,admitted,fragment", DISPLAY, ids=[d[0] for d in DISPLAY])
def test_display_names(fresh, case, display, headers, admitted, fragment) -> None:
    data = request(ruri="sip:+3250555555@127.0.0.3", from_user="+3250123401", from_display=display, extra=headers)
    adm = fresh.admit(as_request(data), Peer("udp", TRUNK, 5060), 0.0)
    if admitted:
        assert adm.reject is None, adm.decisions
    else:
        assert adm.reject is not None and adm.reject.status == 403
        assert fragment in rules(adm)["caller_id"].reason


def test_a_foreign_display_name_is_removed_where_the_policy_rewrites(fresh) -> None:
    data = request(ruri="sip:+3250555555@127.0.0.3", from_user="+3250999002", from_display='"+3299999999"')
    adm = fresh.admit(as_request(data), Peer("udp", REWRITER, 5060), 0.0)
    assert adm.reject is None and rules(adm)["caller_id"].verdict is Verdict.REWRITE
    assert SetHeader("from", "<sip:+3250999002@127.0.0.2>;tag=ft1") in adm.edits
    assert SetHeader("p-asserted-identity", "<sip:+3250999001@127.0.0.2;user=phone>") in adm.edits


# ------------------------------------------------------------------ routing: every route is ours
def test_a_preloaded_route_to_a_foreign_address_is_refused(fresh) -> None:
    data = as_request(request(from_user="+3250123401"))
    adm = fresh.admit(data, Peer("udp", TRUNK, 5060), 0.0, ("<sip:198.51.100.66:5060;lr>",))
    assert adm.reject is not None and adm.reject.status == 403 and adm.target is None and adm.claim is None
    decision = rules(adm)["routing"]
    assert decision.verdict is Verdict.REJECT and "198.51.100.66" in decision.reason and decision.logged


@pytest.mark.parametrize("route", ["<sip:127.0.0.7:5060;lr>", "<sip:127.0.0.7;lr>", "<sip:+3250555555@127.0.0.7;lr>"])
def test_a_preloaded_route_naming_the_accounts_upstream_is_kept(fresh, route) -> None:
    adm = fresh.admit(as_request(request(from_user="+3250123401")), Peer("udp", TRUNK, 5060), 0.0, (route,))
    assert adm.reject is None and adm.target == Peer("udp", "127.0.0.7", 5060) and not adm.drop_routes


@pytest.mark.parametrize("route", ["<sip:127.0.0.7:5070;lr>", "<sip:127.0.0.3:5060;lr>", "not a route",
                                   "<sips:127.0.0.7;lr>"])
def test_routes_naming_another_port_upstream_or_transport_are_refused(fresh, route) -> None:
    adm = fresh.admit(as_request(request(from_user="+3250123401")), Peer("udp", TRUNK, 5060), 0.0,
                       ("<sip:127.0.0.7:5060;lr>", route))
    assert adm.reject is not None and adm.reject.status == 403, route


def test_an_emergency_call_goes_to_the_upstream_whatever_its_routes_say(fresh) -> None:
    data = as_request(request(ruri="sip:112@127.0.0.1", from_user="+3250123401"))
    adm = fresh.admit(data, Peer("udp", TRUNK, 5060), 0.0, ("<sip:198.51.100.66:5060;lr>",))
    assert adm.reject is None and adm.emergency and adm.drop_routes
    assert adm.target == Peer("udp", "127.0.0.7", 5060)


@pytest.mark.parametrize("ruri", ["sip:+3299999999@198.51.100.66:5060", "sip:198.51.100.66", "sip:+3228807241@127.0.0.1"])
def test_inbound_requests_go_only_to_deliver_to_of_the_number(fresh, ruri) -> None:
    # an unknown number (with an IP in the Request-URI), or a number of an account without deliver_to: 404
    adm = fresh.admit(as_request(request(ruri=ruri, from_user="+3299999999")), Peer("udp", "127.0.0.7", 5060), 0.0)
    assert adm.reject is not None and adm.reject.status == 404 and adm.target is None
    decision = rules(adm)["attribution"]
    assert decision.verdict is Verdict.REJECT and decision.status == 404 and decision.logged


def test_an_inbound_route_may_name_only_deliver_to(fresh) -> None:
    data = as_request(request(ruri="sip:+3250123410@127.0.0.1", from_user="+33123456789"))
    source = Peer("udp", "127.0.0.7", 5060)
    assert fresh.admit(data, source, 0.0, ("<sip:127.0.2.1;lr>",)).reject is None
    assert fresh.admit(data, source, 0.0, ("<sip:198.51.100.66;lr>",)).reject.status == 403


# ------------------------------------------------------------------ inbound caller ID (Royal Decree of 12 May 2024)
INBOUND = [
    # (case, upstream, From user, From display, extra headers, refused?)
    ("foreign number from abroad", "127.0.0.8", "+33123456789", None, [], False),
    ("Belgian number from abroad", "127.0.0.8", "+3225551234", None, [], True),
    ("Belgian number from abroad, national format", "127.0.0.8", "025551234", None, [], True),
    ("Belgian number from abroad, 00 format", "127.0.0.8", "003225551234", None, [], True),
    ("Belgian number from abroad, E.164 without +", "127.0.0.8", "3225551234", None, [], True),
    ("Belgian number in PAI only", "127.0.0.8", "+33123456789", None, ["P-Asserted-Identity: <tel:+3225551234>"], True),
    ("Belgian number in the display name", "127.0.0.8", "+33123456789", '"+32 2 555 12 34"', [], True),
    ("registered bona fide number", "127.0.0.8", "+3225550042", None, [], False),
    ("Belgian number from a national upstream", "127.0.0.7", "+3225551234", None, [], False),
    ("anonymous from abroad", "127.0.0.8", "anonymous", None, ["Privacy: id"], False),
]


@pytest.mark.parametrize("case,upstream,from_user,display,headers,refused", INBOUND, ids=[i[0] for i in INBOUND])
def test_inbound_caller_id(fresh, case, upstream, from_user, display, headers, refused) -> None:
    data = request(ruri="sip:+3250123410@127.0.0.1", from_user=from_user, from_display=display, extra=headers)
    adm = fresh.admit(as_request(data), Peer("udp", upstream, 5060), 0.0)
    decision = rules(adm).get("inbound_caller_id")
    if refused:
        assert adm.reject is not None and adm.reject.status == 403 and adm.claim is None
        assert decision.verdict is Verdict.REJECT and decision.mode is Mode.ENFORCE and "+3225551234" in decision.reason
        assert "not allowed from abroad" in dict(adm.reject.headers)["warning"]
    else:
        assert adm.reject is None and adm.target == Peer("udp", "127.0.2.1", 5060) and decision is None


@pytest.mark.parametrize("mode", ["shadow", "off"])
def test_inbound_caller_id_in_shadow_and_off(mode) -> None:
    engine = Engine(load_text(POLICY.replace("inbound_caller_id: {allow:", f"inbound_caller_id: {{mode: {mode}, allow:")
                              .replace("reject: {", "reject: {")))
    data = request(ruri="sip:+3250123410@127.0.0.1", from_user="+3225551234")
    adm = engine.admit(as_request(data), Peer("udp", "127.0.0.8", 5060), 0.0)
    assert adm.reject is None and adm.target is not None
    decision = rules(adm).get("inbound_caller_id")
    if mode == "shadow":
        assert decision.verdict is Verdict.REJECT and decision.mode is Mode.SHADOW and decision.logged
    else:
        assert decision is None


def test_inbound_spoofing_status_is_policy_data() -> None:
    engine = Engine(load_text(POLICY.replace("  country: BE", "  country: BE\n  reject: {inbound_spoofing: 608}")))
    adm = engine.admit(as_request(request(ruri="sip:+3250123410@127.0.0.1", from_user="+3225551234")),
                       Peer("udp", "127.0.0.8", 5060), 0.0)
    assert adm.reject.status == 608 and rules(adm)["inbound_caller_id"].status == 608


# ------------------------------------------------------------------ emergency: every form it is dialled in
@pytest.mark.parametrize("ruri,emergency", [
    ("sip:112@127.0.0.1", True), ("sip:112@127.0.0.1;user=phone", True), ("tel:112", True),
    ("sip:+32112@127.0.0.1", True), ("sip:0032112@127.0.0.1", True), ("tel:+32112", True),
    ("sip:+32-112@127.0.0.1", True), ("urn:service:sos", True), ("urn:service:sos.police", True),
    ("URN:Service:SOS.fire", True), ("sip:101@127.0.0.1", True),
    ("urn:service:sosx", False), ("urn:service:counseling", False), ("sip:+3211200@127.0.0.1", False),
    ("sip:1120@127.0.0.1", False), ("sip:+33112@127.0.0.1", False), ("sip:sos@127.0.0.1", False),
])
def test_emergency_forms(fresh, ruri, emergency) -> None:
    data = as_request(request(ruri=ruri, from_user="+3250123401"))
    assert fresh.is_emergency(data) is emergency
    adm = fresh.admit(data, Peer("udp", TRUNK, 5060), 0.0)
    assert adm.emergency is emergency and (adm.claim.emergency if adm.claim else False) is emergency
    if emergency:
        decision = rules(adm)["emergency"]
        assert adm.reject is None and decision.verdict in (Verdict.ALLOW, Verdict.FLAG, Verdict.REWRITE)
        called = dict(decision.evidence)["called"]
        assert called == ruri if ruri.lower().startswith("urn:") else called and called in ruri


def test_an_emergency_call_from_an_unknown_source_is_refused_loudly(fresh) -> None:
    adm = fresh.admit(as_request(request(ruri="urn:service:sos", from_user="+3250123401")),
                       Peer("udp", "198.51.100.9", 5060), 0.0)
    assert adm.reject.status == 403
    refusal = [d for d in adm.decisions if d.rule == "emergency"]
    assert len(refusal) == 1 and refusal[0].verdict is Verdict.REJECT
    assert dict(refusal[0].evidence)["refused_for"] == "unknown_source"


def test_the_core_reports_an_emergency_call_it_refuses(fresh) -> None:
    out = fresh.refused("INVITE", "tel:+32112", Peer("udp", HQ, 5060), 400, "bad CSeq", "malformed")
    assert [(d.rule, dict(d.evidence)["refused_for"]) for d in out] == [("emergency", "malformed")]
    assert fresh.refused("INVITE", "sip:+3250@x", Peer("udp", HQ, 5060), 400, "bad CSeq", "malformed") == ()
    routed = fresh.refused("BYE", "sip:x@y", Peer("udp", HQ, 5060), 481, "no dialog", "in_dialog")
    assert [(d.rule, d.status) for d in routed] == [("routing", 481)]


def test_emergency_rule_in_shadow_records_but_keeps_the_presented_caller_id() -> None:
    shadow = Engine(load_text(POLICY.replace("      - {name: Lotte, sip_users: [\"204\"]}",
                                             "      - {name: Lotte, sip_users: [\"204\"]}\n    rules: {emergency: shadow}")))
    assert shadow.views["acme"].modes["emergency"].value == "shadow"
    adm = admit(shadow, HQ, from_user="+3292001100", ruri_user="112")  # enforce would rewrite (the table above)
    decision = rules(adm)["emergency"]
    assert adm.reject is None and adm.edits == ()
    assert decision.verdict is Verdict.REWRITE and decision.mode is Mode.SHADOW


SAME_BUILDING = """
service:
  listen: ["udp:127.0.0.1:5060"]
  upstreams: {pbx: "sip:127.0.0.3:5060", carrier: "sip:127.0.0.7:5060"}
accounts:
  first:
    kind: hosted
    match: {sources: ["127.0.5.0/24"]}
    upstream: pbx
    users: [{name: A, sip_users: ["201"]}]
    sites:
      hq: {address: "Rue de la Loi 16, 1000 Brussels", sources: ["127.0.5.0/24"], emergency_caller_id: "+3225550100"}
      floor3: {address: "Rue de la Loi 16, 1000 Brussels (3rd floor)", sources: ["127.0.5.128/25"],
               emergency_caller_id: "+3225550150"}
    numbers:
      - {range: "+3225550100-+3225550149", site: hq}
      - {range: "+3225550150-+3225550199", site: floor3}
  second:
    kind: hosted
    match: {sources: ["127.0.6.0/24"]}
    upstream: pbx
    deliver_to: "sip:127.0.6.1:5060"
    users: [{name: B, sip_users: ["301"]}]
    sites: {hq: {address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3225550200"}}
    numbers: [{range: "+3225550200-+3225550299", site: hq}]
"""


def test_another_accounts_number_at_the_same_address_is_still_not_the_callers() -> None:
    engine = Engine(load_text(SAME_BUILDING))
    # from the first account's head office, presenting the second account's number (a site of the same name
    # and the same address): rewritten to the caller's own emergency caller ID, never kept
    adm = admit(engine, "127.0.5.10", from_user="+3225550250", ruri_user="112")
    ev = dict(rules(adm)["emergency"].evidence)
    assert (ev["site"], ev["caller_id"], ev["caller_id_action"]) == ("hq", "+3225550100", "rewritten")


def test_the_most_specific_site_network_locates_the_caller() -> None:
    engine = Engine(load_text(SAME_BUILDING))
    for source, site, ecid in [("127.0.5.200", "floor3", "+3225550150"), ("127.0.5.20", "hq", "+3225550100")]:
        adm = admit(engine, source, from_user="+3225550250", ruri_user="112")
        ev = dict(rules(adm)["emergency"].evidence)
        assert (ev["site"], ev["located_by"], ev["caller_id"]) == (site, "source", ecid), source


@pytest.mark.parametrize("ruri", ["tel:+3225550210;phone-context=+32", "tel:+3225550210;npdi;rn=+3225550000",
                                  "sip:+3225550210;npdi@127.0.0.1;user=phone",
                                  "sip:+3225550210;npdi;rn=+3225550000@127.0.0.1;user=phone",
                                  "sip:025550210@127.0.0.1", "tel:0032-2-555-02-10"])
def test_inbound_called_numbers_in_the_forms_carriers_send(ruri) -> None:
    engine = Engine(load_text(SAME_BUILDING))
    adm = engine.admit(as_request(request(ruri=ruri, from_user="+33123456789")), Peer("udp", "127.0.0.7", 5060), 0.0)
    assert adm.reject is None and adm.account == "second" and adm.target == Peer("udp", "127.0.6.1", 5060), ruri


def test_a_rewrite_keeps_an_own_display_name() -> None:
    engine = Engine(load_text(POLICY))
    data = request(ruri="sip:+3250555555@127.0.0.3", from_user="+3250999002", from_display='"+3250999003"',
                   extra=["P-Asserted-Identity: <tel:+3299999999>"])
    adm = engine.admit(as_request(data), Peer("udp", REWRITER, 5060), 0.0)
    assert adm.reject is None and rules(adm)["caller_id"].verdict is Verdict.REWRITE
    assert not [e for e in adm.edits if isinstance(e, SetHeader) and e.key == "from"]
