"""Zero silent loss on the exchange side: bad values, refused resubscribes, resync storms, silent upstreams.

Two levels:

* in process: an :class:`ExchangeStreamActor` fed frames through its own
  entry point (``on_receive(UpstreamFrame(...))``) with a recording socket
  and bridge, so Hypothesis can throw any bad value at every numeric field;
* end to end: the real gateway (``app.py``) against the simulator in its own
  process, faults injected over its control API, asserting what a client
  sees, the metrics, the logs and the requests the simulator saw.
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.exchange_stream import (
    BookReset,
    ExchangeStreamActor,
    MarketData,
    StreamSettings,
    SubscribeRejected,
    UpstreamFrame,
    WantTopics,
)
from gateway.config import VARIABLES, Settings
from market.bybit import BYBIT
from metrics.definitions import build
from supervision import ChildContext
from tests.harness import Client, GatewayProcess, SimulatorProcess

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bybit-v5"
VALID_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]{0,31})(?:\.[0-9]{1,32})?")


# --- in process: the stream actor's entry point ------------------------------------------------


class RecordingSocket:
    """Stands in for the upstream WebSocket: records every request the actor sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def close(self, timeout: float = 0) -> None:
        pass

    def ops(self, op: str, topic: str) -> int:
        return sum(1 for r in self.sent if r.get("op") == op and topic in r.get("args", []))


class RecordingBridge:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    def tell(self, message: Any) -> None:
        self.messages.append(message)

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]


