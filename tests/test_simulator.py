"""The Bybit v5 simulator: pure parts fed values, then the real server over real 127.0.0.1 sockets.

The socket tests run ``python -m simulator --port 0`` in a subprocess (one
for the module) and talk to it with websocket-client, exactly as the
gateway's Bybit client will; no monkey patching in this process. Two more
tests run the server in-process: plain gevent here, and under
``gevent.monkey.patch_all()`` in a child process.

Reply shapes are checked against the recorded frames in
``tests/fixtures/bybit-v5/``: same keys, same order, same value types.

By default the simulator lists only its built-in instrument table
(:mod:`simulator.instruments`); the tests that need made-up symbols start
it with ``--symbols any`` or switch it through ``POST /control/symbols``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import gevent
import pytest
from websocket import (
    ABNF,
    WebSocket,
    WebSocketBadStatusException,
    WebSocketConnectionClosedException,
    WebSocketTimeoutException,
    create_connection,
)

from simulator import faults, protocol
from simulator.feeds import KlineFeed, LinearTickerFeed, OrderbookFeed
from simulator.instruments import LISTINGS, QUOTE_USD, SymbolPolicy, listing
from simulator.market import Instrument, instrument_spec, interval_bounds
from simulator.protocol import Category, Topic, TopicKind
from simulator.server import SimulatorServer
from transport.frames import parse_close

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "bybit-v5"
RATE_HZ = 50  # one update every 20 ms per topic: tests wait milliseconds, not seconds


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def shape(message: dict[str, Any]) -> list[tuple[str, type]]:
    """Keys in order with their value types: what "the same shape" means here."""
    return [(k, type(v)) for k, v in message.items()]


# --- pure: protocol -------------------------------------------------------------------------


def test_reply_shapes_equal_the_recorded_ones():
    spot, linear = Category.SPOT, Category.LINEAR
    assert shape(protocol.ack(spot, "subscribe", "c", "10001")) == shape(fixture("subscribe_ok"))
    assert protocol.ack(spot, "subscribe", "c", "1")["ret_msg"] == "subscribe"
    assert shape(protocol.ack(linear, "subscribe", "c", None)) == shape(fixture("subscribe_ok_linear"))
    assert protocol.ack(linear, "subscribe", "c", None)["req_id"] == ""
    assert shape(protocol.ack(linear, "unsubscribe", "c", "3")) == shape(fixture("unsubscribe_ok_linear"))
    assert shape(protocol.pong(spot, "c", None)) == shape(fixture("pong_spot"))
    assert shape(protocol.pong(linear, "c", None)) == shape(fixture("pong_linear"))
    spot_fail = protocol.invalid_topics(spot, ["tickers.XUSDT"], "c", None)
    assert spot_fail == fixture("subscribe_fail_spot_invalid_symbol")
    linear_fail = protocol.invalid_topics(linear, ["dcp.future"], "d9jhogatbetvf6evjmc0-8eoj", "dcp.future")
    assert linear_fail == fixture("subscribe_fail")


def test_topics_parse_and_symbols_follow_the_policy():
    assert protocol.parse_topic("orderbook.50.BTCUSDT") == Topic(TopicKind.ORDERBOOK, "BTCUSDT", depth=50)
    assert protocol.parse_topic("kline.D.ETHUSDT").name == "kline.D.ETHUSDT"
    for bad in ("orderbook.500.BTCUSDT", "tickers.btcusdt", "kline.2.BTCUSDT", "trade.BTCUSDT", "tickers."):
        with pytest.raises(protocol.TopicError):
            protocol.parse_topic(bad)
    spot, linear = Category.SPOT, Category.LINEAR
    known = SymbolPolicy(reject=frozenset({"DOGEUSDT"}))  # the default mode: the table only
    assert known.mode == "known" and SymbolPolicy() == SymbolPolicy("known")
    assert known.exists(spot, "SOLUSDT") and known.exists(linear, "SOLUSDT") and known.exists(spot, "ETHBTC")
    assert not known.exists(linear, "ETHBTC") and not known.exists(spot, "1000PEPEUSDT")  # listed on one market
    assert known.exists(linear, "1000PEPEUSDT") and known.exists(spot, "PEPEUSDT")
    for unknown in ("NOPEUSDT", "SYM0001USDT", "BTCUSD", "DOGEUSDT", "USDT"):
        assert not known.exists(spot, unknown) and not known.exists(linear, unknown), unknown
    anything = SymbolPolicy("any", reject=frozenset({"DOGEUSDT"}))
    assert anything.exists(spot, "SYM0001USDT") and anything.exists(linear, "NOPEUSDT")
    assert anything.exists(linear, "ETHBTC") and anything.exists(spot, "SOLUSDT")
    assert not anything.exists(spot, "BTCUSD") and not anything.exists(spot, "FOOINVALIDUSDT")
    assert not anything.exists(spot, "DOGEUSDT") and not anything.exists(spot, "USDT")
    with pytest.raises(ValueError, match="symbol mode"):
        SymbolPolicy("all")


def test_request_parsing():
    assert protocol.parse_request('{"op":"ping","req_id":7}') == protocol.Request("ping", (), "7")
    assert protocol.parse_request('{"op":"subscribe","args":["a"]}').args == ("a",)
    for bad in ("nope", "[]", '{"op":"auth"}', '{"op":"subscribe","args":"x"}'):
        with pytest.raises(protocol.RequestError):
            protocol.parse_request(bad)


# --- pure: market and feeds -----------------------------------------------------------------


#: Believable start prices (issue 11 item 7): the table must stay inside these bands.
BELIEVABLE = {
    "BTCUSDT": (90_000, 100_000),
    "ETHUSDT": (3_000, 4_000),
    "SOLUSDT": (150, 250),
    "ADAUSDT": (Decimal("0.6"), Decimal("1.0")),
    "XRPUSDT": (Decimal("1.5"), Decimal("2.5")),
    "DOGEUSDT": (Decimal("0.15"), Decimal("0.25")),
    "BNBUSDT": (600, 900),
}


def test_the_table_has_believable_prices_and_ticks_that_fit():
    for symbol, (low, high) in BELIEVABLE.items():
        row = listing(symbol)
        assert row is not None and row.spot is not None and row.linear is not None, symbol
        assert low <= Decimal(row.price) <= high, symbol
    for row in LISTINGS:
        for category in Category:
            rules = row.rules(category)
            if rules is None:
                continue
            spec = instrument_spec(category, row.symbol)
            start = Decimal(spec.price(spec.start_units))
            assert start == Decimal(row.price) and start % Decimal(rules.tick) == 0, row.symbol
            # a tick at most 10 basis points of the price (BTC spot: 0.01 in 95,000); a size step at most
            # about 100 USD (linear BTC: 0.001)
            assert Decimal("1e-8") <= Decimal(rules.tick) / start <= Decimal("0.001"), (row.symbol, category)
            assert Decimal(rules.qty_step) * start * Decimal(str(QUOTE_USD[row.quote])) <= 100, (row.symbol, category)


def test_prices_are_exact_strings_with_the_right_tick():
    spot, linear = instrument_spec(Category.SPOT, "BTCUSDT"), instrument_spec(Category.LINEAR, "BTCUSDT")
    assert spot.price(6_000_000) == "60000" and spot.price(7_584_540) == "75845.4"
    assert linear.price(6_000_000) == "60000.00" and linear.tick_units == 10
    assert spot.price(spot.start_units) == "95000" and linear.price(linear.start_units) == "95000.00"
    sol = instrument_spec(Category.LINEAR, "SOLUSDT")
    assert (sol.price_decimals, sol.tick_units, sol.qty(15)) == (3, 10, "1.5")  # tick 0.010, step 0.1
    assert instrument_spec(Category.SPOT, "DOGEUSDT").price(20_000) == "0.2"
    # a symbol outside the table (``any`` policy only): derived from a stable hash, not hash()
    other = instrument_spec(Category.SPOT, "SYM0001USDT")
    assert other == instrument_spec(Category.SPOT, "SYM0001USDT")
    assert 0.01 <= other.start_units / 10**other.price_decimals <= 1000
    eth_eur = instrument_spec(Category.SPOT, "ETHEUR")  # the base coin's table price, over the quote's
    assert 2_500 < eth_eur.start_units / 10**eth_eur.price_decimals < 3_500


def walk(category: Category, symbol: str, steps: int) -> None:
    """``steps`` updates at 10 Hz: every price on the tick, within a few percent of the table's."""
    spec = instrument_spec(category, symbol)
    inst = Instrument(spec, seed=7)
    start, seen = spec.start_units, set()
    for step in range(steps):
        inst.step(step * 100)
        assert inst.price % spec.tick_units == 0 and inst.bid < inst.ask
        assert all(t.price_units % spec.tick_units == 0 and t.qty_units > 0 for t in inst.trades)
        seen.add(inst.price)
        assert abs(inst.price - start) / start < 0.03, (symbol, spec.price(inst.price))
    assert len(seen) > 1, symbol  # it does move (PEPE, 10 bp a tick, only now and then)
    assert inst.low_24h <= inst.last_price <= inst.high_24h
    assert abs(inst.high_24h - inst.low_24h) / start < 0.1, symbol


