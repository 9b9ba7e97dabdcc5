"""Symbol: an Enum hashed by identity, for the states and verdicts the hot path keys tables by; and the
transition tables of the states (``steps``, ``move``).

An Enum member is a singleton compared by identity, but ``Enum.__hash__`` is Python code
(``hash(self._name_)``): every lookup in a transition table keyed by ``(state, event)`` ran it,
a dozen times per call.  ``object.__hash__`` is the C identity hash, consistent with identity
equality; nothing else about the Enum changes (values, names, iteration, ``is`` comparisons).

A transition table is written ``(state, event) -> next state``, one line per transition, and used by
state, then by event (``steps``): a move is two lookups, with no key tuple built, hashed and compared.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, TypeVar

__all__ = ["Symbol", "steps", "move"]


class Symbol(Enum):
    __hash__ = object.__hash__


# an event a table does not name is the one it stands for (a 2xx is a final like any other, unless the
# table says otherwise)
_ALIASES: Final = {"recv_2xx": "recv_final", "send_2xx": "send_final"}
State = TypeVar("State", bound=Symbol)


def steps(table: dict[tuple[State, str], State]) -> dict[State, dict[str, State]]:
    """``table`` by state, then by event, with the aliases its events stand for."""
    by_state: dict[State, dict[str, State]] = {}
    for (state, event), nxt in table.items():
        by_state.setdefault(state, {})[event] = nxt
    for events in by_state.values():
        for alias, event in _ALIASES.items():
            if alias not in events and event in events:
                events[alias] = events[event]
    return by_state


def move(by_state: dict[State, dict[str, State]], state: State, event: str) -> State:
    """The next state (``by_state``: from ``steps``); RuntimeError if there is no such transition: our bug,
    not the peer's."""
    events = by_state.get(state)
    nxt = events.get(event) if events is not None else None
    if nxt is None:
        raise RuntimeError(f"no transition from {state} on {event}")
    return nxt
