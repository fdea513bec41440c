"""The load generator's WebSocket client: an ``asyncio.Protocol``, not streams.

Derived from ``bench/wsclient.py`` (same handshake and masking), with what
a load generator driving tens of thousands of connections needs on top:

* ``local_addr``: one source address has about 28k ephemeral ports
  (``ip_local_port_range``), so 50,000 connections need several
  ``127.0.0.X`` sources;
* ``rcvbuf``: a small ``SO_RCVBUF`` set *before* connecting (so the
  kernel's receive autotuning, up to ``tcp_rmem`` max, cannot hide a
  client that stopped reading for minutes);
* reading modes that cost the load generator as little as possible:

  ``frames``  every frame parsed; text messages go to :attr:`inbox`
              (the setup phase: ``connection``, ``subscribed``);
  ``count``   data messages counted by their first bytes
              (``{"type":"data"``) with ``bytes.count``, in C: no frame is
              parsed, so one process keeps up with a million messages a
              second. Use it only where the server sends no pings;
  ``latency`` every frame parsed; for each text message the receive time
              minus its ``"receivedAt"`` (ms) goes into a histogram; pings
              are answered;
  ``idle``    every frame parsed, pings answered, messages counted.

Clocks: client and server run on one machine, so ``time.time()`` here and
the server's ``receivedAt`` read the same clock. ``receivedAt`` is whole
milliseconds (floored), so a latency read here is 0–1 ms above the true one.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections import Counter
from typing import Any

__all__ = ["DATA_MARKER", "BenchConnection", "Histogram", "Stats", "open_connection"]

DATA_MARKER = b'{"type":"data"'
_RECEIVED_AT = b'"receivedAt":'
_TAIL = len(DATA_MARKER) - 1  # a marker split across two reads is found in tail + head
_DIGITS = frozenset(b"0123456789")


class Histogram:
    """Latency histogram in 0.1 ms bins (sparse), plus the exact maximum."""

    __slots__ = ("bins", "count", "max")

    def __init__(self) -> None:
        self.bins: Counter[int] = Counter()
        self.count = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self.bins[int(ms * 10)] += 1
        self.count += 1
        if ms > self.max:
            self.max = ms

    def to_json(self) -> dict[str, Any]:
        return {"bins": {str(k): v for k, v in self.bins.items()}, "count": self.count, "max": self.max}

    @staticmethod
    def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
        bins: Counter[int] = Counter()
        count, top = 0, 0.0
        for part in parts:
            for k, v in part["bins"].items():
                bins[int(k)] += v
            count += part["count"]
            top = max(top, part["max"])
        return {"bins": bins, "count": count, "max": top}

    @staticmethod
    def percentiles(merged: dict[str, Any], qs: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:
        """Upper edge of the bin holding each quantile, in ms (and the exact max)."""
        out: dict[str, float] = {}
        total = merged["count"]
        if not total:
            return {f"p{q:g}": 0.0 for q in qs} | {"max": 0.0}
        ordered = sorted(merged["bins"].items())
        for q in qs:
            rank = q / 100 * total
            seen = 0
            for k, v in ordered:
                seen += v
                if seen >= rank:
                    out[f"p{q:g}"] = round((k + 1) / 10, 2)
                    break
        out["max"] = round(merged["max"], 2)
        return out


class Stats:
    """Counters shared by every connection of one process."""

    __slots__ = ("bytes", "closes", "hist", "messages", "open", "pings")

    def __init__(self) -> None:
        self.pings = 0
        self.messages = 0
        self.bytes = 0
        self.open = 0
        self.closes: Counter[str] = Counter()
        self.hist = Histogram()


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if not n:
        return key
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes((key * (n // 4 + 1))[:n], "little")).to_bytes(
        n, "little")
    return key + masked


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3: a client masks every frame)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _mask(payload)


class BenchConnection(asyncio.Protocol):
    def __init__(self, stats: Stats, host: str, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.stats = stats
        self.mode = "frames"
        self.transport: asyncio.Transport | None = None
        self.handshake_done = asyncio.get_running_loop().create_future()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._buf = bytearray()
        self._head = True
        self._tail = b""
        self._request = self._handshake(host, port, path, headers or {})
        self.on_data: Any = None  # called with each read's bytes in ``count`` mode (the firehose's pacing)

    @staticmethod
    def _handshake(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; it is a Transport
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head and not self.handshake_done.done():
            self.handshake_done.set_exception(ConnectionError(f"closed during handshake: {exc!r}"))
        if not self.closed.done():
            if not self._head:
                self.stats.open -= 1
                self.stats.closes[str(self.close_code) if self.close_code is not None else "eof"] += 1
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes) -> None:
        if self._head:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end])
            rest = bytes(self._buf[end + 4:])
            self._buf.clear()
            self._head = False
            if not head.startswith(b"HTTP/1.1 101"):
                self.handshake_done.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1")))
                self.transport.close()
                return
            self.stats.open += 1
            self.handshake_done.set_result(True)
            if rest:
                self.data_received(rest)
            return
        if self.mode == "count":
            stats = self.stats
            stats.bytes += len(data)
            n = data.count(DATA_MARKER)
            tail = self._tail
            if tail:
                n += (tail + data[:_TAIL]).count(DATA_MARKER)
            self._tail = data[-_TAIL:]
            stats.messages += n
            if self.on_data is not None:
                self.on_data(data)
            return
        self._buf += data
        self._parse()

    # -- frames ------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        n = len(buf)
        i = 0
        stats = self.stats
        latency = self.mode == "latency"
        now_ms = time.time() * 1000 if latency else 0.0
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
                stats.messages += 1
                stats.bytes += end - i
                if latency:
                    at = buf.rfind(_RECEIVED_AT, start, end)
                    if at >= 0:
                        j = at + len(_RECEIVED_AT)
                        k = j
                        while buf[k] in _DIGITS:
                            k += 1
                        stats.hist.add(now_ms - int(buf[j:k]))
                elif self.mode == "frames":
                    self.inbox.put_nowait(bytes(buf[start:end]))
            elif opcode == 0x9:
                stats.pings += 1
                self.transport.write(client_frame(0xA, bytes(buf[start:end])))
            elif opcode == 0x8:
                payload = bytes(buf[start:end])
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.transport.write(client_frame(0x8, payload[:2]))
                self.transport.close()
                i = n
                break
            i = end
        if i:
            del buf[:i]

    # -- API ---------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self.transport.write(client_frame(0x1, text.encode()))

    async def recv(self, timeout: float = 10.0) -> bytes:
        """Next text message (``frames`` mode only)."""
        return await asyncio.wait_for(self.inbox.get(), timeout)

    def set_mode(self, mode: str) -> None:
        if mode == "count" and self._buf:
            # Leftover partial frame bytes from the frame parser: count from the next chunk.
            self._buf.clear()
        self.mode = mode
        self._tail = b""

    def pause(self) -> None:
        self.transport.pause_reading()

    def resume(self) -> None:
        self.transport.resume_reading()

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(0x8, struct.pack("!H", code)))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_connection(
    stats: Stats,
    host: str,
    port: int,
    path: str,
    *,
    local_addr: str | None = None,
    rcvbuf: int | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    protocol: type[BenchConnection] | None = None,
) -> BenchConnection:
    """Connect, send the opening handshake, and wait for the 101 (``protocol``: a subclass to use)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if local_addr:
            sock.bind((local_addr, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    factory = protocol or BenchConnection
    _, proto = await loop.create_connection(lambda: factory(stats, host, port, path, headers), sock=sock)
    await asyncio.wait_for(proto.handshake_done, timeout)
    return proto
