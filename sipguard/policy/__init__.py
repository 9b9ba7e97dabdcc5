"""The pure policy engine: model, loader, decisions."""

from .decision import Decision, Mode, Verdict
from .engine import Engine
from .loader import PolicyError, Problem, load, load_text
from .model import Account, Policy, Service

__all__ = ["Decision", "Mode", "Verdict", "Engine", "PolicyError", "Problem", "load", "load_text", "Account",
           "Policy", "Service"]
