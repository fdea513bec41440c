"""The compiled path for Bybit's common frames (market/_bybit_fast.pyx) against the reference path.

For any frame, :func:`market._bybit_fast.decode_frame` either declines,
changing nothing, or ends where ``BYBIT.parse`` + ``BYBIT.decode`` (+
``OrderBook.apply_levels`` for a book delta) end: the same answer and, for a
book, the same book, byte for byte in its views. Frames are Bybit's shapes
with every part varied (key order, whitespace, level texts that are the same
price written another way, zero sizes, deletes of levels the book lacks,
crossing levels, wrong ``u``, wrong symbol, ticker values of every kind,
trades with and without optional keys, keys the exchange may add, extra
items) and, for some cases, a few bytes changed at random. Without the
extension (no C compiler at install) the reference path does everything:
these tests then skip, or fail under CI.
"""

from __future__ import annotations

import copy
import random

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from market import bybit
from market.bybit import BYBIT
from market.exchange import BookLevels, ExchangeProtocolError, TickerFields, TopicMessage, TradeItems
from market.model import Category
from market.orderbook import BookGap, OrderBook
from tests.tools import require_built

pytestmark = pytest.mark.unit

TOPIC = "orderbook.50.BTCUSDT"

try:
    from market._bybit_fast import decode_frame
except ImportError:
    decode_frame = None


@pytest.fixture(autouse=True)
def _built() -> None:
    require_built("market/_bybit_fast (the compiled path for Bybit's frames)", decode_frame is None,
                  "a C compiler at `pip install -e .`; `make` reinstalls")


def apply_book_delta(frame: bytes, books: dict[str, OrderBook]) -> tuple[str, BookGap | None] | None:
    """decode_frame for a book: ``(topic, gap)`` or None (declined)."""
    got = decode_frame(frame, books, set(books), "spot")
    if got is None:
        return None
    assert got[0] == 0, got
    return got[1], got[2]


BID_PRICES = ["99", "99.0", "99.5", "99.50", "98.25", "97", "96.125", "0.5", "12345678901234567.5", "99.500000000001"]
ASK_PRICES = ["100", "100.00", "100.5", "101", "101.75", "102", "1000", "100.0000000000000001"]
SIZES = ["0", "0.0", "0.000", "1", "1.5", "2.25", "10", "0.001", "-1", "1e5", ".5", "1.", "01", "-0", "NaN", "",
         "１"]


def snapshot_book(bids: list[str], asks: list[str], view_n: int | None) -> OrderBook:
    book = OrderBook(Category.SPOT, "BTCUSDT", 50)
    gap = book.apply_levels(True, [(p, "1") for p in bids], [(p, "2") for p in asks], 1000, 7, 1)
    assert gap is None
    if view_n is not None:
        book.view_json(view_n, 0)  # a kept view: deltas that reach it must drop it
    return book


def state(book: OrderBook) -> tuple[object, ...]:
    sides = []
    for side in (book._bids, book._asks):
        sides.append((list(side._keys), list(side._pairs), dict(side._prices), side.view, side.view_n))
    views = copy.deepcopy(book)  # (making a view keeps it: not on the book compared)
    return (*sides, book._update_id, book._seq, book._ts, book._synced, book._reset,
            views.view_json(5, 0), views.view_json(50, 0))


def reference(frame: bytes, book: OrderBook) -> tuple[str, BookGap | None] | str:
    """What the stream's reference path does with ``frame`` for a synced book held under TOPIC."""
    try:
        event = BYBIT.parse(frame)
        if not isinstance(event, TopicMessage):
            return "not a data frame"
        if event.topic != TOPIC:
            return "another topic"
        update = BYBIT.decode(event, Category.SPOT)
    except ExchangeProtocolError as exc:
        return f"dropped: {exc}"
    if not isinstance(update, BookLevels) or update.snapshot:
        return "not a delta"
    return TOPIC, book.apply_levels(False, update.bids, update.asks, update.update_id, update.seq, update.ts)


