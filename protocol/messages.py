"""The gateway's wire protocol: JSON text frames in, typed messages out.

Pure: no sockets, no actors. ``parse`` turns one client text frame into one
of the frozen dataclasses below or raises :class:`ProtocolError` with a
stable code; the ``*_message`` builders return the JSON text the server
sends. docs/protocol.md shows every message with a real example.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from protocol.channels import (
    PRIVATE_CHANNELS,
    Channel,
    MarketParams,
    Position,
    parse_market_params,
)
from protocol.commands import COMMAND_ID, MAX_TIMEOUT_MS, MIN_TIMEOUT_MS, REPORTABLE, CommandState
from protocol.errors import ErrorCode, ProtocolError

__all__ = [
    "BotCommand",
    "BotCommandReport",
    "BotCommandStatus",
    "ClientMessage",
    "Ping",
    "RawJson",
    "Refresh",
    "Subscribe",
    "Unsubscribe",
    "decode_json",
    "dumps",
    "error_message",
    "parse",
]

MAX_ID_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: Channel
    params: MarketParams | None = None
    request_id: str | None = None
    since: Position | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: Channel
    params: MarketParams | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    data: Any = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Refresh:
    token: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class BotCommand:
    bot_id: str
    command: str
    params: dict[str, Any]
    request_id: str | None = None
    command_id: str | None = None  # chosen by the client: a resend with it is answered, not sent again
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class BotCommandStatus:
    """Where is my command? (after a reconnect): answered with ``bot_command_result``."""

    command_id: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class BotCommandReport:
    """A service reports a command's progress: ``accepted``, ``succeeded`` or ``failed``."""

    command_id: str
    user_id: str
    state: CommandState
    result: Any = None
    request_id: str | None = None


ClientMessage = Subscribe | Unsubscribe | Ping | Refresh | BotCommand | BotCommandStatus | BotCommandReport


MAX_DEPTH = 32  # objects and arrays nested in one message, the envelope included
MAX_INT_DIGITS = 4300  # Python's own limit on int(str) (sys.get_int_max_str_digits)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:  # int() refuses these anyway, as a ValueError
        raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                            f"an integer of {len(text.lstrip('-'))} digits: at most {MAX_INT_DIGITS}")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf, which no JSON encoder can send on
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"number {text[:24]} is out of range: numbers must be finite")
    return value


def dumps(obj: Any) -> str:
    """Compact JSON, the one encoder for everything the server sends."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_json(text: str | bytes) -> Any:
    """JSON from a client or a service, refused unless it can be delivered exactly as sent.

    The one decoder for input (WebSocket messages and the HTTP API): a value
    that parses but could not be encoded again, and so would be
    acknowledged and then lost, is refused here with ``invalid_message``:
    a number out of range (``1e999``), an integer longer than
    :data:`MAX_INT_DIGITS` digits, a lone surrogate escape (``"\\ud800"``,
    not UTF-8), nesting deeper than :data:`MAX_DEPTH`.
    Text that is not JSON at all is ``invalid_json``.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite, parse_int=_integer)
    except ProtocolError:
        raise
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_JSON, "message is not valid JSON") from None
    _check(value)
    return value


