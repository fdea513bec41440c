"""The Python client library (clients/python, ``trading_gateway_client``): its core's rules, and real gateways.

The client is its own distribution: this module installs it into the test
virtualenv from ``clients/python`` (``pip install -e``, which brings its
pinned ``websockets``) when its dependencies are missing, and imports it
from the tree. The unit tests drive the pure core (:class:`ClientCore`)
frame by frame. The others run real gateway processes (``tests/harness.py``),
a real redis-server where history must survive, and publish through the
library's own :class:`Publisher`: whatever happens to the gateway (killed
and restarted, Redis down, the token expiring, a drain with 1001), the bot
sees every publication once and in order, or an explicit ``Resync``.
Assertions are about what was delivered, never about how long it took;
each test is bounded (``run(..., timeout=)``, waits with deadlines).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from protocol.close_codes import CLOSE_CODES as GATEWAY_CLOSE_CODES
from tests.harness import ROOT, GatewayProcess
from tests.redis_server import RedisServer, free_port

CLIENT = ROOT / "clients" / "python"
CLIENT_SRC = CLIENT / "src"


def ensure_client() -> None:
    """The client importable from the tree (its dependencies are in the test extras, setup.cfg)."""
    if str(CLIENT_SRC) not in sys.path:
        sys.path.insert(0, str(CLIENT_SRC))


ensure_client()

from trading_gateway_client import (  # noqa: E402 - importable once ensure_client() ran
    CLOSE_CODES,
    Action,
    AsyncClient,
    BlockingClient,
    BookView,
    BotCommandAck,
    BotCommandRefused,
    BotCommandRequest,
    BotCommandResult,
    ClientCore,
    ClosedByGateway,
    Connection,
    ConnectionLost,
    Data,
    Disconnected,
    ErrorMessage,
    HandshakeRefused,
    Kline,
    Position,
    Publication,
    Publisher,
    ReconnectPolicy,
    Refreshed,
    RefreshSchedule,
    ReportRefused,
    ReportRefusedError,
    RequestError,
    Resync,
    SeqGap,
    Subscribed,
    Ticker,
    TokenUnavailable,
    Trades,
)
from trading_gateway_client.errors import TerminalError  # noqa: E402
from trading_gateway_client.policy import jwt_expiry  # noqa: E402

KEY = "client-test-service-key-0123456789abcdef"
# Reconnect at once in tests: the same rules, smaller numbers.
FAST = ReconnectPolicy(base=0.05, cap=0.5, going_away_max=0.3, quick_max=0.1, connection_limit=(0.5, 1.0))

unit = pytest.mark.unit


def run(coro: Any, timeout: float = 25.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# =====================================================================================
# The close-code table: one copy in the client, equal to the gateway's
# =====================================================================================


@unit
def test_the_clients_close_code_table_equals_the_gateways():
    ours = {code: (info.name, info.reason, info.action.value, info.meaning) for code, info in CLOSE_CODES.items()}
    theirs = {int(code): (code.name, info.reason, info.action.value, info.meaning)
              for code, info in GATEWAY_CLOSE_CODES.items()}
    assert ours == theirs


@unit
def test_every_close_code_is_answered_as_its_row_says():
    policy = ReconnectPolicy()
    for code, info in CLOSE_CODES.items():
        decision = policy.after_close(code, info.reason, attempt=3, can_renew_token=True, closed_by_client=False,
                                      rng=random.Random(code))
        if code == 4501:  # revoked: not with this token; get_token is asked for another (see the core's test)
            assert decision.reconnect and decision.renew_token
            decision = policy.after_close(code, info.reason, attempt=3, can_renew_token=False,
                                          closed_by_client=False, rng=random.Random(code))
        if info.action is Action.DO_NOT_RECONNECT:
            assert not decision.reconnect and isinstance(decision.error, ClosedByGateway), code
            assert str(code) in str(decision.error) and "do not reconnect" in str(decision.error)
        elif info.action is Action.RECONNECT:
            assert decision.reconnect and decision.delay <= policy.going_away_max, code
        else:
            assert decision.reconnect and decision.error is None, code
            if code == 4503:
                assert 30.0 <= decision.delay <= 60.0  # never at once
            else:
                assert 0.0 <= decision.delay <= min(policy.cap, policy.base * 2 ** 3), code
    # A close the client asked for is not reconnected, whatever the code.
    assert policy.after_close(1000, "", attempt=0, can_renew_token=True, closed_by_client=True,
                              rng=random.Random()).reconnect is False
    # Codes the table does not name: read by range; 1006 is backed off.
    assert policy.after_close(4100, "", attempt=0, can_renew_token=True, closed_by_client=False,
                              rng=random.Random()).reconnect is True
    assert isinstance(policy.after_close(4600, "", attempt=0, can_renew_token=True, closed_by_client=False,
                                         rng=random.Random()).error, ClosedByGateway)
    assert policy.after_close(1006, "", attempt=0, can_renew_token=True, closed_by_client=False,
                              rng=random.Random()).reconnect is True


@unit
def test_1001_follows_the_gateways_hint_and_4000_needs_a_new_token():
    policy = ReconnectPolicy()
    rng = random.Random(1)
    hinted = policy.after_close(1001, "server shutting down; reconnect in 2345ms", attempt=0,
                                can_renew_token=True, closed_by_client=False, rng=rng)
    assert hinted.reconnect and hinted.delay == 2.345
    capped = policy.after_close(1001, "reconnect in 99999ms", attempt=0, can_renew_token=True,
                                closed_by_client=False, rng=rng)
    assert capped.delay == policy.going_away_max
    renew = policy.after_close(4000, "token expired", attempt=0, can_renew_token=True, closed_by_client=False,
                               rng=rng)
    assert renew.reconnect and renew.renew_token and renew.delay <= policy.quick_max
    stuck = policy.after_close(4000, "token expired", attempt=0, can_renew_token=False, closed_by_client=False,
                               rng=rng)
    assert not stuck.reconnect and isinstance(stuck.error, TokenUnavailable)


@unit
def test_backoff_is_full_jitter_under_a_doubling_cap():
    policy = ReconnectPolicy(base=1.0, cap=30.0)
    rng = random.Random(7)
    for attempt in range(12):
        bound = min(30.0, 2.0 ** attempt)
        delays = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in delays)
        assert min(delays) < bound * 0.1 and max(delays) > bound * 0.9  # spread over the whole range
    assert policy.backoff(10_000, rng) <= 30.0


@unit
def test_refused_upgrades_retry_only_what_can_succeed():
    policy = ReconnectPolicy()
    rng = random.Random(3)
    expired = policy.after_refusal(401, "token_expired", "expired", attempt=0, can_renew_token=True,
                                   retry_after=None, rng=rng)
    assert expired.reconnect and expired.renew_token
    forged = policy.after_refusal(401, "token_bad_signature", "bad", attempt=0, can_renew_token=True,
                                  retry_after=None, rng=rng)
    assert isinstance(forged.error, HandshakeRefused) and "401" in str(forged.error)
    assert isinstance(policy.after_refusal(403, "origin_not_allowed", "", attempt=0, can_renew_token=True,
                                           retry_after=None, rng=rng).error, HandshakeRefused)
    busy = policy.after_refusal(503, "at_capacity", "", attempt=0, can_renew_token=True, retry_after=5.0, rng=rng)
    assert busy.reconnect and busy.delay >= 5.0
    limited = ReconnectPolicy(max_attempts=2).after_failure(2, rng)
    assert not limited.reconnect and isinstance(limited.error, TerminalError)


# =====================================================================================
# The core, frame by frame
# =====================================================================================

EPOCH = "e1"


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def connection(now: float = 1000.0, ttl: float = 3600.0) -> str:
    return frame(type="connection", status="connected", sessionId="s-1", userId="alice",
                 serverTime=int(now * 1000), heartbeatInterval=30000, expiresAt=int((now + ttl) * 1000),
                 limits={"maxConnectionsPerUser": 5, "maxChannels": 100, "maxMessageSize": 65536})


def data(channel: str, seq: int, epoch: str | None = EPOCH, **extra: Any) -> str:
    msg: dict[str, Any] = {"type": "data", "channel": channel, "seq": seq, "ts": 1, "data": {"i": seq}, **extra}
    if epoch is not None:
        msg["epoch"] = epoch
    return json.dumps(msg)


def sent(core: ClientCore) -> list[dict[str, Any]]:
    return [json.loads(f) for f in core.take_outgoing()]


def open_core(core: ClientCore, now: float = 1000.0) -> list[dict[str, Any]]:
    core.opened(now)
    core.receive(connection(now), now)
    return sent(core)


def new_core(**kwargs: Any) -> ClientCore:
    core = ClientCore("ws://gw/ws", rng=random.Random(0), **kwargs)
    core.set_token("a.b.c", 1000.0)
    core.connect_request()
    return core


@unit
def test_the_token_travels_in_the_subprotocol_header_never_in_the_url():
    core = ClientCore(["ws://a/ws", "ws://b/ws"])
    core.set_token("eyJ.x.y", 0.0)
    request = core.connect_request()
    assert request.url == "ws://a/ws" and "eyJ" not in request.url
    assert request.subprotocols == ("trading.v1", "bearer.eyJ.x.y")
    core.opened(0.0)
    core.closed(1006, "", 1.0)
    assert core.connect_request().url == "ws://b/ws"  # the next node on the next attempt
    with pytest.raises(ValueError):
        ClientCore("ws://gw/ws?token=abc")
    with pytest.raises(ValueError):
        core.set_token("has space", 0.0)


@unit
def test_positions_are_the_last_delivered_message_never_subscribed_offset():
    core = new_core()
    intent = core.subscribe("trades")
    frames = open_core(core)
    assert frames == [{"type": "subscribe", "channel": "trades", "id": intent.id}]
    core.receive(frame(type="subscribed", channel="trades", id=intent.id, offset=5, epoch=EPOCH), 1000.0)
    assert core.positions["trades"] == Position(5, EPOCH)  # nothing delivered before: the head is the position
    for seq in (6, 7):
        [event] = core.receive(data("trades", seq), 1000.0)
        assert isinstance(event, Data) and event.position == Position(seq, EPOCH)
    core.closed(1006, "", 1001.0)
    # The next connection resubscribes with the same id, from the last delivered message.
    assert open_core(core) == [{"type": "subscribe", "channel": "trades", "id": intent.id,
                                "since": {"offset": 7, "epoch": EPOCH}}]
    core.receive(frame(type="subscribed", channel="trades", id=intent.id, recovered=True, offset=10, epoch=EPOCH),
                 1002.0)
    assert core.positions["trades"] == Position(7, EPOCH)  # NOT 10: 8-10 are still to come
    core.receive(data("trades", 8), 1002.0)
    core.closed(1006, "", 1003.0)  # dropped during the replay
    assert open_core(core)[0]["since"] == {"offset": 8, "epoch": EPOCH}
    core.receive(frame(type="subscribed", channel="trades", id=intent.id, recovered=True, offset=10, epoch=EPOCH),
                 1004.0)
    delivered = [e for seq in (8, 9, 10, 10, 11) for e in core.receive(data("trades", seq), 1004.0)]
    assert [e.seq for e in delivered] == [9, 10, 11]  # 8 and the second 10 were duplicates
    assert core.stats["duplicates_dropped"] == 2


@unit
def test_every_loss_is_an_explicit_resync():
    core = new_core(positions={"positions": (3, EPOCH)})
    intent = core.subscribe("positions")
    assert open_core(core)[0]["since"] == {"offset": 3, "epoch": EPOCH}
    events = core.receive(frame(type="subscribed", channel="positions", id=intent.id, recovered=False, offset=40,
                                epoch="e2"), 1000.0)
    assert isinstance(events[1], Resync) and events[1].source == "not_recovered"
    assert core.positions["positions"] == Position(40, "e2")
    [resync] = core.receive(frame(type="resync", channel="positions", reason="the broker reconnected", offset=0,
                                  epoch="e3"), 1000.0)
    assert resync.source == "server" and core.positions["positions"] == Position(0, "e3")
    assert [type(e) for e in core.receive(data("positions", 1, "e3"), 1000.0)] == [Data]
    gap = core.receive(data("positions", 4, "e3"), 1000.0)
    assert [type(e) for e in gap] == [Resync, Data] and gap[0].source == "gap" and gap[0].offset == 3
    changed = core.receive(data("positions", 1, "e4"), 1000.0)
    assert [type(e) for e in changed] == [Resync, Data] and changed[0].source == "epoch_changed"
    # A resync without a position: the next data message is the position.
    core.receive(frame(type="resync", channel="positions", reason="broker unavailable"), 1000.0)
    assert core.positions["positions"] is None
    assert [type(e) for e in core.receive(data("positions", 77, "e5"), 1000.0)] == [Data]
    assert core.positions["positions"] == Position(77, "e5")


@unit
def test_seq_gap_tracking_resets_on_every_subscribed():
    core = new_core()
    params = {"symbol": "BTCUSDT", "streams": ["trades", "ticker"]}
    intent = core.subscribe("market-data", params)
    open_core(core)
    confirmed = frame(type="subscribed", channel="market-data", id=intent.id,
                      data={"symbol": "BTCUSDT", "exchange": "bybit", "category": "spot",
                            "streams": ["trades", "ticker"]})

    def md(stream: str, seq: int) -> list[Any]:
        return core.receive(json.dumps({"type": "data", "channel": "market-data", "symbol": "BTCUSDT",
                                        "stream": stream, "seq": seq, "ts": 1,
                                        "data": {"symbol": "BTCUSDT", "category": "spot"}}), 1000.0)

    core.receive(confirmed, 1000.0)
    assert [type(e) for e in md("trades", 40) + md("trades", 41)] == [Data, Data]  # 40: the baseline
    gap = md("trades", 44)
    assert isinstance(gap[0], SeqGap) and (gap[0].expected, gap[0].got) == (42, 44)
    assert [type(e) for e in md("ticker", 5) + md("ticker", 9)] == [Data, Data]  # latest values: no gap
    assert [type(e) for e in md("trades", 3)] == [Data]  # lower: the channel restarted, a new baseline
    core.closed(1006, "", 1001.0)
    open_core(core)
    core.receive(confirmed, 1002.0)
    assert [type(e) for e in md("trades", 100)] == [Data]  # another node counts on its own: a new baseline
    assert core.stats["seq_gaps"] == 1


@unit
def test_the_token_is_refreshed_before_it_expires_and_again_when_it_did_not_move():
    core = new_core(refresh=RefreshSchedule(fraction=0.25, max_lead=60.0, retry_after=5.0))
    core.opened(1000.0)
    core.receive(connection(1000.0, ttl=40.0), 1000.0)
    assert core.next_deadline() == pytest.approx(1030.0)  # a quarter of 40 s before the end
    assert not core.tick(1029.0) and core.tick(1030.0)
    rid = core.refresh("new.token.x", 1030.0)
    assert sent(core) == [{"type": "refresh", "token": "new.token.x", "id": rid}]
    assert core.next_deadline() is None  # in flight
    core.receive(frame(type="refreshed", id=rid, expiresAt=int(1070.0 * 1000)), 1030.0)
    assert core.token == "new.token.x"  # the next connection uses it too
    assert core.next_deadline() == pytest.approx(1060.0)
    rid = core.refresh("same.token.x", 1060.0)
    core.receive(frame(type="refreshed", id=rid, expiresAt=int(1070.0 * 1000)), 1060.0)
    assert core.next_deadline() == pytest.approx(1065.0)  # no later expiry: try again soon
    rid = core.refresh("bad.token.x", 1065.0)
    core.receive(frame(type="error", code="invalid_token", message="expired", id=rid), 1065.0)
    assert 1065.0 < core.next_deadline() < 1070.0
    long_lived = new_core()
    long_lived.opened(0.0)
    long_lived.receive(connection(0.0, ttl=3600.0), 0.0)
    assert long_lived.next_deadline() == pytest.approx(3540.0)  # at most a minute early
    assert jwt_expiry("x." + "eyJleHAiOjE3MDB9" + ".y") == 1700.0 and jwt_expiry("garbage") is None


@unit
def test_refused_subscribes_are_forgotten_unless_the_refusal_is_temporary():
    core = new_core()
    forbidden = core.subscribe("bot-commands")
    busy = core.subscribe("signals")
    open_core(core)
    core.receive(frame(type="error", code="forbidden", message="services only", id=forbidden.id,
                       channel="bot-commands"), 1000.0)
    core.receive(frame(type="error", code="rate_limited", message="slow down", id=busy.id), 1000.0)
    assert forbidden.id not in core.intents and core.retrying(busy.id)
    assert not core.tick(1000.1) and sent(core) == []
    deadline = core.next_deadline()
    assert deadline is not None
    core.tick(deadline)
    assert sent(core) == [{"type": "subscribe", "channel": "signals", "id": busy.id}]


@unit
def test_the_order_book_follows_views_resyncs_and_disconnects():
    core = new_core()
    intent = core.subscribe("market-data", {"symbol": "BTCUSDT", "streams": ["orderbook"]})
    open_core(core)
    core.receive(frame(type="subscribed", channel="market-data", id=intent.id,
                       data={"symbol": "BTCUSDT", "exchange": "bybit", "category": "spot",
                             "streams": ["orderbook.50"]}), 1000.0)
    book = core.book("BTCUSDT")
    assert book is not None and not book.ready

    def view(seq: int, bid: str, ask: str, **extra: Any) -> list[Any]:
        body = {"symbol": "BTCUSDT", "category": "spot", "depth": 50, "bids": [[bid, "1.5"]], "asks": [[ask, "2"]],
                "updateId": seq, "seq": seq, "ts": 1, "reset": False, "receivedAt": 1, **extra}
        return core.receive(json.dumps({"type": "data", "channel": "market-data", "symbol": "BTCUSDT",
                                        "stream": "orderbook.50", "seq": seq, "ts": 1, "data": body}), 1000.0)

    [event] = view(1, "100.5", "100.7", reset=True)
    assert isinstance(event.payload, BookView) and book.ready
    assert str(book.best_bid.price) == "100.5" and str(book.spread) == "0.2"
    resync = core.receive(json.dumps({"type": "data", "channel": "market-data", "symbol": "BTCUSDT",
                                      "stream": "orderbook.50", "seq": 2, "ts": 1,
                                      "data": {"symbol": "BTCUSDT", "category": "spot", "bids": [], "asks": [],
                                               "reset": True, "resync": True, "reason": "lost u=7"}}), 1000.0)
    assert [type(e) for e in resync] == [Resync] and resync[0].source == "book" and resync[0].reason == "lost u=7"
    assert not book.ready and book.best_bid is None
    view(3, "101", "102", reset=True)
    assert book.ready and book.mid == 101.5
    core.closed(1006, "", 1001.0)
    assert not book.ready and book.stale and book.best_bid is not None  # kept, but not trusted


# =====================================================================================
# Bot commands in the core: a bot's commands, a service's reports
# =====================================================================================


def ack_frame(pending: Any, *, state: str = "sent", duplicate: bool = False, rid: str | None = None) -> str:
    body: dict[str, Any] = {"commandId": pending.command_id, "state": state, "duplicate": duplicate}
    if not duplicate:
        body["deliveredTo"] = 1
    return frame(type="bot_command_ack", id=rid or pending.request_id, data=body)


def result_frame(command_id: str, state: str, result: Any = None, rid: str | None = None, bot: str = "bot-7",
                 command: str = "stop") -> str:
    msg: dict[str, Any] = {"type": "bot_command_result", "data": {"commandId": command_id, "botId": bot,
                                                                   "command": command, "state": state,
                                                                   "result": result, "ts": 1}}
    if rid is not None:
        msg["id"] = rid
    return json.dumps(msg)


def states(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.command_id, e.state) for e in events if isinstance(e, BotCommandResult)]


@unit
def test_a_command_gets_an_id_of_its_own_and_each_state_is_delivered_once():
    core = new_core()
    open_core(core)
    pending = core.send_command("bot-7", "stop", {"reason": "x"}, timeout_ms=5000)
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", pending.command_id)
    assert sent(core) == [{"type": "bot_command", "id": pending.request_id,
                           "data": {"botId": "bot-7", "command": "stop", "params": {"reason": "x"},
                                    "commandId": pending.command_id, "timeoutMs": 5000}}]
    assert core.send_command("bot-7", "stop", {"reason": "y"}).command_id != pending.command_id  # a new id each
    ack = core.receive(ack_frame(pending), 1000.0)
    assert ack == [BotCommandAck(pending.command_id, 1, pending.request_id, "sent", False)]
    cid = pending.command_id
    events = [e for text in (result_frame(cid, "accepted"), result_frame(cid, "accepted"),
                             result_frame(cid, "succeeded", {"ok": 1}), result_frame(cid, "succeeded", {"ok": 1}),
                             result_frame(cid, "accepted"))
              for e in core.receive(text, 1000.0)]
    assert states(events) == [(cid, "accepted"), (cid, "succeeded")]  # each once, forward only
    assert events[-1].result == {"ok": 1} and events[-1].finished and events[-1].ok
    assert cid not in core.tracker.commands  # a final state ends tracking
    # A command of the user's other connection (not tracked here) is delivered too, once per state.
    assert states(core.receive(result_frame("other-1", "failed"), 1000.0)) == [("other-1", "failed")]
    assert core.receive(result_frame("other-1", "failed"), 1000.0) == []
    with pytest.raises(ValueError):
        core.send_command("bot-7", "stop", command_id="has space")
    with pytest.raises(ValueError):
        core.send_command("bot-7", "stop", timeout_ms=999)
    with pytest.raises(ValueError):  # an id in use for another command
        core.send_command("bot-8", "stop", command_id=core.send_command("bot-7", "go", command_id="mine").command_id)


@unit
def test_after_a_reconnect_unacked_commands_are_resent_and_the_others_are_asked_for():
    core = new_core()
    open_core(core)
    acked = core.send_command("bot-7", "stop", command_id="acked-1")
    lost = core.send_command("bot-7", "start", {"size": 1}, command_id="lost-ack")
    first = sent(core)
    core.receive(ack_frame(acked), 1000.0)
    assert states(core.receive(result_frame("acked-1", "accepted"), 1000.0)) == [("acked-1", "accepted")]
    core.closed(1006, "", 1001.0)
    offline = core.send_command("bot-9", "pause", command_id="offline")  # while disconnected: queued
    assert sent(core) == []
    frames = open_core(core, 1002.0)
    queries = [f for f in frames if f["type"] == "bot_command_status"]
    assert queries == [{"type": "bot_command_status", "id": queries[0]["id"], "data": {"commandId": "acked-1"}}]
    resends = [f for f in frames if f["type"] == "bot_command"]
    assert resends == [first[1], {"type": "bot_command", "id": offline.request_id,
                                  "data": {"botId": "bot-9", "command": "pause", "commandId": "offline"}}]
    # The status answer repeats a state already delivered: dropped. The push after it is new.
    assert core.receive(result_frame("acked-1", "accepted", rid=queries[0]["id"]), 1002.0) == []
    assert states(core.receive(result_frame("acked-1", "succeeded"), 1002.0)) == [("acked-1", "succeeded")]
    # The resend is answered as a duplicate with the current state, then that state: delivered once.
    dup = core.receive(ack_frame(lost, state="accepted", duplicate=True), 1002.0)
    assert dup[0].duplicate and dup[0].state == "accepted"
    assert states(core.receive(result_frame("lost-ack", "accepted", bot="bot-7", command="start"), 1002.0)) == \
        [("lost-ack", "accepted")]
    # Two reconnects later nothing is delivered twice; only unfinished commands are asked for.
    core.closed(1006, "", 1003.0)
    frames = open_core(core, 1004.0)
    assert sorted(f["data"]["commandId"] for f in frames if f["type"] == "bot_command_status") == ["lost-ack"]
    rid = next(f["id"] for f in frames if f["type"] == "bot_command_status")
    assert core.receive(result_frame("lost-ack", "accepted", rid=rid, command="start"), 1004.0) == []
    assert core.stats["connections"] == 3 and core.tracker.stats["results_dropped"] == 2


@unit
def test_refusals_end_tracking_and_not_now_is_asked_again_with_the_same_id():
    core = new_core()
    open_core(core)
    nobody = core.send_command("bot-1", "stop", command_id="nobody")
    busy = core.send_command("bot-1", "stop", command_id="busy")
    maybe = core.send_command("bot-1", "stop", command_id="maybe")
    sent(core)
    refused = core.receive(frame(type="error", code="no_service", message="no service that owns bot 'bot-1' is "
                                 "connected; nothing was sent", id=nobody.request_id), 1000.0)
    assert refused == [BotCommandRefused("nobody", "bot-1", "stop", "no_service", refused[0].message,
                                         nobody.request_id)]
    core.receive(frame(type="error", code="rate_limited", message="slow down", id=busy.request_id), 1000.0)
    core.receive(frame(type="error", code="no_service", message="bot services cannot be reached now; the command "
                       "may have been sent: ask bot_command_status", id=maybe.request_id), 1000.0)
    assert "nobody" not in core.tracker.commands
    assert core.retrying(busy.request_id) and core.retrying(maybe.request_id)
    deadline = core.next_deadline()
    assert deadline is not None and 1000.0 < deadline <= 1000.75
    core.tick(1001.0)
    again = sent(core)
    assert sorted(f["data"]["commandId"] for f in again) == ["busy", "maybe"]
    assert all(f["type"] == "bot_command" for f in again)
    core.receive(ack_frame(busy), 1001.0)
    core.closed(1006, "", 1002.0)
    frames = open_core(core, 1003.0)
    query = next(f for f in frames if f["type"] == "bot_command_status")
    lost = core.receive(frame(type="error", code="not_found", message="no command", id=query["id"]), 1003.0)
    assert [(e.command_id, e.code) for e in lost] == [("busy", "not_found")]  # the gateway lost it: unknown
    assert "busy" not in core.tracker.commands and "maybe" in core.tracker.commands


@unit
def test_reports_go_in_order_until_acknowledged_and_invalid_state_is_final():
    core = new_core()
    accepted = core.report("c-1", "grace", "accepted")  # before the connection: sent on it
    done = core.report("c-1", "grace", "succeeded", {"stoppedAt": 5})
    other = core.report("c-2", "grace", "failed", {"why": "no funds"})
    frames = open_core(core)
    assert frames == [
        {"type": "bot_command_report", "id": accepted.request_id,
         "data": {"commandId": "c-1", "userId": "grace", "state": "accepted"}},
        {"type": "bot_command_report", "id": other.request_id,
         "data": {"commandId": "c-2", "userId": "grace", "state": "failed", "result": {"why": "no funds"}}},
    ]  # succeeded waits for accepted's answer: never overtakes it
    assert core.survives(done.request_id)
    core.receive(frame(type="bot_command_report_ack", id=accepted.request_id,
                       data={"commandId": "c-1", "state": "accepted"}), 1000.0)
    assert sent(core) == [{"type": "bot_command_report", "id": done.request_id,
                           "data": {"commandId": "c-1", "userId": "grace", "state": "succeeded",
                                    "result": {"stoppedAt": 5}}}]
    core.receive(frame(type="error", code="rate_limited", message="slow down", id=other.request_id), 1000.0)
    assert core.retrying(other.request_id)
    core.closed(1006, "", 1001.0)  # succeeded's answer is lost with the connection
    frames = open_core(core, 1002.0)
    assert [f["id"] for f in frames] == [done.request_id, other.request_id]
    refused = core.receive(frame(type="error", code="invalid_state", message="the command is succeeded: it cannot "
                                 "become succeeded", id=done.request_id), 1002.0)
    assert refused == [ReportRefused("c-1", "grace", "succeeded", "invalid_state", refused[0].message,
                                     "succeeded", True, done.request_id)]
    assert not core.survives(done.request_id) and not core.retrying(done.request_id)
    core.tick(1100.0)
    assert sent(core) == []  # refused for good: not sent again
    with pytest.raises(ValueError):
        core.report("c-3", "grace", "timed_out")


@unit
def test_a_revoked_token_is_replaced_once_by_get_token_or_stops_the_client():
    policy = ReconnectPolicy()
    rng = random.Random(4)
    assert isinstance(policy.after_close(4501, "token revoked", attempt=0, can_renew_token=False,
                                         closed_by_client=False, rng=rng).error, ClosedByGateway)
    assert policy.after_close(4004, "disconnected by an operator", attempt=0, can_renew_token=False,
                              closed_by_client=False, rng=rng).reconnect  # the token is still good
    core = new_core()
    open_core(core)
    decision, event = core.closed(4501, "token revoked", 1001.0)
    assert decision.reconnect and decision.renew_token and event.reconnect_in is not None
    assert core.token_needed(1001.0)
    with pytest.raises(ClosedByGateway):  # get_token gave the revoked token again
        core.set_token("a.b.c", 1002.0)
    core = new_core()
    open_core(core)
    core.closed(4501, "token revoked", 1001.0)
    core.set_token("d.e.f", 1002.0)  # another token: tried
    core.connect_request()
    decision, _ = core.refused(401, "token_revoked", "revoked", 1003.0)
    assert not decision.reconnect and isinstance(decision.error, HandshakeRefused)  # revoked twice in a row
    static = new_core(can_renew_token=False)
    open_core(static)
    decision, _ = static.closed(4501, "token revoked", 1001.0)
    assert not decision.reconnect and isinstance(decision.error, ClosedByGateway)


@unit
def test_the_readme_bot_is_python_and_uses_only_the_public_api():
    readme = (CLIENT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert code is not None
    tree = ast.parse(code.group(1))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "trading_gateway_client" for alias in node.names}
    import trading_gateway_client

    assert imported and imported <= set(trading_gateway_client.__all__)


# =====================================================================================
# Against real gateways
# =====================================================================================


class Feed:
    """Publishes ``{"i": 0, 1, ...}`` on a user's channel from a thread, through the library's Publisher."""

    def __init__(self, url: str, user: str, channel: str = "trades", *, pace: float = 0.01, **publisher: Any):
        self.publisher = Publisher(url, api_key=KEY, **{"retries": 400, "backoff_cap": 0.1, **publisher})
        self.user, self.channel, self.pace = user, channel, pace
        self.published: list[Any] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.published.append(self.publisher.publish(self.channel, self.user, {"i": i}))
            except Exception as exc:  # noqa: BLE001 - reported by finish()
                self.errors.append(exc)
                return
            i += 1
            time.sleep(self.pace)

    def finish(self) -> int:
        self._stop.set()
        self._thread.join(30)
        assert not self.errors, self.errors
        return len(self.published)


class Recorder:
    """Everything an AsyncClient delivers, in order; ``until`` waits for a condition, with a deadline."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for event in self.client:
                self.events.append(event)
                self._changed.set()
        except TerminalError as exc:
            self.error = exc
            self._changed.set()

    async def sync(self) -> None:
        """Everything the gateway sent before now has been recorded: a ping's pong is, after it."""
        pong = await self.client.ping()
        await self.until(lambda: pong in self.events, "the pong")

    async def finished(self) -> None:
        """After the client was closed: every event recorded, the last one its Disconnected (1000)."""
        await asyncio.wait_for(self.task, 10)

    def of(self, kind: type, channel: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (channel is None or e.channel == channel)]

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.error is not None:
                raise AssertionError(f"the client stopped waiting for {what}: {self.error!r}")
            left = deadline - time.monotonic()
            assert left > 0, f"{what}: not within {timeout} s; last events: {self.events[-5:]}"
            self._changed.clear()
            if not condition():
                try:
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
                except TimeoutError:
                    pass


