"""Bybit v5 public protocol: every recorded fixture through the parser, the
normalizers, the request builders and topic helpers; garbage in, one error out."""

from __future__ import annotations

import json
from decimal import Decimal
from itertools import count
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market import bybit
from market.bybit import (
    BYBIT,
    BybitProtocolError,
    kline_topic,
    normalize,
    orderbook_topic,
    parse,
    parse_request,
    parse_topic,
    ping_request,
    public_url,
    subscribe_requests,
    ticker_topic,
    trade_topic,
    unsubscribe_requests,
)
from market.exchange import (
    ExchangePong,
    ExchangeProtocol,
    MessageType,
    OutboundRequest,
    SubscribeAck,
    TopicMessage,
)
from market.model import (
    BookLevel,
    BookUpdate,
    Category,
    Kline,
    Side,
    StreamKind,
    TickerUpdate,
    Topic,
    Trade,
    decimal_text,
)
from market.orderbook import OrderBook
from market.ticker import TickerBook

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bybit-v5"

D = Decimal


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- every fixture through the parser -----------------------------------------

# Control frames: the exact event each one parses to.
CONTROL_EVENTS = {
    "pong_linear.json": ExchangePong(conn_id="465772b1-7630-4fdc-a492-e003e6f0f260", req_id=""),
    "pong_option.json": ExchangePong(server_ts=1672916271846),
    "pong_spot.json": ExchangePong(conn_id="0970e817-426e-429a-a679-ff7f55e0b16a"),
    "subscribe_fail.json": SubscribeAck(
        success=False,
        ret_msg="error:handler not found,topic:dcp.future",
        conn_id="d9jhogatbetvf6evjmc0-8eoj",
        req_id="dcp.future",
        op="subscribe",
        fail_topics=("dcp.future",),
    ),
    "subscribe_fail_spot_args_limit.json": SubscribeAck(
        success=False, ret_msg="args size >10", conn_id=None, req_id=None, op="subscribe"
    ),
    "subscribe_fail_spot_invalid_symbol.json": SubscribeAck(
        success=False,
        ret_msg="Invalid symbol :[tickers.XUSDT]",
        conn_id="c",
        req_id=None,
        op="subscribe",
        fail_topics=("tickers.XUSDT",),
    ),
    "subscribe_ok.json": SubscribeAck(
        success=True, ret_msg="subscribe", conn_id="2324d924-aa4d-45b0-a858-7b8be29ab52b", req_id="10001",
        op="subscribe",
    ),
    "subscribe_ok_linear.json": SubscribeAck(
        success=True, ret_msg="", conn_id="3cd84cb1-4d06-4a05-930a-2efe5fc70f0f", req_id="", op="subscribe"
    ),
    "subscribe_ok_option.json": SubscribeAck(
        success=True,
        ret_msg="",
        conn_id="aa01fbfffe80af37-00000001-000b37b9-7147f432704fd28c-00e1c172",
        req_id=None,
        op=None,
        success_topics=("orderbook.100.BTC-6JAN23-18000-C",),
        fail_topics=(),
    ),
    "unsubscribe_ok_linear.json": SubscribeAck(
        success=True, ret_msg="", conn_id="7188110e-6908-41e9-b863-6365127e92ad", req_id="3", op="unsubscribe"
    ),
}

# Client requests: parse() refuses them (Bybit never sends them), parse_request()
# reads them, and our builders produce the same JSON.
CLIENT_REQUESTS = {
    "ping_request.json": (
        OutboundRequest(op="ping", req_id="100001", topics=(), text=fixture("ping_request.json")),
        ping_request("100001"),
    ),
    "subscribe_request.json": (
        OutboundRequest(
            op="subscribe",
            req_id="test",
            topics=("orderbook.1.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.1.ETHUSDT"),
            text=fixture("subscribe_request.json"),
        ),
        subscribe_requests(
            ["orderbook.1.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.1.ETHUSDT"], Category.SPOT, lambda: "test"
        )[0],
    ),
    "unsubscribe_request.json": (
        OutboundRequest(
            op="unsubscribe", req_id="customised_id", topics=("publicTrade.ETHUSD",),
            text=fixture("unsubscribe_request.json"),
        ),
        unsubscribe_requests([Topic(StreamKind.TRADE, "ETHUSD")], Category.INVERSE, lambda: "customised_id")[0],
    ),
}