@pytest.mark.parametrize("category", list(Category))
def test_the_walk_moves_in_ticks_and_stays_believable(category):
    for row in LISTINGS:  # five minutes each
        if row.rules(category) is not None:
            walk(category, row.symbol, 3_000)
    walk(category, "BTCUSDT", 36_000)  # an hour: the pull towards the start price holds it
    walk(category, "DOGEUSDT", 36_000)  # a price of few ticks' worth moves relatively, too


def apply_levels(side: dict[Decimal, Decimal], levels: list[list[str]]) -> None:
    for price, size in levels:
        if size == "0":
            assert Decimal(price) in side, f"delete of missing level {price}"
            del side[Decimal(price)]
        else:
            side[Decimal(price)] = Decimal(size)


class LocalBook:
    """What a correct client keeps: replaced on snapshot, patched on delta, u checked."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.u: int | None = None
        self.seq = 0

    def apply(self, message: dict[str, Any]) -> None:
        data = message["data"]
        assert data["seq"] > self.seq
        self.seq = data["seq"]
        if message["type"] == "snapshot":
            self.bids = {Decimal(p): Decimal(q) for p, q in data["b"]}
            self.asks = {Decimal(p): Decimal(q) for p, q in data["a"]}
            assert [Decimal(p) for p, _ in data["b"]] == sorted(self.bids, reverse=True)
            assert [Decimal(p) for p, _ in data["a"]] == sorted(self.asks)
        else:
            assert data["u"] == self.u + 1, f"gap: {self.u} -> {data['u']}"
            apply_levels(self.bids, data["b"])
            apply_levels(self.asks, data["a"])
        self.u = data["u"]
        assert max(self.bids) < min(self.asks), "crossed book"


@pytest.mark.parametrize("category", list(Category))
@pytest.mark.parametrize("depth", [1, 50, 200])
def test_orderbook_feed_deltas_rebuild_the_book_exactly(category, depth):
    inst = Instrument(instrument_spec(category, "ETHUSDT"), seed=1)
    feed = OrderbookFeed(category, Topic(TopicKind.ORDERBOOK, "ETHUSDT", depth=depth), inst)
    book = LocalBook()
    book.apply(feed.snapshot(0))
    for step in range(1, 200):
        inst.step(step * 20)
        for emission in feed.tick(step * 20):
            book.apply(emission.message)
            assert len(book.bids) <= depth and len(book.asks) <= depth
    truth = feed.snapshot(10**6)["data"]
    assert book.bids == {Decimal(p): Decimal(q) for p, q in truth["b"]}
    assert len(truth["b"]) == depth and len(truth["a"]) == depth


def test_orderbook_feed_skip_u_and_restart():
    inst = Instrument(instrument_spec(Category.SPOT, "BTCUSDT"), seed=2)
    feed = OrderbookFeed(Category.SPOT, Topic(TopicKind.ORDERBOOK, "BTCUSDT", depth=50), inst)
    u0 = feed.snapshot(0)["data"]["u"]
    feed.skip_u()
    inst.step(1)
    assert feed.tick(1)[0].message["data"]["u"] == u0 + 2
    feed.restart()
    inst.step(2)
    (restart,) = feed.tick(2)
    assert restart.full and restart.message["type"] == "snapshot" and restart.message["data"]["u"] == 1
    inst.step(3)
    assert feed.tick(3)[0].message["data"]["u"] == 2


def test_linear_ticker_is_a_snapshot_then_changed_fields_only():
    inst = Instrument(instrument_spec(Category.LINEAR, "BTCUSDT"), seed=3)
    feed = LinearTickerFeed(Category.LINEAR, Topic(TopicKind.TICKERS, "BTCUSDT"), inst, 0)
    state = dict(feed.snapshot(0)["data"])
    for step in range(1, 50):
        inst.step(step)
        for emission in feed.tick(step):
            data = emission.message["data"]
            assert emission.message["type"] == "delta" and data["symbol"] == "BTCUSDT"
            assert all(state[k] != v for k, v in data.items() if k != "symbol")
            state.update(data)
    assert state == feed.snapshot(99)["data"]


def test_kline_confirms_once_when_the_candle_ends():
    inst = Instrument(instrument_spec(Category.SPOT, "BTCUSDT"), seed=4)
    start, end = interval_bounds("1", 1_700_000_000_000)
    feed = KlineFeed(Category.SPOT, Topic(TopicKind.KLINE, "BTCUSDT", interval="1"), inst, end - 50)
    inst.step(end - 10)
    (open_candle,) = feed.tick(end - 10)
    assert open_candle.message["data"][0]["confirm"] is False
    inst.step(end + 5)
    closed, new = feed.tick(end + 5)
    assert closed.message["data"][0] | {"confirm": None} == open_candle.message["data"][0] | {"confirm": None}
    assert closed.message["data"][0]["confirm"] is True and closed.message["data"][0]["end"] == end
    assert new.message["data"][0]["start"] == end + 1 and new.message["data"][0]["confirm"] is False
    assert start == end - 59_999
    assert interval_bounds("W", 1_700_000_000_000)[0] % 86_400_000 == 0  # a Monday 00:00 UTC


# --- pure: faults ---------------------------------------------------------------------------


def test_fault_commands_are_validated():
    assert faults.parse_fault({"fault": "silent", "seconds": 2, "category": "spot"}) == faults.Silent(Category.SPOT, 2)
    assert faults.parse_fault({"fault": "reject_subscribe"}) == faults.RejectSubscribe(count=1)
    for bad, message in [
        ({"fault": "nap"}, "unknown fault 'nap'"),
        ({"fault": "close", "seconds": 1}, "unexpected key 'seconds'"),
        ({"fault": "close", "code": 1005}, "cannot be sent"),
        ({"fault": "silent", "seconds": -1}, "seconds must be"),
        ({"fault": "garbage", "count": 0}, "count must be"),
        ({"fault": "refuse", "mode": "rst"}, "mode must be"),
        ({"fault": "resume", "category": "option"}, "unknown category"),
        ({"fault": "reject_subscribe", "count": 1, "symbol": "X"}, "not both"),
        ({"fault": "reject_subscribe", "form": "tabs"}, "form must be one of comma, space, none"),
        ({"fault": "latency", "ms": -1}, "ms must be"),
        ({"fault": "frame"}, "text must be a non-empty string"),
        ({"fault": "silent", "replies": 1}, "replies must be true or false"),
        ([], "json object"),
    ]:
        with pytest.raises(faults.FaultError, match=message):
            faults.parse_fault(bad)


def test_fault_book_spends_counts_and_expires_refusals():
    now = [0.0]
    book = faults.FaultBook(lambda: now[0])
    book.add(faults.RejectSubscribe(Category.SPOT, count=2))
    book.add(faults.RejectSubscribe(symbol="ETHUSDT"))
    book.add(faults.Refuse(seconds=1.0, mode="503"))
    assert book.take_reject(Category.LINEAR, ["BTCUSDT"]) is None
    assert book.take_reject(Category.SPOT, ["BTCUSDT"]) == faults.Rejection((0,))
    assert book.take_reject(Category.SPOT, ["BTCUSDT"]) == faults.Rejection((0,))
    assert book.take_reject(Category.SPOT, ["BTCUSDT"]) is None
    assert book.take_reject(Category.LINEAR, ["BTCUSDT", "ETHUSDT"]) == faults.Rejection((1,))
    assert book.take_reject(Category.LINEAR, ["ETHUSDT", "BTCUSDT", "ETHUSDT"]) == faults.Rejection((0, 2))
    assert book.refusal(Category.SPOT) == "503"
    now[0] = 1.5
    assert book.refusal(Category.SPOT) is None
    book.clear()
    assert book.take_reject(Category.LINEAR, ["ETHUSDT"]) is None


# --- real sockets: the simulator in a subprocess --------------------------------------------


class Sim:
    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, category: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v5/public/{category}"

    def http(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def fault(self, **command: Any) -> dict[str, Any]:
        status, body = self.http("POST", "/control/fault", command)
        assert status == 200, body
        return body

    def state(self) -> dict[str, Any]:
        return self.http("GET", "/control/state")[1]


@contextlib.contextmanager
def running_simulator(*extra: str) -> Iterator[Sim]:
    """``python -m simulator --port 0 ... *extra`` in a subprocess, stopped with SIGTERM."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "--port",
            "0",
            "--rate-hz",
            str(RATE_HZ),
            "--idle-timeout",
            "0",
            "--log-level",
            "WARNING",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield Sim(int(line.rsplit(":", 1)[1]))
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    """The simulator as ``make run`` has it: the built-in instrument table only."""
    with running_simulator() as running:
        yield running


