"""One feed per subscribed topic: turns an :class:`~simulator.market.Instrument` into Bybit messages. Pure.

The server calls :meth:`Feed.tick` once per update (after stepping the
instrument) and sends each :class:`Emission` to every subscriber. A
subscriber that is not yet in sync with a stateful feed (just subscribed,
or back from a ``silent`` fault) gets :meth:`Feed.snapshot` instead of the
next delta. Stateless feeds (spot tickers, trades, klines) send complete
messages only.

What each feed sends, per tick:

* ``tickers`` spot: a full ``snapshot``; linear: a ``delta`` with
  ``symbol`` and only the changed fields (its first message is a snapshot).
* ``publicTrade``: this step's trades, oldest first, ``type`` ``snapshot``.
* ``orderbook`` depth > 1: a ``delta`` (a deleted level's size is ``"0"``
  on both markets) whose ``u`` is the previous ``u``
  + 1 (+ 2 once after :meth:`OrderbookFeed.skip_u`), ``seq`` rising; a
  snapshot with ``u = 1`` after :meth:`OrderbookFeed.restart`. Depth 1:
  ``snapshot`` only, when the top changed or 3 s passed (same ``u`` then).
* ``kline``: the open candle with ``confirm: false``; when the candle's
  time is over, the closed candle once with ``confirm: true``, then the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from simulator import protocol
from simulator.instruments import QUOTE_USD, quote_of
from simulator.market import Book, Instrument, interval_bounds, plain_decimal
from simulator.protocol import Category, Topic, TopicKind

__all__ = [
    "Emission",
    "Feed",
    "KlineFeed",
    "LinearTickerFeed",
    "OrderbookFeed",
    "SpotTickerFeed",
    "TradeFeed",
    "make_feed",
]

_LEVEL1_REPEAT_MS = 3000  # docs orderbook.mdx: level 1 re-sends a snapshot after 3 s without change
_FUNDING_INTERVAL_MS = 8 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Emission:
    """A message to publish; ``full`` when it brings any subscriber fully in sync (a snapshot)."""

    message: dict[str, Any]
    full: bool


class Feed:
    """Base feed. ``stateful`` feeds need a snapshot before their deltas make sense."""

    stateful = False

    def __init__(self, category: Category, topic: Topic, instrument: Instrument) -> None:
        self.category = category
        self.topic = topic
        self.instrument = instrument

    def snapshot(self, now_ms: int) -> dict[str, Any] | None:
        """The message that syncs a new subscriber, or ``None`` for a stateless feed."""
        return None

    def tick(self, now_ms: int) -> list[Emission]:  # pragma: no cover - abstract
        """Messages for this update, after the instrument stepped."""
        raise NotImplementedError


class SpotTickerFeed(Feed):
    """Spot ``tickers``: every push is a complete snapshot."""

    def tick(self, now_ms: int) -> list[Emission]:
        inst, spec = self.instrument, self.instrument.spec
        last = inst.last_price
        pcnt = (Decimal(last - inst.prev_price_24h) / Decimal(inst.prev_price_24h)).quantize(Decimal("0.0001"))
        # the base coin's USD index: the price itself for USDT pairs, times the quote's USD value otherwise
        quote_usd = Decimal(str(QUOTE_USD.get(quote_of(spec.symbol), 1.0)))
        usd_index = Decimal(inst.index_price).scaleb(-spec.price_decimals) * quote_usd * Decimal("1.0000001")
        data = {
            "symbol": spec.symbol,
            "lastPrice": spec.price(last),
            "highPrice24h": spec.price(inst.high_24h),
            "lowPrice24h": spec.price(inst.low_24h),
            "prevPrice24h": spec.price(inst.prev_price_24h),
            "volume24h": spec.qty(inst.volume_24h),
            "turnover24h": plain_decimal(inst.turnover_24h.quantize(Decimal("0.00000001"))),
            "price24hPcnt": plain_decimal(pcnt),
            "usdIndexPrice": plain_decimal(usd_index.quantize(Decimal("0.0000001"))),
        }
        message = protocol.ticker_message(self.category, self.topic.name, "snapshot", data, inst.cross_seq, now_ms)
        return [Emission(message, full=True)]


class LinearTickerFeed(Feed):
    """Linear ``tickers``: a snapshot, then deltas with only the fields that changed."""

    stateful = True

    def __init__(self, category: Category, topic: Topic, instrument: Instrument, now_ms: int) -> None:
        super().__init__(category, topic, instrument)
        self._fields = self._current(now_ms)

    def _current(self, now_ms: int) -> dict[str, str]:
        inst, spec = self.instrument, self.instrument.spec
        last = inst.last_price
        pcnt = (Decimal(last - inst.prev_price_24h) / Decimal(inst.prev_price_24h)).quantize(Decimal("0.000001"))
        oi = Decimal(inst.open_interest).scaleb(-spec.qty_decimals)
        oi_value = (oi * Decimal(inst.mark_price).scaleb(-spec.price_decimals)).quantize(Decimal("0.01"))
        next_funding = (now_ms // _FUNDING_INTERVAL_MS + 1) * _FUNDING_INTERVAL_MS
        return {
            "symbol": spec.symbol,
            "tickDirection": inst.tick_direction,
            "price24hPcnt": f"{pcnt:f}",
            "lastPrice": spec.price(last),
            "prevPrice24h": spec.price(inst.prev_price_24h),
            "highPrice24h": spec.price(inst.high_24h),
            "lowPrice24h": spec.price(inst.low_24h),
            "prevPrice1h": spec.price(inst.prev_price_1h),
            "markPrice": spec.price(inst.mark_price),
            "indexPrice": spec.price(inst.index_price),
            "openInterest": f"{oi:f}",
            "openInterestValue": f"{oi_value:f}",
            "turnover24h": f"{inst.turnover_24h.quantize(Decimal('0.0001')):f}",
            "volume24h": spec.qty(inst.volume_24h),
            "fundingIntervalHour": "8",
            "fundingCap": "0.005",
            "nextFundingTime": str(next_funding),
            "fundingRate": plain_decimal(inst.funding_rate),
            "bid1Price": spec.price(inst.bid),
            "bid1Size": spec.qty(inst.random_qty()),
            "ask1Price": spec.price(inst.ask),
            "ask1Size": spec.qty(inst.random_qty()),
            "preOpenPrice": "",
            "preQty": "",
            "curPreListingPhase": "",
        }

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        return protocol.ticker_message(
            self.category,
            self.topic.name,
            "snapshot",
            dict(self._fields),
            self.instrument.cross_seq,
            now_ms,
        )

    def tick(self, now_ms: int) -> list[Emission]:
        fields = self._current(now_ms)
        changed = {k: v for k, v in fields.items() if self._fields.get(k) != v}
        self._fields = fields
        if not changed:
            return []
        data = {"symbol": fields["symbol"], **changed}
        message = protocol.ticker_message(
            self.category,
            self.topic.name,
            "delta",
            data,
            self.instrument.cross_seq,
            now_ms,
        )
        return [Emission(message, full=False)]


class TradeFeed(Feed):
    """``publicTrade``: the trades of the latest step. Spot has no ``L`` and a numeric ``i``."""

    def tick(self, now_ms: int) -> list[Emission]:
        spec = self.instrument.spec
        trades: list[dict[str, Any]] = []
        for t in self.instrument.trades:
            trade: dict[str, Any] = {
                "T": t.time_ms,
                "s": spec.symbol,
                "S": t.side,
                "v": spec.qty(t.qty_units),
                "p": spec.price(t.price_units),
            }
            if self.category is Category.LINEAR:
                trade["L"] = t.tick_direction
            trade["i"] = t.trade_id
            trade["BT"] = False
            if self.category is Category.SPOT:
                trade["RPI"] = False
            trade["seq"] = t.seq
            trades.append(trade)
        if not trades:
            return []
        return [
            Emission(
                protocol.trade_message(self.category, self.topic.name, trades, now_ms),
                full=True,
            )
        ]


class OrderbookFeed(Feed):
    """``orderbook.{depth}``: a snapshot, then deltas with ``u`` rising by exactly 1."""

    stateful = True

    def __init__(self, category: Category, topic: Topic, instrument: Instrument) -> None:
        super().__init__(category, topic, instrument)
        assert topic.depth is not None
        self.book = Book(instrument, topic.depth)
        self.u = instrument.rng.randint(10**6, 10**8)
        self.pending_skip_u = False
        self.pending_restart = False
        self._last_push_ms = 0

    def skip_u(self) -> None:
        """Lose the next update: the following delta's ``u`` is 2 above the previous one."""
        self.pending_skip_u = True

    def restart(self) -> None:
        """Make the next message a fresh snapshot with ``u = 1`` (Bybit restarted its book)."""
        self.pending_restart = True

    def _message(
        self,
        kind: str,
        bids: list[tuple[int, int]],
        asks: list[tuple[int, int]],
        now_ms: int,
    ) -> dict[str, Any]:
        spec = self.instrument.spec
        return protocol.orderbook_message(
            self.category,
            self.topic,
            kind,
            [[spec.price(p), spec.qty(q) if q else "0"] for p, q in bids],
            [[spec.price(p), spec.qty(q) if q else "0"] for p, q in asks],
            self.u,
            self.instrument.cross_seq,
            now_ms,
            now_ms - 1 - self.instrument.rng.randint(0, 3),
        )

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        return self._message("snapshot", self.book.sorted_bids(), self.book.sorted_asks(), now_ms)

    def tick(self, now_ms: int) -> list[Emission]:
        if self.pending_restart:
            self.pending_restart = self.pending_skip_u = False
            self.book.reset()
            self.u = 1
            self._last_push_ms = now_ms
            return [Emission(self.snapshot(now_ms), full=True)]
        if self.pending_skip_u:
            self.pending_skip_u = False
            self.book.evolve()  # this update is lost: no subscriber ever sees it
            self.u += 1
        bids, asks = self.book.evolve()
        changed = bool(bids or asks)
        if self.topic.depth == 1:
            if changed:
                self.u += 1
            elif now_ms - self._last_push_ms < _LEVEL1_REPEAT_MS:
                return []
            self._last_push_ms = now_ms
            return [Emission(self.snapshot(now_ms), full=True)]
        if not changed:
            return []
        self.u += 1
        self._last_push_ms = now_ms
        return [Emission(self._message("delta", bids, asks, now_ms), full=False)]