def encode(obj: dict[str, object], rng: random.Random, spaced: bool, keep_order: bool = False) -> bytes:
    """JSON with ``obj``'s keys in a random order, unless ``keep_order`` (and whitespace between
    tokens if ``spaced``). A str value that starts with ``[`` or ``{`` is JSON already."""
    items = list(obj.items())
    if not keep_order:
        rng.shuffle(items)
    texts = [(orjson.dumps(k).decode(), v if isinstance(v, str) and v[:1] in "[{" else orjson.dumps(v).decode())
             for k, v in items]
    if spaced:
        return ("{ " + " ,\n".join(f"{k} :\t{v}" for k, v in texts) + " }\r\n").encode()
    return ("{" + ",".join(f"{k}:{v}" for k, v in texts) + "}").encode()


def changed_bytes(draw: st.DrawFn, frame: bytes) -> bytes:
    raw = bytearray(frame)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw) - 1))
        op = draw(st.integers(0, 2))
        byte = draw(st.sampled_from(b'0159.-",[]{}:e \\\x00\xc3\xa9xtn'))
        if op == 0:
            raw[at] = byte
        elif op == 1:
            raw.insert(at, byte)
        else:
            del raw[at]
    return bytes(raw)


GOOD_SIZES = SIZES[:8]


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, OrderBook]:
    """A book and a frame: half of them a delta as Bybit sends it (which the book may still
    refuse: a delete of a level it lacks, a crossing level), the rest with one part varied or a
    few bytes changed."""
    mode = draw(st.sampled_from(["clean", "clean", "clean", "varied", "varied", "bytes"]))
    clean = mode == "clean"

    def pick(good: list[object], bad: list[object]) -> object:
        return draw(st.sampled_from(good if clean or draw(st.integers(0, 3)) else good + bad))

    rng = random.Random(draw(st.integers(0, 2**32)))
    bids = draw(st.lists(st.sampled_from(BID_PRICES[:8]), max_size=6, unique_by=float))
    asks = draw(st.lists(st.sampled_from(ASK_PRICES[:7]), max_size=6, unique_by=float))
    book = snapshot_book(bids, asks, draw(st.sampled_from([None, 1, 2, 5])))
    prices_b = BID_PRICES if clean else BID_PRICES + ASK_PRICES + ["0", "-99", "99x"]
    prices_a = ASK_PRICES if clean else ASK_PRICES + BID_PRICES + ["0", "-100", "1e3"]
    sizes = GOOD_SIZES if clean else SIZES
    levels_b = draw(st.lists(st.tuples(st.sampled_from(prices_b), st.sampled_from(sizes)), max_size=6))
    levels_a = draw(st.lists(st.tuples(st.sampled_from(prices_a), st.sampled_from(sizes)), max_size=6))
    if clean and draw(st.integers(0, 3)):  # mostly deletes of levels the book holds
        held = {float(p) for p in bids + asks}
        levels_b = [(p, s if float(p) in held or float(s) else "1") for p, s in levels_b]
        levels_a = [(p, s if float(p) in held or float(s) else "1") for p, s in levels_a]
    data: dict[str, object] = {
        "s": pick(["BTCUSDT"], ["ETHUSDT", "", 5]),
        "b": orjson.dumps(levels_b).decode(),
        "a": orjson.dumps(levels_a).decode(),
        "u": pick([1001], [1000, 1002, -1, 10**19, "1001", None]),
    }
    if draw(st.booleans()):
        data["seq"] = pick([8, 10**17], [None, 1.5, 10**19])
    if not clean and draw(st.integers(0, 3)) == 0:
        data[draw(st.sampled_from(["x", "b", "extra"]))] = draw(st.sampled_from(['[["99","1","x"]]', "[]", "1"]))
    spaced = draw(st.booleans())
    outer: dict[str, object] = {
        "topic": pick([TOPIC], ["orderbook.50.ETHUSDT", "orderbook.1.BTCUSDT", ""]),
        "type": pick(["delta"], ["snapshot", "Delta"]),
        "ts": pick([1_700_000_000_000, 0, 10**17], [10**19, -5, 1.5, "1"]),
        "data": encode(data, rng, spaced, keep_order=clean).decode(),
    }
    if draw(st.booleans()):
        outer["cts"] = pick([1_700_000_000_000], [None, "x"])
    if not clean and draw(st.integers(0, 3)) == 0:
        outer[draw(st.sampled_from(["id", "cs", "topic"]))] = 3
    frame = encode(outer, rng, spaced, keep_order=clean and draw(st.integers(0, 3)) > 0)  # (topic first)
    return (changed_bytes(draw, frame) if mode == "bytes" else frame), book


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_declines_untouched_or_ends_where_the_reference_ends(case: tuple[bytes, OrderBook]) -> None:
    frame, book = case
    twin = copy.deepcopy(book)
    before = state(book)
    got = apply_book_delta(frame, {TOPIC: book})
    if got is None:
        event("declined")
        assert state(book) == before  # declined: nothing changed
        return
    event("applied" if got[1] is None else f"gap: {got[1].reason}")
    expected = reference(frame, twin)
    assert got == expected, frame
    assert state(book) == state(twin), frame


