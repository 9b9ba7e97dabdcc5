"""Channels held by calls (README, "The policies") through the core, the engine and the in-memory store."""

from __future__ import annotations

import pytest

from helpers import UAC, UAS, Wire, feed, request, response_to, run_timers
from sipguard.policy import Engine, load_text
from sipguard.sip import Local, Peer, ProxyCore, TimerConfig, parse
from sipguard.state import ChannelClaim, InMemoryStore
from sipguard.state.shared import SharedCounts, SharedStore, TableFull

POLICY = """
service:
  listen: ["udp:127.0.0.1:5060"]
  upstreams: {uas: "sip:127.0.0.3:5063"}
accounts:
  t:
    kind: trunk
    channels: 2
    match: {sources: ["127.0.0.2/32"]}
    upstream: uas
    deliver_to: "sip:127.0.0.2:5062"
    numbers: [{range: "+3228807240-+3228807249", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels"}}
    rules: {channel_limit: MODE}
"""
UPSTREAM = Peer("udp", "127.0.0.3", 5063)


class Harness:
    def __init__(self, mode: str = "enforce") -> None:
        self.store = InMemoryStore()
        self.core = ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(load_text(POLICY.replace("MODE", mode))),
                              TimerConfig(dialog_timeout_s=30))
        self.wire = Wire()
        self.now = 0.0

    def invite(self, n: int, called: str = "+3250123400", source: Peer = UAC, **kw) -> list[int]:
        before = len(self.wire.to(source))
        feed(self.core, request(call_id=f"call-{n}", branch=f"z9hG4bK-{n}", from_tag=f"f{n}",
                                ruri=f"sip:{called}@127.0.0.3", via_host=f"{source.host}:{source.port}", **kw),
             source, self.now, self.wire, self.store)
        return [s.status for s in self.wire.to(source)[before:]]

    def answer(self, n: int, status: int = 200) -> None:
        fwd = next(m for m in map(lambda s: parse(s.data), reversed(self.wire.to(UAS)))
                   if m.call_id == f"call-{n}" and m.method == "INVITE")
        feed(self.core, response_to(fwd, status, "X"), UAS, self.now, self.wire, self.store)

    def bye(self, n: int) -> None:
        feed(self.core, request("BYE", call_id=f"call-{n}", branch=f"z9hG4bK-bye-{n}", from_tag=f"f{n}",
                                to_tag="uas-tag", cseq=2, ruri="sip:uas@127.0.0.3:5063",
                                extra=["Route: <sip:127.0.0.1:5060;lr>"]), UAC, self.now, self.wire, self.store)

    @property
    def active(self) -> int:
        return self.store.active_now("t")


def test_limit_holds_n_calls_and_rejects_the_next_with_a_warning() -> None:
    h = Harness()
    assert h.invite(1) == [100] and h.invite(2) == [100]
    h.answer(1), h.answer(2)
    assert h.active == 2
    statuses = h.invite(3)
    assert statuses == [486]
    reply = parse(h.wire.to(UAC)[-1].data)
    assert reply.get("warning") == '399 sipguard "channel limit of 2 reached for account t"'
    h.bye(1)
    assert h.active == 1
    assert h.invite(4) == [100]


def test_cancel_and_a_final_non_2xx_free_the_channel() -> None:
    h = Harness()
    h.invite(1), h.invite(2)
    h.answer(1, 180)
    feed(h.core, request("CANCEL", call_id="call-1", branch="z9hG4bK-1", from_tag="f1",
                         ruri="sip:+3250123400@127.0.0.3"), UAC, h.now, h.wire, h.store)
    cancel = parse(h.wire.to(UAS)[-1].data)
    assert cancel.method == "CANCEL"
    h.answer(1, 487)
    assert h.active == 1
    h.answer(2, 486)  # the UAS refuses call 2
    assert h.active == 0
    assert h.invite(3) == [100] and h.invite(4) == [100]


def test_emergency_call_is_admitted_at_the_limit_and_holds_a_channel() -> None:
    h = Harness()
    h.invite(1), h.invite(2)
    assert h.invite(3, called="112") == [100]
    assert h.active == 3
    assert h.invite(4) == [486]


def test_reinvite_holds_no_new_channel() -> None:
    h = Harness()
    h.invite(1)
    h.answer(1)
    feed(h.core, request(call_id="call-1", branch="z9hG4bK-re", from_tag="f1", to_tag="uas-tag", cseq=2,
                         ruri="sip:uas@127.0.0.3:5063", extra=["Route: <sip:127.0.0.1:5060;lr>"]),
         UAC, 1.0, h.wire, h.store)
    assert h.active == 1


