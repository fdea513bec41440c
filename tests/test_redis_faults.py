"""Redis faults under two real gateway processes sharing one real redis-server.

* **Redis killed and restarted** (no persistence: the history is gone): a
  subscriber on the *other* node than the publisher is told to ``resync``
  soon after redis-server accepts connections again, and live delivery goes
  on from exactly the position that ``resync`` gave.
* **Half-open Redis** (redis-server SIGSTOPped: every TCP connection stays
  open, nothing is answered or delivered): each node's probe notices within
  two probe intervals (``ws_redis_connected`` 0 on /metrics, ERROR "redis
  connection lost"); after SIGCONT the subscriber receives every publication
  that was accepted, once and in order.
* **Long outages**: the wait between reconnect attempts stays under the
  same bound however long Redis has been gone.

The timings are printed; see them with
``.venv/bin/python -m pytest -q -s tests/test_redis_faults.py``
(docs/scale-out.md, "Redis faults", has the figures).
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from brokers.redis_broker import RedisBroker
from tests.harness import Client, GatewayProcess
from tests.test_recovery import Cluster, subscribe

# The listener's probe interval (RedisBroker(probe_interval=...), default 1 s).
PROBE_INTERVAL = 1.0
# How long each outage lasts: long enough that a reconnect backoff that grows
# with the outage (the old full jitter, 0.2 s doubling up to 5 s) has grown.
OUTAGE = 5.0
CYCLES = 3


def redis_connected(node: GatewayProcess) -> float | None:
    text = urllib.request.urlopen(node.http + "/metrics", timeout=5).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("ws_redis_connected ")]
    return values[0] if values else None


def wait_until(check: Callable[[], Any], what: str, timeout: float = 15.0, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def publish_accepted(cluster: Cluster, node: GatewayProcess, user: str, data: dict,
                     timeout: float = 15.0) -> dict:
    """Publish until the gateway accepts (202): right after an outage the first tries may get 503."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = cluster.publish(node, user, data)
        if status == 202:
            return body
        assert (status, body["error"]) == (503, "broker_unavailable"), (status, body)
        assert time.monotonic() < deadline, "publishing was still refused"
        time.sleep(0.02)


def next_data(c: Client, timeout: float = 10.0) -> dict:
    return c.recv_until(lambda m: m["type"] in ("data", "resync"), timeout=timeout)


def test_a_subscriber_on_another_node_is_told_to_resync_within_2s_of_redis_returning():
    cluster = Cluster("redis")
    took: list[float] = []
    try:
        c, sub = subscribe(cluster.b, "hank")
        epoch = sub["epoch"]
        for cycle in range(CYCLES):
            body = publish_accepted(cluster, cluster.a, "hank", {"cycle": cycle})
            msg = next_data(c)
            assert (msg["type"], msg["seq"], msg["epoch"]) == ("data", body["offset"], epoch)
            cluster.redis.stop()
            wait_until(lambda: redis_connected(cluster.b) == 0.0, "node b to see Redis gone")
            time.sleep(OUTAGE)  # the outage itself (what the reconnect policy has to live through)
            cluster.redis.start()  # returns as soon as redis-server answers PING again
            back = time.monotonic()
            resync = c.recv_until(lambda m: m["type"] == "resync", timeout=20)
            took.append(time.monotonic() - back)
            # Redis came back empty: a new epoch, and the client's position is before its first offset.
            assert resync["channel"] == "trades" and resync["epoch"] != epoch
            assert resync["offset"] == 0
            epoch = resync["epoch"]
            body = publish_accepted(cluster, cluster.a, "hank", {"after": cycle})
            live = next_data(c)
            # "continue from the position given": the next message is that position + 1.
            assert live["type"] == "data" and live["data"] == {"after": cycle}
            assert (live["seq"], live["epoch"]) == (resync["offset"] + 1, resync["epoch"])
            assert (body["offset"], body["epoch"]) == (live["seq"], live["epoch"])
        assert c.request({"type": "ping"})["type"] == "pong"  # nothing else arrived: no duplicate
        c.close()
    finally:
        cluster.stop()
    print(f"\nresync on the other node after redis-server answered again ({OUTAGE:g} s outages): "
          + ", ".join(f"{t:.3f} s" for t in took))
    # The requirement (issue "Zero silent loss", item 10) is under 2 s; the
    # reconnect policy is designed for about 0.5 s, so 2 s is the generous bound.
    assert max(took) < 2.0, took


