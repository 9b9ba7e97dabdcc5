"""Every state x input of the transaction and dialog tables (as python-hyper/h2 does)."""

from __future__ import annotations

import itertools

import pytest

from sipguard.sip.dialog import DIALOG_TRANSITIONS, Dialog, DialogState
from sipguard.sip.symbol import move
from sipguard.sip.transaction import (
    _CLIENT_INVITE_STEPS,
    _CLIENT_NON_INVITE_STEPS,
    _SERVER_INVITE_STEPS,
    _SERVER_NON_INVITE_STEPS,
    CLIENT_INVITE,
    CLIENT_NON_INVITE,
    SERVER_INVITE,
    SERVER_NON_INVITE,
    ClientState,
    ServerState,
)

TABLES = {
    "server_invite": (SERVER_INVITE, ServerState),
    "server_non_invite": (SERVER_NON_INVITE, ServerState),
    "client_invite": (CLIENT_INVITE, ClientState),
    "client_non_invite": (CLIENT_NON_INVITE, ClientState),
}
STEPS = {  # what the transactions move by: the tables above by state, then event
    "server_invite": _SERVER_INVITE_STEPS,
    "server_non_invite": _SERVER_NON_INVITE_STEPS,
    "client_invite": _CLIENT_INVITE_STEPS,
    "client_non_invite": _CLIENT_NON_INVITE_STEPS,
}


def _events(table) -> set[str]:
    return {event for (_state, event) in table} | {"recv_2xx", "send_2xx"}


@pytest.mark.parametrize("name", TABLES)
def test_every_state_and_event(name) -> None:
    table, states = TABLES[name]
    for state, event in itertools.product(states, sorted(_events(table))):
        expected = table.get((state, event))
        if expected is None and event in ("recv_2xx", "send_2xx"):
            expected = table.get((state, event.replace("2xx", "final")))
        if expected is None:
            with pytest.raises(RuntimeError):
                move(STEPS[name], state, event)
        else:
            assert move(STEPS[name], state, event) is expected


@pytest.mark.parametrize("name", TABLES)
def test_terminated_is_final(name) -> None:
    table, states = TABLES[name]
    terminated = states.TERMINATED
    assert not [key for key in table if key[0] is terminated]


def test_every_state_but_terminated_can_reach_terminated() -> None:
    for table, states in TABLES.values():
        reach = {states.TERMINATED}
        changed = True
        while changed:
            changed = False
            for (state, _event), nxt in table.items():
                if nxt in reach and state not in reach:
                    reach.add(state)
                    changed = True
        used = {s for (s, _e) in table} | set(table.values())
        assert used <= reach, f"states that can never end: {used - reach}"


def test_dialog_table() -> None:
    for state, event in itertools.product(DialogState, ("recv_2xx", "end")):
        d = Dialog("c", "t", None, "outbound", None, 0.0)
        d.state = state
        if (state, event) in DIALOG_TRANSITIONS:
            d.move(event)
            assert d.state is DIALOG_TRANSITIONS[(state, event)]
        else:
            with pytest.raises(RuntimeError):
                d.move(event)
