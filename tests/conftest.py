from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent))

from sipguard.policy import Engine, load_text  # noqa: E402
from sipguard.sip import Local, ProxyCore, TimerConfig  # noqa: E402

DATA = Path(__file__).parent / "data"

BASE_POLICY = """
service:
  listen: ["udp:127.0.0.1:5060"]
  upstreams: {uas: "sip:127.0.0.3:5063"}
  dialog_timeout_s: 60
accounts:
  a:
    kind: trunk
    channels: 100
    match: {sources: ["127.0.0.2/32"]}
    upstream: uas
    numbers: [{range: "+3228807240-+3228807249", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels"}}
"""


def corpus(name: str) -> list[dict[str, str]]:
    with open(DATA / name / "index.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        row["bytes"] = (DATA / name / row["file"]).read_bytes()  # type: ignore[assignment]
    return rows


class Clock:
    """A manual monotonic clock for the sans-I/O core."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def policy_text() -> str:
    return BASE_POLICY


@pytest.fixture
def core(policy_text: str) -> ProxyCore:
    timers = TimerConfig(t1_s=0.5, t2_s=4, t4_s=5, timer_c_s=180, dialog_timeout_s=60)
    return ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(load_text(policy_text)), timers)
