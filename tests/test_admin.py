"""The admin API on real sockets: revoke a token or a user, disconnect, the audit query, credentials.

A revocation closes every matching connection with 4501 on every node
(Redis) within a second of the answer, is refused at the handshake (401
``token_revoked``) and in ``refresh`` afterwards, and survives a restart
(the audit database). A disconnect closes with 4004 and the client may
come back.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Client, GatewayProcess
from tests.redis_server import RedisServer

ADMIN_KEY = "admin-key-placeholder-for-tests"


def _http(gw: GatewayProcess, method: str, path: str, body: Any = None,
          credential: str | None = ADMIN_KEY) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(gw.http + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _connect(gw: GatewayProcess, token: str) -> Client:
    client = gw.connect(token=token)
    assert client.recv()["type"] == "connection"
    return client


def _handshake_error(gw: GatewayProcess, token: str) -> tuple[int, str]:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(f"{gw.ws_url}?token={token}", timeout=5)
    return info.value.status_code, json.loads(info.value.resp_body)["error"]


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    with GatewayProcess({"ADMIN_API_KEY": ADMIN_KEY}) as g:
        yield g


def test_admin_routes_need_an_admin_credential(gw):
    body = {"userId": "nobody"}
    assert _http(gw, "POST", "/api/admin/disconnect", body, credential=None)[0] == 401
    assert _http(gw, "POST", "/api/admin/disconnect", body, credential="wrong")[0] == 401
    assert _http(gw, "POST", "/api/admin/disconnect", body, credential=gw.token("ann"))[0] == 403
    assert _http(gw, "POST", "/api/admin/disconnect", body, credential=gw.token("svc", role="service"))[0] == 403
    assert _http(gw, "GET", "/api/audit/commands", credential=gw.token("ann"))[0] == 403
    status, answer = _http(gw, "POST", "/api/admin/disconnect", body, credential=gw.token("ops", role="admin"))
    assert status == 200 and answer == {"userId": "nobody", "closedHere": 0}


@pytest.mark.parametrize(("body", "error"), [
    ({}, "invalid_request"),
    ({"jti": "a", "userId": "b"}, "invalid_request"),
    ({"userId": ""}, "invalid_request"),
    ({"userId": "b", "until": 1000}, "invalid_request"),  # in the past
    ({"userId": "b", "until": "tomorrow"}, "invalid_request"),
    ({"jti": ["a"]}, "invalid_request"),
    ("not an object", "invalid_request"),
])
def test_a_bad_revocation_is_400_and_revokes_nothing(gw, body, error):
    status, answer = _http(gw, "POST", "/api/admin/revoke", body)
    assert status == 400 and answer["error"] == error


def test_revoking_a_token_closes_it_with_4501_and_refuses_it_afterwards(gw):
    revoked, kept = gw.token("rita", jti="jti-revoked-1"), gw.token("rita", jti="jti-kept-1")
    a, b = _connect(gw, revoked), _connect(gw, kept)
    status, answer = _http(gw, "POST", "/api/admin/revoke", {"jti": "jti-revoked-1", "reason": "leaked"})
    assert status == 200 and answer["revocation"]["kind"] == "token" and answer["closedHere"] == 1
    assert a.expect_close(timeout=1.0) == (4501, "token revoked")
    assert b.request({"type": "ping", "id": "p"})["type"] == "pong"  # the user's other token is fine
    assert _handshake_error(gw, revoked) == (401, "token_revoked")
    refused = b.request({"type": "refresh", "id": "r", "token": revoked})
    assert refused["type"] == "error" and refused["code"] == "invalid_token"
    b.close()


def test_revoking_a_user_covers_the_tokens_issued_until_then(gw):
    old = gw.token("ursula", jti="u-old")
    first, second = _connect(gw, old), _connect(gw, gw.token("ursula"))
    other = _connect(gw, gw.token("victor"))
    status, answer = _http(gw, "POST", "/api/admin/revoke", {"userId": "ursula"})
    assert status == 200 and answer["closedHere"] == 2
    for client in (first, second):
        assert client.expect_close(timeout=1.0)[0] == 4501
    assert other.request({"type": "ping", "id": "p"})["type"] == "pong"
    assert _handshake_error(gw, old) == (401, "token_revoked")
    time.sleep(1.1)  # iat is in whole seconds: a token of the next second is a new sign-in
    _connect(gw, gw.token("ursula")).close()
    listed = _http(gw, "GET", "/api/admin/revocations")[1]["revocations"]
    assert {(r["kind"], r["jti"] or r["userId"]) for r in listed} >= {("user", "ursula"), ("token", "jti-revoked-1")}
    other.close()


def test_disconnect_closes_with_4004_and_the_client_may_come_back(gw):
    token = gw.token("dora")
    a, b = _connect(gw, token), _connect(gw, token)
    status, answer = _http(gw, "POST", "/api/admin/disconnect", {"userId": "dora"})
    assert status == 200 and answer["closedHere"] == 2
    for client in (a, b):
        assert client.expect_close(timeout=1.0) == (4004, "disconnected by an operator")
    _connect(gw, token).close()


def test_the_audit_query_shows_each_command_with_its_states_and_redacted_params(gw):
    service = _connect(gw, gw.token("engine-audit", role="service", serves=["audit-*"]))
    service.request({"type": "subscribe", "channel": "bot-commands", "id": "s"})
    user = _connect(gw, gw.token("aldo"))
    user.send({"type": "bot_command", "id": "c", "data": {
        "botId": "audit-1", "command": "login", "commandId": "audit-cmd-1",
        "params": {"exchange": "bybit", "apiKey": "placeholder-not-a-key", "nested": [{"Password": "x"}]}}})
    assert user.recv_until(lambda m: m.get("id") == "c")["type"] == "bot_command_ack"
    sent = service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    service.send({"type": "bot_command_report", "id": "r", "data": {
        "commandId": sent["commandId"], "userId": "aldo", "state": "failed", "result": {"error": "bad key"}}})
    service.recv_until(lambda m: m.get("id") == "r")
    row: dict[str, Any] = {}
    deadline = time.monotonic() + 5
    while row.get("state") != "failed":  # the writer batches every AUDIT_FLUSH_INTERVAL
        assert time.monotonic() < deadline, row
        rows = _http(gw, "GET", "/api/audit/commands?user=aldo&bot=audit-1&limit=5")[1]["commands"]
        row = rows[0] if rows else {}
        time.sleep(0.1)
    assert row["commandId"] == "audit-cmd-1" and row["command"] == "login" and row["service"] == "engine-audit"
    assert row["params"] == {"exchange": "bybit", "apiKey": "[redacted]", "nested": [{"Password": "[redacted]"}]}
    assert row["result"] == {"error": "bad key"} and row["createdAt"] <= row["finishedAt"]
    assert _http(gw, "GET", "/api/audit/commands?user=nobody")[1]["commands"] == []
    assert _http(gw, "GET", "/api/audit/commands?limit=0")[0] == 400
    assert _http(gw, "GET", "/api/audit/commands?since=yesterday")[0] == 400
    service.close(), user.close()


def test_a_revocation_survives_a_restart():
    first = GatewayProcess({"ADMIN_API_KEY": ADMIN_KEY}).start()
    try:
        token = first.token("sam", jti="jti-restart")
        assert _http(first, "POST", "/api/admin/revoke", {"jti": "jti-restart"})[0] == 200
    finally:
        first.stop()
    # A new process on the same DATA_DIR (the SQLite file) and key.
    gw = GatewayProcess({"ADMIN_API_KEY": ADMIN_KEY, "DATA_DIR": first.env["DATA_DIR"],
                         "JWT_SECRET": first.secret}).start()
    try:
        assert _handshake_error(gw, token) == (401, "token_revoked")
    finally:
        gw.stop()


def test_a_revocation_reaches_every_node_within_a_second():
    redis_server = RedisServer().start()
    try:
        env = {"REDIS_URL": redis_server.url, "ADMIN_API_KEY": ADMIN_KEY}
        with GatewayProcess(env) as a, GatewayProcess({**env, "JWT_SECRET": a.secret}) as b:
            b.secret = a.secret
            token = a.token("nina", jti="jti-nodes")
            on_b, disconnected_b = _connect(b, token), _connect(b, a.token("olga"))
            assert _http(a, "POST", "/api/admin/revoke", {"jti": "jti-nodes"})[0] == 200
            assert on_b.expect_close(timeout=1.0)[0] == 4501
            assert _handshake_error(b, token) == (401, "token_revoked")
            assert _http(a, "POST", "/api/admin/disconnect", {"userId": "olga"})[0] == 200
            assert disconnected_b.expect_close(timeout=1.0)[0] == 4004
            # Node b kept the revocation it was sent in its own SQLite: restarted, it still refuses.
            other = a.token("nina", jti="jti-nodes-2")
            assert _http(a, "POST", "/api/admin/revoke", {"jti": "jti-nodes-2"})[0] == 200
            b.stop()
            b.start()
            assert _handshake_error(b, other) == (401, "token_revoked")
    finally:
        redis_server.stop()


_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.text(max_size=40),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.fixed_dictionaries({}, optional={"jti": _VALUES, "userId": _VALUES, "until": _VALUES,
                                                "reason": _VALUES}) | _VALUES)
def test_any_revoke_body_is_done_or_refused_with_400(gw, body):
    """Whatever JSON an operator's script sends: a revocation, or a 400 that names the problem; never a 500."""
    status, answer = _http(gw, "POST", "/api/admin/revoke", body)
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert answer["error"] in ("invalid_request", "invalid_message") and answer["message"]
    else:
        revocation = answer["revocation"]
        assert (revocation["jti"], revocation["userId"]) in ((body.get("jti"), None), (None, body.get("userId")))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(["user", "bot", "since", "until", "limit", "other"]),
                              st.text(max_size=30), max_size=5))
def test_any_audit_query_is_answered_or_refused_with_400(gw, params):
    query = urllib.parse.urlencode(params)
    status, answer = _http(gw, "GET", f"/api/audit/commands?{query}")
    assert status in (200, 400), (status, answer)
    if status == 200:
        assert isinstance(answer["commands"], list) and len(answer["commands"]) <= int(params.get("limit") or 100)


@pytest.mark.parametrize("limit", ["²", "٣", "1e2", "-1", "1001", " 5"])
def test_odd_limits_are_400(gw, limit):
    assert _http(gw, "GET", f"/api/audit/commands?limit={urllib.parse.quote(limit)}")[0] == 400