class Stream:
    """One exchange stream actor, subscribed (and acknowledged) to ``topics``, fed by hand."""

    def __init__(self, category: str, topics: tuple[str, ...]) -> None:
        self.metrics = build()
        self.bridge = RecordingBridge()
        self.ws = RecordingSocket()
        context = ChildContext(None, f"exchange:bybit:{category}", "exchange_stream", 1)  # type: ignore[arg-type]  # no supervisor: a unit test
        self.actor = ExchangeStreamActor(context, BYBIT, category, StreamSettings(url="ws://127.0.0.1:9/unused"),
                                         self.bridge, (), self.metrics)
        self.actor.ws = self.ws  # type: ignore[assignment]  # a fake upstream socket
        self.actor.on_receive(WantTopics(topics))
        for request in list(self.ws.sent):
            self.feed({"success": True, "ret_msg": "subscribe", "conn_id": "c", "req_id": request["req_id"],
                       "op": "subscribe"})

    def feed(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self.actor.on_receive(UpstreamFrame(self.actor.conn, text, time.time()))

    def bad(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value(
            "ws_exchange_bad_messages_total", {"exchange": "bybit", "reason": reason}) or 0.0

    def resyncs(self) -> float:
        return self.metrics.registry.get_sample_value(
            "ws_exchange_book_resyncs_total", {"exchange": "bybit", "category": self.actor.category}) or 0.0


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def book_snapshot(u: int = 100, topic: str = "orderbook.50.BTCUSDT") -> dict[str, Any]:
    return {"topic": topic, "ts": 1731035685345, "type": "snapshot",
            "data": {"s": "BTCUSDT", "b": [["75848.62", "0.5"], ["75837.13", "1"]],
                     "a": [["75848.89", "0.1"], ["75851.44", "2"]], "u": u, "seq": 1}, "cts": 1731035685342}


def book_delta(u: int, bid: list[str] | None = None) -> dict[str, Any]:
    return {"topic": "orderbook.50.BTCUSDT", "ts": 1731035685346, "type": "delta",
            "data": {"s": "BTCUSDT", "b": [bid or ["75840.00", "0.3"]], "a": [], "u": u, "seq": 2},
            "cts": 1731035685343}


SPOT_TOPICS = ("tickers.BTCUSDT", "orderbook.50.BTCUSDT", "publicTrade.BTCUSDT", "kline.5.BTCUSDT")
PRICE, AMOUNT, SIGNED = "price", "amount", "signed"

# (fixture, category, path to a numeric field, what kind of number it is)
NUMERIC_FIELDS = [
    ("spot_ticker_snapshot.json", "spot", ("data", "lastPrice"), PRICE),
    ("spot_ticker_snapshot.json", "spot", ("data", "highPrice24h"), AMOUNT),
    ("spot_ticker_snapshot.json", "spot", ("data", "lowPrice24h"), AMOUNT),
    ("spot_ticker_snapshot.json", "spot", ("data", "volume24h"), AMOUNT),
    ("spot_ticker_snapshot.json", "spot", ("data", "turnover24h"), AMOUNT),
    ("spot_ticker_snapshot.json", "spot", ("data", "price24hPcnt"), SIGNED),
    ("linear_ticker_snapshot_docs.json", "linear", ("data", "markPrice"), AMOUNT),
    ("linear_ticker_snapshot_docs.json", "linear", ("data", "indexPrice"), AMOUNT),
    ("linear_ticker_snapshot_docs.json", "linear", ("data", "bid1Price"), AMOUNT),
    ("linear_ticker_snapshot_docs.json", "linear", ("data", "bid1Size"), AMOUNT),
    ("linear_ticker_snapshot_docs.json", "linear", ("data", "ask1Price"), AMOUNT),
    ("linear_ticker_snapshot_docs.json", "linear", ("data", "ask1Size"), AMOUNT),
    ("linear_ticker_snapshot_docs.json", "linear", ("data", "fundingRate"), SIGNED),
    ("orderbook_delta.json", "spot", ("data", "b", 0, 0), PRICE),
    ("orderbook_delta.json", "spot", ("data", "b", 0, 1), AMOUNT),
    ("orderbook_delta.json", "spot", ("data", "a", 0, 0), PRICE),
    ("orderbook_delta.json", "spot", ("data", "a", 0, 1), AMOUNT),
    ("public_trade.json", "spot", ("data", 0, "p"), PRICE),
    ("public_trade.json", "spot", ("data", 0, "v"), AMOUNT),
    ("kline.json", "spot", ("data", 0, "open"), PRICE),
    ("kline.json", "spot", ("data", 0, "high"), PRICE),
    ("kline.json", "spot", ("data", 0, "low"), PRICE),
    ("kline.json", "spot", ("data", 0, "close"), PRICE),
    ("kline.json", "spot", ("data", 0, "volume"), AMOUNT),
    ("kline.json", "spot", ("data", 0, "turnover"), AMOUNT),
]

_bad_text = st.one_of(
    st.sampled_from(["NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "1e5", "1E5", "1e-5", "1.5e3",
                     " 1", "1 ", "+1", "1_0", "0x10", ".5", "5.", "1.2.3", "-", "01", "1,5", "\u0661\u0662", "1\n",
                     "1" * 33, "0." + "1" * 33]),
    st.text(max_size=12).filter(lambda t: t != "" and not VALID_DECIMAL.fullmatch(t)),
)
# A JSON number is refused too (its exact text is gone once parsed); NaN as a bare JSON constant is not
# JSON at all (an unparseable frame, tested in test_bybit_protocol.py).
_bad_json = st.one_of(_bad_text, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                      st.none(), st.just([]), st.just({}))
_out_of_range = {PRICE: ["0", "0.000", "-1", "-0.5", "-0"], AMOUNT: ["-1", "-0.001", "-0"], SIGNED: []}


def bad_value_for(kind: str) -> st.SearchStrategy[Any]:
    return _bad_json | st.sampled_from(_out_of_range[kind]) if _out_of_range[kind] else _bad_json


def with_value(frame: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(frame)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def _stream_for(name: str, category: str) -> tuple[Stream, str]:
    frame = fixture(name)
    topic = frame["topic"]
    stream = Stream(category, (*SPOT_TOPICS, topic) if category == "spot" else (topic,))
    if topic.startswith("orderbook"):
        stream.feed(book_snapshot(frame["data"]["u"] - 1))
    elif topic.startswith("tickers"):
        stream.feed(frame)
    return stream, topic


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), field=st.sampled_from(NUMERIC_FIELDS))
def test_a_bad_value_in_any_numeric_field_is_dropped_counted_and_the_stream_stays_up(data, field):
    """Item 6 at the actor's entry point: whatever the bad value and wherever it is, nothing
    escapes the actor (no restart), nothing of that frame reaches the bridge, it is counted as
    ``bad_value``, a book is resynced once (and only that book), and the next good frame flows."""
    name, category, path, kind = field
    value = data.draw(bad_value_for(kind), label="value")
    stream, topic = _stream_for(name, category)
    before = len(stream.bridge.messages)
    unsubscribes = stream.ws.ops("unsubscribe", topic)

    stream.feed(with_value(fixture(name), path, value))  # must not raise

    after = stream.bridge.messages[before:]
    assert not [m for m in after if isinstance(m, MarketData)], after
    assert stream.bad("bad_value") == 1
    if topic.startswith("orderbook"):
        assert [m.topic for m in after if isinstance(m, BookReset)] == [topic]
        assert stream.ws.ops("unsubscribe", topic) == unsubscribes + 1
        assert stream.resyncs() == 1
        good = book_snapshot(5)
    else:
        assert not [m for m in after if isinstance(m, BookReset)]
        good = fixture(name)
    stream.feed(good)
    assert [m.topic for m in stream.bridge.messages[before:] if isinstance(m, MarketData)] == [topic]


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(NUMERIC_FIELDS), data=st.data())
def test_valid_decimal_text_reaches_the_bridge_exactly(field, data):
    """The other side of the rule: any plain decimal text in range passes, and clients get that very text."""
    name, category, path, kind = field
    digits = st.from_regex(r"\A(?:[1-9][0-9]{0,8}|0)(?:\.[0-9]{1,8})?\Z")
    is_book = name.startswith("orderbook")
    positive = kind == PRICE or is_book  # a book level of size 0 is a delete: nothing to see
    text = data.draw(digits.filter(lambda t: not positive or Decimal(t) > 0), label="text")
    if kind == SIGNED and data.draw(st.booleans(), label="negative"):
        text = "-" + text
    stream, topic = _stream_for(name, category)
    before = len(stream.bridge.messages)
    frame = fixture(name)
    if is_book:  # as a snapshot of one side, so that no price can cross the book
        frame["type"] = "snapshot"
        frame["data"]["a" if path[1] == "b" else "b"] = []
    stream.feed(with_value(frame, path, text))
    out = [m for m in stream.bridge.messages[before:] if isinstance(m, MarketData)]
    assert stream.bad("bad_value") == 0 and stream.resyncs() == 0
    assert [m.topic for m in out] == [topic]
    data = out[0].data
    assert json.dumps(text) in (data if isinstance(data, str) else json.dumps(data))  # book views come as JSON text