# Data frames: the envelope; the normalized values are checked further down.
TOPIC_ENVELOPES = {
    "kline.json": ("kline.5.BTCUSDT", MessageType.SNAPSHOT, 1672324988882, None, None),
    "linear_ticker_snapshot_docs.json": ("tickers.BTCUSDT", MessageType.SNAPSHOT, 1760325052630, None, 9532239429),
    "orderbook_delta.json": ("orderbook.50.BTCUSDT", MessageType.DELTA, 1731035685345, 1731035685342, None),
    "orderbook_snapshot.json": ("orderbook.50.BTCUSDT", MessageType.SNAPSHOT, 1731035685326, 1731035685323, None),
    "public_trade.json": ("publicTrade.BTCUSDT", MessageType.SNAPSHOT, 1672304486868, None, None),
    "spot_ticker_snapshot.json": ("tickers.BTCUSDT", MessageType.SNAPSHOT, 1673853746003, None, 2588407389),
}


def test_every_fixture_has_an_expectation():
    on_disk = {p.name for p in FIXTURES.glob("*.json")}
    assert on_disk, f"no fixtures found in {FIXTURES}"
    assert on_disk == set(CONTROL_EVENTS) | set(CLIENT_REQUESTS) | set(TOPIC_ENVELOPES)


@pytest.mark.parametrize("name", sorted(CONTROL_EVENTS))
def test_control_fixture(name):
    assert parse(fixture(name)) == CONTROL_EVENTS[name]
    assert parse(fixture(name).encode()) == CONTROL_EVENTS[name]


@pytest.mark.parametrize("name", sorted(CLIENT_REQUESTS))
def test_client_request_fixture(name):
    expected, built = CLIENT_REQUESTS[name]
    op = expected.op
    with pytest.raises(BybitProtocolError, match=f"^client request '{op}' is not a server message$"):
        parse(fixture(name))
    assert parse_request(fixture(name)) == expected
    assert json.loads(built.text) == json.loads(fixture(name))
    assert (built.op, built.req_id, built.topics) == (expected.op, expected.req_id, expected.topics)


@pytest.mark.parametrize("name", sorted(TOPIC_ENVELOPES))
def test_topic_fixture_envelope(name):
    message = parse(fixture(name))
    assert isinstance(message, TopicMessage)
    assert (message.topic, message.type, message.ts, message.cts, message.cs) == TOPIC_ENVELOPES[name]
    assert message.data == json.loads(fixture(name))["data"]


def test_ack_helpers():
    assert CONTROL_EVENTS["subscribe_ok.json"].ok
    assert CONTROL_EVENTS["subscribe_ok_option.json"].ok
    assert not CONTROL_EVENTS["subscribe_fail.json"].ok
    assert not CONTROL_EVENTS["subscribe_fail_spot_args_limit.json"].ok
    already = parse(
        '{"success":false,"ret_msg":"error:already subscribed,topic:kline.1.BTCUSDT",'
        '"conn_id":"f02b82c1-be41-4fae-b69c-6c4a57ed6443","req_id":"","op":"subscribe"}'
    )
    assert already.already_subscribed and already.ok and already.fail_topics == ()
    option_fail = parse('{"success":true,"conn_id":"x","data":{"failTopics":["tickers.X"],"successTopics":[]},'
                        '"type":"COMMAND_RESP"}')
    assert option_fail.fail_topics == ("tickers.X",) and not option_fail.ok


@pytest.mark.parametrize(("ret_msg", "named"), [
    ("Invalid symbol :[tickers.XUSDT]", ("tickers.XUSDT",)),
    ("Invalid symbol :[tickers.A,orderbook.50.A]", ("tickers.A", "orderbook.50.A")),
    ("Invalid symbol :[tickers.A orderbook.50.A publicTrade.A]", ("tickers.A", "orderbook.50.A", "publicTrade.A")),
    ("Invalid symbol :tickers.A,orderbook.50.A", ("tickers.A", "orderbook.50.A")),
    ("Invalid symbol :[tickers.A, orderbook.50.A]", ("tickers.A", "orderbook.50.A")),
    ("error:handler not found,topic:orderbook.500.BTCUSDT", ("orderbook.500.BTCUSDT",)),
    ("error:handler not found,topic:tickers.A,tickers.B", ("tickers.A", "tickers.B")),
    ("error:handler not found,topic:[tickers.A tickers.B]", ("tickers.A", "tickers.B")),
    ("Invalid symbol :[]", ()),
    ("args size >10", ()),
    ("error:subscribe rejected", ()),
])
def test_failure_lists_are_read_in_both_forms(ret_msg, named):
    """A failure lists its topics as ``a,b`` or as Go's ``[a b]``; either way each one is named."""
    ack = parse(json.dumps({"success": False, "ret_msg": ret_msg, "conn_id": "c", "req_id": "1", "op": "subscribe"}))
    assert ack.fail_topics == named and not ack.ok


