"""The command desk and the command state machine, without sockets: a memory broker and a fake clock.

The properties a user relies on: a command moves forward only, is finished
once, every change is audited with a rising version, a resend never sends
twice, and the owner is the most specific connected claim.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.memory import MemoryBroker
from gateway.commands import CommandDesk, service_key
from metrics.definitions import build
from protocol.auth import Principal
from protocol.channels import RESULTS_KEY, ChannelKey
from protocol.commands import TERMINAL, Command, CommandState, advance, owners, serves
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import BotCommand, BotCommandReport, BotCommandStatus

pytestmark = pytest.mark.unit

USER = Principal("ann", 2e9)
STATES = [CommandState.ACCEPTED, CommandState.SUCCEEDED, CommandState.FAILED]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def desk(services: dict[str, list[str]] | None = None, listening: set[str] | None = None
         ) -> tuple[CommandDesk, MemoryBroker, Clock, list[Command], list[Any]]:
    broker, clock, audited, published = MemoryBroker(), Clock(), [], []
    broker.on_publication = lambda pub: published.append(pub)
    services = {"engine": ["*"]} if services is None else services
    for name, patterns in services.items():
        broker.register_service(name, patterns)
    live = set(services) if listening is None else listening
    d = CommandDesk(broker, build(), node="n1", default_timeout=30.0,
                    receivers=lambda key: 1 if key.split("#", 1)[1] in live else 0,
                    on_change=audited.append, clock=clock)
    return d, broker, clock, audited, published


def test_owners_most_specific_claim_wins_and_no_fallback():
    claims = {"all": ("*",), "grid": ("grid-*",), "grid7": ("grid-7",), "g": ("g*",), "other": ("dca-*",)}
    assert owners("grid-7", claims) == ["grid7"]
    assert owners("grid-1", claims) == ["grid"]
    assert owners("gx", claims) == ["g"]
    assert owners("x", claims) == ["all"]
    assert owners("x", {"b": ("*",), "a": ("*",)}) == ["a", "b"]  # replicas, by name on every node
    assert owners("x", {"grid": ("grid-*",)}) == []
    assert serves(None) == ("*",) and serves("bot-1") == ("bot-1",) and serves(["ok-*", 7, "no spaces"]) == ("ok-*",)


def test_submit_stores_publishes_to_the_owner_only_and_acks():
    d, _, _, audited, published = desk({"engine": ["*"], "grid": ["grid-*"]})
    (text, kind), = d.submit(USER, "s1", BotCommand("grid-1", "start", {"a": 1}, "r", "c-1"))
    assert kind == "bot_command_ack" and '"state":"sent"' in text and '"deliveredTo":1' in text
    (pub,) = published
    assert pub.key == service_key("grid") and pub.data["commandId"] == "c-1" and pub.data["userId"] == "ann"
    assert [c.state for c in audited] == [CommandState.SENT]


def test_no_owner_connected_is_no_service_and_nothing_is_stored():
    d, _, _, audited, published = desk({"grid": ["grid-*"], "engine": ["*"]}, listening={"engine"})
    with pytest.raises(ProtocolError) as info:
        d.submit(USER, "s1", BotCommand("grid-1", "start", {}, "r", "c-2"))
    assert info.value.code is ErrorCode.NO_SERVICE and published == [] and audited == []
    with pytest.raises(ProtocolError) as info:
        d.status(USER, BotCommandStatus("c-2"))
    assert info.value.code is ErrorCode.NOT_FOUND


def test_unfinished_commands_per_user_are_capped_and_a_result_from_any_node_frees_one():
    d, _, _, audited, published = desk()
    d.max_open = 2
    d.submit(USER, "s1", BotCommand("b", "start", {}, "r1", "k1"))
    d.submit(USER, "s1", BotCommand("b", "start", {}, "r2", "k2"))
    with pytest.raises(ProtocolError) as info:
        d.submit(USER, "s1", BotCommand("b", "start", {}, "r3", "k3"))
    assert info.value.code is ErrorCode.TOO_MANY_COMMANDS and info.value.request_id == "r3"
    assert len(published) == 2 and len(audited) == 2
    d.submit(Principal("bob", 2e9), "s2", BotCommand("b", "start", {}, "r4", "k1"))  # another user: not held
    # k1 finished on another node: its result arrives through the broker.
    d.result_published({"userId": "ann", "result": {"commandId": "k1", "state": "accepted"}})
    with pytest.raises(ProtocolError):  # accepted is not finished
        d.submit(USER, "s1", BotCommand("b", "start", {}, "r5", "k3"))
    d.result_published({"userId": "ann", "result": {"commandId": "k1", "state": "succeeded"}})
    (ack, _), = d.submit(USER, "s1", BotCommand("b", "start", {}, "r6", "k3"))
    assert '"state":"sent"' in ack
    # Finished here: a report frees a place too.
    d.report(Principal("engine", 2e9, role="service"),
             BotCommandReport("k2", "ann", CommandState.FAILED, None, "r7"))
    d.submit(USER, "s1", BotCommand("b", "start", {}, "r8", "k4"))
    d.stop()


def test_the_deadline_times_a_command_out_once_and_a_late_report_is_refused():
    d, _, clock, audited, published = desk()
    d.submit(USER, "s1", BotCommand("b", "start", {}, None, "c-3", 5_000))
    engine = Principal("engine", 2e9, role="service")
    d.report(engine, BotCommandReport("c-3", "ann", CommandState.ACCEPTED))
    clock.now += 5_000
    (text, _), = d.status(USER, BotCommandStatus("c-3"))
    assert '"state":"timed_out"' in text
    with pytest.raises(ProtocolError) as info:
        d.report(engine, BotCommandReport("c-3", "ann", CommandState.SUCCEEDED, {"late": True}))
    assert info.value.code is ErrorCode.INVALID_STATE
    assert [c.state for c in audited] == [CommandState.SENT, CommandState.ACCEPTED, CommandState.TIMED_OUT]
    results = [p.data["result"]["state"] for p in published if p.key == RESULTS_KEY]
    assert results == ["accepted", "timed_out"]
    d.stop()


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.one_of(st.sampled_from(STATES), st.integers(0, 40_000), st.just("resend"),
                                st.just("status")), max_size=12))
def test_a_command_only_moves_forward_and_every_change_is_audited_once(steps):
    """Whatever services report, whenever, and however often the user resends or asks."""
    d, _, clock, audited, published = desk()
    engine = Principal("engine", 2e9, role="service")
    d.submit(USER, "s1", BotCommand("b", "go", {"x": 1}, None, "cmd", 30_000))
    for step in steps:
        try:
            if isinstance(step, CommandState):
                d.report(engine, BotCommandReport("cmd", "ann", step, {"step": step.value}))
            elif isinstance(step, int):
                clock.now += step
            elif step == "resend":
                d.submit(USER, "s1", BotCommand("b", "go", {"x": 1}, None, "cmd", 30_000))
            else:
                d.status(USER, BotCommandStatus("cmd"))
        except ProtocolError as exc:
            assert exc.code is ErrorCode.INVALID_STATE
    versions = [c.version for c in audited]
    assert versions == list(range(1, len(audited) + 1))  # each change once, in order
    assert sum(c.state in TERMINAL for c in audited) <= 1  # finished at most once
    assert len([p for p in published if p.key == ChannelKey(service_key("engine"))]) == 1  # sent once
    for before, after in itertools.pairwise(audited):
        assert advance(before, after.state, after.finished_at or after.accepted_at or 0, after.result) is not None
    d.stop()