def test_takes_the_common_deltas() -> None:
    """Not a path that declines everything: Bybit's own delta (docs/bybit-v5.md §3) is applied."""
    book = snapshot_book(["75848.62", "75837.13"], ["75848.89", "75852.65"], 5)
    frame = (b'{"topic":"orderbook.50.BTCUSDT","ts":1731035685345,"type":"delta","data":{"s":"BTCUSDT",'
             b'"b":[["75848.62","0.014895"],["75837.13","0"]],"a":[["75848.89","0.088149"],'
             b'["75851.44","0.078379"],["75852.65","0"]],"u":1001,"seq":47474967823},"cts":1731035685342}')
    twin = copy.deepcopy(book)
    assert apply_book_delta(frame, {TOPIC: book}) == (TOPIC, None)
    assert reference(frame, twin) == (TOPIC, None)
    assert state(book) == state(twin)
    assert book.view_json(5, 0) == twin.view_json(5, 0)
    assert '"bids":[["75848.62","0.014895"]]' in book.view_json(5, 0)


@pytest.mark.parametrize("frame, why", [
    (b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTCUSDT","b":[["100.5","1"]],'
     b'"a":[],"u":1001}}', "crossed"),
    (b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTCUSDT","b":[["98","0"]],'
     b'"a":[],"u":1001}}', "unknown_level"),
])
def test_gaps_are_the_reference_gaps(frame: bytes, why: str) -> None:
    book = snapshot_book(["99"], ["100"], None)
    twin = copy.deepcopy(book)
    topic, gap = apply_book_delta(frame, {TOPIC: book})
    assert topic == TOPIC and gap is not None and gap.reason == why
    assert reference(frame, twin) == (TOPIC, gap)
    assert not book.synced and len(book) == 0  # emptied, waiting for a snapshot, as the reference leaves it


@pytest.mark.parametrize("frame", [
    b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTCUSDT","b":[],"a":[],"u":1002}}',
    b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"snapshot","data":{"s":"BTCUSDT","b":[],"a":[],"u":1001}}',
    b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTCUSDT","b":[["99","1e2"]],"a":[],'
    b'"u":1001}}',
    b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTCUSDT","b":[],"a":[],"u":1001}} x',
    b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTC\\u0055SDT","b":[],"a":[],"u":1001}}',
])
def test_declines_what_the_reference_must_answer(frame: bytes) -> None:
    """A sequence gap, a snapshot, a bad value, trailing garbage, an escape: declined, untouched."""
    book = snapshot_book(["99"], ["100"], 1)
    before = state(book)
    assert apply_book_delta(frame, {TOPIC: book}) is None
    assert state(book) == before


def test_the_protocol_object_uses_it() -> None:
    assert bybit.COMPILED
    book = snapshot_book(["99"], ["100"], None)
    frame = (b'{"topic":"orderbook.50.BTCUSDT","ts":5,"type":"delta","data":{"s":"BTCUSDT","b":[["99.5","3"]],'
             b'"a":[],"u":1001}}')
    assert BYBIT.decode_frame(frame, {TOPIC: book}, {TOPIC}, "spot") == (0, TOPIC, None)
    assert book.update_id == 1001 and book.ts == 5


# --- tickers and trades -------------------------------------------------------------------

