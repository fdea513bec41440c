"""Publications per second through the publishing API, accepted and delivered to a subscribed client.

    python bench/publish_rate.py [--single 5000] [--batches 1000] [--batch-size 100] [--publishers 2]

Two setups on 127.0.0.1: one gateway process with the memory broker; two
gateway processes sharing a redis-server, the service publishing to node A
and the client subscribed on node B. In each, two ways of publishing to one
user's ``trades`` channel:

* **single**: ``POST /api/publish``, one publication per request, over
  kept-alive HTTP connections (today's path);
* **batch**: ``POST /api/publish/batch``, ``--batch-size`` publications per
  request, each with its own idempotency key (``id``), as a service would
  send them.

``--publishers`` threads each keep one connection and send their requests
one after the other. The subscriber is a separate process (a blocking
client that parses frames from a large buffer: its reading must not share
the publishers' interpreter) that counts the ``data`` messages and checks
that it got every accepted publication exactly once, in offset order.

Flow control: the publishers hold back while more than ``--window``
publications (3,000, about 0.5 MB of frames) are accepted and not yet
received, since a subscriber further behind than ``WS_QUEUE_BYTES`` (1 MiB)
is cut as a slow consumer (4001), by design. The figures are therefore
rates a subscriber keeps up with, not bursts into a queue.

Figures: *accepted/s* is publications answered with an offset per second
of publishing (first request sent to last answer); *delivered/s* is
publications per second from the first request to the subscriber's last
message. Both count only what was accepted; a refused item fails the run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import GatewayProcess
from tests.redis_server import RedisServer

KEY = "bench-service-key-placeholder"
USER = "rate"
PAD = "x" * 64  # a publication of about 100 bytes of data, like a small trade or status


# -- the subscriber -------------------------------------------------------------------------------------


class _Reader:
    """A blocking WebSocket client that reads frames from a large buffer (asyncio costs more per frame)."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())

    def send(self, obj: Any, opcode: int = 0x1) -> None:
        payload = json.dumps(obj).encode() if opcode == 0x1 else obj
        mask = os.urandom(4)
        n = len(payload)
        head = bytes((0x80 | opcode, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def messages(self) -> Any:
        """Text messages' payloads as they come (pings answered, a close raises)."""
        buf, pos = self.buf, 0
        while True:
            while True:
                if len(buf) - pos < 2:
                    break
                opcode, length = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
                at = pos + 2
                if length == 126:
                    if len(buf) - pos < 4:
                        break
                    length, at = struct.unpack_from("!H", buf, pos + 2)[0], pos + 4
                elif length == 127:
                    if len(buf) - pos < 10:
                        break
                    length, at = struct.unpack_from("!Q", buf, pos + 2)[0], pos + 10
                if len(buf) - at < length:
                    break
                payload, pos = buf[at:at + length], at + length
                if opcode == 0x1:
                    yield payload
                elif opcode == 0x9:
                    self.send(payload, 0xA)
                elif opcode == 0x8:
                    raise ConnectionError(f"closed: {payload[:2].hex()} {payload[2:].decode(errors='replace')}")
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection lost")
            buf, pos = buf[pos:] + chunk, 0


def _subscriber(port: int, token: str, expected: int, conn: Any, progress: Any) -> None:
    try:
        reader = _Reader(port, token)
        incoming = reader.messages()
        next(incoming)  # connection
        reader.send({"type": "subscribe", "channel": "trades"})
        subscribed = json.loads(next(incoming))
        conn.send({"ready": True, "offset": subscribed["offset"]})
        count, last_seq, in_order = 0, subscribed["offset"], True
        for payload in incoming:
            message = json.loads(payload)
            if message["type"] != "data":
                raise RuntimeError(f"unexpected message {message}")
            in_order = in_order and message["seq"] == last_seq + 1
            last_seq = message["seq"]
            count += 1
            if count % 500 == 0:
                progress.value = count
            if count == expected:
                break
        done_at = time.monotonic()
        progress.value = count
        # Nothing more (no duplicate): the answer to a ping is next.
        reader.send({"type": "ping", "id": "end"})
        extra = 0
        for payload in incoming:
            if json.loads(payload)["type"] == "pong":
                break
            extra += 1
        conn.send({"count": count, "in_order": in_order, "extra": extra, "done_at": done_at})
        reader.sock.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


# -- the publishers -------------------------------------------------------------------------------------


def _requests(mode: str, total: int, batch_size: int, run: str) -> list[tuple[str, bytes, int]]:
    """(path, body, publications) for every request, built before the clock starts."""
    if mode == "single":
        return [("/api/publish", json.dumps({"channel": "trades", "user": USER, "data": {"i": i, "pad": PAD}})
                 .encode(), 1) for i in range(total)]
    out = []
    for start in range(0, total, batch_size):
        items = [{"channel": "trades", "user": USER, "data": {"i": i, "pad": PAD}, "id": f"{run}-{i}"}
                 for i in range(start, min(total, start + batch_size))]
        out.append(("/api/publish/batch", json.dumps({"publications": items}).encode(), len(items)))
    return out


class _Publishers:
    """``publishers`` threads, each on one kept-alive connection, sending their share of the requests."""

    def __init__(self, port: int, work: list[tuple[str, bytes, int]], publishers: int, progress: Any,
                 window: int) -> None:
        self.port = port
        self.shares = [work[i::publishers] for i in range(publishers)]
        self.progress = progress  # publications the subscriber has received (a shared counter)
        self.window = window
        self.lock = threading.Lock()
        self.accepted = 0
        self.sent = 0  # publications sent or being sent
        self.failures: list[str] = []

    def run(self) -> None:
        threads = [threading.Thread(target=self._publish, args=(share,)) for share in self.shares]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _publish(self, share: list[tuple[str, bytes, int]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        for path, body, n in share:
            # Flow control: a subscriber more than WS_QUEUE_BYTES behind is cut (4001, by design);
            # hold back while more than ``window`` publications are on their way to it.
            while self.sent + n - self.progress.value > self.window:
                time.sleep(0.0005)
            with self.lock:
                self.sent += n
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            if path == "/api/publish":
                good = 1 if response.status == 202 else 0
            else:
                good = sum(1 for r in answer["results"] if "offset" in r and not r.get("duplicate")) \
                    if response.status == 200 else 0
            if good != n:
                self.failures.append(f"{response.status} {str(answer)[:200]}")
            with self.lock:
                self.accepted += good
        conn.close()


def measure(pub: GatewayProcess, sub: GatewayProcess, mode: str, total: int, batch_size: int,
            publishers: int, window: int, run: str) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    progress = multiprocessing.Value("q", 0, lock=False)
    proc = multiprocessing.Process(target=_subscriber, args=(sub.port, sub.token(USER), total, child, progress),
                                   daemon=True)
    proc.start()
    ready = parent.recv()
    if "error" in ready:
        raise RuntimeError(ready["error"])
    publishing = _Publishers(pub.port, _requests(mode, total, batch_size, run), publishers, progress, window)
    start = time.monotonic()
    publishing.run()
    answered = time.monotonic()
    if not parent.poll(120):
        raise RuntimeError("the subscriber did not finish")
    result = parent.recv()
    proc.join(5)
    if "error" in result:
        raise RuntimeError(result["error"])
    if publishing.failures:
        raise RuntimeError(f"{len(publishing.failures)} refusals, e.g. {publishing.failures[0]}")
    return {
        "mode": mode if mode == "single" else f"batch of {batch_size}",
        "publications": total,
        "accepted_per_s": round(publishing.accepted / (answered - start)),
        "delivered_per_s": round(result["count"] / (result["done_at"] - start)),
        "every_one_once_in_order": result["count"] == publishing.accepted == total and result["in_order"]
        and result["extra"] == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=5000, help="publications sent one per request")
    parser.add_argument("--batches", type=int, default=1000, help="batch requests")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--publishers", type=int, default=2, help="connections publishing at once")
    parser.add_argument("--window", type=int, default=3000,
                        help="publications accepted and not yet received before the publishers hold back")
    parser.add_argument("--only", choices=("memory", "redis"), default=None)
    args = parser.parse_args()
    env = {"SERVICE_API_KEY": KEY, "LOG_LEVEL": "INFO"}
    rows: list[tuple[str, dict[str, Any]]] = []

    def both(pub: GatewayProcess, sub: GatewayProcess, setup: str) -> None:
        for mode, total in (("single", args.single), ("batch", args.batches * args.batch_size)):
            row = measure(pub, sub, mode, total, args.batch_size, args.publishers, args.window, f"{setup}-{mode}")
            rows.append((setup, row))
            print(setup, json.dumps(row), flush=True)

    if args.only in (None, "memory"):
        with GatewayProcess(env) as single:
            both(single, single, "one process, memory broker")
    if args.only in (None, "redis"):
        redis = RedisServer().start()
        try:
            a = GatewayProcess({**env, "REDIS_URL": redis.url}).start()
            b = GatewayProcess({**env, "REDIS_URL": redis.url, "JWT_SECRET": a.secret}).start()
            b.secret = a.secret
            try:
                both(a, b, "two processes, Redis (publish to A, subscriber on B)")
            finally:
                a.stop(), b.stop()
        finally:
            redis.cleanup()
    print()
    print("| setup | publishing | publications | accepted/s | delivered/s | every one once, in order |")
    print("|---|---|---|---|---|---|")
    for setup, row in rows:
        print(f"| {setup} | {row['mode']} | {row['publications']:,} | {row['accepted_per_s']:,} | "
              f"{row['delivered_per_s']:,} | {'yes' if row['every_one_once_in_order'] else 'NO'} |")


if __name__ == "__main__":
    main()
