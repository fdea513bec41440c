"""The peers' message: a market-data-like JSON object of a given size, built once per publication.

Both peers (``ws_peer.py`` and ``node/server.js``) send the same shape; it
starts with ``{"type":"data"`` (what the load generator counts) and carries
``receivedAt`` (ms) for latency, like the gateway's market-data messages.
"""

from __future__ import annotations

HEAD = '{"type":"data","channel":"market-data","symbol":"BTCUSDT","stream":"ticker","seq":%d,"ts":%d,"data":{"pad":"'
TAIL = '","receivedAt":%d}}'


def message(seq: int, now_ms: int, size: int) -> str:
    head = HEAD % (seq, now_ms)
    tail = TAIL % now_ms
    return head + "x" * max(0, size - len(head) - len(tail)) + tail