TICKER_TOPIC = "tickers.BTCUSDT"
TRADE_TOPIC = "publicTrade.BTCUSDT"
DECIMALS = ["61875.06", "0", "0.0", "1", "12.5000", "-0.0123", "-0", "-1.5", "", "1e5", ".5", "01", "NaN", " 1",
            "1_0", "１", "99999999999999999999999999999999.5", "0.00000000000000000000000000000001"]


def reference_data(frame: bytes, category: str) -> tuple[object, ...] | str:
    """What the reference path makes of a ticker or trade frame (as decode_frame answers), or why not."""
    try:
        event = BYBIT.parse(frame)
        if not isinstance(event, TopicMessage):
            return "not a data frame"
        update = BYBIT.decode(event, Category(category))
    except ExchangeProtocolError as exc:
        return f"dropped: {exc}"
    if isinstance(update, TickerFields):
        return 1, event.topic, update
    if isinstance(update, TradeItems):
        return 2, event.topic, event.ts, update.symbol, orjson.dumps(update.trades).decode()
    return f"other: {type(update).__name__}"


@st.composite
def ticker_frames(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["clean", "clean", "varied", "bytes"]))
    clean = mode == "clean"
    keys = [key for key, _, _ in bybit._TICKER_TEXT]
    values = DECIMALS[:5] if clean else DECIMALS
    data: dict[str, object] = {"symbol": "BTCUSDT" if clean or draw(st.integers(0, 3)) else
                               draw(st.sampled_from(["ETHUSDT", "", 3, None]))}
    for key in draw(st.lists(st.sampled_from(keys), max_size=10)):
        data[key] = draw(st.sampled_from(values))
    if draw(st.booleans()):
        data["lastPrice"] = draw(st.sampled_from(["61875.06", "1"] if clean else DECIMALS))
    if draw(st.integers(0, 2)) == 0:
        data["nextFundingTime"] = draw(st.sampled_from(
            ["1715760000000", "", 1715760000000, "007"] if clean else ["1715760000000", "", 1715760000000, "-1",
                                                                          "1.5", None, "x", 10**19, "1" * 19]))
    if draw(st.booleans()):  # keys Bybit sends that the gateway does not keep, or may add
        extra = {"usdIndexPrice": "2333.764", "openInterest": "1", "deliveryTime": "", "x": [1, {"a": None}],
                 "y": -1.5e-3, "z": True, "w": {}, "v": [], "u": False, "t": 0,
                 "r": "[1E+5,-2.5e-3,0.0,-0,10e2,[]]"}  # (numbers as JSON writes them, raw)
        for key in draw(st.lists(st.sampled_from(sorted(extra)), max_size=4, unique=True)):
            data[key] = orjson.dumps(extra[key]).decode() if key in "xvw" else extra[key]
    rng = random.Random(draw(st.integers(0, 2**32)))
    outer: dict[str, object] = {
        "topic": TICKER_TOPIC if clean or draw(st.integers(0, 3)) else draw(st.sampled_from(
            ["tickers.ETHUSDT", "tickers.", "tickers.BTC USDT"])),
        "type": draw(st.sampled_from(["snapshot", "delta"] if clean else ["snapshot", "delta", "Snapshot", 1])),
        "ts": draw(st.sampled_from([1715748763063, 0] if clean else [1715748763063, -1, 1.5, None])),
        "cs": draw(st.sampled_from([176530004279])),
        "data": encode(data, rng, draw(st.booleans()), keep_order=clean).decode(),
    }
    frame = encode(outer, rng, draw(st.booleans()), keep_order=True)
    return changed_bytes(draw, frame) if mode == "bytes" else frame


