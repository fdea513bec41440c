"""Bybit v5 public WebSocket messages, exactly as Bybit shapes them: pure, no I/O.

Every builder returns a ``dict`` whose key order is the order Bybit sends
(JSON key order differs by market; parsers should not care, but a fake
exchange should not teach them to). Sources are the fixtures in
``tests/fixtures/bybit-v5/`` and ``docs/bybit-v5.md``.

Replies to requests (one per request, never one per topic)::

    spot ack      {"success":true,"ret_msg":"subscribe","conn_id":"…","req_id":"10001","op":"subscribe"}
    linear ack    {"success":true,"ret_msg":"","conn_id":"…","req_id":"","op":"subscribe"}
    spot pong     {"success":true,"ret_msg":"pong","conn_id":"…","op":"ping"}
    linear pong   {"success":true,"ret_msg":"pong","conn_id":"…","req_id":"","op":"ping"}
    spot fail     {"success":false,"ret_msg":"Invalid symbol :[tickers.XUSDT]","conn_id":"…","op":"subscribe"}
    spot >10 args {"success":false,"ret_msg":"args size >10","conn_id":"…","op":"subscribe"}
    linear fail   {"success":false,"ret_msg":"error:handler not found,topic:T","conn_id":"…","req_id":"",
                   "op":"subscribe"}
    linear dup    the same with "ret_msg":"error:already subscribed,topic:T"

Spot carries ``req_id`` only when the request had one; linear always does
(``""`` when absent). Spot unsubscribe answers ``ret_msg`` ``"unsubscribe"``,
linear ``""``. The spot ``args size >10`` reply is attested only with
``success/ret_msg/op`` (nautilus_trader PR #1793); like every other spot
reply it carries ``conn_id`` here.

Not attested anywhere and invented here (kept in Bybit's reply shape): the
answer to a frame that is not JSON or has an unknown ``op``
(``ret_msg`` ``"error:invalid request"`` / ``"error:unsupported op <op>"``),
and the spot reply to a duplicate topic (a plain success ack).

Independent of ``market/`` on purpose, and it must stay so: this module is
the oracle the gateway's Bybit parser (``market/bybit.py``) is tested
against. Sharing code with it (topic names, symbol rules, message shapes)
would let one bug hide in both and pass every test. Its only knowledge of
Bybit comes from the recorded fixtures and ``docs/bybit-v5.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "KLINE_INTERVALS",
    "ORDERBOOK_DEPTHS",
    "SPOT_MAX_ARGS",
    "UNNAMED_FAILURE",
    "Category",
    "Request",
    "RequestError",
    "Topic",
    "TopicError",
    "TopicKind",
    "ack",
    "already_subscribed",
    "args_too_many",
    "dumps",
    "invalid_topics",
    "kline_message",
    "orderbook_message",
    "parse_request",
    "parse_topic",
    "pong",
    "request_error",
    "ticker_message",
    "trade_message",
]

#: Spot takes at most 10 args per subscribe request (docs: rate-limit.mdx).
SPOT_MAX_ARGS = 10
#: Depths served on spot and linear; 500 was retired on 2025-09-30.
ORDERBOOK_DEPTHS = (1, 50, 200, 1000)
#: Kline intervals (docs: kline.mdx).
KLINE_INTERVALS = (
    "1",
    "3",
    "5",
    "15",
    "30",
    "60",
    "120",
    "240",
    "360",
    "720",
    "D",
    "W",
    "M",
)


class Category(StrEnum):
    """A public market, named as in the URL path ``/v5/public/{category}``."""

    SPOT = "spot"
    LINEAR = "linear"


class TopicKind(StrEnum):
    """The first segment of a topic name."""

    TICKERS = "tickers"
    PUBLIC_TRADE = "publicTrade"
    ORDERBOOK = "orderbook"
    KLINE = "kline"


class TopicError(ValueError):
    """A topic name that is not one of the four public topic forms."""


class RequestError(ValueError):
    """A client frame that is not a valid request."""


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic: ``tickers.BTCUSDT``, ``orderbook.50.BTCUSDT``, ``kline.5.BTCUSDT``…"""

    kind: TopicKind
    symbol: str
    depth: int | None = None
    interval: str | None = None

    @property
    def name(self) -> str:
        """The topic exactly as the client writes it."""
        if self.kind is TopicKind.ORDERBOOK:
            return f"orderbook.{self.depth}.{self.symbol}"
        if self.kind is TopicKind.KLINE:
            return f"kline.{self.interval}.{self.symbol}"
        return f"{self.kind}.{self.symbol}"