def delivered(events: list[Any], channel: str = "trades") -> list[int]:
    return [e.data["i"] for e in events if isinstance(e, Data) and e.channel == channel]


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def stoppers() -> Iterator[list[Callable[[], Any]]]:
    """Processes started by a test, stopped after it whatever happened."""
    stops: list[Callable[[], Any]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def start(stoppers: list[Callable[[], Any]], env: dict[str, str]) -> GatewayProcess:
    gw = GatewayProcess(env).start()
    stoppers.append(gw.stop)
    return gw


@pytest.mark.slow
def test_a_gateway_killed_and_restarted_mid_stream_loses_and_repeats_nothing(redis, stoppers):
    port = free_port()
    env = {"REDIS_URL": redis.url, "SERVICE_API_KEY": KEY, "HISTORY_SIZE": "2000"}
    node = start(stoppers, {**env, "PORT": str(port)})
    other = start(stoppers, {**env, "JWT_SECRET": node.secret})  # publishes while the first one is down

    async def scenario() -> None:
        async with AsyncClient(f"ws://127.0.0.1:{port}/ws", get_token=lambda: node.token("alice"),
                               policy=FAST) as client:
            rec = Recorder(client)
            await client.subscribe("trades")
            feed = Feed(other.http, "alice").start()
            await rec.until(lambda: len(delivered(rec.events)) >= 20, "20 messages before the kill")
            await asyncio.to_thread(node.stop, signal.SIGKILL)
            restarted = GatewayProcess({**env, "PORT": str(port), "JWT_SECRET": node.secret})
            stoppers.append(restarted.stop)
            await asyncio.to_thread(restarted.start)
            await rec.until(lambda: len(rec.of(Connection)) >= 2, "a new connection to the restarted process")
            seen = len(feed.published)
            await rec.until(lambda: len(delivered(rec.events)) >= seen + 10, "messages after the restart")
            total = feed.finish()
            await rec.until(lambda: len(delivered(rec.events)) >= total, "every publication")
            await rec.sync()  # anything still in flight arrives before the pong
        await rec.finished()
        assert delivered(rec.events) == list(range(total))  # each once, in order
        assert rec.of(Resync) == []  # the history survived in Redis: nothing to resync
        assert any(e.code == 1006 for e in rec.of(Disconnected))

    run(scenario())


@pytest.mark.slow
def test_a_redis_outage_delivers_every_publication_once_or_says_resync(redis, stoppers):
    node = start(stoppers, {"REDIS_URL": redis.url, "SERVICE_API_KEY": KEY})

    def broker_connected() -> bool:
        with urllib.request.urlopen(node.http + "/health", timeout=5) as response:
            return bool(json.loads(response.read())["components"]["broker"]["connected"])

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, get_token=lambda: node.token("bob"), policy=FAST) as client:
            rec = Recorder(client)
            await client.subscribe("trades")
            # The feed retries 503 broker_unavailable until Redis is back: nothing published is lost by it.
            feed = Feed(node.http, "bob").start()
            await rec.until(lambda: len(delivered(rec.events)) >= 15, "15 messages before the outage")
            redis.stop()
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(broker_connected):
                assert time.monotonic() < deadline, "the gateway did not notice the outage"
                await asyncio.sleep(0.05)
            redis.start()  # same port, empty: the history is gone
            await rec.until(lambda: bool(rec.of(Resync)), "a resync after the outage")
            first_epoch = feed.published[0].epoch
            await rec.until(lambda: sum(p.epoch != first_epoch for p in feed.published) >= 10,
                            "publications accepted after the outage")
            total = feed.finish()
            await rec.until(lambda: any(isinstance(e, Data) and e.data["i"] == total - 1 for e in rec.events),
                            "the last publication")
            await rec.sync()
        await rec.finished()
        got = delivered(rec.events)
        assert got == sorted(set(got))  # in order, none twice
        missing = set(range(total)) - set(got)
        # What was accepted after the outage arrives; what the empty Redis lost was accepted before it,
        # and the client was told so by a resync before the first message of the new history.
        assert all(feed.published[i].epoch == first_epoch for i in missing)
        first_new = next(i for i, e in enumerate(rec.events) if isinstance(e, Data) and e.epoch != first_epoch)
        assert any(isinstance(e, Resync) for e in rec.events[:first_new])
        assert [e.code for e in rec.of(Disconnected)] == [1000]  # the connection stayed up: only our close

    run(scenario())


