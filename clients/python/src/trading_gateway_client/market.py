"""Typed ``data`` per channel, and the local order book.

Prices and sizes stay the exchange's exact decimal text in the message
types (``str``, as the gateway sends them); :class:`OrderBook` holds its
levels as :class:`~decimal.Decimal` made from that text, so arithmetic is
exact. Every ``from_json`` is lenient about keys it does not know (a newer
gateway may add some) and strict about nothing else: a payload it cannot
read stays the raw JSON (``Data.payload`` is then the ``dict``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

__all__ = [
    "BookView",
    "BotCommandRequest",
    "ExchangeHealth",
    "Kline",
    "Level",
    "OrderBook",
    "SystemHealth",
    "Ticker",
    "TimeSync",
    "Trade",
    "Trades",
    "decode_payload",
]


@dataclass(frozen=True)
class Ticker:
    symbol: str
    category: str
    last_price: str
    bid_price: str | None
    bid_size: str | None
    ask_price: str | None
    ask_size: str | None
    high_24h: str | None
    low_24h: str | None
    volume_24h: str | None
    turnover_24h: str | None
    change_24h: str | None  # a fraction: "0.0196" is +1.96 %
    mark_price: str | None
    index_price: str | None
    funding_rate: str | None
    next_funding_time: int | None
    ts: int  # the exchange's timestamp
    received_at: int | None  # when the gateway read it

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Ticker:
        return cls(d["symbol"], d["category"], d["lastPrice"], d.get("bidPrice"), d.get("bidSize"),
                   d.get("askPrice"), d.get("askSize"), d.get("high24h"), d.get("low24h"), d.get("volume24h"),
                   d.get("turnover24h"), d.get("change24h"), d.get("markPrice"), d.get("indexPrice"),
                   d.get("fundingRate"), d.get("nextFundingTime"), d["ts"], d.get("receivedAt"))


@dataclass(frozen=True)
class Trade:
    symbol: str
    category: str
    id: str
    side: str  # the taker's: "buy" or "sell"
    price: str
    size: str
    ts: int
    block_trade: bool
    seq: int | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Trade:
        return cls(d["symbol"], d["category"], d["id"], d["side"], d["price"], d["size"], d["ts"],
                   bool(d.get("blockTrade", False)), d.get("seq"))


@dataclass(frozen=True)
class Trades:
    """One exchange frame's trades (one ``data`` message may hold several)."""

    symbol: str
    category: str
    ts: int
    received_at: int | None
    trades: tuple[Trade, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Trades:
        return cls(d["symbol"], d["category"], d["ts"], d.get("receivedAt"),
                   tuple(Trade.from_json(t) for t in d["trades"]))


@dataclass(frozen=True)
class BookView:
    """One ``orderbook.N`` message: the whole top of the book (never a diff), best first.

    ``reset``: built from a fresh snapshot. ``resync``: the gateway lost an
    update; the view is empty and ``reason`` says why (the client turns it
    into a :class:`~trading_gateway_client.messages.Resync` event).
    """

    symbol: str
    category: str
    depth: int | None
    bids: tuple[tuple[str, str], ...]
    asks: tuple[tuple[str, str], ...]
    update_id: int | None
    seq: int | None
    ts: int | None
    reset: bool
    received_at: int | None
    resync: bool = False
    reason: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BookView:
        return cls(d["symbol"], d["category"], d.get("depth"), tuple((p, s) for p, s in d["bids"]),
                   tuple((p, s) for p, s in d["asks"]), d.get("updateId"), d.get("seq"), d.get("ts"),
                   bool(d.get("reset", False)), d.get("receivedAt"), bool(d.get("resync", False)), d.get("reason"))


@dataclass(frozen=True)
class Kline:
    symbol: str
    category: str
    interval: str
    start: int
    end: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    turnover: str
    confirm: bool  # true once the candle has closed
    ts: int
    received_at: int | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Kline:
        return cls(d["symbol"], d["category"], d["interval"], d["start"], d["end"], d["open"], d["high"], d["low"],
                   d["close"], d["volume"], d["turnover"], bool(d["confirm"]), d["ts"], d.get("receivedAt"))


@dataclass(frozen=True)
class TimeSync:
    server_time: int
    offsets_ms: dict[str, int | None]  # "bybit.spot" -> exchange clock offset plus network delay

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TimeSync:
        return cls(d["serverTime"], {name: e.get("offsetMs") for name, e in d.get("exchanges", {}).items()})


@dataclass(frozen=True)
class ExchangeHealth:
    state: str  # connected, reconnecting or circuit_open
    connected: bool
    subscriptions: int
    restarts: int
    incarnation: int | None
    lag_ms: int | None
    book_resyncs: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExchangeHealth:
        return cls(d["state"], bool(d["connected"]), d.get("subscriptions", 0), d.get("restarts", 0),
                   d.get("incarnation"), d.get("lagMs"), d.get("bookResyncs", 0))


@dataclass(frozen=True)
class SystemHealth:
    status: str  # ok or degraded
    connections: int
    exchanges: dict[str, ExchangeHealth]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SystemHealth:
        return cls(d["status"], d.get("connections", 0),
                   {name: ExchangeHealth.from_json(e) for name, e in d.get("exchanges", {}).items()})


@dataclass(frozen=True)
class BotCommandRequest:
    """A user's bot command, as a service subscribed to ``bot-commands`` receives it.

    Report its progress with ``client.report(command, "accepted" | "succeeded" | "failed", result)``.
    """

    command_id: str
    user_id: str  # set by the gateway from the sender's token: trust it
    bot_id: str
    command: str
    params: dict[str, Any]
    session_id: str | None
    deadline: int | None = None  # epoch ms: past it the command is timed_out and reports are refused

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BotCommandRequest:
        deadline = d.get("deadline")
        return cls(d["commandId"], d["userId"], d["botId"], d["command"], dict(d.get("params") or {}),
                   d.get("sessionId"), deadline if isinstance(deadline, int) and not isinstance(deadline, bool)
                   else None)

    def expired(self, now_ms: int) -> bool:
        """Is the deadline past (``now_ms``: epoch ms, the service's clock)?"""
        return self.deadline is not None and now_ms >= self.deadline


def decode_payload(channel: str, stream: str | None, data: Any) -> Any:
    """The typed ``data`` of a ``data`` message; the raw JSON when it is not a shape this client knows.

    Private channels carry what the platform's services publish: their
    ``data`` is returned as it is.
    """
    try:
        if channel == "market-data" and stream is not None:
            if stream == "ticker":
                return Ticker.from_json(data)
            if stream == "trades":
                return Trades.from_json(data)
            if stream.startswith("orderbook"):
                return BookView.from_json(data)
            if stream.startswith("kline"):
                return Kline.from_json(data)
        elif channel == "time-sync":
            return TimeSync.from_json(data)
        elif channel == "system-health":
            return SystemHealth.from_json(data)
        elif channel == "bot-commands":
            return BotCommandRequest.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return data
    return data


# -- the local order book -------------------------------------------------------------


class Level(NamedTuple):
    price: Decimal
    size: Decimal


@dataclass
class OrderBook:
    """The local copy of one book stream (``symbol``, ``category``, ``stream`` such as ``orderbook.50``).

    Every view the gateway sends is whole, so applying one replaces both
    sides. ``ready`` is true while the book holds a whole view received on
    the current connection: it turns false when the gateway says it lost an
    update (``resync`` frame: the book is emptied until the next view, which
    the gateway builds from a fresh snapshot, ``reset: true``; any view is a
    whole, consistent book, so a newer one that replaced it under conflation
    ends the resync too) and when the connection drops (the levels are kept but ``stale``;
    the first view after resubscribing replaces them).
    """

    symbol: str
    category: str
    stream: str
    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)
    update_id: int | None = None
    ts: int | None = None
    seq: int | None = None  # the gateway's seq of the last view applied
    views: int = 0  # views applied
    resyncs: int = 0  # resync frames seen
    resyncing: bool = False  # a resync frame emptied the book; waiting for a reset view
    stale: bool = False  # the connection dropped since the last view
    last_reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.views > 0 and not self.resyncing and not self.stale

    def apply(self, view: BookView, seq: int | None = None) -> None:
        """Apply one view (or a resync frame, which empties the book)."""
        self.seq = seq
        if view.resync:
            self.bids, self.asks = [], []
            self.resyncing = True
            self.resyncs += 1
            self.last_reason = view.reason
            return
        self.bids = [Level(Decimal(p), Decimal(s)) for p, s in view.bids]
        self.asks = [Level(Decimal(p), Decimal(s)) for p, s in view.asks]
        self.update_id, self.ts = view.update_id, view.ts
        self.views += 1
        self.resyncing = False
        self.stale = False

    def mark_stale(self) -> None:
        self.stale = True

    @property
    def best_bid(self) -> Level | None:
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> Level | None:
        return self.asks[0] if self.asks else None

    @property
    def spread(self) -> Decimal | None:
        bid, ask = self.best_bid, self.best_ask
        return None if bid is None or ask is None else ask.price - bid.price

    @property
    def mid(self) -> Decimal | None:
        bid, ask = self.best_bid, self.best_ask
        return None if bid is None or ask is None else (bid.price + ask.price) / 2
