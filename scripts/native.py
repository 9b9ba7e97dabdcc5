"""Compile the SIP core (sipguard/sip) with mypyc, in place, or remove the compiled modules.

    python scripts/native.py build     # needs gcc, the Python headers and mypy (the native/test extras)
    python scripts/native.py clean
    python scripts/native.py status

The same source, compiled: mypyc turns the type-annotated modules of the SIP core into C
extensions that sit beside the .py files and take precedence on import.  The whole call costs
about a fifth less CPU (BENCHMARKS.md).  ``errors.py`` and ``__init__.py`` stay interpreted
(exception classes; the package's staleness check).  Without a build, sipguard runs the
same code as pure Python.  ``bash scripts/dev run|test`` builds it when the sources changed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sipguard" / "sip"
MODULES = ("grammar", "memo", "message", "parser", "serializer", "proxy", "transaction", "dialog", "timers",
           "actions")
GROUP = "sipguard.sip.native"  # the shared library lands in the package: importable wherever it is installed


def compiled() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*.so"))


def clean() -> None:
    for path in compiled():
        path.unlink()


def stale() -> list[str]:
    """Modules whose source is newer than their compiled form, or that are not compiled."""
    out = []
    for name in MODULES:
        sos = list(PACKAGE.glob(f"{name}.*.so"))
        if not sos or (PACKAGE / f"{name}.py").stat().st_mtime > sos[0].stat().st_mtime:
            out.append(name)
    return out


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)
    clean()
    setup(
        name="sipguard-native",
        packages=[],
        ext_modules=mypycify([f"sipguard/sip/{name}.py" for name in MODULES], group_name=GROUP, opt_level="3"),
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
        print(f"compiled SIP core: {len(compiled())} extension modules in {PACKAGE.relative_to(ROOT)}")
    elif command == "clean":
        clean()
        print("compiled SIP core removed: pure Python")
    elif command == "status":
        left = stale()
        print("pure Python" if len(left) == len(MODULES) else f"compiled, stale: {left}" if left else "compiled")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