@pytest.mark.slow
def test_a_token_expiring_mid_stream_is_refreshed_on_the_same_connection(stoppers):
    node = start(stoppers, {"SERVICE_API_KEY": KEY, "JWT_LEEWAY": "0"})  # closes at exp, not 10 s later
    issued: list[str] = []

    def get_token() -> str:
        issued.append(node.token("carol", ttl=3))
        return issued[-1]

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, get_token=get_token, policy=FAST) as client:
            rec = Recorder(client)
            await client.subscribe("trades")
            feed = Feed(node.http, "carol").start()
            await rec.until(lambda: len(rec.of(Refreshed)) >= 2, "two refreshes", timeout=20)
            total = feed.finish()
            await rec.until(lambda: len(delivered(rec.events)) >= total, "every publication")
            await rec.sync()
        await rec.finished()
        assert delivered(rec.events) == list(range(total))
        assert len(rec.of(Connection)) == 1 and [e.code for e in rec.of(Disconnected)] == [1000]  # no reconnect
        assert len(issued) >= 3

    run(scenario())


@pytest.mark.slow
def test_a_token_expiring_without_refresh_reconnects_with_a_new_one_and_recovers(stoppers):
    node = start(stoppers, {"SERVICE_API_KEY": KEY, "JWT_LEEWAY": "0"})

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, get_token=lambda: node.token("dave", ttl=2), auto_refresh=False,
                               policy=FAST) as client:
            rec = Recorder(client)
            await client.subscribe("trades")
            feed = Feed(node.http, "dave").start()
            await rec.until(lambda: any(e.code == 4000 for e in rec.of(Disconnected)), "a 4000 close")
            await rec.until(lambda: len(rec.of(Connection)) >= 2, "a new connection")
            seen = len(feed.published)
            await rec.until(lambda: len(delivered(rec.events)) >= seen + 5, "messages after the reconnect")
            total = feed.finish()
            await rec.until(lambda: len(delivered(rec.events)) >= total, "every publication")
            await rec.sync()
        await rec.finished()
        assert delivered(rec.events) == list(range(total))
        assert rec.of(Resync) == []

    run(scenario())


