"""TickerBook: spot snapshots replace, linear deltas merge into full tickers."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.bybit import normalize, parse
from market.model import TICKER_FIELDS, Category, Ticker, TickerUpdate
from market.ticker import TickerBook

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bybit-v5"

D = Decimal


def snapshot(symbol: str = "BTCUSDT", ts: int = 1, category: Category = Category.LINEAR, **changes) -> TickerUpdate:
    changes.setdefault("last_price", D("100"))
    return TickerUpdate(category, symbol, True, ts, tuple(changes.items()))


def delta(symbol: str = "BTCUSDT", ts: int = 2, category: Category = Category.LINEAR, **changes) -> TickerUpdate:
    return TickerUpdate(category, symbol, False, ts, tuple(changes.items()))


def test_delta_before_snapshot_is_dropped():
    book = TickerBook()
    assert book.apply(delta(bid_price=D("1"))) is None
    assert book.get(Category.LINEAR, "BTCUSDT") is None
    assert len(book) == 0


def test_delta_merges_only_named_fields():
    book = TickerBook()
    book.apply(snapshot(bid_price=D("99"), ask_price=D("101"), mark_price=D("100.5")))
    ticker = book.apply(delta(ts=5, bid_price=D("99.5")))
    assert ticker == Ticker(Category.LINEAR, "BTCUSDT", last_price=D("100"), ts=5, bid_price=D("99.5"),
                            ask_price=D("101"), mark_price=D("100.5"))
    assert book.get(Category.LINEAR, "BTCUSDT") is ticker


def test_snapshot_replaces_everything():
    book = TickerBook()
    book.apply(snapshot(bid_price=D("99")))
    ticker = book.apply(snapshot(ts=3, last_price=D("7")))
    assert ticker == Ticker(Category.LINEAR, "BTCUSDT", last_price=D("7"), ts=3)


def test_keys_are_category_and_symbol():
    book = TickerBook()
    book.apply(snapshot(category=Category.SPOT, last_price=D("1")))
    book.apply(snapshot(category=Category.LINEAR, last_price=D("2")))
    book.apply(snapshot(symbol="ETHUSDT", last_price=D("3")))
    assert len(book) == 3
    assert book.get(Category.SPOT, "BTCUSDT").last_price == D("1")
    assert book.apply(delta(category=Category.INVERSE, last_price=D("4"))) is None
    book.forget(Category.SPOT, "BTCUSDT")
    assert book.get(Category.SPOT, "BTCUSDT") is None
    assert book.apply(delta(category=Category.SPOT, last_price=D("5"))) is None
    book.clear()
    assert len(book) == 0


def test_last_price_cannot_be_missing_or_cleared():
    book = TickerBook()
    with pytest.raises(ValueError, match=r"^ticker snapshot for BTCUSDT without last_price$"):
        book.apply(TickerUpdate(Category.LINEAR, "BTCUSDT", True, 1, ()))
    book.apply(snapshot())
    with pytest.raises(ValueError, match=r"^ticker update for BTCUSDT clears last_price$"):
        book.apply(delta(last_price=None))
    with pytest.raises(ValueError, match=r"^unknown ticker fields"):
        delta(symbol_name="x")


def test_linear_fixture_then_recorded_delta_then_spot():
    # The recorded frames: docs linear snapshot, then a gocryptotrader delta,
    # then a spot snapshot for the same symbol (a different key).
    book = TickerBook()
    linear = parse((FIXTURES / "linear_ticker_snapshot_docs.json").read_text())
    book.apply(normalize(linear, Category.LINEAR))
    text = json.dumps({"topic": "tickers.BTCUSDT", "type": "delta", "ts": 1760325052730, "cs": 9532239430,
                       "data": {"symbol": "BTCUSDT", "lastPrice": "66666.70", "price24hPcnt": "-0.158314",
                                "fundingRate": "", "nextFundingTime": "1760371200000"}})
    ticker = book.apply(normalize(parse(text), Category.LINEAR))
    out = ticker.to_json_dict()
    assert (out["lastPrice"], out["change24h"], out["fundingRate"], out["nextFundingTime"], out["ts"]) == (
        "66666.70", "-0.158314", None, 1760371200000, 1760325052730)
    assert (out["bidPrice"], out["askSize"], out["markPrice"]) == ("66666.60", "23775.469", "66666.60")
    spot = book.apply(normalize(parse((FIXTURES / "spot_ticker_snapshot.json").read_text()), Category.SPOT))
    assert spot.category is Category.SPOT and len(book) == 2


# --- properties ------------------------------------------------------------------

_MERGEABLE = sorted(TICKER_FIELDS - {"last_price", "next_funding_time"})
_decimal_text = st.decimals(min_value=-10**9, max_value=10**9, places=4, allow_nan=False, allow_infinity=False)
_value = _decimal_text.map(lambda d: format(d, "f"))
_bybit_keys = {
    "bid_price": "bid1Price", "bid_size": "bid1Size", "ask_price": "ask1Price", "ask_size": "ask1Size",
    "high_24h": "highPrice24h", "low_24h": "lowPrice24h", "volume_24h": "volume24h",
    "turnover_24h": "turnover24h", "change_24h": "price24hPcnt", "mark_price": "markPrice",
    "index_price": "indexPrice", "funding_rate": "fundingRate",
}
_fields = st.dictionaries(st.sampled_from(_MERGEABLE), _value | st.just(""), max_size=len(_MERGEABLE))


def _frame(kind: str, ts: int, fields: dict[str, str], last: str | None) -> str:
    data = {"symbol": "BTCUSDT", **{_bybit_keys[name]: text for name, text in fields.items()}}
    if last is not None:
        data["lastPrice"] = last
    return json.dumps({"topic": "tickers.BTCUSDT", "type": kind, "ts": ts, "data": data})


@settings(max_examples=60, deadline=None)
@given(first=_fields, first_last=_value, deltas=st.lists(st.tuples(_fields, st.none() | _value), max_size=8))
def test_any_delta_sequence_merges_to_the_full_picture(first, first_last, deltas):
    """After a snapshot and any deltas, the ticker equals a fresh snapshot of
    the key-by-key merged Bybit fields (and its JSON gives back their text)."""
    book = TickerBook()
    merged = {**first}
    last = first_last
    ticker = book.apply(normalize(parse(_frame("snapshot", 1, first, first_last)), Category.LINEAR))
    for ts, (fields, new_last) in enumerate(deltas, start=2):
        ticker = book.apply(normalize(parse(_frame("delta", ts, fields, new_last)), Category.LINEAR))
        merged.update(fields)
        last = new_last if new_last is not None else last
    expected = book_of_one(_frame("snapshot", 1 + len(deltas), merged, last))
    assert ticker == expected
    out = ticker.to_json_dict()
    assert out["lastPrice"] == last
    json_key = {"bid_price": "bidPrice", "bid_size": "bidSize", "ask_price": "askPrice", "ask_size": "askSize",
                "high_24h": "high24h", "low_24h": "low24h", "volume_24h": "volume24h",
                "turnover_24h": "turnover24h", "change_24h": "change24h", "mark_price": "markPrice",
                "index_price": "indexPrice", "funding_rate": "fundingRate"}
    for name in _MERGEABLE:
        assert out[json_key[name]] == (merged.get(name) or None)


def book_of_one(frame: str) -> Ticker:
    return TickerBook().apply(normalize(parse(frame), Category.LINEAR))