def parse_topic(name: str) -> Topic:
    """Parse a topic name; raises :class:`TopicError` for anything Bybit would not route.

    Symbols must be upper-case letters and digits (Bybit answers ``handler
    not found`` to a lower-case symbol); depth and interval must be ones
    Bybit serves.
    """
    parts = name.split(".")
    symbol = parts[-1]
    if not symbol or not symbol.isascii() or not symbol.isalnum() or symbol != symbol.upper():
        raise TopicError(f"bad symbol in topic {name!r}")
    if len(parts) == 2 and parts[0] == TopicKind.TICKERS:
        return Topic(TopicKind.TICKERS, symbol)
    if len(parts) == 2 and parts[0] == TopicKind.PUBLIC_TRADE:
        return Topic(TopicKind.PUBLIC_TRADE, symbol)
    if len(parts) == 3 and parts[0] == TopicKind.ORDERBOOK:
        if not parts[1].isdigit() or int(parts[1]) not in ORDERBOOK_DEPTHS:
            raise TopicError(f"unsupported depth in topic {name!r}")
        return Topic(TopicKind.ORDERBOOK, symbol, depth=int(parts[1]))
    if len(parts) == 3 and parts[0] == TopicKind.KLINE:
        if parts[1] not in KLINE_INTERVALS:
            raise TopicError(f"unsupported interval in topic {name!r}")
        return Topic(TopicKind.KLINE, symbol, interval=parts[1])
    raise TopicError(f"unknown topic {name!r}")


@dataclass(frozen=True, slots=True)
class Request:
    """A client request: ``op`` is ``subscribe``, ``unsubscribe`` or ``ping``.

    ``req_id`` is ``None`` when the client sent none (it decides whether
    spot replies carry the key).
    """

    op: str
    args: tuple[str, ...] = ()
    req_id: str | None = None


def parse_request(text: str | bytes) -> Request:
    """Parse one client frame. Raises :class:`RequestError` with what was wrong.

    ``req_id`` is echoed as a string whatever JSON type the client used.
    """
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("request is not json") from exc
    if not isinstance(obj, dict):
        raise RequestError("request is not a json object")
    op = obj.get("op")
    req_id = obj.get("req_id")
    req = None if req_id is None else str(req_id)
    if not isinstance(op, str):
        raise RequestError("missing op")
    if op == "ping":
        return Request(op, (), req)
    if op not in ("subscribe", "unsubscribe"):
        raise RequestError(f"unsupported op {op}")
    args = obj.get("args")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise RequestError("args must be a list of strings")
    return Request(op, tuple(args), req)


