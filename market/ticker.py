"""The latest full ticker per (category, symbol), built from snapshots and deltas.

Spot tickers are full snapshots every time. Linear (and inverse) tickers come
as one snapshot after subscribing, then deltas that carry only the fields
that changed ("If a response param is not found in the message, then its
value has not changed": Bybit docs, ticker page). :class:`TickerBook` merges
them so that every ticker it hands out is complete.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .exchange import TickerFields
from .model import TICKER_JSON, Category, Ticker, TickerUpdate

__all__ = ["TickerBook", "TickerTexts"]

# A full ticker in the client's shape before any field is known (Ticker.to_json_dict's keys).
_EMPTY: dict[str, Any] = {"symbol": None, "category": None, **{key: None for _, key in TICKER_JSON}, "ts": None}


class TickerBook:
    """Last full :class:`Ticker` per (category, symbol). Not thread-safe: one owner.

    Contract of :meth:`apply`:

    * a snapshot replaces the ticker (fields it lacks become ``None``) and
      returns it;
    * a delta sets the fields it names, keeps the others, takes the delta's
      ``ts`` and returns the merged ticker;
    * a delta before any snapshot of that (category, symbol) is dropped and
      returns ``None``: there is nothing to merge it into. Bybit sends no new
      snapshot by itself, so the caller should resubscribe the topic to get
      one (after :meth:`forget`, the same holds).
    """

    __slots__ = ("_tickers",)

    def __init__(self) -> None:
        self._tickers: dict[tuple[Category, str], Ticker] = {}

    def apply(self, update: TickerUpdate) -> Ticker | None:
        """Merge ``update``; the full ticker after it, or ``None`` (see the class).

        Raises :class:`ValueError` for a snapshot without ``last_price`` or
        an update that would clear it (the exchange normalizer already
        rejects both).
        """
        key = (update.category, update.symbol)
        changes: dict[str, Any] = dict(update.changes)  # field name -> value, as TickerUpdate carries them
        if "last_price" in changes and changes["last_price"] is None:
            raise ValueError(f"ticker update for {update.symbol} clears last_price")
        if update.snapshot:
            if "last_price" not in changes:
                raise ValueError(f"ticker snapshot for {update.symbol} without last_price")
            ticker = Ticker(category=update.category, symbol=update.symbol, ts=update.ts, **changes)
        else:
            previous = self._tickers.get(key)
            if previous is None:
                return None
            ticker = replace(previous, ts=update.ts, **changes)
        self._tickers[key] = ticker
        return ticker

    def get(self, category: Category, symbol: str) -> Ticker | None:
        """The last full ticker, or ``None`` before the first snapshot."""
        return self._tickers.get((category, symbol))

    def forget(self, category: Category, symbol: str) -> None:
        """Drop one ticker (on unsubscribe, or before a resubscribe)."""
        self._tickers.pop((category, symbol), None)

    def clear(self) -> None:
        """Drop every ticker (on reconnect: the next snapshot starts afresh)."""
        self._tickers.clear()

    def __len__(self) -> int:
        return len(self._tickers)


class TickerTexts:
    """:class:`TickerBook` for the ingest path: the same contract, on the exchange's own text.

    Keeps each (category, symbol)'s latest full ticker as the client's JSON
    object (:meth:`market.model.Ticker.to_json_dict`'s keys and order), its
    numbers as the text the exchange sent: applying an update makes no
    Decimal and writes nothing back to text. :meth:`apply` takes checked
    fields (:class:`~market.exchange.TickerFields`) and returns the merged
    ticker (the one kept: read it, never change it), or ``None`` for a
    delta before any snapshot.
    """

    __slots__ = ("_tickers",)

    def __init__(self) -> None:
        self._tickers: dict[tuple[str, str], dict[str, Any]] = {}

    def apply(self, category: Category | str, update: TickerFields) -> dict[str, Any] | None:
        key = (str(category), update.symbol)
        if update.snapshot:
            if update.fields.get("lastPrice") is None:
                raise ValueError(f"ticker snapshot for {update.symbol} without last_price")
            ticker = _EMPTY.copy()
            ticker["symbol"], ticker["category"] = update.symbol, key[0]
        else:
            previous = self._tickers.get(key)
            if previous is None:
                return None
            if "lastPrice" in update.fields and update.fields["lastPrice"] is None:
                raise ValueError(f"ticker update for {update.symbol} clears last_price")
            ticker = previous.copy()
        ticker.update(update.fields)
        ticker["ts"] = update.ts
        self._tickers[key] = ticker
        return ticker

    def get(self, category: Category | str, symbol: str) -> dict[str, Any] | None:
        """The latest full ticker (read it, never change it), or ``None`` before the first snapshot."""
        return self._tickers.get((str(category), symbol))

    def forget(self, category: Category | str, symbol: str) -> None:
        self._tickers.pop((str(category), symbol), None)

    def clear(self) -> None:
        self._tickers.clear()

    def __len__(self) -> int:
        return len(self._tickers)