@pytest.fixture
def connect(sim: Sim) -> Iterator[Callable[..., WebSocket]]:
    """Open websocket-client connections; all closed, and every fault cleared, after the test."""
    opened: list[WebSocket] = []

    def open_ws(category: str = "spot") -> WebSocket:
        ws = create_connection(sim.url(category), timeout=2)
        opened.append(ws)
        return ws

    yield open_ws
    sim.fault(fault="resume")
    for ws in opened:
        ws.close(timeout=0.2)


def send(ws: WebSocket, **request: Any) -> None:
    ws.send(json.dumps(request))


def recv(ws: WebSocket) -> dict[str, Any]:
    return json.loads(ws.recv())


def recv_until(ws: WebSocket, predicate: Callable[[dict[str, Any]], bool], limit: int = 200) -> dict[str, Any]:
    for _ in range(limit):
        message = recv(ws)
        if predicate(message):
            return message
    raise AssertionError("no matching message")


def is_reply(message: dict[str, Any]) -> bool:
    return "op" in message


def subscribe(ws: WebSocket, *args: str, **extra: Any) -> dict[str, Any]:
    send(ws, op="subscribe", args=list(args), **extra)
    return recv_until(ws, is_reply)


def test_subscribe_ack_and_pong_shapes_match_bybit(connect):
    spot, linear = connect("spot"), connect("linear")
    ack = subscribe(spot, "tickers.BTCUSDT", req_id="10001")
    assert shape(ack) == shape(fixture("subscribe_ok"))
    assert ack["success"] is True and ack["ret_msg"] == "subscribe" and ack["req_id"] == "10001"
    ack = subscribe(linear, "tickers.BTCUSDT")
    assert shape(ack) == shape(fixture("subscribe_ok_linear")) and ack["req_id"] == ""
    send(spot, op="ping")
    assert shape(recv_until(spot, is_reply)) == shape(fixture("pong_spot"))
    send(spot, op="ping", req_id="b26704da")
    pong = recv_until(spot, is_reply)
    assert pong["req_id"] == "b26704da" and pong["op"] == "ping" and pong["ret_msg"] == "pong"
    send(linear, op="ping")
    assert shape(recv_until(linear, is_reply)) == shape(fixture("pong_linear"))
    send(linear, op="unsubscribe", args=["tickers.BTCUSDT"], req_id="3")
    assert shape(recv_until(linear, is_reply)) == shape(fixture("unsubscribe_ok_linear"))
    send(spot, op="unsubscribe", args=["tickers.BTCUSDT"])
    assert recv_until(spot, is_reply)["ret_msg"] == "unsubscribe"


