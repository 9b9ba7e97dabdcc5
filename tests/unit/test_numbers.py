"""Numbers as callers and PBXs write them: URI users, identities, E.164 normalisation, number blocks.

Each row is an input a real header carries; the expected value is what screening, emergency routing and
inbound attribution rely on (mutation testing found these edges untested: docs/mutation.md)."""

from __future__ import annotations

import pytest

from sipguard.policy.model import NumberBlock
from sipguard.policy.numbers import NumberIndex, NumberPlan, display_number, identity_of, uri_user

BE = NumberPlan("be")


@pytest.mark.parametrize("uri,user", [
    ("sip:201@pbx.example", "201"), ("sips:201@pbx.example", "201"), ("SIPS:201@pbx.example", "201"),
    ("SIP:+3225551234@x;user=phone", "+3225551234"), ("sip:201:secret@pbx.example", "201"),
    ("sip:201:se:cret@pbx.example", "201"),
    ("sip:+3225551234;npdi;rn=+3225550000@x;user=phone", "+3225551234"),
    ("tel:+3225551234", "+3225551234"), ("TEL:+3225551234;phone-context=+32", "+3225551234"),
    ("tel:112;x=1;y=2", "112"), ("sip:pbx.example", None), ("sip:a@b@c", "a@b"), ("urn:service:sos", None),
    ("http://x", None), ("", None),
])
def test_uri_user(uri: str, user: str | None) -> None:
    assert uri_user(uri) == user


@pytest.mark.parametrize("value,identity", [
    ('"Alice" <sip:201@x>;tag=1', ('"Alice"', "201")), ("<sip:201@x>;tag=1", (None, "201")),
    ("<sip:201@x>", (None, "201")), ("sip:201@x;tag=1", (None, "201")), ("sip:201@x", (None, "201")),
    ("tel:+3225551234", (None, "+3225551234")), ('Bob <tel:+3225551234;npdi>', ("Bob", "+3225551234")),
    ('"a > b" <sip:202@x>;tag=2', ('"a > b"', "202")), ("<sip:201@x;user=phone>;p=<x>", (None, "201")),
    ("not an identity", (None, None)), ("<broken", (None, None)), ("", (None, None)),
])
def test_identity_of(value: str, identity: tuple[str | None, str | None]) -> None:
    assert identity_of(value) == identity


@pytest.mark.parametrize("text,e164", [
    ("+3225551234", "+3225551234"), ("+32 2 555 12 34", "+3225551234"), ("(02) 555-12.34", "+3225551234"),
    ("025551234", "+3225551234"), ("003225551234", "+3225551234"), ("3225551234", "+3225551234"),
    ("0475123456", "+32475123456"), ("+123", "+123"), ("+12", None), ("+123456789012345", "+123456789012345"),
    ("+1234567890123456", None), ("201", None), ("anonymous", None), ("+32a5551234", None), ("++3225551234", None),
    ("9+3225551234", None), ("+", None), ("", None), (None, None), ("0", None), ("x3225551234", None),
    ("#3225551234", None), ("*3225551234", None),
])
def test_normalize(text: str | None, e164: str | None) -> None:
    assert BE.normalize(text) == e164


def test_normalize_reads_national_numbers_of_the_plans_country() -> None:
    assert NumberPlan("NL").normalize("0201234567") == "+31201234567"
    assert NumberPlan("nl").normalize("0201234567") == "+31201234567"


@pytest.mark.parametrize("display,e164", [
    ('"+32 2 555 12 34"', "+3225551234"), ("+3225551234", "+3225551234"), ('"025551234"', "+3225551234"),
    ('"Reception"', None), ('" 201 "', None), ("", None), (None, None),
])
def test_display_number(display: str | None, e164: str | None) -> None:
    assert display_number(display, BE) == e164


def test_the_index_finds_a_number_in_its_block_whatever_order_the_blocks_came_in() -> None:
    blocks = [NumberBlock("+3250123400", "+3250123499", "b"), NumberBlock("+3228807240", "+3228807249", "a"),
              NumberBlock("+3292001100", "+3292001100", "c"), NumberBlock("+32475000000", "+32475000099", "d")]
    index = NumberIndex((block, block.site) for block in blocks)
    for number, site in [("+3228807240", "a"), ("+3228807249", "a"), ("+3250123400", "b"), ("+3250123499", "b"),
                         ("+3292001100", "c"), ("+32475000050", "d")]:
        found = index.find(number)
        assert found is not None and found[1] == site, number
    for number in ("+3228807239", "+3228807250", "+3250123500", "+3292001101", "+3228807", "", None, "+1"):
        assert index.find(number) is None, number