@st.composite
def trade_frames(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["clean", "clean", "varied", "bytes"]))
    clean = mode == "clean"
    rng = random.Random(draw(st.integers(0, 2**32)))
    trades = []
    for _ in range(draw(st.integers(0, 4))):
        trade: dict[str, object] = {
            "T": draw(st.sampled_from([1672304486865] if clean else [1672304486865, -1, "1", 1.5])),
            "s": draw(st.sampled_from(["BTCUSDT", "BTC-30DEC22-18000-C"] if clean else
                                      ["BTCUSDT", "", "-BTC", "BTC USDT", "A" * 65, 5])),
            "S": draw(st.sampled_from(["Buy", "Sell"] if clean else ["Buy", "Sell", "buy", "", None])),
            "v": draw(st.sampled_from(["0.001", "0", "12"] if clean else DECIMALS)),
            "p": draw(st.sampled_from(["16578.50", "1"] if clean else DECIMALS)),
            "i": draw(st.sampled_from(["20f43950-d8dd-5b31-9112-a178eb6023af", "1"] if clean else
                                      ["20f43950", "", None, 7, "a b", "é"])),
        }
        if draw(st.booleans()):
            trade["BT"] = draw(st.sampled_from([False, True] if clean else [False, True, "false", None, 0]))
        if draw(st.booleans()):
            trade["seq"] = draw(st.sampled_from([1783284617, None] if clean else [1783284617, None, "1", -1, 1.5]))
        if draw(st.booleans()):
            trade["L"] = draw(st.sampled_from(["PlusTick", "ZeroMinusTick"]))
        if not clean and draw(st.integers(0, 3)) == 0:
            del trade[draw(st.sampled_from(sorted(trade)))]
        trades.append(encode(trade, rng, draw(st.booleans()), keep_order=clean).decode())
    outer: dict[str, object] = {
        "topic": TRADE_TOPIC if clean or draw(st.integers(0, 3)) else draw(st.sampled_from(
            ["publicTrade.ETHUSDT", "publicTrade.", "publicTrade.BTC"])),
        "type": draw(st.sampled_from(["snapshot", "delta"] if clean else ["snapshot", "x"])),
        "ts": draw(st.sampled_from([1672304486868] if clean else [1672304486868, -1, None])),
        "data": "[" + ",".join(trades) + "]",
    }
    frame = encode(outer, rng, draw(st.booleans()), keep_order=True)
    return changed_bytes(draw, frame) if mode == "bytes" else frame


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(ticker_frames(), trade_frames()), st.sampled_from(["spot", "linear"]))
def test_tickers_and_trades_decline_or_match_the_reference(frame: bytes, category: str) -> None:
    wanted = {TICKER_TOPIC, TRADE_TOPIC, "tickers.ETHUSDT", "publicTrade.ETHUSDT", "publicTrade.BTC"}
    got = decode_frame(frame, {}, wanted, category)
    if got is None:
        event("declined")
        return
    event(f"kind {got[0]}")
    expected = reference_data(frame, category)
    assert got == expected, frame
    if got[0] == 1:  # the same fields in the same order
        assert list(got[2].fields.items()) == list(expected[2].fields.items())  # type: ignore[index]


def test_a_topic_not_wanted_is_left_to_the_reference() -> None:
    frame = (b'{"topic":"tickers.BTCUSDT","ts":1,"type":"snapshot","cs":1,"data":{"symbol":"BTCUSDT",'
             b'"lastPrice":"1"}}')
    assert decode_frame(frame, {}, set(), "spot") is None  # (it counts and logs the drop)
    got = decode_frame(frame, {}, {TICKER_TOPIC}, "spot")
    assert got == (1, TICKER_TOPIC, TickerFields("BTCUSDT", True, 1, {"lastPrice": "1"}))


def test_bybits_documented_frames_take_the_fast_path() -> None:
    """The docs' own examples (docs/bybit-v5.md) are not declined: the path is used, not bypassed."""
    ticker = (b'{"topic":"tickers.BTCUSDT","ts":1673853746003,"type":"snapshot","cs":2588407389,"data":{'
              b'"symbol":"BTCUSDT","lastPrice":"21109.77","highPrice24h":"21426.99","lowPrice24h":"20575",'
              b'"prevPrice24h":"20704.93","volume24h":"6780.866843","turnover24h":"141946527.22907118",'
              b'"price24hPcnt":"0.0196","usdIndexPrice":"21120.2400136"}}')
    trade = (b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{"T":1672304486865,'
             b'"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick",'
             b'"i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false}]}')
    wanted = {TICKER_TOPIC, TRADE_TOPIC}
    for frame in (ticker, trade):
        got = decode_frame(frame, {}, wanted, "spot")
        assert got is not None and got == reference_data(frame, "spot")