def test_inbound_calls_count_too() -> None:
    h = Harness()
    h.invite(1)
    assert h.invite(2, called="+3228807241", source=UPSTREAM) == [100]  # from the carrier, to the trunk
    assert h.active == 2
    assert h.invite(3, called="+3228807242", source=UPSTREAM) == [486]


def test_lost_bye_releases_at_the_dialog_timeout() -> None:
    h = Harness()
    h.invite(1), h.invite(2)
    h.answer(1), h.answer(2)
    assert h.invite(3) == [486]
    run_timers(h.core, h.now + 31, h.wire, store=h.store)
    assert h.active == 0 and h.core.dialog_count == 0


def test_shadow_mode_counts_but_does_not_reject() -> None:
    h = Harness("shadow")
    assert h.invite(1) == [100] and h.invite(2) == [100] and h.invite(3) == [100]
    assert h.active == 3


def test_off_mode_holds_nothing() -> None:
    h = Harness("off")
    h.invite(1)
    assert h.active == 0


def _in_memory() -> InMemoryStore:
    return InMemoryStore()


def _shared() -> SharedStore:
    return SharedStore(SharedCounts(workers=2, rows=16), worker=1)


STORES = pytest.mark.parametrize("make_store", [_in_memory, _shared], ids=["memory", "shared"])


@STORES
def test_store_release_is_idempotent_and_a_claim_is_counted_once(make_store) -> None:
    store = make_store()
    claim = ChannelClaim("a", 1, "k1")
    assert store.claim_now(claim) and store.claim_now(claim)  # the same call again: still one
    assert store.active_now("a") == 1
    store.release_now(claim)
    store.release_now(claim)
    assert store.active_now("a") == 0


@STORES
@pytest.mark.parametrize("emergency,enforce,admitted", [(False, True, False), (True, True, True),
                                                        (False, False, True)])
def test_store_claim_at_the_limit(make_store, emergency: bool, enforce: bool, admitted: bool) -> None:
    store = make_store()
    store.claim_now(ChannelClaim("a", 1, "first"))
    assert store.claim_now(ChannelClaim("a", 1, "second", emergency, enforce)) is admitted


def _claim_many(counts: SharedCounts, worker: int, n: int, out) -> None:  # type: ignore[no-untyped-def]
    store = SharedStore(counts, worker)
    out.put((worker, sum(store.claim_now(ChannelClaim("acct", 10, f"w{worker}-{i}")) for i in range(n))))