def test_control_ping_frames_get_pongs(connect):
    ws = connect("linear")
    ws.ping(b"hb")
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert (opcode, frame.data) == (ABNF.OPCODE_PONG, b"hb")


def raw_upgrade(port: int, *headers: str) -> tuple[socket.socket, bytes]:
    """A hand-written upgrade request to ``/v5/public/spot``; the socket and the answer's head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    lines = ["GET /v5/public/spot HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers, "", ""]
    sock.sendall("\r\n".join(lines).encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    return sock, answer


def test_handshake_refusals_and_protocol_errors_get_rfc_6455_answers(sim):
    """The handshake and framing are transport's: a bad upgrade is refused, a bad frame closed with its code."""
    plain, answer = raw_upgrade(sim.port)
    plain.close()
    assert answer.startswith(b"HTTP/1.1 426 ")
    upgrade = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    old, answer = raw_upgrade(sim.port, *upgrade, "Sec-WebSocket-Version: 8")
    old.close()
    assert answer.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13\r\n" in answer
    for frame, code in (
        (b"\x81\x02{}", 1002),  # unmasked client frame (RFC 6455 §5.1)
        (b"\x81\x81\x00\x00\x00\x00\xff", 1007),  # text that is not UTF-8
        (b"\x88\x82\x00\x00\x00\x00\x0f\xa1", 4001),  # the client's close: its code echoed
    ):
        sock, answer = raw_upgrade(sim.port, *upgrade, "Sec-WebSocket-Version: 13")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
        sock.sendall(frame)
        reply = answer.partition(b"\r\n\r\n")[2]
        while len(reply) < 2 or len(reply) < 2 + reply[1]:  # a close frame: 7-bit length
            reply += sock.recv(4096)
        sock.close()
        assert reply[0] == 0x88 and parse_close(reply[2 : 2 + reply[1]])[0] == code, (frame, reply)


def test_spot_rejects_more_than_ten_args_and_linear_does_not(connect):
    args = [f"tickers.{row.symbol}" for row in LISTINGS if row.linear is not None][:11]
    assert len(args) == 11
    reply = subscribe(connect("spot"), *args)
    assert reply == {"success": False, "ret_msg": "args size >10", "conn_id": reply["conn_id"], "op": "subscribe"}
    assert subscribe(connect("linear"), *args)["success"] is True


def test_invalid_symbols_fail_with_each_markets_shape(connect):
    spot = subscribe(connect("spot"), "tickers.XINVALIDUSDT")
    assert shape(spot) == shape(fixture("subscribe_fail_spot_invalid_symbol"))
    assert spot["ret_msg"] == "Invalid symbol :[tickers.XINVALIDUSDT]" and spot["success"] is False
    linear_ws = connect("linear")
    linear = subscribe(linear_ws, "orderbook.50.BTCUSDT", "publicTrade.NOPE")
    assert shape(linear) == shape(fixture("subscribe_fail"))
    assert linear["ret_msg"] == "error:handler not found,topic:publicTrade.NOPE"
    # the whole request failed: nothing streams, and the connection still works
    assert subscribe(linear_ws, "kline.1.BTCUSDT")["success"] is True
    assert recv(linear_ws)["topic"] == "kline.1.BTCUSDT"
    dup = subscribe(linear_ws, "kline.1.BTCUSDT")
    assert dup["ret_msg"] == "error:already subscribed,topic:kline.1.BTCUSDT" and dup["success"] is False


