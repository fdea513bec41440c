"""A Bybit-v5-protocol "firehose": ticker frames as fast as the gateway takes them.

The gateway connects to it as to Bybit (``BYBIT_WS_URL=ws://127.0.0.1:PORT/v5/public``,
``MARKET_CATEGORIES=spot``). Subscribes, unsubscribes and pings are answered
in Bybit's spot shapes (built by :mod:`simulator.protocol`, the simulator's
pure message layer). For every subscribed ``tickers.X`` one snapshot is sent
at once (the gateway retains it for new subscribers); after ``go``, spot
ticker snapshots for the firehose symbol follow with no pause but one: at
most ``window`` of them may be in flight.

"In flight" is measured end to end, through the real path: this process
holds one subscribed client connection of its own to the gateway (the
*probe*, which counts as one of the benchmark's clients) and counts the
``data`` messages it receives (``seen``, what the benchmark reports). The
pacing uses the newest ticker the probe has received instead: each ticker
carries its number n in ``turnover24h`` (``<n>.22907118``), and sent − the
newest n seen ≤ ``window``. That keeps the gateway saturated without
letting its actor inboxes grow without end (an open-loop firehose would
only measure how fast memory fills), and a ticker the gateway conflates
(skips for a newer one) does not stall the pacing: counting messages would
wait for ones that never come.

Controlled over stdin/stdout, one JSON line each way: the first line out is
``{"port": P}``; commands ``probe`` (url path, symbol), ``go`` (window),
``stop``, ``stats``, ``exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lgclient import BenchConnection, Stats, open_connection
from simulator.protocol import Category, RequestError, ack, parse_request, pong
from transport.frames import FrameError, FrameReader, Opcode, encode_close, encode_frame
from transport.handshake import Rejection, check_upgrade, parse_request_head, upgrade_response

SPOT = Category.SPOT
NUMBER_MARKER = b'"turnover24h":"'  # the ticker's number, as the gateway passes it on


def ticker_frame(symbol: str, n: int, now_ms: int) -> bytes:
    """One spot ticker snapshot (Bybit's key order), about 330 bytes; prices move with ``n``, and
    ``turnover24h`` is ``n`` itself (the probe reads it back: the firehose's pacing)."""
    last = 60000 + (n % 997) / 100
    text = (
        f'{{"topic":"tickers.{symbol}","ts":{now_ms},"type":"snapshot","cs":{1000000 + n},'
        f'"data":{{"symbol":"{symbol}","lastPrice":"{last:.2f}","highPrice24h":"61426.99","lowPrice24h":"58575",'
        f'"prevPrice24h":"59704.93","volume24h":"{6780 + n % 1000}.866843","turnover24h":"{n}.22907118",'
        f'"price24hPcnt":"0.0196","usdIndexPrice":"60020.2400136"}}}}'
    )
    return encode_frame(Opcode.TEXT, text.encode())


class Upstream(asyncio.Protocol):
    """The gateway's exchange-stream connection (server side of the WebSocket)."""

    def __init__(self, hose: Firehose) -> None:
        self.hose = hose
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.parser: FrameReader | None = None
        self.conn_id = str(uuid.uuid4())
        self.topics: set[str] = set()
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; it is a Transport
        self.transport.set_write_buffer_limits(high=1 << 20)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hose.upstreams.discard(self)
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = parse_request_head(bytes(self.head[:end]))
            rest = bytes(self.head[end + 4:])
            try:
                if head is None:
                    raise Rejection("400 Bad Request", "bad_handshake", "unreadable request head")
                self.transport.write(upgrade_response(check_upgrade(head.environ(), head.version), None))
            except Rejection:
                self.transport.close()
                return
            self.parser = FrameReader(1 << 16)
            self.hose.upstreams.add(self)
            data = rest
            if not data:
                return
        try:
            for opcode, value in self.parser.feed(data):
                if opcode == Opcode.TEXT:
                    self._request(value)
                elif opcode == Opcode.PING:
                    self.transport.write(encode_frame(Opcode.PONG, value))
                elif opcode == Opcode.CLOSE:
                    self.transport.write(encode_close(value[0]))
                    self.transport.close()
                    return
        except FrameError as exc:
            self.transport.write(encode_close(exc.code, exc.reason))
            self.transport.close()

    def _send(self, obj: dict[str, Any]) -> None:
        self.transport.write(encode_frame(Opcode.TEXT, json.dumps(obj, separators=(",", ":")).encode()))

    def _request(self, payload: str) -> None:
        try:
            req = parse_request(payload)
        except RequestError:
            return
        if req.op == "ping":
            self._send(pong(SPOT, self.conn_id, req.req_id))
            return
        self._send(ack(SPOT, req.op, self.conn_id, req.req_id))
        if req.op == "subscribe":
            for topic in req.args:
                self.topics.add(topic)
                if topic.startswith("tickers."):
                    # The first snapshot at once, like Bybit: the gateway retains it.
                    self.transport.write(ticker_frame(topic.split(".", 1)[1], 0, int(time.time() * 1000)))
        else:
            self.topics.difference_update(req.args)


class Firehose:
    def __init__(self, symbol: str = "BTCUSDT") -> None:
        self.symbol = symbol
        self.topic = f"tickers.{symbol}"
        self.upstreams: set[Upstream] = set()
        self.sent = 0
        self.probe: BenchConnection | None = None
        self.probe_stats = Stats()
        self.newest = 0  # the newest ticker number the probe has received
        self.window = 0
        self.running = False
        self._pump: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    @property
    def seen(self) -> int:
        return self.probe_stats.messages

    async def start_probe(self, host: str, port: int, path: str) -> None:
        self.probe = await open_connection(self.probe_stats, host, port, path)
        hello = json.loads(await self.probe.recv())
        assert hello["type"] == "connection", hello
        self.probe.send_text(json.dumps({"type": "subscribe", "channel": "market-data",
                                         "data": {"symbol": self.symbol}}))
        while json.loads(await self.probe.recv())["type"] != "subscribed":
            pass
        # Count from here on, and wake the pump whenever the probe sees data.
        self.probe.set_mode("count")
        self.probe_stats.messages = 0
        self.probe.on_data = self._on_probe_data

    def _on_probe_data(self, data: bytes) -> None:
        """The newest ticker number in a read of the probe (a number cut by the read's end is
        skipped: the next read has it whole, or a newer one)."""
        end = len(data)
        while True:
            at = data.rfind(NUMBER_MARKER, 0, end)
            if at < 0:
                return
            start = at + len(NUMBER_MARKER)
            dot = data.find(b".", start, start + 24)
            if dot > start and data[start:dot].isdigit():
                n = int(data[start:dot])
                if n > self.newest:
                    self.newest = n
                    self._progress.set()
                return
            end = at

    async def pump(self) -> None:
        batch = 64
        while self.running:
            targets = [u for u in self.upstreams if self.topic in u.topics]
            if not targets:
                await asyncio.sleep(0.01)
                continue
            room = self.window - (self.sent - self.newest)
            if room <= 0:
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), 1.0)
                continue
            n = min(room, batch)
            now_ms = int(time.time() * 1000)
            data = b"".join(ticker_frame(self.symbol, self.sent + k + 1, now_ms) for k in range(n))
            for up in targets:
                up.transport.write(data)
            self.sent += n
            await targets[0].can_write.wait()
            await asyncio.sleep(0)


async def main() -> None:
    loop = asyncio.get_running_loop()
    hose = Firehose(os.environ.get("FIREHOSE_SYMBOL", "BTCUSDT"))
    server = await loop.create_server(lambda: Upstream(hose), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        reply: dict[str, Any] = {"ok": True}
        try:
            if cmd["cmd"] == "probe":
                await hose.start_probe(cmd["host"], cmd["port"], cmd["path"])
            elif cmd["cmd"] == "go":
                hose.window = cmd["window"]
                hose.running = True
                hose._pump = asyncio.create_task(hose.pump())
            elif cmd["cmd"] == "stop":
                hose.running = False
                if hose._pump is not None:
                    await hose._pump
                    hose._pump = None
                reply = {"sent": hose.sent, "seen": hose.seen}
            elif cmd["cmd"] == "stats":
                reply = {"t": time.monotonic(), "sent": hose.sent, "seen": hose.seen, "newest": hose.newest,
                         "cpu": time.process_time(),
                         "upstreams": len(hose.upstreams), "probe_open": hose.probe_stats.open}
            elif cmd["cmd"] == "exit":
                print(json.dumps(reply), flush=True)
                break
        except Exception as exc:  # noqa: BLE001 - report to the orchestrator
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    server.close()


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
