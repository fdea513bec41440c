"""What the three feed-handler peers of scenario (f) share: counting, books out, the control pipe.

Each peer is its own process, started by ``bench/ingest.py`` with one JSON
line on stdin (``{"ws": "ws://127.0.0.1:P/v5/public", "rest":
"http://127.0.0.1:P", "symbols": [...], "depth": 50, "log": path}``), and
answers one JSON line per command: ``stats`` (frames handled by kind, CPU,
errors), ``books`` {levels} (the library's own books, best ``levels`` per
side, as text), ``exit``. The first line out is ``{"ok": true, "pid": ...}``
once the library has been set up and has sent its subscriptions.

"Frames handled" counts exchange data frames (one per topic message) in the
library's own message entry point, before it parses: the unit the gateway's
``ws_exchange_messages_total`` counts. The library's user callbacks (what a
trader's code gets) count too, under ``callbacks``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Tally", "chunks", "read_config", "reply", "top_levels"]


class Tally:
    """Counters a peer reports; safe enough across threads for counting (one writer per counter)."""

    def __init__(self) -> None:
        self.frames: Counter[str] = Counter()  # by topic kind: orderbook, publicTrade, tickers
        self.callbacks: Counter[str] = Counter()
        self.topics: set[str] = set()
        self.errors: list[str] = []
        self.started = time.monotonic()

    def frame(self, topic: str) -> None:
        self.frames[topic.split(".", 1)[0]] += 1
        if topic not in self.topics:
            self.topics.add(topic)

    def error(self, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if len(self.errors) < 20:
            self.errors.append(text[:300])

    def stats(self) -> dict[str, Any]:
        times = os.times()
        return {"t": time.monotonic(), "frames": sum(self.frames.values()), "by_kind": dict(self.frames),
                "callbacks": dict(self.callbacks), "topics_seen": len(self.topics),
                "cpu": times.user + times.system, "errors": self.errors[:5], "error_count": len(self.errors)}


def read_config() -> dict[str, Any]:
    return json.loads(sys.stdin.readline())


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def top_levels(bids: Iterable[Any], asks: Iterable[Any], levels: int, key: Callable[[Any], Any] = float
               ) -> dict[str, list[list[str]]]:
    """Best ``levels`` per side from ``(price, size)`` pairs in any order and type (text, float, Decimal).

    Sorted here: a library that keeps its levels unsorted (pybit) is compared on
    its content, not on its order.
    """
    def side(levels_in: Iterable[Any], best_first_desc: bool) -> list[list[str]]:
        pairs = sorted(((p, s) for p, s, *_ in levels_in), key=lambda lv: key(lv[0]), reverse=best_first_desc)
        return [[str(p), str(s)] for p, s in pairs[:levels]]

    return {"bids": side(bids, True), "asks": side(asks, False)}
