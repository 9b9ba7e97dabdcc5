"""Phone numbers: normalisation to E.164 and the account's number blocks.

``NumberPlan.normalize`` reads a number as a caller or callee wrote it (E.164,
00-international, national format of the policy's country, visual separators,
a sip:/tel: URI) and returns E.164 or None when it is not a possible number
(an extension like "201", "anonymous").  phonenumbers costs ~15 µs a parse, so
results are memoised in a bounded table.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import phonenumbers

from ..sip.grammar import ADDR_SPEC_RE, NAME_ADDR_RE
from .model import NumberBlock

__all__ = ["NumberPlan", "NumberIndex", "uri_user", "identity_of"]

_MEMO_MAX = 65536
_VISUAL = str.maketrans("", "", " -.()")


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

    Memoised: the same From recurs on every call of a caller.
    """
    hit = _IDENTITY_MEMO.get(header_value)
    if hit is not None:
        return hit
    if "<" in header_value:
        m = NAME_ADDR_RE.fullmatch(header_value)
        result = (m.group(1).strip() or None, uri_user(m.group(2))) if m else (None, None)
    else:
        m = ADDR_SPEC_RE.fullmatch(header_value)
        result = (None, uri_user(m.group(1))) if m else (None, None)
    if len(_IDENTITY_MEMO) >= _MEMO_MAX:
        _IDENTITY_MEMO.clear()
    _IDENTITY_MEMO[header_value] = result
    return result


_IDENTITY_MEMO: dict[str, tuple[str | None, str | None]] = {}


class NumberPlan:
    """Normalises numbers for one country; memoised."""

    def __init__(self, country: str) -> None:
        self.country = country.upper()
        self._memo: dict[str, str | None] = {}

    def normalize(self, text: str | None) -> str | None:
        if not text:
            return None
        hit = self._memo.get(text, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        result = self._normalize(text)
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[text] = result
        return result

    def _normalize(self, text: str) -> str | None:
        raw = text.translate(_VISUAL)
        if not raw or not (raw[0] == "+" or raw[0].isdigit()) or not raw[1:].isdigit():
            return None
        if raw.startswith("+"):
            return raw if 4 <= len(raw) <= 16 else None
        try:
            number = phonenumbers.parse(raw, self.country)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_possible_number(number):
            return None
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def dialled(self, text: str | None) -> str | None:
        """The digits as dialled (no separators, no URI parameters), for emergency numbers."""
        if not text:
            return None
        raw = text.translate(_VISUAL)
        return raw if raw.lstrip("+").isdigit() else None


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
