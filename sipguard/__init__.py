"""sipguard: a SIP edge policy enforcer on asyncio."""

__version__ = "0.1.0"
__all__ = ["__version__"]
