"""Market data: exchange-neutral models and books, and the Bybit v5 public
protocol. Pure code: no sockets, no gevent, no actors.

Modules: :mod:`~market.model` (normalized values and their client JSON),
:mod:`~market.exchange` (what an exchange module provides),
:mod:`~market.bybit` (Bybit v5 public streams), :mod:`~market.ticker`
(ticker snapshot + delta merging), :mod:`~market.orderbook` (local books
with gap detection).
"""

from __future__ import annotations

from .bybit import BYBIT, BybitProtocolError
from .exchange import ExchangeProtocol, ExchangeProtocolError
from .model import (
    BookLevel,
    Category,
    Kline,
    OrderBookView,
    StreamKind,
    Ticker,
    Topic,
    Trade,
)
from .orderbook import BookGap, GapReason, OrderBook
from .ticker import TickerBook

__all__ = [
    "BYBIT",
    "BookGap",
    "BookLevel",
    "BybitProtocolError",
    "Category",
    "ExchangeProtocol",
    "ExchangeProtocolError",
    "GapReason",
    "Kline",
    "OrderBook",
    "OrderBookView",
    "StreamKind",
    "Ticker",
    "TickerBook",
    "Topic",
    "Trade",
]
