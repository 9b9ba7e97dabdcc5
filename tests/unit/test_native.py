"""The SIP core the tests run is the one the test command meant: compiled (mypyc) or pure Python.

``bash scripts/dev test`` runs the unit and property tests on the pure-Python core, then
everything on the compiled core, and says which through SIPGUARD_EXPECT_CORE; a build that
silently fell back to pure Python (or stale .so files left in place) fails here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sipguard
import sipguard.sip as sip
from sipguard._compiled import native_core
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


def test_a_compiled_module_older_than_its_source_is_refused(tmp_path: Path) -> None:
    """Importing the package with a stale .so raises (it would run old code)."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "sipguard"
    shutil.copytree(Path(sip.__file__).parents[1], copy, ignore=shutil.ignore_patterns("__pycache__"))
    fake = copy / "sip" / "timers.cpython-311-x86_64-linux-gnu.so"
    if not fake.exists():
        fake.write_bytes(b"")  # never imported: the check refuses before any submodule loads
    os.utime(fake, (1, 1))  # older than timers.py
    proc = subprocess.run([sys.executable, "-c", "import sipguard.sip"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0 and "is older than timers.py" in proc.stderr
