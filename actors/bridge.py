"""MarketDataBridgeActor: clients' market-data interest ↔ upstream subscriptions (the control plane).

Takes: :class:`InterestChanged` (the hub reports a market-data channel's
subscriber count), :class:`GraceExpired`, :class:`Tick`, :class:`GetStats`
(ask, from the HTTP edge), and from the exchange streams
:class:`SubscribeRejected` and :class:`StreamState`. The data itself does
not pass through it: the streams hand each update to the
:class:`MarketPublisher` (this module), which publishes it to its channel;
the bridge replays the publisher's latest values to new subscribers.
Sends: ``WantTopics``/``DropTopics`` to exchange streams (through their
supervisor handles, which survive restarts), ``Publish`` and ``Evict`` to
channel actors (through the hub).

* The first subscriber of a symbol's stream subscribes upstream; the last
  one leaving unsubscribes after ``grace`` seconds. One upstream
  subscription serves every client. Popular pairs stay subscribed.
* The latest ticker and book of each symbol are retained: a new subscriber
  gets them at once, before live updates. Every update the exchange stream
  emits is fanned out as it comes (:class:`MarketPublisher`): every ticker,
  and each book's view once per socket read. Tickers are conflated only
  where something is behind: at the exchange stream while it is behind its
  socket (a read's tickers of one symbol, the newest), and in a client's
  outbox while that client is behind (``Outbox.push_latest``).
  Trades and candles are events, never conflated.
* ``time-sync`` and ``system-health`` are published every ``status_interval``
  seconds, and ``system-health`` also on every stream state change.
* A rejected subscription evicts its clients with ``upstream_rejected``,
  except for a popular pair: those are never dropped by a refusal (it may
  be transient). The bridge asks the stream for them again after
  ``retry_base`` × 2^(attempt−1) seconds (at most ``retry_cap``), keeps
  their clients, logs each attempt at WARNING and lists them under
  ``retrying`` in ``/ws/stats``' bridge section until the stream reports
  them subscribed.

Its state is derived (from the hub's subscriber counts and the streams'
reports), so a restarted bridge rebuilds it in ``on_start``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import gevent

from actors.exchange_stream import BookReset, DropTopics, MarketData, StreamState, SubscribeRejected, WantTopics
from actors.messages import Evict, Publish
from protocol.channels import ChannelKey, market_key
from protocol.errors import ErrorCode
from protocol.messages import dumps
from supervision import ChildContext, SupervisedActor

__all__ = ["GetStats", "InterestChanged", "MarketDataBridgeActor", "key_to_topic", "topic_to_stream"]

log = logging.getLogger("gateway.bridge")

RETAINED_STREAMS = ("ticker", "orderbook")


@dataclass(frozen=True, slots=True)
class InterestChanged:
    key: ChannelKey
    count: int


@dataclass(frozen=True, slots=True)
class GraceExpired:
    key: ChannelKey


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class GetStats:
    pass


@dataclass(frozen=True, slots=True)
class RetryPinned:
    key: ChannelKey


@dataclass(slots=True)
class _Retry:
    """A popular pair's topic the exchange refused, asked for again with backoff."""

    exchange: str
    category: str
    topic: str
    attempts: int
    reason: str
    next_at: float  # wall time of the next attempt


def stream_to_topic(stream: str, symbol: str) -> str:
    """Our stream names to Bybit topics: ``orderbook.50`` + BTCUSDT → ``orderbook.50.BTCUSDT``."""
    if stream == "ticker":
        return f"tickers.{symbol}"
    if stream == "trades":
        return f"publicTrade.{symbol}"
    return f"{stream}.{symbol}"  # orderbook.N, kline.I


def topic_to_stream(topic: str) -> tuple[str, str]:
    """Bybit topic → (stream, symbol)."""
    head, _, symbol = topic.rpartition(".")
    if head == "tickers":
        return "ticker", symbol
    if head == "publicTrade":
        return "trades", symbol
    return head, symbol


