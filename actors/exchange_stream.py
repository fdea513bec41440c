"""ExchangeStreamActor: one live connection to an exchange's public WebSocket (one market).

Takes: :class:`WantTopics` / :class:`DropTopics` (from the bridge),
:class:`UpstreamFrames` (every message one read of the socket completed:
the reader greenlet frames them itself, :class:`transport.frames.ClientFrameReader`)
/ :class:`UpstreamFrame` (one, for tests) / :class:`UpstreamLost` (from its
reader greenlet), :class:`PingDue` (from its own timer).
Hands to its sink (:class:`actors.bridge.MarketPublisher`, called in the
handler: one hop from the frame to the channel) :class:`MarketData`
(checked, exact decimal text; book views, tickers and trades as ready
JSON) and :class:`BookReset`. Trades and tickers go at once, every one,
in order, so the updates of one read reach a client together (its outbox
writes them in one ``send``); a book's view is made once per read, at its
end, for the newest state (the deltas of one read arrived together; a view
per delta cost ~20 % more CPU per exchange message). Only while the stream
is behind its socket (its reader had to stop at :data:`INBOX_HIGH` and the
actor has not yet handled every frame read) are a read's tickers of one
symbol conflated too: the newest is emitted at the end of the read. Tells the bridge
:class:`SubscribeRejected` and :class:`StreamState` (the control plane).

It never reconnects by itself. A lost connection, a stream silent for
``stale_after`` seconds (no data and no pong: half-open TCP happens), a
stream whose market data stops (below), or a flood of garbage raises, and
the supervisor restarts the actor with backoff; the new incarnation
connects and resubscribes to every topic still wanted (the factory passes
the bridge's current set). It reports itself healthy only once connected
*and* every initial subscription is acknowledged, so the supervisor's
backoff resets only then.

Book and ticker state live here and die with the incarnation: after a
reconnect the exchange sends fresh snapshots.

**A bad frame costs that frame, never the stream.** Each frame is handled
on its own; one that cannot be used is dropped, counted in
``ws_exchange_bad_messages_total{reason}`` (:class:`~market.exchange.DropReason`:
``unparseable``, ``bad_value``, ``wrong_symbol``, ``unsubscribed``) and
logged at WARNING (once a minute per topic and reason at most, with the
count in between). Nothing of it is forwarded. If its topic is stateful (an
order book, a linear ticker: later deltas build on what was lost) that one
topic is resynced. Only ``unparseable`` frames count toward
``garbage_limit``: a flood of those says the connection is broken, while a
bad value says nothing about the connection and a reconnect would not cure
it. What a valid number is: :mod:`market.bybit`.

**Refused subscribes.** Bybit answers a whole request at once, and one bad
topic fails all of it. When the failure names topics (``a,b`` or
``[a b]``), exactly those are rejected (:class:`SubscribeRejected` to the
bridge) and the others are sent again at once. When it names none, the
request is split in halves and each half is retried after
``resubscribe_base`` × 2^(attempt−1) seconds (capped at
``resubscribe_cap``), down to single topics; a topic refused on its own
``resubscribe_attempts`` times counts as rejected. The bridge keeps
retrying popular pairs, with backoff, whatever the exchange says.

**One resync per gap.** A lost order-book update (or a bad book frame)
resyncs the topic once: clients get a reset, the topic is unsubscribed and
subscribed again, and every delta that arrives until the new snapshot
(deltas still in flight, sent before the exchange saw the unsubscribe) is
dropped instead of starting another resync. A resync that brings no usable
snapshot within ``resync_retry`` seconds is done again.

**Data silence.** A socket can stay open, and even answer pings, while no
market data comes. The only topic Bybit documents as pushing on a clock is
the level-1 order book: "if 3 seconds have elapsed without a change in the
orderbook, a snapshot message will be pushed again" (docs/bybit-v5.md §3),
whatever the pair's liquidity; tickers, trades and deeper books push only
when something changes, which on a quiet pair can be minutes. So "must keep
pushing" means a subscribed ``orderbook.1.*`` topic, and every stream that
has at least one wanted topic also subscribes ``orderbook.1.{canary_symbol}``
(the first popular pair) as a canary: its frames are parsed for liveness
only, never normalized or forwarded (unless a client wants that topic
too), and it is unsubscribed when the stream has nothing else. While at
least one level-1 book is subscribed and acknowledged, no data frame on
*any* topic for ``data_silence`` seconds (``UPSTREAM_DATA_SILENCE``,
10 s by default: three missed re-snapshots and then some) raises
:class:`StreamStale`, independent of the ping cycle; pongs do not count as
data. A stream with nothing to guard (no wanted topic, or a canary the
exchange refused and no level-1 book from a client) has no data watch: only
the ping cycle (``stale_after``) guards it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import orjson
import websocket

from market.exchange import (
    BookLevels,
    DropReason,
    ExchangePong,
    ExchangeProtocol,
    ExchangeProtocolError,
    SubscribeAck,
    TickerFields,
    TopicMessage,
    TradeItems,
)
from market.model import Category, Kline
from market.orderbook import BookGap, OrderBook
from market.ticker import TickerTexts
from protocol.messages import RawJson
from supervision import ChildContext, ExpectedFailure, SupervisedActor
from transport.frames import ClientFrameReader

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

# The reader stops taking frames from the socket while this many wait in the
# actor's inbox, and starts again below INBOX_LOW: a burst the actor cannot
# keep up with is held by TCP, not by an unbounded queue.
INBOX_HIGH = 1000
INBOX_LOW = 250
# Behind its socket: from the moment the reader has to stop (INBOX_HIGH frames wait in the actor's
# inbox) until the actor has handled every frame read, each read's tickers are conflated per symbol
# (only its newest is emitted; trades never; book views are one per read anyway). The last read of
# the backlog, with nothing behind it, emits every ticker. A stream that keeps up, however fast,
# emits every ticker; between two reads the actor lets the clients' writers run, so an outbox holds
# about one read's updates and one whose client reads slower keeps only the newest per key
# (Outbox.push_latest: per client, not for everyone). Before: any frame waiting behind a read
# conflated its tickers for every client (the (a) firehose: 9.5x the faster peer, not 14-17x);
# docs/performance.md.
READ_SIZE = 65536  # bytes per recv: every frame that arrived (~250 of them at 64 KiB), one system call
MAX_FRAME = 16 << 20  # an exchange message larger than this is a broken stream


class UpstreamUnavailable(ExpectedFailure, ConnectionError):
    """The exchange could not be reached or refused the WebSocket handshake."""


class UpstreamDisconnected(ExpectedFailure, ConnectionError):
    """The exchange closed the connection or the socket failed."""


class StreamStale(ExpectedFailure, TimeoutError):
    """No data and no pong for longer than the stale threshold, or no market
    data for ``data_silence`` seconds while a topic that must keep pushing is
    subscribed."""


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
    text: str | bytes  # bytes for a binary frame; the protocol's parse takes either
    received: float


@dataclass(frozen=True, slots=True)
class UpstreamFrames:
    """Every message one read of connection ``conn`` completed, in order (text as bytes)."""

    conn: int
    texts: list[bytes]
    received: float


@dataclass(frozen=True, slots=True)
class UpstreamLost:
    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class PingDue:
    conn: int


@dataclass(frozen=True, slots=True)
class Watch:
    """From the watch greenlet: check data silence and overdue resyncs."""

    conn: int


@dataclass(frozen=True, slots=True)
class RetrySubscribe:
    """Subscribe ``topics`` again after a refusal that named none of them."""

    conn: int
    topics: tuple[str, ...]
    attempt: int


@dataclass(slots=True)
class MarketData:
    """One normalized update for the clients of ``topic`` (not frozen: one is made per
    update, and a plain dataclass is built at twice the speed; read-only all the same)."""

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
    data_silence: float = 10.0  # no market data this long while a level-1 book is subscribed: StreamStale
    canary_symbol: str | None = None  # orderbook.1.<symbol> kept subscribed as the liveness canary
    resubscribe_base: float = 0.25  # first retry of a subscribe refused without naming a topic
    resubscribe_cap: float = 5.0
    resubscribe_attempts: int = 6  # unnamed refusals of one topic alone before it counts as rejected
    resync_retry: float = 5.0  # a resync with no usable snapshot this long after is done again


_conn_ids = itertools.count(1)


@dataclass
class _Pending:
    topics: tuple[str, ...]
    op: str
    sent: float
    attempt: int = 0  # refusals without a named topic so far (subscribe)


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
        sink: Callable[[MarketData | BookReset], None] | None = None,
    ) -> None:
        super().__init__(context)
        self.protocol = protocol
        self.exchange = protocol.name
        self.category = category
        self._category = Category(category)  # what the protocol takes; the str above labels metrics and messages
        self.settings = settings
        self.bridge = bridge
        # Where updates go: the market publisher, called in this actor's handler (one
        # hop from the frame to the channel). Without one, told to the bridge.
        self._sink = sink if sink is not None else bridge.tell
        self.metrics = metrics
        self.wanted: set[str] = set(wanted)
        self.subscribed: set[str] = set()
        self.pending: dict[str | None, _Pending] = {}  # by req_id (OutboundRequest's, which may be None)
        self.awaiting_initial: set[str] = set()
        self.ws: websocket.WebSocket | None = None
        self.conn = next(_conn_ids)
        self.last_frame = time.monotonic()
        self.last_data = self.last_frame  # last market-data frame (pongs and acks do not count)
        self.tickers = TickerTexts()
        self.books: dict[str, OrderBook] = {}
        self.resyncs = 0
        self._resyncing: dict[str, float] = {}  # topic -> when its resync started; deltas dropped meanwhile
        self._canary = f"orderbook.1.{settings.canary_symbol}" if settings.canary_symbol else None
        self._canary_on = False  # subscribed (or asked for) as the canary
        self._canary_refused = False
        self._armed_at: float | None = None  # since when a level-1 book is subscribed (data watch armed)
        self._garbage: deque[float] = deque()
        self._req_ids = itertools.count(1)
        self._greenlets: list[gevent.Greenlet] = []
        self._timers: list[gevent.Greenlet] = []
        self._drop_log: dict[tuple[str, str], list[float]] = {}  # (topic, reason) -> [logged at, suppressed]
        self._stats = _Stats()
        self._healthy_sent = False
        self._messages = metrics.exchange_messages.labels(self.exchange, category) if metrics else None
        self._depth = metrics.internal_queue_depth.labels("exchange_stream") if metrics else None
        self._parse, self._decode = protocol.parse, protocol.decode
        self._decode_frame = protocol.decode_frame
        self._queued = 0  # frames told to this actor by its reader and not handled yet
        self._topic_frames = 0  # data frames of this read, counted at its end
        self._emitted = 7  # updates handed on (the first one's lag is sampled)
        self._catching_up = False  # the reader stopped at INBOX_HIGH; until every frame read is handled
        self._behind = False  # this read's tickers are conflated (catching up, frames wait behind it)
        # Books (and, while behind, tickers) changed in this read -> when received (emitted at its end)
        self._changed_books: dict[str, float] = {}
        self._changed_tickers: dict[str, float] = {}
        self._snapshot_books: set[str] = set()  # books that took a snapshot in this read: their view is a reset
        self._replaced = 0  # views and tickers of this read replaced while behind (conflated)
        self._conflated = metrics.conflated.labels("channel") if metrics else None
        self._bad = ({reason: metrics.upstream_bad_messages.labels(self.exchange, reason.value)
                      for reason in DropReason} if metrics else {})

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
        self.last_frame = self.last_data = time.monotonic()
        conn = self.conn
        self._greenlets = [gevent.spawn(self._read_loop, conn), gevent.spawn(self._ping_loop, conn),
                           gevent.spawn(self._watch_loop, conn)]
        log.info("exchange stream connected", extra={"fields": {
            "exchange": self.exchange, "category": self.category, "incarnation": self.incarnation,
            "topics": len(self.wanted), "canary": self._canary or ""}})
        topics = tuple(sorted(self.wanted))
        self.awaiting_initial = set(topics)
        if topics:
            self._subscribe(topics)
        else:
            self._mark_healthy()
        self._sync_canary()
        self._report()

    def on_stop(self) -> None:
        self._disconnect()

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._disconnect()

    def _disconnect(self) -> None:
        self.conn = -1  # frames still queued from this connection are ignored
        for greenlet in self._greenlets + self._timers:
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
        """Read the socket a chunk at a time (our own framing, :class:`ClientFrameReader`: one system
        call for every frame that arrived, not three a frame) and tell the actor each chunk's
        messages at once (:class:`UpstreamFrames`: one hop per read, not per frame)."""
        ws = self.ws
        ref = self.actor_ref
        reader = ClientFrameReader(MAX_FRAME)
        try:
            assert ws is not None and ws.sock is not None  # on_start connects before it spawns this loop
            sock = ws.sock
            while True:
                if self._queued >= INBOX_HIGH:
                    self._catching_up = True  # (conflate tickers until the backlog is handled)
                    # The actor is behind (a burst): stop reading until it catches up,
                    # so the backlog waits in TCP's window, not in memory without bound.
                    while self._queued > INBOX_LOW:
                        gevent.sleep(0.005)
                data = sock.recv(READ_SIZE)
                if not data:
                    reason = "connection closed by the exchange"
                    break
                received = time.time()
                texts: list[bytes] = []
                closed = None
                for opcode, payload in reader.feed(data):
                    if opcode == 1 or opcode == 2:
                        texts.append(payload)
                    elif opcode == 9:
                        ws.pong(payload)
                    elif opcode == 8:
                        closed = payload
                        break
                if texts:
                    self._queued += len(texts)
                    ref.tell(UpstreamFrames(conn, texts, received))
                if closed is not None:
                    code, text = closed
                    reason = f"connection closed by the exchange ({code}{': ' + text if text else ''})"
                    break
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

    def _watch_loop(self, conn: int) -> None:
        """Wake at the data-silence deadline (so the stream is declared dead on time, not on the
        next ping), and at least once a second for overdue resyncs; the actor decides."""
        ref = self.actor_ref
        while True:
            deadline = self._silence_deadline()
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            gevent.sleep(max(0.02, wait))
            try:
                ref.tell(Watch(conn))
            except Exception:  # noqa: BLE001 - the actor is gone
                return

    def _later(self, delay: float, message: Any) -> None:
        """Tell this actor ``message`` in ``delay`` seconds (dropped if the connection is gone by then)."""
        ref = self.actor_ref

        def fire() -> None:
            try:
                ref.tell(message)
            except Exception:  # noqa: BLE001 - the actor is gone
                pass

        self._timers = [t for t in self._timers if not t.dead]
        self._timers.append(gevent.spawn_later(delay, fire))

    # -- messages ------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if type(message) is UpstreamFrames:
            self._queued -= len(message.texts)
            if self._depth is not None:
                self._depth.observe(self._queued)
            if message.conn == self.conn:
                self._behind = self._catching_up = self._catching_up and self._queued > 0
                received = message.received
                on_frame = self._on_frame
                for text in message.texts:
                    on_frame(text, received)
                self._end_of_read()
                if self._queued:
                    # More reads wait: let the clients' writers send this one's updates first (each
                    # outbox then holds one read's worth, and one that cannot send conflates per key).
                    gevent.sleep(0)
        elif isinstance(message, UpstreamFrame):
            if self._depth is not None:
                self._depth.observe(self.actor_inbox.qsize())
            if message.conn == self.conn:
                self._on_frame(message.text, message.received)
                self._end_of_read()
        elif isinstance(message, PingDue):
            if message.conn == self.conn:
                self._on_ping_due()
        elif isinstance(message, Watch):
            if message.conn == self.conn:
                self._on_watch()
        elif isinstance(message, UpstreamLost):
            if message.conn == self.conn:
                raise UpstreamDisconnected(message.reason)
        elif isinstance(message, WantTopics):
            new = tuple(t for t in message.topics if t not in self.wanted)
            self.wanted.update(new)
            if self.ws is not None:
                busy = self.subscribed | self._pending_topics("subscribe")
                fresh = tuple(t for t in new if t not in busy)  # the canary may be subscribed already
                if fresh:
                    self._subscribe(fresh)
                self._sync_canary()
                self._report()
        elif isinstance(message, RetrySubscribe):
            if message.conn == self.conn and self.ws is not None:
                busy = self.subscribed | self._pending_topics("subscribe")
                topics = tuple(t for t in message.topics if self._needed(t) and t not in busy)
                if topics:
                    self._subscribe(topics, attempt=message.attempt)
        elif isinstance(message, DropTopics):
            gone = tuple(t for t in message.topics if t in self.wanted)
            self.wanted.difference_update(gone)
            busy = self.subscribed | self._pending_topics("subscribe")
            active = tuple(t for t in gone if t in busy and not self._needed(t))
            if active and self.ws is not None:
                self._unsubscribe(active)
            for topic in gone:
                self._forget(topic)
            if self.ws is not None:
                self._sync_canary()
            self._report()
        else:
            return super().on_receive(message)
        return None

    def _on_watch(self) -> None:
        now = time.monotonic()
        deadline = self._silence_deadline()
        if deadline is not None and now >= deadline:
            lively = sorted(t for t in self.subscribed if _must_push(t))
            silent = now - max(self.last_data, self._armed_at or 0.0)
            raise StreamStale(f"no market data for {silent:.1f}s while subscribed to {len(lively)} topic(s) that push "
                              f"at least every 3 s ({', '.join(lively[:3])}); UPSTREAM_DATA_SILENCE is "
                              f"{self.settings.data_silence:g}s")
        for topic, since in list(self._resyncing.items()):
            if now - since >= self.settings.resync_retry:
                del self._resyncing[topic]
                self._resync(topic, f"no usable snapshot {now - since:.1f}s after resubscribing")

    def _silence_deadline(self) -> float | None:
        """When the stream counts as silent, or ``None`` while nothing must keep pushing."""
        if self._armed_at is None:
            return None
        return max(self.last_data, self._armed_at) + self.settings.data_silence

    def _rearm(self) -> None:
        """Arm the data watch while a level-1 book is subscribed (from then on, not before)."""
        if any(_must_push(t) for t in self.subscribed):
            if self._armed_at is None:
                self._armed_at = time.monotonic()
        else:
            self._armed_at = None

    def _needed(self, topic: str) -> bool:
        return topic in self.wanted or (topic == self._canary and self._canary_on)

    def _pending_topics(self, op: str) -> set[str]:
        return {t for p in self.pending.values() if p.op == op for t in p.topics}

    def _sync_canary(self) -> None:
        """The canary is subscribed while anything else is wanted, and only then."""
        canary = self._canary
        if canary is None or self._canary_refused:
            return
        guard = bool(self.wanted - {canary})
        if guard and not self._canary_on:
            self._canary_on = True
            if canary not in self.subscribed and canary not in self._pending_topics("subscribe"):
                self._subscribe((canary,))
        elif not guard and self._canary_on:
            self._canary_on = False
            if canary not in self.wanted and (canary in self.subscribed or canary in self._pending_topics("subscribe")):
                self._unsubscribe((canary,))

    def _forget(self, topic: str) -> None:
        """State of a topic no longer wanted."""
        self._resyncing.pop(topic, None)
        self.books.pop(topic, None)
        if topic.startswith("tickers."):
            self.tickers.forget(Category(self.category), topic.partition(".")[2])

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

    def _subscribe(self, topics: tuple[str, ...], attempt: int = 0) -> None:
        for request in self.protocol.subscribe_requests(topics, self._category, self._next_req_id):
            self.pending[request.req_id] = _Pending(tuple(request.topics), "subscribe", time.monotonic(), attempt)
            self._send(request.text)

    def _unsubscribe(self, topics: tuple[str, ...]) -> None:
        for request in self.protocol.unsubscribe_requests(topics, self._category, self._next_req_id):
            self.pending[request.req_id] = _Pending(tuple(request.topics), "unsubscribe", time.monotonic())
            self._send(request.text)
        self.subscribed.difference_update(topics)
        self._rearm()

    def _next_req_id(self) -> str:
        return f"{self.incarnation}-{next(self._req_ids)}"

    # -- frames --------------------------------------------------------------------

    def _on_frame(self, text: str | bytes, received: float) -> None:
        self.last_frame = now = time.monotonic()
        if type(text) is bytes:
            # The common frames (book deltas, tickers, trades) straight from their bytes (None:
            # anything else, or not on the fast path, and nothing changed). It takes only topics
            # wanted, and books held: a book is held only while its topic is wanted and not
            # resyncing (_forget and _resync drop it), so _on_topic's checks hold for it.
            fast = self._decode_frame(text, self.books, self.wanted, self.category)
            if fast is not None:
                self.last_data = now
                self._topic_frames += 1
                kind = fast[0]
                if kind == 0:
                    self._book_changed(fast[1], fast[2], received)
                elif kind == 1:
                    self._on_ticker(fast[1], fast[2], received)
                else:
                    self._on_trades(fast[1], fast[2], fast[3], fast[4], received)
                return
        try:
            event = self._parse(text)
        except ExchangeProtocolError as exc:
            self._count_garbage(exc)
            return
        if isinstance(event, TopicMessage):
            self.last_data = now
            self._on_topic(event, received)
        elif isinstance(event, SubscribeAck):
            self._on_ack(event)
        elif isinstance(event, ExchangePong):
            pass

    def _count_garbage(self, exc: Exception) -> None:
        now = time.monotonic()
        self._garbage.append(now)
        while self._garbage and self._garbage[0] < now - 60:
            self._garbage.popleft()
        self._drop("-", DropReason.UNPARSEABLE, str(exc))
        if len(self._garbage) > self.settings.garbage_limit:
            raise UpstreamGarbage(f"{len(self._garbage)} unparseable frames in 60s (last: {exc})")

    def _drop(self, topic: str, reason: DropReason, detail: str) -> None:
        """Count a dropped frame; log it at WARNING once a minute per (topic, reason) at most."""
        counter = self._bad.get(reason)
        if counter is not None:
            counter.inc()
        key = (topic if len(self._drop_log) < 256 else "*", reason.value)  # topics come from the exchange: bounded
        now = time.monotonic()
        entry = self._drop_log.get(key)
        if entry is not None and now - entry[0] < 60:
            entry[1] += 1
            return
        self._drop_log[key] = [now, 0]
        log.warning("dropped a bad market-data frame", extra={"fields": {
            "exchange": self.exchange, "category": self.category, "topic": topic, "reason": reason.value,
            "error": detail[:200], "dropped_since_last_log": int(entry[1]) if entry else 0}})

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
            self.subscribed.update(t for t in pending.topics if self._needed(t))  # not one dropped meanwhile
            self.awaiting_initial.difference_update(pending.topics)
            self._rearm()
        else:
            self._on_refused(pending, ack)
        if not self.awaiting_initial:
            self._mark_healthy()
        self._report()

    def _on_refused(self, pending: _Pending, ack: SubscribeAck) -> None:
        """One bad topic fails its whole request: reject what the exchange names, retry the rest."""
        named = tuple(t for t in pending.topics if t in ack.fail_topics)
        if named:
            self._reject(named, ack.ret_msg)
            others = tuple(t for t in pending.topics if t not in named and self._needed(t))
            if others:  # innocent: sent again at once
                self._subscribe(others)
            return
        topics = tuple(t for t in pending.topics if self._needed(t))
        attempt = pending.attempt + 1
        if not topics:
            return
        if len(topics) == 1 and attempt >= self.settings.resubscribe_attempts:
            self._reject(topics, ack.ret_msg)  # refused on its own, again and again: it is this topic
            return
        delay = min(self.settings.resubscribe_cap, self.settings.resubscribe_base * 2 ** (attempt - 1))
        half = (len(topics) + 1) // 2
        parts = (topics[:half], topics[half:]) if len(topics) > 1 else (topics,)
        log.warning("exchange refused a subscribe without naming a topic; retrying", extra={"fields": {
            "exchange": self.exchange, "category": self.category, "topics": ",".join(topics),
            "attempt": attempt, "delay_s": round(delay, 3), "split": len(parts), "reason": ack.ret_msg}})
        for part in parts:
            self._later(delay, RetrySubscribe(self.conn, part, attempt))

    def _reject(self, topics: tuple[str, ...], reason: str) -> None:
        self.awaiting_initial.difference_update(topics)
        canary = self._canary
        if canary in topics and canary not in self.wanted:
            self._canary_refused, self._canary_on = True, False
            log.warning("exchange refused the liveness canary; only level-1 books clients subscribe arm the "
                        "data-silence watch", extra={"fields": {
                            "exchange": self.exchange, "category": self.category, "topic": canary,
                            "reason": reason}})
        rejected = tuple(t for t in topics if t in self.wanted)
        if not rejected:
            return
        log.warning("exchange rejected a subscription", extra={"fields": {
            "exchange": self.exchange, "category": self.category, "topics": ",".join(rejected),
            "reason": reason}})
        self.wanted.difference_update(rejected)
        for topic in rejected:
            self._forget(topic)
        self.bridge.tell(SubscribeRejected(self.exchange, self.category, rejected, reason))
        self._sync_canary()

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
            self.exchange, self.category, True, tuple(sorted(t for t in self.subscribed if t in self.wanted)),
            self.incarnation, self.resyncs,
            round(sorted(lags)[len(lags) // 2], 1) if lags else None,
            round(sorted(offsets)[len(offsets) // 2], 1) if offsets else None,
        ))

    def _emit(self, topic: str, data: Any, exchange_ts: int, received: float) -> None:
        received_ms = int(received * 1000)
        self._emitted = n = self._emitted + 1
        if not n & 7:  # lag and clock offset: medians of a sample, one update in eight
            self._stats.lags.append(received_ms - exchange_ts)
            self._stats.offsets.append(exchange_ts - received_ms)
        self._sink(MarketData(self.exchange, self.category, topic, data, exchange_ts, received_ms))

    def _end_of_read(self) -> None:
        """After the frames of one read: count them, emit each changed book's view once (made only
        for the last of a book's updates in the read), and, if the read was conflated (the stream
        is behind), each changed ticker's newest value."""
        self._behind = False
        if self._topic_frames:
            if self._messages is not None:
                self._messages.inc(self._topic_frames)
            self._topic_frames = 0
        if self._replaced:
            if self._conflated is not None:
                self._conflated.inc(self._replaced)
            self._replaced = 0
        if self._changed_books:
            changed, self._changed_books = self._changed_books, {}
            snapshots, self._snapshot_books = self._snapshot_books, set()
            for topic, received in changed.items():
                book = self.books.get(topic)  # (gone, or a new one, if the topic resynced since)
                if book is not None:
                    self._emit_view(topic, book, received, topic in snapshots)
        if self._changed_tickers:
            changed, self._changed_tickers = self._changed_tickers, {}
            for topic, received in changed.items():
                ticker = self.tickers.get(self.category, topic.partition(".")[2])
                if ticker is not None:
                    self._emit_ticker(topic, ticker, received)

    def _emit_view(self, topic: str, book: OrderBook, received: float, reset: bool) -> None:
        # ``reset``: a snapshot was among the read's updates (deltas after it in the same read do not
        # take the flag away: clients wait for a reset view after a resync, docs/protocol.md).
        text = book.view_json(min(self.settings.book_levels, book.depth), int(received * 1000), reset)
        if text is not None:
            self._emit(topic, RawJson(text), book.ts, received)

    def _emit_ticker(self, topic: str, ticker: dict[str, Any], received: float) -> None:
        text = orjson.dumps(ticker)[:-1].decode()
        self._emit(topic, RawJson(f'{text},"receivedAt":{int(received * 1000)}}}'), ticker["ts"], received)

    def _on_topic(self, message: TopicMessage, received: float) -> None:
        topic = message.topic
        self._topic_frames += 1
        if topic not in self.wanted:
            if topic != self._canary and topic not in self._pending_topics("unsubscribe"):
                # (the canary is for liveness only; data in flight for a topic being unsubscribed is expected)
                self._drop(topic, DropReason.UNSUBSCRIBED, "data for a topic this stream is not subscribed to")
            return
        try:
            update = self._decode(message, self._category)
        except ExchangeProtocolError as exc:
            self._drop(topic, exc.reason, str(exc))
            if topic.startswith("orderbook.") or (topic.startswith("tickers.") and self.category != "spot"):
                # later deltas build on what was lost; the reason reaches clients: no exchange text in it
                self._resync(topic, f"dropped a frame with a bad value ({exc.reason})")
            return
        kind = type(update)
        if kind is BookLevels:
            self._on_book(topic, update, received)  # type: ignore[arg-type]
        elif kind is TradeItems:
            if update.trades:  # type: ignore[union-attr]
                self._on_trades(topic, message.ts, update.symbol,  # type: ignore[union-attr]
                                orjson.dumps(update.trades).decode(), received)  # type: ignore[union-attr]
        elif kind is TickerFields:
            self._on_ticker(topic, update, received)  # type: ignore[arg-type]
        elif isinstance(update, tuple) and update and isinstance(update[0], Kline):
            for kline in update:
                data = kline.to_json_dict()
                data["receivedAt"] = int(received * 1000)
                self._emit(topic, data, message.ts, received)

    def _on_trades(self, topic: str, ts: int, symbol: str, trades: str, received: float) -> None:
        """``trades``: their JSON array, each in the client's shape (``Trade.to_json_dict``)."""
        if trades != "[]":
            self._emit(topic, RawJson(f'{{"symbol":"{symbol}","category":"{self.category}","trades":{trades},'
                                      f'"ts":{ts},"receivedAt":{int(received * 1000)}}}'), ts, received)

    def _on_ticker(self, topic: str, update: TickerFields, received: float) -> None:
        if topic in self._resyncing and not update.snapshot:
            return  # a delta from before the resync: wait for the new snapshot
        ticker = self.tickers.apply(self.category, update)
        if ticker is None:
            self._resync(topic, "ticker delta before snapshot")
            return
        self._resyncing.pop(topic, None)
        if not self._behind:
            self._emit_ticker(topic, ticker, received)
        else:  # the newest of the read is emitted at its end
            if topic in self._changed_tickers:
                self._replaced += 1
            self._changed_tickers[topic] = received

    def _on_book(self, topic: str, update: BookLevels, received: float) -> None:
        if topic in self._resyncing and not update.snapshot:
            return  # in flight from before the resync (the exchange had not seen the unsubscribe yet)
        book = self.books.get(topic)
        if book is None:
            book = self.books[topic] = OrderBook(self._category, update.symbol, update.depth)
        gap = book.apply_levels(update.snapshot, update.bids, update.asks, update.update_id, update.seq, update.ts)
        if self._book_changed(topic, gap, received):
            self._resyncing.pop(topic, None)
            if update.snapshot:
                self._snapshot_books.add(topic)

    def _book_changed(self, topic: str, gap: BookGap | None, received: float) -> bool:
        """After a book took an update: resync it on a gap (False), else note it changed in this read.

        Its view is made at the end of the read, once for the read's newest state (a view per
        delta cost ~20 % more CPU per exchange message in (f), docs/performance.md); counted as
        conflation only while the stream is behind."""
        if gap is not None:
            self._resync(topic, f"order book {gap.reason}: expected u={gap.expected_update_id}, got {gap.update_id}")
            return False
        if self._behind and topic in self._changed_books:
            self._replaced += 1
        self._changed_books[topic] = received
        return True

    def _resync(self, topic: str, reason: str) -> None:
        """A lost update: tell clients the book is reset, and resubscribe for a fresh snapshot.

        Once per gap: until the new snapshot, deltas are dropped and further
        calls for the topic do nothing (:meth:`_on_watch` redoes a resync that
        brought no usable snapshot)."""
        if topic in self._resyncing:
            return
        self._resyncing[topic] = time.monotonic()
        self.resyncs += 1
        if self.metrics is not None:
            self.metrics.book_resyncs.labels(self.exchange, self.category).inc()
        log.warning("resubscribing after a lost update", extra={"fields": {
            "exchange": self.exchange, "category": self.category, "topic": topic, "reason": reason}})
        if topic.startswith("orderbook."):
            self.books.pop(topic, None)
            self._sink(BookReset(self.exchange, self.category, topic, reason))
        else:  # a ticker: clients keep the last full one until the new snapshot
            self.tickers.forget(Category(self.category), topic.partition(".")[2])
        if self.ws is not None:
            self._unsubscribe((topic,))
            self._subscribe((topic,))
        self._report()


def _must_push(topic: str) -> bool:
    """Bybit re-sends a level-1 book at least every 3 s (docs/bybit-v5.md §3), whatever the pair."""
    return topic.startswith("orderbook.1.")