@pytest.mark.slow
def test_a_drain_with_1001_moves_the_blocking_client_to_another_node(redis, stoppers):
    env = {"REDIS_URL": redis.url, "SERVICE_API_KEY": KEY}
    draining = start(stoppers, env)
    staying = start(stoppers, {**env, "JWT_SECRET": draining.secret})
    events: list[Any] = []
    lock = threading.Condition()

    def record(event: Any) -> None:
        with lock:
            events.append(event)
            lock.notify_all()

    def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        with lock:
            assert lock.wait_for(condition, timeout), f"{what}: not within {timeout} s; last: {events[-5:]}"

    client = BlockingClient([draining.ws_url, staying.ws_url], get_token=lambda: draining.token("erin"),
                            on_event=record, policy=FAST)
    with client:
        client.subscribe("trades")
        feed = Feed(staying.http, "erin").start()
        wait_for(lambda: len(delivered(events)) >= 20, "20 messages before the drain")
        draining.stop()  # SIGTERM: 1001 to every client, then exit
        wait_for(lambda: len([e for e in events if isinstance(e, Connection)]) >= 2, "the other node")
        seen = len(feed.published)
        wait_for(lambda: len(delivered(events)) >= seen + 10, "messages after the drain")
        total = feed.finish()
        wait_for(lambda: len(delivered(events)) >= total, "every publication")
        client.ping()
    closes = [e.code for e in events if isinstance(e, Disconnected)]
    assert closes[0] == 1001 and closes[-1] == 1000  # the drain, then our own close
    assert delivered(events) == list(range(total))
    assert not any(isinstance(e, Resync) for e in events)