def _check(value: Any) -> None:
    """Every string encodes as UTF-8 and containers nest at most MAX_DEPTH deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _utf8(item)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _utf8(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                            "text must be valid Unicode: a lone surrogate escape (\\ud800-\\udfff) "
                            "cannot be delivered") from None



def _request_id(obj: dict[str, Any]) -> str | None:
    rid = obj.get("id")
    if rid is None:
        return None
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or len(str(rid)) > MAX_ID_LENGTH:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                            f"id must be a string or integer of at most {MAX_ID_LENGTH} characters")
    return str(rid)


def _channel(obj: dict[str, Any], rid: str | None) -> Channel:
    name = obj.get("channel")
    if not isinstance(name, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "channel must be a string", request_id=rid)
    try:
        return Channel(name)
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_CHANNEL, f"unknown channel {name[:40]!r}", request_id=rid) from None


def _subscription(obj: dict[str, Any], rid: str | None) -> tuple[Channel, MarketParams | None]:
    channel = _channel(obj, rid)
    if channel is not Channel.MARKET_DATA:
        # Only market-data takes parameters. Whose data a private channel carries
        # comes from the token: a client naming a user is told so (forbidden), and
        # any other parameter is refused rather than silently ignored.
        data = obj.get("data")
        if data is not None and data != {}:
            if channel in PRIVATE_CHANNELS and isinstance(data, dict) and ("userId" in data or "user" in data):
                raise ProtocolError(ErrorCode.FORBIDDEN, f"{channel.value} is private: it always carries "
                                    "the token's own user", request_id=rid, channel=channel.value)
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{channel.value} takes no parameters"
                                + (": it always carries the token's own user" if channel in PRIVATE_CHANNELS else ""),
                                request_id=rid, channel=channel.value)
        return channel, None
    try:
        return channel, parse_market_params(obj.get("data"))
    except ProtocolError as exc:
        exc.request_id, exc.channel = rid, channel.value
        raise


def _command_id(data: dict[str, Any], rid: str | None, *, required: bool) -> str | None:
    command_id = data.get("commandId")
    if command_id is None and not required:
        return None
    if not isinstance(command_id, str) or not COMMAND_ID.match(command_id):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data.commandId must be 1-64 characters of "
                            "A-Z a-z 0-9 . _ : -", request_id=rid)
    return command_id


def _since(value: Any, rid: str | None) -> Position | None:
    if value is None:
        return None
    offset = value.get("offset") if isinstance(value, dict) else None
    epoch = value.get("epoch") if isinstance(value, dict) else None
    if (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0
            or not isinstance(epoch, str) or len(epoch) > 64):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "since must be {offset: integer >= 0, epoch: string}",
                            request_id=rid)
    return Position(offset, epoch)


def parse(text: str) -> ClientMessage:
    """Parse one client text frame; raises ProtocolError with a stable code."""
    obj = decode_json(text)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message must be a JSON object")
    rid = _request_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "type must be a string", request_id=rid)
    if kind == "subscribe":
        channel, params = _subscription(obj, rid)
        return Subscribe(channel, params, rid, _since(obj.get("since"), rid))
    if kind == "unsubscribe":
        channel, params = _subscription(obj, rid)
        return Unsubscribe(channel, params, rid)
    if kind == "ping":
        return Ping(obj.get("data"), rid)
    if kind == "refresh":
        token = obj.get("token")
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "refresh needs a token string", request_id=rid)
        return Refresh(token, rid)
    if kind == "bot_command":
        data = obj.get("data")
        if not isinstance(data, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "bot_command needs data with botId and command",
                                request_id=rid)
        bot_id, command, params = data.get("botId"), data.get("command"), data.get("params", {})
        if not isinstance(bot_id, str) or not bot_id or len(bot_id) > 128:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data.botId must be a non-empty string", request_id=rid)
        if not isinstance(command, str) or not command or len(command) > 64:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data.command must be a non-empty string", request_id=rid)
        if not isinstance(params, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data.params must be an object", request_id=rid)
        if "userId" in data:
            raise ProtocolError(ErrorCode.FORBIDDEN, "bot commands always act for the token's own user", request_id=rid)
        timeout = data.get("timeoutMs")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                    or not MIN_TIMEOUT_MS <= timeout <= MAX_TIMEOUT_MS):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"data.timeoutMs must be an integer from "
                                f"{MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}", request_id=rid)
        return BotCommand(bot_id, command, params, rid, _command_id(data, rid, required=False), timeout)
    if kind == "bot_command_status":
        data = obj.get("data")
        command_id = _command_id(data if isinstance(data, dict) else {}, rid, required=True)
        assert command_id is not None
        return BotCommandStatus(command_id, rid)
    if kind == "bot_command_report":
        data = obj.get("data")
        if not isinstance(data, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "bot_command_report needs data with commandId, userId "
                                "and state", request_id=rid)
        command_id = _command_id(data, rid, required=True)
        assert command_id is not None
        user = data.get("userId")
        if not isinstance(user, str) or not user or len(user) > 128:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data.userId must be the command's user",
                                request_id=rid)
        state = data.get("state")
        if not isinstance(state, str) or state not in {s.value for s in REPORTABLE}:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data.state must be accepted, succeeded or failed",
                                request_id=rid)
        return BotCommandReport(command_id, user, CommandState(state), data.get("result"), rid)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}", request_id=rid)


# --- server messages ----------------------------------------------------------


def _with_id(msg: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id is not None:
        msg["id"] = request_id
    return msg


def error_message(code: ErrorCode, message: str, *, request_id: str | None = None,
                  channel: str | None = None) -> str:
    msg: dict[str, Any] = {"type": "error", "code": code.value, "message": message}
    if channel is not None:
        msg["channel"] = channel
    return dumps(_with_id(msg, request_id))


def connection_message(*, session_id: str, user_id: str, server_time: int, heartbeat_ms: int,
                       expires_at: int, limits: dict[str, int]) -> str:
    return dumps({
        "type": "connection", "status": "connected", "sessionId": session_id, "userId": user_id,
        "serverTime": server_time, "heartbeatInterval": heartbeat_ms, "expiresAt": expires_at,
        "limits": limits,
    })


def subscribed_message(channel: Channel, params: MarketParams | None, request_id: str | None,
                       *, already: bool = False, recovered: bool | None = None,
                       position: Position | None = None) -> str:
    """``recovered`` is present when the client sent ``since``; ``offset`` and
    ``epoch`` (brokered channels) are where the client is now."""
    msg: dict[str, Any] = {"type": "subscribed", "channel": channel.value}
    if params is not None:
        msg["data"] = params.to_json()
    if already:
        msg["already"] = True
    if recovered is not None:
        msg["recovered"] = recovered
    if position is not None:
        msg["offset"] = position.offset
        msg["epoch"] = position.epoch
    return dumps(_with_id(msg, request_id))


def resync_message(channel: str, position: Position | None, reason: str) -> str:
    """Publications on ``channel`` may have been lost: refetch the state, continue from ``position``."""
    msg: dict[str, Any] = {"type": "resync", "channel": channel, "reason": reason}
    if position is not None:
        msg["offset"] = position.offset
        msg["epoch"] = position.epoch
    return dumps(msg)


def unsubscribed_message(channel: Channel, params: MarketParams | None, request_id: str | None,
                         *, was_subscribed: bool = True) -> str:
    msg: dict[str, Any] = {"type": "unsubscribed", "channel": channel.value}
    if not was_subscribed:
        msg["wasSubscribed"] = False
    if params is not None:
        msg["data"] = params.to_json()
    return dumps(_with_id(msg, request_id))


def pong_message(data: Any, server_time: int, request_id: str | None) -> str:
    return dumps(_with_id({"type": "pong", "data": data, "serverTime": server_time}, request_id))


def refreshed_message(expires_at: int, request_id: str | None) -> str:
    return dumps(_with_id({"type": "refreshed", "expiresAt": expires_at}, request_id))


def bot_command_ack_message(command_id: str, state: str, request_id: str | None, *,
                            duplicate: bool = False, delivered_to: int | None = None) -> str:
    """A ``bot_command`` stored and sent to the owning service (or, ``duplicate``, already known).

    ``deliveredTo``: the owning service's listeners it went out to (its connections on this node,
    or the nodes holding one with Redis); absent on a duplicate, which is not sent again."""
    data: dict[str, Any] = {"commandId": command_id, "state": state, "duplicate": duplicate}
    if delivered_to is not None:
        data["deliveredTo"] = delivered_to
    return dumps(_with_id({"type": "bot_command_ack", "data": data}, request_id))


def bot_command_result_message(data: dict[str, Any], request_id: str | None = None) -> str:
    """A command's state (``Command.to_user``): pushed on every change, or the answer to a status query."""
    return dumps(_with_id({"type": "bot_command_result", "data": data}, request_id))


def bot_command_report_ack_message(command_id: str, state: str, request_id: str | None) -> str:
    return dumps(_with_id({"type": "bot_command_report_ack", "data": {"commandId": command_id, "state": state}},
                          request_id))


class RawJson(str):
    """JSON text already encoded, by code that made it from checked values (a book view).

    :func:`data_message` puts it in as it is instead of encoding a dict: for
    market data, building the text directly costs a few microseconds where
    ``json.dumps`` of the same object costs tens.
    """

    __slots__ = ()


def data_message(channel: str, seq: int, ts: int, data: Any, extra: dict[str, Any] | None = None) -> str:
    """A ``data`` message; built once per publication, shared by every subscriber."""
    msg: dict[str, Any] = {"type": "data", "channel": channel}
    if extra:
        msg.update(extra)
    msg["seq"] = seq
    msg["ts"] = ts
    if isinstance(data, RawJson):
        return f"{dumps(msg)[:-1]},\"data\":{data}}}"
    msg["data"] = data
    return dumps(msg)
