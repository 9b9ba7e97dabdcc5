"""Compile the hot path (sipguard/sip, sipguard/policy, two modules beside them) with mypyc, in place, or remove it.

    python scripts/native.py build     # needs gcc, the Python headers and mypy (the native/test extras)
    python scripts/native.py clean
    python scripts/native.py status

The same source, compiled: mypyc turns the type-annotated modules of the SIP core and of the
policy decision path into C extensions that sit beside the .py files and take precedence on
import (BENCHMARKS.md has what it saves).  Interpreted still: ``errors.py`` (exception
classes), the ``__init__`` modules (they refuse stale builds), and the policy model and loader
(mypyc checks annotations at run time, and the loader builds the model from YAML values).
Without a build, sipguard runs the same code as pure Python.  ``bash scripts/dev run|test``
builds it when the sources changed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = {
    ROOT / "sipguard" / "sip": ("grammar", "memo", "message", "parser", "serializer", "proxy", "pump", "transaction",
                                "dialog", "timers", "actions"),
    ROOT / "sipguard" / "policy": ("engine", "callerid", "numbers", "autodialer", "edge", "emergency", "decision"),
    ROOT / "sipguard" / "state": ("claim",),
    ROOT / "sipguard": ("outcomes",),
}
SOURCES = [package / f"{name}.py" for package, names in MODULES.items() for name in names]
GROUP = "sipguard.sip.native"  # the shared library lands in a package: importable wherever it is installed


def compiled() -> list[Path]:
    return sorted(p for package in MODULES for p in package.glob("*.so"))


def clean() -> None:
    for path in compiled():
        path.unlink()


def stale() -> list[str]:
    """Modules whose source is newer than their compiled form, or that are not compiled."""
    out = []
    for source in SOURCES:
        sos = list(source.parent.glob(f"{source.stem}.*.so"))
        if not sos or source.stat().st_mtime > sos[0].stat().st_mtime:
            out.append(f"{source.parent.name}.{source.stem}")
    return out


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)
    clean()
    setup(
        name="sipguard-native",
        packages=[],
        ext_modules=mypycify([str(p.relative_to(ROOT)) for p in SOURCES], group_name=GROUP, opt_level="3"),
        script_args=["-q", "build_ext", "--inplace", "--force", "--build-temp", "build/native"],
    )
    for path in compiled():  # copies keep the build's times: date them now, for the staleness check
        os.utime(path)
    left = stale()
    if left:
        raise SystemExit(f"native build incomplete: {', '.join(left)}")


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "build":
        build()
        print(f"compiled: {len(compiled())} extension modules in sipguard/sip, sipguard/policy, sipguard/state and sipguard")
    elif command == "clean":
        clean()
        print("compiled modules removed: pure Python")
    elif command == "status":
        left = stale()
        print("pure Python" if len(left) == len(SOURCES) else f"compiled, stale: {left}" if left else "compiled")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