def test_spot_pong_echoes_req_id():
    # c9s/bbgo pkg/exchange/bybit/stream_test.go, "[public] PingEvent with req id"
    text = ('{"success":true,"ret_msg":"pong","conn_id":"a806f6c4-3608-4b6d-a225-9f5da975bc44",'
            '"req_id":"b26704da-f5af-44c2-bdf7-935d6739e1a0","op":"ping"}')
    assert parse(text) == ExchangePong(conn_id="a806f6c4-3608-4b6d-a225-9f5da975bc44",
                               req_id="b26704da-f5af-44c2-bdf7-935d6739e1a0")


# --- normalized values of the data fixtures -----------------------------------

def test_spot_ticker_fixture():
    update = normalize(parse(fixture("spot_ticker_snapshot.json")), Category.SPOT)
    assert update == TickerUpdate(
        category=Category.SPOT, symbol="BTCUSDT", snapshot=True, ts=1673853746003,
        changes=(
            ("last_price", D("21109.77")), ("high_24h", D("21426.99")), ("low_24h", D("20575")),
            ("volume_24h", D("6780.866843")), ("turnover_24h", D("141946527.22907118")),
            ("change_24h", D("0.0196")),
        ),
    )
    ticker = TickerBook().apply(update)
    assert ticker.to_json_dict() == {
        "symbol": "BTCUSDT", "category": "spot", "lastPrice": "21109.77",
        "bidPrice": None, "bidSize": None, "askPrice": None, "askSize": None,
        "high24h": "21426.99", "low24h": "20575", "volume24h": "6780.866843",
        "turnover24h": "141946527.22907118", "change24h": "0.0196",
        "markPrice": None, "indexPrice": None, "fundingRate": None, "nextFundingTime": None,
        "ts": 1673853746003,
    }


def test_linear_ticker_fixture():
    update = normalize(parse(fixture("linear_ticker_snapshot_docs.json")), Category.LINEAR)
    ticker = TickerBook().apply(update)
    assert ticker.to_json_dict() == {
        "symbol": "BTCUSDT", "category": "linear", "lastPrice": "66666.60",
        "bidPrice": "66666.60", "bidSize": "23789.165", "askPrice": "66666.70", "askSize": "23775.469",
        "high24h": "79266.30", "low24h": "65076.90", "volume24h": "73191.3870",
        "turnover24h": "4936790807.6521", "change24h": "-0.158315",
        "markPrice": "66666.60", "indexPrice": "115418.19", "fundingRate": "-0.005",
        "nextFundingTime": 1760342400000, "ts": 1760325052630,
    }
    assert ticker.last_price == D("66666.6") and ticker.next_funding_time == 1760342400000


def test_linear_ticker_delta_recorded():
    # gocryptotrader exchanges/bybit/testdata/wsTicker.json line 4: only changed fields
    book = TickerBook()
    book.apply(normalize(parse(fixture("linear_ticker_snapshot_docs.json")), Category.LINEAR))
    delta = parse('{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","markPrice":"61875.06",'
                  '"indexPrice":"61903.59","openInterestValue":"3595994223.27","bid1Price":"61873.90",'
                  '"bid1Size":"3.543"},"cs":176530004279,"ts":1715748763063}')
    ticker = book.apply(normalize(delta, Category.LINEAR))
    out = ticker.to_json_dict()
    assert (out["markPrice"], out["indexPrice"], out["bidPrice"], out["bidSize"]) == (
        "61875.06", "61903.59", "61873.90", "3.543")
    assert (out["lastPrice"], out["askPrice"], out["fundingRate"], out["ts"]) == (
        "66666.60", "66666.70", "-0.005", 1715748763063)


def test_trade_fixture():
    trades = normalize(parse(fixture("public_trade.json")), Category.LINEAR)
    assert trades == (Trade(
        category=Category.LINEAR, symbol="BTCUSDT", trade_id="20f43950-d8dd-5b31-9112-a178eb6023af",
        side=Side.BUY, price=D("16578.50"), size=D("0.001"), ts=1672304486865, block_trade=False,
        seq=1783284617,
    ),)
    assert trades[0].to_json_dict() == {
        "symbol": "BTCUSDT", "category": "linear", "id": "20f43950-d8dd-5b31-9112-a178eb6023af",
        "side": "buy", "price": "16578.50", "size": "0.001", "ts": 1672304486865,
        "blockTrade": False, "seq": 1783284617,
    }


def test_spot_trade_without_tick_direction_or_block_flag():
    text = ('{"topic":"publicTrade.BTCUSDT","ts":1,"type":"snapshot","data":[{"i":"2290000000090712222",'
            '"T":1,"p":"0.00000001","v":"5","S":"Sell","s":"BTCUSDT","RPI":false}]}')
    (trade,) = normalize(parse(text), Category.SPOT)
    assert (trade.side, trade.block_trade, trade.seq) == (Side.SELL, False, None)
    assert trade.to_json_dict()["price"] == "0.00000001"


