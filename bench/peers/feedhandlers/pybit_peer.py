"""Peer: pybit (Bybit's own Python SDK), ``pybit.unified_trading.WebSocket`` on the ingest feed.

Endpoint: pybit builds its public URL from the module constant
``PUBLIC_WSS = "wss://{SUBDOMAIN}.{DOMAIN}.com/v5/public/{CHANNEL_TYPE}"``
(``testnet``/``domain``/``tld`` only fill in the host name), so the local
feed is named by setting that constant before the ``WebSocket`` is made;
nothing else of the library is changed.

Subscriptions: ``orderbook_stream(50, …)``, ``trade_stream``, ``ticker_stream``
for every symbol, ten symbols per call (pybit sends one request per call and
spot refuses more than 10 args). pybit keeps each book itself
(``ws.data[topic]``: a snapshot replaces it, deltas update, insert or delete
levels; inserted levels are appended unsorted, so the book is sorted here
before it is compared) and deep-copies it into every book and ticker
callback. Its WebSocket runs in websocket-client's thread; the callback
counts.

Frames are counted in ``_handle_incoming_message`` (pybit's entry point for
every parsed frame), wrapped by a subclass.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.peers.feedhandlers.common import Tally, chunks, read_config, reply, top_levels


def main() -> None:
    cfg = read_config()
    import pybit.unified_trading as unified

    tally = Tally()
    unified.PUBLIC_WSS = cfg["ws"].rstrip("/") + "/{CHANNEL_TYPE}"

    class CountingWebSocket(unified.WebSocket):  # type: ignore[misc]  # pybit has no type hints
        def _handle_incoming_message(self, message: dict[str, Any]) -> None:
            topic = message.get("topic")
            if topic:
                tally.frame(topic)
            try:
                super()._handle_incoming_message(message)
            except Exception as exc:  # noqa: BLE001 - counted and reported; pybit would kill its thread
                tally.error(exc)

    def callback(message: dict[str, Any]) -> None:  # what a trader's code gets: the merged book, a copy
        tally.callbacks[message["topic"].split(".", 1)[0]] += 1

    ws = CountingWebSocket(channel_type="spot", testnet=False, ping_interval=20, ping_timeout=10, retries=3,
                           restart_on_error=False)
    depth = int(cfg.get("depth", 50))
    for part in chunks(cfg["symbols"], 10):
        ws.orderbook_stream(depth, part, callback)
        ws.trade_stream(part, callback)
        ws.ticker_stream(part, callback)
    reply({"ok": True, "library": f"pybit {version('pybit')}", "connections": 1})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "stats":
            reply(tally.stats())
        elif cmd["cmd"] == "books":
            levels = int(cmd["levels"])
            books = {}
            for symbol in cfg["symbols"]:
                book = ws.data.get(f"orderbook.{depth}.{symbol}")
                if isinstance(book, dict):
                    books[symbol] = top_levels(book.get("b", []), book.get("a", []), levels)
            reply({"books": books})
        elif cmd["cmd"] == "exit":
            reply({"ok": True})
            break
    ws.exit()


if __name__ == "__main__":
    main()
