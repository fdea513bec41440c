"""OrderBook: snapshots reset, deltas apply, u gaps and crossed books are
detected, and no view is ever unsorted or crossed."""

from __future__ import annotations

import json
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.model import BookLevel, BookUpdate, Category
from market.orderbook import BookGap, GapReason, OrderBook

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)

D = Decimal
SPOT = Category.SPOT

Levels = dict[Decimal, Decimal]


def levels(pairs: Levels | list[tuple[str, str]]) -> tuple[BookLevel, ...]:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return tuple(BookLevel(D(p), D(s)) for p, s in items)


def snap(u: int, bids: Levels | list[tuple[str, str]] = (), asks: Levels | list[tuple[str, str]] = (),
         ts: int = 0) -> BookUpdate:
    return BookUpdate(SPOT, "BTCUSDT", 50, True, levels(bids or []), levels(asks or []), u, u * 10, ts)


def delta(u: int, bids: Levels | list[tuple[str, str]] = (), asks: Levels | list[tuple[str, str]] = (),
          ts: int = 0) -> BookUpdate:
    return BookUpdate(SPOT, "BTCUSDT", 50, False, levels(bids or []), levels(asks or []), u, u * 10, ts)


def new_book(**kwargs) -> OrderBook:
    return OrderBook(SPOT, "BTCUSDT", 50, **kwargs)


def pairs(side: tuple[BookLevel, ...]) -> list[tuple[str, str]]:
    return [tuple(level.to_json_pair()) for level in side]


# --- contracts, one by one ---------------------------------------------------------

def test_snapshot_then_delta():
    book = new_book()
    assert book.view() is None and not book.synced
    assert book.apply(snap(100, [("10", "1"), ("9", "2")], [("11", "1"), ("12", "2")], ts=5)) is None
    view = book.view()
    assert (pairs(view.bids), pairs(view.asks), view.update_id, view.seq, view.ts, view.reset) == (
        [("10", "1"), ("9", "2")], [("11", "1"), ("12", "2")], 100, 1000, 5, True)
    assert book.apply(delta(101, [("9.5", "3"), ("10", "0")], [("12", "5")], ts=6)) is None
    view = book.view()
    assert (pairs(view.bids), pairs(view.asks), view.update_id, view.ts, view.reset) == (
        [("9.5", "3"), ("9", "2")], [("11", "1"), ("12", "5")], 101, 6, False)
    assert book.best_bid() == BookLevel(D("9.5"), D("3")) and book.best_ask() == BookLevel(D("11"), D("1"))
    assert len(book) == 4 and book.update_id == 101


def test_snapshot_levels_need_not_be_sorted_and_zero_sizes_are_skipped():
    book = new_book()
    book.apply(snap(1, [("8", "1"), ("10", "1"), ("9", "0")], [("13", "1"), ("11", "1")]))
    view = book.view()
    assert pairs(view.bids) == [("10", "1"), ("8", "1")] and pairs(view.asks) == [("11", "1"), ("13", "1")]


def test_delta_before_any_snapshot_is_a_gap():
    # A snapshot that comes before the subscribe ack is just a snapshot: the
    # book never sees acks. A delta with no snapshot at all is a gap.
    assert new_book().apply(delta(5)) == BookGap(SPOT, "BTCUSDT", 50, GapReason.NO_SNAPSHOT, None, 5)


def test_sequence_gap_empties_the_book_until_the_next_snapshot():
    book = new_book()
    book.apply(snap(10, [("1", "1")], [("2", "1")]))
    gap = book.apply(delta(12))
    assert gap == BookGap(SPOT, "BTCUSDT", 50, GapReason.SEQUENCE, 11, 12)
    assert str(gap) == "order book spot/BTCUSDT/50 gap: sequence at u=12 (expected u=11)"
    assert book.view() is None and len(book) == 0 and book.update_id is None
    assert book.apply(delta(13)).reason is GapReason.NO_SNAPSHOT
    assert book.apply(snap(20, [("1", "1")])) is None
    assert book.apply(delta(21, asks=[("3", "1")])) is None


@pytest.mark.parametrize("u", [10, 9, 0])
def test_repeated_or_older_u_is_a_gap(u):
    book = new_book()
    book.apply(snap(10))
    assert book.apply(delta(u)).reason is GapReason.SEQUENCE


