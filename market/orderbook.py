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
    """Levels of one side: a dict for lookups, a sorted key list for order.

    Keys are the prices as floats: a float hashes and compares several times
    faster than a Decimal, and a book of prices does little else. A decimal
    price of up to 15 significant digits (every exchange price) maps to its
    own float, in order; the exact price stays in each :class:`BookLevel`
    and its JSON text. Two different prices on one float would be a book we
    cannot keep: :meth:`set` refuses it (the caller resyncs).

    Keys are kept ascending; the best bid is the last one, the best ask
    the first. Inserting is a binary search plus a list insert (a memmove of
    at most ~1000 pointers); reading the top N is a slice.
    """

    __slots__ = ("_bids", "_keys", "_levels", "_pairs")

    def __init__(self, bids: bool) -> None:
        self._bids = bids
        self._levels: dict[float, BookLevel] = {}
        self._pairs: dict[float, str] = {}  # key -> the level's JSON text (views join these)
        self._keys: list[float] = []

    def load(self, levels: tuple[BookLevel, ...]) -> bool:
        """Replace the side; ``False`` if two prices share a key (not a book we can keep)."""
        held: dict[float, BookLevel] = {}
        for level in levels:
            key = float(level.price)
            if not level.size:  # a zero size in a snapshot means no level
                held.pop(key, None)
                continue
            other = held.get(key)
            if other is not None and other.price != level.price:
                self.clear()
                return False
            held[key] = level
        self._levels = held
        self._pairs = {key: level.pair_text() for key, level in held.items()}
        self._keys = sorted(held)
        return True

    def clear(self) -> None:
        self._levels = {}
        self._pairs = {}
        self._keys = []

    def set(self, level: BookLevel) -> bool:
        """Apply one delta level; ``False`` if it deletes a level not here (or shares another's key)."""
        key = float(level.price)
        held = self._levels.get(key)
        if held is not None and held.price != level.price:
            return False
        if not level.size:
            if held is None:
                return False
            del self._levels[key]
            del self._pairs[key]
            del self._keys[bisect_left(self._keys, key)]
        else:
            if held is None:
                insort(self._keys, key)
            self._levels[key] = level
            self._pairs[key] = level.pair_text()
        return True

    def best(self) -> float | None:
        if not self._keys:
            return None
        return self._keys[-1] if self._bids else self._keys[0]

    def top(self, n: int) -> tuple[BookLevel, ...]:
        keys = reversed(self._keys[-n:]) if self._bids else self._keys[:n]
        return tuple(map(self._levels.__getitem__, keys))

    def top_json(self, n: int) -> str:
        """The best ``n`` levels as JSON array items, ``["p","s"],...`` (joined in C)."""
        keys = reversed(self._keys[-n:]) if self._bids else self._keys[:n]
        return ",".join(map(self._pairs.__getitem__, keys))

    def __len__(self) -> int:
        return len(self._keys)


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
            if not (self._bids.load(update.bids) and self._asks.load(update.asks)):
                return self._gap(GapReason.UNKNOWN_LEVEL, None, update.update_id)
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
