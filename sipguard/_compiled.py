"""The compiled (mypyc) forms of the hot modules: which ones, whether they match their sources, and running
the sources instead when they do not.

``scripts/native.py build`` (and ``pip install .``, through ``setup.py``) compiles the modules in ``MODULES``
into C extensions beside their sources, which Python imports instead, and writes ``_native_stamp.txt``: a
digest of the sources they were built from.  On import of ``sipguard``, ``check_build()`` compares it with
the sources on disk.  When they differ (a ``git pull``, an edit), the compiled modules would run old code:
sipguard says so once on stderr and imports every one of them from its source (pure Python, about half the
speed) until the next build.  Never an ImportError.  The rules mypyc imposes on the code: docs/compiled.md.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["MODULES", "STAMP", "GROUP", "sources", "digest", "check_build", "is_compiled", "native_core",
           "mypyc_attr", "i64"]

# The class attributes mypyc compiles in (docs/compiled.md, "Objects the GC never sees") and its machine
# integer (docs/compiled.md, "Rules"): what mypy reads
if TYPE_CHECKING:
    from mypy_extensions import i64, mypyc_attr
else:
    try:
        from mypy_extensions import i64, mypyc_attr
    except ImportError:  # installed without mypy: the decorator only speaks to mypyc, i64 is an int
        i64 = int

        def mypyc_attr(*_attrs: Any, **_kwattrs: Any) -> Any:
            return lambda cls: cls

ROOT = Path(__file__).resolve().parent  # the sipguard package
# package (relative to the sipguard package) -> its compiled modules
MODULES: dict[str, tuple[str, ...]] = {
    "sip": ("grammar", "memo", "message", "parser", "serializer", "proxy", "pump", "transaction", "dialog", "timers",
            "actions", "raw", "shed", "replies", "symbol"),
    "policy": ("engine", "callerid", "numbers", "autodialer", "edge", "emergency", "decision"),
    "state": ("claim", "base", "memory", "shared"),
    "": ("outcomes",),
}
STAMP = "_native_stamp.txt"
GROUP = "sipguard.sip.native"  # mypyc's shared library of the group: in a package, importable wherever installed


def sources(root: Path = ROOT) -> list[Path]:
    return [root / package / f"{name}.py" for package, names in MODULES.items() for name in names]


def digest(root: Path = ROOT) -> str:
    """What the compiled modules must have been built from: one SHA-256 over the sources, in order."""
    h = hashlib.sha256()
    for path in sources(root):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def compiled_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for package in MODULES for p in (root / package).glob("*.so"))


def stale(root: Path = ROOT) -> bool:
    """Compiled modules are there and were not built from these sources."""
    if not compiled_files(root):
        return False
    stamp = root / STAMP
    return not stamp.exists() or stamp.read_text().strip() != digest(root)


class _Sources(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' sources first, so that a stale build is never imported."""

    def __init__(self, root: Path) -> None:
        self.paths = {"sipguard" + (f".{package}" if package else "") + f".{name}": root / package / f"{name}.py"
                      for package, names in MODULES.items() for name in names}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.paths.get(fullname)
        return importlib.util.spec_from_file_location(fullname, source) if source is not None else None


def check_build(root: Path = ROOT) -> bool:
    """On import of sipguard: a stale build is set aside (said once on stderr).  Whether it was."""
    if not stale(root):
        return False
    sys.stderr.write("sipguard: the compiled core was built from other sources (a pull or an edit since): running "
                     "pure Python until `python scripts/native.py build` (or `bash scripts/dev run`) rebuilds it\n")
    sys.meta_path.insert(0, _Sources(root))
    return True


def is_compiled(module: ModuleType) -> bool:
    return not str(module.__file__).endswith(".py")


def native_core() -> bool:
    """Whether the compiled (mypyc) SIP core and policy decision path are the ones running."""
    from .policy import engine
    from .sip import parser

    return is_compiled(parser) and is_compiled(engine)
