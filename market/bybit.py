"""Bybit v5 public WebSocket: endpoints, topics, requests, frame parsing and
normalization into :mod:`market.model` values. Pure: no sockets, no timers.

Sources: Bybit's docs (repository ``bybit-exchange/docs`` @072c197d,
2026-07-24): the connect page https://bybit-exchange.github.io/docs/v5/ws/connect
(``docs/v5/websocket/wss-authentication.mdx``), the public topic pages
``/docs/v5/websocket/public/{ticker,trade,orderbook,kline}`` and
``/docs/v5/rate-limit``; observed frames are credited where used. Recorded
examples of every frame handled here are in ``tests/fixtures/bybit-v5``.

What bites (details in ``docs/bybit-v5.md``):

* Acks and pongs have three shapes: spot, linear/inverse, option.
* Spot takes at most 10 args per subscribe request (``"args size >10"``).
* One bad topic can fail a whole request; the reply names it
  (``error:handler not found,topic:X`` on linear, ``Invalid symbol :[X]`` on
  spot) and :func:`parse` copies it into ``SubscribeAck.fail_topics``.
* ``error:already subscribed`` is not a failure (``SubscribeAck.ok``).
* Data can arrive before the subscribe ack.
* Linear tickers are a snapshot, then deltas of changed fields only
  (:class:`market.ticker.TickerBook` merges them).
* Order book depth 500 is gone since 2025-09-30 (docs commit 77927d46a,
  "remove ob 500"); asking for it fails with ``error:handler not found``.
* A failure reply lists its topics in two forms: ``a,b`` and Go's
  ``[a b]`` (brackets optional, commas and/or spaces between topics);
  :func:`parse` reads both.

Valid numbers. Bybit sends every price, size and ratio as a JSON *string*
of plain decimal text, and that exact text is what clients get back
(:func:`market.model.decimal_text`). So a decimal field is accepted only as
a string that is:

* ASCII digits with an optional fraction: ``0``, ``16578.50``,
  ``0.00000123``; at most 32 digits on each side of the point; no leading
  zero before another digit (``01``), no exponent (``1e5``), no ``NaN`` or
  ``Infinity``, no ``+``, spaces, ``_`` or other Unicode digits, nothing
  bare (``.5``, ``5.``);
* signed (a leading ``-``) only for ratios: ``price24hPcnt``,
  ``change24h``, ``fundingRate``;
* ``> 0`` for a price something trades at or rests at: ``lastPrice``, a
  book level's price, a trade's ``p``, a candle's open/high/low/close;
  ``>= 0`` for every other price (bid/ask, mark, index, 24 h high/low: an
  empty side may be sent as ``0``), every size (a book level's size ``0``
  deletes it), volume and turnover.

A JSON number (``1e5``, ``16578.5``) in a decimal field is refused too:
Bybit never sends one, and its text is lost once parsed. In a ticker, ``""``
means "no value" (``None``). The module-level ``normalize*`` functions check
the form (and a book level's range); :func:`check_values` checks the range
of the rest; :data:`BYBIT`'s ``normalize``, which the exchange streams call,
does both. A failure raises :class:`BybitProtocolError` with ``reason``
:attr:`~market.exchange.DropReason.BAD_VALUE`
(:attr:`~market.exchange.DropReason.WRONG_SYMBOL` when the data names
another symbol or interval than its topic): the caller drops that frame,
never the connection.

Errors: :class:`BybitProtocolError` for a frame that makes no sense, plain
:class:`ValueError` for a bad argument to a builder.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Container, Iterable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, NoReturn

import orjson

from .exchange import (
    BookLevels,
    Decoded,
    DropReason,
    ExchangeEvent,
    ExchangePong,
    ExchangeProtocolError,
    MessageType,
    OutboundRequest,
    SubscribeAck,
    TickerFields,
    TopicMessage,
    TradeItems,
)
from .model import (
    TICKER_JSON,
    BookLevel,
    BookUpdate,
    Category,
    Kline,
    MarketUpdate,
    Side,
    StreamKind,
    TickerUpdate,
    Topic,
    Trade,
    decimal_text,
)

__all__ = [
    "BYBIT",
    "KLINE_INTERVALS",
    "MAX_ARGS_CHARS_PER_CONNECTION",
    "MAX_ARGS_PER_REQUEST",
    "ORDERBOOK_DEPTHS",
    "PING_INTERVAL_SECONDS",
    "BybitProtocolError",
    "BybitV5Public",
    "check_values",
    "decode",
    "decode_orderbook",
    "decode_ticker",
    "decode_trades",
    "format_topic",
    "kline_topic",
    "normalize",
    "normalize_klines",
    "normalize_orderbook",
    "normalize_ticker",
    "normalize_trades",
    "orderbook_topic",
    "parse",
    "parse_request",
    "parse_topic",
    "ping_request",
    "public_url",
    "subscribe_requests",
    "ticker_topic",
    "trade_topic",
    "unsubscribe_requests",
]


class BybitProtocolError(ExchangeProtocolError):
    """A frame from Bybit that cannot be understood (lowercase message)."""


# --- endpoints and limits ---------------------------------------------------

_MAINNET: Final = "wss://stream.bybit.com/v5/public/"
_TESTNET: Final = "wss://stream-testnet.bybit.com/v5/public/"


def public_url(category: Category | str, testnet: bool = False) -> str:
    """The public stream URL of ``category``, e.g.
    ``wss://stream.bybit.com/v5/public/linear``. No authentication needed.
    Raises :class:`ValueError` for an unknown category."""
    return (_TESTNET if testnet else _MAINNET) + Category(category).value


#: Order book depths per category (docs, orderbook page). 500 was retired
#: on 2025-09-30; options use their own two depths.
ORDERBOOK_DEPTHS: Final[Mapping[Category, frozenset[int]]] = MappingProxyType({
    Category.SPOT: frozenset({1, 50, 200, 1000}),
    Category.LINEAR: frozenset({1, 50, 200, 1000}),
    Category.INVERSE: frozenset({1, 50, 200, 1000}),
    Category.OPTION: frozenset({25, 100}),
})
_ANY_DEPTH: Final = frozenset().union(*ORDERBOOK_DEPTHS.values())

#: Kline intervals: minutes, then day, week, month (docs, kline page).
KLINE_INTERVALS: Final = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")

#: Topics per subscribe/unsubscribe request. Spot: 10, Bybit's documented
#: cap (more fails with "args size >10"). Linear/inverse have no documented
#: cap ("No args limit for Futures"); 50 keeps a request well inside the
#: per-connection args budget below and limits what one bad topic takes
#: down with it (Bybit may fail the whole batch). Options: no per-request cap
#: documented (2000 args per connection); 10 to stay safe.
MAX_ARGS_PER_REQUEST: Final[Mapping[Category, int]] = MappingProxyType({
    Category.SPOT: 10,
    Category.LINEAR: 50,
    Category.INVERSE: 50,
    Category.OPTION: 10,
})

#: "for one public connection, you cannot have length of "args" array over
#: 21,000 characters" (docs, connect page). Not enforced here: the owner of
#: a connection knows all it has subscribed.
MAX_ARGS_CHARS_PER_CONNECTION: Final = 21_000

#: Bybit recommends a JSON ping every 20 s; silent connections are cut after
#: 10 minutes (docs, connect page).
PING_INTERVAL_SECONDS: Final = 20.0


# --- topics -----------------------------------------------------------------

# Bybit symbols: BTCUSDT, 1000PEPEUSDT, BTC-26DEC25, BTC-6JAN23-18000-C. No
# dot, since topics are dot-separated.
_SYMBOL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _check_symbol(symbol: object) -> str:
    if not isinstance(symbol, str) or not _SYMBOL_RE.fullmatch(symbol):
        raise BybitProtocolError(f"invalid symbol {_show(symbol)}")
    return symbol


def format_topic(topic: Topic) -> str:
    """Bybit's name for ``topic``: ``tickers.S``, ``publicTrade.S``,
    ``orderbook.D.S``, ``kline.I.S``. Raises :class:`BybitProtocolError`
    (a :class:`ValueError`) for a symbol, depth or interval Bybit has no
    topic for in any category."""
    symbol = _check_symbol(topic.symbol)
    if topic.kind is StreamKind.TICKER:
        return f"tickers.{symbol}"
    if topic.kind is StreamKind.TRADE:
        return f"publicTrade.{symbol}"
    if topic.kind is StreamKind.ORDERBOOK:
        if topic.depth not in _ANY_DEPTH:
            raise BybitProtocolError(f"unknown order book depth {topic.depth!r}")
        return f"orderbook.{topic.depth}.{symbol}"
    if topic.interval not in KLINE_INTERVALS:
        raise BybitProtocolError(f"unknown kline interval {topic.interval!r}")
    return f"kline.{topic.interval}.{symbol}"


def ticker_topic(symbol: str) -> str:
    """``tickers.{symbol}``."""
    return format_topic(Topic(StreamKind.TICKER, symbol))


def trade_topic(symbol: str) -> str:
    """``publicTrade.{symbol}``; for options the symbol is the base coin (``BTC``)."""
    return format_topic(Topic(StreamKind.TRADE, symbol))


def orderbook_topic(depth: int, symbol: str) -> str:
    """``orderbook.{depth}.{symbol}``; see :data:`ORDERBOOK_DEPTHS`."""
    return format_topic(Topic(StreamKind.ORDERBOOK, symbol, depth=depth))


def kline_topic(interval: str | int, symbol: str) -> str:
    """``kline.{interval}.{symbol}``; ``interval`` is one of :data:`KLINE_INTERVALS`
    (an int is taken as minutes)."""
    return format_topic(Topic(StreamKind.KLINE, symbol, interval=str(interval)))


def parse_topic(topic: str) -> Topic:
    """The :class:`Topic` named by a Bybit topic string, or
    :class:`BybitProtocolError` for anything else (including Bybit topics
    this module does not handle, such as ``allLiquidation.BTCUSDT``).

    >>> parse_topic("orderbook.50.BTCUSDT")
    Topic(kind=<StreamKind.ORDERBOOK: 'orderbook'>, symbol='BTCUSDT', depth=50, interval=None)
    """
    if not isinstance(topic, str):
        raise BybitProtocolError(f"topic is not a string: {_show(topic)}")
    return _parse_topic(topic)


@functools.lru_cache(maxsize=4096)
def _parse_topic(topic: str) -> Topic:
    # Cached: a stream sees the same few hundred topics over and over (bounded:
    # garbage topics from the exchange cannot grow it). Errors are not cached.
    head, _, rest = topic.partition(".")
    if head == "tickers":
        parsed = Topic(StreamKind.TICKER, _check_symbol(rest))
    elif head == "publicTrade":
        parsed = Topic(StreamKind.TRADE, _check_symbol(rest))
    elif head in ("orderbook", "kline"):
        param, _, symbol = rest.partition(".")
        _check_symbol(symbol)
        if head == "kline":
            parsed = Topic(StreamKind.KLINE, symbol, interval=param)
        elif param.isascii() and param.isdigit():
            parsed = Topic(StreamKind.ORDERBOOK, symbol, depth=int(param))
        else:
            raise BybitProtocolError(f"unknown order book depth {_show(param)}")
    else:
        raise BybitProtocolError(f"unknown topic {_show(topic)}")
    format_topic(parsed)  # checks the depth or interval
    return parsed


# --- requests ---------------------------------------------------------------

def _topic_for(topic: Topic | str, category: Category) -> str:
    parsed = parse_topic(topic) if isinstance(topic, str) else topic
    if parsed.kind is StreamKind.ORDERBOOK and parsed.depth not in ORDERBOOK_DEPTHS[category]:
        offered = ", ".join(map(str, sorted(ORDERBOOK_DEPTHS[category])))
        raise ValueError(f"order book depth {parsed.depth} is not offered for {category}, use one of {offered}")
    return format_topic(parsed)


def _requests(
    op: str, topics: Iterable[Topic | str], category: Category | str, req_id_factory: Callable[[], str]
) -> list[OutboundRequest]:
    category = Category(category)
    names = list(dict.fromkeys(_topic_for(t, category) for t in topics))  # dedupe, keep order
    size = MAX_ARGS_PER_REQUEST[category]
    requests = []
    for start in range(0, len(names), size):
        chunk = tuple(names[start:start + size])
        req_id = req_id_factory()
        text = json.dumps({"req_id": req_id, "op": op, "args": list(chunk)}, separators=(",", ":"))
        requests.append(OutboundRequest(op=op, req_id=req_id, topics=chunk, text=text))
    return requests


def subscribe_requests(
    topics: Iterable[Topic | str], category: Category | str, req_id_factory: Callable[[], str]
) -> list[OutboundRequest]:
    """Subscribe requests for ``topics`` on the ``category`` endpoint.

    Topics may be :class:`Topic` values or Bybit topic strings; duplicates
    are dropped (order kept) and the rest split into requests of at most
    :data:`MAX_ARGS_PER_REQUEST` ``[category]`` topics, each with its own
    ``req_id_factory()``. No topics, no requests. Raises :class:`ValueError`
    for a topic the category does not offer (e.g. ``orderbook.25`` on spot).

    Bybit answers each request once, and may fail the whole request for one
    bad topic; the ack then names it in ``fail_topics``, so the caller can
    resend the others. Docs (connect page)::

        {"req_id": "test", "op": "subscribe",
         "args": ["orderbook.1.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.1.ETHUSDT"]}
    """
    return _requests("subscribe", topics, category, req_id_factory)


def unsubscribe_requests(
    topics: Iterable[Topic | str], category: Category | str, req_id_factory: Callable[[], str]
) -> list[OutboundRequest]:
    """Like :func:`subscribe_requests`, for unsubscribing. Docs (connect page)::

        {"op": "unsubscribe", "args": ["publicTrade.ETHUSD"], "req_id": "customised_id"}
    """
    return _requests("unsubscribe", topics, category, req_id_factory)


def ping_request(req_id: str | None = None) -> OutboundRequest:
    """The JSON heartbeat, to send every :data:`PING_INTERVAL_SECONDS`.
    Docs (connect page, "How to Send the Heartbeat Packet")::

        {"req_id": "100001", "op": "ping"}
    """
    body = {"op": "ping"} if req_id is None else {"req_id": req_id, "op": "ping"}
    return OutboundRequest(op="ping", req_id=req_id, topics=(), text=json.dumps(body, separators=(",", ":")))


_CLIENT_OPS: Final = frozenset({"subscribe", "unsubscribe", "ping"})


def parse_request(text: str | bytes) -> OutboundRequest:
    """A client request as Bybit would read it (for fakes of Bybit's server):
    ``op`` one of subscribe/unsubscribe/ping, ``args`` a list of strings
    (required unless pinging), optional string ``req_id``. Topic names are
    not checked: a server answers unknown ones itself. Raises
    :class:`BybitProtocolError`."""
    obj = _load(text)
    if not isinstance(obj, dict):
        raise BybitProtocolError(f"expected a json object, got {_json_type(obj)}")
    op = obj.get("op")
    if not isinstance(op, str) or op not in _CLIENT_OPS:
        raise BybitProtocolError(f"unknown request op {_show(op)}")
    req_id = _opt_str(obj, "req_id")
    args = obj.get("args", [] if op == "ping" else None)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise BybitProtocolError(f"request args must be a list of strings, got {_show(args)}")
    if isinstance(text, bytes):
        text = text.decode()
    return OutboundRequest(op=op, req_id=req_id, topics=tuple(args), text=text)


# --- parsing ----------------------------------------------------------------

def _reject_constant(name: str) -> NoReturn:
    raise BybitProtocolError(f"non-finite number {name} in json")


def _load(text: str | bytes) -> Any:
    """JSON with orjson: four times json's speed on a book delta, and strict (``NaN``,
    ``Infinity``, invalid UTF-8 and lone surrogates are errors). A JSON number with
    a fraction comes back a float, which no normalizer takes: every price and size
    Bybit sends is text, and is read as text. A refused frame is read again by the
    standard library only to say precisely why (rare: no speed needed)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        json.loads(text, parse_constant=_reject_constant)
    except BybitProtocolError:
        raise
    except json.JSONDecodeError as exc:
        raise BybitProtocolError(f"invalid json at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise BybitProtocolError("frame is not valid utf-8") from None
    except RecursionError:
        raise BybitProtocolError("json nested too deeply") from None
    raise BybitProtocolError("invalid json (a lone surrogate, or nested too deeply)")


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    if key == "req_id" and type(value) is int:  # some clients send numeric req_ids; Bybit echoes them
        return str(value)
    raise BybitProtocolError(f"{key} is not a string: {_show(value)}")


def _opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None or type(value) is int:
        return value
    raise BybitProtocolError(f"{key} is not an integer: {_show(value)}")


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if type(value) is not int:
        raise BybitProtocolError(f"{key} is not an integer: {_show(value)}" if key in obj else f"missing {key}")
    return value


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    if type(value) is not bool:
        raise BybitProtocolError(f"{key} is not a boolean: {_show(value)}" if key in obj else f"missing {key}")
    return value


def _topic_list(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise BybitProtocolError(f"{key} is not a list of strings: {_show(value)}")
    return tuple(value)


def parse(text: str | bytes) -> ExchangeEvent:
    """One text frame from a Bybit v5 public stream as a typed event.

    Returns a :class:`SubscribeAck` (subscribe and unsubscribe replies, all
    three shapes), a :class:`ExchangePong` (all three shapes) or a
    :class:`TopicMessage`. Raises :class:`BybitProtocolError` for anything
    else: text that is not JSON (``NaN`` and ``Infinity`` included), JSON
    that is not an object, an object of no known shape, or a known shape with
    missing or mistyped fields. A client request (``{"op": "ping"}``) is
    rejected too: it is not something Bybit sends. Fractions inside ``data``
    are read as :class:`~decimal.Decimal`, never float.
    """
    obj = _load(text)
    if not isinstance(obj, dict):
        raise BybitProtocolError(f"expected a json object, got {_json_type(obj)}")
    if "topic" in obj:
        return _topic_message(obj)
    if obj.get("type") == "COMMAND_RESP":
        return _option_ack(obj)
    op = obj.get("op")
    if op == "pong":
        return _option_pong(obj)
    if "success" in obj:
        if op == "ping" or obj.get("ret_msg") == "pong":
            return _pong(obj)
        if op in ("subscribe", "unsubscribe"):
            return _ack(obj)
    elif isinstance(op, str) and op in _CLIENT_OPS:
        raise BybitProtocolError(f"client request {op!r} is not a server message")
    raise BybitProtocolError(f"unrecognized message with keys {_show(sorted(map(str, obj)))}")


# Topics named by a failure's ret_msg. Linear: "error:handler not found,
# topic:orderbook.500.BTCUSDT" (sieblyio/bybit-api #561 and others). Spot:
# "Invalid symbol :[tickers.XUSDT]" (third-party fixtures). With several
# topics the list comes in two forms, "a,b" and Go's "[a b]"; brackets are
# optional and both separators are read, in either message.
_LINEAR_FAIL_RE: Final = re.compile(r"error:handler not found,\s*topic:\s*(.*)", re.DOTALL)
_SPOT_FAIL_RE: Final = re.compile(r"Invalid symbol\s*:\s*(.*)", re.DOTALL)
_LIST_SEPARATOR_RE: Final = re.compile(r"[,\s]+")


def _topic_names(text: str) -> tuple[str, ...]:
    """``[a b]``, ``[a,b]``, ``a,b``, ``a`` → ``("a", "b")``: topic names never hold commas or spaces."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return tuple(dict.fromkeys(t for t in _LIST_SEPARATOR_RE.split(text) if t))


def _named_fail_topics(ret_msg: str) -> tuple[str, ...]:
    match = _LINEAR_FAIL_RE.fullmatch(ret_msg) or _SPOT_FAIL_RE.fullmatch(ret_msg)
    return _topic_names(match.group(1)) if match else ()


def _ack(obj: Mapping[str, Any]) -> SubscribeAck:
    """Spot and linear/inverse reply to subscribe or unsubscribe.

    Docs, https://bybit-exchange.github.io/docs/v5/ws/connect, "Understanding
    the Subscription Response". Spot (``ret_msg`` is the op)::

        {"success": true, "ret_msg": "subscribe",
         "conn_id": "2324d924-aa4d-45b0-a858-7b8be29ab52b", "req_id": "10001", "op": "subscribe"}

    Linear/inverse (``ret_msg`` empty; ``req_id`` is "" when none was sent)::

        {"success": true, "ret_msg": "", "conn_id": "3cd84cb1-4d06-4a05-930a-2efe5fc70f0f",
         "req_id": "", "op": "subscribe"}

    Failures are not documented; observed (sieblyio/bybit-api issue #561,
    nautilus_trader PR #1793)::

        {"success": false, "ret_msg": "error:handler not found,topic:dcp.future",
         "conn_id": "d9jhogatbetvf6evjmc0-8eoj", "req_id": "dcp.future", "op": "subscribe"}
        {"success": false, "ret_msg": "args size >10", "op": "subscribe"}
    """
    ret_msg = _opt_str(obj, "ret_msg") or ""
    success = _bool(obj, "success")
    return SubscribeAck(
        success=success,
        ret_msg=ret_msg,
        conn_id=_opt_str(obj, "conn_id"),
        req_id=_opt_str(obj, "req_id"),
        op=obj["op"],
        fail_topics=() if success else _named_fail_topics(ret_msg),
    )


def _option_ack(obj: Mapping[str, Any]) -> SubscribeAck:
    """Option/spread reply to subscribe or unsubscribe: no ``op``, topics listed.

    Docs, https://bybit-exchange.github.io/docs/v5/ws/connect, tab "Option/Spread"::

        {"success": true, "conn_id": "aa01fbfffe80af37-00000001-000b37b9-7147f432704fd28c-00e1c172",
         "data": {"failTopics": [], "successTopics": ["orderbook.100.BTC-6JAN23-18000-C"]},
         "type": "COMMAND_RESP"}
    """
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise BybitProtocolError(f"command response data is not an object: {_show(data)}")
    return SubscribeAck(
        success=_bool(obj, "success"),
        ret_msg=_opt_str(obj, "ret_msg") or "",
        conn_id=_opt_str(obj, "conn_id"),
        req_id=_opt_str(obj, "req_id"),
        op=_opt_str(obj, "op"),
        success_topics=_topic_list(data, "successTopics"),
        fail_topics=_topic_list(data, "failTopics"),
    )


def _pong(obj: Mapping[str, Any]) -> ExchangePong:
    """Spot and linear/inverse pong: ``op`` stays "ping", ``ret_msg`` is "pong".

    Docs, https://bybit-exchange.github.io/docs/v5/ws/connect, "How to Send
    the Heartbeat Packet". Spot (``req_id`` only when the ping had one)::

        {"success": true, "ret_msg": "pong", "conn_id": "0970e817-426e-429a-a679-ff7f55e0b16a", "op": "ping"}

    Linear/inverse (``req_id`` always, "" when the ping had none)::

        {"success": true, "ret_msg": "pong", "conn_id": "465772b1-7630-4fdc-a492-e003e6f0f260",
         "req_id": "", "op": "ping"}
    """
    if not _bool(obj, "success"):
        raise BybitProtocolError(f"ping rejected: {_show(obj.get('ret_msg'))}")
    return ExchangePong(conn_id=_opt_str(obj, "conn_id"), req_id=_opt_str(obj, "req_id"))


def _option_pong(obj: Mapping[str, Any]) -> ExchangePong:
    """Option/spread pong: ``op`` "pong", ``args`` the server time in ms as text.

    Docs, https://bybit-exchange.github.io/docs/v5/ws/connect, tab "Option/Spread"::

        {"args": ["1672916271846"], "op": "pong"}

    (gocryptotrader records the same with a ``conn_id``.) A first arg that
    is not a millisecond count leaves ``server_ts`` ``None``.
    """
    args = obj.get("args", [])
    if not isinstance(args, list):
        raise BybitProtocolError(f"pong args is not a list: {_show(args)}")
    first = args[0] if args else None
    server_ts = int(first) if isinstance(first, str) and first.isascii() and first.isdigit() else None
    return ExchangePong(conn_id=_opt_str(obj, "conn_id"), req_id=_opt_str(obj, "req_id"), server_ts=server_ts)


_MESSAGE_TYPES: Final = {t.value: t for t in MessageType}


def _topic_message(obj: Mapping[str, Any]) -> TopicMessage:
    """A data frame: ``topic``, ``type`` snapshot|delta, ``ts`` (ms), ``data``
    (object or array), optional ``cts`` and ``cs``. Key order varies by
    category and depth; it does not matter here.

    Docs, https://bybit-exchange.github.io/docs/v5/websocket/public/kline::

        {"topic": "kline.5.BTCUSDT", "data": [{"start": 1672324800000, "end": 1672325099999,
         "interval": "5", "open": "16649.5", "close": "16677", "high": "16677", "low": "16608",
         "volume": "2.081", "turnover": "34666.4005", "confirm": false, "timestamp": 1672324988882}],
         "ts": 1672324988882, "type": "snapshot"}
    """
    topic = obj["topic"]
    if type(topic) is not str or not topic:
        if not isinstance(topic, str) or not topic:
            raise BybitProtocolError(f"invalid topic {_show(topic)}")
    kind = obj.get("type")
    kind = _MESSAGE_TYPES.get(kind) if type(kind) is str else None
    if kind is None:
        raise BybitProtocolError(f"unknown message type {_show(obj.get('type'))} for topic {_show(topic)}")
    data = obj.get("data", _MISSING)
    if type(data) is not dict and type(data) is not list:
        if data is _MISSING:
            raise BybitProtocolError(f"topic message without data for topic {_show(topic)}")
        if not isinstance(data, (dict, list)):
            raise BybitProtocolError(f"data of {_show(topic)} is not an object or array")
    ts, cts, cs = obj.get("ts"), obj.get("cts"), obj.get("cs")
    if type(ts) is not int:
        ts = _int(obj, "ts")  # raises
    if (cts is not None and type(cts) is not int) or (cs is not None and type(cs) is not int):
        _opt_int(obj, "cts")
        _opt_int(obj, "cs")
    return TopicMessage(topic, kind, ts, data, cts, cs)


_MISSING: Final = object()


# --- normalization ------------------------------------------------------------

# Bybit sends decimals as plain text; this is the only form accepted, so that
# format(Decimal(text), "f") gives the same text back (the module docstring
# says what is valid). Decimal() alone would also take "NaN", "1e5", " 1 ",
# "1_0", "+1", ".5" and Arabic-Indic digits.
_DECIMAL_RE: Final = re.compile(r"-?(?:0|[1-9][0-9]{0,31})(?:\.[0-9]{1,32})?")

PRICE: Final = "price"  # > 0
AMOUNT: Final = "amount"  # >= 0: sizes, volumes, turnover, quotes that may be 0
SIGNED: Final = "signed"  # ratios: may be negative


def _decimal(value: object, what: str) -> Decimal:
    """``value`` as a :class:`Decimal` if it is valid decimal text (its form;
    the range is :func:`check_values`'s job), else :class:`BybitProtocolError`."""
    if type(value) is not str or not _DECIMAL_RE.fullmatch(value):
        raise BybitProtocolError(f"{what} is not a decimal: {_show(value)}")
    return Decimal(value)


def _check_range(value: Decimal, what: str, kind: str) -> None:
    if kind == SIGNED:
        return
    if value.is_signed():  # "-0" too
        raise BybitProtocolError(f"{what} is negative: {_show(decimal_text(value))}")
    if kind == PRICE and not value:
        raise BybitProtocolError(f"{what} is not a positive price: {_show(decimal_text(value))}")


def _expect(message: TopicMessage, kind: StreamKind) -> Topic:
    topic = parse_topic(message.topic)
    if topic.kind is not kind:
        raise BybitProtocolError(f"expected a {kind} topic, got {_show(message.topic)}")
    return topic


def _mismatch(what: str, value: object, message: TopicMessage) -> BybitProtocolError:
    return BybitProtocolError(f"{what} {_show(value)} does not match topic {_show(message.topic)}",
                              reason=DropReason.WRONG_SYMBOL)


def _data_object(message: TopicMessage) -> dict[str, Any]:
    if not isinstance(message.data, dict):
        raise BybitProtocolError(f"data of {_show(message.topic)} is not an object")
    return message.data


def _data_array(message: TopicMessage) -> list[Any]:
    if not isinstance(message.data, list):
        raise BybitProtocolError(f"data of {_show(message.topic)} is not an array")
    return message.data


# Bybit ticker key -> Ticker field, and what kind of decimal it is. Options
# name a few fields differently (bidPrice, askPrice, change24h; per the
# option tab of the ticker page).
_TICKER_DECIMALS: Final = (
    ("lastPrice", "last_price", PRICE),
    ("bid1Price", "bid_price", AMOUNT),
    ("bidPrice", "bid_price", AMOUNT),
    ("bid1Size", "bid_size", AMOUNT),
    ("bidSize", "bid_size", AMOUNT),
    ("ask1Price", "ask_price", AMOUNT),
    ("askPrice", "ask_price", AMOUNT),
    ("ask1Size", "ask_size", AMOUNT),
    ("askSize", "ask_size", AMOUNT),
    ("highPrice24h", "high_24h", AMOUNT),
    ("lowPrice24h", "low_24h", AMOUNT),
    ("volume24h", "volume_24h", AMOUNT),
    ("turnover24h", "turnover_24h", AMOUNT),
    ("price24hPcnt", "change_24h", SIGNED),
    ("change24h", "change_24h", SIGNED),
    ("markPrice", "mark_price", AMOUNT),
    ("indexPrice", "index_price", AMOUNT),
    ("fundingRate", "funding_rate", SIGNED),
)


def _funding_time(value: object) -> int | None:
    """``nextFundingTime``: ms as an int or digits (linear sends text); ``""`` is no value."""
    if value == "":
        return None
    if type(value) is int or (isinstance(value, str) and value.isascii() and value.isdigit()):
        return int(value)
    raise BybitProtocolError(f"nextFundingTime is not a millisecond time: {_show(value)}")


def normalize_ticker(message: TopicMessage, category: Category | str) -> TickerUpdate:
    """A ``tickers.{symbol}`` message as a :class:`TickerUpdate`.

    Only fields present in ``data`` are set (a linear delta names only what
    changed); an empty string means "no value" (``None``). A snapshot must
    carry ``lastPrice``; a delta may not clear it. ``nextFundingTime`` (ms,
    sent as text) becomes an int. Raises :class:`BybitProtocolError`.

    Docs, https://bybit-exchange.github.io/docs/v5/websocket/public/ticker, tab "Spot"::

        {"topic": "tickers.BTCUSDT", "ts": 1673853746003, "type": "snapshot", "cs": 2588407389,
         "data": {"symbol": "BTCUSDT", "lastPrice": "21109.77", "highPrice24h": "21426.99",
          "lowPrice24h": "20575", "prevPrice24h": "20704.93", "volume24h": "6780.866843",
          "turnover24h": "141946527.22907118", "price24hPcnt": "0.0196",
          "usdIndexPrice": "21120.2400136"}}

    Linear delta, recorded (gocryptotrader ``testdata/wsTicker.json``)::

        {"topic": "tickers.BTCUSDT", "type": "delta", "data": {"symbol": "BTCUSDT",
         "markPrice": "61875.06", "indexPrice": "61903.59", "openInterestValue": "3595994223.27",
         "bid1Price": "61873.90", "bid1Size": "3.543"}, "cs": 176530004279, "ts": 1715748763063}
    """
    topic = _expect(message, StreamKind.TICKER)
    data = _data_object(message)
    if data.get("symbol") != topic.symbol:
        raise _mismatch("ticker symbol", data.get("symbol"), message)
    changes: dict[str, Decimal | int | None] = {}
    for key, name, _kind in _TICKER_DECIMALS:
        if key in data:
            value = data[key]
            changes[name] = None if value == "" else _decimal(value, key)
    if "nextFundingTime" in data:
        changes["next_funding_time"] = _funding_time(data["nextFundingTime"])
    snapshot = message.type is MessageType.SNAPSHOT
    if changes.get("last_price", 0) is None or (snapshot and "last_price" not in changes):
        raise BybitProtocolError(f"ticker {message.type} without lastPrice for {topic.symbol}")
    return TickerUpdate(
        category=Category(category),
        symbol=topic.symbol,
        snapshot=snapshot,
        ts=message.ts,
        changes=tuple(changes.items()),
    )


def _checked_levels(raw: object, side: str) -> list[tuple[str, str]]:
    """The levels of one side as ``(price, size)`` text, checked: valid decimal text, price > 0,
    size >= 0. The hot loop of ingest: every check inline, the precise complaint made by
    :func:`_bad_level` only for a level that fails."""
    if not isinstance(raw, list):
        raise BybitProtocolError(f"order book side {side} is not an array")
    levels: list[tuple[str, str]] = []
    append, match = levels.append, _DECIMAL_RE.fullmatch
    for entry in raw:
        if type(entry) is not list or len(entry) < 2:
            raise BybitProtocolError(f"invalid order book level {_show(entry)}")
        price, size = entry[0], entry[1]
        if (type(price) is not str or type(size) is not str or not match(price) or not match(size)
                or size[0] == "-" or price[0] == "-" or not price.strip("0.")):
            _bad_level(entry, side)
        append((price, size))
    return levels


def _levels(raw: object, side: str) -> tuple[BookLevel, ...]:
    # Checked decimal text (digits and one dot): safe to put in JSON as it is.
    return tuple(BookLevel(Decimal(p), Decimal(s), f'["{p}","{s}"]') for p, s in _checked_levels(raw, side))


def _bad_level(entry: list[Any], side: str) -> NoReturn:
    _decimal(entry[0], f"{side} price")
    _decimal(entry[1], f"{side} size")
    raise BybitProtocolError(f"invalid order book level {_show(entry)}")  # "-0" is no size either


def normalize_orderbook(message: TopicMessage, category: Category | str) -> BookUpdate:
    """An ``orderbook.{depth}.{symbol}`` message as a :class:`BookUpdate`.

    Levels are ``[price, size]`` text pairs, price > 0, size >= 0 (0 deletes
    in a delta); ``u`` is required, ``seq`` optional. Raises
    :class:`BybitProtocolError`. Sequence checks are :class:`OrderBook`'s job.

    Recorded spot delta (gocryptotrader ``bybit_test.go``; the docs page
    https://bybit-exchange.github.io/docs/v5/websocket/public/orderbook has the
    same shape)::

        {"topic": "orderbook.50.BTCUSDT", "ts": 1731035685345, "type": "delta",
         "data": {"s": "BTCUSDT", "b": [["75848.62", "0.014895"], ["75837.13", "0"]],
          "a": [["75848.89", "0.088149"], ["75851.44", "0.078379"], ["75852.65", "0"],
                ["75855.23", "0.260219"], ["75857.74", "0.049778"]],
          "u": 2876701, "seq": 47474967823}, "cts": 1731035685342}
    """
    topic = _expect(message, StreamKind.ORDERBOOK)
    data = _data_object(message)
    if data.get("s") != topic.symbol:
        raise _mismatch("order book symbol", data.get("s"), message)
    assert topic.depth is not None  # parse_topic guarantees it for order books
    return BookUpdate(
        category=Category(category),
        symbol=topic.symbol,
        depth=topic.depth,
        snapshot=message.type is MessageType.SNAPSHOT,
        bids=_levels(data.get("b"), "b"),
        asks=_levels(data.get("a"), "a"),
        update_id=_int(data, "u"),
        seq=_opt_int(data, "seq"),
        ts=message.ts,
    )


_SIDES: Final = {"Buy": Side.BUY, "Sell": Side.SELL}


def normalize_trades(message: TopicMessage, category: Category | str) -> tuple[Trade, ...]:
    """A ``publicTrade.{symbol}`` message as trades, oldest first.

    The symbol is each trade's ``s`` (for options the topic names only the
    base coin). ``BT`` defaults to false when absent, ``seq`` to ``None``.
    Raises :class:`BybitProtocolError`.

    Docs, https://bybit-exchange.github.io/docs/v5/websocket/public/trade::

        {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868,
         "data": [{"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "16578.50",
                   "L": "PlusTick", "i": "20f43950-d8dd-5b31-9112-a178eb6023af", "BT": false,
                   "seq": 1783284617}]}
    """
    _expect(message, StreamKind.TRADE)
    category = Category(category)
    trades = []
    for item in _data_array(message):
        if not isinstance(item, dict):
            raise BybitProtocolError(f"trade is not an object: {_show(item)}")
        raw_side = item.get("S")
        side = _SIDES.get(raw_side) if isinstance(raw_side, str) else None
        if side is None:
            raise BybitProtocolError(f"unknown trade side {_show(item.get('S'))}")
        trade_id = _opt_str(item, "i")
        if not trade_id:
            raise BybitProtocolError("trade without id")
        trades.append(Trade(
            category=category,
            symbol=_check_symbol(item.get("s")),
            trade_id=trade_id,
            side=side,
            price=_decimal(item.get("p"), "p"),
            size=_decimal(item.get("v"), "v"),
            ts=_int(item, "T"),
            block_trade=_bool(item, "BT") if "BT" in item else False,
            seq=_opt_int(item, "seq"),
        ))
    return tuple(trades)


def normalize_klines(message: TopicMessage, category: Category | str) -> tuple[Kline, ...]:
    """A ``kline.{interval}.{symbol}`` message as candles. Each item's
    ``interval`` must match the topic's. Raises :class:`BybitProtocolError`.

    Docs, https://bybit-exchange.github.io/docs/v5/websocket/public/kline::

        {"topic": "kline.5.BTCUSDT", "data": [{"start": 1672324800000, "end": 1672325099999,
         "interval": "5", "open": "16649.5", "close": "16677", "high": "16677", "low": "16608",
         "volume": "2.081", "turnover": "34666.4005", "confirm": false, "timestamp": 1672324988882}],
         "ts": 1672324988882, "type": "snapshot"}
    """
    topic = _expect(message, StreamKind.KLINE)
    category = Category(category)
    klines = []
    for item in _data_array(message):
        if not isinstance(item, dict):
            raise BybitProtocolError(f"kline is not an object: {_show(item)}")
        interval = item.get("interval")
        if interval is None or interval != topic.interval:
            raise _mismatch("kline interval", interval, message)
        klines.append(Kline(
            category=category,
            symbol=topic.symbol,
            interval=interval,
            start=_int(item, "start"),
            end=_int(item, "end"),
            open=_decimal(item.get("open"), "open"),
            high=_decimal(item.get("high"), "high"),
            low=_decimal(item.get("low"), "low"),
            close=_decimal(item.get("close"), "close"),
            volume=_decimal(item.get("volume"), "volume"),
            turnover=_decimal(item.get("turnover"), "turnover"),
            confirm=_bool(item, "confirm"),
            ts=_int(item, "timestamp"),
        ))
    return tuple(klines)


# --- the ingest path: the same checks, values kept as the exchange's text -------------------


def decode_orderbook(message: TopicMessage) -> BookLevels:
    """:func:`normalize_orderbook`'s checks, levels as ``(price, size)`` text."""
    return _decode_orderbook(message, _expect(message, StreamKind.ORDERBOOK))


def _decode_orderbook(message: TopicMessage, topic: Topic) -> BookLevels:
    data = message.data
    if type(data) is not dict:
        raise BybitProtocolError(f"data of {_show(message.topic)} is not an object")
    if data.get("s") != topic.symbol:
        raise _mismatch("order book symbol", data.get("s"), message)
    assert topic.depth is not None  # parse_topic guarantees it for order books
    return BookLevels(topic.symbol, topic.depth, message.type is MessageType.SNAPSHOT,
                      _checked_levels(data.get("b"), "b"), _checked_levels(data.get("a"), "a"),
                      _int(data, "u"), _opt_int(data, "seq"), message.ts)


# Bybit ticker key -> client JSON key, and what kind of decimal it is (the table above, once).
_TICKER_JSON_KEYS: Final = dict(TICKER_JSON)
_TICKER_TEXT: Final = tuple((key, _TICKER_JSON_KEYS[name], kind) for key, name, kind in _TICKER_DECIMALS)


def _checked_text(value: object, what: str, kind: str) -> str:
    """Valid decimal text in range for ``kind``, as it is; else :class:`BybitProtocolError`."""
    if type(value) is not str or not _DECIMAL_RE.fullmatch(value):
        raise BybitProtocolError(f"{what} is not a decimal: {_show(value)}")
    if kind != SIGNED:
        if value[0] == "-":  # "-0" too
            raise BybitProtocolError(f"{what} is negative: {_show(value)}")
        if kind == PRICE and not value.strip("0."):
            raise BybitProtocolError(f"{what} is not a positive price: {_show(value)}")
    return value


def decode_ticker(message: TopicMessage) -> TickerFields:
    """:func:`normalize_ticker` and :func:`check_values`' checks, fields under the client's
    keys as the exchange's text."""
    return _decode_ticker(message, _expect(message, StreamKind.TICKER))


def _decode_ticker(message: TopicMessage, topic: Topic) -> TickerFields:
    data = message.data
    if type(data) is not dict:
        raise BybitProtocolError(f"data of {_show(message.topic)} is not an object")
    if data.get("symbol") != topic.symbol:
        raise _mismatch("ticker symbol", data.get("symbol"), message)
    fields: dict[str, str | int | None] = {}
    for key, name, kind in _TICKER_TEXT:
        if key in data:
            value = data[key]
            fields[name] = None if value == "" else _checked_text(value, key, kind)
    if "nextFundingTime" in data:
        fields["nextFundingTime"] = _funding_time(data["nextFundingTime"])
    snapshot = message.type is MessageType.SNAPSHOT
    if fields.get("lastPrice", 0) is None or (snapshot and "lastPrice" not in fields):
        raise BybitProtocolError(f"ticker {message.type} without lastPrice for {topic.symbol}")
    return TickerFields(topic.symbol, snapshot, message.ts, fields)


_SIDE_TEXT: Final = {"Buy": "buy", "Sell": "sell"}


def decode_trades(message: TopicMessage, category: Category | str) -> TradeItems:
    """:func:`normalize_trades` and :func:`check_values`' checks, each trade in the client's
    shape (:meth:`Trade.to_json_dict`) with the exchange's text."""
    _expect(message, StreamKind.TRADE)
    return _decode_trades(message, str(category))


def _decode_trades(message: TopicMessage, category: str) -> TradeItems:
    data = message.data
    if type(data) is not list:
        raise BybitProtocolError(f"data of {_show(message.topic)} is not an array")
    trades: list[dict[str, Any]] = []
    symbol = ""
    for item in data:
        if type(item) is not dict:
            raise BybitProtocolError(f"trade is not an object: {_show(item)}")
        raw_side = item.get("S")
        side = _SIDE_TEXT.get(raw_side) if isinstance(raw_side, str) else None
        if side is None:
            raise BybitProtocolError(f"unknown trade side {_show(item.get('S'))}")
        trade_id = _opt_str(item, "i")
        if not trade_id:
            raise BybitProtocolError("trade without id")
        raw_symbol = item.get("s")
        symbol = raw_symbol if type(raw_symbol) is str and _SYMBOL_RE.fullmatch(raw_symbol) else _check_symbol(
            raw_symbol)
        price = _checked_text(item.get("p"), "p", PRICE)
        size = _checked_text(item.get("v"), "v", AMOUNT)
        trades.append({"symbol": symbol, "category": category, "id": trade_id, "side": side, "price": price,
                       "size": size, "ts": _int(item, "T"),
                       "blockTrade": _bool(item, "BT") if "BT" in item else False, "seq": _opt_int(item, "seq")})
    return TradeItems(trades[0]["symbol"] if trades else symbol, trades)


def decode(message: TopicMessage, category: Category | str) -> Decoded:
    """What the exchange streams take: :func:`normalize`'s checks and :func:`check_values`',
    order books, tickers and trades as the exchange's text (:class:`BookLevels`,
    :class:`TickerFields`, :class:`TradeItems`), candles as :class:`Kline` values."""
    topic = parse_topic(message.topic)
    kind = topic.kind
    if kind is StreamKind.ORDERBOOK:
        return _decode_orderbook(message, topic)
    if kind is StreamKind.TICKER:
        return _decode_ticker(message, topic)
    if kind is StreamKind.TRADE:
        return _decode_trades(message, str(category))
    return check_values(normalize(message, category))


_NORMALIZERS: Final[Mapping[StreamKind, Callable[[TopicMessage, Category | str], MarketUpdate]]] = {
    StreamKind.TICKER: normalize_ticker,
    StreamKind.ORDERBOOK: normalize_orderbook,
    StreamKind.TRADE: normalize_trades,
    StreamKind.KLINE: normalize_klines,
}


_TICKER_RANGES: Final = {name: (key, kind) for key, name, kind in reversed(_TICKER_DECIMALS)}


def check_values(update: MarketUpdate) -> MarketUpdate:
    """``update`` itself if every number in it is in range (the module
    docstring: prices > 0 where something trades or rests at them, sizes and
    other amounts >= 0, only ratios signed); else :class:`BybitProtocolError`
    (``reason`` ``bad_value``) naming the first one that is not.

    :func:`normalize` checks the *form* of every number (plain decimal text);
    this checks the range, and :data:`BYBIT`'s ``normalize`` (what the
    exchange streams call) does both. Book levels are range-checked by
    :func:`normalize_orderbook` already.
    """
    if isinstance(update, TickerUpdate):
        for name, value in update.changes:
            if isinstance(value, Decimal) and name in _TICKER_RANGES:
                key, kind = _TICKER_RANGES[name]
                _check_range(value, key, kind)
    elif isinstance(update, tuple):
        for item in update:
            if isinstance(item, Trade):
                _check_range(item.price, "p", PRICE)
                _check_range(item.size, "v", AMOUNT)
            elif isinstance(item, Kline):
                for what in ("open", "high", "low", "close"):
                    _check_range(getattr(item, what), what, PRICE)
                _check_range(item.volume, "volume", AMOUNT)
                _check_range(item.turnover, "turnover", AMOUNT)
    return update


def normalize(message: TopicMessage, category: Category | str) -> MarketUpdate:
    """Any supported data message as model values: a :class:`TickerUpdate`
    (feed it to :class:`~market.ticker.TickerBook`), a :class:`BookUpdate`
    (to :class:`~market.orderbook.OrderBook`), or a tuple of :class:`Trade`
    or :class:`Kline`. Raises :class:`BybitProtocolError` for a topic this
    module does not handle or data that does not fit it. ``category`` is the
    endpoint the message came from: Bybit frames do not name it."""
    return _NORMALIZERS[parse_topic(message.topic).kind](message, category)


# --- the ExchangeProtocol object ----------------------------------------------

class BybitV5Public:
    """Bybit v5 public streams as an :class:`~market.exchange.ExchangeProtocol`.
    Stateless: share :data:`BYBIT`."""

    name: Final = "bybit"

    def public_url(self, category: Category, testnet: bool = False) -> str:
        return public_url(category, testnet)

    def subscribe_requests(
        self, topics: Iterable[Topic | str], category: Category, req_id_factory: Callable[[], str]
    ) -> list[OutboundRequest]:
        return subscribe_requests(topics, category, req_id_factory)

    def unsubscribe_requests(
        self, topics: Iterable[Topic | str], category: Category, req_id_factory: Callable[[], str]
    ) -> list[OutboundRequest]:
        return unsubscribe_requests(topics, category, req_id_factory)

    def ping_request(self, req_id: str | None = None) -> OutboundRequest:
        return ping_request(req_id)

    def parse(self, text: str | bytes) -> ExchangeEvent:
        return parse(text)

    def normalize(self, message: TopicMessage, category: Category) -> MarketUpdate:
        """:func:`normalize`, then :func:`check_values`: form and range."""
        return check_values(normalize(message, category))

    def decode(self, message: TopicMessage, category: Category) -> Decoded:
        return decode(message, category)

    def decode_frame(self, frame: bytes, books: dict[str, Any], wanted: Container[str],
                     category: str) -> tuple[Any, ...] | None:
        """:func:`market._bybit_fast.decode_frame` (compiled), or ``None`` (declined) where it
        was not built: see ``COMPILED`` (below the class)."""
        return None


try:  # the compiled path for the common frames (market/_bybit_fast.pyx; docs/performance.md, (f))
    from ._bybit_fast import decode_frame as _decode_frame
    from ._bybit_fast import use_ticker_table as _use_ticker_table
except ImportError:  # not built (no C compiler at install): the reference path does everything
    COMPILED = False
else:
    COMPILED = True
    _use_ticker_table(_TICKER_TEXT)
    BybitV5Public.decode_frame = staticmethod(_decode_frame)  # type: ignore[method-assign,assignment]

BYBIT: Final = BybitV5Public()