@pytest.mark.slow
@pytest.mark.parametrize("shell", ["asyncio", "blocking"])
def test_terminal_codes_stop_the_client_with_a_clear_exception(shell, stoppers):
    node = start(stoppers, {"WS_MAX_MESSAGE_SIZE": "1024"})
    big = {"blob": "x" * 2000}  # over the inbound limit: 1009, "do not reconnect"
    forged = node.token("frank", secret="another-secret-of-at-least-32-bytes!!")
    if shell == "asyncio":
        async def scenario() -> tuple[BaseException, BaseException]:
            client = AsyncClient(node.ws_url, get_token=lambda: node.token("frank"), policy=FAST)
            await client.start()
            await client.wait_connected(10)
            with pytest.raises(ConnectionLost):
                await client.ping(big)
            with pytest.raises(ClosedByGateway) as closed:
                await client.join()
            refused_client = AsyncClient(node.ws_url, token=forged, policy=FAST)
            await refused_client.start()
            with pytest.raises(HandshakeRefused) as refused:
                await refused_client.join()
            return closed.value, refused.value

        closed, refused = run(scenario())
    else:
        client = BlockingClient(node.ws_url, get_token=lambda: node.token("frank"), policy=FAST).start()
        client.wait_connected(10)
        with pytest.raises(ConnectionLost):
            client.ping(big)
        with pytest.raises(ClosedByGateway) as closed_info:
            client.join(10)
        refused_client = BlockingClient(node.ws_url, token=forged, policy=FAST).start()
        with pytest.raises(HandshakeRefused) as refused_info:
            refused_client.join(10)
        closed, refused = closed_info.value, refused_info.value
    assert closed.code == 1009 and "1009 MESSAGE_TOO_BIG" in str(closed) and "do not reconnect" in str(closed)
    assert refused.status == 401 and refused.error == "token_bad_signature"


