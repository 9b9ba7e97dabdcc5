"""``pip install .`` with the compiled core (docs/compiled.md): the modules in ``sipguard/_compiled.py``'s
``MODULES`` built by mypyc when a C compiler is there; otherwise, or with ``SIPGUARD_NATIVE=0``, the same
code as pure Python, said once.  Everything else about the package is in pyproject.toml."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "sipguard"
_spec = importlib.util.spec_from_file_location("_compiled", ROOT / "sipguard" / "_compiled.py")
assert _spec is not None and _spec.loader is not None
_compiled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compiled)


def _say(text: str) -> None:
    print(f"sipguard: {text}", file=sys.stderr)


class BuildCompiledCore(build_ext):
    """The extensions, or none of them: a core half compiled is not one; the stamp of their sources with them."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # no compiler, no headers: pure Python
            _say(f"the compiled core could not be built ({err}); installing it as pure Python")
            self.extensions = []
            return
        target = ROOT if self.inplace else Path(self.build_lib)
        (target / "sipguard" / _compiled.STAMP).write_text(_compiled.digest(PACKAGE) + "\n")


def _extensions() -> list[object]:
    if os.environ.get("SIPGUARD_NATIVE") == "0":
        return []
    try:
        from mypyc.build import mypycify

        os.chdir(ROOT)
        return list(mypycify([str(p.relative_to(ROOT)) for p in _compiled.sources(PACKAGE)],
                             group_name=_compiled.GROUP, opt_level="3"))
    except (Exception, SystemExit) as err:  # mypy missing, or the sources do not type-check (mypyc exits)
        _say(f"mypyc could not compile the core ({err}); installing it as pure Python")
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildCompiledCore})
