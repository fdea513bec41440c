"""Peer: ccxt's WebSocket side (``ccxt.pro.bybit``) on the ingest feed.

Endpoints: ccxt reads every URL from the exchange's ``urls`` (the documented
way to point it elsewhere): ``urls['api']['ws']['public']['spot']`` for the
stream, ``urls['api'][…]`` for REST, where ``load_markets`` reads
``/v5/market/instruments-info`` (the ingest feed answers it). Only spot
markets are loaded (``options['fetchMarkets']['types']``).

Subscriptions: ``watch_order_book(symbol, 50)``, ``watch_trades(symbol)``,
``watch_ticker(symbol)`` for every symbol, each in its own task that awaits
the next update for ever, as a trader's code does (one topic per request:
spot refuses more than 10 args, and ``watch_*_for_symbols`` would send them
all at once). ccxt keeps the books itself (``exchange.orderbooks``: a
snapshot resets, deltas go through ``storeArray``, size 0 deletes).

Frames are counted in ``handle_message`` (ccxt's entry point for every
parsed frame), wrapped by a subclass; the watch loops count their wake-ups
under ``callbacks`` (fewer than frames when updates arrive faster than a
task wakes: ccxt hands the latest).
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


async def main() -> None:
    cfg = read_config()
    import ccxt.pro as ccxtpro

    tally = Tally()

    class CountingBybit(ccxtpro.bybit):  # type: ignore[misc]  # ccxt's classes are not typed for subclassing
        def handle_message(self, client: Any, message: Any) -> Any:
            topic = message.get("topic") if isinstance(message, dict) else None
            if isinstance(topic, str):
                tally.frame(topic)
            return super().handle_message(client, message)

    exchange = CountingBybit({"options": {"fetchMarkets": {"types": ["spot"]}}})
    for name in ("spot", "futures", "v2", "public", "private"):
        exchange.urls["api"][name] = cfg["rest"]
    exchange.urls["api"]["ws"]["public"]["spot"] = cfg["ws"].rstrip("/") + "/spot"
    await exchange.load_markets()
    depth = int(cfg.get("depth", 50))
    by_id = {m["id"]: m["symbol"] for m in exchange.markets.values() if m.get("spot")}

    async def watch(kind: str, symbol: str) -> None:
        while True:
            try:
                if kind == "orderbook":
                    await exchange.watch_order_book(symbol, depth)
                elif kind == "publicTrade":
                    await exchange.watch_trades(symbol)
                else:
                    await exchange.watch_ticker(symbol)
                tally.callbacks[kind] += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported; a trader's loop would retry too
                tally.error(exc)
                await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(watch(kind, by_id[s])) for s in cfg["symbols"]
             for kind in ("orderbook", "publicTrade", "tickers")]
    reply({"ok": True, "library": f"ccxt {version('ccxt')}", "connections": 1})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "stats":
            reply(tally.stats())
        elif cmd["cmd"] == "books":
            levels = int(cmd["levels"])
            books = {}
            for market_id in cfg["symbols"]:
                book = exchange.orderbooks.get(by_id[market_id])
                if book is not None:
                    books[market_id] = top_levels(book["bids"], book["asks"], levels)
            reply({"books": books})
        elif cmd["cmd"] == "exit":
            reply({"ok": True})
            break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await exchange.close()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())
