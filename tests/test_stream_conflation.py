"""Tickers are conflated at the exchange stream only while it is behind its socket.

The stream's real reader (``ExchangeStreamActor._read_loop``: our framing,
the inbox bound) reads a socket that hands it prepared chunks of Bybit spot
ticker frames; the test plays the actor's mailbox (it handles what the
reader tells, in order, without yielding while anything is queued, as the
actor does). What is checked is what the stream emits towards clients and
the ``ws_market_data_conflated_total{stage="channel"}`` it counts:

- a stream that keeps up emits every ticker, even when a read waits behind
  the one being handled (a fast, healthy feed: scenario (a)'s firehose);
- once the reader had to stop (INBOX_HIGH frames waiting: a burst), each
  read's tickers are conflated per symbol until the backlog is handled,
  every conflated one is counted, the last read emits every ticker, and
  the newest value of each symbol always goes out.

And a book's one view per read is a reset when the read held its snapshot.
"""

from __future__ import annotations

import json
from typing import Any

import gevent
import pytest
from prometheus_client import CollectorRegistry

import metrics.definitions as md
from actors.exchange_stream import (
    INBOX_HIGH,
    ExchangeStreamActor,
    MarketData,
    StreamSettings,
    UpstreamFrames,
    UpstreamLost,
)
from market.bybit import BYBIT
from transport.frames import Opcode, encode_frame

pytestmark = pytest.mark.unit

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def _ticker(symbol: str, n: int) -> bytes:
    """A spot ticker snapshot (Bybit's shape, docs/bybit-v5.md) whose lastPrice carries ``n``."""
    return json.dumps({"topic": f"tickers.{symbol}", "ts": 1673853746003 + n, "type": "snapshot", "cs": n,
                       "data": {"symbol": symbol, "lastPrice": f"{20000 + n}.5", "volume24h": "6780.8"}},
                      separators=(",", ":")).encode()


class _Socket:
    """Hands the reader one prepared chunk per ``recv``; yields to the test's mailbox every
    ``yield_every`` reads, and at every read from read ``paced_from`` on (what a socket with nothing
    more to read does); then the end of the stream."""

    def __init__(self, chunks: list[bytes], yield_every: int, paced_from: int | None = None) -> None:
        self.chunks, self.yield_every, self.paced_from, self.reads = list(chunks), yield_every, paced_from, 0

    def recv(self, _size: int) -> bytes:
        self.reads += 1
        paced = self.paced_from is not None and self.reads > self.paced_from
        if paced or self.reads % self.yield_every == 0 or not self.chunks:
            gevent.sleep(0)
        return self.chunks.pop(0) if self.chunks else b""


class _WS:
    def __init__(self, sock: _Socket) -> None:
        self.sock = sock

    def pong(self, _payload: bytes) -> None:
        pass


class _Ref:
    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)


class _Ctx:
    incarnation, child_id, kind, supervisor, _actor = 1, "bybit-spot", "exchange_stream", None, None


def _run(sock: _Socket) -> tuple[list[tuple[str, str]], float]:
    """Every ticker the stream emitted (symbol, lastPrice), in order, and what it counted as conflated."""
    registry = CollectorRegistry()
    metrics = md.build(registry)
    emitted: list[tuple[str, str]] = []

    def sink(item: Any) -> None:
        if isinstance(item, MarketData):
            data = json.loads(str(item.data))
            emitted.append((data["symbol"], data["lastPrice"]))

    actor = ExchangeStreamActor(_Ctx(), BYBIT, "spot", StreamSettings(url="ws://127.0.0.1:1"), _Ref(),
                                (), metrics, sink=sink)
    for symbol in SYMBOLS:
        actor.wanted.add(f"tickers.{symbol}")
        actor.subscribed.add(f"tickers.{symbol}")
    ref = _Ref()
    actor._actor_ref = ref  # type: ignore[assignment]  # (pykka's own attribute: the reader tells the mailbox here)
    actor.ws = _WS(sock)  # type: ignore[assignment]
    reader = gevent.spawn(actor._read_loop, actor.conn)
    while not reader.dead or ref.told:
        if ref.told:  # the mailbox: handled in order, no yield while something waits
            message = ref.told.pop(0)
            if type(message) is not UpstreamLost:  # (the end of the prepared stream)
                actor.on_receive(message)
        else:
            gevent.sleep(0)
    conflated = registry.get_sample_value("ws_market_data_conflated_total", {"stage": "channel"}) or 0.0
    return emitted, conflated


def _chunks(reads: int, per_read: int) -> tuple[list[bytes], list[tuple[str, str]]]:
    """``reads`` chunks of ``per_read`` tickers alternating between the symbols; what was sent."""
    chunks, sent, n = [], [], 0
    for _ in range(reads):
        chunk = bytearray()
        for _ in range(per_read):
            symbol = SYMBOLS[n % 2]
            chunk += encode_frame(Opcode.TEXT, _ticker(symbol, n))
            sent.append((symbol, f"{20000 + n}.5"))
            n += 1
        chunks.append(bytes(chunk))
    return chunks, sent


