"""The ingest feed of scenario (f): a Bybit-v5 public server for many symbols at a chosen rate.

Speaks Bybit v5 on ``ws://127.0.0.1:PORT/v5/public/{spot,linear}`` as Bybit
does (docs/bybit-v5.md): one ack per request (spot's and linear's shapes,
spot refusing more than 10 args with ``args size >10``, unknown topics
failing the whole request with the market's error text), JSON pongs
(``req_id`` echoed) and control-frame pongs; on subscribe an order book
snapshot at once, then deltas with ``u`` +1 each; publicTrade arrays; spot
tickers as snapshots, linear tickers as a snapshot then deltas. It also
answers ``GET /v5/market/instruments-info?category=…`` (and
``/v5/market/time``) in Bybit's shapes, which the Python feed handlers read
before they connect.

What it sends is computed before it sends (``bench/ingest_data.py``): per
symbol a cycle of book deltas that returns the book to its start, trades and
tickers, as frame templates with fixed-width slots (send time, ``u``,
``seq``, ``cs``, trade ids). The send time in ms goes into every frame's
``ts`` (and ``cts``, and each trade's ``T``), so a consumer can tell how old
a frame is; it is read with ``time.time()`` when the batch is built, just
before the write.

**Schedule.** Every subscribed topic is in one round, weighted by kind
(:data:`bench.ingest_data.KIND_WEIGHTS`: two book frames per trade and per
ticker frame), shuffled once. ``rate R`` sends R frames a second over the
round (a batch of whatever is due, every millisecond or so); ``rate 0`` sends as fast as the
consumer reads (batches of 512 while the socket takes them). When the
consumer does not read fast enough the writes back up (asyncio's buffer
above 64 KiB pauses the pump): a paced feed then sends at most 50 ms of
catch-up and counts the rest as ``shortfall`` (frames it should have sent
and did not): the consumer did not sustain R.

**Truth.** Each topic counts its frames; after ``pause`` (nothing in
flight), ``truth`` replays each book to its position and returns (and
writes, with ``path``) the top levels per book topic, and the trade frames
sent per symbol.

Control over stdin/stdout, one JSON line each way. First line out:
``{"port", "pid", "symbols"}``. Commands: ``rate`` {rate}, ``pause``,
``stats``, ``truth`` {levels, path?}, ``exit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import random
import sys
import termios
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest_data import (
    KIND_WEIGHTS,
    U0,
    BookCycle,
    Market,
    Template,
    book_snapshot,
    book_templates,
    instruments,
    symbols,
    ticker_snapshot,
    ticker_templates,
    trade_templates,
)
from simulator.protocol import (
    SPOT_MAX_ARGS,
    Category,
    RequestError,
    TopicError,
    TopicKind,
    ack,
    already_subscribed,
    args_too_many,
    invalid_topics,
    parse_request,
    parse_topic,
    pong,
)
from transport.frames import FrameError, FrameReader, Opcode, encode_close, encode_frame
from transport.handshake import Rejection, check_upgrade, parse_request_head, upgrade_response

HIGH_WATER = 64 * 1024  # asyncio write buffer above which the pump waits for the consumer
BOOK_DEPTHS = (50, 200)  # orderbook.200 for cryptofeed, which subscribes no other depth
CATCH_UP = 0.05  # seconds of frames a paced feed may send late; the rest is shortfall


def _dumps(obj: dict[str, Any]) -> bytes:
    return encode_frame(Opcode.TEXT, json.dumps(obj, separators=(",", ":")).encode())


class Feed:
    """Every topic of every category; the schedule; the pump."""

    def __init__(self, names: list[str], seed: int, steps: int, cycle: int) -> None:
        self.names = names
        self.seed = seed
        self.cycle = cycle
        self.markets = {name: Market.of(name, i, seed) for i, name in enumerate(names)}
        self.books = {name: BookCycle(m, seed, steps) for name, m in self.markets.items()}
        self._templates: dict[tuple[str, str, str, int], list[Template]] = {}
        self.topics: dict[tuple[str, str], TopicFeed] = {}  # (category, topic name)
        self.schedule: list[TopicFeed] = []
        self.upstreams: set[Upstream] = set()
        self.rate = 0.0
        self.running = False
        self.sent = 0
        self.sent_bytes = 0
        self.shortfall = 0
        self.snapshots = 0
        self._next = 0
        self._pump: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._scheduled = 0

    def templates(self, category: Category, kind: str, symbol: str, depth: int) -> list[Template]:
        key = (category.value, kind, symbol, depth)
        if key not in self._templates:
            market = self.markets[symbol]
            if kind == TopicKind.ORDERBOOK:
                self._templates[key] = book_templates(self.books[symbol], category, depth)
            elif kind == TopicKind.PUBLIC_TRADE:
                self._templates[key] = trade_templates(market, category, self.seed, self.cycle)
            else:
                self._templates[key] = ticker_templates(market, category, self.seed, self.cycle)
        return self._templates[key]

    def topic(self, category: Category, name: str) -> TopicFeed | None:
        """The topic (made on first use), or ``None`` when Bybit would refuse it here."""
        key = (category.value, name)
        if key in self.topics:
            return self.topics[key]
        try:
            parsed = parse_topic(name)
        except TopicError:
            return None
        if parsed.symbol not in self.markets or parsed.kind is TopicKind.KLINE:
            return None
        if parsed.kind is TopicKind.ORDERBOOK and parsed.depth not in BOOK_DEPTHS:
            return None
        topic = TopicFeed(self, category, parsed.kind, parsed.symbol, parsed.depth or 0, name)
        self.topics[key] = topic
        return topic

    def reschedule(self) -> None:
        """One round over every subscribed topic, weighted by kind, in a fixed shuffled order."""
        active = sorted((t for t in self.topics.values() if t.subscribers), key=lambda t: (t.category, t.name))
        round_ = [t for t in active for _ in range(KIND_WEIGHTS[t.kind.value])]
        random.Random(self.seed).shuffle(round_)
        self.schedule = round_
        self._next = 0

    # -- the pump ------------------------------------------------------------------------------

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self._t0 = asyncio.get_running_loop().time()
        self._scheduled = 0
        if not self.running:
            self.running = True
            self._pump = asyncio.create_task(self.pump())

    async def pause(self) -> None:
        self.running = False
        if self._pump is not None:
            await self._pump
            self._pump = None

    async def pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            if not self.schedule:
                await asyncio.sleep(0.01)
                continue
            if self.rate > 0:
                elapsed = loop.time() - self._t0
                due = int(elapsed * self.rate) - self._scheduled
                if due <= 0:  # at least 1 ms: uvloop's timers round anything shorter down to a busy loop
                    await asyncio.sleep(max(0.001, (self._scheduled + 1) / self.rate - elapsed))
                    continue
                cap = max(1, int(self.rate * CATCH_UP))
                if due > cap:  # the consumer held us up: what is too late is not sent
                    self.shortfall += due - cap
                    self._scheduled += due - cap
                    due = cap
                n = min(due, 4096)
            else:
                n = 512
            self._emit(n)
            self._scheduled += n
            blocked = [u for u in self.upstreams if not u.can_write.is_set()]
            if blocked:
                for u in blocked:
                    await u.can_write.wait()
            else:
                await asyncio.sleep(0)

    def _emit(self, n: int) -> None:
        ts = str(int(time.time() * 1000)).encode()
        schedule = self.schedule
        size = len(schedule)
        i = self._next
        out: dict[Upstream, list[bytes]] = {}
        for _ in range(n):
            topic = schedule[i]
            i += 1
            if i == size:
                i = 0
            frame = topic.next_frame(ts)
            for up in topic.subscribers:
                buf = out.get(up)
                if buf is None:
                    buf = out[up] = []
                buf.append(frame)
        self._next = i
        for up, frames in out.items():
            data = b"".join(frames)
            up.write(data)
            up.frames += len(frames)
            self.sent_bytes += len(data)
        self.sent += n

    # -- reports -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {"t": time.monotonic(), "sent": self.sent, "bytes": self.sent_bytes, "shortfall": self.shortfall,
                "rate": self.rate, "running": self.running, "cpu": time.process_time(),
                "topics": sum(1 for t in self.topics.values() if t.subscribers), "snapshots": self.snapshots,
                "connections": [{"path": u.path, "frames": u.frames, "topics": len(u.topics),
                                 "write_buffer": u.transport.get_write_buffer_size() if u.transport else 0,
                                 "kernel_outq": u.outq()} for u in self.upstreams]}

    def truth(self, levels: int) -> dict[str, Any]:
        """Top ``levels`` of every book topic and the trade frames per symbol, per category."""
        books: dict[str, dict[str, Any]] = {}
        trades: dict[str, dict[str, int]] = {}
        for (category, name), topic in sorted(self.topics.items()):
            if topic.kind is TopicKind.ORDERBOOK:
                top = self.books[topic.symbol].top(topic.n, levels)
                books.setdefault(category, {})[name] = {"symbol": topic.symbol, "depth": topic.depth,
                                                        "u": topic.update_id, **top}
            elif topic.kind is TopicKind.PUBLIC_TRADE:
                trades.setdefault(category, {})[topic.symbol] = topic.n
        return {"levels": levels, "books": books, "trade_frames": trades, "sent": self.sent}


class TopicFeed:
    """One topic: its templates, its frame count ``n`` and who is subscribed."""

    def __init__(self, feed: Feed, category: Category, kind: TopicKind, symbol: str, depth: int, name: str) -> None:
        self.feed, self.category, self.kind, self.symbol, self.depth, self.name = (
            feed, category, kind, symbol, depth, name)
        self.templates = feed.templates(category, kind.value, symbol, depth)
        self.n = 0
        self.subscribers: list[Upstream] = []

    @property
    def update_id(self) -> int | None:
        return U0 + self.n if self.kind is TopicKind.ORDERBOOK else None

    def next_frame(self, ts: bytes) -> bytes:
        n = self.n
        self.n = n + 1
        templates = self.templates
        return templates[n % len(templates)].render(ts, n)

    def snapshot(self) -> bytes | None:
        """What a new subscriber gets at once: the book now; a ticker snapshot; nothing for trades."""
        now = int(time.time() * 1000)
        if self.kind is TopicKind.ORDERBOOK:
            return book_snapshot(self.feed.books[self.symbol], self.category, self.depth, self.n, now)
        if self.kind is TopicKind.TICKERS:
            return ticker_snapshot(self.feed.markets[self.symbol], self.category, self.feed.seed, self.n, now)
        return None


class Upstream(asyncio.Protocol):
    """One client connection: REST (one request, then close) or a WebSocket on /v5/public/{category}."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.parser: FrameReader | None = None
        self.conn_id = str(uuid.uuid4())
        self.category = Category.SPOT
        self.path = ""
        self.topics: set[str] = set()
        self.frames = 0
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; it is a Transport
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.feed.upstreams:
            self.feed.upstreams.discard(self)
            self._drop(tuple(self.topics))
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def outq(self) -> int:
        """Bytes in the kernel's send queue, not yet acknowledged by the consumer's side."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:
            return 0
        try:
            buf = bytearray(4)
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
            return int.from_bytes(buf, sys.byteorder)
        except OSError:
            return 0

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            raw = bytes(self.head[:end])
            rest = bytes(self.head[end + 4:])
            line = raw.split(b"\r\n", 1)[0].decode("latin-1").split()
            target = urlsplit(line[1] if len(line) > 1 else "/")
            if b"upgrade: websocket" not in raw.lower():
                self._rest(target.path, parse_qs(target.query))
                return
            if not target.path.startswith("/v5/public/") or target.path.rsplit("/", 1)[1] not in ("spot", "linear"):
                self._http(404, {"retCode": 404, "retMsg": "not found"})
                return
            head = parse_request_head(raw)
            try:
                if head is None:
                    raise Rejection("400 Bad Request", "bad_handshake", "unreadable request head")
                self.transport.write(upgrade_response(check_upgrade(head.environ(), head.version), None))
            except Rejection:
                self.transport.close()
                return
            self.category = Category(target.path.rsplit("/", 1)[1])
            self.path = target.path
            self.parser = FrameReader(1 << 16)
            self.feed.upstreams.add(self)
            data = rest
            if not data:
                return
        try:
            for opcode, value in self.parser.feed(data):
                if opcode == Opcode.TEXT:
                    self._request(value)
                elif opcode == Opcode.PING:
                    self.transport.write(encode_frame(Opcode.PONG, value))
                elif opcode == Opcode.CLOSE:
                    self.transport.write(encode_close(value[0]))
                    self.transport.close()
                    return
        except FrameError as exc:
            self.transport.write(encode_close(exc.code, exc.reason))
            self.transport.close()

    # -- REST ----------------------------------------------------------------------------------

    def _rest(self, path: str, query: dict[str, list[str]]) -> None:
        now = int(time.time() * 1000)
        if path == "/v5/market/time":
            self._http(200, {"retCode": 0, "retMsg": "OK", "result": {"timeSecond": str(now // 1000),
                                                                      "timeNano": str(now * 1_000_000)},
                             "retExtInfo": {}, "time": now})
            return
        if path != "/v5/market/instruments-info":
            self._http(404, {"retCode": 10001, "retMsg": "not found", "result": {}, "retExtInfo": {}, "time": now})
            return
        category = query.get("category", ["spot"])[0]
        status = query.get("status", ["Trading"])[0]
        listed = instruments(self.feed.names, category, self.feed.seed) if (
            category in ("spot", "linear") and status == "Trading") else []
        self._http(200, {"retCode": 0, "retMsg": "OK",
                         "result": {"category": category, "list": listed, "nextPageCursor": ""},
                         "retExtInfo": {}, "time": now})

    def _http(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        reason = {200: "OK", 404: "Not Found"}[status]
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        self.transport.close()

    # -- WebSocket requests --------------------------------------------------------------------

    def _send(self, obj: dict[str, Any]) -> None:
        self.write(_dumps(obj))

    def _request(self, payload: Any) -> None:
        try:
            req = parse_request(payload)
        except RequestError:
            return
        category = self.category
        if req.op == "ping":
            self._send(pong(category, self.conn_id, req.req_id))
            return
        if req.op == "unsubscribe":
            self._send(ack(category, "unsubscribe", self.conn_id, req.req_id))
            self._drop(tuple(t for t in req.args if t in self.topics))
            return
        if category is Category.SPOT and len(req.args) > SPOT_MAX_ARGS:
            self._send(args_too_many(self.conn_id, req.req_id))
            return
        found = {name: self.feed.topic(category, name) for name in req.args}
        bad = [name for name, t in found.items() if t is None]
        if bad:  # one bad topic fails the whole request, as on Bybit
            self._send(invalid_topics(category, bad, self.conn_id, req.req_id))
            return
        fresh = [t for name, t in found.items() if name not in self.topics and t is not None]
        if category is Category.LINEAR and len(fresh) < len(found):
            dup = next(name for name in found if name in self.topics)
            self._send(already_subscribed(self.conn_id, req.req_id, dup))
        else:
            self._send(ack(category, "subscribe", self.conn_id, req.req_id))
        for topic in fresh:
            self.topics.add(topic.name)
            topic.subscribers.append(self)
            first = topic.snapshot()
            if first is not None:
                self.write(first)
                self.feed.snapshots += 1
        if fresh:
            self.feed.reschedule()

    def _drop(self, names: tuple[str, ...]) -> None:
        for name in names:
            self.topics.discard(name)
            topic = self.feed.topics.get((self.category.value, name))
            if topic is not None and self in topic.subscribers:
                topic.subscribers.remove(self)
        if names:
            self.feed.reschedule()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    names = symbols(args.symbols)
    feed = Feed(names, args.seed, args.steps, args.cycle)
    server = await loop.create_server(lambda: Upstream(feed), "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"port": port, "pid": os.getpid(), "symbols": names}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        reply: dict[str, Any] = {"ok": True}
        try:
            if cmd["cmd"] == "rate":
                feed.set_rate(float(cmd["rate"]))
            elif cmd["cmd"] == "pause":
                await feed.pause()
                reply = feed.stats()
            elif cmd["cmd"] == "stats":
                reply = feed.stats()
            elif cmd["cmd"] == "truth":
                reply = feed.truth(int(cmd.get("levels", 25)))
                if cmd.get("path"):
                    Path(cmd["path"]).write_text(json.dumps(reply) + "\n")
            elif cmd["cmd"] == "exit":
                print(json.dumps(reply), flush=True)
                break
        except Exception as exc:  # noqa: BLE001 - report to the orchestrator
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--symbols", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=500, help="random book deltas per cycle (then as many inverses)")
    p.add_argument("--cycle", type=int, default=256, help="trade and ticker frames per cycle")
    p.add_argument("--port", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    with contextlib.suppress(KeyboardInterrupt):
        if uvloop is not None:
            uvloop.run(main(arguments))
        else:
            asyncio.run(main(arguments))
