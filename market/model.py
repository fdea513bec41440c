"""Normalized market data, independent of any exchange.

Every price, size, volume and ratio is a :class:`~decimal.Decimal` parsed
from the exchange's own decimal text; there are no floats anywhere. On the
way out, ``to_json_dict()`` writes each one back as plain decimal text
(:func:`decimal_text`), which gives back exactly the text the exchange sent
for any plain decimal string (``"16578.50"`` stays ``"16578.50"``,
``"20575"`` stays ``"20575"``). Times are integer milliseconds since the
epoch, as the exchange stamped them. A missing optional field is ``None``
here and ``null`` in JSON: every key is always present, so each shape is
stable.

JSON shapes clients receive (the values are from the recorded Bybit frames
in ``tests/fixtures/bybit-v5``)::

    Ticker       {"symbol": "BTCUSDT", "category": "linear",
                  "lastPrice": "66666.60",
                  "bidPrice": "66666.60", "bidSize": "23789.165",
                  "askPrice": "66666.70", "askSize": "23775.469",
                  "high24h": "79266.30", "low24h": "65076.90",
                  "volume24h": "73191.3870", "turnover24h": "4936790807.6521",
                  "change24h": "-0.158315",
                  "markPrice": "66666.60", "indexPrice": "115418.19",
                  "fundingRate": "-0.005", "nextFundingTime": 1760342400000,
                  "ts": 1760325052630}
                 Spot tickers carry no best bid/ask and no mark, index or
                 funding: those keys are null. "change24h" is a fraction
                 (Bybit's price24hPcnt): "0.0196" means +1.96 %.

    Trade        {"symbol": "BTCUSDT", "category": "linear",
                  "id": "20f43950-d8dd-5b31-9112-a178eb6023af",
                  "side": "buy", "price": "16578.50", "size": "0.001",
                  "ts": 1672304486865, "blockTrade": false, "seq": 1783284617}
                 "side" is the taker's side, "buy" or "sell"; "seq" may be
                 null.

    OrderBookView {"symbol": "BTCUSDT", "category": "spot", "depth": 50,
                  "bids": [["75848.74", "0.067669"], ...],
                  "asks": [["75848.75", "0.747137"], ...],
                  "updateId": 2876700, "seq": 47474967795,
                  "ts": 1731035685326, "reset": true}
                 Levels are ``[price, size]`` pairs, best first (bids high
                 to low, asks low to high), at most the N asked for. The
                 view is always a full top-N picture, never a diff.
                 "reset" is true when the view follows a snapshot (the book
                 was replaced: first snapshot, resubscribe or exchange
                 restart), false when it follows a delta.

    BookLevel    {"price": "75848.74", "size": "0.067669"}
                 (inside OrderBookView the same level is written as a pair)

    Kline        {"symbol": "BTCUSDT", "category": "linear", "interval": "5",
                  "start": 1672324800000, "end": 1672325099999,
                  "open": "16649.5", "high": "16677", "low": "16608",
                  "close": "16677", "volume": "2.081",
                  "turnover": "34666.4005", "confirm": false,
                  "ts": 1672324988882}
                 "confirm" is true once the candle has closed. "interval"
                 is minutes ("1" … "720") or "D", "W", "M".

:class:`TickerUpdate` and :class:`BookUpdate` are what an exchange module
hands to :class:`~market.ticker.TickerBook` and
:class:`~market.orderbook.OrderBook`; clients never see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeAlias

__all__ = [
    "TICKER_FIELDS",
    "TICKER_JSON",
    "BookLevel",
    "BookUpdate",
    "Category",
    "Kline",
    "MarketUpdate",
    "OrderBookView",
    "Side",
    "StreamKind",
    "Ticker",
    "TickerUpdate",
    "Topic",
    "Trade",
    "decimal_text",
]


class Category(StrEnum):
    """A market family. Each one is a separate endpoint on the exchange."""

    SPOT = "spot"
    LINEAR = "linear"  # USDT/USDC perpetuals and futures
    INVERSE = "inverse"  # coin-margined contracts
    OPTION = "option"


class StreamKind(StrEnum):
    """What a topic carries."""

    TICKER = "ticker"
    TRADE = "trade"
    ORDERBOOK = "orderbook"
    KLINE = "kline"


class Side(StrEnum):
    """The taker's side of a trade."""

    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True, slots=True)
