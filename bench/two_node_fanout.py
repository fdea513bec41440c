"""Fan-out of a brokered channel over two gateway nodes sharing Redis, beside one node.

    python bench/two_node_fanout.py [--clients-per-node 50] [--seconds 5] [--publishers 4]

A service publishes to one user's ``signals`` channel through
``POST /api/publish`` on node A as fast as ``--publishers`` threads can;
clients subscribed to that channel are split over node A and node B (or all
on the single node, memory broker). Reports publications/s, deliveries/s
per node, and whether every client received every publication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.wsclient import connect
from tests.harness import GatewayProcess
from tests.redis_server import RedisServer

KEY = "bench-service-key-placeholder"
USER = "fan"


def _publisher(node: GatewayProcess, stop: threading.Event, counts: list[int]) -> None:
    body = {"channel": "signals", "user": USER, "data": {"pad": "x" * 150}}
    while not stop.is_set():
        req = urllib.request.Request(node.http + "/api/publish", json.dumps(body).encode(),
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
        counts[0] += 1


async def _run(nodes: list[GatewayProcess], publish_node: GatewayProcess, clients_per_node: int,
               seconds: float, publishers: int) -> dict:
    received: dict[int, int] = {}
    clients = []
    for n, node in enumerate(nodes):
        for _ in range(clients_per_node):
            c = await connect("127.0.0.1", node.port, f"/ws?token={node.token(USER)}")
            await c.recv()
            c.send_json({"type": "subscribe", "channel": "signals"})
            await c.recv()
            clients.append((n, c))
    received = {n: 0 for n in range(len(nodes))}

    async def reader(n: int, c) -> None:
        while True:
            await c.recv()
            received[n] += 1

    tasks = [asyncio.ensure_future(reader(n, c)) for n, c in clients]
    stop, counts = threading.Event(), [0]
    threads = [threading.Thread(target=_publisher, args=(publish_node, stop, counts)) for _ in range(publishers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    await asyncio.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    published = counts[0]
    await asyncio.sleep(1.0)  # let the last ones arrive
    elapsed = time.perf_counter() - start
    for t in tasks:
        t.cancel()
    for _, c in clients:
        c.abort()
    return {
        "nodes": len(nodes),
        "clients": len(clients),
        "publications_per_s": round(published / seconds, 1),
        "deliveries_per_s": round(sum(received.values()) / elapsed, 1),
        "deliveries_per_s_by_node": {f"node{n}": round(v / elapsed, 1) for n, v in received.items()},
        "every_client_got_every_publication": all(v == published * clients_per_node for v in received.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients-per-node", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--publishers", type=int, default=4)
    args = parser.parse_args()
    env = {"SERVICE_API_KEY": KEY, "WS_MAX_CONNECTIONS_PER_USER": "100000", "LOG_LEVEL": "INFO"}
    rows = []
    with GatewayProcess(env) as single:
        rows.append(("one node, memory broker", asyncio.run(_run(
            [single], single, args.clients_per_node * 2, args.seconds, args.publishers))))
    redis = RedisServer().start()
    try:
        a = GatewayProcess({**env, "REDIS_URL": redis.url}).start()
        b = GatewayProcess({**env, "REDIS_URL": redis.url, "JWT_SECRET": a.secret}).start()
        b.secret = a.secret
        try:
            rows.append(("two nodes, Redis broker", asyncio.run(_run(
                [a, b], a, args.clients_per_node, args.seconds, args.publishers))))
        finally:
            a.stop(), b.stop()
    finally:
        redis.cleanup()
    for name, row in rows:
        print(name, json.dumps(row))


if __name__ == "__main__":
    main()