def test_snapshot_with_u_1_resets_the_book():
    book = new_book()
    book.apply(snap(5_000_000, [("10", "1"), ("9", "1")], [("11", "1")]))
    book.apply(delta(5_000_001, [("8", "1")]))
    assert book.apply(snap(1, [("20", "2")], [("21", "2")])) is None
    view = book.view()
    assert (pairs(view.bids), pairs(view.asks), view.update_id, view.reset) == (
        [("20", "2")], [("21", "2")], 1, True)
    assert book.apply(delta(2, [("19", "1")])) is None


def test_level_1_snapshots_repeat_with_the_same_u():
    book = new_book()
    assert book.apply(snap(7, [("10", "1")], [("11", "1")])) is None
    assert book.apply(snap(7, [("10", "2")], [("11", "1")])) is None
    assert pairs(book.view().bids) == [("10", "2")]


def test_crossed_snapshot_or_delta_is_a_gap():
    book = new_book()
    gap = book.apply(snap(1, [("11", "1")], [("11", "1")]))
    assert gap == BookGap(SPOT, "BTCUSDT", 50, GapReason.CROSSED, None, 1)
    assert book.view() is None
    book.apply(snap(2, [("10", "1")], [("11", "1")]))
    assert book.apply(delta(3, [("12", "1")])).reason is GapReason.CROSSED
    assert book.view() is None


def test_deleting_an_unknown_level():
    book = new_book()
    book.apply(snap(1, [("10", "1")], [("11", "1")]))
    assert book.apply(delta(2, [("9", "0")])) == BookGap(SPOT, "BTCUSDT", 50, GapReason.UNKNOWN_LEVEL, None, 2)
    lenient = new_book(strict_deletes=False)
    lenient.apply(snap(1, [("10", "1")], [("11", "1")]))
    assert lenient.apply(delta(2, [("9", "0")], [("11", "0")])) is None
    assert pairs(lenient.view().bids) == [("10", "1")] and lenient.view().asks == ()


def test_empty_sides_are_fine():
    book = new_book()
    assert book.apply(snap(1)) is None
    assert book.view() is not None and book.best_bid() is None and book.best_ask() is None
    assert book.apply(delta(2, asks=[("5", "1")])) is None


def test_equal_prices_in_other_spellings_are_one_level():
    book = new_book()
    book.apply(snap(1, [("10.5", "1")], [("11", "1")]))
    assert book.apply(delta(2, [("10.50", "2")])) is None
    assert len(book.view().bids) == 1 and book.view().bids[0].size == D("2")
    assert book.apply(delta(3, [("10.500", "0")])) is None
    assert book.view().bids == ()


def test_view_takes_the_top_n_only():
    book = new_book()
    book.apply(snap(1, {str(p): "1" for p in range(1, 101)}, {str(p): "1" for p in range(101, 201)}))
    view = book.view(25)
    assert [lv.price for lv in view.bids] == [D(p) for p in range(100, 75, -1)]
    assert [lv.price for lv in view.asks] == [D(p) for p in range(101, 126)]
    assert len(book.view(1000).bids) == 100
    with pytest.raises(ValueError, match=r"^top_n must be at least 1, got 0$"):
        book.view(0)


def test_update_for_another_topic_is_refused():
    book = OrderBook(SPOT, "ETHUSDT", 50)
    with pytest.raises(ValueError, match=r"^update for spot/BTCUSDT/50 applied to the book of spot/ETHUSDT/50$"):
        book.apply(snap(1))


# --- properties ------------------------------------------------------------------------

def price(tick: int) -> Decimal:
    return D(tick).scaleb(-1)  # 0.1 ticks


_size = st.integers(1, 10_000).map(lambda n: D(n).scaleb(-3))


def _apply(side: Levels, changes: Levels) -> Levels:
    out = dict(side)
    for p, s in changes.items():
        if s:
            out[p] = s
        else:
            out.pop(p, None)
    return out


# Built once: building strategies inside a test is what makes it slow.
_delete_picks = st.lists(st.integers(0, 63), max_size=3)
_upserts = st.lists(st.tuples(st.integers(1, 80), _size), max_size=4)


def _draw_side_changes(data: st.DataObject, side: Levels) -> Levels:
    """Deletes of held levels (size 0) and inserts/updates anywhere in 0.1..8.0."""
    changes: Levels = {}
    existing = sorted(side)
    if existing:
        for pick in data.draw(_delete_picks):
            changes[existing[pick % len(existing)]] = D(0)
    for tick, size in data.draw(_upserts):
        changes[price(tick)] = size
    return changes


