"""WORKERS=N: several gateway processes on one port, sharing one real redis-server.

What a user sees: connections on the one public port land on both workers;
a publication reaches a user's connections whichever worker holds them;
the per-user limit counts all of them; a worker that dies is restarted
(and says so in the log) while the other keeps its clients; SIGTERM drains
every client with 1001 and the parent exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import websocket

from tests.harness import ROOT, GatewayProcess
from tests.redis_server import RedisServer, free_port, free_port_range

SERVICE_KEY = "test-service-key-placeholder"




@pytest.fixture(scope="module")
def redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def pool(redis):
    port = free_port_range(3)
    gw = GatewayProcess({"WORKERS": "2", "PORT": str(port), "REDIS_URL": redis.url, "SERVICE_API_KEY": SERVICE_KEY,
                         "LOG_LEVEL": "INFO", "RESTART_BASE": "100", "RESTART_FLOOR": "50"}).start(timeout=30)
    yield gw
    gw.stop()


def stats(port: int) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ws/stats",
                                     headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def own_ports(gw: GatewayProcess) -> list[int]:
    return [gw.port + 1, gw.port + 2]


def wait_until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:  # not listening yet
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def publish(gw: GatewayProcess, user: str, data: dict) -> int:
    req = urllib.request.Request(gw.http + "/api/publish",
                                 json.dumps({"channel": "trades", "user": user, "data": data}).encode(),
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {SERVICE_KEY}"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def test_connections_spread_over_workers_and_publications_reach_every_one(pool):
    clients = []
    for i in range(24):
        c = pool.connect(f"user{i % 8}")
        assert c.recv()["type"] == "connection"
        assert c.request({"type": "subscribe", "channel": "trades"})["type"] == "subscribed"
        clients.append((i % 8, c))
    counts = [stats(p)["connections"] for p in own_ports(pool)]
    assert sum(counts) == 24 and min(counts) > 0, counts  # both workers hold some
    assert publish(pool, "user1", {"n": 1}) == 202
    for user, c in clients:
        if user == 1:
            msg = c.recv_until(lambda m: m["type"] == "data")
            assert msg["channel"] == "trades" and msg["data"] == {"n": 1}
    # Private channels stay private across workers: user0's connections got nothing.
    for user, c in clients:
        if user == 0:
            with pytest.raises(websocket.WebSocketTimeoutException):
                c.recv_until(lambda m: m["type"] == "data", timeout=0.5)
    for _, c in clients:
        c.close()


def closes_4503(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('ws_close_codes_total{code="4503"}'):
                return int(float(line.split()[-1]))
    return 0


def test_per_user_limit_counts_connections_on_every_worker(pool):
    held = []
    for _ in range(5):
        c = pool.connect("frank")
        assert c.recv()["type"] == "connection"
        held.append(c)
    for _ in range(6):
        extra = pool.connect("frank")
        assert extra.expect_close() == (4503, "at most 5 connections per user")
    ports = own_ports(pool)
    local = [stats(p)["connectionsByUser"].get("frank", 0) for p in ports]
    refused = [closes_4503(p) for p in ports]
    assert sum(local) == 5 and sum(refused) == 6
    # A worker holding fewer than 5 of frank's connections refused one: it counted the other's.
    assert any(r > 0 and n < 5 for r, n in zip(refused, local, strict=True)), (local, refused)
    for c in held:
        c.close()


def test_a_dead_worker_is_restarted_and_the_other_keeps_its_clients(pool):
    ports = own_ports(pool)
    victim = pool.wait_for_log(lambda r: r.get("worker") == 0 and "serving on port" in r.get("msg", ""))["pid"]
    survivors = []
    for i in range(12):
        c = pool.connect(f"s{i}")
        assert c.recv()["type"] == "connection"
        survivors.append(c)
    on_1 = stats(ports[1])["connections"]
    os.kill(victim, signal.SIGKILL)
    record = pool.wait_for_log(lambda r: r.get("logger") == "gateway.workers" and "exited" in r.get("msg", ""))
    assert record["level"] == "ERROR" and record["worker_index"] == 0 and record["exit_code"] == -9
    pool.wait_for_log(lambda r: r.get("logger") == "gateway.workers" and "restarted" in r.get("msg", ""))
    wait_until(lambda: stats(ports[0])["connections"] == 0)  # the new worker 0 answers on its own port
    assert stats(ports[1])["connections"] == on_1  # the other worker's clients are still there
    fresh = [pool.connect(f"after{i}") for i in range(8)]
    for c in fresh:
        assert c.recv()["type"] == "connection"
    assert stats(ports[0])["connections"] > 0  # and takes new connections on the public port
    for c in [*survivors, *fresh]:
        c.close()


def test_sigterm_drains_every_worker_and_the_parent_exits_zero(pool):
    clients = []
    for i in range(10):
        c = pool.connect(f"t{i}")
        assert c.recv()["type"] == "connection"
        clients.append(c)
    assert pool.stop() == 0
    for c in clients:
        code, reason = c.expect_close()
        assert code == 1001 and "reconnect in" in reason


def test_workers_without_redis_refuse_to_start():
    env = {**os.environ, "WORKERS": "2", "PORT": str(free_port()), "JWT_SECRET": "x" * 40, "MARKET_SOURCE": "none"}
    env.pop("REDIS_URL", None)
    out = subprocess.run([sys.executable, str(ROOT / "app.py")], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "WORKERS > 1 needs REDIS_URL" in out.stderr


def test_a_worker_that_cannot_start_stops_the_others(redis):
    port = free_port_range(3)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port + 2))  # worker 1's own port is taken
    blocker.listen()
    env = {**os.environ, "WORKERS": "2", "PORT": str(port), "HOST": "127.0.0.1", "REDIS_URL": redis.url,
           "JWT_SECRET": "x" * 40, "MARKET_SOURCE": "none", "LOG_FORMAT": "json"}
    try:
        out = subprocess.run([sys.executable, str(ROOT / "app.py")], env=env, capture_output=True, text=True,
                             timeout=60)
    finally:
        blocker.close()
    # The worker names the port and the setting in one line; a misconfiguration is exit 2.
    assert out.returncode == 2
    assert f"cannot start: port {port + 2} on 127.0.0.1 is already in use (WORKER_PORTS_FROM)" in out.stderr
    assert "cannot start the workers" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(OSError):  # nothing is left listening on the public port
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
