"""The pure policy engine: model, loader, decisions.

The decision path (engine and the rules) may run compiled (``scripts/native.py build``);
the model and the loader stay interpreted.
"""

from .decision import Decision, Mode, Verdict
from .engine import Engine
from .loader import PolicyError, Problem, load, load_text
from .model import Account, Policy, Service

__all__ = ["Decision", "Mode", "Verdict", "Engine", "PolicyError", "Problem", "load", "load_text", "Account",
           "Policy", "Service"]
