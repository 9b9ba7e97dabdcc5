"""The compiled (mypyc) forms of the hot packages: which one runs, and refusing stale ones.

``scripts/native.py build`` compiles modules of ``sipguard.sip``, ``sipguard.policy``, ``sipguard.state`` and
``sipguard`` itself (``outcomes``) into C extensions beside their sources, which Python imports instead.  A
compiled module older than its source would run old code, so each package refuses that on import.  Stays
interpreted.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

__all__ = ["refuse_stale", "is_compiled", "native_core"]


def refuse_stale(package_dir: str | Path) -> None:
    """ImportError if a compiled module in ``package_dir`` is older than its source."""
    here = Path(package_dir)
    for compiled in here.glob("*.so"):
        source = here / (compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            raise ImportError(f"{here.name}/{compiled.name} is older than {source.name}: run "
                              "`python scripts/native.py build` (or `clean` for pure Python)")


def is_compiled(module: ModuleType) -> bool:
    return not str(module.__file__).endswith(".py")


def native_core() -> bool:
    """Whether the compiled (mypyc) SIP core and policy decision path are the ones running."""
    from .policy import engine
    from .sip import parser

    return is_compiled(parser) and is_compiled(engine)
