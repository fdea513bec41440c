"""The protocol's messages as dataclasses: what the gateway sends, what the client itself reports, what it sends.

Server messages (``connection``, ``subscribed``, ``data``...) are parsed by
:func:`parse_server_message`; the client adds its own events
(:class:`Disconnected`, :class:`SeqGap`, and :class:`Resync` for losses it
detects itself). Client messages are built by the ``*_message`` functions
and encoded with :func:`encode`. Everything here is pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trading_gateway_client.market import decode_payload

__all__ = [
    "BROKERED_CHANNELS",
    "CHANNELS",
    "PRIVATE_CHANNELS",
    "BotCommandAck",
    "Connection",
    "Data",
    "Disconnected",
    "ErrorMessage",
    "Event",
    "MarketParams",
    "Pong",
    "Position",
    "Refreshed",
    "Resync",
    "SeqGap",
    "Subscribed",
    "Unknown",
    "Unsubscribed",
    "bot_command_message",
    "encode",
    "parse_server_message",
    "ping_message",
    "refresh_message",
    "subscribe_message",
    "unsubscribe_message",
]

PRIVATE_CHANNELS = frozenset({"bot-status", "trades", "positions", "signals"})
# Kept in the broker's history: seq is the broker's offset, data carries the epoch, `since` recovers.
BROKERED_CHANNELS = PRIVATE_CHANNELS | {"bot-commands"}
CHANNELS = BROKERED_CHANNELS | {"market-data", "time-sync", "system-health"}
# Streams whose every message matters (a forward seq jump is a loss); the others carry latest values.
EVENT_STREAMS = ("trades", "kline")


@dataclass(frozen=True)
class Position:
    """A place in a brokered channel's history: the last offset delivered, in an epoch."""

    offset: int
    epoch: str

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}


@dataclass(frozen=True)
class MarketParams:
    """A market-data subscription as the gateway confirmed it (normalized: ``orderbook`` is ``orderbook.50``)."""

    symbol: str
    exchange: str = "bybit"
    category: str = "spot"
    streams: tuple[str, ...] = ("ticker",)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MarketParams:
        return cls(d["symbol"], d.get("exchange", "bybit"), d.get("category", "spot"),
                   tuple(d.get("streams", ("ticker",))))


# -- server messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """The first message on every connection (a client that reconnected gets one each time)."""

    session_id: str
    user_id: str
    server_time: int
    heartbeat_interval: int  # ms
    expires_at: int  # the token's expiry, ms
    limits: dict[str, int]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class Subscribed:
    channel: str
    id: str | None
    params: MarketParams | None = None  # market-data only
    offset: int | None = None  # brokered channels: the channel's latest offset, NOT the client's position
    epoch: str | None = None
    recovered: bool | None = None  # present when the subscribe carried `since`
    already: bool = False


@dataclass(frozen=True)
class Unsubscribed:
    channel: str
    id: str | None
    params: MarketParams | None = None
    was_subscribed: bool = True


@dataclass(frozen=True)
class Data:
    """One publication on a channel.

    ``data`` is the JSON as sent; ``payload`` the typed value
    (:mod:`trading_gateway_client.market`), or ``data`` itself on private
    channels. On brokered channels ``position`` is what to persist once the
    message has been processed.
    """

    channel: str
    seq: int
    ts: int
    data: Any
    payload: Any = None
    epoch: str | None = None
    symbol: str | None = None
    stream: str | None = None

    @property
    def position(self) -> Position | None:
        return Position(self.seq, self.epoch) if self.epoch is not None else None

    @property
    def category(self) -> str | None:
        return self.data.get("category") if isinstance(self.data, dict) else None


@dataclass(frozen=True)
class Resync:
    """Publications may have been lost: refetch the state, and continue from ``offset``/``epoch``.

    ``source`` says who noticed: ``server`` (a ``resync`` message),
    ``not_recovered`` (a ``since`` subscribe answered ``recovered: false``:
    the position is no longer kept), ``gap`` or ``epoch_changed`` (the client
    saw a skip the gateway did not announce), ``book`` (market data: the
    gateway lost an order-book update; the book is empty until the next view).
    """

    channel: str
    reason: str
    source: str
    offset: int | None = None
    epoch: str | None = None
    symbol: str | None = None
    stream: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class Pong:
    data: Any
    server_time: int
    id: str | None = None


@dataclass(frozen=True)
class Refreshed:
    expires_at: int  # ms
    id: str | None = None


@dataclass(frozen=True)
class BotCommandAck:
    command_id: str
    delivered_to: int
    id: str | None = None


