"""Latency Redis adds between nodes, and how fast a reconnecting client recovers.

    python bench/cross_node_latency.py [--messages 500]

Runs three setups on 127.0.0.1: one gateway with the memory broker; two
gateways sharing a redis-server with the publisher on the same node as the
subscriber; and on the other node. For each, a service publishes
``--messages`` times through ``POST /api/publish`` (one at a time) and a
subscribed client measures publish-request-start → data-received. Then it
measures recovery: the client disconnects, 100 messages are published, it
reconnects with its position, and the time from the subscribe request to
the last recovered message is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import GatewayProcess
from tests.redis_server import RedisServer

KEY = "bench-service-key-placeholder"


def publish(node: GatewayProcess, user: str, data: dict) -> dict:
    req = urllib.request.Request(node.http + "/api/publish",
                                 json.dumps({"channel": "trades", "user": user, "data": data}).encode(),
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def measure(pub_node: GatewayProcess, sub_node: GatewayProcess, messages: int) -> dict:
    client = sub_node.connect("bench")
    client.recv()
    client.request({"type": "subscribe", "channel": "trades"})
    latencies = []
    for i in range(messages):
        start = time.perf_counter()
        publish(pub_node, "bench", {"i": i})
        client.recv_until(lambda m, i=i: m["type"] == "data" and m["data"]["i"] == i)
        latencies.append((time.perf_counter() - start) * 1000)
    # Recovery: away for 100 publications, back with the position.
    client.send({"type": "ping"})
    client.recv_until(lambda m: m["type"] == "pong")
    position = publish(pub_node, "bench", {"i": "mark"})
    client.recv_until(lambda m: m["type"] == "data" and m["data"]["i"] == "mark")
    client.close()
    for i in range(100):
        publish(pub_node, "bench", {"r": i})
    c2 = sub_node.connect("bench")
    c2.recv()
    start = time.perf_counter()
    reply = c2.request({"type": "subscribe", "channel": "trades",
                        "since": {"offset": position["offset"], "epoch": position["epoch"]}})
    got = [c2.recv_until(lambda m: m["type"] == "data") for _ in range(100)]
    recovery_ms = (time.perf_counter() - start) * 1000
    assert reply["recovered"] is True and [m["data"]["r"] for m in got] == list(range(100))
    c2.close()
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 3),
        "recover_100_ms": round(recovery_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    env = {"SERVICE_API_KEY": KEY, "LOG_LEVEL": "INFO", "HISTORY_SIZE": "1000"}
    results = {}
    with GatewayProcess(env) as single:
        results["memory broker, one node"] = measure(single, single, args.messages)
    redis = RedisServer().start()
    try:
        a = GatewayProcess({**env, "REDIS_URL": redis.url}).start()
        b = GatewayProcess({**env, "REDIS_URL": redis.url, "JWT_SECRET": a.secret}).start()
        b.secret = a.secret
        try:
            results["redis, same node"] = measure(b, b, args.messages)
            results["redis, across nodes"] = measure(a, b, args.messages)
        finally:
            a.stop(), b.stop()
    finally:
        redis.cleanup()
    print(json.dumps(results, indent=2))
    base = results["memory broker, one node"]["p50_ms"]
    print(f"added by redis across nodes (p50): {results['redis, across nodes']['p50_ms'] - base:.3f} ms")


if __name__ == "__main__":
    main()