def test_kline_fixture():
    klines = normalize(parse(fixture("kline.json")), Category.LINEAR)
    assert klines == (Kline(
        category=Category.LINEAR, symbol="BTCUSDT", interval="5", start=1672324800000, end=1672325099999,
        open=D("16649.5"), high=D("16677"), low=D("16608"), close=D("16677"), volume=D("2.081"),
        turnover=D("34666.4005"), confirm=False, ts=1672324988882,
    ),)
    assert klines[0].to_json_dict() == {
        "symbol": "BTCUSDT", "category": "linear", "interval": "5", "start": 1672324800000,
        "end": 1672325099999, "open": "16649.5", "high": "16677", "low": "16608", "close": "16677",
        "volume": "2.081", "turnover": "34666.4005", "confirm": False, "ts": 1672324988882,
    }


def test_orderbook_fixtures_snapshot_then_delta():
    snapshot = normalize(parse(fixture("orderbook_snapshot.json")), Category.SPOT)
    assert isinstance(snapshot, BookUpdate)
    assert (snapshot.symbol, snapshot.depth, snapshot.snapshot, snapshot.update_id, snapshot.seq, snapshot.ts) == (
        "BTCUSDT", 50, True, 2876700, 47474967795, 1731035685326)
    assert len(snapshot.bids) == len(snapshot.asks) == 50
    assert snapshot.bids[0] == BookLevel(D("75848.74"), D("0.067669"))
    assert snapshot.asks[-1] == BookLevel(D("75864.81"), D("0.002018"))

    book = OrderBook(Category.SPOT, "BTCUSDT", 50)
    assert book.apply(snapshot) is None
    view = book.view(3)
    assert view.to_json_dict() == {
        "symbol": "BTCUSDT", "category": "spot", "depth": 50,
        "bids": [["75848.74", "0.067669"], ["75848.63", "0.004772"], ["75848.61", "0.00659"]],
        "asks": [["75848.75", "0.747137"], ["75848.89", "0.060306"], ["75848.9", "0.1"]],
        "updateId": 2876700, "seq": 47474967795, "ts": 1731035685326, "reset": True,
    }
    full = book.view(50)
    assert [lv.price for lv in full.bids] == [lv.price for lv in snapshot.bids]  # already sorted by Bybit
    assert [lv.price for lv in full.asks] == [lv.price for lv in snapshot.asks]

    delta = normalize(parse(fixture("orderbook_delta.json")), Category.SPOT)
    assert (delta.snapshot, delta.update_id, delta.seq) == (False, 2876701, 47474967823)
    assert delta.bids[1] == BookLevel(D("75837.13"), D("0"))
    assert book.apply(delta) is None
    after = book.view(50)
    bids = {lv.price: lv.size for lv in after.bids}
    asks = {lv.price: lv.size for lv in after.asks}
    assert len(bids) == len(asks) == 50  # one insert and one delete per side
    assert D("75837.13") not in bids and D("75852.65") not in asks  # size "0" deleted
    assert bids[D("75848.62")] == D("0.014895")  # inserted
    assert asks[D("75848.89")] == D("0.088149") and asks[D("75857.74")] == D("0.049778")
    assert after.to_json_dict()["bids"][:3] == [["75848.74", "0.067669"], ["75848.63", "0.004772"],
                                                ["75848.62", "0.014895"]]
    assert (after.update_id, after.seq, after.ts, after.reset) == (2876701, 47474967823, 1731035685345, False)


