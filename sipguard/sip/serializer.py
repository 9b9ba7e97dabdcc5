"""Message + edits -> bytes (Kamailio's lumps, in spirit).

The received header lines are re-emitted as received unless an edit touches
them; edits are values, applied in order when the message is serialized.
Content-Length is always made right for the body sent: the parser keeps it
out of ``headers`` (it is framing), and the serializer writes it last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"
from .grammar import CANONICAL_NAMES
from .message import Message, Request

__all__ = [
    "Edit",
    "Prepend",
    "Append",
    "ReplaceFirst",
    "RemoveFirst",
    "SetHeader",
    "RemoveAll",
    "SetRequestUri",
    "serialize",
    "header_name",
]


def header_name(key: str) -> str:
    """How we spell a header we write, from its lower-case key."""
    name = CANONICAL_NAMES.get(key)
    if name is not None:
        return name
    return "-".join(part.capitalize() for part in key.split("-"))


# The edits: immutable values with a compiled __init__ (see sip/actions.py), on two shapes.
@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class _Key:
    key: Final[str]

    def __init__(self, key: str) -> None:
        self.key = key


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class _KeyValue:
    key: Final[str]
    value: Final[str]

    def __init__(self, key: str, value: str) -> None:
        self.key = key
        self.value = value


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Prepend(_KeyValue):
    """Insert a field before the first field of the same key (or on top)."""


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Append(_KeyValue):
    """Add a field after the last header."""


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class ReplaceFirst(_KeyValue):
    """Replace the value of the first field with this key."""


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class RemoveFirst(_Key):
    """Remove the first field with this key (a popped Route, our Via)."""


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class SetHeader(_KeyValue):
    """Make this key hold exactly this one value (replace all, or add)."""


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class RemoveAll(_Key):
    """Remove every field with this key."""


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)  # compiled __init__: see sip/actions.py
class SetRequestUri:
    uri: Final[str]

    def __init__(self, uri: str) -> None:
        self.uri = uri


def _first(keys: list[str], key: str) -> int:
    """The index of the first field with this key, or -1."""
    for i in range(len(keys)):
        if keys[i] == key:
            return i
    return -1


Edit = Prepend | Append | ReplaceFirst | RemoveFirst | SetHeader | RemoveAll | SetRequestUri


def serialize(message: Message, edits: tuple[Edit, ...] | list[Edit] = ()) -> bytes:
    """Return the bytes of ``message`` with ``edits`` applied in order.

    A field kept unchanged is written as received (``raw_lines``); an edited or
    added one as ``Name: value``.  Raises ValueError for SetRequestUri on a response.
    """
    # two parallel lists, the key and the line of each field (no tuple per field: they are made per message)
    keys: list[str] = []
    lines: list[str] = []
    headers = message.headers
    raws = message.raw_lines
    for i in range(len(headers)):
        field = headers[i]
        raw = raws[i]
        keys.append(field[0])
        lines.append(raw if raw is not None else f"{field[1]}: {field[2]}")
    if isinstance(message, Request):
        start = f"{message.method} {message.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {message.status} {message.reason}"
    for edit in edits:
        if isinstance(edit, Prepend):
            at = _first(keys, edit.key)
            keys.insert(0 if at < 0 else at, edit.key)
            lines.insert(0 if at < 0 else at, f"{header_name(edit.key)}: {edit.value}")
        elif isinstance(edit, Append):
            keys.append(edit.key)
            lines.append(f"{header_name(edit.key)}: {edit.value}")
        elif isinstance(edit, ReplaceFirst):
            at = _first(keys, edit.key)
            if at >= 0:
                lines[at] = f"{header_name(edit.key)}: {edit.value}"
        elif isinstance(edit, RemoveFirst):
            at = _first(keys, edit.key)
            if at >= 0:
                del keys[at]
                del lines[at]
        elif isinstance(edit, SetHeader):
            line = f"{header_name(edit.key)}: {edit.value}"
            at = _first(keys, edit.key)
            if at < 0:
                keys.append(edit.key)
                lines.append(line)
            else:
                lines[at] = line
                for i in range(len(keys) - 1, at, -1):
                    if keys[i] == edit.key:
                        del keys[i]
                        del lines[i]
        elif isinstance(edit, RemoveAll):
            for i in range(len(keys) - 1, -1, -1):
                if keys[i] == edit.key:
                    del keys[i]
                    del lines[i]
        elif isinstance(edit, SetRequestUri):
            if not isinstance(message, Request):
                raise ValueError("SetRequestUri on a response")
            start = f"{message.method} {edit.uri} SIP/2.0"
        else:  # pragma: no cover - exhaustive
            raise TypeError(f"unknown edit {edit!r}")
    lines.insert(0, start)
    lines.append(f"Content-Length: {len(message.body)}")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + message.body