def key_to_topic(key: str) -> tuple[str, str, str, str] | None:
    """``market-data.bybit.spot.BTCUSDT.orderbook.50`` → (exchange, category, topic, stream)."""
    parts = key.split(".")
    if len(parts) < 5 or parts[0] != "market-data":
        return None
    exchange, category, symbol, stream = parts[1], parts[2], parts[3], ".".join(parts[4:])
    return exchange, category, stream_to_topic(stream, symbol), stream


class UpstreamInterest:
    """The upstream subscriptions the bridge wants, readable by whoever restarts a stream.

    The bridge owns and writes it; the wiring (``gateway/marketdata.py``) hands
    the same object to each new exchange-stream incarnation's factory, which
    resubscribes what is wanted. A new bridge incarnation clears it and
    rebuilds it from the hub's subscriber counts.
    """

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys: set[ChannelKey] = set()

    def topics(self, exchange: str, category: str) -> tuple[str, ...]:
        out = []
        for key in self.keys:
            parsed = key_to_topic(key)
            if parsed and parsed[0] == exchange and parsed[1] == category:
                out.append(parsed[2])
        return tuple(sorted(out))


class MarketPublisher:
    """The tick path: an exchange stream's updates, straight to their channels.

    Not an actor: a plain object the exchange streams call as they handle a
    frame (``handle``), and it calls the channel itself
    (:meth:`ChannelActor.publish_now`, found in the hub's ``local_channels``):
    one hop from the frame to the fan-out, no message and no greenlet per
    update (the bridge stays the control plane: interest, upstream
    subscriptions, retries, status). It maps a topic to its channel key,
    keeps the latest ticker and book of each key for new subscribers
    (:attr:`latest`, which the bridge replays), and publishes every update
    at once, in order: while clients keep up they get every ticker and book
    view, and the updates of one read leave together (each outbox writes
    what one turn of the loop queued in one ``send``). It does not conflate:
    the exchange stream does while it is behind its socket, and each
    client's outbox while that client is behind. Streams and bridge share
    one in the same gevent thread; nothing here yields.
    """

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.local: dict[ChannelKey, Any] = getattr(hub, "local_channels", {})
        self.latest: dict[ChannelKey, Publish | MarketData] = {}  # read with latest_value()
        self._keys: dict[str, dict[str, dict[str, tuple[ChannelKey, str, str, bool, dict[str, str]]]]] = {}

    def _key(self, exchange: str, category: str, topic: str) -> tuple[ChannelKey, str, str, bool, dict[str, str]]:
        """(channel key, symbol, stream, latest-value?, envelope extra) for a topic: computed once per topic."""
        topics = self._keys.setdefault(exchange, {}).setdefault(category, {})
        found = topics.get(topic)
        if found is None:
            stream, symbol = topic_to_stream(topic)
            retain = stream == "ticker" or stream.startswith("orderbook")
            # one extra dict per key, shared by its publications: the channel caches its envelope by it
            found = (market_key(exchange, category, symbol, stream), symbol, stream, retain,
                     {"symbol": symbol, "stream": stream})
            if len(topics) < 100_000:  # topics come from subscriptions: bounded, and this is a cache
                topics[topic] = found
        return found

    def handle(self, message: MarketData | BookReset) -> None:
        if type(message) is MarketData:
            topics = self._keys.get(message.exchange, _NONE).get(message.category, _NONE)
            found = topics.get(message.topic) or self._key(message.exchange, message.category, message.topic)
            if found[3]:  # a ticker or a book view: kept for new subscribers
                self.latest[found[0]] = message
            self._publish(found[0], message.data, found[4], found[3], message.received_ms / 1000)
        else:
            assert isinstance(message, BookReset)
            key, symbol, _, _, extra = self._key(message.exchange, message.category, message.topic)
            data: dict[str, Any] = {"symbol": symbol, "category": message.category, "bids": [], "asks": [],
                                    "reset": True, "resync": True, "reason": message.reason}
            self.publish_latest(key, Publish(data, int(time.time() * 1000), extra, True))

    def latest_value(self, key: ChannelKey) -> Publish | None:
        """The latest ticker or book of ``key`` (what a new subscriber gets), or None."""
        value = self.latest.get(key)
        if type(value) is MarketData:
            extra = self._key(value.exchange, value.category, value.topic)[4]
            value = self.latest[key] = Publish(value.data, int(time.time() * 1000), extra, True,
                                               value.received_ms / 1000)
        return value  # type: ignore[return-value]

    def publish_latest(self, key: ChannelKey, publish: Publish) -> None:
        """Latest-value data (a book reset, a replay for a new channel): kept for new subscribers
        and published at once."""
        self.latest[key] = publish
        self._publish(key, publish.data, publish.extra, publish.retain, publish.received)

    def _publish(self, key: ChannelKey, data: Any, extra: dict[str, Any] | None, retain: bool,
                 received: float | None) -> None:
        channel = self.local.get(key)
        if channel is not None:
            try:
                if channel.publish_data(data, int(time.time() * 1000), extra, retain, received):
                    return
            except Exception:
                log.warning("publishing to %s directly failed; sending it through the channel's inbox", key,
                            exc_info=True)
        # Not a local channel (or stopping, or it failed just now): through its inbox, where a
        # failure is the channel actor's, and the hub replaces it with its subscribers. After a
        # direct failure the update is sent again rather than lost: subscribers the failed call
        # had already reached may get it twice (a bug's cost, logged above), none gets it never.
        self.hub.publish(key, Publish(data, int(time.time() * 1000), extra, retain, received))

    def forget(self, key: ChannelKey) -> None:
        self.latest.pop(key, None)