# --- garbage -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("not json", "invalid json at line 1 column 1"),
    ("", "invalid json at line 1 column 1"),
    (b"\xff\xfe\xfa", "frame is not valid utf-8"),
    ("[]", "expected a json object, got array"),
    ("42", "expected a json object, got number"),
    ('"x"', "expected a json object, got string"),
    ("null", "expected a json object, got null"),
    ("{}", "unrecognized message with keys []"),
    ('{"op":"auth","success":true}', "unrecognized message with keys"),
    ('{"success":false,"ret_msg":"bad","op":"ping"}', "ping rejected: 'bad'"),
    ('{"success":"yes","ret_msg":"","op":"subscribe"}', "success is not a boolean: 'yes'"),
    ('{"success":true,"ret_msg":"","conn_id":7,"op":"subscribe"}', "conn_id is not a string: 7"),
    ('{"op":"pong","args":"1"}', "pong args is not a list"),
    ('{"type":"COMMAND_RESP","success":true,"data":[]}', "command response data is not an object"),
    ('{"type":"COMMAND_RESP","success":true,"data":{"successTopics":[1]}}', "successTopics is not a list"),
    ('{"topic":"tickers.X","type":"snapshot","ts":1}', "topic message without data for topic 'tickers.X'"),
    ('{"topic":"tickers.X","type":"snapshot","ts":1,"data":"x"}', "data of 'tickers.X' is not an object or array"),
    ('{"topic":"tickers.X","type":"partial","ts":1,"data":{}}', "unknown message type 'partial'"),
    ('{"topic":"tickers.X","ts":1,"data":{}}', "unknown message type None"),
    ('{"topic":"","type":"delta","ts":1,"data":{}}', "invalid topic ''"),
    ('{"topic":["x"],"type":"delta","ts":1,"data":{}}', "invalid topic ['x']"),
    ('{"topic":"tickers.X","type":"delta","ts":"1","data":{}}', "ts is not an integer: '1'"),
    ('{"topic":"tickers.X","type":"delta","ts":true,"data":{}}', "ts is not an integer: True"),
    ('{"topic":"tickers.X","type":"delta","ts":1.5,"data":{}}', "ts is not an integer: 1.5"),
    ('{"topic":"tickers.X","type":"delta","data":{}}', "missing ts"),
    ('{"topic":"tickers.X","type":"delta","ts":1,"cts":"2","data":{}}', "cts is not an integer"),
    ('{"topic":"tickers.X","type":"snapshot","ts":1,"data":{"symbol":"X","lastPrice":NaN}}',
     "non-finite number NaN in json"),
    ('{"topic":"tickers.X","type":"snapshot","ts":1,"data":{"lastPrice":-Infinity}}',
     "non-finite number -Infinity in json"),
    ("[" * 100_000, "json nested too deeply"),
])
def test_parse_rejects(text, message):
    with pytest.raises(BybitProtocolError) as info:
        parse(text)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)


def _ticker(data: str, kind: str = "snapshot") -> TopicMessage:
    return parse(f'{{"topic":"tickers.BTCUSDT","type":"{kind}","ts":1,"data":{data}}}')


@pytest.mark.parametrize(("message", "error"), [
    (_ticker('{"symbol":"BTCUSDT","lastPrice":"NaN"}'), "lastPrice is not a decimal: 'NaN'"),
    (_ticker('{"symbol":"BTCUSDT","lastPrice":"Infinity"}'), "lastPrice is not a decimal: 'Infinity'"),
    (_ticker('{"symbol":"BTCUSDT","lastPrice":"1e5"}'), "lastPrice is not a decimal: '1e5'"),
    (_ticker('{"symbol":"BTCUSDT","lastPrice":" 1"}'), "lastPrice is not a decimal: ' 1'"),
    (_ticker('{"symbol":"BTCUSDT","lastPrice":"1_0"}'), "lastPrice is not a decimal: '1_0'"),
    (_ticker('{"symbol":"BTCUSDT","lastPrice":true}'), "lastPrice is not a decimal: True"),
    (_ticker('{"symbol":"BTCUSDT","lastPrice":"1","bid1Price":"x"}'), "bid1Price is not a decimal: 'x'"),
    (_ticker('{"symbol":"BTCUSDT","lastPrice":"1","nextFundingTime":"soon"}'), "nextFundingTime is not a"),
    (_ticker('{"symbol":"BTCUSDT","highPrice24h":"1"}'), "ticker snapshot without lastPrice for BTCUSDT"),
    (_ticker('{"symbol":"BTCUSDT","lastPrice":""}', "delta"), "ticker delta without lastPrice"),
    (_ticker('{"symbol":"ETHUSDT","lastPrice":"1"}'), "ticker symbol 'ETHUSDT' does not match topic"),
    (_ticker('["BTCUSDT"]'), "data of 'tickers.BTCUSDT' is not an object"),
    (parse('{"topic":"liquidation.BTCUSDT","type":"snapshot","ts":1,"data":{}}'),
     "unknown topic 'liquidation.BTCUSDT'"),
    (parse('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[["NaN","1"]],'
           '"a":[],"u":2}}'), "b price is not a decimal: 'NaN'"),
    (parse('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[["1","-1"]],'
           '"a":[],"u":2}}'), "invalid order book level ['1', '-1']"),
    (parse('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[["0","1"]],'
           '"a":[],"u":2}}'), "invalid order book level ['0', '1']"),
    (parse('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[["1"]],'
           '"a":[],"u":2}}'), "invalid order book level ['1']"),
    (parse('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":{},'
           '"a":[],"u":2}}'), "order book side b is not an array"),
    (parse('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[],"a":[]}}'),
     "missing u"),
    (parse('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"ETHUSDT","b":[],"a":[],"u":1}}'),
     "order book symbol 'ETHUSDT' does not match topic"),
    (parse('{"topic":"orderbook.7.BTCUSDT","type":"delta","ts":1,"data":{}}'), "unknown order book depth 7"),
    (parse('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"S":"Hold"}]}'),
     "unknown trade side 'Hold'"),
    (parse('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"S":["Buy"]}]}'),
     "unknown trade side ['Buy']"),
    (parse('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"S":"Buy","s":"BTCUSDT"}]}'),
     "trade without id"),
    (parse('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"S":"Buy","i":"1","s":"BTCUSDT",'
           '"p":"NaN","v":"1","T":1}]}'), "p is not a decimal: 'NaN'"),
    (parse('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":{}}'),
     "data of 'publicTrade.BTCUSDT' is not an array"),
    (parse('{"topic":"kline.5.BTCUSDT","type":"snapshot","ts":1,"data":[{"interval":"1"}]}'),
     "kline interval '1' does not match topic"),
    (parse('{"topic":"kline.5.BTCUSDT","type":"snapshot","ts":1,"data":[1]}'), "kline is not an object: 1"),
])
def test_normalize_rejects(message, error):
    with pytest.raises(BybitProtocolError) as info:
        normalize(message, Category.LINEAR)
    assert str(info.value).startswith(error)


