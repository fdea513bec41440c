"""What the gateway needs from an exchange's public market-data protocol.

An exchange module (today :mod:`market.bybit`) provides one object that
satisfies :class:`ExchangeProtocol`. Everything it does is pure: text in,
typed values out; the connection, its timers and its retries live elsewhere.
The stream owner uses it like this::

    url = exchange.public_url(category, testnet=False)
    for request in exchange.subscribe_requests(topics, category, next_req_id):
        send(request.text)                    # remember request by req_id
    every 20 s: send(exchange.ping_request(next_req_id()).text)
    for each text frame:
        event = exchange.parse(frame)         # ExchangeProtocolError on garbage
        SubscribeAck -> match to the request; ok / fail_topics
        ExchangePong -> liveness
        TopicMessage -> exchange.normalize(event, category)
                        -> TickerUpdate  -> TickerBook.apply
                        -> BookUpdate    -> OrderBook.apply, then view(n)
                        -> tuple[Trade, ...] / tuple[Kline, ...] as they are

Errors::

    ValueError
    └── ExchangeProtocolError       a frame the exchange sent makes no sense
        └── BybitProtocolError      (market.bybit)

An :class:`ExchangeProtocolError` carries a :class:`DropReason` (its
``reason``): the stream owner drops the frame, counts it under that reason
and keeps the connection. A bad *argument* (an unknown depth for the
category, say) is a plain :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, TypeAlias, runtime_checkable

from .model import Category, MarketUpdate, Topic

__all__ = [
    "DropReason",
    "ExchangeEvent",
    "ExchangePong",
    "ExchangeProtocol",
    "ExchangeProtocolError",
    "MessageType",
    "OutboundRequest",
    "SubscribeAck",
    "TopicMessage",
]


class DropReason(StrEnum):
    """Why a frame from the exchange was dropped: the bounded ``reason`` label
    of ``ws_exchange_bad_messages_total``."""

    UNPARSEABLE = "unparseable"  # not JSON, or no message shape the exchange sends
    BAD_VALUE = "bad_value"  # a data frame with a value that does not validate (NaN, "1e5", a negative size…)
    WRONG_SYMBOL = "wrong_symbol"  # a data frame whose data names another symbol (or interval) than its topic
    UNSUBSCRIBED = "unsubscribed"  # a data frame for a topic the stream is not subscribed to


class ExchangeProtocolError(ValueError):
    """A frame from the exchange that cannot be understood.

    The message is lowercase and says what was wrong; ``reason`` says which
    kind of wrong (:class:`DropReason`, ``bad_value`` unless given). The frame
    should be logged and dropped; one bad frame is no reason to drop the
    connection.
    """

    reason: DropReason = DropReason.BAD_VALUE

    def __init__(self, *args: object, reason: DropReason | None = None) -> None:
        super().__init__(*args)
        if reason is not None:
            self.reason = reason


class MessageType(StrEnum):
    SNAPSHOT = "snapshot"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """A request ready to send: ``text`` is the exact frame.

    ``topics`` lists the exchange topic names it carries (empty for a ping),
    so an ack can be matched back by ``req_id``.
    """

    op: str
    req_id: str | None
    topics: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class SubscribeAck:
    """The exchange's single reply to one subscribe or unsubscribe request.

    ``ret_msg`` is the exchange's text ("" when it sent none); ``conn_id``
    and ``req_id`` are ``None`` when absent ("" is kept as ""). ``op`` is
    ``None`` when the reply does not say which operation it answers (Bybit
    options). ``success_topics`` and ``fail_topics`` are what the reply
    names, when it names them; an empty tuple means "not stated", so match
    the ack to its request by ``req_id`` to learn which topics it covers.
    """

    success: bool
    ret_msg: str
    conn_id: str | None
    req_id: str | None
    op: str | None
    success_topics: tuple[str, ...] = ()
    fail_topics: tuple[str, ...] = ()

    @property
    def already_subscribed(self) -> bool:
        """A refusal that only means the topic was streaming already.

        Treat it as success: the first subscription keeps streaming, and
        treating it as fatal has caused reconnect loops elsewhere.
        """
        return not self.success and self.ret_msg.startswith("error:already subscribed")

    @property
    def ok(self) -> bool:
        """Every topic of the request is (still) subscribed."""
        return (self.success and not self.fail_topics) or self.already_subscribed


@dataclass(frozen=True, slots=True)
class ExchangePong:
    """A reply to our JSON ping. ``server_ts`` is in ms when the exchange sends it."""

    conn_id: str | None = None
    req_id: str | None = None
    server_ts: int | None = None


@dataclass(slots=True)
class TopicMessage:
    """A market-data frame, with its ``data`` still raw (checked to be a
    JSON object or array, nothing more). Numbers inside are not floats:
    the parser reads JSON fractions as :class:`~decimal.Decimal`. One is
    made per exchange frame: a plain (not frozen) dataclass is built at
    twice the speed; treat it as read-only all the same.

    ``ts`` is the exchange's timestamp in ms; ``cts`` (matching-engine time)
    and ``cs`` (cross sequence) are ``None`` when absent.
    """

    topic: str
    type: MessageType
    ts: int
    data: dict[str, Any] | list[Any]
    cts: int | None = None
    cs: int | None = None


ExchangeEvent: TypeAlias = SubscribeAck | ExchangePong | TopicMessage


# --- the ingest path: checked values as the exchange's own text, no object per number --------


class BookLevels(NamedTuple):
    """An order-book message, checked: levels as ``(price, size)`` text, each valid decimal
    text with price > 0 and size >= 0 (0 deletes); for :meth:`market.orderbook.OrderBook.apply_levels`."""

    symbol: str
    depth: int
    snapshot: bool
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    update_id: int
    seq: int | None
    ts: int


class TickerFields(NamedTuple):
    """A ticker message, checked: the client's ticker keys it sets (``lastPrice``…,
    :data:`market.model.TICKER_JSON`) with the exchange's text, ``None`` for "no value",
    ``nextFundingTime`` as an int; for :class:`market.ticker.TickerTexts`."""

    symbol: str
    snapshot: bool
    ts: int
    fields: dict[str, str | int | None]


class TradeItems(NamedTuple):
    """A trade message, checked: each trade in the client's shape (``Trade.to_json_dict``)."""

    symbol: str
    trades: list[dict[str, Any]]


