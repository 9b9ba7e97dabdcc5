"""A real user agent (PJSUA2) calls through sipguard to a SIPp UAS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CALLER2_IP, Sipguard, Sipp

pytestmark = pytest.mark.integration


def _require_pjsua2() -> None:
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("pjsua2 (pip install pjsua2-python) is required in CI", pytrace=False)
        pytest.skip("pjsua2 not installed")


def test_pjsua2_call_is_confirmed_and_hung_up(sipguard: Sipguard, sipp: Sipp) -> None:
    _require_pjsua2()
    uas = sipp.uas("basic/uas.xml", sipguard.uas_port, "-m", "1")  # type: ignore[attr-defined]
    script = Path(__file__).with_name("pjsua_call.py")
    proc = subprocess.run(
        [sys.executable, str(script), "--bind", CALLER2_IP, "--proxy", f"127.0.0.1:{sipguard.sip_port}",
         "--to", f"sip:+3250123400@127.0.0.3:{sipguard.uas_port}"],  # type: ignore[attr-defined]
        capture_output=True, text=True, timeout=60,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(lines[-1])
    assert result["confirmed"], result
    assert result["disconnected"], result
    assert proc.returncode == 0
    assert sipp.wait(uas) == 0  # the UAS got the INVITE, the ACK and the BYE through sipguard
    m = sipguard.metrics()
    assert m['sipguard_dialogs_ended_total{reason="bye"}'] == 1
    assert sipguard.wait_metric("sipguard_dialogs", 0) == 0