def test_kline_confirm_must_be_a_boolean():
    data = json.loads(fixture("kline.json"))
    data["data"][0]["confirm"] = "false"
    with pytest.raises(BybitProtocolError, match=r"^confirm is not a boolean: 'false'$"):
        normalize(parse(json.dumps(data)), Category.LINEAR)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from(["snapshot", "delta", "tickers.BTCUSDT", "orderbook.50.BTCUSDT", "publicTrade.BTCUSDT",
                       "kline.5.BTCUSDT", "Buy", "1.5", "0", "ping", "pong", "subscribe", "COMMAND_RESP"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["topic", "type", "ts", "data", "op", "success", "ret_msg", "args", "s", "b", "a", "u",
                         "symbol", "lastPrice", "S", "p", "v", "i", "T", "interval", "confirm", "req_id"]),
        inner, max_size=6),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(_json)
def test_any_json_parses_or_raises_the_protocol_error(value):
    try:
        event = parse(json.dumps(value))
    except BybitProtocolError:
        return
    if isinstance(event, TopicMessage):
        for category in Category:
            try:
                normalize(event, category)
            except BybitProtocolError:
                pass


# Every numeric field of the recorded data frames, and what kind of number it is.
_PRICE, _AMOUNT, _SIGNED = "price", "amount", "signed"
_NUMERIC_FIELDS = [
    ("spot_ticker_snapshot.json", ("data", "lastPrice"), _PRICE),
    ("spot_ticker_snapshot.json", ("data", "highPrice24h"), _AMOUNT),
    ("spot_ticker_snapshot.json", ("data", "volume24h"), _AMOUNT),
    ("spot_ticker_snapshot.json", ("data", "turnover24h"), _AMOUNT),
    ("spot_ticker_snapshot.json", ("data", "price24hPcnt"), _SIGNED),
    ("linear_ticker_snapshot_docs.json", ("data", "markPrice"), _AMOUNT),
    ("linear_ticker_snapshot_docs.json", ("data", "bid1Size"), _AMOUNT),
    ("linear_ticker_snapshot_docs.json", ("data", "ask1Price"), _AMOUNT),
    ("linear_ticker_snapshot_docs.json", ("data", "fundingRate"), _SIGNED),
    ("orderbook_delta.json", ("data", "b", 0, 0), _PRICE),
    ("orderbook_delta.json", ("data", "a", 0, 1), _AMOUNT),
    ("orderbook_snapshot.json", ("data", "a", 0, 0), _PRICE),
    ("public_trade.json", ("data", 0, "p"), _PRICE),
    ("public_trade.json", ("data", 0, "v"), _AMOUNT),
    ("kline.json", ("data", 0, "close"), _PRICE),
    ("kline.json", ("data", 0, "turnover"), _AMOUNT),
]
_VALID = bybit._DECIMAL_RE
_bad_values = st.one_of(
    st.sampled_from(["NaN", "-nan", "Infinity", "1e5", "1E-3", " 1", "+1", "1_0", ".5", "5.", "01", "0x1", "1,5",
                     "\u0661", "1" * 33]),
    st.text(max_size=10).filter(lambda t: t != "" and not _VALID.fullmatch(t)),
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(), st.just([]),
)
_OUT_OF_RANGE = {_PRICE: ["0", "0.00", "-1", "-0"], _AMOUNT: ["-1", "-0.5", "-0"], _SIGNED: []}


