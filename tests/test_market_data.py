"""Live market data end to end: simulator → exchange stream actor → bridge → channel → client.

The simulator runs in its own process (``python -m simulator``) and speaks
Bybit v5 exactly; faults are injected through its control API while
clients are subscribed, and the tests assert what the clients see.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from decimal import Decimal

import pytest

from tests.harness import Client, GatewayProcess


@pytest.fixture(scope="module")
def gw(sim):
    env = {
        "MARKET_SOURCE": "bybit",
        "BYBIT_WS_URL": f"ws://127.0.0.1:{sim.port}/v5/public",
        "POPULAR_PAIRS": "BTCUSDT",
        "UPSTREAM_PING_INTERVAL": "200",
        "UPSTREAM_STALE_AFTER": "1000",
        "RESTART_BASE": "50",
        "RESTART_CAP": "400",
        "RESTART_FLOOR": "20",
        "RESTART_RESET_AFTER": "300",
        "CIRCUIT_COOLDOWN": "500",
        "MARKET_UNSUBSCRIBE_GRACE": "300",
        "STATUS_INTERVAL": "300",
    }
    with GatewayProcess(env) as g:
        deadline = time.monotonic() + 10
        while not any(r.get("msg") == "exchange stream connected" for r in g.json_logs()):
            assert time.monotonic() < deadline, "\n".join(g.lines[-30:])
            time.sleep(0.05)
        yield g
        sim.inject({"fault": "resume"})


def subscribe(gw: GatewayProcess, user: str, symbol: str, streams: list[str], category: str = "spot") -> Client:
    c = gw.connect(user)
    c.recv()
    reply = c.request({"type": "subscribe", "channel": "market-data",
                       "data": {"symbol": symbol, "category": category, "streams": streams}})
    assert reply["type"] == "subscribed", reply
    return c


def collect(c: Client, seconds: float, predicate=lambda m: True) -> list[dict]:
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            m = c.recv(max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        except Exception as exc:
            if "timed out" in str(exc):
                break
            raise
        if predicate(m):
            out.append(m)
    return out


def assert_uncrossed(view: dict) -> None:
    if view["bids"] and view["asks"]:
        assert Decimal(view["bids"][0][0]) < Decimal(view["asks"][0][0]), view
    prices = [Decimal(p) for p, _ in view["bids"]]
    assert prices == sorted(prices, reverse=True)
    prices = [Decimal(p) for p, _ in view["asks"]]
    assert prices == sorted(prices)


def wait_data(c: Client, stream: str, timeout: float = 10.0) -> dict:
    return c.recv_until(lambda m: m["type"] == "data" and m.get("stream") == stream, timeout)


def test_ticker_trades_book_and_candles_arrive_exact(gw):
    c = subscribe(gw, "md1", "BTCUSDT", ["ticker", "trades", "orderbook", "kline.1"])
    seen: dict[str, list[dict]] = {}
    for m in collect(c, 2.0, lambda m: m["type"] == "data"):
        assert m["channel"] == "market-data" and m["symbol"] == "BTCUSDT"
        seen.setdefault(m["stream"], []).append(m)
    assert set(seen) == {"ticker", "trades", "orderbook.50", "kline.1"}
    for stream, msgs in seen.items():
        seqs = [m["seq"] for m in msgs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream  # no gaps
    ticker = seen["ticker"][-1]["data"]
    assert isinstance(ticker["lastPrice"], str) and Decimal(ticker["lastPrice"]) > 0
    assert isinstance(ticker["ts"], int) and isinstance(ticker["receivedAt"], int)
    trade = seen["trades"][-1]["data"]["trades"][0]
    assert trade["side"] in ("buy", "sell") and isinstance(trade["price"], str)
    for m in seen["orderbook.50"]:
        assert_uncrossed(m["data"])
    kline = seen["kline.1"][-1]["data"]
    assert kline["interval"] == "1" and isinstance(kline["confirm"], bool) and isinstance(kline["open"], str)
    c.close()


def test_linear_tickers_are_always_full(gw):
    c = subscribe(gw, "md2", "ETHUSDT", ["ticker"], category="linear")
    msgs = collect(c, 1.5, lambda m: m["type"] == "data")
    assert len(msgs) >= 5
    for m in msgs:
        data = m["data"]
        assert data["category"] == "linear"
        for field in ("lastPrice", "markPrice", "indexPrice", "fundingRate", "high24h", "volume24h"):
            assert isinstance(data[field], str), (field, data)
    c.close()


def test_new_subscriber_gets_latest_ticker_and_book_at_once(gw, sim):
    warm = subscribe(gw, "md3", "BTCUSDT", ["ticker", "orderbook"])
    wait_data(warm, "ticker"), wait_data(warm, "orderbook.50")
    sim.inject({"fault": "silent", "seconds": 0.8, "category": "spot"})
    time.sleep(0.1)
    late = subscribe(gw, "md4", "BTCUSDT", ["ticker", "orderbook"])
    first = collect(late, 0.4, lambda m: m["type"] == "data")
    assert {m["stream"] for m in first} == {"ticker", "orderbook.50"}  # while the exchange is silent
    time.sleep(0.5)  # let the silence end before the next test
    wait_data(warm, "ticker")
    warm.close(), late.close()


def test_unknown_symbol_is_answered_with_an_error_and_the_stream_keeps_going(gw):
    good = subscribe(gw, "md5", "BTCUSDT", ["ticker"])
    bad = subscribe(gw, "md6", "NOPEINVALIDUSDT", ["ticker"])
    err = bad.recv_until(lambda m: m["type"] == "error")
    assert err["code"] == "upstream_rejected" and err["symbol"] == "NOPEINVALIDUSDT"
    assert "Invalid symbol" in err["message"]
    n = len(collect(good, 0.5, lambda m: m["type"] == "data"))
    assert n >= 3
    # The connection forgot the revoked subscription: subscribing again is a fresh attempt.
    again = bad.request({"type": "subscribe", "channel": "market-data", "data": {"symbol": "NOPEINVALIDUSDT"}})
    assert again["type"] == "subscribed" and "already" not in again
    assert bad.recv_until(lambda m: m["type"] == "error")["code"] == "upstream_rejected"
    stats = json.loads(urllib.request.urlopen(gw.http + "/ws/stats", timeout=5).read())
    spot = next(ch for ch in stats["supervisor"]["children"] if ch["child_id"] == "exchange:bybit:spot")
    assert spot["state"] == "running"
    good.close(), bad.close()


def test_stats_have_the_bridge_section(gw):
    c = subscribe(gw, "md7", "SOLUSDT", ["ticker"])
    wait_data(c, "ticker")
    stats = json.loads(urllib.request.urlopen(gw.http + "/ws/stats", timeout=5).read())
    bridge = stats["bridge"]
    assert bridge["initialized"] is True and bridge["exchanges"]["bybit"]["connected"] is True
    assert "tickers.SOLUSDT" in bridge["exchanges"]["bybit"]["activeSubscriptions"]
    assert "market-data.bybit.SOLUSDT" in bridge["activeSubscriptions"]
    assert bridge["subscriptions"] == len(bridge["activeSubscriptions"])
    c.close()


def test_last_subscriber_leaving_unsubscribes_upstream_after_grace(gw, sim):
    c = subscribe(gw, "md8", "XRPUSDT", ["ticker"])
    wait_data(c, "ticker")

    def upstream_has() -> bool:
        return any("tickers.XRPUSDT" in conn["subscriptions"] for conn in sim.state()["connections"])

    assert upstream_has()
    c.close()
    deadline = time.monotonic() + 5
    while upstream_has():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_time_sync_and_system_health_channels(gw):
    c = gw.connect("md9")
    c.recv()
    c.request({"type": "subscribe", "channel": "system-health"})
    c.request({"type": "subscribe", "channel": "time-sync"})
    health = c.recv_until(lambda m: m.get("channel") == "system-health")["data"]
    assert health["exchanges"]["bybit.spot"]["state"] == "connected"
    assert {"restarts", "lagMs", "bookResyncs", "subscriptions"} <= set(health["exchanges"]["bybit.spot"])
    ts = c.recv_until(lambda m: m.get("channel") == "time-sync")["data"]
    assert abs(ts["serverTime"] - time.time() * 1000) < 5000
    assert "offsetMs" in ts["exchanges"]["bybit.spot"]
    c.close()


# -- faults: each injected with clients subscribed ----------------------------------------


def _restarted(gw: GatewayProcess, since: int) -> dict:
    # "restarted", or "circuit_half_open" when the new incarnation is a probe of an open circuit
    return gw.wait_for_log(lambda r: r.get("logger") == "gateway.supervisor"
                           and r.get("event") in ("restarted", "circuit_half_open")
                           and r.get("child_id") == "exchange:bybit:spot" and r.get("incarnation", 0) > since,
                           timeout=10)


def _incarnation(gw: GatewayProcess) -> int:
    stats = json.loads(urllib.request.urlopen(gw.http + "/ws/stats", timeout=5).read())
    return next(ch for ch in stats["supervisor"]["children"] if ch["child_id"] == "exchange:bybit:spot")["incarnation"]


@pytest.mark.parametrize("fault", [
    {"fault": "close", "category": "spot"},
    {"fault": "close", "abrupt": True, "category": "spot"},
    {"fault": "silent", "seconds": 3, "category": "spot"},
])
def test_stream_faults_restart_and_data_resumes(gw, sim, fault):
    c = subscribe(gw, "mdf", "BTCUSDT", ["ticker", "orderbook"])
    wait_data(c, "ticker")
    before = _incarnation(gw)
    start = time.monotonic()
    sim.inject(fault)
    _restarted(gw, before)
    # Data flows again, from the new incarnation: a reset book snapshot arrives.
    wait_data(c, "ticker", 10)
    snap = c.recv_until(lambda m: m.get("stream") == "orderbook.50" and m["data"].get("reset") is True, 10)
    assert_uncrossed(snap["data"])
    print(f"{fault['fault']}{'/abrupt' if fault.get('abrupt') else ''}: data again after "
          f"{time.monotonic() - start:.2f}s")
    assert _incarnation(gw) > before
    sim.inject({"fault": "resume"})
    c.close()


def test_refused_connections_are_retried_with_backoff(gw, sim):
    c = subscribe(gw, "mdr", "BTCUSDT", ["ticker"])
    wait_data(c, "ticker")
    before = _incarnation(gw)
    sim.inject({"fault": "refuse", "seconds": 1.0, "category": "spot"})
    sim.inject({"fault": "close", "category": "spot"})
    start = time.monotonic()
    failed = gw.wait_for_log(lambda r: r.get("event") in ("restart_scheduled", "circuit_opened")
                             and r.get("phase") == "start" and r.get("child_id") == "exchange:bybit:spot",
                             timeout=10)
    assert failed["level"] in ("WARNING", "ERROR") and failed["next_attempt_at"]
    _restarted(gw, before)
    wait_data(c, "ticker", 15)
    print(f"refuse 1s: data again after {time.monotonic() - start:.2f}s")
    c.close()


def test_garbage_is_dropped_and_counted(gw, sim):
    c = subscribe(gw, "mdg", "BTCUSDT", ["ticker"])
    wait_data(c, "ticker")
    before = _incarnation(gw)
    sim.inject({"fault": "garbage", "count": 5, "kind": "mixed", "category": "spot"})
    msgs = collect(c, 1.0, lambda m: m["type"] == "data")
    assert msgs and all(isinstance(m["data"]["lastPrice"], str) for m in msgs)
    assert _incarnation(gw) == before  # a few bad frames do not cost a reconnect
    metrics = urllib.request.urlopen(gw.http + "/metrics", timeout=5).read().decode()
    assert re.search(r'ws_exchange_bad_messages_total\{exchange="bybit",reason="unparseable"\} [1-9]', metrics)
    c.close()


def test_lost_book_update_resyncs_and_clients_are_told(gw, sim):
    c = subscribe(gw, "mds", "BTCUSDT", ["orderbook"])
    wait_data(c, "orderbook.50")
    sim.inject({"fault": "skip_u", "symbol": "BTCUSDT", "category": "spot"})
    reset = c.recv_until(lambda m: m.get("stream") == "orderbook.50" and m["data"].get("resync") is True, 10)
    assert reset["data"]["bids"] == [] and reset["data"]["asks"] == []
    snap = c.recv_until(lambda m: m.get("stream") == "orderbook.50" and m["data"]["bids"], 10)
    assert snap["data"]["reset"] is True
    assert_uncrossed(snap["data"])
    for m in collect(c, 0.5, lambda m: m.get("stream") == "orderbook.50"):
        assert_uncrossed(m["data"])
    metrics = urllib.request.urlopen(gw.http + "/metrics", timeout=5).read().decode()
    assert re.search(r'ws_exchange_book_resyncs_total\{category="spot",exchange="bybit"\} [1-9]', metrics)
    c.close()


def test_u1_snapshot_resets_the_book(gw, sim):
    c = subscribe(gw, "mdu", "BTCUSDT", ["orderbook"])
    wait_data(c, "orderbook.50")
    sim.inject({"fault": "u1_snapshot", "category": "spot"})
    snap = c.recv_until(lambda m: m.get("stream") == "orderbook.50" and m["data"]["updateId"] == 1, 10)
    assert snap["data"]["reset"] is True
    for m in collect(c, 0.5, lambda m: m.get("stream") == "orderbook.50"):
        assert_uncrossed(m["data"])
        assert m["data"].get("resync") is not True  # u=1 is a reset, not a gap
    c.close()


def test_snapshot_before_ack_is_accepted(gw, sim):
    sim.inject({"fault": "snapshot_before_ack", "count": 1, "category": "spot"})
    c = subscribe(gw, "mdb", "DOGEUSDT", ["orderbook"])
    first = wait_data(c, "orderbook.50")
    assert first["data"]["bids"] and first["data"]["asks"]
    assert_uncrossed(first["data"])
    c.close()


def test_rejected_subscribe_fault_reaches_the_client(gw, sim):
    sim.inject({"fault": "reject_subscribe", "count": 1, "category": "spot"})
    c = subscribe(gw, "mdj", "LTCUSDT", ["ticker"])
    err = c.recv_until(lambda m: m["type"] == "error")
    assert err["code"] == "upstream_rejected"
    assert _incarnation(gw) >= 1
    c.close()


def test_metrics_follow_the_data_path(gw):
    c = subscribe(gw, "mdm", "BTCUSDT", ["ticker", "orderbook"])
    collect(c, 1.0, lambda m: m["type"] == "data")
    text = urllib.request.urlopen(gw.http + "/metrics", timeout=5).read().decode()

    def value(pattern: str) -> float:
        match = re.search(pattern + r" ([0-9.e+-]+)$", text, re.MULTILINE)
        assert match, pattern
        return float(match.group(1))

    assert value(r"ws_fanout_latency_seconds_count") > 0
    assert value(r'ws_subscriptions\{channel="market-data"\}') >= 2
    assert value(r"ws_users") >= 1
    assert value(r'ws_exchange_connected\{category="spot",exchange="bybit"\}') == 1
    assert value(r'ws_exchange_messages_total\{category="spot",exchange="bybit"\}') > 10
    assert value(r'ws_messages_sent_total\{channel="market-data",type="data"\}') > 10
    assert value(r'ws_messages_sent_total\{channel="-",type="subscribed"\}') >= 1
    assert 'ws_supervisor_circuit_state{child_id="exchange:bybit:spot"}' in text
    c.close()


def test_make_run_refuses_an_unknown_symbol_while_btc_keeps_streaming():
    """``make run`` as a trader sees it: the embedded simulator lists believable pairs only.

    ``NOPEUSDT`` is refused upstream exactly as Bybit refuses it, and the
    BTCUSDT subscription on the same connection keeps receiving data at a
    believable price.
    """
    with GatewayProcess({"MARKET_SOURCE": "simulator", "POPULAR_PAIRS": "BTCUSDT"}) as g:
        g.wait_for_log(lambda r: r.get("msg") == "exchange stream connected", timeout=10)
        c = g.connect("mdnope")
        c.recv()

        def subscribe_on(symbol: str) -> None:
            c.send({"type": "subscribe", "channel": "market-data", "data": {"symbol": symbol, "streams": ["ticker"]}})
            reply = c.recv_until(lambda m: m["type"] == "subscribed" and m["data"]["symbol"] == symbol)
            assert reply["channel"] == "market-data", reply

        subscribe_on("BTCUSDT")
        first = wait_data(c, "ticker")
        assert first["symbol"] == "BTCUSDT" and 80_000 < Decimal(first["data"]["lastPrice"]) < 110_000
        subscribe_on("NOPEUSDT")
        err = c.recv_until(lambda m: m["type"] == "error", 10)
        assert err["code"] == "upstream_rejected" and err["symbol"] == "NOPEUSDT", err
        assert err["message"] == "bybit rejected NOPEUSDT (ticker): Invalid symbol :[tickers.NOPEUSDT]", err
        after = collect(c, 1.0, lambda m: m["type"] == "data")
        assert len(after) >= 3 and {m["symbol"] for m in after} == {"BTCUSDT"}
        assert all(80_000 < Decimal(m["data"]["lastPrice"]) < 110_000 for m in after)
        c.close()
