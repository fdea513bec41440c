"""The protocol's messages as dataclasses: what the gateway sends, what the client itself reports, what it sends.

Server messages (``connection``, ``subscribed``, ``data``...) are parsed by
:func:`parse_server_message`; the client adds its own events
(:class:`Disconnected`, :class:`SeqGap`, and :class:`Resync` for losses it
detects itself). Client messages are built by the ``*_message`` functions
and encoded with :func:`encode`. Everything here is pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trading_gateway_client.market import decode_payload

__all__ = [
    "BROKERED_CHANNELS",
    "CHANNELS",
    "COMMAND_ID",
    "COMMAND_STATES",
    "MAX_TIMEOUT_MS",
    "MIN_TIMEOUT_MS",
    "PRIVATE_CHANNELS",
    "REPORT_STATES",
    "TERMINAL_STATES",
    "BotCommandAck",
    "BotCommandRefused",
    "BotCommandReportAck",
    "BotCommandResult",
    "Connection",
    "Data",
    "Disconnected",
    "ErrorMessage",
    "Event",
    "MarketParams",
    "Pong",
    "Position",
    "Refreshed",
    "ReportRefused",
    "Resync",
    "SeqGap",
    "Subscribed",
    "Unknown",
    "Unsubscribed",
    "bot_command_message",
    "bot_command_report_message",
    "bot_command_status_message",
    "encode",
    "parse_server_message",
    "ping_message",
    "refresh_message",
    "state_rank",
    "subscribe_message",
    "unsubscribe_message",
]

PRIVATE_CHANNELS = frozenset({"bot-status", "trades", "positions", "signals"})
# Kept in the broker's history: seq is the broker's offset, data carries the epoch, `since` recovers.
BROKERED_CHANNELS = PRIVATE_CHANNELS | {"bot-commands"}
CHANNELS = BROKERED_CHANNELS | {"market-data", "time-sync", "system-health"}
# Streams whose every message matters (a forward seq jump is a loss); the others carry latest values.
EVENT_STREAMS = ("trades", "kline")

# Bot commands (docs/protocol.md, "Bot commands"): states move forward only.
COMMAND_STATES = ("sent", "accepted", "succeeded", "failed", "timed_out")
TERMINAL_STATES = frozenset({"succeeded", "failed", "timed_out"})
REPORT_STATES = frozenset({"accepted", "succeeded", "failed"})  # what a service may report
COMMAND_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a client-chosen commandId
MIN_TIMEOUT_MS, MAX_TIMEOUT_MS = 1_000, 600_000


def state_rank(state: str) -> int:
    """How far along a command state is: sent 0, accepted 1, a final state 2 (-1: unknown)."""
    if state in TERMINAL_STATES:
        return 2
    return {"sent": 0, "accepted": 1}.get(state, -1)


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
    """A ``bot_command`` stored and sent to the owning service (``state`` ``sent``), or, ``duplicate``,
    a resend of a known ``commandId`` answered from what is stored (``state``: its current one)."""

    command_id: str
    delivered_to: int  # the owning service's listeners it went out to (0 on a duplicate: not sent again)
    id: str | None = None
    state: str = "sent"
    duplicate: bool = False


@dataclass(frozen=True)
class BotCommandResult:
    """A command's state: pushed on every change, or the answer to ``bot_command_status`` (``id`` set).

    The client delivers each state of a command once (a status answer after a reconnect that repeats a
    state already delivered is dropped). ``result`` is what the service reported with ``succeeded`` or
    ``failed`` (None otherwise); ``ts`` when the state was reached (epoch ms).
    """

    command_id: str
    bot_id: str
    command: str
    state: str  # accepted, succeeded, failed, timed_out (sent only in a status answer)
    result: Any
    ts: int
    id: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"


@dataclass(frozen=True)
class BotCommandReportAck:
    """A service's report taken: the command is now in ``state``."""

    command_id: str
    state: str
    id: str | None = None


@dataclass(frozen=True)
class BotCommandRefused:
    """A tracked command the gateway will not carry (an event of the client; it stops tracking it).

    ``code``: the ``error`` the gateway answered to the ``bot_command`` (``no_service``, ``forbidden``,
    ``conflict``, ``invalid_message``, ``audit_unavailable``, ``too_many_commands``), or ``not_found`` to
    the status query after a reconnect: the gateway no longer knows the command (its record was lost or
    is older than an hour), so its outcome is unknown.
    """

    command_id: str
    bot_id: str
    command: str
    code: str
    message: str
    id: str | None = None


@dataclass(frozen=True)
class ReportRefused:
    """A service's report the gateway refused for good (an event of the client; not sent again).

    ``code``: ``invalid_state`` (not a step forward: finished, timed out, or accepted by another replica;
    ``current_state`` is the command's state the gateway named), ``not_found`` (another service's
    command, or none), ``forbidden`` (not a service token), ``invalid_message``. ``resent``: the report
    had gone out on an earlier connection whose answer was lost, so an ``invalid_state`` naming the
    reported state may be this client's own report, taken before the connection ended.
    """

    command_id: str
    user_id: str
    state: str
    code: str
    message: str
    current_state: str | None = None
    resent: bool = False
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


Event = (Connection | Subscribed | Unsubscribed | Data | Resync | Pong | Refreshed | BotCommandAck
         | BotCommandResult | BotCommandReportAck | BotCommandRefused | ReportRefused | ErrorMessage | Unknown
         | Disconnected | SeqGap)


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
            data = obj["data"]
            return BotCommandAck(data["commandId"], int(data.get("deliveredTo") or 0), rid,
                                 str(data.get("state", "sent")), bool(data.get("duplicate", False)))
        if kind == "bot_command_result":
            data = obj["data"]
            return BotCommandResult(data["commandId"], data["botId"], data["command"], data["state"],
                                    data.get("result"), data.get("ts", 0), rid)
        if kind == "bot_command_report_ack":
            data = obj["data"]
            return BotCommandReportAck(data["commandId"], data["state"], rid)
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
                        command_id: str | None = None, timeout_ms: int | None = None,
                        request_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"botId": bot_id, "command": command}
    if params:
        data["params"] = dict(params)
    if command_id is not None:
        data["commandId"] = command_id
    if timeout_ms is not None:
        data["timeoutMs"] = timeout_ms
    return _with_id({"type": "bot_command", "data": data}, request_id)


def bot_command_status_message(command_id: str, *, request_id: str | None = None) -> dict[str, Any]:
    return _with_id({"type": "bot_command_status", "data": {"commandId": command_id}}, request_id)


def bot_command_report_message(command_id: str, user_id: str, state: str, result: Any = None, *,
                               request_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"commandId": command_id, "userId": user_id, "state": state}
    if result is not None:
        data["result"] = result
    return _with_id({"type": "bot_command_report", "data": data}, request_id)


def encode(msg: Mapping[str, Any]) -> str:
    """Compact JSON text for one client message (finite numbers only, like the gateway)."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
