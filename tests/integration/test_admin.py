"""The admin listener (/healthz, /metrics, /reload) and SIGHUP reload on a running sipguard."""

from __future__ import annotations

import asyncio
import signal

import asyncio_dgram
import pytest

from helpers import request
from sipguard.sip import parse

from .conftest import Sipguard, free_udp_port

pytestmark = pytest.mark.integration

NEWCOMER = "127.0.0.9"


async def _options_status(sg: Sipguard, source_ip: str, call_id: str) -> int | None:
    """Send an OPTIONS for the UAS from source_ip; the status sipguard answers, None if forwarded."""
    uas = await asyncio_dgram.bind(("127.0.0.3", sg.uas_port))  # type: ignore[attr-defined]
    port = free_udp_port(source_ip)
    client = await asyncio_dgram.bind((source_ip, port))
    try:
        data = request("OPTIONS", ruri="sip:+3250123400@127.0.0.3", call_id=call_id, rport=True,
                       branch=f"z9hG4bK-{call_id}", via_host=f"{source_ip}:{port}")
        await client.send(data, ("127.0.0.1", sg.sip_port))
        done, pending = await asyncio.wait(
            {asyncio.ensure_future(client.recv()), asyncio.ensure_future(uas.recv())},
            timeout=5, return_when=asyncio.FIRST_COMPLETED,
        )
        for task in pending:
            task.cancel()
        assert done, "neither an answer nor a forwarded request within 5 s"
        data, addr = done.pop().result()
        msg = parse(data)
        return None if msg.is_request else msg.status  # type: ignore[union-attr]
    finally:
        client.close()
        uas.close()
        await asyncio.sleep(0.05)  # the transports close on the next loop turns


async def test_health_metrics_and_reload(sipguard: Sipguard) -> None:
    assert sipguard.http("/healthz") == (200, "ok\n")
    status, text = sipguard.http("/metrics")
    assert status == 200 and "sipguard_transactions 0.0" in text
    assert await _options_status(sipguard, NEWCOMER, "before") == 403

    # a valid new policy that adds the newcomer's address: applied, and it is now admitted
    original = sipguard.policy.read_text()
    sipguard.policy.write_text(original.replace('"127.0.0.4/32"]', f'"127.0.0.4/32", "{NEWCOMER}/32"]'))
    assert sipguard.http("/reload", "POST") == (200, "reloaded\n")
    assert await _options_status(sipguard, NEWCOMER, "after") is None  # forwarded to the UAS

    # a broken policy: refused with file, line and key; the running policy stays in force
    broken = original.replace("upstream: uas", "upstream: nowhere")
    sipguard.policy.write_text(broken)
    line = broken.splitlines().index("    upstream: nowhere") + 1
    status, body = sipguard.http("/reload", "POST")
    assert status == 400
    assert f"{sipguard.policy}:{line}: accounts.office.upstream" in body
    assert await _options_status(sipguard, NEWCOMER, "still") is None

    # the same through SIGHUP
    sipguard.proc.send_signal(signal.SIGHUP)
    refused = await asyncio.to_thread(sipguard.wait_metric, 'sipguard_policy_reloads_total{result="refused"}', 2)
    assert refused == 2 and sipguard.alive()
    assert sipguard.metric('sipguard_policy_reloads_total{result="applied"}') == 1
    assert await _options_status(sipguard, NEWCOMER, "still2") is None
    assert "the running policy stays in force" in sipguard.log.read_text()
    assert sipguard.http("/nothing-here")[0] == 404


def test_a_reload_that_changes_what_is_read_at_start_only_is_refused_by_name(sipguard: Sipguard) -> None:
    original = sipguard.policy.read_text()
    sipguard.policy.write_text(original.replace("  dialog_timeout_s:", '  state: {store: redis, url: "redis://127.0.0.1:1/0"}\n'
                                                                         "  dialog_timeout_s:"))
    status, body = sipguard.http("/reload", "POST")
    assert status == 400 and "service.state: changed, and needs a restart" in body
    sipguard.policy.write_text(original.replace('listen: ["udp:127.0.0.1:', 'listen: ["udp:127.0.0.5:'))
    status, body = sipguard.http("/reload", "POST")
    assert status == 400 and "service.listen: changed, and needs a restart" in body
    assert sipguard.metric('sipguard_policy_reloads_total{result="refused"}') == 2
    assert sipguard.metric('sipguard_state_available{store="memory"}') == 1