def dumps(message: dict[str, Any]) -> bytes:
    """Compact JSON, key order kept, as Bybit sends it."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _reply(
    category: Category,
    success: bool,
    ret_msg: str,
    conn_id: str,
    req_id: str | None,
    op: str,
) -> dict[str, Any]:
    reply: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": conn_id}
    if category is Category.LINEAR:
        reply["req_id"] = req_id or ""
    elif req_id is not None:
        reply["req_id"] = req_id
    reply["op"] = op
    return reply


def ack(category: Category, op: str, conn_id: str, req_id: str | None) -> dict[str, Any]:
    """Success reply to ``subscribe`` or ``unsubscribe``."""
    ret_msg = op if category is Category.SPOT else ""
    return _reply(category, True, ret_msg, conn_id, req_id, op)


def pong(category: Category, conn_id: str, req_id: str | None) -> dict[str, Any]:
    """Reply to ``{"op":"ping"}``: ``op`` stays ``"ping"`` on spot and linear."""
    return _reply(category, True, "pong", conn_id, req_id, "ping")


#: The failure text of ``invalid_topics(..., form="none")``: invented (no
#: recording), in Bybit's reply shape, for a refusal that names no topic.
UNNAMED_FAILURE = "error:subscribe rejected"


def invalid_topics(
    category: Category,
    topics: list[str],
    conn_id: str,
    req_id: str | None,
    op: str = "subscribe",
    form: str | None = None,
) -> dict[str, Any]:
    """Failure naming unknown topics (the whole request fails).

    Spot: ``Invalid symbol :[t1,t2]`` (note the space before the colon;
    recorded with one topic, several are assumed comma-separated, as the
    gateway's parser reads them); linear names the first bad topic:
    ``error:handler not found,topic:t1``. Keys in the order of the
    recorded frames (``subscribe_fail_spot_invalid_symbol.json``,
    ``subscribe_fail.json``): spot has ``req_id`` only if the request did.

    ``form`` lists every topic another way, in either market's text:
    ``"comma"`` (``t1,t2``), ``"space"`` (Go's ``[t1 t2]``), or ``"none"``
    names none (:data:`UNNAMED_FAILURE`).
    """
    if form == "none":
        ret_msg = UNNAMED_FAILURE
    elif form is not None:
        listed = ",".join(topics) if form == "comma" else f"[{' '.join(topics)}]"
        ret_msg = (f"Invalid symbol :{listed}" if category is Category.SPOT
                   else f"error:handler not found,topic:{listed}")
    elif category is Category.SPOT:
        ret_msg = f"Invalid symbol :[{','.join(topics)}]"
    else:
        ret_msg = f"error:handler not found,topic:{topics[0]}"
    return _reply(category, False, ret_msg, conn_id, req_id, op)


def args_too_many(conn_id: str, req_id: str | None) -> dict[str, Any]:
    """Spot failure for a subscribe with more than :data:`SPOT_MAX_ARGS` args."""
    return _reply(Category.SPOT, False, "args size >10", conn_id, req_id, "subscribe")


def already_subscribed(conn_id: str, req_id: str | None, topic: str) -> dict[str, Any]:
    """Linear's informational failure for a duplicate topic; the first subscription keeps streaming."""
    return _reply(
        Category.LINEAR,
        False,
        f"error:already subscribed,topic:{topic}",
        conn_id,
        req_id,
        "subscribe",
    )


def request_error(category: Category, conn_id: str, error: RequestError, op: str = "") -> dict[str, Any]:
    """Failure for a frame that is not a valid request (invented wording, Bybit shape)."""
    text = str(error)
    ret_msg = f"error:{text}" if text.startswith("unsupported op") else "error:invalid request"
    return _reply(category, False, ret_msg, conn_id, None, op)


# --- data messages --------------------------------------------------------------------------


def ticker_message(category: Category, topic: str, kind: str, data: dict[str, str], cs: int, ts: int) -> dict[str, Any]:
    """``tickers.{symbol}``. Spot: ``topic,ts,type,cs,data``; linear: ``topic,type,data,cs,ts``."""
    if category is Category.SPOT:
        return {"topic": topic, "ts": ts, "type": kind, "cs": cs, "data": data}
    return {"topic": topic, "type": kind, "data": data, "cs": cs, "ts": ts}


def trade_message(category: Category, topic: str, trades: list[dict[str, Any]], ts: int) -> dict[str, Any]:
    """``publicTrade.{symbol}``: ``type`` is always ``snapshot``; spot puts ``ts`` first."""
    if category is Category.SPOT:
        return {"topic": topic, "ts": ts, "type": "snapshot", "data": trades}
    return {"topic": topic, "type": "snapshot", "ts": ts, "data": trades}


def orderbook_message(
    category: Category,
    topic: Topic,
    kind: str,
    bids: list[list[str]],
    asks: list[list[str]],
    u: int,
    seq: int,
    ts: int,
    cts: int,
) -> dict[str, Any]:
    """``orderbook.{depth}.{symbol}``; ``ts`` before ``type`` on spot and linear depth 1."""
    data = {"s": topic.symbol, "b": bids, "a": asks, "u": u, "seq": seq}
    if category is Category.SPOT or topic.depth == 1:
        return {"topic": topic.name, "ts": ts, "type": kind, "data": data, "cts": cts}
    return {"topic": topic.name, "type": kind, "ts": ts, "data": data, "cts": cts}


def kline_message(topic: str, candles: list[dict[str, Any]], ts: int) -> dict[str, Any]:
    """``kline.{interval}.{symbol}``: ``topic,data,ts,type``, ``type`` always ``snapshot``."""
    return {"topic": topic, "data": candles, "ts": ts, "type": "snapshot"}