def _set(frame: dict, path: tuple, value: object) -> dict:
    target = frame
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return frame


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(_NUMERIC_FIELDS), data=st.data())
def test_any_bad_number_in_any_field_is_a_bad_value_and_nothing_else(field, data):
    """Through the stream's entry point (``parse`` then ``BYBIT.normalize``): a number that is not
    plain decimal text, or is out of range for its field, is a :class:`BybitProtocolError` whose
    reason is ``bad_value``; never another exception, never a value let through."""
    name, path, kind = field
    extra = _OUT_OF_RANGE[kind]
    value = data.draw(_bad_values | st.sampled_from(extra) if extra else _bad_values, label="value")
    frame = _set(json.loads(fixture(name)), path, value)
    message = parse(json.dumps(frame))
    with pytest.raises(BybitProtocolError) as info:
        BYBIT.normalize(message, Category.LINEAR if "linear" in name else Category.SPOT)
    assert info.value.reason == "bad_value", info.value


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from(_NUMERIC_FIELDS),
       text=st.from_regex(r"\A(?:0|[1-9][0-9]{0,12})(?:\.[0-9]{1,12})?\Z"), negative=st.booleans())
def test_plain_decimal_text_in_range_is_kept_exactly(field, text, negative):
    name, path, kind = field
    if kind == _SIGNED and negative:
        text = "-" + text
    if kind == _PRICE and not Decimal(text):
        text = "1" + text
    frame = _set(json.loads(fixture(name)), path, text)
    if name.startswith("orderbook"):
        frame["data"]["a" if path[1] == "b" else "b"] = []
    update = BYBIT.normalize(parse(json.dumps(frame)), Category.SPOT)
    assert json.dumps(text) in json.dumps(_client_json(update))


def _client_json(update: object) -> object:
    if isinstance(update, BookUpdate):
        return [[decimal_text(level.price), decimal_text(level.size)] for level in (*update.bids, *update.asks)]
    if isinstance(update, TickerUpdate):
        return {k: decimal_text(v) if isinstance(v, Decimal) else v for k, v in update.changes}
    return [item.to_json_dict() for item in update]  # trades, klines


def test_a_json_number_is_refused_where_bybit_sends_text():
    frame = json.loads(fixture("public_trade.json"))
    frame["data"][0]["p"] = 16578.5
    with pytest.raises(BybitProtocolError, match=r"^p is not a decimal: 16578.5$") as info:
        normalize(parse(json.dumps(frame)), Category.SPOT)
    assert info.value.reason == "bad_value"


def test_data_naming_another_symbol_is_a_wrong_symbol():
    with pytest.raises(BybitProtocolError) as info:
        normalize(_ticker('{"symbol":"ETHUSDT","lastPrice":"1"}'), Category.SPOT)
    assert info.value.reason == "wrong_symbol"


# --- builders, topics, endpoints -------------------------------------------------

def test_public_urls():
    assert {(c.value, t): public_url(c, testnet=t) for c in Category for t in (False, True)} == {
        ("spot", False): "wss://stream.bybit.com/v5/public/spot",
        ("linear", False): "wss://stream.bybit.com/v5/public/linear",
        ("inverse", False): "wss://stream.bybit.com/v5/public/inverse",
        ("option", False): "wss://stream.bybit.com/v5/public/option",
        ("spot", True): "wss://stream-testnet.bybit.com/v5/public/spot",
        ("linear", True): "wss://stream-testnet.bybit.com/v5/public/linear",
        ("inverse", True): "wss://stream-testnet.bybit.com/v5/public/inverse",
        ("option", True): "wss://stream-testnet.bybit.com/v5/public/option",
    }
    assert public_url("linear") == "wss://stream.bybit.com/v5/public/linear"
    with pytest.raises(ValueError):
        public_url("spread")


def test_spot_subscribe_splits_at_ten_args():
    ids = count(1)
    topics = [ticker_topic(f"C{i}USDT") for i in range(25)]
    requests = subscribe_requests(topics, Category.SPOT, lambda: str(next(ids)))
    assert [len(r.topics) for r in requests] == [10, 10, 5]
    assert [r.req_id for r in requests] == ["1", "2", "3"]
    assert [t for r in requests for t in r.topics] == topics
    assert json.loads(requests[2].text) == {"req_id": "3", "op": "subscribe", "args": topics[20:]}