class Topic:
    """One market-data stream of one symbol, whatever the exchange.

    ``depth`` is set for (and only for) order books, ``interval`` for (and
    only for) klines; the constructor raises :class:`ValueError` otherwise.
    Exchange modules turn it into their own topic names (for Bybit:
    :func:`market.bybit.format_topic` and :func:`market.bybit.parse_topic`)
    and check that the depth or interval is one they offer.
    """

    kind: StreamKind
    symbol: str
    depth: int | None = None
    interval: str | None = None

    def __post_init__(self) -> None:
        if not self.symbol:
            raise ValueError("topic symbol is empty")
        if (self.kind is StreamKind.ORDERBOOK) != (self.depth is not None):
            raise ValueError(f"depth is required for order books and only for them, got {self!r}")
        if (self.kind is StreamKind.KLINE) != (self.interval is not None):
            raise ValueError(f"interval is required for klines and only for them, got {self!r}")


def decimal_text(value: Decimal) -> str:
    """Plain decimal text, never scientific: ``format(value, "f")``, which
    gives back the exchange's own text for any plain decimal string. ``str``
    gives the same faster unless it picks scientific notation (tiny values
    such as ``0.0000001``): this runs 100 times per order book view."""
    text = str(value)
    return text if "E" not in text else format(value, "f")


def _text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