@pytest.mark.slow
def test_an_expired_static_token_stops_the_client(stoppers):
    node = start(stoppers, {"JWT_LEEWAY": "0"})

    async def scenario() -> None:
        client = AsyncClient(node.ws_url, token=node.token("gina", ttl=1), policy=FAST)
        await client.start()
        with pytest.raises(TokenUnavailable):
            await client.join()

    run(scenario())


@pytest.mark.slow
def test_a_service_receives_typed_bot_commands_and_answers_on_bot_status(stoppers):
    node = start(stoppers, {})
    service_token = node.token("bot-engine", role="service")

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, token=service_token, policy=FAST) as service, \
                AsyncClient(node.ws_url, get_token=lambda: node.token("hank"), policy=FAST) as bot:
            commands, statuses = Recorder(service), Recorder(bot)
            with pytest.raises(RequestError) as refused:  # a user token may not subscribe to bot-commands
                await bot.subscribe("bot-commands")
            assert refused.value.code == "forbidden"
            await service.subscribe("bot-commands")
            await bot.subscribe("bot-status")
            ack = await bot.bot_command("bot-7", "stop", {"reason": "test"})
            assert isinstance(ack, BotCommandAck) and ack.delivered_to == 1
            await commands.until(lambda: bool(commands.of(Data, "bot-commands")), "the command")
            command = commands.of(Data, "bot-commands")[0].payload
            assert isinstance(command, BotCommandRequest)
            assert (command.user_id, command.bot_id, command.command, command.params) == \
                ("hank", "bot-7", "stop", {"reason": "test"}) and command.command_id == ack.command_id
            publisher = Publisher(node.ws_url, token=service_token)  # a service token publishes too
            answer = {"botId": command.bot_id, "state": "stopped", "commandId": command.command_id}
            first = publisher.publish("bot-status", command.user_id, answer, id=f"answer-{command.command_id}")
            again = publisher.publish("bot-status", command.user_id, answer, id=f"answer-{command.command_id}")
            assert again.duplicate and (again.offset, again.epoch) == (first.offset, first.epoch)
            await statuses.until(lambda: bool(statuses.of(Data, "bot-status")), "the answer")
            await statuses.sync()
            assert [e.data for e in statuses.of(Data, "bot-status")] == [answer]  # stored once

    run(scenario())


@pytest.mark.slow
def test_publish_many_batches_with_idempotency_keys(stoppers):
    node = start(stoppers, {"SERVICE_API_KEY": KEY})

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, get_token=lambda: node.token("ivan"), policy=FAST) as client:
            rec = Recorder(client)
            await client.subscribe("signals")
            publisher = Publisher(node.http, api_key=KEY, batch_size=7)
            items = [Publication("signals", "ivan", {"i": i}, id=f"sig-{i}") for i in range(20)]
            first = publisher.publish_many(items)
            again = publisher.publish_many(items[:10])  # a retried batch: the gateway has them already
            assert [p.offset for p in again] == [p.offset for p in first[:10]] and all(p.duplicate for p in again)
            await rec.until(lambda: len(delivered(rec.events, "signals")) >= 20, "20 signals")
            await rec.sync()
            assert delivered(rec.events, "signals") == list(range(20))
            refused = publisher.publish_many([Publication("market-data", "ivan", {"i": 1})], raise_on_error=False)
            assert refused[0].error == "not_publishable"

    run(scenario())


