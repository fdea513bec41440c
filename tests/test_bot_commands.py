"""Bot commands end to end on real sockets: routing to the owner, states, results, idempotency, deadlines.

A user's command goes to the one service that owns the bot (its token's
``serves`` claim, the most specific wins), is ``sent`` (stored and
published), then ``accepted``, ``succeeded``/``failed`` as the service
reports, or ``timed_out``; every connection of the user gets each state as
``bot_command_result``. Across two nodes over a real Redis too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Client, GatewayProcess
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    with GatewayProcess({"BOT_COMMAND_TIMEOUT": "30000"}) as g:
        yield g


def _connect(gw: GatewayProcess, user: str, **claims: Any) -> Client:
    client = gw.connect(token=gw.token(user, **claims))
    assert client.recv()["type"] == "connection"
    return client


def _service(gw: GatewayProcess, name: str, serves: list[str] | None = None) -> Client:
    claims: dict[str, Any] = {"role": "service"}
    if serves is not None:
        claims["serves"] = serves
    service = _connect(gw, name, **claims)
    assert service.request({"type": "subscribe", "channel": "bot-commands", "id": "s"})["type"] == "subscribed"
    return service


def _command(client: Client, bot: str, command: str = "start", **extra: Any) -> dict[str, Any]:
    rid = uuid.uuid4().hex[:8]
    client.send({"type": "bot_command", "id": rid, "data": {"botId": bot, "command": command, **extra}})
    return client.recv_until(lambda m: m.get("id") == rid)


def _report(service: Client, cmd: dict[str, Any], state: str, result: Any = None) -> dict[str, Any]:
    rid = uuid.uuid4().hex[:8]
    data = {"commandId": cmd["commandId"], "userId": cmd["userId"], "state": state}
    if result is not None:
        data["result"] = result
    service.send({"type": "bot_command_report", "id": rid, "data": data})
    return service.recv_until(lambda m: m.get("id") == rid)


def _result(client: Client, command_id: str, state: str, timeout: float = 5.0) -> dict[str, Any]:
    return client.recv_until(lambda m: m.get("type") == "bot_command_result"
                             and m["data"]["commandId"] == command_id and m["data"]["state"] == state, timeout)


def test_the_whole_lifecycle_reaches_every_connection_of_the_user(gw):
    service = _service(gw, "engine-life", serves=["life-*"])
    phone, desk = _connect(gw, "lena"), _connect(gw, "lena")
    other = _connect(gw, "mallory")
    ack = _command(phone, "life-1", "rebalance", params={"to": "60/40"}, commandId="cmd-life-1")
    assert ack["type"] == "bot_command_ack"
    assert ack["data"] == {"commandId": "cmd-life-1", "state": "sent", "duplicate": False, "deliveredTo": 1}
    sent = service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    assert (sent["commandId"], sent["userId"], sent["botId"], sent["command"], sent["params"]) == \
        ("cmd-life-1", "lena", "life-1", "rebalance", {"to": "60/40"})
    assert sent["deadline"] > 0
    assert _report(service, sent, "accepted")["data"] == {"commandId": "cmd-life-1", "state": "accepted"}
    for client in (phone, desk):
        assert _result(client, "cmd-life-1", "accepted")["data"]["botId"] == "life-1"
    assert _report(service, sent, "succeeded", {"filled": 3})["type"] == "bot_command_report_ack"
    for client in (phone, desk):
        done = _result(client, "cmd-life-1", "succeeded")["data"]
        assert done["result"] == {"filled": 3} and done["command"] == "rebalance"
    # Another user sees nothing of it, and cannot ask for it.
    status = other.request({"type": "bot_command_status", "id": "q", "data": {"commandId": "cmd-life-1"}})
    assert status["type"] == "error" and status["code"] == "not_found"
    # Its owner can, after the fact (what a client does after a reconnect).
    status = desk.request({"type": "bot_command_status", "id": "q", "data": {"commandId": "cmd-life-1"}})
    assert status["type"] == "bot_command_result" and status["id"] == "q"
    assert status["data"]["state"] == "succeeded" and status["data"]["result"] == {"filled": 3}
    # A finished command moves no further.
    late = _report(service, sent, "failed")
    assert late["type"] == "error" and late["code"] == "invalid_state" and "succeeded" in late["message"]
    for client in (service, phone, desk, other):
        client.close()


def test_a_resend_with_the_same_command_id_is_answered_not_sent_again(gw):
    service = _service(gw, "engine-idem", serves=["idem-1"])
    user = _connect(gw, "ida")
    first = _command(user, "idem-1", "stop", commandId="stop-once")
    assert first["data"]["duplicate"] is False
    sent = service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    again = _command(user, "idem-1", "stop", commandId="stop-once")
    assert again["data"] == {"commandId": "stop-once", "state": "sent", "duplicate": True}
    _report(service, sent, "succeeded", {"stopped": True})
    _result(user, "stop-once", "succeeded")
    third = _command(user, "idem-1", "stop", commandId="stop-once")
    assert third["data"]["duplicate"] is True and third["data"]["state"] == "succeeded"
    assert _result(user, "stop-once", "succeeded")["data"]["result"] == {"stopped": True}
    # The service got it once: the next thing it receives is a new command.
    _command(user, "idem-1", "start", commandId="start-after")
    nxt = service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    assert nxt["commandId"] == "start-after"
    # The same id for something else is a conflict, and nothing is sent.
    clash = _command(user, "idem-1", "start", commandId="stop-once")
    assert clash["type"] == "error" and clash["code"] == "conflict"
    service.close(), user.close()


def test_a_user_may_have_only_so_many_unfinished_commands():
    # BOT_COMMAND_MAX_OPEN=2: the third unfinished command of one user is refused and not sent; a result
    # (or a deadline) frees its place; other users are not held back by it.
    with GatewayProcess({"BOT_COMMAND_MAX_OPEN": "2"}) as g:
        service = _service(g, "engine-cap")
        user, other = _connect(g, "cap"), _connect(g, "uncapped")
        first = _command(user, "cap-1", commandId="c1")
        _command(user, "cap-1", commandId="c2")
        refused = _command(user, "cap-1", commandId="c3")
        assert refused["type"] == "error" and refused["code"] == "too_many_commands", refused
        assert _command(other, "free-1", commandId="o1")["data"]["state"] == "sent"
        got = [service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"] for _ in range(3)]
        assert [c["commandId"] for c in got] == ["c1", "c2", "o1"]  # c3 never reached the service
        # A resend of an unfinished one is still answered from its record.
        assert _command(user, "cap-1", commandId="c2")["data"]["duplicate"] is True
        _report(service, got[0], "succeeded")
        _result(user, first["data"]["commandId"], "succeeded")
        assert _command(user, "cap-1", commandId="c3")["data"] == {"commandId": "c3", "state": "sent",
                                                                   "duplicate": False, "deliveredTo": 1}
        assert service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]["commandId"] == "c3"
        assert _command(user, "cap-1", commandId="c4")["code"] == "too_many_commands"  # full again: c2, c3
        for m in (service, user, other):
            m.close()
    with GatewayProcess({"BOT_COMMAND_MAX_OPEN": "1"}) as g:  # a command past its deadline stops counting
        service = _service(g, "engine-cap")
        user = _connect(g, "cap")
        assert _command(user, "cap-1", commandId="d1", timeoutMs=1000)["data"]["state"] == "sent"
        assert _command(user, "cap-1", commandId="d2")["code"] == "too_many_commands"
        _result(user, "d1", "timed_out", timeout=5.0)
        assert _command(user, "cap-1", commandId="d2")["data"]["state"] == "sent"
        service.close(), user.close()


def test_the_most_specific_owner_gets_the_command_and_only_it(gw):
    broad = _service(gw, "engine-broad")  # no serves claim: every bot
    grid = _service(gw, "engine-grid", serves=["grid-*"])
    exact = _service(gw, "engine-exact", serves=["grid-7"])
    user = _connect(gw, "otto")
    for bot, owner in (("grid-7", exact), ("grid-2", grid), ("dca-1", broad)):
        ack = _command(user, bot, commandId=f"own-{bot}")
        assert ack["type"] == "bot_command_ack", ack
        got = owner.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
        assert got["botId"] == bot
    for service in (broad, grid, exact):  # nobody received a command it does not own
        marker = service.request({"type": "ping", "id": "p"})
        assert marker["type"] == "pong"
    # The owner gone, its bots are no_service: never handed to a broader claim.
    exact.close()
    refused = _command(user, "grid-7", commandId="own-after")
    assert refused["type"] == "error" and refused["code"] == "no_service"
    status = user.request({"type": "bot_command_status", "id": "q", "data": {"commandId": "own-after"}})
    assert status["code"] == "not_found"  # nothing was stored: a resend later is a new command
    broad.close(), grid.close(), user.close()


def test_a_command_times_out_and_a_late_report_is_refused(gw):
    service = _service(gw, "engine-slow", serves=["slow-1"])
    user = _connect(gw, "tom")
    _command(user, "slow-1", commandId="slow-cmd", timeoutMs=1000)
    sent = service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    assert _report(service, sent, "accepted")["type"] == "bot_command_report_ack"
    assert _result(user, "slow-cmd", "timed_out", timeout=5)["data"]["result"] is None
    late = _report(service, sent, "succeeded", {"ok": True})
    assert late["code"] == "invalid_state" and "timed_out" in late["message"]
    service.close(), user.close()


def test_replicas_of_one_service_both_receive_and_the_first_accept_wins(gw):
    one, two = _service(gw, "engine-ha", serves=["ha-1"]), _service(gw, "engine-ha", serves=["ha-1"])
    user = _connect(gw, "hana")
    ack = _command(user, "ha-1", commandId="ha-cmd")
    assert ack["data"]["deliveredTo"] == 2
    a = one.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    b = two.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    assert a == b
    assert _report(one, a, "accepted")["type"] == "bot_command_report_ack"
    lost = _report(two, b, "accepted")
    assert lost["code"] == "invalid_state" and "accepted" in lost["message"]
    one.close(), two.close(), user.close()


def test_who_may_report_and_what_a_report_must_say(gw):
    owner = _service(gw, "engine-own", serves=["own-1"])
    stranger = _service(gw, "engine-stranger", serves=["other-*"])
    user = _connect(gw, "uma")
    _command(user, "own-1", commandId="own-cmd")
    sent = owner.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    assert _report(stranger, sent, "accepted")["code"] == "not_found"  # not its command
    assert _report(user, sent, "accepted")["code"] == "forbidden"  # users do not report
    bad = owner.request({"type": "bot_command_report", "id": "b",
                         "data": {"commandId": "own-cmd", "userId": "uma", "state": "timed_out"}})
    assert bad["code"] == "invalid_message"
    bad = user.request({"type": "bot_command", "id": "b",
                        "data": {"botId": "own-1", "command": "x", "commandId": "has spaces"}})
    assert bad["code"] == "invalid_message"
    bad = user.request({"type": "bot_command", "id": "b",
                        "data": {"botId": "own-1", "command": "x", "timeoutMs": 10}})
    assert bad["code"] == "invalid_message"
    owner.close(), stranger.close(), user.close()


def test_commands_and_results_cross_nodes_over_redis():
    redis_server = RedisServer().start()
    try:
        env = {"REDIS_URL": redis_server.url}
        with GatewayProcess(env) as a, GatewayProcess({**env, "JWT_SECRET": a.secret}) as b:
            b.secret = a.secret
            service = _service(b, "engine-x", serves=["x-*"])
            here, there = _connect(a, "xena"), _connect(b, "xena")
            ack = _command(here, "x-1", commandId="x-cmd")
            assert ack["type"] == "bot_command_ack" and ack["data"]["deliveredTo"] == 1
            sent = service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
            assert sent["commandId"] == "x-cmd"
            _report(service, sent, "succeeded", {"node": "b"})
            for client in (here, there):
                assert _result(client, "x-cmd", "succeeded")["data"]["result"] == {"node": "b"}
            # Either node answers the status and the resend.
            again = _command(there, "x-1", commandId="x-cmd")
            assert again["data"]["duplicate"] is True and again["data"]["state"] == "succeeded"
            for client in (service, here, there):
                client.close()
    finally:
        redis_server.stop()