def test_data_for_a_topic_never_subscribed_or_another_symbol_is_counted_not_fatal():
    stream = Stream("spot", SPOT_TOPICS)
    xrp = fixture("spot_ticker_snapshot.json")
    xrp["topic"], xrp["data"]["symbol"] = "tickers.XRPUSDT", "XRPUSDT"
    stream.feed(xrp)
    wrong = fixture("spot_ticker_snapshot.json")
    wrong["data"]["symbol"] = "ETHUSDT"  # on tickers.BTCUSDT
    stream.feed(wrong)
    assert stream.bad("unsubscribed") == 1 and stream.bad("wrong_symbol") == 1
    assert not stream.bridge.of(MarketData)
    stream.feed(fixture("spot_ticker_snapshot.json"))
    assert [m.topic for m in stream.bridge.of(MarketData)] == ["tickers.BTCUSDT"]


def test_unparseable_frames_are_counted_under_their_own_reason():
    stream = Stream("spot", SPOT_TOPICS)
    stream.feed("<html>502</html>")
    stream.feed('{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{"lastPrice":NaN}}')
    assert stream.bad("unparseable") == 2 and stream.bad("bad_value") == 0


def test_one_gap_with_deltas_in_flight_is_one_resync():
    """Item 8 in process: after a gap, the deltas still in flight are dropped until the new snapshot."""
    stream = Stream("spot", SPOT_TOPICS)
    stream.feed(book_snapshot(100))
    stream.feed(book_delta(101))
    stream.feed(book_delta(103))  # u 102 lost
    for u in range(104, 110):  # in flight while the resubscribe travels
        stream.feed(book_delta(u))
    assert stream.resyncs() == 1
    assert stream.ws.ops("unsubscribe", "orderbook.50.BTCUSDT") == 1
    assert stream.ws.ops("subscribe", "orderbook.50.BTCUSDT") == 2  # the first one, and the resync
    assert len(stream.bridge.of(BookReset)) == 1
    stream.feed(book_snapshot(500))
    stream.feed(book_delta(501))
    views = [json.loads(m.data) for m in stream.bridge.of(MarketData) if m.topic == "orderbook.50.BTCUSDT"]
    assert [v["updateId"] for v in views][-2:] == [500, 501] and stream.resyncs() == 1


