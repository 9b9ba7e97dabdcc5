"""Message + edits -> bytes (Kamailio's lumps, in spirit).

The received header lines are re-emitted as received unless an edit touches
them; edits are values, applied in order when the message is serialized.
Content-Length is always made right for the body sent: the parser keeps it
out of ``headers`` (it is framing), and the serializer writes it last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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
@dataclass(slots=True, init=False, unsafe_hash=True)
class _Key:
    key: Final[str]

    def __init__(self, key: str) -> None:
        self.key = key


@dataclass(slots=True, init=False, unsafe_hash=True)
class _KeyValue:
    key: Final[str]
    value: Final[str]

    def __init__(self, key: str, value: str) -> None:
        self.key = key
        self.value = value


@dataclass(slots=True, init=False, unsafe_hash=True)
class Prepend(_KeyValue):
    """Insert a field before the first field of the same key (or on top)."""


@dataclass(slots=True, init=False, unsafe_hash=True)
class Append(_KeyValue):
    """Add a field after the last header."""


@dataclass(slots=True, init=False, unsafe_hash=True)
class ReplaceFirst(_KeyValue):
    """Replace the value of the first field with this key."""


@dataclass(slots=True, init=False, unsafe_hash=True)
class RemoveFirst(_Key):
    """Remove the first field with this key (a popped Route, our Via)."""


@dataclass(slots=True, init=False, unsafe_hash=True)
class SetHeader(_KeyValue):
    """Make this key hold exactly this one value (replace all, or add)."""


@dataclass(slots=True, init=False, unsafe_hash=True)
class RemoveAll(_Key):
    """Remove every field with this key."""


@dataclass(slots=True, init=False, unsafe_hash=True)  # compiled __init__: see sip/actions.py
class SetRequestUri:
    uri: Final[str]

    def __init__(self, uri: str) -> None:
        self.uri = uri


Edit = Prepend | Append | ReplaceFirst | RemoveFirst | SetHeader | RemoveAll | SetRequestUri


def serialize(message: Message, edits: tuple[Edit, ...] | list[Edit] = ()) -> bytes:
    """Return the bytes of ``message`` with ``edits`` applied in order.

    A field kept unchanged is written as received (``raw_lines``); an edited or
    added one as ``Name: value``.  Raises ValueError for SetRequestUri on a response.
    """
    # fields: [key, line]
    fields: list[tuple[str, str]] = []
    for (key, name, value), raw in zip(message.headers, message.raw_lines):
        fields.append((key, raw if raw is not None else f"{name}: {value}"))
    if isinstance(message, Request):
        start = f"{message.method} {message.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {message.status} {message.reason}"
    for edit in edits:
        if isinstance(edit, Prepend):
            line = f"{header_name(edit.key)}: {edit.value}"
            for i, (key, _line) in enumerate(fields):
                if key == edit.key:
                    fields.insert(i, (edit.key, line))
                    break
            else:
                fields.insert(0, (edit.key, line))
        elif isinstance(edit, Append):
            fields.append((edit.key, f"{header_name(edit.key)}: {edit.value}"))
        elif isinstance(edit, ReplaceFirst):
            for i, (key, _line) in enumerate(fields):
                if key == edit.key:
                    fields[i] = (key, f"{header_name(key)}: {edit.value}")
                    break
        elif isinstance(edit, RemoveFirst):
            for i, (key, _line) in enumerate(fields):
                if key == edit.key:
                    del fields[i]
                    break
        elif isinstance(edit, SetHeader):
            line = f"{header_name(edit.key)}: {edit.value}"
            idx = [i for i, (key, _l) in enumerate(fields) if key == edit.key]
            if idx:
                fields[idx[0]] = (edit.key, line)
                for i in reversed(idx[1:]):
                    del fields[i]
            else:
                fields.append((edit.key, line))
        elif isinstance(edit, RemoveAll):
            fields = [f for f in fields if f[0] != edit.key]
        elif isinstance(edit, SetRequestUri):
            if not isinstance(message, Request):
                raise ValueError("SetRequestUri on a response")
            start = f"{message.method} {edit.uri} SIP/2.0"
        else:  # pragma: no cover - exhaustive
            raise TypeError(f"unknown edit {edit!r}")
    out = [start]
    out.extend(line for _key, line in fields)
    out.append(f"Content-Length: {len(message.body)}")
    out.append("")
    out.append("")
    return "\r\n".join(out).encode("utf-8", "surrogateescape") + message.body
