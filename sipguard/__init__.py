"""sipguard: a SIP edge policy enforcer on asyncio."""

from ._compiled import check_build as _check_build

_check_build()  # a compiled core built from other sources is set aside (docs/compiled.md)

__version__ = "0.1.0"
__all__ = ["__version__"]