@dataclass(frozen=True, slots=True)
class Ticker:
    """The latest full ticker of one symbol.

    Only ``last_price`` is guaranteed; the rest is ``None`` when the
    exchange does not publish it for this category (spot has no best
    bid/ask, mark, index or funding). ``change_24h`` is a fraction, not a
    percentage. ``ts`` is the exchange's timestamp of the message that last
    changed this ticker.
    """

    category: Category
    symbol: str
    last_price: Decimal
    ts: int
    bid_price: Decimal | None = None
    bid_size: Decimal | None = None
    ask_price: Decimal | None = None
    ask_size: Decimal | None = None
    high_24h: Decimal | None = None
    low_24h: Decimal | None = None
    volume_24h: Decimal | None = None
    turnover_24h: Decimal | None = None
    change_24h: Decimal | None = None
    mark_price: Decimal | None = None
    index_price: Decimal | None = None
    funding_rate: Decimal | None = None
    next_funding_time: int | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The client-facing shape (see the module docstring)."""
        return {
            "symbol": self.symbol,
            "category": str(self.category),
            "lastPrice": _text(self.last_price),
            "bidPrice": _text(self.bid_price),
            "bidSize": _text(self.bid_size),
            "askPrice": _text(self.ask_price),
            "askSize": _text(self.ask_size),
            "high24h": _text(self.high_24h),
            "low24h": _text(self.low_24h),
            "volume24h": _text(self.volume_24h),
            "turnover24h": _text(self.turnover_24h),
            "change24h": _text(self.change_24h),
            "markPrice": _text(self.mark_price),
            "indexPrice": _text(self.index_price),
            "fundingRate": _text(self.funding_rate),
            "nextFundingTime": self.next_funding_time,
            "ts": self.ts,
        }


#: Ticker fields with their client JSON keys, in :meth:`Ticker.to_json_dict`'s order (the
#: ingest path writes tickers from the exchange's text with these keys).
TICKER_JSON: tuple[tuple[str, str], ...] = (
    ("last_price", "lastPrice"), ("bid_price", "bidPrice"), ("bid_size", "bidSize"), ("ask_price", "askPrice"),
    ("ask_size", "askSize"), ("high_24h", "high24h"), ("low_24h", "low24h"), ("volume_24h", "volume24h"),
    ("turnover_24h", "turnover24h"), ("change_24h", "change24h"), ("mark_price", "markPrice"),
    ("index_price", "indexPrice"), ("funding_rate", "fundingRate"), ("next_funding_time", "nextFundingTime"),
)

#: Ticker fields an update may set: everything but the identity and ``ts``.
TICKER_FIELDS: frozenset[str] = frozenset(
    f.name for f in fields(Ticker) if f.name not in {"category", "symbol", "ts"}
)


@dataclass(frozen=True, slots=True)
class TickerUpdate:
    """A ticker message, reduced to the :class:`Ticker` fields it sets.

    ``changes`` pairs Ticker field names (from :data:`TICKER_FIELDS`) with
    their new values. A snapshot sets the whole ticker (fields it lacks
    become ``None``) and always includes ``last_price``; a delta sets only
    the fields it names and keeps the rest.
    """

    category: Category
    symbol: str
    snapshot: bool
    ts: int
    changes: tuple[tuple[str, Decimal | int | None], ...]

    def __post_init__(self) -> None:
        unknown = {name for name, _ in self.changes} - TICKER_FIELDS
        if unknown:
            raise ValueError(f"unknown ticker fields {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class Trade:
    """One public trade. ``side`` is the taker's; ``ts`` is the fill time."""

    category: Category
    symbol: str
    trade_id: str
    side: Side
    price: Decimal
    size: Decimal
    ts: int
    block_trade: bool = False
    seq: int | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The client-facing shape (see the module docstring)."""
        return {
            "symbol": self.symbol,
            "category": str(self.category),
            "id": self.trade_id,
            "side": str(self.side),
            "price": decimal_text(self.price),
            "size": decimal_text(self.size),
            "ts": self.ts,
            "blockTrade": self.block_trade,
            "seq": self.seq,
        }


@dataclass(frozen=True, slots=True)
class BookLevel:
    """One price level of an order book. ``size`` 0 means "delete" in a delta.

    ``pair`` is the level's JSON text, ``["<price>","<size>"]``, built once
    from the exchange's own text when the level is parsed (a book view puts
    up to 50 of them in every message: converting each Decimal back to text
    per view was most of the ingest cost). Empty: made from the values.
    """

    price: Decimal
    size: Decimal
    pair: str = field(default="", compare=False, repr=False)

    def to_json_dict(self) -> dict[str, str]:
        return {"price": decimal_text(self.price), "size": decimal_text(self.size)}

    def to_json_pair(self) -> list[str]:
        """``[price, size]``: the compact form used inside :class:`OrderBookView`."""
        return [decimal_text(self.price), decimal_text(self.size)]

    def pair_text(self) -> str:
        return self.pair or f'["{decimal_text(self.price)}","{decimal_text(self.size)}"]'


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """An order-book message: a full snapshot or a delta of changed levels.

    ``update_id`` is the exchange's per-topic update counter (Bybit ``u``);
    ``seq`` the cross sequence, comparable across depths but not contiguous.
    Levels are given as sent (a snapshot's order is not relied upon).
    """

    category: Category
    symbol: str
    depth: int
    snapshot: bool
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]
    update_id: int
    seq: int | None
    ts: int


@dataclass(frozen=True, slots=True)
class OrderBookView:
    """The top of a consistent book: sorted best first and never crossed.

    ``reset`` is true when the view follows a snapshot rather than a delta.
    """

    category: Category
    symbol: str
    depth: int
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]
    update_id: int
    seq: int | None
    ts: int
    reset: bool

    def to_json_dict(self) -> dict[str, Any]:
        """The client-facing shape (see the module docstring)."""
        return {
            "symbol": self.symbol,
            "category": str(self.category),
            "depth": self.depth,
            "bids": [level.to_json_pair() for level in self.bids],
            "asks": [level.to_json_pair() for level in self.asks],
            "updateId": self.update_id,
            "seq": self.seq,
            "ts": self.ts,
            "reset": self.reset,
        }

    def to_json_text(self, received_ms: int) -> str:
        """:meth:`to_json_dict` plus ``receivedAt``, as compact JSON text, from each level's ``pair``.

        The same object ``json.dumps`` would give (tests check it); built by
        joining text, which costs a few microseconds instead of tens. The
        symbol is checked text (``[A-Z0-9]``), nothing to escape.
        """
        return (f'{{"symbol":"{self.symbol}","category":"{self.category}","depth":{self.depth},'
                f'"bids":[{",".join([level.pair_text() for level in self.bids])}],'
                f'"asks":[{",".join([level.pair_text() for level in self.asks])}],'
                f'"updateId":{self.update_id},"seq":{"null" if self.seq is None else self.seq},'
                f'"ts":{self.ts},"reset":{"true" if self.reset else "false"},"receivedAt":{received_ms}}}')


@dataclass(frozen=True, slots=True)
class Kline:
    """One candle. ``end`` is ``start + interval - 1`` ms; ``ts`` is the last
    match in the candle; ``confirm`` is true once the candle has closed."""

    category: Category
    symbol: str
    interval: str
    start: int
    end: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    turnover: Decimal
    confirm: bool
    ts: int

    def to_json_dict(self) -> dict[str, Any]:
        """The client-facing shape (see the module docstring)."""
        return {
            "symbol": self.symbol,
            "category": str(self.category),
            "interval": self.interval,
            "start": self.start,
            "end": self.end,
            "open": decimal_text(self.open),
            "high": decimal_text(self.high),
            "low": decimal_text(self.low),
            "close": decimal_text(self.close),
            "volume": decimal_text(self.volume),
            "turnover": decimal_text(self.turnover),
            "confirm": self.confirm,
            "ts": self.ts,
        }


#: What an exchange module's normalizer returns for one data message.
MarketUpdate: TypeAlias = TickerUpdate | BookUpdate | tuple[Trade, ...] | tuple[Kline, ...]