def test_a_rejected_request_is_split_and_only_named_topics_are_rejected():
    """Item 7 in process: the failure list comes as ``a,b`` or ``[a b]``; only those are rejected."""
    topics = tuple(f"tickers.{s}USDT" for s in ("ADA", "BTC", "DOGE", "ETH", "LTC", "SOL", "XRP", "DOT", "LINK",
                                                 "AVAX"))
    for listed in ("tickers.ADAUSDT,tickers.XRPUSDT", "[tickers.ADAUSDT tickers.XRPUSDT]"):
        stream = Stream("spot", ())
        stream.actor.on_receive(WantTopics(topics))
        (request,) = stream.ws.sent
        stream.feed({"success": False, "ret_msg": f"Invalid symbol :{listed}", "conn_id": "c",
                     "req_id": request["req_id"], "op": "subscribe"})
        (rejected,) = stream.bridge.of(SubscribeRejected)
        assert sorted(rejected.topics) == ["tickers.ADAUSDT", "tickers.XRPUSDT"], listed
        resent = stream.ws.sent[1]
        assert resent["op"] == "subscribe" and sorted(resent["args"]) == sorted(
            t for t in topics if t not in rejected.topics)


# --- end to end: gateway + simulator ---------------------------------------------------------


FAST = {
    "MARKET_CATEGORIES": "spot",
    "RESTART_BASE": "50",
    "RESTART_CAP": "400",
    "RESTART_FLOOR": "20",
    "RESTART_RESET_AFTER": "300",
    "CIRCUIT_COOLDOWN": "500",
    "MARKET_UNSUBSCRIBE_GRACE": "300",
    "STATUS_INTERVAL": "300",
}


def gateway(sim: SimulatorProcess, **env: str) -> GatewayProcess:
    g = GatewayProcess({"MARKET_SOURCE": "bybit", "BYBIT_WS_URL": f"ws://127.0.0.1:{sim.port}/v5/public",
                        **FAST, **env}).start()
    g.wait_for_log(lambda r: r.get("msg") == "exchange stream connected", timeout=10)
    return g


def subscribe(gw: GatewayProcess, user: str, symbol: str, streams: list[str]) -> Client:
    c = gw.connect(user)
    c.recv()
    reply = c.request({"type": "subscribe", "channel": "market-data",
                       "data": {"symbol": symbol, "category": "spot", "streams": streams}})
    assert reply["type"] == "subscribed", reply
    return c


