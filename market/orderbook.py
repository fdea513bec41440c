"""A local order book kept from snapshots and deltas, with gap detection.

Rules (Bybit docs, orderbook page, and recorded traffic; see
``docs/bybit-v5.md`` §3):

* A snapshot replaces the book, whatever its ``u``. That covers the first
  snapshot, a resubscribe, a level-1 book (snapshots only, repeated with the
  same ``u``) and ``u == 1`` ("a snapshot data due to the restart of the
  service. So please overwrite your local orderbook").
* A delta sets levels; size 0 deletes one. Its ``u`` must be exactly one
  more than the previous message's. Anything else is a :class:`BookGap`.
* The book knows nothing of subscribe acks: a snapshot that arrives before
  the ack (Bybit does that) is applied like any other.

On a gap the book empties itself and stays unusable until the next
snapshot; the caller should resubscribe the topic (or reconnect) to get
one. Until then every delta is a gap too (reason ``NO_SNAPSHOT``), so the
caller should resync once, not per gap.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from .model import BookLevel, BookUpdate, Category, OrderBookView

__all__ = ["BookGap", "GapReason", "OrderBook"]


class GapReason(StrEnum):
    NO_SNAPSHOT = "no_snapshot"  # a delta before any snapshot, or after a gap
    SEQUENCE = "sequence"  # a delta whose u is not the previous u + 1
    CROSSED = "crossed"  # best bid >= best ask after the update
    UNKNOWN_LEVEL = "unknown_level"  # a delta deletes a level the book lacks


@dataclass(frozen=True, slots=True)
class BookGap:
    """The book lost sync and must be resynced from a fresh snapshot.

    ``expected_update_id`` is the ``u`` the book wanted, set for
    ``SEQUENCE`` gaps only; ``update_id`` is the ``u`` of the update that
    revealed the gap.
    """

    category: Category
    symbol: str
    depth: int
    reason: GapReason
    expected_update_id: int | None
    update_id: int

    def __str__(self) -> str:
        topic = f"{self.category}/{self.symbol}/{self.depth}"
        expected = "" if self.expected_update_id is None else f" (expected u={self.expected_update_id})"
        return f"order book {topic} gap: {self.reason} at u={self.update_id}{expected}"


class _Side:
    """Levels of one side: a dict for lookups, a sorted price list for order.

    Prices are kept ascending; the best bid is the last one, the best ask
    the first. Inserting is a binary search plus a list insert (a memmove of
    at most ~1000 pointers); reading the top N is a slice.
    """

    __slots__ = ("_bids", "_levels", "_pairs", "_prices")

    def __init__(self, bids: bool) -> None:
        self._bids = bids
        self._levels: dict[Decimal, BookLevel] = {}
        self._pairs: dict[Decimal, str] = {}  # price -> the level's JSON text (views join these)
        self._prices: list[Decimal] = []

    def load(self, levels: tuple[BookLevel, ...]) -> None:
        self._levels = {level.price: level for level in levels}
        for level in levels:  # a zero size in a snapshot means no level
            if not level.size:
                self._levels.pop(level.price, None)
        self._pairs = {price: level.pair_text() for price, level in self._levels.items()}
        self._prices = sorted(self._levels)

    def clear(self) -> None:
        self._levels = {}
        self._pairs = {}
        self._prices = []

    def set(self, level: BookLevel) -> bool:
        """Apply one delta level; ``False`` if it deletes a level not here."""
        price = level.price
        if not level.size:
            if self._levels.pop(price, None) is None:
                return False
            del self._pairs[price]
            del self._prices[bisect_left(self._prices, price)]
        else:
            if price not in self._levels:
                insort(self._prices, price)
            self._levels[price] = level
            self._pairs[price] = level.pair_text()
        return True

    def best(self) -> Decimal | None:
        if not self._prices:
            return None
        return self._prices[-1] if self._bids else self._prices[0]

    def top(self, n: int) -> tuple[BookLevel, ...]:
        levels = self._levels
        prices = reversed(self._prices[-n:]) if self._bids else self._prices[:n]
        return tuple(levels[p] for p in prices)

    def top_json(self, n: int) -> str:
        """The best ``n`` levels as JSON array items, ``["p","s"],...`` (joined in C)."""
        prices = reversed(self._prices[-n:]) if self._bids else self._prices[:n]
        return ",".join(map(self._pairs.__getitem__, prices))

    def __len__(self) -> int:
        return len(self._prices)


class OrderBook:
    """The book of one (category, symbol, depth) topic. Not thread-safe: one owner.

    ``strict_deletes`` (default on): a delta deleting a level the book does
    not hold is a gap (``UNKNOWN_LEVEL``), since Bybit only deletes levels it
    sent. Turn it off to ignore such deletes.

    The book is not trimmed to ``depth``: Bybit's deltas themselves delete
    the levels that leave its window, and trimming here would turn those
    deletes into false ``UNKNOWN_LEVEL`` gaps.
    """

    __slots__ = (
        "_asks",
        "_bids",
        "_reset",
        "_seq",
        "_strict",
        "_synced",
        "_ts",
        "_update_id",
        "category",
        "depth",
        "symbol",
    )

    def __init__(self, category: Category, symbol: str, depth: int, *, strict_deletes: bool = True) -> None:
        self.category = category
        self.symbol = symbol
        self.depth = depth
        self._strict = strict_deletes
        self._bids = _Side(bids=True)
        self._asks = _Side(bids=False)
        self._update_id: int | None = None
        self._seq: int | None = None
        self._ts = 0
        self._synced = False
        self._reset = False

    @property
    def synced(self) -> bool:
        """A snapshot has been applied and no gap seen since."""
        return self._synced

    @property
    def update_id(self) -> int | None:
        """``u`` of the last applied update, ``None`` when not synced."""
        return self._update_id

    def apply(self, update: BookUpdate) -> BookGap | None:
        """Apply one snapshot or delta: ``None`` when applied, else a
        :class:`BookGap` (the book is then emptied and unsynced).

        Raises :class:`ValueError` for an update of another topic.
        """
        if (update.category, update.symbol, update.depth) != (self.category, self.symbol, self.depth):
            raise ValueError(
                f"update for {update.category}/{update.symbol}/{update.depth} "
                f"applied to the book of {self.category}/{self.symbol}/{self.depth}"
            )
        if update.snapshot:
            self._bids.load(update.bids)
            self._asks.load(update.asks)
        else:
            last = self._update_id
            if not self._synced or last is None:
                return self._gap(GapReason.NO_SNAPSHOT, None, update.update_id)
            expected = last + 1
            if update.update_id != expected:
                return self._gap(GapReason.SEQUENCE, expected, update.update_id)
            for side, levels in ((self._bids, update.bids), (self._asks, update.asks)):
                for level in levels:
                    if not side.set(level) and self._strict:
                        return self._gap(GapReason.UNKNOWN_LEVEL, None, update.update_id)
        bid, ask = self._bids.best(), self._asks.best()
        if bid is not None and ask is not None and bid >= ask:
            return self._gap(GapReason.CROSSED, None, update.update_id)
        self._synced = True
        self._update_id = update.update_id
        self._seq = update.seq
        self._ts = update.ts
        self._reset = update.snapshot
        return None

    def _gap(self, reason: GapReason, expected: int | None, got: int) -> BookGap:
        self.invalidate()
        return BookGap(self.category, self.symbol, self.depth, reason, expected, got)

    def invalidate(self) -> None:
        """Empty the book; it waits for a snapshot (call before resubscribing)."""
        self._bids.clear()
        self._asks.clear()
        self._synced = False
        self._update_id = None
        self._seq = None

    def view(self, top_n: int = 25) -> OrderBookView | None:
        """The best ``top_n`` levels per side, or ``None`` when not synced.

        A view is never crossed: :meth:`apply` refuses any update that would
        cross the book. Costs O(top_n), not O(book size).
        """
        if top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {top_n}")
        update_id = self._update_id
        if not self._synced or update_id is None:
            return None
        return OrderBookView(
            category=self.category,
            symbol=self.symbol,
            depth=self.depth,
            bids=self._bids.top(top_n),
            asks=self._asks.top(top_n),
            update_id=update_id,
            seq=self._seq,
            ts=self._ts,
            reset=self._reset,
        )

    def view_json(self, top_n: int, received_ms: int) -> str | None:
        """:meth:`view`'s JSON (:meth:`OrderBookView.to_json_text`) made straight from the
        book, without the view's objects; ``None`` when not synced. The hot path of ingest."""
        update_id = self._update_id
        if not self._synced or update_id is None:
            return None
        seq = "null" if self._seq is None else self._seq
        return (f'{{"symbol":"{self.symbol}","category":"{self.category}","depth":{self.depth},'
                f'"bids":[{self._bids.top_json(top_n)}],"asks":[{self._asks.top_json(top_n)}],'
                f'"updateId":{update_id},"seq":{seq},"ts":{self._ts},'
                f'"reset":{"true" if self._reset else "false"},"receivedAt":{received_ms}}}')

    def best_bid(self) -> BookLevel | None:
        top = self._bids.top(1)
        return top[0] if top else None

    def best_ask(self) -> BookLevel | None:
        top = self._asks.top(1)
        return top[0] if top else None

    def __len__(self) -> int:
        """Levels held on both sides."""
        return len(self._bids) + len(self._asks)