def no_frames(ws: WebSocket, seconds: float = 0.3) -> None:
    """Nothing at all arrives for ``seconds`` (15 updates at 50 Hz)."""
    ws.settimeout(seconds)
    with pytest.raises(WebSocketTimeoutException):
        _opcode, data = ws.recv_data()
        raise AssertionError(f"unexpected frame {data!r}")
    ws.settimeout(2)


def test_an_unknown_spot_symbol_gets_bybits_exact_reply_and_no_data(sim, connect):
    ws = connect("spot")
    recorded = fixture("subscribe_fail_spot_invalid_symbol")
    reply = subscribe(ws, "tickers.NOPEUSDT")
    assert shape(reply) == shape(recorded)  # same keys, same order, same value types
    assert reply == {**recorded, "ret_msg": "Invalid symbol :[tickers.NOPEUSDT]", "conn_id": reply["conn_id"]}
    # a req_id is echoed, where every spot reply carries it
    reply = subscribe(ws, "orderbook.50.NOPEUSDT", req_id="7")
    assert list(reply) == ["success", "ret_msg", "conn_id", "req_id", "op"]
    assert (reply["success"], reply["ret_msg"], reply["req_id"]) == (
        False,
        "Invalid symbol :[orderbook.50.NOPEUSDT]",
        "7",
    )
    # one bad arg fails the whole request (docs/bybit-v5.md §1): BTCUSDT of the same request is not subscribed
    reply = subscribe(ws, "tickers.BTCUSDT", "publicTrade.NOPEUSDT", "tickers.SYM0001USDT")
    assert reply["ret_msg"] == "Invalid symbol :[publicTrade.NOPEUSDT,tickers.SYM0001USDT]"
    # listed on linear only: unknown on spot
    assert subscribe(ws, "tickers.1000PEPEUSDT")["ret_msg"] == "Invalid symbol :[tickers.1000PEPEUSDT]"
    no_frames(ws)
    assert not [t for t in sim.state()["topics"] if "NOPE" in t or "SYM0001" in t or "1000PEPE" in t]
    # the connection still works
    assert subscribe(ws, "tickers.BTCUSDT")["success"] is True
    assert recv(ws)["topic"] == "tickers.BTCUSDT"


def test_an_unknown_linear_symbol_gets_bybits_exact_reply_and_no_data(sim, connect):
    ws = connect("linear")
    recorded = fixture("subscribe_fail")
    reply = subscribe(ws, "tickers.NOPEUSDT", req_id="dcp.future")
    assert shape(reply) == shape(recorded)
    expected = "error:handler not found,topic:tickers.NOPEUSDT"
    assert reply == {**recorded, "ret_msg": expected, "conn_id": reply["conn_id"]}
    # the whole request fails and the reply names its first bad topic; ETHBTC is listed on spot only
    reply = subscribe(ws, "orderbook.50.BTCUSDT", "tickers.ETHBTC", "kline.1.NOPEUSDT")
    assert shape(reply) == shape(recorded) and reply["req_id"] == ""
    assert reply["ret_msg"] == "error:handler not found,topic:tickers.ETHBTC" and reply["success"] is False
    no_frames(ws)
    assert not [t for t in sim.state()["topics"] if "NOPE" in t or "ETHBTC" in t]
    assert subscribe(ws, "tickers.1000PEPEUSDT")["success"] is True  # linear only, and listed here
    assert recv(ws)["data"]["symbol"] == "1000PEPEUSDT"


@pytest.mark.parametrize("category", ["spot", "linear"])
def test_popular_pairs_start_near_the_table_on_the_tick(connect, category):
    ws = connect(category)
    assert subscribe(ws, *[f"tickers.{symbol}" for symbol in BELIEVABLE])["success"] is True
    first: dict[str, dict[str, Any]] = {}
    while len(first) < len(BELIEVABLE):
        message = recv(ws)
        first.setdefault(message["data"]["symbol"], message["data"])
    fields = ["lastPrice", "highPrice24h", "lowPrice24h", "prevPrice24h"]
    if category == "linear":
        fields += ["prevPrice1h", "markPrice", "indexPrice", "bid1Price", "ask1Price"]
    for symbol, data in first.items():
        row = listing(symbol)
        assert row is not None
        rules = row.rules(Category(category))
        assert rules is not None
        low, high = BELIEVABLE[symbol]
        for name in fields:
            text = data[name]
            price = Decimal(text)
            assert Decimal(low) * Decimal("0.9") < price < Decimal(high) * Decimal("1.1"), (symbol, name, text)
            assert price % Decimal(rules.tick) == 0, (symbol, name, text)
            decimals = len(text.partition(".")[2])
            if category == "linear":  # fixed decimals, as Bybit prints them: "95000.10", "180.020"
                assert decimals == rules.price_decimals, (symbol, name, text)
            else:  # no trailing zeros: "95000", "0.2"
                assert decimals <= rules.price_decimals and not text.endswith(".0"), (symbol, name, text)
        last = Decimal(data["lastPrice"])
        assert abs(last - Decimal(row.price)) / Decimal(row.price) < Decimal("0.01"), (symbol, last)


@pytest.mark.parametrize("category", ["spot", "linear"])
def test_books_and_trades_respect_tick_and_size_step(connect, category):
    ws = connect(category)
    assert subscribe(ws, "orderbook.50.SOLUSDT", "publicTrade.DOGEUSDT", "kline.1.ADAUSDT")["success"] is True
    checked = 0
    while checked < 30:
        message = recv(ws)
        symbol = message["topic"].rsplit(".", 1)[1]
        row = listing(symbol)
        rules = row.rules(Category(category)) if row is not None else None
        assert rules is not None, symbol
        tick, step = Decimal(rules.tick), Decimal(rules.qty_step)
        if message["topic"].startswith("orderbook"):
            levels = message["data"]["b"] + message["data"]["a"]
            pairs = [(Decimal(p), Decimal(q)) for p, q in levels]
        elif message["topic"].startswith("publicTrade"):
            pairs = [(Decimal(t["p"]), Decimal(t["v"])) for t in message["data"]]
        else:
            candle = message["data"][0]
            pairs = [(Decimal(candle[k]), Decimal(candle["volume"])) for k in ("open", "high", "low", "close")]
        for price, size in pairs:
            assert price % tick == 0 and size % step == 0, (message["topic"], price, size)
        checked += 1


