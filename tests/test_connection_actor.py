"""ConnectionActor without sockets: messages in, replies and directory calls out, on a fake clock.

The actor is driven by calling its handler directly (what its inbox would do,
one message at a time), with a fake connection that records what would be
written, a fake directory that records joins and publications, and a clock
the test moves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from actors.connection import ConnectionActor
from actors.directory import ConnectionContext, ConnectionLimits, Session
from actors.messages import CloseConnection, Inbound, Rejected
from metrics.definitions import build
from protocol.auth import AuthError, Principal
from protocol.channels import ChannelKey, Position
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import parse

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeConn:
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: list[tuple[int, str]] = field(default_factory=list)

    def send_text(self, text: str) -> bool:
        self.sent.append(json.loads(text))
        return True

    def close(self, code: int, reason: str = "", *, discard_pending: bool = False) -> None:
        self.closed.append((code, reason))


@dataclass
class FakeDirectory:
    joined: list[ChannelKey] = field(default_factory=list)
    left: list[ChannelKey] = field(default_factory=list)

    def join(self, session: Session, key: ChannelKey, *, since: Position | None = None, confirm: Any = None) -> None:
        self.joined.append(key)
        session.channels.add(key)
        if confirm is not None:
            session.conn.send_text(confirm(None if since is None else True, Position(0, "e1")))

    def leave(self, session: Session, key: ChannelKey) -> None:
        self.left.append(key)
        session.channels.discard(key)

    def close_session(self, session: Session) -> None:
        pass



@dataclass
class FakeCommands:
    """The command desk as the actor sees it: what it was asked, and a scripted answer."""

    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    refuse: ProtocolError | None = None

    def register_service(self, principal: Principal) -> None:
        self.registered.append(principal.user_id)

    def _answer(self, kind: str, principal: Principal, msg: Any) -> list[tuple[str, str]]:
        self.calls.append((kind, principal.user_id, msg))
        if self.refuse is not None:
            raise self.refuse
        return [(json.dumps({"type": f"{kind}_answer", "id": msg.request_id}), kind)]

    def submit(self, principal: Principal, session_id: str, msg: Any) -> list[tuple[str, str]]:
        return self._answer("submit", principal, msg)

    def status(self, principal: Principal, msg: Any) -> list[tuple[str, str]]:
        return self._answer("status", principal, msg)

    def report(self, principal: Principal, msg: Any) -> list[tuple[str, str]]:
        return self._answer("report", principal, msg)


def _verify(token: str) -> Principal:
    if token == "good-for-ann":
        return Principal("ann", 2_000_000_000.0)
    if token == "good-for-bob":
        return Principal("bob", 2_000_000_000.0)
    raise AuthError("bad_signature", "the token signature is not valid")


def actor(*, rate: float = 5, burst: int = 5, errors: int = 3, max_channels: int = 4,
          bots: frozenset[str] | None = None, role: str = "user",
          commands: FakeCommands | None = None) -> tuple[ConnectionActor, FakeConn, FakeDirectory, Clock]:
    conn, directory, clock = FakeConn(), FakeDirectory(), Clock()
    context = ConnectionContext(directory=directory, limits=ConnectionLimits(max_channels, rate, burst, errors),
                                verify=_verify, metrics=build(), commands=commands or FakeCommands(), clock=clock)
    session = Session("s1", Principal("ann", 2_000_000_000.0, role=role, bots=bots), outbox=None)  # type: ignore[arg-type]  # no outbox: the fake conn records
    session.conn = conn
    return ConnectionActor(context, session, conn), conn, directory, clock  # type: ignore[arg-type]  # a fake conn


def send(a: ConnectionActor, text: str) -> None:
    try:
        a.on_receive(Inbound(parse(text)))
    except ProtocolError as exc:
        a.on_receive(Rejected(exc))


def test_subscribe_joins_the_private_key_of_the_tokens_user_and_confirms():
    a, conn, directory, _ = actor()
    send(a, '{"type":"subscribe","channel":"trades","id":"1"}')
    assert directory.joined == ["trades#ann"]
    assert conn.sent == [{"type": "subscribed", "channel": "trades", "id": "1", "offset": 0, "epoch": "e1"}]
    send(a, '{"type":"subscribe","channel":"trades","id":"2"}')  # twice: confirmed again, joined once
    assert directory.joined == ["trades#ann"] and conn.sent[-1]["already"] is True


def test_the_channel_limit_counts_keys():
    a, conn, _, _ = actor(max_channels=2)
    send(a, '{"type":"subscribe","channel":"market-data","id":"m","data":{"symbol":"BTCUSDT",'
            '"streams":["ticker","trades","orderbook"]}}')
    assert conn.sent[-1]["code"] == "too_many_channels" and conn.sent[-1]["id"] == "m"


def test_messages_past_the_budget_are_refused_until_the_clock_refills_it():
    a, conn, _, clock = actor(rate=5, burst=5, errors=100)
    for i in range(7):
        send(a, f'{{"type":"ping","id":"{i}"}}')
    assert [m["type"] for m in conn.sent] == ["pong"] * 5 + ["error"] * 2
    assert conn.sent[-1]["code"] == "rate_limited" and conn.sent[-1]["id"] == "6"
    clock.now += 0.41  # two tokens at 5 a second (and a little: the clock is a float)
    for i in range(3):
        send(a, f'{{"type":"ping","id":"r{i}"}}')
    assert [m["type"] for m in conn.sent[-3:]] == ["pong", "pong", "error"]


def test_errors_past_the_error_budget_close_with_4003_and_the_window_forgets():
    a, conn, _, clock = actor(errors=3)
    for _ in range(3):
        send(a, "not json")
    assert conn.closed == []
    clock.now += 11  # older than the 10 s window: forgotten
    for _ in range(3):
        send(a, "not json")
    assert conn.closed == []
    send(a, "not json")
    assert conn.closed == [(4003, "rate limited")]


def test_refresh_takes_a_token_of_the_same_user_only():
    a, conn, _, _ = actor()
    send(a, '{"type":"refresh","id":"r1","token":"good-for-ann"}')
    assert conn.sent[-1]["type"] == "refreshed" and conn.sent[-1]["id"] == "r1"
    send(a, '{"type":"refresh","id":"r2","token":"good-for-bob"}')
    assert conn.sent[-1]["code"] == "token_subject_mismatch"
    send(a, '{"type":"refresh","id":"r3","token":"forged"}')
    assert conn.sent[-1]["code"] == "invalid_token"


def test_bot_commands_status_queries_and_reports_go_to_the_desk_and_its_frames_go_out():
    desk = FakeCommands()
    a, conn, _, _ = actor(commands=desk)
    send(a, '{"type":"bot_command","id":"c","data":{"botId":"bot-1","command":"stop","params":{"why":"x"}}}')
    send(a, '{"type":"bot_command_status","id":"q","data":{"commandId":"abc"}}')
    assert [(kind, user) for kind, user, _ in desk.calls] == [("submit", "ann"), ("status", "ann")]
    assert desk.calls[0][2].params == {"why": "x"} and desk.calls[1][2].command_id == "abc"
    assert [m["type"] for m in conn.sent] == ["submit_answer", "status_answer"]
    # A user never reports: refused before the desk hears of it.
    send(a, '{"type":"bot_command_report","id":"r","data":{"commandId":"abc","userId":"ann","state":"accepted"}}')
    assert conn.sent[-1]["code"] == "forbidden" and len(desk.calls) == 2


def test_a_service_reports_and_registers_when_it_subscribes_to_bot_commands():
    desk = FakeCommands()
    a, _, directory, _ = actor(role="service", commands=desk)
    send(a, '{"type":"subscribe","channel":"bot-commands","id":"s"}')
    assert desk.registered == ["ann"] and directory.joined == ["bot-commands#ann"]
    send(a, '{"type":"bot_command_report","id":"r","data":{"commandId":"abc","userId":"bob","state":"failed",'
            '"result":{"why":"no funds"}}}')
    (kind, _, report), = desk.calls
    assert kind == "report" and report.user_id == "bob" and report.result == {"why": "no funds"}


def test_the_desks_refusal_is_an_error_reply_with_the_request_id():
    desk = FakeCommands(refuse=ProtocolError(ErrorCode.NO_SERVICE, "nobody owns bot-1", request_id="c"))
    a, conn, _, _ = actor(commands=desk)
    send(a, '{"type":"bot_command","id":"c","data":{"botId":"bot-1","command":"stop"}}')
    assert conn.sent[-1] == {"type": "error", "code": "no_service", "message": "nobody owns bot-1", "id": "c"}


def test_close_connection_closes_once():
    a, conn, _, _ = actor()
    a.on_receive(CloseConnection(4000, "token expired"))
    a.on_receive(CloseConnection(4000, "token expired"))
    assert conn.closed == [(4000, "token expired")]