@pytest.mark.slow
def test_market_data_is_typed_and_the_local_book_survives_a_resync(stoppers):
    node = start(stoppers, {"MARKET_SOURCE": "simulator", "POPULAR_PAIRS": "BTCUSDT"})
    announced = node.wait_for_log(lambda rec: "simulated exchange on" in rec.get("msg", ""))
    control = "http://127.0.0.1:" + re.search(r":(\d+)/", announced["msg"]).group(1) + "/control/fault"

    def inject(fault: dict[str, Any]) -> None:
        request = urllib.request.Request(control, json.dumps(fault).encode(), {"Content-Type": "application/json"},
                                         method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, get_token=lambda: node.token("judy"), policy=FAST) as client:
            rec = Recorder(client)
            sub = await client.subscribe_market("btcusdt", ["orderbook", "trades", "ticker", "kline.1"])
            assert isinstance(sub, Subscribed) and sub.params.streams == ("orderbook.50", "trades", "ticker",
                                                                           "kline.1")

            def payloads(kind: type) -> list[Any]:
                return [e.payload for e in rec.of(Data, "market-data") if isinstance(e.payload, kind)]

            await rec.until(lambda: all(payloads(k) for k in (BookView, Trades, Ticker, Kline)), "every stream")
            book = client.book("BTCUSDT")
            assert book is not None and book.ready and book.best_bid.price < book.best_ask.price
            views = book.views
            await asyncio.to_thread(inject, {"fault": "skip_u", "symbol": "BTCUSDT", "category": "spot"})
            await rec.until(lambda: any(e.source == "book" for e in rec.of(Resync)), "the book's resync")
            await rec.until(lambda: book.ready and book.views > views, "a whole book again")
            assert rec.of(SeqGap) == []  # trades and candles skip nothing
            assert not [e for e in rec.events if isinstance(e, ErrorMessage)]

    run(scenario())


# =====================================================================================
# Bot commands through the library, against a real gateway
# =====================================================================================


class Slowest(random.Random):
    """Every random delay at its upper bound: a reconnect waits the policy's whole backoff."""

    def uniform(self, a: float, b: float) -> float:
        return b


def drop_transport(client: AsyncClient) -> None:
    """End the client's connection without a close frame (1006), as a network failure would."""
    ws = client._ws
    assert ws is not None
    ws.transport.abort()


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)


def wait_until_blocking(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("shell", ["asyncio", "blocking"])
def test_a_command_goes_from_the_bot_to_its_service_and_back_through_the_library(shell, stoppers):
    node = start(stoppers, {})
    service_token = node.token("engine-life", role="service", serves=["life-*"])
    user_token = node.token("lena")
    if shell == "asyncio":
        async def scenario() -> tuple[Any, list[Any], list[Any], list[Any], Any]:
            async with AsyncClient(node.ws_url, token=service_token, policy=FAST) as service, \
                    AsyncClient(node.ws_url, token=user_token, policy=FAST) as bot:
                received: list[BotCommandRequest] = []
                acks: list[Any] = []

                @service.on_command
                async def work(command: BotCommandRequest) -> None:  # the service's work, then its outcome
                    received.append(command)
                    acks.append(await service.report(command, "accepted", timeout=10))
                    acks.append(await service.report(command, "succeeded", {"filled": 3}, timeout=10))

                seen: list[BotCommandResult] = []
                bot.on_command_result(seen.append)
                await service.subscribe("bot-commands")  # the one on_command made: confirmed before the bot sends
                handle = await bot.command("life-1", "rebalance", {"to": "60/40"})
                ack = await handle.sent(10)
                streamed = [update.state async for update in handle]
                final = await handle.result(10)
                await bot.ping()  # anything still in flight has arrived
                with pytest.raises(ReportRefusedError) as late:  # finished: moves no further, not retried
                    await service.report(received[0], "failed", timeout=10)
                assert streamed == ["accepted", "succeeded"]
                return ack, [final], seen, received, (acks, late.value)

        ack, finals, seen, received, (acks, late) = run(scenario())
    else:
        service = BlockingClient(node.ws_url, token=service_token, policy=FAST)
        bot = BlockingClient(node.ws_url, token=user_token, policy=FAST)
        work: queue.Queue[BotCommandRequest] = queue.Queue()
        received, seen, acks = [], [], []
        service.on_command(lambda command: (received.append(command), work.put(command)))
        bot.on_command_result(seen.append)
        with service, bot:
            service.subscribe("bot-commands")
            bot.wait_connected(10)
            handle = bot.command("life-1", "rebalance", {"to": "60/40"})
            ack = handle.sent(10)
            command = work.get(timeout=10)  # done off the client's thread, as a real service would
            acks.append(service.report(command, "accepted"))
            acks.append(service.report(command, "succeeded", {"filled": 3}))
            finals = [handle.result(10)]
            bot.ping()
            with pytest.raises(ReportRefusedError) as late_info:
                service.report(command, "failed")
            late = late_info.value
    command_id = ack.command_id
    assert ack.state == "sent" and not ack.duplicate and ack.delivered_to == 1
    assert finals[0].state == "succeeded" and finals[0].result == {"filled": 3} and finals[0].bot_id == "life-1"
    assert [(r.command_id, r.state) for r in seen] == [(command_id, "accepted"), (command_id, "succeeded")]
    assert [(c.command_id, c.user_id, c.bot_id, c.command, c.params) for c in received] == \
        [(command_id, "lena", "life-1", "rebalance", {"to": "60/40"})]
    assert received[0].deadline is not None and received[0].deadline > time.time() * 1000
    assert [(a.command_id, a.state) for a in acks] == [(command_id, "accepted"), (command_id, "succeeded")]
    assert late.code == "invalid_state" and late.current_state == "succeeded" and not late.resent


@pytest.mark.slow
def test_results_reported_while_the_bot_is_away_arrive_by_its_status_query_exactly_once(stoppers):
    node = start(stoppers, {})
    away = ReconnectPolicy(base=2.0, cap=2.0)  # with Slowest: every reconnect waits 2 s

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, token=node.token("engine-away", role="service", serves=["away-*"]),
                               policy=FAST) as service, \
                AsyncClient(node.ws_url, get_token=lambda: node.token("mona"), policy=away,
                            rng=Slowest()) as bot:
            received: dict[str, BotCommandRequest] = {}
            service.on_command(lambda command: received.__setitem__(command.command_id, command))
            await service.subscribe("bot-commands")
            rec = Recorder(bot)
            seen: list[BotCommandResult] = []
            bot.on_command_result(seen.append)
            holding = await bot.command("away-1", "hold")
            stopping = await bot.command("away-2", "stop", {"reason": "test"})
            await wait_until(lambda: len(received) == 2, "both commands at the service")
            for command in received.values():
                await service.report(command, "accepted", timeout=10)
            await wait_until(lambda: holding.state == stopping.state == "accepted", "accepted, at the bot")
            drop_transport(bot)
            await rec.until(lambda: bool(rec.of(Disconnected)), "the bot's disconnect")
            # While the bot is away (2 s before it reconnects): one finishes, the other does not move.
            done = await service.report(received[stopping.command_id], "succeeded", {"stopped": True}, timeout=10)
            assert done is not None and done.state == "succeeded"
            assert len(rec.of(Connection)) == 1, "the bot came back before the report: nothing was tested"
            final = await stopping.result(15)
            await rec.until(lambda: len(rec.of(Connection)) == 2, "the reconnect")
            await rec.sync()  # the status answers came before the pong
            assert final.state == "succeeded" and final.result == {"stopped": True}
            assert final.id is not None  # the answer to the bot's status query: the push was sent while it was away
            by_command = {cid: [r.state for r in seen if r.command_id == cid]
                          for cid in (holding.command_id, stopping.command_id)}
            assert by_command == {holding.command_id: ["accepted"], stopping.command_id: ["accepted", "succeeded"]}
            assert [u.state for u in holding.updates] == ["accepted"] and not holding.done
            assert bot.core.tracker.stats["status_queries"] == 2
            assert bot.core.tracker.stats["results_dropped"] == 1  # holding's "accepted", answered again
            assert [(e.command_id, e.state) for e in rec.of(BotCommandResult)] == \
                [(r.command_id, r.state) for r in seen]  # the event stream saw the same, once each

    run(scenario(), timeout=40)