def test_symbols_any_lists_made_up_symbols():
    """``python -m simulator --symbols any``: what benchmarks use for symbols like SYM0001USDT."""
    with running_simulator("--symbols", "any") as any_sim:
        spot = create_connection(any_sim.url("spot"), timeout=2)
        linear = create_connection(any_sim.url("linear"), timeout=2)
        try:
            assert subscribe(spot, "tickers.SYM0001USDT")["success"] is True
            assert recv(spot)["data"]["symbol"] == "SYM0001USDT"
            assert subscribe(linear, "publicTrade.SYM0002USDT", "tickers.ETHBTC")["success"] is True
            assert {recv(linear)["topic"] for _ in range(4)} == {"publicTrade.SYM0002USDT", "tickers.ETHBTC"}
            failed = subscribe(linear, "tickers.FOOINVALIDUSDT")
            assert failed["ret_msg"] == "error:handler not found,topic:tickers.FOOINVALIDUSDT"
            assert any_sim.state()["symbols"]["mode"] == "any"
        finally:
            spot.close(timeout=0.2)
            linear.close(timeout=0.2)


def test_control_api_shows_and_switches_the_symbol_policy(sim, connect):
    status, body = sim.http("GET", "/control/symbols")
    assert status == 200 and body["symbols"]["mode"] == "known"
    assert {
        "symbol": "BTCUSDT",
        "price": "95000",
        "spot": {"tick": "0.01", "qty_step": "0.000001"},
        "linear": {"tick": "0.10", "qty_step": "0.001"},
    } in body["instruments"]
    ws = connect("spot")
    try:
        status, body = sim.http("POST", "/control/symbols", {"mode": "any"})
        assert status == 200 and body["ok"] is True and body["symbols"]["mode"] == "any"
        assert subscribe(ws, "tickers.SYM0001USDT")["success"] is True
        assert sim.http("POST", "/control/symbols", {"mode": "every"}) == (
            400,
            {"ok": False, "error": "mode must be one of known, any"},
        )
        status, body = sim.http("POST", "/control/symbols", {"mode": "known", "reject": ["ETHUSDT"]})
        assert status == 200 and body["symbols"]["reject"] == ["ETHUSDT"]
        assert subscribe(ws, "tickers.ETHUSDT")["ret_msg"] == "Invalid symbol :[tickers.ETHUSDT]"
    finally:
        assert sim.http("POST", "/control/symbols", {"mode": "known", "reject": []})[0] == 200
    assert subscribe(ws, "tickers.SYM0002USDT")["ret_msg"] == "Invalid symbol :[tickers.SYM0002USDT]"
    assert sim.state()["symbols"] == {"mode": "known", "reject": [], "reject_substring": "INVALID"}


@pytest.mark.parametrize("category", ["spot", "linear"])
def test_every_topic_streams_with_bybits_types(connect, category):
    ws = connect(category)
    topics = ["tickers.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.50.BTCUSDT", "kline.5.BTCUSDT"]
    assert subscribe(ws, *topics)["success"] is True
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < 4:
        message = recv(ws)
        seen.setdefault(message["topic"], message)
    kline, trade = seen["kline.5.BTCUSDT"], seen["publicTrade.BTCUSDT"]
    assert sorted(shape(kline)) == sorted(shape(fixture("kline")))
    assert shape(kline["data"][0]) == shape(fixture("kline")["data"][0]) and kline["data"][0]["confirm"] is False
    assert kline["data"][0]["end"] - kline["data"][0]["start"] == 5 * 60_000 - 1
    expected_trade = dict(fixture("public_trade")["data"][0])
    if category == "spot":
        del expected_trade["L"]
        expected_trade = {**{k: v for k, v in expected_trade.items() if k != "seq"}, "RPI": False, "seq": 1}
        assert trade["data"][0]["i"].isdigit()
    assert shape(trade["data"][0]) == shape(expected_trade) and trade["type"] == "snapshot"
    book = seen["orderbook.50.BTCUSDT"]
    assert book["type"] == "snapshot"
    assert sorted(shape(book)) == sorted(shape(fixture("orderbook_snapshot")))
    ticker = seen["tickers.BTCUSDT"]
    assert ticker["type"] == "snapshot"
    reference = fixture("spot_ticker_snapshot" if category == "spot" else "linear_ticker_snapshot_docs")
    assert sorted(shape(ticker)) == sorted(shape(reference))
    assert shape(ticker["data"]) == shape(reference["data"])
    now_ms = time.time() * 1000
    assert all(abs(m["ts"] - now_ms) < 5000 for m in seen.values())
    price = Decimal(ticker["data"]["lastPrice"])
    assert 90_000 < price < 100_000 and price % Decimal("0.01" if category == "spot" else "0.10") == 0


def test_orderbook_u_rises_by_one_and_the_book_stays_sane(connect):
    ws = connect("spot")
    subscribe(ws, "orderbook.50.ETHUSDT")
    book = LocalBook()
    first = recv(ws)
    assert first["type"] == "snapshot"
    book.apply(first)
    for _ in range(15):
        message = recv(ws)
        assert message["type"] == "delta" and message["topic"] == "orderbook.50.ETHUSDT"
        book.apply(message)
    assert 3300 < min(book.asks) < 3700


def test_linear_tickers_are_a_snapshot_then_deltas(connect):
    ws = connect("linear")
    subscribe(ws, "tickers.ETHUSDT")
    snapshot = recv(ws)
    assert snapshot["type"] == "snapshot" and len(snapshot["data"]) == 25
    cs = snapshot["cs"]
    for _ in range(5):
        delta = recv(ws)
        assert delta["type"] == "delta" and delta["data"]["symbol"] == "ETHUSDT"
        assert 1 < len(delta["data"]) < 25 and delta["cs"] > cs
        cs = delta["cs"]


