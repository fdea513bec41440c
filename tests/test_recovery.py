"""History and recovery, and scale-out: one shared suite for the memory and the Redis broker.

Every test runs against a real gateway process; the ``redis`` variant runs
two gateway processes on one real redis-server.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import websocket

from tests.harness import Client, GatewayProcess
from tests.redis_server import RedisServer

SERVICE_KEY = "test-service-key-placeholder"


class Cluster:
    """One gateway (memory broker) or two gateways sharing a redis-server."""

    def __init__(self, kind: str, env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.redis = RedisServer().start() if kind == "redis" else None
        base = {"SERVICE_API_KEY": SERVICE_KEY, "HISTORY_SIZE": "20", **(env or {})}
        if self.redis is not None:
            base["REDIS_URL"] = self.redis.url
        self.a = GatewayProcess(base).start()
        self.b = GatewayProcess({**base, "JWT_SECRET": self.a.secret}).start() if self.redis else self.a
        self.b.secret = self.a.secret

    def publish(self, node: GatewayProcess, user: str, data: dict, channel: str = "trades") -> tuple[int, dict]:
        req = urllib.request.Request(node.http + "/api/publish",
                                     json.dumps({"channel": channel, "user": user, "data": data}).encode(),
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {SERVICE_KEY}"},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stop(self) -> None:
        self.a.stop()
        if self.b is not self.a:
            self.b.stop()
        if self.redis is not None:
            self.redis.cleanup()


@pytest.fixture(params=["memory", "redis"])
def cluster(request):
    c = Cluster(request.param)
    yield c
    c.stop()


def subscribe(node: GatewayProcess, user: str, channel: str = "trades",
              since: dict | None = None) -> tuple[Client, dict]:
    c = node.connect(user)
    c.recv()
    msg = {"type": "subscribe", "channel": channel}
    if since is not None:
        msg["since"] = since
    return c, c.request(msg)


def data(c: Client, n: int) -> list[dict]:
    return [c.recv_until(lambda m: m["type"] == "data") for _ in range(n)]


def test_publication_reaches_subscribers_on_every_node(cluster):
    ca, _ = subscribe(cluster.a, "alice")
    cb, sub = subscribe(cluster.b, "alice")
    status, body = cluster.publish(cluster.a, "alice", {"id": 1})
    assert status == 202 and body["offset"] == sub["offset"] + 1 and body["epoch"] == sub["epoch"]
    for c in (ca, cb):
        msg = c.recv_until(lambda m: m["type"] == "data")
        assert msg["data"] == {"id": 1} and msg["seq"] == body["offset"] and msg["epoch"] == body["epoch"]
    ca.close(), cb.close()


def test_reconnect_with_position_recovers_every_message_exactly_once(cluster):
    c, _ = subscribe(cluster.a, "bob")
    for i in range(3):
        cluster.publish(cluster.a, "bob", {"i": i})
    got = data(c, 3)
    last = got[-1]
    c.close()
    for i in range(3, 11):  # published while bob is away, on either node
        cluster.publish(cluster.a if i % 2 else cluster.b, "bob", {"i": i})
    c2, sub2 = subscribe(cluster.b, "bob", since={"offset": last["seq"], "epoch": last["epoch"]})
    assert sub2["recovered"] is True and sub2["epoch"] == last["epoch"]
    cluster.publish(cluster.a, "bob", {"i": 11})
    recovered = data(c2, 9)
    assert [m["data"]["i"] for m in recovered] == list(range(3, 12))
    assert [m["seq"] for m in recovered] == list(range(last["seq"] + 1, last["seq"] + 10))
    assert c2.request({"type": "ping"})["type"] == "pong"  # nothing more: no duplicates
    c2.close()


def test_recovery_while_publishing_has_no_gap_and_no_duplicate(cluster):
    c, _ = subscribe(cluster.a, "carol")
    stop = threading.Event()
    sent: list[int] = []

    def publisher() -> None:
        for i in range(100):
            if stop.is_set():
                return
            status, body = cluster.publish(cluster.b, "carol", {"i": i})
            assert status == 202
            sent.append(body["offset"])
            time.sleep(0.005)  # paced, so the gap stays within HISTORY_SIZE

    t = threading.Thread(target=publisher)
    t.start()
    first = c.recv_until(lambda m: m["type"] == "data")
    c.close()
    time.sleep(0.05)
    c2, sub2 = subscribe(cluster.a, "carol", since={"offset": first["seq"], "epoch": first["epoch"]})
    t.join(20)
    stop.set()
    assert sub2["recovered"] is True
    seqs = [first["seq"]]
    while seqs[-1] < sent[-1]:
        seqs.append(c2.recv_until(lambda m: m["type"] == "data")["seq"])
    assert seqs == list(range(first["seq"], sent[-1] + 1))  # every one, once, in order
    c2.close()


def test_position_from_another_epoch_or_too_old_is_not_recovered(cluster):
    c, sub = subscribe(cluster.a, "dave", since={"offset": 3, "epoch": "not-an-epoch"})
    assert sub["recovered"] is False and sub["offset"] == 0
    c.close()
    c, sub = subscribe(cluster.a, "dave")
    cluster.publish(cluster.a, "dave", {"i": 0})
    first = data(c, 1)[0]
    c.close()
    for i in range(25):  # more than HISTORY_SIZE=20 while away
        cluster.publish(cluster.a, "dave", {"i": i + 1})
    c2, sub2 = subscribe(cluster.b, "dave", since={"offset": first["seq"], "epoch": first["epoch"]})
    assert sub2["recovered"] is False and sub2["offset"] == first["seq"] + 25
    cluster.publish(cluster.a, "dave", {"i": 99})
    assert data(c2, 1)[0]["data"] == {"i": 99}  # live continues from the current position
    c2.close()


def test_a_batch_published_while_away_is_recovered_exactly_once(cluster):
    """POST /api/publish/batch stores like single publications: recovered with ``since``, once, in order;
    the same batch retried (idempotency keys) adds nothing to recover."""
    c, _ = subscribe(cluster.a, "bea")
    cluster.publish(cluster.a, "bea", {"i": -1})
    last = data(c, 1)[0]
    c.close()
    items = [{"channel": "trades", "user": user, "data": {"i": i}, "id": f"away-{i}"}
             for i in range(12) for user in ("bea", "ben")]

    def send(node: GatewayProcess) -> list[dict]:
        req = urllib.request.Request(node.http + "/api/publish/batch", json.dumps({"publications": items}).encode(),
                                     {"Content-Type": "application/json",
                                      "Authorization": f"Bearer {SERVICE_KEY}"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
            return json.loads(resp.read())["results"]

    first = send(cluster.a)
    assert all("offset" in r and not r.get("duplicate") for r in first)
    assert all(r["duplicate"] is True for r in send(cluster.b))  # a retry: nothing new
    c2, sub2 = subscribe(cluster.b, "bea", since={"offset": last["seq"], "epoch": last["epoch"]})
    assert sub2["recovered"] is True
    recovered = data(c2, 12)
    assert [m["data"]["i"] for m in recovered] == list(range(12))
    assert [m["seq"] for m in recovered] == [r["offset"] for r, item in zip(first, items, strict=True)
                                              if item["user"] == "bea"]
    assert c2.request({"type": "ping"})["type"] == "pong"  # nothing more: no duplicates
    c2.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_after_the_history_expires_resync_gives_the_position_before_the_next_message(kind):
    cluster = Cluster(kind, {"HISTORY_TTL": "1000"})
    try:
        c, _ = subscribe(cluster.b, "iris")
        cluster.publish(cluster.a, "iris", {"i": 1})
        first = data(c, 1)[0]
        time.sleep(1.5)  # past HISTORY_TTL (1 s): the history expires, the next publication starts a new epoch
        status, body = cluster.publish(cluster.a, "iris", {"i": 2})
        assert status == 202 and body["epoch"] != first["epoch"]
        resync = c.recv_until(lambda m: m["type"] == "resync")
        live = data(c, 1)[0]
        assert live["data"] == {"i": 2} and resync["epoch"] == live["epoch"] == body["epoch"]
        # "continue from the position given": the next message is that position + 1, not a duplicate of it.
        assert live["seq"] == resync["offset"] + 1 == body["offset"]
        c.close()
    finally:
        cluster.stop()


def test_market_data_keeps_latest_value_not_a_stream(cluster):
    c = cluster.a.connect("erin")
    c.recv()
    reply = c.request({"type": "subscribe", "channel": "system-health", "since": {"offset": 1, "epoch": "x"}})
    assert reply["recovered"] is False
    c.close()


def test_per_user_connection_limit_holds_across_nodes(cluster):
    clients = []
    for i in range(5):
        c = (cluster.a if i % 2 else cluster.b).connect("frank")
        assert c.recv()["type"] == "connection"
        clients.append(c)
    for node in (cluster.a, cluster.b):
        extra = node.connect("frank")
        assert extra.expect_close() == (4503, "at most 5 connections per user")
    for c in clients:
        c.close()


def test_concurrent_connects_across_nodes_exactly_five_succeed(cluster):
    token = cluster.a.token("gina")
    outcomes: list[str] = []
    done = threading.Event()
    barrier = threading.Barrier(12)

    def attempt(node: GatewayProcess) -> None:
        barrier.wait()
        ws = websocket.create_connection(f"{node.ws_url}?token={token}", timeout=5)
        opcode, _ = ws.recv_data(control_frame=True)
        outcomes.append("ok" if opcode == websocket.ABNF.OPCODE_TEXT else "refused")
        if opcode == websocket.ABNF.OPCODE_TEXT:
            done.wait(10)
        ws.close()

    threads = [threading.Thread(target=attempt, args=(cluster.a if i % 2 else cluster.b,)) for i in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(outcomes) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    for t in threads:
        t.join(10)
    assert outcomes.count("ok") == 5 and outcomes.count("refused") == 7


def test_redis_restart_mid_stream_clients_stay_and_are_told_to_resync():
    cluster = Cluster("redis")
    try:
        c, sub = subscribe(cluster.b, "hank")
        accepted: list[int] = []
        for i in range(5):
            status, body = cluster.publish(cluster.a, "hank", {"i": i})
            assert status == 202
            accepted.append(body["offset"])
        assert [m["seq"] for m in data(c, 5)] == accepted
        cluster.redis.stop()
        status, body = cluster.publish(cluster.a, "hank", {"i": "during"})
        assert (status, body["error"]) == (503, "broker_unavailable")  # refused, not accepted and lost
        health = json.loads(urllib.request.urlopen(cluster.b.http + "/health", timeout=5).read())
        deadline = time.monotonic() + 10
        while health["components"]["broker"]["connected"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            health = json.loads(urllib.request.urlopen(cluster.b.http + "/health", timeout=5).read())
        assert health["status"] == "degraded"  # still serving (200), not taken out of rotation
        assert c.request({"type": "ping"})["type"] == "pong"  # the client's connection stays
        cluster.redis.start()  # same port, no persistence: the history is gone
        resync = c.recv_until(lambda m: m["type"] == "resync", timeout=15)
        assert resync["channel"] == "trades" and resync["epoch"] != sub["epoch"]
        deadline = time.monotonic() + 10
        while True:
            status, body = cluster.publish(cluster.a, "hank", {"i": "after"})
            if status == 202:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        live = c.recv_until(lambda m: m["type"] == "data")
        assert live["data"] == {"i": "after"} and live["epoch"] == body["epoch"] == resync["epoch"]
        c.close()
    finally:
        cluster.stop()
