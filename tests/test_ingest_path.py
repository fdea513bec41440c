"""The ingest path's fast forms say exactly what the general ones say.

Scenario (f) made the exchange-frame → channel path cheaper by keeping
numbers as the exchange's text (``decode`` beside ``normalize``), views kept
per book side until a change reaches them, the upstream's own framing
(:class:`ClientFrameReader`) and a data envelope built once per channel.
Each is checked here against the form it replaces.
"""

from __future__ import annotations

import json
import struct
from decimal import Decimal as D
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from market.bybit import BYBIT, BybitProtocolError, decode, normalize, parse
from market.exchange import BookLevels, TickerFields, TradeItems
from market.model import BookLevel, BookUpdate, Category, Ticker
from market.orderbook import OrderBook
from market.ticker import TickerBook, TickerTexts
from transport.frames import ClientFrameReader, FrameError, Opcode, encode_close, encode_frame

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bybit-v5"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# --- ClientFrameReader ---------------------------------------------------------------------------


def _frames() -> tuple[bytes, list[tuple[int, object]]]:
    text = [b'{"topic":"a"}', b"x" * 200, b"y" * 70_000]
    wire = b"".join(encode_frame(Opcode.TEXT, t) for t in text)
    wire += encode_frame(Opcode.PING, b"hi")
    wire += encode_frame(Opcode.TEXT, b"frag", fin=False) + encode_frame(Opcode.CONTINUATION, b"ment")
    wire += encode_frame(Opcode.BINARY, b"\x00\x01")
    wire += encode_close(1001, "bye")
    expected = [(1, t) for t in text] + [(9, b"hi"), (1, b"fragment"), (2, b"\x00\x01"), (8, (1001, "bye"))]
    return wire, expected


def test_client_reader_reads_every_message_whole_in_one_chunk():
    wire, expected = _frames()
    assert ClientFrameReader(1 << 20).feed(wire) == expected


@given(st.lists(st.integers(1, 80_000), max_size=8))
def test_client_reader_reads_the_same_messages_however_the_bytes_are_cut(cuts):
    wire, expected = _frames()
    reader = ClientFrameReader(1 << 20)
    got: list[tuple[int, object]] = []
    at = 0
    for cut in sorted(set(cuts)):
        got += reader.feed(wire[at:cut])
        at = max(at, cut)
    got += reader.feed(wire[at:])
    assert got == expected


def test_client_reader_refuses_what_a_server_must_not_send():
    masked = bytes((0x81, 0x80 | 2)) + b"\x00\x00\x00\x00ab"
    with pytest.raises(FrameError):
        ClientFrameReader(100).feed(masked)
    with pytest.raises(FrameError):
        ClientFrameReader(100).feed(struct.pack("!BBH", 0x81, 126, 200) + b"x" * 200)  # over max_size
    with pytest.raises(FrameError):
        ClientFrameReader(100).feed(bytes((0x80, 1)) + b"x")  # a continuation of nothing
    with pytest.raises(FrameError):
        ClientFrameReader(100).feed(bytes((0xC1, 1)) + b"x")  # a reserved bit


# --- decode == normalize, as the client sees it ---------------------------------------------------


def _message(name: str):
    return parse(json.dumps(fixture(name)))


def test_decoded_book_levels_are_the_normalized_levels_as_text():
    for name in ("orderbook_snapshot.json", "orderbook_delta.json"):
        message = _message(name)
        fast, slow = decode(message, Category.SPOT), normalize(message, Category.SPOT)
        assert isinstance(fast, BookLevels) and isinstance(slow, BookUpdate)
        assert (fast.symbol, fast.depth, fast.snapshot, fast.update_id, fast.seq, fast.ts) == (
            slow.symbol, slow.depth, slow.snapshot, slow.update_id, slow.seq, slow.ts)
        assert [(D(p), D(s)) for p, s in fast.bids] == [(lv.price, lv.size) for lv in slow.bids]
        assert [(D(p), D(s)) for p, s in fast.asks] == [(lv.price, lv.size) for lv in slow.asks]


@pytest.mark.parametrize("name,category", [("spot_ticker_snapshot.json", Category.SPOT),
                                           ("linear_ticker_snapshot_docs.json", Category.LINEAR)])