def test_control_state_lists_connections_and_subscriptions(sim, connect):
    ws = connect("linear")
    subscribe(ws, "publicTrade.SOLUSDT")
    recv(ws)
    state = sim.state()
    mine = [c for c in state["connections"] if c["subscriptions"] == ["publicTrade.SOLUSDT"]]
    assert len(mine) == 1 and mine[0]["category"] == "linear" and mine[0]["messages_sent"] >= 2
    assert "linear:publicTrade.SOLUSDT" in state["topics"] and state["counts"]["messages_sent"] > 0
    assert state["symbols"]["mode"] == "known"
    assert sim.http("POST", "/control/fault", {"fault": "nap"}) == (400, {"ok": False, "error": "unknown fault 'nap'"})
    assert sim.http("GET", "/nothing")[0] == 404


# --- faults, each seen from the client side ---------------------------------------------------


def test_close_fault_sends_the_code_asked(sim, connect):
    ws = connect("spot")
    subscribe(ws, "publicTrade.BTCUSDT")
    sim.fault(fault="close", code=4000, reason="test", category="spot")
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            break
    assert parse_close(frame.data) == (4000, "test")


def test_abrupt_close_fault_drops_tcp(sim, connect):
    ws = connect("linear")
    subscribe(ws, "publicTrade.BTCUSDT")
    sim.fault(fault="close", abrupt=True)
    with pytest.raises(WebSocketConnectionClosedException):
        for _ in range(100):
            ws.recv()


def test_silent_fault_stops_everything_then_resyncs_with_a_snapshot(sim, connect):
    ws = connect("spot")
    subscribe(ws, "orderbook.50.BTCUSDT")
    recv(ws)
    sim.fault(fault="silent", seconds=0.5)
    started = time.monotonic()
    send(ws, op="ping")  # no pong either
    ws.settimeout(0.05)
    with pytest.raises(WebSocketTimeoutException):  # frames already in flight drain first
        while True:
            ws.recv()
    ws.settimeout(0.4 - (time.monotonic() - started))
    with pytest.raises(WebSocketTimeoutException):
        ws.recv()
    ws.settimeout(2)
    after = recv(ws)
    assert time.monotonic() - started >= 0.45
    assert after["topic"] == "orderbook.50.BTCUSDT" and after["type"] == "snapshot"


def test_garbage_fault_sends_frames_no_parser_accepts(sim, connect):
    ws = connect("spot")
    sim.fault(fault="garbage", count=3)
    received = [ws.recv_data() for _ in range(3)]
    assert [opcode for opcode, _ in received] == [ABNF.OPCODE_TEXT, ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY]
    with pytest.raises(ValueError):
        json.loads(received[0][1])
    assert json.loads(received[1][1])["topic"] == 42  # JSON, but not Bybit's schema


def test_reject_subscribe_fault_counts_and_symbols(sim, connect):
    ws = connect("spot")
    sim.fault(fault="reject_subscribe", count=1)
    failed = subscribe(ws, "tickers.BTCUSDT")
    assert failed["success"] is False and failed["ret_msg"] == "Invalid symbol :[tickers.BTCUSDT]"
    assert subscribe(ws, "tickers.BTCUSDT")["success"] is True
    sim.fault(fault="reject_subscribe", symbol="ETHUSDT", category="linear")
    linear = connect("linear")
    for _ in range(2):
        failed = subscribe(linear, "publicTrade.ETHUSDT")
        assert failed["ret_msg"] == "error:handler not found,topic:publicTrade.ETHUSDT"
    assert subscribe(linear, "publicTrade.SOLUSDT")["success"] is True


@pytest.mark.parametrize(("form", "spot", "linear"), [
    (None, "Invalid symbol :[tickers.ETHUSDT,orderbook.50.ETHUSDT]",
     "error:handler not found,topic:tickers.ETHUSDT"),
    ("comma", "Invalid symbol :tickers.ETHUSDT,orderbook.50.ETHUSDT",
     "error:handler not found,topic:tickers.ETHUSDT,orderbook.50.ETHUSDT"),
    ("space", "Invalid symbol :[tickers.ETHUSDT orderbook.50.ETHUSDT]",
     "error:handler not found,topic:[tickers.ETHUSDT orderbook.50.ETHUSDT]"),
    ("none", protocol.UNNAMED_FAILURE, protocol.UNNAMED_FAILURE),
])
def test_reject_subscribe_names_every_topic_of_the_symbol_in_each_form(sim, connect, form, spot, linear):
    sim.fault(fault="reject_subscribe", symbol="ETHUSDT", **({"form": form} if form else {}))
    for category, expected in (("spot", spot), ("linear", linear)):
        ws = connect(category)
        failed = subscribe(ws, "tickers.ETHUSDT", "tickers.BTCUSDT", "orderbook.50.ETHUSDT")
        assert failed["success"] is False and failed["ret_msg"] == expected


def test_latency_fault_delays_requests_in_order_while_data_flows(sim, connect):
    ws = connect("spot")
    subscribe(ws, "tickers.BTCUSDT")
    seen = sim.state()["requests"]
    sim.fault(fault="latency", ms=300, category="spot")
    assert sim.state()["faults"]["latency"] == [{"category": "spot", "ms": 300.0}]
    send(ws, op="unsubscribe", args=["tickers.BTCUSDT"], req_id="u")
    send(ws, op="subscribe", args=["tickers.ETHUSDT"], req_id="s")
    # Until the unsubscribe takes effect, BTCUSDT keeps streaming; the replies then come in order.
    before = []
    while not is_reply(message := recv(ws)):
        before.append(message["topic"])
    assert message["req_id"] == "u" and "tickers.BTCUSDT" in before
    assert recv_until(ws, is_reply)["req_id"] == "s"
    counts = sim.state()["requests"]

    def new(topic: str, op: str) -> int:
        return counts.get(topic, {}).get(op, 0) - seen.get(topic, {}).get(op, 0)

    assert (new("spot:tickers.BTCUSDT", "subscribe"), new("spot:tickers.BTCUSDT", "unsubscribe")) == (0, 1)
    assert new("spot:tickers.ETHUSDT", "subscribe") == 1
    sim.fault(fault="latency", ms=0, category="spot")
    assert sim.state()["faults"]["latency"] == []


