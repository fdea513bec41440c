"""The gateway with its audit trail in a real PostgreSQL, on real sockets.

Two nodes share PostgreSQL and Redis: what either records, either answers;
a revocation made on one survives the other's restart. With the database
down, bot commands keep flowing (the trail catches up when it returns, with
the metric and the log lines saying so), and a revocation is refused with
503 rather than acknowledged unstored.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from tests.harness import Client, GatewayProcess
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer

ADMIN_KEY = "admin-key-placeholder-for-tests"


def _http(gw: GatewayProcess, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(gw.http + path, data=None if body is None else json.dumps(body).encode(),
                                 method=method, headers={"Authorization": f"Bearer {ADMIN_KEY}",
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _metric(gw: GatewayProcess, name: str) -> float | None:
    with urllib.request.urlopen(gw.http + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def _until(predicate: Any, timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _connect(gw: GatewayProcess, token: str) -> Client:
    client = gw.connect(token=token)
    assert client.recv()["type"] == "connection"
    return client


def _lifecycle(user: Client, service: Client, command_id: str) -> None:
    user.send({"type": "bot_command", "id": command_id,
               "data": {"botId": "pg-1", "command": "start", "commandId": command_id}})
    ack = user.recv_until(lambda m: m.get("id") == command_id)
    assert ack["type"] == "bot_command_ack", ack
    sent = service.recv_until(lambda m: m.get("channel") == "bot-commands")["data"]
    service.send({"type": "bot_command_report", "id": "r" + command_id,
                  "data": {"commandId": command_id, "userId": sent["userId"], "state": "succeeded",
                           "result": {"ok": command_id}}})
    assert service.recv_until(lambda m: m.get("id") == "r" + command_id)["type"] == "bot_command_report_ack"
    user.recv_until(lambda m: m.get("type") == "bot_command_result" and m["data"]["commandId"] == command_id)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PostgresServer, RedisServer]]:
    pg, redis_server = PostgresServer().start(), RedisServer().start()
    try:
        yield pg, redis_server
    finally:
        redis_server.stop()
        pg.cleanup()


def test_two_nodes_share_the_trail_and_the_revocations(servers):
    pg, redis_server = servers
    env = {"DATABASE_URL": pg.url, "REDIS_URL": redis_server.url, "ADMIN_API_KEY": ADMIN_KEY,
           "AUDIT_FLUSH_INTERVAL": "50"}
    with GatewayProcess(env) as a:
        b = GatewayProcess({**env, "JWT_SECRET": a.secret})
        b.secret = a.secret
        b.start()
        try:
            service = _connect(b, a.token("engine-pg", role="service", serves=["pg-*"]))
            service.request({"type": "subscribe", "channel": "bot-commands", "id": "s"})
            user = _connect(a, a.token("paula"))
            _lifecycle(user, service, "pg-cmd-1")
            # Node a recorded "sent", node b "succeeded": one row, the latest state, from either node.
            for node in (a, b):
                row = _until(lambda node=node: [r for r in _http(node, "GET", "/api/audit/commands?user=paula")[1]
                                                ["commands"] if r["state"] == "succeeded"], what="the row")[0]
                assert row["commandId"] == "pg-cmd-1" and row["result"] == {"ok": "pg-cmd-1"}
            token = a.token("quinn", jti="jti-pg")
            assert _http(a, "POST", "/api/admin/revoke", {"jti": "jti-pg"})[0] == 200
            b.stop()
            b.start()  # a new process: it learns the revocation from the database, not the broadcast
            with pytest.raises(websocket.WebSocketBadStatusException) as info:
                websocket.create_connection(f"{b.ws_url}?token={token}", timeout=5)
            assert info.value.status_code == 401 and json.loads(info.value.resp_body)["error"] == "token_revoked"
            user.close()
        finally:
            b.stop()


def test_commands_flow_while_the_database_is_down_and_the_trail_catches_up(servers):
    pg, _ = servers
    env = {"DATABASE_URL": pg.url, "ADMIN_API_KEY": ADMIN_KEY, "AUDIT_FLUSH_INTERVAL": "50"}
    with GatewayProcess(env) as gw:
        service = _connect(gw, gw.token("engine-down", role="service", serves=["pg-*"]))
        service.request({"type": "subscribe", "channel": "bot-commands", "id": "s"})
        user = _connect(gw, gw.token("rosa"))
        _until(lambda: _metric(gw, "ws_audit_database_up") == 1.0, what="the database up")
        pg.stop()
        try:
            for i in range(3):  # acknowledged, delivered and finished with the database down
                _lifecycle(user, service, f"down-{i}")
            _until(lambda: _metric(gw, "ws_audit_database_up") == 0.0, what="ws_audit_database_up 0")
            gw.wait_for_log(lambda rec: rec.get("level") == "ERROR"
                            and "audit database unavailable" in rec.get("msg", ""), timeout=10)
            assert (_metric(gw, "ws_audit_pending") or 0) >= 1
            status, answer = _http(gw, "POST", "/api/admin/revoke", {"userId": "someone"})
            assert status == 503 and answer["error"] == "database_unavailable"
            assert _http(gw, "GET", "/api/audit/commands?user=rosa")[0] == 503
        finally:
            pg.start()
        gw.wait_for_log(lambda rec: "audit database back" in rec.get("msg", ""), timeout=20)
        rows = _until(lambda: [r for r in _http(gw, "GET", "/api/audit/commands?user=rosa")[1]["commands"]
                               if r["state"] == "succeeded"] if _http(gw, "GET", "/api/audit/commands?user=rosa")[0]
                      == 200 else None, 20, "the rows")
        assert sorted(r["commandId"] for r in rows) == ["down-0", "down-1", "down-2"]
        assert _metric(gw, "ws_audit_database_up") == 1.0 and _metric(gw, "ws_audit_pending") == 0.0
        assert _metric(gw, "ws_audit_dropped_total") == 0.0
        user.close(), service.close()
