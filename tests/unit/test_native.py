"""The SIP core the tests run is the one the test command meant: compiled (mypyc) or pure Python.

``bash scripts/dev test`` runs the unit and property tests on the pure-Python core, then
everything on the compiled core, and says which through SIPGUARD_EXPECT_CORE; a build that
silently fell back to pure Python (or stale .so files left in place) fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sipguard
import sipguard.sip as sip
from sipguard._compiled import compiled_files, native_core
from sipguard.policy import engine
from sipguard.sip import parser, proxy


def test_the_core_in_use_is_the_one_expected(core, registry) -> None:
    expected = os.environ.get("SIPGUARD_EXPECT_CORE")
    if expected is None:
        if os.environ.get("CI") == "true":
            pytest.fail("under CI, scripts/dev test says which core it built (SIPGUARD_EXPECT_CORE)")
        pytest.skip("run through scripts/dev test to check the build")
    assert native_core() is (expected == "native")
    suffix = Path(str(parser.__file__)).suffix
    assert (suffix == ".so") is (expected == "native")
    assert Path(str(proxy.__file__)).suffix == Path(str(engine.__file__)).suffix == suffix
    # and operators see it: sipguard_build_info{core=...}
    from sipguard.metrics import Metrics

    Metrics(registry, lambda: core)
    assert registry.get_sample_value("sipguard_build_info", {"version": sipguard.__version__, "core": expected}) == 1


def _import_copy(tmp_path: Path, edit: str) -> subprocess.CompletedProcess[str]:
    """A copy of the package (with its build; without one, a garbage .so that must never be imported) where
    ``edit`` was done to sip/timers.py, imported."""
    copy = tmp_path / "sipguard"
    shutil.copytree(Path(sip.__file__).parents[1], copy, ignore=shutil.ignore_patterns("__pycache__"))
    timers = copy / "sip" / "timers.py"
    if not compiled_files():
        (copy / "sip" / "timers.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not a shared library")
    if edit == "touch":
        os.utime(timers)
    elif edit == "change":
        timers.write_text(timers.read_text() + "\n# changed after the build\n")
    code = ("import sipguard.sip.timers as t, sipguard._compiled as c; from sipguard.sip import parse; "
            "print(t.__file__.rsplit('.', 1)[1], c.native_core())")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})


def test_a_build_from_other_sources_is_set_aside_not_an_import_error(tmp_path: Path) -> None:
    """After a pull or an edit, the compiled modules would run old code: sipguard says so once and imports the
    sources (pure Python) instead of failing."""
    proc = _import_copy(tmp_path, "change")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["py", "False"]
    assert proc.stderr.count("built from other sources") == 1, proc.stderr


def test_a_touched_source_keeps_the_compiled_core(tmp_path: Path) -> None:
    """``touch`` (a checkout that rewrites a file unchanged) is not a change: the build still matches."""
    if not compiled_files():
        pytest.skip("no compiled core in place (the pure-Python pass)")
    proc = _import_copy(tmp_path, "touch")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["so", "True"] and proc.stderr == ""


def test_the_core_imports_without_mypy_installed() -> None:
    """``mypyc_attr`` (docs/compiled.md) comes from mypy_extensions, installed with mypy; an install without
    mypy (pure Python) gets a no-op decorator in its place and the same classes."""
    code = ("import sys; sys.modules['mypy_extensions'] = None\n"  # as if not installed: its import fails
            "from sipguard.sip.actions import Peer\n"
            "from sipguard._compiled import mypyc_attr\n"
            "assert Peer('udp', '192.0.2.1', 5060).port == 5060\n"
            "print(mypyc_attr.__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["sipguard._compiled"]
