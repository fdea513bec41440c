"""Peer: cryptofeed's ``Bybit`` feed on the ingest feed, on Bybit's **linear** endpoint.

Why linear: cryptofeed's Bybit feed routes tickers only to the linear
endpoint (its spot endpoint's ``channel_filter`` is book, trades and
candles), so book + trades + tickers for the same symbols exist only there.
The ingest feed serves linear in linear's shapes (acks with ``req_id``,
``L`` in trades, tickers as a snapshot then deltas of changed fields).

Endpoints: cryptofeed takes its addresses from the feed class's
``websocket_endpoints`` and ``rest_endpoints`` (``WebsocketEndpoint``,
``RestEndpoint``: its own override points); a subclass names the local
feed for both, with the same channel and instrument filters as the
library's linear endpoint. Its ``WSAsyncConn`` refuses any address that is
not ``wss://``, so the subclass gives it ``wss://127.0.0.1:…`` and sets the
connection's address back to ``ws://`` before it opens (no TLS, as for the
other peers and the gateway). Symbols are read from
``/v5/market/instruments-info`` (linear and spot), as the library does.

Subscriptions: ``L2_BOOK``, ``TRADES``, ``TICKER`` for every symbol as a
perpetual (``BTC-USDT-PERP``). cryptofeed always subscribes
``orderbook.200`` (the ingest feed serves that topic with the same book as
orderbook.50: at most 50 levels a side). It keeps its books in its C
``order_book`` extension; user callbacks count.

Frames are counted in ``message_handler`` (the feed's entry point for every
frame, before its JSON parse), wrapped by the subclass.
"""

from __future__ import annotations

import asyncio
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.peers.feedhandlers.common import Tally, read_config, reply, top_levels


def main() -> None:
    cfg = read_config()
    from cryptofeed import FeedHandler
    from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
    from cryptofeed.defines import FUNDING, FUTURES, INDEX, L2_BOOK, LIQUIDATIONS, OPEN_INTEREST, PERPETUAL, TICKER
    from cryptofeed.defines import TRADES as CF_TRADES
    from cryptofeed.exchanges import Bybit

    tally = Tally()
    channels = Bybit.websocket_channels
    rest = cfg["rest"]

    class LocalBybit(Bybit):  # type: ignore[misc]  # cryptofeed is not typed
        websocket_endpoints = [WebsocketEndpoint(
            cfg["ws"].rstrip("/").replace("ws://", "wss://", 1) + "/linear",
            instrument_filter=("TYPE", (FUTURES, PERPETUAL)),
            channel_filter=(channels[L2_BOOK], channels[CF_TRADES], channels[INDEX], channels[OPEN_INTEREST],
                            channels[FUNDING], channels[LIQUIDATIONS], channels[TICKER]),
            options={"compression": None})]
        rest_endpoints = [RestEndpoint(rest, routes=Routes([
            "/v5/market/instruments-info?&category=linear&status=Trading&limit=1000",
            "/v5/market/instruments-info?&category=spot&status=Trading&limit=1000"]))]

        def connect(self) -> list[Any]:
            """cryptofeed's connection refuses any address but ``wss://``: it is given one, and the connection's
            address is turned back to the feed's plain ``ws://`` before it opens (every peer and the gateway
            read the same plain WebSocket)."""
            out = super().connect()
            for conn, *_ in out:
                if conn.address.startswith("wss://127.0.0.1:"):
                    conn.address = "ws://" + conn.address[len("wss://"):]
            return out

        async def message_handler(self, msg: str, conn: Any, timestamp: float) -> None:
            head = msg[:48]
            at = head.find('"topic":"')
            if at >= 0:
                tally.frame(head[at + 9:head.find('"', at + 9)])
            try:
                await super().message_handler(msg, conn, timestamp)
            except Exception as exc:  # noqa: BLE001 - counted and reported (cryptofeed would reconnect)
                tally.error(exc)

    async def on_book(book: Any, receipt: float) -> None:
        tally.callbacks["orderbook"] += 1

    async def on_trade(trade: Any, receipt: float) -> None:
        tally.callbacks["publicTrade"] += 1

    async def on_ticker(ticker: Any, receipt: float) -> None:
        tally.callbacks["tickers"] += 1

    handler = FeedHandler(config={"uvloop": True, "log": {"filename": cfg["log"], "level": "WARNING"}})
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    symbols = [f"{s[:-4]}-USDT-PERP" for s in cfg["symbols"]]
    feed = LocalBybit(symbols=symbols, channels=[L2_BOOK, CF_TRADES, TICKER],
                      callbacks={L2_BOOK: on_book, CF_TRADES: on_trade, TICKER: on_ticker})
    handler.add_feed(feed)
    handler.run(start_loop=False, install_signal_handlers=False)

    async def control() -> None:
        reply({"ok": True, "library": f"cryptofeed {version('cryptofeed')}", "connections": 1})
        reader = asyncio.StreamReader(limit=1 << 26)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "stats":
                reply(tally.stats())
            elif cmd["cmd"] == "books":
                levels = int(cmd["levels"])
                books = {}
                for name, std in zip(cfg["symbols"], symbols, strict=True):
                    book = feed._l2_book.get(std)
                    if book is not None:
                        sides = book.book.to_dict()
                        books[name] = top_levels(sides["bid"].items(), sides["ask"].items(), levels)
                reply({"books": books})
            elif cmd["cmd"] == "exit":
                reply({"ok": True})
                break
        feed.stop()

    loop.run_until_complete(control())


if __name__ == "__main__":
    main()
