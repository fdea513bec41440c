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

from bisect import bisect_left
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from .model import BookLevel, BookUpdate, Category, OrderBookView, decimal_text

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
    """Levels of one side, compact: the exchange's text in two lists and a dict.

    Keys are the prices as floats: a float hashes and compares several times
    faster than a Decimal, and a book of prices does little else. A decimal
    price of up to 15 significant digits (every exchange price) maps to its
    own float, in order. Each level is held as the exchange's own text only:
    its price (``_prices``, by key) and its JSON pair ``["<price>","<size>"]``
    (``_pairs``, in the order of ``_keys``), so applying a level makes one
    string and no other object, no number is ever turned back into text, and
    a view is one slice joined in C. Two different prices on one float would
    be a book we cannot keep: :meth:`set` refuses it (the caller resyncs).
    The same price written two ways (``"1.0"``, ``"1.00"``) is one level.

    Keys are kept ascending; the best bid is the last one, the best ask
    the first. Inserting is a binary search plus two list inserts (memmoves
    of at most ~1000 pointers); reading the top N is a slice.
    """

    __slots__ = ("_bids", "_keys", "_pairs", "_prices", "view", "view_n")

    def __init__(self, bids: bool) -> None:
        self._bids = bids
        self._prices: dict[float, str] = {}  # key -> the price as the exchange wrote it
        self._keys: list[float] = []  # ascending
        self._pairs: list[str] = []  # the level of each key as JSON text (views join these)
        # top_json(view_n), kept until a change reaches the top view_n levels (None: make it again)
        self.view: str | None = None
        self.view_n = 0

    def load(self, levels: list[tuple[str, str]]) -> bool:
        """Replace the side with ``(price, size)`` text pairs (checked decimal text); ``False``
        if two prices share a key (not a book we can keep). A zero size means no level."""
        prices: dict[float, str] = {}
        sizes: dict[float, str] = {}
        for price, size in levels:
            key = float(price)
            other = prices.get(key)
            if other is not None and other != price and Decimal(other) != Decimal(price):
                self.clear()
                return False
            if _zero(size):
                if other is not None:
                    del prices[key], sizes[key]
                continue
            prices[key] = price
            sizes[key] = size
        self._prices = prices
        self._keys = sorted(prices)
        self._pairs = [f'["{prices[key]}","{sizes[key]}"]' for key in self._keys]
        self.view = None
        return True

    def clear(self) -> None:
        self._prices = {}
        self._keys = []
        self._pairs = []
        self.view = None

    def set(self, price: str, size: str) -> bool:
        """Apply one delta level; ``False`` if it deletes a level not here (or shares another's key).
        (:meth:`OrderBook.apply_levels` has this inlined.)"""
        self.view = None
        key = float(price)
        held = self._prices.get(key)
        if held is not None and held != price and Decimal(held) != Decimal(price):
            return False
        keys = self._keys
        if _zero(size):
            if held is None:
                return False
            i = bisect_left(keys, key)
            del self._prices[key], keys[i], self._pairs[i]
        elif held is None:
            i = bisect_left(keys, key)
            keys.insert(i, key)
            self._pairs.insert(i, f'["{price}","{size}"]')
            self._prices[key] = price
        else:
            self._pairs[bisect_left(keys, key)] = f'["{price}","{size}"]'
        return True

    def best(self) -> float | None:
        if not self._keys:
            return None
        return self._keys[-1] if self._bids else self._keys[0]

    def top(self, n: int) -> tuple[BookLevel, ...]:
        pairs = reversed(self._pairs[-n:]) if self._bids else self._pairs[:n]
        out = []
        for pair in pairs:
            price, size = pair[2:-2].split('","')
            out.append(BookLevel(Decimal(price), Decimal(size), pair))
        return tuple(out)

    def top_json(self, n: int) -> str:
        """The best ``n`` levels as JSON array items, ``["p","s"],...`` (one slice joined in C;
        kept until a change reaches them: a delta deep in the book leaves the view as it was)."""
        if self.view is not None and self.view_n == n:
            return self.view
        pairs = self._pairs
        self.view, self.view_n = ",".join(reversed(pairs[-n:]) if self._bids else pairs[:n]), n
        return self.view

    def __len__(self) -> int:
        return len(self._keys)


