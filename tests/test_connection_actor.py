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
from brokers.broker import BrokerUnavailable, Publication
from metrics.definitions import build
from protocol.auth import AuthError, Principal
from protocol.channels import ChannelKey, Position
from protocol.errors import ProtocolError
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
    published: list[tuple[ChannelKey, Any]] = field(default_factory=list)
    services: int = 1
    broker_down: bool = False

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

    def service_receivers(self, key: ChannelKey) -> int:
        return self.services

    def publish_shared(self, key: ChannelKey, data: Any, ts: int) -> Publication:
        if self.broker_down:
            raise BrokerUnavailable("redis: down")
        self.published.append((key, data))
        return Publication(key, len(self.published), "e1", data, ts)


def _verify(token: str) -> Principal:
    if token == "good-for-ann":
        return Principal("ann", 2_000_000_000.0)
    if token == "good-for-bob":
        return Principal("bob", 2_000_000_000.0)
    raise AuthError("bad_signature", "the token signature is not valid")


def actor(*, rate: float = 5, burst: int = 5, errors: int = 3, max_channels: int = 4,
          bots: frozenset[str] | None = None) -> tuple[ConnectionActor, FakeConn, FakeDirectory, Clock]:
    conn, directory, clock = FakeConn(), FakeDirectory(), Clock()
    context = ConnectionContext(directory=directory, limits=ConnectionLimits(max_channels, rate, burst, errors),
                                verify=_verify, metrics=build(), clock=clock)
    session = Session("s1", Principal("ann", 2_000_000_000.0, bots=bots), outbox=None)  # type: ignore[arg-type]  # no outbox: the fake conn records
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


def test_a_bot_command_is_published_for_the_tokens_user_and_acknowledged():
    a, conn, directory, _ = actor(bots=frozenset({"bot-1"}))
    send(a, '{"type":"bot_command","id":"c","data":{"botId":"bot-1","command":"stop","params":{"why":"x"}}}')
    (key, data), = directory.published
    assert key == "bot-commands" and data["userId"] == "ann" and data["params"] == {"why": "x"}
    assert conn.sent[-1]["type"] == "bot_command_ack" and conn.sent[-1]["data"]["commandId"] == data["commandId"]
    send(a, '{"type":"bot_command","data":{"botId":"bot-2","command":"stop"}}')
    assert conn.sent[-1]["code"] == "forbidden" and len(directory.published) == 1


def test_a_bot_command_is_never_acknowledged_without_a_service_or_a_broker():
    a, conn, directory, _ = actor()
    directory.services = 0
    send(a, '{"type":"bot_command","data":{"botId":"b","command":"stop"}}')
    assert conn.sent[-1]["code"] == "no_service" and directory.published == []
    directory.services, directory.broker_down = 1, True
    send(a, '{"type":"bot_command","data":{"botId":"b","command":"stop"}}')
    assert conn.sent[-1]["code"] == "no_service" and not any(m["type"] == "bot_command_ack" for m in conn.sent)


def test_close_connection_closes_once():
    a, conn, _, _ = actor()
    a.on_receive(CloseConnection(4000, "token expired"))
    a.on_receive(CloseConnection(4000, "token expired"))
    assert conn.closed == [(4000, "token expired")]