def test_a_stream_that_keeps_up_emits_every_ticker_with_a_read_waiting_behind():
    # Three reads at a time, fewer frames than INBOX_HIGH in all (the reader never has to stop):
    # reads are handled with others waiting behind them.
    chunks, sent = _chunks(reads=9, per_read=100)
    assert len(sent) < INBOX_HIGH
    emitted, conflated = _run(_Socket(chunks, yield_every=3))
    assert emitted == sent
    assert conflated == 0


def test_a_stream_whose_reader_had_to_stop_conflates_until_it_has_caught_up():
    per_read = 200
    chunks, sent = _chunks(reads=25, per_read=per_read)  # 5,000 at once: the reader stops at INBOX_HIGH
    emitted, conflated = _run(_Socket(chunks, yield_every=10 ** 6))
    assert len(sent) > 2 * INBOX_HIGH
    # Fewer went out, and each one that did not is counted.
    assert len(emitted) < len(sent) / 4
    assert conflated == len(sent) - len(emitted)
    # In order, nothing invented, and the newest of each symbol went out.
    order = {item: i for i, item in enumerate(sent)}
    assert [order[item] for item in emitted] == sorted(order[item] for item in emitted)
    for symbol in SYMBOLS:
        assert [e for e in emitted if e[0] == symbol][-1] == [s for s in sent if s[0] == symbol][-1]
    # The last read of the backlog (nothing behind it) emitted every ticker.
    assert emitted[-per_read:] == sent[-per_read:]


def test_after_catching_up_a_stream_emits_every_ticker_again():
    chunks, sent = _chunks(reads=35, per_read=100)
    # 25 reads at once (the reader stops at INBOX_HIGH), then one read at a time: it keeps up.
    emitted, conflated = _run(_Socket(chunks, yield_every=10 ** 6, paced_from=25))
    assert conflated > 0
    assert emitted[-1000:] == sent[-1000:]


def _book(kind: str, u: int, bid: str) -> bytes:
    return json.dumps({"topic": "orderbook.50.BTCUSDT", "type": kind, "ts": 1673853746003 + u, "cts": 1,
                       "data": {"s": "BTCUSDT", "b": [[bid, "1"]], "a": [["30000.5", "2"]], "u": u, "seq": u}},
                      separators=(",", ":")).encode()


def test_a_snapshot_and_deltas_in_one_read_give_one_view_that_is_a_reset():
    # A book's view is made once per read, for its newest state; when the read held the snapshot (the
    # first after a subscribe or a resync), that view says reset: true even though deltas followed it.
    views: list[dict[str, Any]] = []

    def sink(item: Any) -> None:
        if isinstance(item, MarketData):
            views.append(json.loads(str(item.data)))

    actor = ExchangeStreamActor(_Ctx(), BYBIT, "spot", StreamSettings(url="ws://127.0.0.1:1"), _Ref(), (), None,
                                sink=sink)
    actor.wanted.add("orderbook.50.BTCUSDT")
    actor.subscribed.add("orderbook.50.BTCUSDT")
    read = [_book("snapshot", 100, "29999.5"), _book("delta", 101, "29999.6"), _book("delta", 102, "29999.7")]
    actor._queued = len(read)  # as the reader counts what it told
    actor.on_receive(UpstreamFrames(actor.conn, read, 1.0))
    actor._queued = 1
    actor.on_receive(UpstreamFrames(actor.conn, [_book("delta", 103, "29999.8")], 1.0))
    assert [(v["updateId"], v["reset"]) for v in views] == [(102, True), (103, False)]
    assert views[0]["bids"][0] == ["29999.7", "1"]


def test_an_update_whose_direct_publish_fails_goes_through_the_channels_inbox(caplog):
    # MarketPublisher calls the local channel object directly; if that call raises (a bug), the update
    # is logged and sent again through the hub (the channel's inbox, under its supervision): not lost.
    from actors.bridge import MarketPublisher
    from actors.messages import Publish
    from protocol.channels import market_key

    key = market_key("bybit", "spot", "BTCUSDT", "ticker")

    class Broken:
        def publish_data(self, *args: Any) -> bool:
            raise RuntimeError("a bug in the channel")

    class Hub:
        def __init__(self) -> None:
            self.local_channels = {key: Broken()}
            self.sent: list[tuple[Any, Any]] = []

        def publish(self, k: Any, message: Any) -> bool:
            self.sent.append((k, message))
            return True

    hub = Hub()
    publisher = MarketPublisher(hub)
    publisher.handle(MarketData("bybit", "spot", "tickers.BTCUSDT", {"lastPrice": "1.5"}, 1000, 1001))
    ((sent_key, message),) = hub.sent
    assert sent_key == key and isinstance(message, Publish) and message.data == {"lastPrice": "1.5"}
    assert "publishing to" in caplog.text and "directly failed" in caplog.text