@pytest.mark.slow
def test_a_command_past_its_deadline_is_timed_out_and_a_late_report_is_refused(stoppers):
    node = start(stoppers, {})
    service = BlockingClient(node.ws_url, token=node.token("engine-slow", role="service", serves=["slow-1"]),
                             policy=FAST)
    bot = BlockingClient(node.ws_url, get_token=lambda: node.token("nick"), policy=FAST)
    work: queue.Queue[BotCommandRequest] = queue.Queue()
    refused: list[ReportRefused] = []
    service.on_command(work.put)
    service.on(ReportRefused, refused.append)
    with service, bot:
        service.subscribe("bot-commands")
        bot.wait_connected(10)
        handle = bot.command("slow-1", "rebalance", timeout_ms=1000)
        command = work.get(timeout=10)
        assert command.deadline is not None and command.expired(command.deadline)
        service.report(command, "accepted")
        final = handle.result(10)
        assert final.state == "timed_out" and final.result is None and not final.ok
        assert [u.state for u in handle.updates] == ["accepted", "timed_out"]
        with pytest.raises(ReportRefusedError) as late:
            service.report(command, "succeeded", {"too": "late"})
        assert late.value.code == "invalid_state" and late.value.current_state == "timed_out"
        service.ping()
        assert [(r.command_id, r.state, r.current_state) for r in refused] == \
            [(command.command_id, "succeeded", "timed_out")]  # an event too, once
        assert not service.core.tracker.reports  # not retried


@pytest.mark.slow
def test_a_command_whose_ack_was_lost_is_resent_and_reaches_the_service_once(stoppers):
    node = start(stoppers, {})

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, token=node.token("engine-idem", role="service", serves=["idem-*"]),
                               policy=FAST) as service, \
                AsyncClient(node.ws_url, get_token=lambda: node.token("olga"), policy=FAST) as bot:
            received: list[BotCommandRequest] = []
            service.on_command(received.append)
            await service.subscribe("bot-commands")
            rec = Recorder(bot)
            receive = bot.core.receive
            lost: list[str] = []

            def lose_the_first_ack(text: str | bytes, now: float) -> list[Any]:
                if not lost and '"bot_command_ack"' in str(text):
                    lost.append(str(text))  # the gateway stored and sent the command; the bot never hears so
                    drop_transport(bot)
                    return []
                return receive(text, now)

            bot.core.receive = lose_the_first_ack  # type: ignore[method-assign]
            handle = await bot.command("idem-1", "stop", {"reason": "test"})
            ack = await handle.sent(15)  # the resend's, on the next connection
            assert lost and json.loads(lost[0])["data"]["duplicate"] is False
            assert ack.duplicate and ack.command_id == handle.command_id
            assert len(rec.of(Connection)) == 2
            await wait_until(lambda: bool(received), "the command at the service")
            await service.report(received[0], "succeeded", {"stopped": True}, timeout=10)
            final = await handle.result(10)
            await service.ping()
            await bot.ping()
            assert final.state == "succeeded"
            assert [c.command_id for c in received] == [handle.command_id]  # sent to the service once
            assert bot.core.tracker.stats["commands_resent"] == 1
            assert [r.state for r in rec.of(BotCommandResult)] == ["succeeded"]

    run(scenario())


@pytest.mark.slow
def test_an_operator_disconnect_is_reconnected_and_a_revoked_token_is_replaced_or_stops_the_client(stoppers):
    admin_key = "client-test-admin-key-0123456789abcdef"
    node = start(stoppers, {"ADMIN_API_KEY": admin_key})
    issued: list[str] = []

    def get_token() -> str:
        issued.append(node.token("pia", jti=os.urandom(8).hex()))
        return issued[-1]

    def admin(path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(node.http + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json", "Authorization": f"Bearer {admin_key}"},
                                         method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    def jti(token: str) -> str:
        payload = token.split(".")[1]
        return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])

    async def scenario() -> None:
        async with AsyncClient(node.ws_url, get_token=get_token, policy=FAST) as client:
            rec = Recorder(client)
            await client.wait_connected(10)
            await asyncio.to_thread(admin, "/api/admin/disconnect", {"userId": "pia"})
            await rec.until(lambda: len(rec.of(Connection)) == 2, "a reconnect after 4004")
            assert [e.code for e in rec.of(Disconnected)] == [4004] and len(issued) == 1  # the same token
            await asyncio.to_thread(admin, "/api/admin/revoke", {"jti": jti(issued[-1])})
            await rec.until(lambda: len(rec.of(Connection)) == 3, "a reconnect with another token after 4501")
            assert [e.code for e in rec.of(Disconnected)] == [4004, 4501] and len(issued) == 2
        static = AsyncClient(node.ws_url, token=node.token("pia", jti="static-1"), policy=FAST)
        await static.start()
        await static.wait_connected(10)
        await asyncio.to_thread(admin, "/api/admin/revoke", {"jti": "static-1"})
        with pytest.raises(ClosedByGateway) as stopped:
            await static.join()
        assert stopped.value.code == 4501 and "TOKEN_REVOKED" in str(stopped.value)

    run(scenario())


# =====================================================================================
# The distribution and the examples
# =====================================================================================


@pytest.mark.slow
def test_the_client_installs_alone_without_gevent(tmp_path, background_install):
    python = str(background_install["client"].result())  # a fresh venv, built from the start of the run
    probe = ("import importlib.util, sys, trading_gateway_client as t; "
             "print(t.__version__, importlib.util.find_spec('gevent') is None, "
             "any(m.split('.')[0] in ('gevent', 'protocol', 'gateway') for m in sys.modules))")
    out = subprocess.run([python, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True,
                         timeout=60).stdout.split()
    assert out == ["0.1.0", "True", "False"]


@pytest.mark.slow
def test_the_examples_run_against_a_demo_gateway(stoppers):
    node = start(stoppers, {"DEMO_MODE": "true", "MARKET_SOURCE": "simulator", "POPULAR_PAIRS": "BTCUSDT"})
    env = {**os.environ, "PYTHONPATH": str(CLIENT_SRC), "PYTHONUNBUFFERED": "1"}
    env.pop("SERVICE_TOKEN", None)
    # The service mints its own token (owning bot-*) with the gateway's key, as it does beside `make run`.
    service = subprocess.Popen([sys.executable, str(ROOT / "examples" / "service.py"), "--url", node.ws_url,
                                "--serves", "bot-*", "--seconds", "20"], cwd=ROOT,
                               env={**env, "JWT_SECRET": node.secret}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert service.stdout is not None
        ready = service.stdout.readline()
        assert "ready" in ready and "serving bot-*" in ready, ready
        bot = subprocess.run([sys.executable, str(ROOT / "examples" / "bot.py"), "--url", node.ws_url,
                              "--user", "kim", "--bot", "bot-3", "--seconds", "15", "--once"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=25)
    finally:
        service.send_signal(signal.SIGINT)
        try:  # its client's close waits up to 2 x 5 s for the gateway's answer (a loaded machine: seconds)
            out, _ = service.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            out, _ = service.communicate()
            raise AssertionError(f"the service did not stop within 30 s of SIGINT:\n{out}") from None
    assert bot.returncode == 0, bot.stdout + bot.stderr
    assert "command start sent to bot-3: 1 service(s) got it" in bot.stdout
    states = re.findall(r"^command start for bot-3: (\w+)", bot.stdout, re.MULTILINE)
    assert states == ["accepted", "succeeded"], bot.stdout  # each state once, in order
    assert re.search(r"^book BTCUSDT bid \d", bot.stdout, re.MULTILINE), bot.stdout
    assert "bot-status bot-3: running" in bot.stdout
    assert "command start for bot-3 from kim" in out, out
    assert "answered kim/bot-3: running" in out, out