def test_frame_fault_sends_the_text_verbatim(sim, connect):
    ws = connect("linear")
    text = '{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{"symbol":"BTCUSDT","lastPrice":"NaN"}}'
    result = sim.fault(fault="frame", text=text, count=2, category="linear")
    assert len(result["connections"]) == 1
    assert [ws.recv(), ws.recv()] == [text, text]


def test_silent_fault_with_replies_stops_data_but_answers_pings(sim, connect):
    ws = connect("spot")
    subscribe(ws, "tickers.BTCUSDT")
    sim.fault(fault="silent", replies=True, category="spot")
    send(ws, op="ping", req_id="p")
    assert recv_until(ws, is_reply)["ret_msg"] == "pong"  # data in flight drains first, then the pong
    send(ws, op="ping", req_id="q")
    assert recv(ws)["req_id"] == "q"  # nothing but the pong: data stopped
    sim.fault(fault="resume")
    assert recv(ws)["topic"] == "tickers.BTCUSDT"


def test_skip_u_fault_leaves_a_gap(sim, connect):
    ws = connect("linear")
    subscribe(ws, "orderbook.200.BTCUSDT")
    last_u = recv(ws)["data"]["u"]
    result = sim.fault(fault="skip_u", symbol="BTCUSDT")
    assert result["topics"] == ["linear:orderbook.200.BTCUSDT"]
    for _ in range(20):
        u = recv(ws)["data"]["u"]
        if u != last_u + 1:
            break
        last_u = u
    assert u == last_u + 2


def test_u1_snapshot_fault_restarts_the_book(sim, connect):
    ws = connect("spot")
    subscribe(ws, "orderbook.1.BTCUSDT")
    assert recv(ws)["data"]["u"] > 1
    sim.fault(fault="u1_snapshot", category="spot")
    restart = recv_until(ws, lambda m: m["data"]["u"] == 1)
    assert restart["type"] == "snapshot"
    assert recv(ws)["data"]["u"] == 2


def test_snapshot_before_ack_fault(sim, connect):
    ws = connect("linear")
    sim.fault(fault="snapshot_before_ack")
    send(ws, op="subscribe", args=["orderbook.50.BTCUSDT"], req_id="x")
    first, second = recv(ws), recv(ws)
    assert first["type"] == "snapshot" and first["topic"] == "orderbook.50.BTCUSDT"
    assert second["op"] == "subscribe" and second["success"] is True
    # only the next subscribe: the one after gets its ack first
    send(ws, op="subscribe", args=["orderbook.50.ETHUSDT"])
    assert recv_until(ws, lambda m: "op" in m or m["topic"].endswith("ETHUSDT"))["op"] == "subscribe"


def test_refuse_fault_fails_connects_until_resume(sim, connect):
    sim.fault(fault="refuse", seconds=30)
    with pytest.raises((WebSocketConnectionClosedException, ConnectionError)):
        create_connection(sim.url("spot"), timeout=2)
    sim.fault(fault="refuse", seconds=30, mode="503", category="linear")
    sim.fault(fault="resume", category="spot")
    with pytest.raises(WebSocketBadStatusException) as info:
        create_connection(sim.url("linear"), timeout=2)
    assert info.value.status_code == 503
    assert sim.state()["faults"]["refuse"][0]["mode"] == "503"
    connect("spot")  # spot was resumed
    sim.fault(fault="resume")
    connect("linear")


# --- in process --------------------------------------------------------------------------------


def test_in_process_server_with_plain_gevent_and_an_idle_cut_off():
    """``SimulatorServer`` in this (unpatched) process; websocket-client in a real thread."""
    server = SimulatorServer(port=0, seed=5, rate_hz=RATE_HZ, idle_timeout=0.3)
    server.start()
    url = server.url("spot")

    def client() -> tuple[dict[str, Any], dict[str, Any], float]:
        ws = create_connection(url, timeout=2)
        ws.send(json.dumps({"op": "subscribe", "args": ["publicTrade.BTCUSDT"]}))
        ack, trade = json.loads(ws.recv()), json.loads(ws.recv())
        started = time.monotonic()
        with pytest.raises(WebSocketConnectionClosedException):
            while True:  # sends nothing: cut off after idle_timeout
                ws.recv()
        return ack, trade, time.monotonic() - started

    try:
        assert url == f"ws://127.0.0.1:{server.port}/v5/public/spot"
        ack, trade, idle = gevent.get_hub().threadpool.spawn(client).get(timeout=5)
        assert ack["ret_msg"] == "subscribe" and trade["topic"] == "publicTrade.BTCUSDT"
        assert 0.1 < idle < 1.5
        assert server.state()["counts"]["connections_closed_idle"] == 1
        with pytest.raises(faults.FaultError):
            server.inject({"fault": "bogus"})
        assert server.inject({"fault": "resume"})["ok"] is True
    finally:
        server.stop()


def test_in_process_server_under_patch_all():
    """The gateway's setting: patch_all() first, websocket-client in a greenlet."""
    script = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import json, gevent
        from websocket import create_connection
        from simulator.server import SimulatorServer

        server = SimulatorServer(port=0, rate_hz=50)
        server.start()

        def client():
            ws = create_connection(server.url("linear"), timeout=2)
            ws.send(json.dumps({"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]}))
            kinds = [json.loads(ws.recv()) for _ in range(3)]
            ws.close()
            return [m.get("op") or m["type"] for m in kinds]

        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(5)])
        print(json.dumps(gevent.spawn(client).get(timeout=5)), len(ticker.get(timeout=5)))
        server.stop()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == '["subscribe", "snapshot", "delta"] 5'
