"""Compile the hot path (sipguard/sip, sipguard/policy, two modules beside them) with mypyc, in place, or remove it.

    python scripts/native.py build     # needs gcc, the Python headers and mypy (the native/test extras)
    python scripts/native.py clean
    python scripts/native.py status
    python scripts/native.py build --stage DIR   # compile into DIR, the tree untouched ...
    python scripts/native.py install DIR         # ... and put that build in place later

The same source, compiled: mypyc turns the type-annotated modules of the SIP core and of the
policy decision path into C extensions that sit beside the .py files and take precedence on
import (BENCHMARKS.md has what it saves).  Interpreted still: ``errors.py`` (exception
classes), the ``__init__`` modules, and the policy model and loader
(mypyc checks annotations at run time, and the loader builds the model from YAML values).
Without a build, or with one made from other sources (docs/compiled.md), sipguard runs the same code
as pure Python.  ``bash scripts/dev run|test`` builds it when the sources changed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the list of compiled modules and the stamp of their sources: sipguard/_compiled.py, read without importing
# sipguard (whose import sets a stale build aside and says so)
_spec = importlib.util.spec_from_file_location("_compiled", ROOT / "sipguard" / "_compiled.py")
assert _spec is not None and _spec.loader is not None
_compiled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compiled)
STAMP, GROUP, compiled_files, digest, sources = (_compiled.STAMP, _compiled.GROUP, _compiled.compiled_files,
                                                 _compiled.digest, _compiled.sources)


def clean() -> None:
    for path in compiled_files():
        path.unlink()
    (ROOT / "sipguard" / STAMP).unlink(missing_ok=True)


def stale() -> list[str]:
    """Modules that are not compiled, or all of them when the build was made from other sources."""
    stamp = ROOT / "sipguard" / STAMP
    built = stamp.exists() and stamp.read_text().strip() == digest()
    return [f"{s.parent.name}.{s.stem}" for s in sources()
            if not built or not list(s.parent.glob(f"{s.stem}.*.so"))]


def build(stage: Path | None = None) -> None:
    """Compile in place; with ``stage``, into that directory instead, the tree left as it is (``bash scripts/dev
    test`` tests the pure-Python core meanwhile, then ``install``s it)."""
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)
    if stage is None:
        clean()
        where = ["--inplace"]
    else:
        shutil.rmtree(stage, ignore_errors=True)
        where = ["--build-lib", str(stage)]
    stamp = digest()  # of the sources as they are when the build starts
    setup(
        name="sipguard-native",
        packages=[],
        ext_modules=mypycify([str(p.relative_to(ROOT)) for p in sources()], group_name=GROUP, opt_level="3"),
        script_args=["-q", "build_ext", *where, "--force", "--build-temp", "build/native"],
    )
    ((ROOT if stage is None else stage) / "sipguard" / STAMP).write_text(stamp + "\n")
    if stage is None:
        install_check()


def install(stage: Path) -> None:
    """Put a build made with ``build --stage`` in place of whatever build is there."""
    built = sorted((stage / "sipguard").rglob("*.so"))
    if not built or not (stage / "sipguard" / STAMP).exists():
        raise SystemExit(f"no build in {stage}")
    clean()
    for path in built:
        shutil.copy2(path, ROOT / path.relative_to(stage))
    shutil.copy2(stage / "sipguard" / STAMP, ROOT / "sipguard" / STAMP)
    install_check()


def install_check() -> None:
    left = stale()
    if left:
        raise SystemExit(f"native build incomplete or made from other sources: {', '.join(left)}")


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "build" and argv[2:3] == ["--stage"] and len(argv) == 4:
        build(Path(argv[3]).resolve())
        print(f"compiled into {argv[3]} (python scripts/native.py install {argv[3]} puts it in place)")
    elif command == "install" and len(argv) == 3:
        install(Path(argv[2]).resolve())
        print(f"compiled: {len(compiled_files())} extension modules in place, from {argv[2]}")
    elif command == "build" and len(argv) == 2:
        build()
        print(f"compiled: {len(compiled_files())} extension modules in sipguard/sip, sipguard/policy, sipguard/state and sipguard")
    elif command == "clean":
        clean()
        print("compiled modules removed: pure Python")
    elif command == "status":
        left = stale()
        print("pure Python" if not compiled_files() else f"compiled, stale: {left}" if left else "compiled")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