def test_linear_subscribe_splits_at_fifty_args_and_dedupes():
    topics = [trade_topic(f"C{i}USDT") for i in range(120)]
    requests = subscribe_requests(topics + topics[:5], Category.LINEAR, lambda: "r")
    assert [len(r.topics) for r in requests] == [50, 50, 20]
    assert subscribe_requests([], Category.SPOT, lambda: "r") == []


def test_unsubscribe_requests():
    (request,) = unsubscribe_requests([Topic(StreamKind.KLINE, "BTCUSDT", interval="D")], "linear", lambda: "9")
    assert request.text == '{"req_id":"9","op":"unsubscribe","args":["kline.D.BTCUSDT"]}'


def test_depth_is_checked_per_category():
    assert subscribe_requests(["orderbook.1000.BTCUSDT"], Category.SPOT, lambda: "r")[0].topics == (
        "orderbook.1000.BTCUSDT",)
    with pytest.raises(ValueError, match=r"^order book depth 25 is not offered for spot, use one of 1, 50, 200, 1000$"):
        subscribe_requests([orderbook_topic(25, "BTCUSDT")], Category.SPOT, lambda: "r")
    with pytest.raises(ValueError, match=r"not offered for option"):
        subscribe_requests([Topic(StreamKind.ORDERBOOK, "BTC-6JAN23-18000-C", depth=50)], Category.OPTION,
                           lambda: "r")
    with pytest.raises(ValueError, match=r"^unknown order book depth 500$"):
        orderbook_topic(500, "BTCUSDT")  # retired 2025-09-30


def test_ping_request():
    assert ping_request().text == '{"op":"ping"}'
    assert ping_request("7") == OutboundRequest(op="ping", req_id="7", topics=(), text='{"req_id":"7","op":"ping"}')


def test_topic_helpers_round_trip():
    assert ticker_topic("BTCUSDT") == "tickers.BTCUSDT"
    assert trade_topic("BTC") == "publicTrade.BTC"
    assert orderbook_topic(50, "BTCUSDT") == "orderbook.50.BTCUSDT"
    assert kline_topic(5, "BTCUSDT") == "kline.5.BTCUSDT"
    assert kline_topic("M", "BTCUSDT") == "kline.M.BTCUSDT"
    assert parse_topic("orderbook.100.BTC-6JAN23-18000-C") == Topic(
        StreamKind.ORDERBOOK, "BTC-6JAN23-18000-C", depth=100)
    for interval in bybit.KLINE_INTERVALS:
        name = kline_topic(interval, "1000PEPEUSDT")
        assert bybit.format_topic(parse_topic(name)) == name


@pytest.mark.parametrize("topic", [
    "tickers.", "tickers.BTC.USDT", "tickers.BTC USDT", "ticker.BTCUSDT", "orderbook.x.BTCUSDT",
    "orderbook.50", "orderbook.٥٠.BTCUSDT", "kline.2.BTCUSDT", "kline.d.BTCUSDT", "", "dcp.future",
])
def test_parse_topic_rejects(topic):
    with pytest.raises(BybitProtocolError):
        parse_topic(topic)


def test_kline_topic_rejects_unknown_interval():
    with pytest.raises(ValueError, match=r"^unknown kline interval '2'$"):
        kline_topic(2, "BTCUSDT")


@pytest.mark.parametrize(("text", "error"), [
    ('{"op":"subscribe"}', "request args must be a list of strings, got None"),
    ('{"op":"subscribe","args":[1]}', "request args must be a list of strings"),
    ('{"op":["ping"]}', "unknown request op ['ping']"),
    ('{"op":"auth","args":[]}', "unknown request op 'auth'"),
    ("[]", "expected a json object, got array"),
])
def test_parse_request_rejects(text, error):
    with pytest.raises(BybitProtocolError) as info:
        parse_request(text)
    assert str(info.value).startswith(error)


def test_bybit_implements_the_exchange_protocol():
    assert isinstance(BYBIT, ExchangeProtocol)
    assert BYBIT.name == "bybit"
    assert BYBIT.public_url(Category.OPTION, testnet=True) == "wss://stream-testnet.bybit.com/v5/public/option"
    assert BYBIT.parse(fixture("pong_option.json")) == ExchangePong(server_ts=1672916271846)
    assert BYBIT.ping_request("1").req_id == "1"
    assert BYBIT.subscribe_requests([Topic(StreamKind.TICKER, "BTCUSDT")], Category.SPOT, lambda: "a")[0].topics == (
        "tickers.BTCUSDT",)
    assert BYBIT.unsubscribe_requests([Topic(StreamKind.TICKER, "BTCUSDT")], Category.SPOT, lambda: "a")[0].op == (
        "unsubscribe")
    assert isinstance(BYBIT.normalize(parse(fixture("kline.json")), Category.LINEAR)[0], Kline)