def _check_view(book: OrderBook, bids: Levels, asks: Levels, top_n: int) -> None:
    view = book.view(top_n)
    assert view is not None
    bid_prices = [lv.price for lv in view.bids]
    ask_prices = [lv.price for lv in view.asks]
    assert bid_prices == sorted(bids, reverse=True)[:top_n]
    assert ask_prices == sorted(asks)[:top_n]
    assert all(a > b for a, b in pairwise(bid_prices))  # strictly descending
    assert all(a < b for a, b in pairwise(ask_prices))  # strictly ascending
    assert all(lv.size > 0 and bids[lv.price] == lv.size for lv in view.bids)
    assert all(lv.size > 0 and asks[lv.price] == lv.size for lv in view.asks)
    if bid_prices and ask_prices:
        assert bid_prices[0] < ask_prices[0]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_valid_deltas_keep_the_book_sorted_and_uncrossed(data):
    """Deltas that keep the real book uncrossed (levels anywhere, deletes of
    held levels, prices moving through each other's old ranges) always apply,
    and every view matches a plain reference model."""
    top_n = data.draw(st.integers(1, 30))
    mid = data.draw(st.integers(10, 70))
    bids = {price(t): s for t, s in data.draw(st.dictionaries(st.integers(1, mid), _size, max_size=15)).items()}
    asks = {price(t): s for t, s in data.draw(st.dictionaries(st.integers(mid + 1, 80), _size, max_size=15)).items()}
    u = data.draw(st.integers(1, 10**12))
    book = new_book()
    assert book.apply(snap(u, {str(p): str(s) for p, s in bids.items()},
                           {str(p): str(s) for p, s in asks.items()})) is None
    _check_view(book, bids, asks, top_n)
    for _ in range(data.draw(st.integers(0, 12))):
        u += 1
        d_bids = _draw_side_changes(data, bids)
        d_asks = _draw_side_changes(data, asks)
        # Keep the result uncrossed, as the exchange does: asks at or below
        # the best bid go (deleted if held, not inserted otherwise).
        new_bids = _apply(bids, d_bids)
        if new_bids:
            best_bid = max(new_bids)
            for p in [p for p in _apply(asks, d_asks) if p <= best_bid]:
                if p in asks:
                    d_asks[p] = D(0)
                else:
                    del d_asks[p]
        update = BookUpdate(SPOT, "BTCUSDT", 50, False, tuple(BookLevel(p, s) for p, s in d_bids.items()),
                            tuple(BookLevel(p, s) for p, s in d_asks.items()), u, None, u)
        assert book.apply(update) is None
        bids, asks = new_bids, _apply(asks, d_asks)
        _check_view(book, bids, asks, top_n)
        assert book.view(top_n).update_id == u and not book.view(top_n).reset


_any_changes = st.dictionaries(st.integers(1, 30).map(price), _size | st.just(D(0)), max_size=4)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_arbitrary_deltas_never_yield_a_crossed_view(data):
    """Any deltas at all: each one either applies (and the view matches the
    model and is uncrossed) or is reported as the gap the model predicts."""
    book = new_book()
    bids = {price(5): D(1)}
    asks = {price(25): D(1)}
    book.apply(snap(1, [("0.5", "1")], [("2.5", "1")]))
    for u in range(2, 2 + data.draw(st.integers(1, 15))):
        changes = [data.draw(_any_changes) for _ in range(2)]
        result = book.apply(BookUpdate(SPOT, "BTCUSDT", 50, False,
                                       tuple(BookLevel(p, s) for p, s in changes[0].items()),
                                       tuple(BookLevel(p, s) for p, s in changes[1].items()), u, None, u))
        unknown = any(not s and p not in side
                      for side, ch in zip((bids, asks), changes, strict=True) for p, s in ch.items())
        bids, asks = _apply(bids, changes[0]), _apply(asks, changes[1])
        crossed = bool(bids and asks and max(bids) >= min(asks))
        if unknown:
            assert result.reason is GapReason.UNKNOWN_LEVEL
        elif crossed:
            assert result.reason is GapReason.CROSSED
        else:
            assert result is None
            _check_view(book, bids, asks, 25)
            continue
        assert book.view() is None
        return


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, 10**15), steps=st.lists(st.integers(-2, 4), min_size=1, max_size=20))
def test_any_gap_in_u_is_detected(start, steps):
    book = new_book()
    book.apply(snap(start))
    u = start
    for step in steps:
        result = book.apply(delta(u + step))
        if step == 1:
            assert result is None
            u += 1
            continue
        assert result == BookGap(SPOT, "BTCUSDT", 50, GapReason.SEQUENCE, u + 1, u + step)
        assert book.view() is None
        assert book.apply(delta(u + step + 1)).reason is GapReason.NO_SNAPSHOT
        return
    assert book.view().update_id == start + len(steps)