def collect_until(c: Client, predicate: Any, timeout: float, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Read until ``predicate``, keeping every message read in ``seen``."""
    deadline = time.monotonic() + timeout
    while True:
        m = c.recv(max(0.05, deadline - time.monotonic()))
        seen.append(m)
        if predicate(m):
            return m


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(gw.http + "/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stats(gw: GatewayProcess) -> dict[str, Any]:
    request = urllib.request.Request(gw.http + "/ws/stats",
                                     headers={"Authorization": f"Bearer {gw.token('ops', role='service')}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def spot_incarnation(gw: GatewayProcess) -> int:
    child = next(ch for ch in stats(gw)["supervisor"]["children"] if ch["child_id"] == "exchange:bybit:spot")
    return child["incarnation"]


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def restarted(gw: GatewayProcess, since: int, timeout: float = 10) -> dict[str, Any]:
    return gw.wait_for_log(lambda r: r.get("logger") == "gateway.supervisor"
                           and r.get("event") in ("restart_scheduled", "circuit_opened")
                           and r.get("child_id") == "exchange:bybit:spot" and r.get("incarnation", 0) >= since,
                           timeout=timeout)


def test_bad_values_from_the_exchange_are_dropped_counted_and_one_book_resynced(sim):
    """Item 6 end to end: NaN, "1e5", a symbol never subscribed, another symbol's data: the stream
    stays up (same incarnation, no traceback), clients see none of it, one book resyncs."""
    gw = gateway(sim, POPULAR_PAIRS="BTCUSDT")
    try:
        c = subscribe(gw, "bad1", "BTCUSDT", ["ticker", "orderbook"])
        seen: list[dict[str, Any]] = []
        collect_until(c, lambda m: m.get("stream") == "orderbook.50" and m["data"]["bids"], 10, seen)
        collect_until(c, lambda m: m.get("stream") == "ticker", 10, seen)
        before = spot_incarnation(gw)
        ticker = {"topic": "tickers.BTCUSDT", "ts": int(time.time() * 1000), "type": "snapshot", "cs": 1,
                  "data": {"symbol": "BTCUSDT", "lastPrice": "NaN", "highPrice24h": "1", "lowPrice24h": "1",
                           "volume24h": "1", "turnover24h": "1", "price24hPcnt": "0"}}
        for text in (
            json.dumps(ticker),
            json.dumps(book_delta(1, ["1e5", "1"]) | {"ts": int(time.time() * 1000)}),
            json.dumps(ticker | {"topic": "tickers.XRPUSDT", "data": ticker["data"] | {"symbol": "XRPUSDT",
                                                                                        "lastPrice": "2.1"}}),
            json.dumps(ticker | {"data": ticker["data"] | {"symbol": "ETHUSDT", "lastPrice": "1234.56789"}}),
        ):
            sim.inject({"fault": "frame", "text": text, "category": "spot"})
        reset = collect_until(c, lambda m: m.get("stream") == "orderbook.50" and m["data"].get("resync"), 10, seen)
        assert reset["data"]["reason"] == "dropped a frame with a bad value (bad_value)"
        collect_until(c, lambda m: m.get("stream") == "orderbook.50" and m["data"]["bids"], 10, seen)
        for _ in range(20):  # and the stream goes on
            collect_until(c, lambda m: m.get("type") == "data", 10, seen)
        assert spot_incarnation(gw) == before
        for m in seen:
            text = json.dumps(m)
            assert "NaN" not in text and "1e5" not in text and "1234.56789" not in text and "XRP" not in text, m
            if m.get("stream") == "ticker":
                assert Decimal(m["data"]["lastPrice"]) > 1000
        assert sum(1 for m in seen if m.get("stream") == "orderbook.50" and m["data"].get("resync")) == 1
        assert metric(gw, "ws_exchange_bad_messages_total", exchange="bybit", reason="bad_value") == 2
        assert metric(gw, "ws_exchange_bad_messages_total", exchange="bybit", reason="unsubscribed") == 1
        assert metric(gw, "ws_exchange_bad_messages_total", exchange="bybit", reason="wrong_symbol") == 1
        assert metric(gw, "ws_exchange_book_resyncs_total", exchange="bybit", category="spot") == 1
        assert not [r for r in gw.json_logs() if r.get("level") in ("ERROR", "CRITICAL")]
        dropped = [r for r in gw.json_logs() if r.get("msg") == "dropped a bad market-data frame"]
        assert {r["reason"] for r in dropped} == {"bad_value", "unsubscribed", "wrong_symbol"}
        c.close()
    finally:
        gw.stop()
        sim.inject({"fault": "resume"})


POPULAR = ("ADAUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT")
POPULAR_TOPICS = {f"{kind}.{s}" for s in POPULAR for kind in ("tickers", "orderbook.50", "publicTrade")}
ADA_TOPICS = {t for t in POPULAR_TOPICS if t.endswith("ADAUSDT")}


@pytest.mark.parametrize("fault", [
    {"symbol": "ADAUSDT"},                  # named as recorded: [a,b,c]
    {"symbol": "ADAUSDT", "form": "space"},  # named Go-style: [a b c]
    {"symbol": "ADAUSDT", "form": "none"},   # not named: split and retry until it is found
    {"count": 1, "form": "none"},            # one transient refusal of the whole first request
], ids=["named", "go-list", "unnamed", "transient"])
def test_a_rejected_resubscribe_keeps_every_popular_pair(sim, fault):
    """Item 7: after a reconnect Bybit refuses the 10-topic resubscribe because of one pair. Every
    other popular topic comes back at once, nobody gets upstream_rejected, the refused popular
    pair is retried with backoff (in /ws/stats and the logs) and comes back when the exchange
    takes it again."""
    gw = gateway(sim)
    try:
        btc = subscribe(gw, "rej1", "BTCUSDT", ["ticker"])
        ada = subscribe(gw, "rej2", "ADAUSDT", ["ticker"])
        seen: list[dict[str, Any]] = []
        collect_until(btc, lambda m: m.get("type") == "data", 10, seen)
        collect_until(ada, lambda m: m.get("type") == "data", 10, seen)
        wait_until(lambda: POPULAR_TOPICS <= sim.spot_subscriptions(), 10, "the popular topics")
        before = spot_incarnation(gw)
        sim.inject({"fault": "reject_subscribe", "category": "spot", **fault})
        sim.inject({"fault": "close", "category": "spot"})
        restarted(gw, before)
        if "symbol" in fault:
            wait_until(lambda: sim.spot_subscriptions() >= POPULAR_TOPICS - ADA_TOPICS
                       and not ADA_TOPICS & sim.spot_subscriptions(), 20, "every other popular topic")
            def retrying() -> set[str]:
                return {r["topic"] for r in stats(gw)["bridge"].get("retrying", [])}

            wait_until(lambda: retrying() >= ADA_TOPICS, 20, "the refused pair in /ws/stats")
            assert retrying() == ADA_TOPICS
            gw.wait_for_log(lambda r: r.get("msg") == "exchange refused a popular pair; retrying"
                            and r.get("topic") in ADA_TOPICS, timeout=10)
            sim.inject({"fault": "resume"})
        wait_until(lambda: POPULAR_TOPICS <= sim.spot_subscriptions(), 30, "every popular topic back")
        collect_until(btc, lambda m: m.get("type") == "data", 10, seen)
        collect_until(ada, lambda m: m.get("type") == "data" and m["symbol"] == "ADAUSDT", 30, seen)
        wait_until(lambda: not stats(gw)["bridge"].get("retrying"), 10, "the retry list to empty")
        assert not [m for m in seen if m["type"] == "error"], [m for m in seen if m["type"] == "error"]
        btc.close(), ada.close()
    finally:
        gw.stop()
        sim.inject({"fault": "resume"})


def test_one_gap_with_300ms_to_the_exchange_is_exactly_one_resync(sim):
    """Item 8: a lost update while deltas are still in flight (requests take 300 ms to reach the
    exchange) is one resync and one unsubscribe/subscribe cycle, counted on both sides."""
    gw = gateway(sim, POPULAR_PAIRS="BTCUSDT")
    try:
        c = subscribe(gw, "gap1", "BTCUSDT", ["orderbook"])
        seen: list[dict[str, Any]] = []
        collect_until(c, lambda m: m.get("stream") == "orderbook.50" and m["data"]["bids"], 10, seen)
        topic = "spot:orderbook.50.BTCUSDT"
        subs, unsubs = sim.requests(topic, "subscribe"), sim.requests(topic, "unsubscribe")
        sim.inject({"fault": "latency", "ms": 300, "category": "spot"})
        sim.inject({"fault": "skip_u", "symbol": "BTCUSDT", "category": "spot"})
        collect_until(c, lambda m: m.get("stream") == "orderbook.50" and m["data"].get("resync"), 10, seen)
        collect_until(c, lambda m: m.get("stream") == "orderbook.50" and m["data"]["bids"], 10, seen)
        for _ in range(40):  # well past two round trips: any further resync would have shown
            collect_until(c, lambda m: m.get("stream") == "orderbook.50", 10, seen)
        assert sum(1 for m in seen if m.get("stream") == "orderbook.50" and m["data"].get("resync")) == 1
        assert metric(gw, "ws_exchange_book_resyncs_total", exchange="bybit", category="spot") == 1
        assert (sim.requests(topic, "subscribe") - subs, sim.requests(topic, "unsubscribe") - unsubs) == (1, 1)
        c.close()
    finally:
        gw.stop()
        sim.inject({"fault": "resume"})


@pytest.mark.parametrize(("fault", "timers"), [
    ({"fault": "silent", "category": "spot"}, {}),  # nothing at all, with the default ping timers
    ({"fault": "silent", "replies": True, "category": "spot"},  # pongs keep coming, data stopped
     {"UPSTREAM_PING_INTERVAL": "200", "UPSTREAM_STALE_AFTER": "1000"}),
], ids=["silent", "pongs-only"])
def test_a_silent_upstream_is_restarted_from_data_silence(sim, fault, timers):
    """Item 9: no market data for UPSTREAM_DATA_SILENCE (short here) restarts the stream, whatever
    the ping cycle says, and data flows again."""
    gw = gateway(sim, POPULAR_PAIRS="BTCUSDT", UPSTREAM_DATA_SILENCE="1000", **timers)
    try:
        c = subscribe(gw, "quiet1", "BTCUSDT", ["ticker"])
        seen: list[dict[str, Any]] = []
        collect_until(c, lambda m: m.get("stream") == "ticker", 10, seen)
        before = spot_incarnation(gw)
        sim.inject(fault)
        record = restarted(gw, before, timeout=10)
        assert record["exc_type"] == "StreamStale" and "market data" in record["exc_message"], record
        wait_until(lambda: spot_incarnation(gw) > before, 10, "the next incarnation")
        since = time.time() * 1000
        collect_until(c, lambda m: m.get("stream") == "ticker" and m["data"]["receivedAt"] > since, 10, seen)
        c.close()
    finally:
        gw.stop()
        sim.inject({"fault": "resume"})


def test_data_silence_defaults_to_ten_seconds():
    row = next(v for v in VARIABLES if v.name == "UPSTREAM_DATA_SILENCE")
    assert row.default == "10000"
    assert Settings.from_env({"JWT_SECRET": "x" * 40}).upstream_data_silence == 10.0
    assert StreamSettings(url="ws://127.0.0.1:9/unused").data_silence == 10.0
