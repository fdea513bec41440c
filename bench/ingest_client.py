"""Gateway clients of scenario (f): each subscribes market-data for every symbol (ticker, trades, orderbook).

One process, many connections (``bench/lgclient.py``'s client, with a
reading mode of its own, ``ingest``). Per data message, as cheaply as
possible:

* counted (per connection and in all);
* the stream and symbol read from the message head (``"symbol":"…"``,
  ``"stream":"…"``, the first keys of a market-data message,
  docs/protocol.md); the last ``orderbook.*`` message of each symbol is kept
  as bytes (the book the client holds, checked against the feed's truth at
  the end) and ``trades`` messages are counted per symbol (the gateway never
  skips them, so every publicTrade frame the feed sent must arrive);
* one message in ``sample`` is parsed whole for its latency: receive time −
  ``data.ts``, the exchange's timestamp, which the ingest feed sets to the
  time it wrote the frame (same machine, same clock; whole milliseconds);
  and ``data.receivedAt`` − ``data.ts`` (feed write to gateway read: time in
  the kernel's buffers and the gateway's reader). Samples go into one
  histogram per second since ``hist_reset``, so the runner can tell a
  latency that grows over a window from one that is merely high.

Driven over stdin/stdout like ``bench/loadgen.py``: first line the
configuration ``{host, port, path, count, jwt_secret, user_prefix, symbols,
streams, sample}``; commands ``connect``, ``ingest`` (switch to counting),
``snap``, ``hist_reset``, ``hist``, ``check`` {truth, trade_frames},
``exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest_data import compare_top
from bench.lgclient import BenchConnection, Histogram, Stats, client_frame, open_connection

_STREAM = b'"stream":"'
_SYMBOL = b'"symbol":"'
_HEAD = 200  # the market-data keys come first; look no further for them
_RESYNC = b'"resync":true'


class IngestStats(Stats):
    __slots__ = ("book_resyncs", "seconds", "t0", "wire")

    def __init__(self) -> None:
        super().__init__()
        self.t0 = time.time()
        self.seconds: list[tuple[Histogram, Histogram]] = []  # (feed → client, feed → gateway read) per second
        self.book_resyncs = 0

    def sample(self, now: float, total_ms: float, wire_ms: float | None) -> None:
        second = int(now - self.t0)
        seconds = self.seconds
        while len(seconds) <= second:
            seconds.append((Histogram(), Histogram()))
        total, wire = seconds[second]
        total.add(max(0.0, total_ms))
        if wire_ms is not None:
            wire.add(max(0.0, wire_ms))


class IngestConnection(BenchConnection):
    """A :class:`BenchConnection` whose ``ingest`` mode keeps what the correctness check needs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.books: dict[bytes, bytes] = {}
        self.trades: Counter[bytes] = Counter()
        self.received = 0
        self.every = 1
        self._countdown = 1

    def data_received(self, data: bytes) -> None:
        if self.mode != "ingest" or self._head:
            super().data_received(data)
            return
        self._buf += data
        self._ingest()

    def _ingest(self) -> None:
        buf = self._buf
        n = len(buf)
        i = 0
        stats: IngestStats = self.stats  # type: ignore[assignment]  # the worker hands every connection one
        received = 0
        books, trades = self.books, self.trades
        while n - i >= 2:
            b0 = buf[i]
            length = buf[i + 1] & 0x7F
            start = i + 2
            if length == 126:
                if n - i < 4:
                    break
                length = (buf[i + 2] << 8) | buf[i + 3]
                start = i + 4
            elif length == 127:
                if n - i < 10:
                    break
                length = int.from_bytes(buf[i + 2:i + 10], "big")
                start = i + 10
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1:
                received += 1
                head = start + _HEAD
                at = buf.find(_STREAM, start, head)
                if at >= 0:
                    kind = buf[at + 10]
                    if kind == 0x6F:  # "o": orderbook.N
                        s = buf.find(_SYMBOL, start, head)
                        if s >= 0:
                            s += 10
                            books[bytes(buf[s:buf.find(b'"', s)])] = bytes(buf[start:end])
                        if buf.find(_RESYNC, start, end) >= 0:
                            stats.book_resyncs += 1
                    elif kind == 0x74 and buf[at + 11] == 0x72:  # "tr": trades
                        s = buf.find(_SYMBOL, start, head)
                        if s >= 0:
                            s += 10
                            trades[bytes(buf[s:buf.find(b'"', s)])] += 1
                self._countdown -= 1
                if self._countdown <= 0:
                    self._countdown = self.every
                    self._sample(bytes(buf[start:end]))
            elif opcode == 0x9:
                stats.pings += 1
                self.transport.write(client_frame(0xA, bytes(buf[start:end])))
            elif opcode == 0x8:
                payload = bytes(buf[start:end])
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.transport.write(client_frame(0x8, payload[:2]))
                self.transport.close()
                i = n
                break
            i = end
        stats.messages += received
        stats.bytes += i
        self.received += received
        if i:
            del buf[:i]

    def _sample(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            data = msg["data"]
            ts = data["ts"]
        except (ValueError, KeyError, TypeError):
            return
        if type(ts) is not int:
            return
        now = time.time()
        received_at = data.get("receivedAt")
        self.stats.sample(now, now * 1000 - ts,  # type: ignore[attr-defined]  # IngestStats
                          received_at - ts if type(received_at) is int else None)


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.stats = IngestStats()
        self.conns: list[IngestConnection] = []
        import jwt

        self._jwt = jwt

    def token(self, user: str) -> str:
        now = int(time.time())
        return self._jwt.encode({"sub": user, "iat": now, "exp": now + 7200}, self.cfg["jwt_secret"],
                                algorithm="HS256")

    async def connect(self, _: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        errors: list[str] = []
        for i in range(cfg["count"]):
            try:
                conn = await open_ingest(self.stats, cfg["host"], cfg["port"],
                                         cfg["path"].replace("{token}", self.token(f"{cfg['user_prefix']}{i}")))
                hello = json.loads(await conn.recv())
                if hello.get("type") != "connection":
                    raise ConnectionError(f"expected connection, got {hello}")
                for symbol in cfg["symbols"]:
                    conn.send_text(json.dumps({"type": "subscribe", "channel": "market-data",
                                               "data": {"symbol": symbol, "streams": cfg["streams"]}}))
                pending = len(cfg["symbols"])
                while pending:
                    reply = json.loads(await conn.recv(30))
                    if reply.get("type") == "subscribed":
                        pending -= 1
                    elif reply.get("type") == "error":
                        raise ConnectionError(f"subscribe refused: {reply}")
                conn.every = conn._countdown = max(1, int(cfg.get("sample", 1)))
                self.conns.append(conn)
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        return {"open": len(self.conns), "failed": len(errors), "errors": errors[:3],
                "seconds": round(time.perf_counter() - t0, 2)}

    async def ingest(self, _: dict[str, Any]) -> dict[str, Any]:
        for conn in self.conns:
            conn.inbox = asyncio.Queue()
            conn.mode = "ingest"
            if conn._buf:
                conn._ingest()
        return {"ok": True}

    async def snap(self, _: dict[str, Any]) -> dict[str, Any]:
        s = self.stats
        return {"t": time.monotonic(), "messages": s.messages, "bytes": s.bytes, "cpu": time.process_time(),
                "open": s.open, "closes": dict(s.closes), "book_resyncs": s.book_resyncs,
                "per_connection": [c.received for c in self.conns]}

    async def hist_reset(self, _: dict[str, Any]) -> dict[str, Any]:
        self.stats.t0 = time.time()
        self.stats.seconds = []
        return {"ok": True}

    async def hist(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": [[total.to_json(), wire.to_json()] for total, wire in self.stats.seconds]}

    async def check(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Each connection's last book of each symbol against the truth; its trade messages per symbol
        against the trade frames the feed sent."""
        levels = cmd["levels"]
        truth: dict[str, dict[str, Any]] = cmd["books"]  # symbol -> {bids, asks}
        want_trades: dict[str, int] = cmd.get("trade_frames", {})
        equal = checked = trades_equal = 0
        problems: list[str] = []
        for k, conn in enumerate(self.conns):
            for symbol, book in truth.items():
                checked += 1
                raw = conn.books.get(symbol.encode())
                if raw is None:
                    problems.append(f"connection {k}: no book for {symbol}")
                    continue
                data = json.loads(raw)["data"]
                diff = compare_top(data, book, levels)
                if diff is None:
                    equal += 1
                else:
                    problems.append(f"connection {k} {symbol}: {diff}")
            mismatched = [s for s, n in want_trades.items() if conn.trades.get(s.encode(), 0) != n]
            if not mismatched:
                trades_equal += 1
            else:
                s = mismatched[0]
                problems.append(f"connection {k}: trade messages for {s}: {conn.trades.get(s.encode(), 0)}, "
                                f"feed sent {want_trades[s]} ({len(mismatched)} symbols differ)")
        return {"connections": len(self.conns), "books_checked": checked, "books_equal": equal,
                "trade_streams_equal": trades_equal, "problems": problems[:5]}


async def open_ingest(stats: Stats, host: str, port: int, path: str) -> IngestConnection:
    conn = await open_connection(stats, host, port, path, protocol=IngestConnection)
    assert isinstance(conn, IngestConnection)
    return conn


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cfg = json.loads(await reader.readline())
    worker = Worker(cfg)
    print(json.dumps({"ok": True}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            print(json.dumps({"ok": True}), flush=True)
            break
        try:
            reply = await getattr(worker, cmd["cmd"])(cmd)
        except Exception as exc:  # noqa: BLE001 - report to the orchestrator
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    for conn in worker.conns:
        conn.abort()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        uvloop = None
    with contextlib.suppress(KeyboardInterrupt):
        if uvloop is not None:
            uvloop.run(main())
        else:
            asyncio.run(main())