_NONE: dict[str, Any] = {}


def _stats_name(key: str) -> str:
    """The platform's name for a subscription.

    ``market-data.bybit.BTCUSDT`` for spot, ``market-data.bybit.linear.BTCUSDT`` otherwise.
    """
    _, exchange, category, symbol = key.split(".")[:4]
    return f"market-data.{exchange}.{symbol}" if category == "spot" else f"market-data.{exchange}.{category}.{symbol}"


class MarketDataBridgeActor(SupervisedActor):
    def __init__(
        self,
        context: ChildContext,
        hub: Any,
        streams: dict[tuple[str, str], Any],
        *,
        popular: tuple[str, ...] = (),
        popular_streams: tuple[str, ...] = ("ticker", "orderbook.50", "trades"),
        grace: float = 5.0,
        status_interval: float = 5.0,
        supervisor_status: Any = None,
        retry_base: float = 1.0,
        retry_cap: float = 30.0,
        interest: UpstreamInterest | None = None,
        publisher: MarketPublisher | None = None,
    ) -> None:
        super().__init__(context)
        self.hub = hub
        self.streams = streams
        self.grace = grace
        self.status_interval = status_interval
        self.supervisor_status = supervisor_status
        self.pinned: set[ChannelKey] = {
            market_key("bybit", "spot", symbol, stream) for symbol in popular for stream in popular_streams
        }
        self.interest = interest if interest is not None else UpstreamInterest()
        self.interest.keys.clear()  # rebuilt in on_start, from what the hub's clients want now
        self.upstream: set[ChannelKey] = self.interest.keys  # keys subscribed upstream (wanted)
        self.publisher = publisher if publisher is not None else MarketPublisher(hub)
        self.states: dict[tuple[str, str], StreamState] = {}
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.retrying: dict[ChannelKey, _Retry] = {}
        self._ticker: gevent.Greenlet | None = None
        self._last_health: str | None = None

    def on_start(self) -> None:
        keys = set(self.pinned) | {k for k in self.hub.subscriber_counts if k.startswith("market-data.")}
        for key in sorted(keys):
            self._want(key)
        self._ticker = gevent.spawn(self._tick_loop)

    def on_stop(self) -> None:
        if self._ticker is not None:
            self._ticker.kill(block=False)

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.on_stop()

    def _tick_loop(self) -> None:
        ref = self.actor_ref
        while True:
            gevent.sleep(self.status_interval)
            try:
                ref.tell(Tick())
            except Exception:  # noqa: BLE001 - the actor is gone
                return

    # -- wanted set ------------------------------------------------------------------

    def _stream(self, exchange: str, category: str) -> Any:
        return self.streams.get((exchange, category))

    def _want(self, key: ChannelKey) -> None:
        parsed = key_to_topic(key)
        if parsed is None or key in self.upstream:
            return
        exchange, category, topic, _ = parsed
        stream = self._stream(exchange, category)
        if stream is None:
            return
        self.upstream.add(key)
        stream.tell(WantTopics((topic,)))

    def _drop(self, key: ChannelKey) -> None:
        parsed = key_to_topic(key)
        if parsed is None or key not in self.upstream:
            return
        exchange, category, topic, _ = parsed
        self.upstream.discard(key)
        self.publisher.forget(key)
        stream = self._stream(exchange, category)
        if stream is not None:
            stream.tell(DropTopics((topic,)))

    # -- messages ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, MarketData):
            self._on_data(message)
        elif isinstance(message, InterestChanged):
            self._on_interest(message)
        elif isinstance(message, GraceExpired):
            if self.hub.subscribers(message.key) == 0 and message.key not in self.pinned:
                self._drop(message.key)
        elif isinstance(message, StreamState):
            self.states[(message.exchange, message.category)] = message
            if self.retrying:
                self._retries_done(message)
            self._publish_health(force=False)
        elif isinstance(message, SubscribeRejected):
            self._on_rejected(message)
        elif isinstance(message, BookReset):
            self._on_book_reset(message)
        elif isinstance(message, RetryPinned):
            self._retry_now(message.key)
        elif isinstance(message, Tick):
            self._publish_time()
            self._publish_health(force=True)
        elif isinstance(message, GetStats):
            return self.stats()
        else:
            return super().on_receive(message)
        return None

    def _on_interest(self, message: InterestChanged) -> None:
        key = message.key
        if not key.startswith("market-data."):
            return
        if message.count > 0:
            self._want(key)
            retained = self.publisher.latest_value(key)
            if retained is not None and message.count == 1:
                # The channel may be new (no retained frame yet): replay the latest value.
                self.publisher.publish_latest(key, retained)
        elif key not in self.pinned:
            gevent.spawn_later(self.grace, self._tell_grace, key)

    def _tell_grace(self, key: ChannelKey) -> None:
        self._tell(GraceExpired(key))

    def _tell(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except Exception:  # noqa: BLE001 - the actor is gone
            pass

    def _on_data(self, message: MarketData) -> None:
        self.publisher.handle(message)  # (the streams call the publisher themselves; a told one still works)

    def _on_rejected(self, message: SubscribeRejected) -> None:
        for topic in message.topics:
            stream, symbol = topic_to_stream(topic)
            key = market_key(message.exchange, message.category, symbol, stream)
            if key in self.pinned and key in self.upstream:
                self._retry_later(key, message.exchange, message.category, topic, message.reason)
                continue
            self.upstream.discard(key)
            self.pinned.discard(key)
            self.publisher.forget(key)
            error = dumps({"type": "error", "code": ErrorCode.UPSTREAM_REJECTED.value,
                           "message": f"{message.exchange} rejected {symbol} ({stream}): {message.reason}",
                           "channel": "market-data", "symbol": symbol, "stream": stream})
            ref = self.hub.existing_channel(key)
            if ref is not None:
                ref.tell(Evict(error))

    # -- popular pairs refused by the exchange: asked for again, with backoff -------------

    def _retry_later(self, key: ChannelKey, exchange: str, category: str, topic: str, reason: str) -> None:
        previous = self.retrying.get(key)
        attempts = 1 if previous is None else previous.attempts + 1
        delay = min(self.retry_cap, self.retry_base * 2 ** (attempts - 1))
        self.retrying[key] = _Retry(exchange, category, topic, attempts, reason, time.time() + delay)
        log.warning("exchange refused a popular pair; retrying", extra={"fields": {
            "exchange": exchange, "category": category, "topic": topic, "attempt": attempts,
            "delay_s": round(delay, 3), "reason": reason}})
        gevent.spawn_later(delay, self._tell, RetryPinned(key))

    def _retry_now(self, key: ChannelKey) -> None:
        retry = self.retrying.get(key)
        stream = None if retry is None else self._stream(retry.exchange, retry.category)
        if retry is not None and stream is not None and key in self.pinned and key in self.upstream:
            stream.tell(WantTopics((retry.topic,)))

    def _retries_done(self, state: StreamState) -> None:
        subscribed = set(state.subscribed)
        for key, retry in list(self.retrying.items()):
            if (retry.exchange, retry.category) == (state.exchange, state.category) and retry.topic in subscribed:
                del self.retrying[key]
                log.info("popular pair subscribed again", extra={"fields": {
                    "exchange": retry.exchange, "category": retry.category, "topic": retry.topic,
                    "attempts": retry.attempts}})

    def _on_book_reset(self, message: BookReset) -> None:
        self.publisher.handle(message)

    # -- status channels ------------------------------------------------------------

    def _exchange_health(self) -> dict[str, Any]:
        supervised = {}
        if self.supervisor_status is not None:
            for child in self.supervisor_status().get("children", []):
                supervised[child.get("child_id")] = child
        out = {}
        for (exchange, category) in self.streams:
            state = self.states.get((exchange, category))
            child = supervised.get(f"exchange:{exchange}:{category}", {})
            circuit = child.get("circuit", "closed")
            connected = bool(state and state.connected)
            out[f"{exchange}.{category}"] = {
                "state": "circuit_open" if circuit == "open" else ("connected" if connected else "reconnecting"),
                "connected": connected,
                "subscriptions": len(state.subscribed) if state else 0,
                "restarts": child.get("restarts", 0),
                "incarnation": state.incarnation if state else None,
                "lagMs": state.lag_ms if state else None,
                "bookResyncs": state.resyncs if state else 0,
            }
        return out

    def _publish_health(self, *, force: bool) -> None:
        exchanges = self._exchange_health()
        states = {name: e["state"] for name, e in exchanges.items()}
        fingerprint = repr(sorted(states.items()))
        if not force and fingerprint == self._last_health:
            return
        self._last_health = fingerprint
        ok = all(s == "connected" for s in states.values())
        data = {"status": "ok" if ok else "degraded", "exchanges": exchanges,
                "connections": len(self.hub.sessions)}
        self.hub.publish(ChannelKey("system-health"), Publish(data, int(time.time() * 1000), retain=True))

    def _publish_time(self) -> None:
        now = int(time.time() * 1000)
        offsets = {f"{e}.{c}": s.clock_offset_ms for (e, c), s in self.states.items() if s.connected}
        data = {"serverTime": now, "exchanges": {name: {"offsetMs": off} for name, off in offsets.items()}}
        self.hub.publish(ChannelKey("time-sync"), Publish(data, now, retain=True))

    def stats(self) -> dict[str, Any]:
        exchanges: dict[str, Any] = {}
        for (exchange, category), state in self.states.items():
            entry = exchanges.setdefault(exchange, {"connected": False, "subscriptions": 0,
                                                    "activeSubscriptions": []})
            entry["connected"] = entry["connected"] or state.connected
            entry["subscriptions"] += len(state.subscribed)
            prefix = "" if category == "spot" else f"{category}:"
            entry["activeSubscriptions"] += [prefix + t for t in state.subscribed]
        active = sorted({_stats_name(k) for k in self.hub.subscriber_counts if k.startswith("market-data.")})
        now = time.time()
        retrying = [{"exchange": r.exchange, "category": r.category, "topic": r.topic, "attempts": r.attempts,
                     "reason": r.reason, "nextAttemptInMs": max(0, int((r.next_at - now) * 1000))}
                    for r in sorted(self.retrying.values(), key=lambda r: (r.exchange, r.category, r.topic))]
        return {"initialized": True, "exchanges": exchanges, "subscriptions": len(active),
                "activeSubscriptions": active, "retrying": retrying}
