"""Symbol: an Enum hashed by identity, for the states and verdicts the hot path keys tables by.

An Enum member is a singleton compared by identity, but ``Enum.__hash__`` is Python code
(``hash(self._name_)``): every lookup in a transition table keyed by ``(state, event)`` ran it,
a dozen times per call.  ``object.__hash__`` is the C identity hash, consistent with identity
equality; nothing else about the Enum changes (values, names, iteration, ``is`` comparisons).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Symbol"]


class Symbol(Enum):
    __hash__ = object.__hash__
