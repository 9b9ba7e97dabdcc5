"""sipguard: a SIP edge policy enforcer on asyncio."""

from ._compiled import refuse_stale as _refuse_stale

_refuse_stale(__path__[0])  # sipguard/outcomes.py is compiled (scripts/native.py)

__version__ = "0.1.0"
__all__ = ["__version__"]
