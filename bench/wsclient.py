"""A small, fast asyncio WebSocket client for the benchmarks (no library overhead).

Speaks just enough RFC 6455 for a load generator: the opening handshake,
masked text frames out, unmasked frames in, ping answers, and the close
frame's code. One process drives thousands of connections.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

__all__ = ["WSClient", "connect"]


class WSClosed(Exception):
    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class WSClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes((0x81, 0x80 | n))
        elif n < 65536:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "little")
                  ).to_bytes(n, "little") if n else b""
        self.writer.write(head + mask + masked)

    def send_json(self, obj: Any) -> None:
        self.send_text(json.dumps(obj))

    async def recv_frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return opcode, await self.reader.readexactly(length)

    async def recv(self) -> bytes:
        """The next text message's raw bytes; answers pings; raises WSClosed on close."""
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == 0x1:
                return payload
            if opcode == 0x9:
                self._send_control(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                # Answer the close (RFC 6455 §5.5.1), as a well-behaved client does.
                self._send_control(0x8, payload[:2])
                raise WSClosed(code, payload[2:].decode("utf-8", "replace"))

    async def recv_json(self) -> Any:
        return json.loads(await self.recv())

    def _send_control(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body)

    async def close(self, code: int = 1000) -> None:
        try:
            self._send_control(0x8, struct.pack("!H", code))
            await self.writer.drain()
            while True:
                opcode, _ = await asyncio.wait_for(self.recv_frame(), 2)
                if opcode == 0x8:
                    break
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()


async def connect(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> WSClient:
    reader, writer = await asyncio.open_connection(host, port, limit=2**22)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    return WSClient(reader, writer)