def test_shared_store_holds_the_limit_across_processes() -> None:
    """Real processes, real shared memory: 3 workers race for 10 channels, 10 are granted in all."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    counts = SharedCounts(workers=3, rows=16)
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(counts, w, 8, out)) for w in range(3)]
    for p in procs:
        p.start()
    granted = dict(out.get(timeout=20) for _ in procs)  # worker -> channels granted (in the order they finished)
    for p in procs:
        p.join(timeout=20)
    assert sum(granted.values()) == 10, granted
    assert counts.total("acct") == 10  # the workers' calls are still held: they published their counts
    # a worker dies: the supervisor zeroes its column, and its channels are free again
    counts.forget_worker(0)
    assert counts.total("acct") == 10 - granted[0]


def test_shared_store_counts_other_workers_and_releases_its_own() -> None:
    counts = SharedCounts(workers=2, rows=16)
    a, b = SharedStore(counts, 0), SharedStore(counts, 1)
    assert a.claim_now(ChannelClaim("x", 2, "a1")) and b.claim_now(ChannelClaim("x", 2, "b1"))
    assert not a.claim_now(ChannelClaim("x", 2, "a2"))  # b's call counts against a's claim
    assert a.active_now("x") == b.active_now("x") == 2
    b.release_now(ChannelClaim("x", 2, "a1"))  # not b's call: nothing happens
    assert a.active_now("x") == 2
    b.release_now(ChannelClaim("x", 2, "b1"))
    assert a.claim_now(ChannelClaim("x", 2, "a2")) and a.active_now("x") == 2


def test_shared_table_is_bounded() -> None:
    counts = SharedCounts(workers=1, rows=4)
    store = SharedStore(counts, 0)
    for i in range(4):
        assert store.claim_now(ChannelClaim(f"acct{i}", 1, "k"))
    with pytest.raises(TableFull):
        store.claim_now(ChannelClaim("one-too-many", 1, "k"))


def _settled_decisions(claims: list[ChannelClaim]) -> dict[tuple[str, ...], int]:
    """Settle each claim through the server (its store, its metrics): the channel-limit decisions it counted."""
    import tempfile
    from pathlib import Path

    from bench.call import Harness as ServerHarness
    from sipguard.sip.actions import Settle

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerHarness(Path(tmp)).server
        for i, claim in enumerate(claims):
            server.outcomes.settle(Settle(1000 + i, claim, claim.emergency))
        return {k: n for k, n in server.metrics.decisions.counts.items() if k[0] == "channel_limit"}


def test_the_server_records_a_refused_claim_and_a_shadow_claim_over_the_limit_only() -> None:
    enforced = [ChannelClaim("a", 1, f"c{i};f{i}") for i in range(3)]  # the 2nd and 3rd are refused
    assert _settled_decisions(enforced) == {("channel_limit", "reject"): 2}
    shadow = [ChannelClaim("a", 1, f"c{i};f{i}", enforce=False) for i in range(3)]  # 2nd and 3rd go over
    assert _settled_decisions(shadow) == {("channel_limit", "reject"): 2}
    emergency = [ChannelClaim("a", 1, f"c{i};f{i}", emergency=True) for i in range(3)]  # always granted, not flagged
    assert _settled_decisions(emergency) == {}
    within = [ChannelClaim("a", 5, f"c{i};f{i}", enforce=False) for i in range(3)]
    assert _settled_decisions(within) == {}


def test_a_reload_changes_the_status_a_refused_claim_is_recorded_with() -> None:
    """The compiled action handler (outcomes.py) takes the reloaded policy's reject.channel_limit."""
    import json
    import tempfile
    from pathlib import Path

    from bench.call import Harness as ServerHarness
    from sipguard.sip.actions import Settle

    with tempfile.TemporaryDirectory() as tmp:
        harness = ServerHarness(Path(tmp))
        server = harness.server
        log = Path(tmp) / "decisions.jsonl"

        def refuse(n: int) -> dict[str, object]:
            for i in range(2):  # the second of two claims on a one-channel account is refused
                claim = ChannelClaim("one", 1, f"c{n}-{i};f")
                server.outcomes.settle(Settle(100 * n + i, claim, False))
            server.outcomes.on_action(Settle(100 * n + 50, ChannelClaim(f"other{n}", 1, "x;f"), False))  # granted
            record: dict[str, object] = json.loads(log.read_text().splitlines()[-1])
            server.store.release_now(ChannelClaim("one", 1, f"c{n}-0;f"))
            return record

        first = refuse(1)
        assert (first["rule"], first["verdict"], first["status"]) == ("channel_limit", "reject", 486)
        policy = Path(server.settings.policy_path)
        policy.write_text(policy.read_text().replace("service:\n", "service:\n  reject: {channel_limit: 503}\n", 1))
        assert server.reload() == []
        second = refuse(2)
        assert (second["rule"], second["status"]) == ("channel_limit", 503)
        assert server.metrics.decisions.counts[("channel_limit", "reject")] == 2


def test_a_worker_publishes_what_it_still_holds_when_it_releases_one_call() -> None:
    counts = SharedCounts(workers=2, rows=16)
    a, b = SharedStore(counts, 0), SharedStore(counts, 1)
    for key in ("a1", "a2", "a3"):
        assert a.claim_now(ChannelClaim("x", 5, key))
    assert a.claim_now(ChannelClaim("y", 5, "y1"))
    a.release_now(ChannelClaim("x", 5, "a2"))
    assert b.active_now("x") == 2 and b.active_now("y") == 1  # not 0, not 3
    assert b.claim_now(ChannelClaim("x", 3, "b1")) and not b.claim_now(ChannelClaim("x", 3, "b2"))


@pytest.mark.parametrize("workers,rows", [(0, 4), (1, 0)])
def test_a_shared_table_needs_workers_and_rows(workers: int, rows: int) -> None:
    with pytest.raises(ValueError, match="^workers and rows must be positive$"):
        SharedCounts(workers=workers, rows=rows)
    one = SharedCounts(workers=1, rows=1)  # the smallest table there is
    one.publish("a", 0, 2)
    assert one.total("a") == 2


@pytest.mark.parametrize("worker", [-1, 2])
def test_a_store_belongs_to_a_worker_of_its_table(worker: int) -> None:
    with pytest.raises(ValueError, match=f"^worker {worker} out of range$"):
        SharedStore(SharedCounts(workers=2, rows=4), worker)
    assert SharedStore(SharedCounts(workers=2, rows=4), 1).worker == 1


def test_a_full_table_says_how_many_accounts_it_holds() -> None:
    counts = SharedCounts(workers=1, rows=2)
    counts.publish("a", 0, 1)
    counts.publish("b", 0, 1)
    with pytest.raises(TableFull, match="^the shared channel table holds 2 accounts$"):
        counts.publish("c", 0, 1)
    assert counts.total("a") == counts.total("b") == 1  # both rows still found, by their keys