@settings(max_examples=20, deadline=None)
@given(held=st.dictionaries(st.integers(1, 50).map(price), _size, min_size=1, max_size=20), data=st.data())
def test_size_zero_deletes_exactly_that_level(held, data):
    book = new_book()
    book.apply(snap(1, {str(p): str(s) for p, s in held.items()}, [("100", "1")]))
    gone = data.draw(st.lists(st.sampled_from(sorted(held)), min_size=1, unique=True))
    assert book.apply(delta(2, [(str(p), "0") for p in gone])) is None
    assert {lv.price: lv.size for lv in book.view(50).bids} == {p: s for p, s in held.items() if p not in gone}


@settings(max_examples=20, deadline=None)
@given(old_u=st.integers(2, 10**12),
       old=st.dictionaries(st.integers(1, 40).map(price), _size, max_size=10),
       new=st.dictionaries(st.integers(41, 80).map(price), _size, max_size=10))
def test_u_1_snapshot_replaces_any_book(old_u, old, new):
    book = new_book()
    book.apply(snap(old_u, {str(p): str(s) for p, s in old.items()}, [("9", "1")]))
    book.apply(delta(old_u + 1, [("0.1", "1")]))
    assert book.apply(snap(1, [("0.05", "1")], {str(p): str(s) for p, s in new.items()})) is None
    view = book.view(50)
    assert [lv.price for lv in view.bids] == [D("0.05")]
    assert {lv.price: lv.size for lv in view.asks} == new
    assert (view.update_id, view.reset) == (1, True)
    assert book.apply(delta(2)) is None


@given(st.lists(st.tuples(st.integers(1, 200), st.integers(0, 5)), max_size=60))
def test_the_json_view_is_the_view_as_json(moves):
    """view_json, which the ingest path sends, says exactly what view() says."""
    book = OrderBook(Category.SPOT, "BTCUSDT", 50)
    bids = tuple(BookLevel(D(p), D(1), f'["{p}","1"]') for p in range(1, 40))
    asks = tuple(BookLevel(D(p), D(2), f'["{p}","2"]') for p in range(300, 340))
    book.apply(BookUpdate(Category.SPOT, "BTCUSDT", 50, True, bids, asks, 1, 7, 1000))
    for u, (price, size) in enumerate(moves, start=2):
        level = BookLevel(D(price), D(size), f'["{price}","{size}"]')
        book.apply(BookUpdate(Category.SPOT, "BTCUSDT", 50, False, (level,) if price < 300 else (), (), u, None, 1000))
    view = book.view(25)
    if view is None:
        assert book.view_json(25, 5) is None
        return
    expected = view.to_json_dict() | {"receivedAt": 5}
    assert json.loads(book.view_json(25, 5)) == expected


def test_two_prices_that_one_float_cannot_tell_apart_are_a_gap_not_a_merged_level():
    book = OrderBook(Category.SPOT, "BTCUSDT", 50)
    snapshot = BookUpdate(Category.SPOT, "BTCUSDT", 50, True, (BookLevel(D("0.1"), D("1")),),
                          (BookLevel(D("5"), D("1")),), 1, None, 1000)
    assert book.apply(snapshot) is None
    twin = BookLevel(D("0.10000000000000000001"), D("2"))  # a different price, the same float
    gap = book.apply(BookUpdate(Category.SPOT, "BTCUSDT", 50, False, (twin,), (), 2, None, 1000))
    assert gap is not None and gap.reason is GapReason.UNKNOWN_LEVEL
    both = (BookLevel(D("0.1"), D("1")), twin)
    assert book.apply(BookUpdate(Category.SPOT, "BTCUSDT", 50, True, both, (), 3, None, 1000)) is not None
    assert book.view(5) is None