@dataclass(frozen=True)
class ErrorMessage:
    code: str
    message: str
    id: str | None = None
    channel: str | None = None
    symbol: str | None = None
    stream: str | None = None


@dataclass(frozen=True)
class Unknown:
    """A message of a type this client does not know (a newer gateway): passed on, never dropped."""

    raw: dict[str, Any]


# -- events of the client itself ----------------------------------------------------------


@dataclass(frozen=True)
class Disconnected:
    """The connection ended (or an attempt failed). ``reconnect_in`` is None when the client stops."""

    code: int | None  # the close code; None when no connection was opened (``status``: the HTTP refusal)
    reason: str
    reconnect_in: float | None
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class SeqGap:
    """A ``trades`` or ``kline`` stream skipped ``seq`` values: messages were lost (never expected)."""

    channel: str
    expected: int
    got: int
    symbol: str | None = None
    stream: str | None = None


Event = (Connection | Subscribed | Unsubscribed | Data | Resync | Pong | Refreshed | BotCommandAck | ErrorMessage
         | Unknown | Disconnected | SeqGap)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_server_message(obj: Mapping[str, Any]) -> Event:
    """One server message (already decoded from JSON) as its dataclass; :class:`Unknown` for unknown types."""
    kind = obj.get("type")
    rid = _str_or_none(obj.get("id"))
    try:
        if kind == "data":
            channel = obj["channel"]
            stream = obj.get("stream")
            data = obj.get("data")
            return Data(channel, obj["seq"], obj["ts"], data, decode_payload(channel, stream, data),
                        obj.get("epoch"), obj.get("symbol"), stream)
        if kind == "connection":
            return Connection(obj["sessionId"], obj["userId"], obj["serverTime"], obj["heartbeatInterval"],
                              obj["expiresAt"], dict(obj.get("limits", {})), dict(obj))
        if kind == "subscribed":
            params = MarketParams.from_json(obj["data"]) if isinstance(obj.get("data"), dict) else None
            return Subscribed(obj["channel"], rid, params, obj.get("offset"), obj.get("epoch"), obj.get("recovered"),
                              bool(obj.get("already", False)))
        if kind == "unsubscribed":
            params = MarketParams.from_json(obj["data"]) if isinstance(obj.get("data"), dict) else None
            return Unsubscribed(obj["channel"], rid, params, bool(obj.get("wasSubscribed", True)))
        if kind == "resync":
            return Resync(obj["channel"], obj.get("reason", ""), "server", obj.get("offset"), obj.get("epoch"))
        if kind == "pong":
            return Pong(obj.get("data"), obj["serverTime"], rid)
        if kind == "refreshed":
            return Refreshed(obj["expiresAt"], rid)
        if kind == "bot_command_ack":
            data = obj.get("data") or {}
            return BotCommandAck(data["commandId"], data.get("deliveredTo", 0), rid)
        if kind == "error":
            return ErrorMessage(obj.get("code", ""), obj.get("message", ""), rid, obj.get("channel"),
                                obj.get("symbol"), obj.get("stream"))
    except (KeyError, TypeError, ValueError):
        return Unknown(dict(obj))
    return Unknown(dict(obj))


# -- client messages ----------------------------------------------------------------------


def _with_id(msg: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id is not None:
        msg["id"] = request_id
    return msg


def subscribe_message(channel: str, params: Mapping[str, Any] | None = None, *, since: Position | None = None,
                      request_id: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if params is not None:
        msg["data"] = dict(params)
    if since is not None:
        msg["since"] = since.to_json()
    return _with_id(msg, request_id)


def unsubscribe_message(channel: str, params: Mapping[str, Any] | None = None, *,
                        request_id: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "unsubscribe", "channel": channel}
    if params is not None:
        msg["data"] = dict(params)
    return _with_id(msg, request_id)


def ping_message(data: Any = None, *, request_id: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "ping"}
    if data is not None:
        msg["data"] = data
    return _with_id(msg, request_id)


def refresh_message(token: str, *, request_id: str | None = None) -> dict[str, Any]:
    return _with_id({"type": "refresh", "token": token}, request_id)


def bot_command_message(bot_id: str, command: str, params: Mapping[str, Any] | None = None, *,
                        request_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"botId": bot_id, "command": command}
    if params:
        data["params"] = dict(params)
    return _with_id({"type": "bot_command", "data": data}, request_id)


def encode(msg: Mapping[str, Any]) -> str:
    """Compact JSON text for one client message (finite numbers only, like the gateway)."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
