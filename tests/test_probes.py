"""Liveness and readiness for orchestrators (/livez, /readyz), as docs/operations.md defines them.

Ready means "takes new clients": 503 while draining, never because of the
exchange or Redis, which every node shares. Alive means the event loop and
the liveness sweeper keep their beat.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request

import gevent

from brokers.memory import MemoryBroker
from gateway.config import Settings
from gateway.http import create_app
from gateway.hub import Hub
from gateway.server import Gateway
from metrics.definitions import build as build_metrics
from tests.harness import GatewayProcess
from tests.redis_server import RedisServer


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _stuck_client(gw: GatewayProcess) -> socket.socket:
    """Upgraded, then never reads or answers a close: the drain has to wait for it."""
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall((f"GET /ws?token={gw.token('stuck')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


def test_ready_and_alive_while_serving_and_not_ready_while_draining():
    # The exchange is unreachable (nothing listens on that port): the stream's
    # restarts make /health report it, but the node stays ready.
    gw = GatewayProcess({"MARKET_SOURCE": "bybit", "BYBIT_WS_URL": "ws://127.0.0.1:9/v5/public",
                         "MARKET_CATEGORIES": "spot", "RESTART_BASE": "50", "RESTART_CAP": "100",
                         "RESTART_FLOOR": "10", "SHUTDOWN_TIMEOUT": "6000"}).start()
    stuck = None
    try:
        deadline = time.monotonic() + 10
        while _get(gw.http + "/health")[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the failing stream shows in /health
        assert _get(gw.http + "/health")[0] == 503
        status, body = _get(gw.http + "/readyz")
        assert (status, body["status"]) == (200, "ready")
        status, body = _get(gw.http + "/livez")
        assert (status, body["status"]) == (200, "alive") and body["lastSweepMsAgo"] < 5000

        stuck = _stuck_client(gw)
        gw.proc.send_signal(signal.SIGTERM)
        seen = None
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            status, body = _get(gw.http + "/readyz")
            if status == 503:
                seen = body
                break
            time.sleep(0.01)
        assert seen is not None and seen["status"] == "draining" and seen["connections"] == 1
        assert _get(gw.http + "/livez")[0] == 200  # draining is not dead: no restart wanted
    finally:
        if stuck is not None:
            stuck.close()
        assert gw.stop() == 0
    # Probes that succeed leave no access line; the failed readiness probe does.
    access = [json.loads(x) for x in gw.lines if x.startswith("{") and '"gateway.access"' in x]
    assert not any('"GET /livez" 200' in r["msg"] or '"GET /readyz" 200' in r["msg"] for r in access)
    assert any('"GET /readyz" 503' in r["msg"] for r in access)


def _gateway() -> Gateway:
    metrics = build_metrics()
    hub = Hub(metrics, max_connections_per_user=5, broker=MemoryBroker())
    return Gateway(Settings(sweep_interval=0.05), metrics, hub)


def test_liveness_fails_when_the_sweeper_dies_or_the_loop_stalls():
    gateway = _gateway()
    app = create_app(gateway).test_client()
    gateway.start_sweeper()
    gevent.sleep(0.2)
    response = app.get("/livez")
    assert response.status_code == 200 and response.get_json()["status"] == "alive"

    gateway.last_sweep -= 60  # as if the loop had been blocked for a minute
    gateway._sweeper.kill()
    response = app.get("/livez")
    assert response.status_code == 503
    assert response.get_json() == {"status": "stalled", "reason": "the liveness sweeper has stopped",
                                   "lastSweepMsAgo": response.get_json()["lastSweepMsAgo"],
                                   "loopLagMs": response.get_json()["loopLagMs"]}
    response = app.get("/readyz")
    assert response.status_code == 503 and response.get_json()["status"] == "not_ready"


def test_a_blocked_loop_is_not_alive():
    gateway = _gateway()
    app = create_app(gateway).test_client()
    gateway.start_sweeper()
    gateway.last_sweep = time.monotonic() - 6.0  # no sweep for longer than 5 ticks and 5 s
    response = app.get("/livez")
    body = response.get_json()
    assert response.status_code == 503 and body["status"] == "stalled"
    assert body["reason"].startswith("no sweep for 6.0 s")
    gateway._sweeper.kill()


def _metric(gw: GatewayProcess, name: str) -> float | None:
    text = urllib.request.urlopen(gw.http + "/metrics", timeout=5).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else None


def _until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    return check()


def test_a_redis_outage_is_reported_but_leaves_the_node_ready():
    redis = RedisServer().start()
    gw = GatewayProcess({"REDIS_URL": redis.url, "LOG_LEVEL": "INFO"}).start()
    try:
        assert _until(lambda: _metric(gw, "ws_redis_connected") == 1.0)
        redis.stop()
        assert _until(lambda: _metric(gw, "ws_redis_connected") == 0.0)
        status, body = _get(gw.http + "/health")
        assert (status, body["status"]) == (200, "degraded")
        assert _get(gw.http + "/readyz") == (200, {"status": "ready", "connections": 0})
        assert _get(gw.http + "/livez")[0] == 200
    finally:
        gw.stop()
        redis.cleanup()
    lost = [json.loads(x) for x in gw.lines if "redis connection lost" in x]
    assert lost and lost[0]["level"] == "ERROR"


def test_without_redis_there_is_no_redis_gauge():
    gw = GatewayProcess().start()
    try:
        assert _metric(gw, "ws_redis_connected") is None
    finally:
        gw.stop()
