"""Phone numbers: normalisation to E.164 and the account's number blocks.

``NumberPlan.normalize`` reads a number as a caller or callee wrote it (E.164,
00-international, national format of the policy's country, visual separators,
a sip:/tel: URI) and returns E.164 or None when it is not a possible number
(an extension like "201", "anonymous").  phonenumbers costs ~15 µs a parse, so
results are memoised (a bounded LRU).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final

import phonenumbers

from ..sip.grammar import ADDR_SPEC_RE, NAME_ADDR_RE, is_digits
from ..sip.memo import MEMO_SIZE, Memo
from .model import NumberBlock

__all__ = ["NumberPlan", "NumberIndex", "VISUAL", "without_separators", "uri_user", "identity_of", "display_number"]

VISUAL: Final = str.maketrans("", "", " -.()")  # the separators people write numbers with


def without_separators(text: str) -> str:
    """The text without the VISUAL separators.  Most numbers have none: digits, perhaps after a '+', are
    returned as they are (``str.translate`` with a table is a generic call, about 5,000 instructions)."""
    if is_digits(text) or (text[:1] == "+" and is_digits(text[1:])):
        return text
    return text.translate(VISUAL)


def uri_user(uri: str) -> str | None:
    """The user part of a sip:/sips: URI, or the number of a tel: URI (without parameters)."""
    lower = uri[:5].lower()
    if lower.startswith("tel:"):
        return uri[4:].split(";", 1)[0]
    if lower.startswith("sip:") or lower.startswith("sips:"):
        rest = uri.split(":", 1)[1]
        if "@" not in rest:
            return None
        return rest.rsplit("@", 1)[0].split(";", 1)[0].split(":", 1)[0]
    return None


def identity_of(header_value: str) -> tuple[str | None, str | None]:
    """(display name, URI user) of a From / P-Asserted-Identity / Remote-Party-ID value.

    The header parameters (a From's tag differs on every call) are cut off before the lookup,
    so the memo serves every call of a caller.
    """
    if "<" in header_value:
        end = header_value.rfind(">")
        if end >= 0:
            return _identity.call(header_value[: end + 1])
    else:
        semi = header_value.find(";")
        if semi >= 0:
            return _identity.call(header_value[:semi])
    return _identity.call(header_value)


def _identity_fn(header_value: str) -> tuple[str | None, str | None]:
    if "<" in header_value:
        m = NAME_ADDR_RE.fullmatch(header_value)
        return (m.group(1).strip() or None, uri_user(m.group(2))) if m else (None, None)
    m = ADDR_SPEC_RE.fullmatch(header_value)
    return (None, uri_user(m.group(1))) if m else (None, None)


_identity: Final = Memo(_identity_fn)


def display_number(display: str | None, plan: NumberPlan) -> str | None:
    """The E.164 number a display name reads as (``"+32 2 880 72 40"``, ``"028807240"``): a callee's phone
    shows it as the caller's number, so it is screened like one.  None for a name ("Reception", "201")."""
    if not display:
        return None
    return plan.normalize(display.strip().strip('"').strip())


class NumberPlan:
    """Normalises numbers for one country."""

    def __init__(self, country: str) -> None:
        self.country = country.upper()

    def normalize(self, text: str | None) -> str | None:
        return _normalize.call((text, self.country)) if text else None


def _normalize_fn(text_country: tuple[str, str]) -> str | None:
    """(dialled text, ISO country) -> E.164, or None; one argument, the memo's key."""
    text, country = text_country
    raw = without_separators(text)
    if not raw or not (raw[0] == "+" or raw[0].isdigit()) or not raw[1:].isdigit():
        return None
    if raw.startswith("+"):
        return raw if 4 <= len(raw) <= 16 else None
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_normalize: Final = Memo(_normalize_fn, 4 * MEMO_SIZE)


class NumberIndex:
    """Which block (and so which account and site) holds an E.164 number: bisect per length."""

    def __init__(self, blocks: Iterable[tuple[NumberBlock, object]]) -> None:
        by_len: dict[int, list[tuple[str, str, NumberBlock, object]]] = {}
        for block, owner in blocks:
            by_len.setdefault(len(block.first), []).append((block.first, block.last, block, owner))
        self._firsts: dict[int, list[str]] = {}
        self._rows: dict[int, list[tuple[str, str, NumberBlock, object]]] = {}
        for length, rows in by_len.items():
            rows.sort(key=lambda r: r[0])
            self._rows[length] = rows
            self._firsts[length] = [r[0] for r in rows]

    def find(self, e164: str | None) -> tuple[NumberBlock, object] | None:
        if not e164:
            return None
        firsts = self._firsts.get(len(e164))
        if not firsts:
            return None
        i = bisect.bisect_right(firsts, e164) - 1
        if i < 0:
            return None
        first, last, block, owner = self._rows[len(e164)][i]
        if first <= e164 <= last:
            return block, owner
        return None
