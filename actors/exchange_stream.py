"""ExchangeStreamActor: one live connection to an exchange's public WebSocket (one market).

Takes: :class:`WantTopics` / :class:`DropTopics` (from the bridge),
:class:`UpstreamFrame` / :class:`UpstreamLost` (from its own reader
greenlet), :class:`PingDue` (from its own timer).
Sends to the bridge: :class:`MarketData` (normalized, exact decimal
strings), :class:`SubscribeRejected`, :class:`BookReset`,
:class:`StreamState`.

It never retries by itself. A lost connection, a stream silent for
``stale_after`` seconds (no data and no pong: half-open TCP happens), or a
flood of garbage raises, and the supervisor restarts the actor with
backoff; the new incarnation connects and resubscribes to every topic still
wanted (the factory passes the bridge's current set). It reports itself
healthy only once connected *and* every initial subscription is
acknowledged, so the supervisor's backoff resets only then.

Book and ticker state live here and die with the incarnation: after a
reconnect the exchange sends fresh snapshots.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gevent
import websocket

from actors.runtime import ExpectedFailure
from market.exchange import ExchangeProtocol, ExchangeProtocolError, Pong, SubscribeAck, TopicMessage
from market.model import BookUpdate, Kline, TickerUpdate, Trade
from market.orderbook import OrderBook
from market.ticker import TickerBook
from supervision import ChildContext, SupervisedActor

__all__ = [
    "BookReset",
    "DropTopics",
    "ExchangeStreamActor",
    "MarketData",
    "StreamSettings",
    "StreamState",
    "SubscribeRejected",
    "WantTopics",
]

log = logging.getLogger("gateway.exchange")


class UpstreamUnavailable(ExpectedFailure, ConnectionError):
    """The exchange could not be reached or refused the WebSocket handshake."""


class UpstreamDisconnected(ExpectedFailure, ConnectionError):
    """The exchange closed the connection or the socket failed."""


class StreamStale(ExpectedFailure, TimeoutError):
    """No data and no pong for longer than the stale threshold."""


class UpstreamGarbage(ExpectedFailure, ValueError):
    """Too many unparseable frames in a short time."""


class SubscribeTimeout(ExpectedFailure, TimeoutError):
    """A subscribe request got no answer within the stale threshold."""


# --- messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WantTopics:
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DropTopics:
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UpstreamFrame:
    """A text frame read by the reader greenlet of connection ``conn``."""

    conn: int
    text: str
    received: float


@dataclass(frozen=True, slots=True)
class UpstreamLost:
    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class PingDue:
    conn: int


@dataclass(frozen=True, slots=True)
class MarketData:
    """One normalized update for the clients of ``topic``."""

    exchange: str
    category: str
    topic: str
    data: Any
    exchange_ts: int
    received_ms: int


@dataclass(frozen=True, slots=True)
class SubscribeRejected:
    exchange: str
    category: str
    topics: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class BookReset:
    exchange: str
    category: str
    topic: str
    reason: str


@dataclass(frozen=True, slots=True)
class StreamState:
    exchange: str
    category: str
    connected: bool
    subscribed: tuple[str, ...]
    incarnation: int
    resyncs: int = 0
    lag_ms: float | None = None
    clock_offset_ms: float | None = None


@dataclass(frozen=True)
class StreamSettings:
    url: str
    ping_interval: float = 20.0
    stale_after: float = 30.0
    connect_timeout: float = 10.0
    garbage_limit: int = 100  # unparseable frames per minute before reconnecting
    book_levels: int = 25  # levels per side sent to clients


_conn_ids = itertools.count(1)


@dataclass
class _Pending:
    topics: tuple[str, ...]
    op: str
    sent: float


@dataclass
class _Stats:
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    offsets: deque[float] = field(default_factory=lambda: deque(maxlen=200))


class ExchangeStreamActor(SupervisedActor):
    healthy_on_start = False  # healthy = connected and subscribed

    def __init__(
        self,
        context: ChildContext,
        protocol: ExchangeProtocol,
        category: str,
        settings: StreamSettings,
        bridge: Any,
        wanted: tuple[str, ...] = (),
        metrics: Any = None,
    ) -> None:
        super().__init__(context)
        self.protocol = protocol
        self.exchange = protocol.name
        self.category = category
        self.settings = settings
        self.bridge = bridge
        self.metrics = metrics
        self.wanted: set[str] = set(wanted)
        self.subscribed: set[str] = set()
        self.pending: dict[str, _Pending] = {}
        self.awaiting_initial: set[str] = set()
        self.ws: websocket.WebSocket | None = None
        self.conn = next(_conn_ids)
        self.last_frame = time.monotonic()
        self.tickers = TickerBook()
        self.books: dict[str, OrderBook] = {}
        self.resyncs = 0
        self._garbage: deque[float] = deque()
        self._req_ids = itertools.count(1)
        self._greenlets: list[gevent.Greenlet] = []
        self._stats = _Stats()
        self._healthy_sent = False
        self._messages = metrics.exchange_messages.labels(self.exchange, category) if metrics else None

    # -- lifecycle ---------------------------------------------------------------

    def on_start(self) -> None:
        try:
            self.ws = websocket.create_connection(
                self.settings.url, timeout=self.settings.connect_timeout, enable_multithread=True,
                # websocket-client validates UTF-8 in pure Python (over half the cost of a frame);
                # the strict JSON parse that follows rejects anything malformed anyway.
                skip_utf8_validation=True,
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise UpstreamUnavailable(f"cannot connect to {self.settings.url}: {type(exc).__name__}: {exc}") from exc
        self.ws.settimeout(None)
        self.last_frame = time.monotonic()
        conn = self.conn
        self._greenlets = [gevent.spawn(self._read_loop, conn), gevent.spawn(self._ping_loop, conn)]
        log.info("exchange stream connected", extra={"fields": {
            "exchange": self.exchange, "category": self.category, "incarnation": self.incarnation,
            "topics": len(self.wanted)}})
        topics = tuple(sorted(self.wanted))
        self.awaiting_initial = set(topics)
        if topics:
            self._subscribe(topics)
        else:
            self._mark_healthy()
        self._report()

    def on_stop(self) -> None:
        self._disconnect()

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._disconnect()

    def _disconnect(self) -> None:
        self.conn = -1  # frames still queued from this connection are ignored
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        if self.ws is not None:
            try:
                self.ws.close(timeout=0.2)
            except Exception:  # noqa: BLE001 - the socket is being abandoned either way
                pass
            self.ws = None
        if self.metrics is not None:
            self.metrics.exchange_connected.labels(self.exchange, self.category).set(0)
        try:
            self.bridge.tell(StreamState(self.exchange, self.category, False, (), self.incarnation, self.resyncs))
        except Exception:  # noqa: BLE001 - the bridge may be stopping too
            pass

    # -- greenlets that feed the actor --------------------------------------------

    def _read_loop(self, conn: int) -> None:
        ws = self.ws
        ref = self.actor_ref
        try:
            while True:
                text = ws.recv()
                if text is None or text == "":
                    reason = "connection closed by the exchange"
                    break
                ref.tell(UpstreamFrame(conn, text, time.time()))
        except gevent.GreenletExit:
            raise
        except Exception as exc:  # noqa: BLE001 - any socket failure ends this connection
            reason = f"{type(exc).__name__}: {exc}"
        try:
            ref.tell(UpstreamLost(conn, reason))
        except Exception:  # noqa: BLE001 - the actor is already gone
            pass

    def _ping_loop(self, conn: int) -> None:
        ref = self.actor_ref
        interval = min(self.settings.ping_interval, self.settings.stale_after / 2)
        while True:
            gevent.sleep(interval)
            try:
                ref.tell(PingDue(conn))
            except Exception:  # noqa: BLE001 - the actor is gone; so is this loop's purpose
                return

    # -- messages ------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, UpstreamFrame):
            if message.conn == self.conn:
                self._on_frame(message.text, message.received)
        elif isinstance(message, PingDue):
            if message.conn == self.conn:
                self._on_ping_due()
        elif isinstance(message, UpstreamLost):
            if message.conn == self.conn:
                raise UpstreamDisconnected(message.reason)
        elif isinstance(message, WantTopics):
            new = tuple(t for t in message.topics if t not in self.wanted)
            self.wanted.update(new)
            if new and self.ws is not None:
                self._subscribe(new)
        elif isinstance(message, DropTopics):
            gone = tuple(t for t in message.topics if t in self.wanted)
            self.wanted.difference_update(gone)
            active = tuple(t for t in gone if t in self.subscribed or t in self.pending)
            if active and self.ws is not None:
                self._unsubscribe(active)
            for topic in gone:
                self.books.pop(topic, None)
            self._report()
        else:
            return super().on_receive(message)
        return None

    def _on_ping_due(self) -> None:
        now = time.monotonic()
        silent = now - self.last_frame
        if silent > self.settings.stale_after:
            raise StreamStale(f"no data and no pong for {silent:.1f}s")
        for pending in self.pending.values():
            if pending.op == "subscribe" and now - pending.sent > self.settings.stale_after:
                # An ack that never comes leaves topics in limbo: start over.
                raise SubscribeTimeout(f"no answer to subscribe {','.join(pending.topics)} "
                                       f"for {now - pending.sent:.1f}s")
        self._send(self.protocol.ping_request(str(next(self._req_ids))).text)
        self._report()  # refreshes lag and offset for metrics and system-health

    def _send(self, text: str) -> None:
        assert self.ws is not None
        self.ws.send(text)

    def _subscribe(self, topics: tuple[str, ...]) -> None:
        for request in self.protocol.subscribe_requests(topics, self.category, self._next_req_id):
            self.pending[request.req_id] = _Pending(tuple(request.topics), "subscribe", time.monotonic())
            self._send(request.text)

    def _unsubscribe(self, topics: tuple[str, ...]) -> None:
        for request in self.protocol.unsubscribe_requests(topics, self.category, self._next_req_id):
            self.pending[request.req_id] = _Pending(tuple(request.topics), "unsubscribe", time.monotonic())
            self._send(request.text)
        self.subscribed.difference_update(topics)

    def _next_req_id(self) -> str:
        return f"{self.incarnation}-{next(self._req_ids)}"

    # -- frames --------------------------------------------------------------------

    def _on_frame(self, text: str, received: float) -> None:
        self.last_frame = time.monotonic()
        try:
            event = self.protocol.parse(text)
        except ExchangeProtocolError as exc:
            self._count_garbage(exc)
            return
        if isinstance(event, TopicMessage):
            self._on_topic(event, received)
        elif isinstance(event, SubscribeAck):
            self._on_ack(event)
        elif isinstance(event, Pong):
            pass

    def _count_garbage(self, exc: Exception) -> None:
        now = time.monotonic()
        self._garbage.append(now)
        while self._garbage and self._garbage[0] < now - 60:
            self._garbage.popleft()
        if self.metrics is not None:
            self.metrics.upstream_bad_messages.labels(self.exchange).inc()
        if len(self._garbage) > self.settings.garbage_limit:
            raise UpstreamGarbage(f"{len(self._garbage)} unparseable frames in 60s (last: {exc})")

    def _on_ack(self, ack: SubscribeAck) -> None:
        pending = self.pending.pop(ack.req_id, None) if ack.req_id else None
        if pending is None:
            # Shapes without req_id (option): match by the topics it names.
            named = set(ack.success_topics) | set(ack.fail_topics)
            for req_id, p in list(self.pending.items()):
                if named & set(p.topics):
                    pending = self.pending.pop(req_id)
                    break
        if pending is None or pending.op != "subscribe":
            return
        if ack.ok:
            self.subscribed.update(pending.topics)
            self.awaiting_initial.difference_update(pending.topics)
        else:
            failed = tuple(t for t in pending.topics if t in ack.fail_topics) or pending.topics
            others = tuple(t for t in pending.topics if t not in failed)
            log.warning("exchange rejected a subscription", extra={"fields": {
                "exchange": self.exchange, "category": self.category, "topics": ",".join(failed),
                "reason": ack.ret_msg}})
            self.wanted.difference_update(failed)
            self.awaiting_initial.difference_update(failed)
            self.bridge.tell(SubscribeRejected(self.exchange, self.category, failed, ack.ret_msg))
            if others:
                # One bad topic fails its whole request: send the good ones again.
                self._subscribe(others)
        if not self.awaiting_initial:
            self._mark_healthy()
        self._report()

    def _mark_healthy(self) -> None:
        if not self._healthy_sent:
            self._healthy_sent = True
            self.report_healthy()

    def _report(self) -> None:
        lags, offsets = self._stats.lags, self._stats.offsets
        if self.metrics is not None:
            self.metrics.exchange_connected.labels(self.exchange, self.category).set(1)
            if lags:
                self.metrics.exchange_lag_seconds.labels(self.exchange, self.category).set(
                    sorted(lags)[len(lags) // 2] / 1000)
        self.bridge.tell(StreamState(
            self.exchange, self.category, True, tuple(sorted(self.subscribed)), self.incarnation, self.resyncs,
            round(sorted(lags)[len(lags) // 2], 1) if lags else None,
            round(sorted(offsets)[len(offsets) // 2], 1) if offsets else None,
        ))

    def _emit(self, topic: str, data: Any, exchange_ts: int, received: float) -> None:
        received_ms = int(received * 1000)
        self._stats.lags.append(received_ms - exchange_ts)
        self._stats.offsets.append(exchange_ts - received_ms)
        self.bridge.tell(MarketData(self.exchange, self.category, topic, data, exchange_ts, received_ms))

    def _on_topic(self, message: TopicMessage, received: float) -> None:
        topic = message.topic
        if self._messages is not None:
            self._messages.inc()
        if topic not in self.wanted:
            return  # late data for a topic just dropped
        update = self.protocol.normalize(message, self.category)
        if isinstance(update, TickerUpdate):
            ticker = self.tickers.apply(update)
            if ticker is None:
                self._resync(topic, "ticker delta before snapshot")
                return
            data = ticker.to_json_dict()
            data["receivedAt"] = int(received * 1000)
            self._emit(topic, data, message.ts, received)
        elif isinstance(update, BookUpdate):
            self._on_book(topic, update, message.ts, received)
        elif isinstance(update, tuple) and update and isinstance(update[0], Trade):
            trades = [t.to_json_dict() for t in update]
            self._emit(topic, {"symbol": update[0].symbol, "category": self.category, "trades": trades,
                               "ts": message.ts, "receivedAt": int(received * 1000)}, message.ts, received)
        elif isinstance(update, tuple) and update and isinstance(update[0], Kline):
            for kline in update:
                data = kline.to_json_dict()
                data["receivedAt"] = int(received * 1000)
                self._emit(topic, data, message.ts, received)

    def _on_book(self, topic: str, update: BookUpdate, ts: int, received: float) -> None:
        book = self.books.get(topic)
        if book is None:
            book = self.books[topic] = OrderBook(self.category, update.symbol, update.depth)
        gap = book.apply(update)
        if gap is not None:
            self._resync(topic, f"order book {gap.reason}: expected u={gap.expected_update_id}, got {gap.update_id}")
            return
        view = book.view(min(self.settings.book_levels, update.depth))
        if view is None:
            return
        data = view.to_json_dict()
        data["receivedAt"] = int(received * 1000)
        self._emit(topic, data, ts, received)

    def _resync(self, topic: str, reason: str) -> None:
        """A lost update: tell clients the book is reset, and resubscribe for a fresh snapshot."""
        self.resyncs += 1
        if self.metrics is not None:
            self.metrics.book_resyncs.labels(self.exchange, self.category).inc()
        log.warning("resubscribing after a lost update", extra={"fields": {
            "exchange": self.exchange, "category": self.category, "topic": topic, "reason": reason}})
        self.books.pop(topic, None)
        self.bridge.tell(BookReset(self.exchange, self.category, topic, reason))
        self._unsubscribe((topic,))
        self._subscribe((topic,))
        self._report()