def test_a_decoded_ticker_is_the_normalized_ticker_in_the_clients_shape(name, category):
    message = _message(name)
    fast = decode(message, category)
    assert isinstance(fast, TickerFields)
    texts, book = TickerTexts(), TickerBook()
    ticker = book.apply(normalize(message, category))
    assert isinstance(ticker, Ticker)
    assert texts.apply(category, fast) == ticker.to_json_dict()
    # a delta of a few fields merges the same way
    delta = fixture(name)
    delta["type"], delta["data"] = "delta", {"symbol": delta["data"]["symbol"], "lastPrice": "123.45",
                                             "highPrice24h": ""}
    message = parse(json.dumps(delta))
    merged = book.apply(normalize(message, category))
    assert merged is not None
    assert texts.apply(category, decode(message, category)) == merged.to_json_dict()  # type: ignore[arg-type]


def test_decoded_trades_are_the_normalized_trades_in_the_clients_shape():
    message = _message("public_trade.json")
    fast = decode(message, Category.LINEAR)
    assert isinstance(fast, TradeItems)
    assert fast.trades == [t.to_json_dict() for t in normalize(message, Category.LINEAR)]  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["-1", "0", "1e5", "NaN", " 1", "01", 1.5, None])
def test_decode_refuses_what_normalize_refuses(value):
    frame = fixture("public_trade.json")
    frame["data"][0]["p"] = value
    message = parse(json.dumps(frame))
    with pytest.raises(BybitProtocolError):
        BYBIT.normalize(message, Category.LINEAR)  # form and range
    with pytest.raises(BybitProtocolError):
        decode(message, Category.LINEAR)


# --- a book side's kept view -----------------------------------------------------------------


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 120), st.integers(0, 3)), max_size=80))
def test_a_kept_view_is_always_the_view_made_afresh(moves):
    """Views are asked for after every delta; each must equal view() (which reads the levels)."""
    book = OrderBook(Category.SPOT, "BTCUSDT", 50)
    bids = tuple(BookLevel(D(p), D(1), f'["{p}","1"]') for p in range(1, 50))
    asks = tuple(BookLevel(D(p), D(2), f'["{p}","2"]') for p in range(200, 240))
    assert book.apply(BookUpdate(Category.SPOT, "BTCUSDT", 50, True, bids, asks, 1, 7, 1000)) is None
    u = 1
    for is_bid, offset, size in moves:
        price = offset if is_bid else 199 + offset
        level = (str(price), str(size))
        u += 1
        gap = book.apply_levels(False, [level] if is_bid else [], [] if is_bid else [level], u, None, 1000)
        if gap is not None:  # a delete of a level not there: start again from a snapshot
            book.apply(BookUpdate(Category.SPOT, "BTCUSDT", 50, True, bids, asks, u, 7, 1000))
        view = book.view(10)
        assert view is not None
        assert json.loads(book.view_json(10, 5)) == view.to_json_dict() | {"receivedAt": 5}  # type: ignore[arg-type]


# --- the data envelope, made once per channel -------------------------------------------------


def test_the_channels_envelope_is_data_message_s():
    from actors.channel import ChannelActor
    from actors.messages import Publish
    from protocol.messages import RawJson, data_message

    sent: list[bytes] = []

    class Box:
        def push(self, frame: bytes, stamp: float | None = None) -> bool:
            sent.append(frame)
            return True

        push_latest = lambda self, frame, key, stamp=None: self.push(frame)  # noqa: E731

    channel = ChannelActor("market-data.bybit.spot.BTCUSDT.ticker", "market-data", on_idle=lambda *a: None,
                           on_count=lambda *a: None)
    channel.subscribers["s"] = Box()  # type: ignore[assignment]
    extra = {"symbol": "BTCUSDT", "stream": "ticker"}
    cases = [Publish(RawJson('{"a":"1.50"}'), 17, extra, True, 1.0), Publish({"b": [1, "x"]}, 18, extra),
             Publish({"c": None}, 19, {"symbol": "ETHUSDT", "stream": "ticker"}), Publish({"d": 1}, 20),
             Publish({"e": 2}, 21, {"seq": 5})]
    for seq, publish in enumerate(cases, start=1):
        channel.on_receive(publish)
        text = sent[-1][2:].decode()  # a short frame: a two-byte header
        assert text == data_message("market-data", seq, publish.ts, publish.data, publish.extra)
    channel.on_stop()