#: What :meth:`ExchangeProtocol.decode` returns: the ingest path's values, or (klines) model values.
Decoded: TypeAlias = BookLevels | TickerFields | TradeItems | MarketUpdate


@runtime_checkable
class ExchangeProtocol(Protocol):
    """The public market-data protocol of one exchange, without I/O."""

    #: Short lowercase exchange name, usable as a metric label.
    name: str

    def public_url(self, category: Category, testnet: bool = False) -> str:
        """The WebSocket URL of the public stream for ``category``."""
        ...

    def subscribe_requests(
        self, topics: Iterable[Topic | str], category: Category, req_id_factory: Callable[[], str]
    ) -> list[OutboundRequest]:
        """Requests subscribing ``topics`` (:class:`Topic` values or the
        exchange's own topic names) on the ``category`` endpoint, split
        to the exchange's per-request limit; one ``req_id_factory()`` call per
        request. Raises :class:`ValueError` for a topic the category lacks."""
        ...

    def unsubscribe_requests(
        self, topics: Iterable[Topic | str], category: Category, req_id_factory: Callable[[], str]
    ) -> list[OutboundRequest]:
        """Like :meth:`subscribe_requests`, for unsubscribing."""
        ...

    def ping_request(self, req_id: str | None = None) -> OutboundRequest:
        """The application-level heartbeat."""
        ...

    def parse(self, text: str | bytes) -> ExchangeEvent:
        """One text frame from the exchange as a typed event, or
        :class:`ExchangeProtocolError`."""
        ...

    def normalize(self, message: TopicMessage, category: Category) -> MarketUpdate:
        """A data message as model values, or :class:`ExchangeProtocolError`."""
        ...

    def decode(self, message: TopicMessage, category: Category) -> Decoded:
        """:meth:`normalize`'s checks (form and range), the values kept as the exchange's
        text: what the exchange streams use. Same errors."""
        ...

    def decode_frame(self, frame: bytes, books: dict[str, Any], wanted: Container[str],
                     category: str) -> tuple[Any, ...] | None:
        """A fast path for the common data frames (order-book deltas, tickers, trades): what
        :meth:`parse` and :meth:`decode` make of ``frame``, straight from its bytes, and an
        order-book delta applied to its book in ``books`` (:class:`~market.orderbook.OrderBook`
        by topic) as :meth:`~market.orderbook.OrderBook.apply_levels` would. ``None`` when
        declined (any other frame, anything unusual, or no such path here): nothing was
        changed, take the reference path. Else, by kind: ``(0, topic, gap)`` (``gap`` the
        :class:`~market.orderbook.BookGap` or ``None`` when applied), ``(1, topic,``
        :class:`TickerFields` ``)``, ``(2, topic, ts, symbol, trades)`` (the trades as the JSON
        array clients get, ``"[]"`` for none). Only for topics in ``wanted`` (books: held)."""
        ...