def test_a_half_open_redis_is_detected_within_two_probe_intervals_and_nothing_is_lost():
    cluster = Cluster("redis")
    assert cluster.redis is not None and cluster.redis.proc is not None
    proc = cluster.redis.proc
    nodes = {"a": cluster.a, "b": cluster.b}
    try:
        c, _ = subscribe(cluster.b, "ivy")
        for node in nodes.values():
            wait_until(lambda node=node: redis_connected(node) == 1.0, "Redis connected")
        accepted = [publish_accepted(cluster, cluster.a, "ivy", {"i": i})["offset"] for i in range(3)]
        assert [next_data(c)["seq"] for _ in accepted] == accepted

        proc.send_signal(signal.SIGSTOP)  # connections stay open; nothing is answered or delivered
        stopped = time.monotonic()
        detected: dict[str, float] = {}

        def all_detected() -> bool:
            for name, node in nodes.items():
                if name not in detected and redis_connected(node) == 0.0:
                    detected[name] = time.monotonic() - stopped
            return len(detected) == len(nodes)

        wait_until(all_detected, "ws_redis_connected 0 on both nodes", timeout=30)
        for node in nodes.values():
            lost = node.wait_for_log(lambda r: r.get("msg", "").startswith("redis connection lost"))
            assert lost["level"] == "ERROR" and "probe" in lost["error"]
        assert c.request({"type": "ping"})["type"] == "pong"  # the client's connection stays

        proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        # Publish at once, while the subscriber's node may still be reconnecting:
        # what it misses live it must fetch from the stream.
        after = [publish_accepted(cluster, cluster.a, "ivy", {"j": j})["offset"] for j in range(10)]
        got = []
        while len(got) < len(after):
            msg = next_data(c)
            assert msg["type"] == "data", msg  # Redis kept its data: recovered, not a resync
            got.append(msg["seq"])
        assert got == after == list(range(accepted[-1] + 1, accepted[-1] + 11))  # all, once, in order
        assert c.request({"type": "ping"})["type"] == "pong"
        for node in nodes.values():
            wait_until(lambda node=node: redis_connected(node) == 1.0, "Redis connected again")
        reconnected = time.monotonic() - resumed
        c.close()
    finally:
        proc.send_signal(signal.SIGCONT)
        cluster.stop()
    print("\nhalf-open Redis (SIGSTOP) detected after: "
          + ", ".join(f"node {k} {v:.3f} s" for k, v in sorted(detected.items()))
          + f"; both connected again {reconnected:.3f} s after SIGCONT")
    # The requirement: within two probe intervals (2 s at the default 1 s).
    # Asserted at twice that, generously, so that a loaded machine does not
    # fail it; the figures above are the measurement.
    assert max(detected.values()) < 4 * PROBE_INTERVAL, detected


def test_a_publish_redis_never_answers_is_not_called_unpublished():
    """Sent to a frozen Redis, a publication may run when it resumes: the answer says so, and it arrives."""
    cluster = Cluster("redis")
    assert cluster.redis is not None and cluster.redis.proc is not None
    proc = cluster.redis.proc
    try:
        c, _ = subscribe(cluster.b, "jill")
        first = publish_accepted(cluster, cluster.a, "jill", {"n": 1})["offset"]
        assert next_data(c)["seq"] == first
        proc.send_signal(signal.SIGSTOP)
        status, body = cluster.publish(cluster.a, "jill", {"n": 2})  # taken by the frozen server
        assert (status, body["error"]) == (503, "broker_timeout"), body
        assert "may have been stored" in body["message"]
        proc.send_signal(signal.SIGCONT)
        message = next_data(c, timeout=15)
        assert message["type"] == "data" and message["data"] == {"n": 2} and message["seq"] == first + 1
        c.close()
    finally:
        proc.send_signal(signal.SIGCONT)
        cluster.stop()


def test_the_reconnect_wait_stays_short_for_outages_of_any_length():
    # The end-to-end test above covers 5 s outages; this is the same bound for
    # the hours an outage may last (the wait after which a node is back once
    # Redis answers): under 2 s, and no failure from the attempt count
    # (2 ** 1100 does not fit a float: the listener would die, and the node
    # never reconnect).
    broker = RedisBroker("redis://127.0.0.1:1/0")
    try:
        for outage in (0.0, 30.0, 59.9, 60.0, 600.0, 86400.0):
            for attempt in (0, 1, 5, 100, 1100, 10**6):
                waits = [broker._retry_delay(attempt, outage) for _ in range(200)]
                assert 0.05 <= min(waits) and max(waits) <= (0.5 if outage < 60 else 1.5), (outage, attempt)
    finally:
        broker.close()
