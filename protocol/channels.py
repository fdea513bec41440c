"""Channel names, who may subscribe, and the internal channel keys.

A client names a channel (``market-data``, ``trades``...) and parameters;
the gateway turns that into one or more *channel keys*, each served by one
channel actor. Private keys are built from the token's ``sub`` and nothing
the client sends, so no request can reach another user's data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NewType

from protocol.errors import ErrorCode, ProtocolError

__all__ = [
    "PRIVATE_CHANNELS",
    "SERVICE_CHANNELS",
    "Channel",
    "ChannelKey",
    "MarketParams",
    "Position",
    "keys_for",
    "parse_market_params",
]

ChannelKey = NewType("ChannelKey", str)


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a brokered channel's history: the last offset seen, in an epoch.

    What a client sends as ``since`` and gets in ``subscribed`` and ``resync``;
    the brokers (brokers/) keep the history it points into.
    """

    offset: int
    epoch: str


class Channel(StrEnum):
    MARKET_DATA = "market-data"
    BOT_STATUS = "bot-status"
    TRADES = "trades"
    POSITIONS = "positions"
    SIGNALS = "signals"
    TIME_SYNC = "time-sync"
    SYSTEM_HEALTH = "system-health"
    BOT_COMMANDS = "bot-commands"


PRIVATE_CHANNELS = frozenset({Channel.BOT_STATUS, Channel.TRADES, Channel.POSITIONS, Channel.SIGNALS})
GLOBAL_CHANNELS = frozenset({Channel.TIME_SYNC, Channel.SYSTEM_HEALTH})
# Only tokens with the service role may subscribe: platform services receive
# the users' bot commands here.
SERVICE_CHANNELS = frozenset({Channel.BOT_COMMANDS})

# Published through the broker (reach every node, kept in history for
# recovery). The others are per node: each node has its own exchange streams.
BROKERED_CHANNELS = PRIVATE_CHANNELS | SERVICE_CHANNELS

EXCHANGES = frozenset({"bybit"})
CATEGORIES = frozenset({"spot", "linear"})
# What clients may name (books of 1000 levels are not offered: clients get 25 levels a side). The
# exchange's own table is market/bybit.py's; tests/test_protocol.py checks this one is part of it.
ORDERBOOK_DEPTHS = {"spot": frozenset({1, 50, 200}), "linear": frozenset({1, 50, 200})}
KLINE_INTERVALS = frozenset({"1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M"})
DEFAULT_ORDERBOOK_DEPTH = 50
MAX_STREAMS = 8
_SYMBOL = re.compile(r"^[A-Z0-9]{2,24}$")


@dataclass(frozen=True, slots=True)
class MarketParams:
    """Parameters of a ``market-data`` subscription, normalized."""

    symbol: str
    exchange: str = "bybit"
    category: str = "spot"
    streams: tuple[str, ...] = ("ticker",)

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "exchange": self.exchange, "category": self.category,
                "streams": list(self.streams)}


def _normalize_stream(stream: Any, category: str) -> str:
    if not isinstance(stream, str):
        raise ProtocolError(ErrorCode.INVALID_PARAMS, "each stream must be a string")
    if stream in ("ticker", "trades"):
        return stream
    if stream == "orderbook":
        return f"orderbook.{DEFAULT_ORDERBOOK_DEPTH}"
    kind, _, arg = stream.partition(".")
    if kind == "orderbook" and arg.isdigit() and int(arg) in ORDERBOOK_DEPTHS[category]:
        return f"orderbook.{int(arg)}"
    if kind == "kline" and arg in KLINE_INTERVALS:
        return stream
    raise ProtocolError(ErrorCode.INVALID_PARAMS, f"unknown stream {stream[:40]!r}")


def parse_market_params(data: Any) -> MarketParams:
    """Validate the ``data`` of a market-data subscribe; raises ProtocolError."""
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_PARAMS, "market-data needs data.symbol")
    symbol = data.get("symbol")
    if not isinstance(symbol, str) or not _SYMBOL.match(symbol.upper()):
        raise ProtocolError(ErrorCode.INVALID_PARAMS, "data.symbol must be 2-24 letters or digits, like BTCUSDT")
    exchange = data.get("exchange", "bybit")
    if exchange not in EXCHANGES:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"unknown exchange {str(exchange)[:40]!r}")
    category = data.get("category", "spot")
    if category not in CATEGORIES:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"unknown category {str(category)[:40]!r}")
    streams = data.get("streams", ["ticker"])
    if isinstance(streams, str):
        streams = [streams]
    if not isinstance(streams, list) or not streams or len(streams) > MAX_STREAMS:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"data.streams must be a list of 1 to {MAX_STREAMS} streams")
    normalized = tuple(dict.fromkeys(_normalize_stream(s, category) for s in streams))
    return MarketParams(symbol.upper(), exchange, category, normalized)


def market_key(exchange: str, category: str, symbol: str, stream: str) -> ChannelKey:
    return ChannelKey(f"market-data.{exchange}.{category}.{symbol}.{stream}")


def keys_for(channel: Channel, params: MarketParams | None, user: str) -> list[ChannelKey]:
    """The channel keys a subscription covers. ``user`` is the token's ``sub``."""
    if channel is Channel.MARKET_DATA:
        assert params is not None
        return [market_key(params.exchange, params.category, params.symbol, s) for s in params.streams]
    if channel in PRIVATE_CHANNELS or channel in SERVICE_CHANNELS:
        # bot-commands: each service its own key, ``bot-commands#<service>``,
        # where the commands for the bots it owns are published.
        return [ChannelKey(f"{channel.value}#{user}")]
    return [ChannelKey(channel.value)]


# Brokered keys that are no channel: every node listens to them from the start.
# Command states for the issuing user's connections (any node), and admin
# actions (revocations, disconnects) every node must apply.
RESULTS_KEY = ChannelKey("gateway:bot-command-results")
CONTROL_KEY = ChannelKey("gateway:control")


def private_key(channel: Channel, user: str) -> ChannelKey:
    return ChannelKey(f"{channel.value}#{user}")