def _zero(size: str) -> bool:
    """Checked decimal text that is zero (``"0"``, ``"0.000"``)."""
    return size[0] == "0" and not size.strip("0.")


def _texts(levels: tuple[BookLevel, ...]) -> list[tuple[str, str]]:
    return [(decimal_text(level.price), decimal_text(level.size)) for level in levels]


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
    def ts(self) -> int:
        """The exchange's time (ms) of the last applied update."""
        return self._ts

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
        return self.apply_levels(update.snapshot, _texts(update.bids), _texts(update.asks), update.update_id,
                                 update.seq, update.ts)

    def apply_levels(self, snapshot: bool, bids: list[tuple[str, str]] | list[list[str]],
                     asks: list[tuple[str, str]] | list[list[str]], update_id: int, seq: int | None,
                     ts: int) -> BookGap | None:
        """:meth:`apply` for levels as ``(price, size)`` text, already checked (the exchange
        module's :meth:`~market.exchange.ExchangeProtocol.book_levels`): the hot path of ingest,
        no object made per level."""
        if snapshot:
            if not (self._bids.load(bids) and self._asks.load(asks)):  # type: ignore[arg-type]
                return self._gap(GapReason.UNKNOWN_LEVEL, None, update_id)
        else:
            last = self._update_id
            if not self._synced or last is None:
                return self._gap(GapReason.NO_SNAPSHOT, None, update_id)
            if update_id != last + 1:
                return self._gap(GapReason.SEQUENCE, last + 1, update_id)
            strict = self._strict
            for side, levels in ((self._bids, bids), (self._asks, asks)):
                if not levels:
                    continue
                prices, pairs, keys = side._prices, side._pairs, side._keys
                n, is_bids = side.view_n, side._bids
                for price, size in levels:  # _Side.set, inlined: the hot loop of ingest
                    key = float(price)
                    if side.view is not None and (  # does it reach the kept view's levels?
                            len(keys) <= n or (key >= keys[-n] if is_bids else key <= keys[n - 1])):
                        side.view = None
                    held = prices.get(key)
                    if held is not None and held != price and Decimal(held) != Decimal(price):
                        if strict:
                            return self._gap(GapReason.UNKNOWN_LEVEL, None, update_id)
                        continue
                    if size[0] == "0" and not size.strip("0."):  # zero: delete
                        if held is None:
                            if strict:
                                return self._gap(GapReason.UNKNOWN_LEVEL, None, update_id)
                            continue
                        i = bisect_left(keys, key)
                        del prices[key], keys[i], pairs[i]
                    elif held is None:
                        i = bisect_left(keys, key)
                        keys.insert(i, key)
                        pairs.insert(i, f'["{price}","{size}"]')
                        prices[key] = price
                    else:
                        pairs[bisect_left(keys, key)] = f'["{price}","{size}"]'
        bid, ask = self._bids.best(), self._asks.best()
        if bid is not None and ask is not None and bid >= ask:
            return self._gap(GapReason.CROSSED, None, update_id)
        self._synced = True
        self._update_id = update_id
        self._seq = seq
        self._ts = ts
        self._reset = snapshot
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

    def view_json(self, top_n: int, received_ms: int, reset: bool | None = None) -> str | None:
        """:meth:`view`'s JSON (:meth:`OrderBookView.to_json_text`) made straight from the
        book, without the view's objects; ``None`` when not synced. The hot path of ingest.
        ``reset``: the caller's say (a view made once for several updates is a reset if any of
        them was a snapshot), else whether the last update was one."""
        update_id = self._update_id
        if not self._synced or update_id is None:
            return None
        seq = "null" if self._seq is None else self._seq
        return (f'{{"symbol":"{self.symbol}","category":"{self.category}","depth":{self.depth},'
                f'"bids":[{self._bids.top_json(top_n)}],"asks":[{self._asks.top_json(top_n)}],'
                f'"updateId":{update_id},"seq":{seq},"ts":{self._ts},'
                f'"reset":{"true" if (self._reset if reset is None else reset) else "false"},'
                f'"receivedAt":{received_ms}}}')

    def best_bid(self) -> BookLevel | None:
        top = self._bids.top(1)
        return top[0] if top else None

    def best_ask(self) -> BookLevel | None:
        top = self._asks.top(1)
        return top[0] if top else None

    def __len__(self) -> int:
        """Levels held on both sides."""
        return len(self._bids) + len(self._asks)