class KlineFeed(Feed):
    """``kline.{interval}``: the open candle until its end, then ``confirm: true`` once."""

    def __init__(self, category: Category, topic: Topic, instrument: Instrument, now_ms: int) -> None:
        super().__init__(category, topic, instrument)
        assert topic.interval is not None
        self.interval = topic.interval
        self._open_candle(now_ms, instrument.last_price)

    def _open_candle(self, now_ms: int, price: int) -> None:
        self.start, self.end = interval_bounds(self.interval, now_ms)
        self.open = self.high = self.low = self.close = price
        self.volume = 0
        self.turnover = Decimal(0)
        self.last_trade_ms = now_ms

    def _candle(self, confirm: bool) -> dict[str, Any]:
        spec = self.instrument.spec
        return {
            "start": self.start,
            "end": self.end,
            "interval": self.interval,
            "open": spec.price(self.open),
            "close": spec.price(self.close),
            "high": spec.price(self.high),
            "low": spec.price(self.low),
            "volume": spec.qty(self.volume),
            "turnover": plain_decimal(self.turnover),
            "confirm": confirm,
            "timestamp": self.last_trade_ms,
        }

    def tick(self, now_ms: int) -> list[Emission]:
        emissions: list[Emission] = []
        if now_ms > self.end:
            closed = protocol.kline_message(self.topic.name, [self._candle(confirm=True)], now_ms)
            emissions.append(Emission(closed, full=True))
            self._open_candle(now_ms, self.close)
        spec = self.instrument.spec
        for t in self.instrument.trades:
            self.close = t.price_units
            self.high = max(self.high, t.price_units)
            self.low = min(self.low, t.price_units)
            self.volume += t.qty_units
            self.turnover += (
                Decimal(t.qty_units) * Decimal(t.price_units) / 10 ** (spec.qty_decimals + spec.price_decimals)
            )
            self.last_trade_ms = t.time_ms
        current = protocol.kline_message(self.topic.name, [self._candle(confirm=False)], now_ms)
        emissions.append(Emission(current, full=True))
        return emissions


def make_feed(category: Category, topic: Topic, instrument: Instrument, now_ms: int) -> Feed:
    """The feed for ``topic`` on ``category``."""
    if topic.kind is TopicKind.TICKERS:
        if category is Category.SPOT:
            return SpotTickerFeed(category, topic, instrument)
        return LinearTickerFeed(category, topic, instrument, now_ms)
    if topic.kind is TopicKind.PUBLIC_TRADE:
        return TradeFeed(category, topic, instrument)
    if topic.kind is TopicKind.ORDERBOOK:
        return OrderbookFeed(category, topic, instrument)
    return KlineFeed(category, topic, instrument, now_ms)
