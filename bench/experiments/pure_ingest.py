"""The ingest path without sockets: CPU per exchange frame (evidence for docs/performance.md, (f)).

    python bench/experiments/pure_ingest.py [--root PATH] [--clients 1] [--reads 400]

Scenario (f)'s frames (``bench/ingest_data.py``: 50 symbols × book deltas,
trades and tickers, the feed's own byte templates) are framed as the
exchange sends them, cut into 64 KiB reads and handed to the exchange stream
actor's handler (``ExchangeStreamActor.on_receive`` with ``UpstreamFrames``,
as its reader does), which decodes, keeps the books and tickers and hands
each update to the ``MarketPublisher``, the channels and one outbox per
client on a socket that takes everything. Printed: process CPU time per
exchange frame over the reads after the first 20 (the snapshots). No
network, no feed process, no clients: what is left is the Python work of
the path, so two trees (``--root``) can be compared on the same minutes;
the machine is shared, so alternate them and compare minimums.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2]),
                        help="the gateway tree to measure (its bench/ is used for the frames)")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--reads", type=int, default=400, help="64 KiB reads (~260 frames each)")
    args = parser.parse_args()
    sys.path.insert(0, args.root)

    import gevent
    from prometheus_client import CollectorRegistry

    import metrics.definitions as md
    from actors.bridge import MarketPublisher
    from actors.channel import ChannelActor
    from actors.exchange_stream import ExchangeStreamActor, StreamSettings, UpstreamFrames
    from bench.ingest_data import symbols
    from bench.ingest_feed import Feed
    from market.bybit import BYBIT
    from protocol.channels import market_key
    from simulator.protocol import Category
    from transport.frames import ClientFrameReader
    from transport.outbox import Outbox

    class Sock:  # takes everything at once
        def send(self, data: bytes) -> int:
            return len(data)

        def sendall(self, data: bytes) -> None:
            pass

    class Ctx:
        incarnation, child_id, kind, supervisor, _actor = 1, "x", "x", None, None

    class Hub:
        def __init__(self) -> None:
            self.local_channels: dict[Any, Any] = {}
            self.metrics = md.build(CollectorRegistry())

        def publish(self, key: Any, msg: Any) -> bool:
            return False

    class Bridge:
        def tell(self, message: Any) -> None:
            pass

    hub = Hub()
    publisher = MarketPublisher(hub)
    names = symbols(50)
    actor = ExchangeStreamActor(Ctx(), BYBIT, "spot", StreamSettings(url="ws://127.0.0.1:1"), Bridge(), (),
                                hub.metrics, sink=publisher.handle)
    feed = Feed(names, 7, 500, 256)
    topics = []
    for s in names:
        for name in (f"orderbook.50.{s}", f"publicTrade.{s}", f"tickers.{s}"):
            topic = feed.topic(Category.SPOT, name)
            topic.subscribers.append(object())
            topics.append(topic)
            actor.wanted.add(name)
            actor.subscribed.add(name)
    feed.reschedule()
    outboxes = [Outbox(Sock(), max_bytes=1 << 30, write_timeout=5) for _ in range(args.clients)]
    for s in names:
        for stream in ("orderbook.50", "trades", "ticker"):
            channel = ChannelActor(market_key("bybit", "spot", s, stream), "market-data", on_idle=lambda *a: None,
                                   on_count=lambda *a: None, sent_counter=None, local=hub.local_channels)
            for i, outbox in enumerate(outboxes):
                channel.subscribers[f"s{i}"] = outbox
    stamp = str(int(time.time() * 1000)).encode()
    wire = bytearray(b"".join(t.snapshot() for t in topics if t.snapshot() is not None))
    schedule = feed.schedule
    for i in range(args.reads * 260):
        wire += schedule[i % len(schedule)].next_frame(stamp)
    reader = ClientFrameReader(16 << 20)
    reads = [[p for op, p in reader.feed(bytes(wire[o:o + 65536])) if op in (1, 2)]
             for o in range(0, len(wire), 65536)]

    def run(chunk: list[list[bytes]]) -> int:
        n = 0
        for texts in chunk:
            actor._queued = len(texts)  # nothing behind the read: the stream keeps up
            actor.on_receive(UpstreamFrames(actor.conn, texts, time.time()))
            n += len(texts)
            gevent.sleep(0)  # the loop turn: the outboxes write
        return n

    run(reads[:20])  # the snapshots, and warm caches
    gc.collect()
    started = time.process_time()
    frames = run(reads[20:])
    cpu = time.process_time() - started
    written = sum(o.bytes_written for o in outboxes)
    print(f"clients={args.clients}: {cpu / frames * 1e6:.2f} us CPU per exchange frame over {frames} frames; "
          f"{written / frames:.0f} bytes to clients per frame")


if __name__ == "__main__":
    main()
