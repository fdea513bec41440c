"""The server half of RFC 6455 and the HTTP/1.1 request head, with no socket.

Only what a local fake exchange needs: the opening handshake (§4.2), frame
encoding for server frames (unmasked, §5.1) and an incremental parser for
client frames (masked, fragmented, with control frames interleaved, §5.4).
The server writes bytes this module builds and feeds it bytes it reads.

Own framing instead of gevent-websocket 0.10.1, because that library cannot
send a close code (``close(1008)`` arrives as 1005, docs/stack-notes.md) and
the ``close`` fault must send real codes.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "CloseCode",
    "Frame",
    "FrameParser",
    "HandshakeError",
    "Opcode",
    "ProtocolError",
    "RequestHead",
    "accept_key",
    "close_payload",
    "encode_frame",
    "handshake_response",
    "http_response",
    "parse_close_payload",
    "parse_request_head",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class Opcode(IntEnum):
    """Frame opcodes, RFC 6455 §5.2."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    """Close codes this server sends, RFC 6455 §7.4.1."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009


class ProtocolError(Exception):
    """The client broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class HandshakeError(Exception):
    """The HTTP request head is malformed or is not a valid upgrade."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete message or control frame from the client.

    ``opcode`` is TEXT or BINARY for a (reassembled) data message, or a
    control opcode; ``payload`` is unmasked.
    """

    opcode: Opcode
    payload: bytes


@dataclass(frozen=True, slots=True)
class RequestHead:
    """An HTTP/1.1 request line and headers (names lower-cased)."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def is_websocket_upgrade(self) -> bool:
        """True when the head asks for a WebSocket upgrade (RFC 6455 §4.2.1)."""
        upgrade = self.headers.get("upgrade", "").lower()
        connection = self.headers.get("connection", "").lower()
        return upgrade == "websocket" and "upgrade" in [t.strip() for t in connection.split(",")]


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse ``raw`` (everything before the blank line) into a :class:`RequestHead`.

    Raises :class:`HandshakeError` on a malformed request line or header.
    """
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise HandshakeError("undecodable request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HandshakeError(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(f"bad header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return RequestHead(method=parts[0], target=parts[1], headers=headers)


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()  # SHA-1 is mandated by RFC 6455 §4.2.2
    return base64.b64encode(digest).decode("ascii")


def handshake_response(head: RequestHead) -> bytes:
    """The ``101 Switching Protocols`` answer to a valid upgrade request.

    Raises :class:`HandshakeError` when the key or version is missing or wrong.
    """
    if head.method != "GET":
        raise HandshakeError(f"upgrade with method {head.method}")
    if head.headers.get("sec-websocket-version") != "13":
        raise HandshakeError("unsupported websocket version")
    key = head.headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise HandshakeError("bad sec-websocket-key")
    except ValueError as exc:
        raise HandshakeError("bad sec-websocket-key") from exc
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n"
        "\r\n"
    ).encode("ascii")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    426: "Upgrade Required",
    503: "Service Unavailable",
}


def http_response(
    status: int,
    body: bytes = b"",
    content_type: str = "application/json",
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines.extend(f"{k}: {v}" for k, v in (extra_headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def encode_frame(opcode: Opcode, payload: bytes = b"") -> bytes:
    """One final, unmasked server frame (RFC 6455 §5.2; servers never mask, §5.1)."""
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """Close frame body: 2-byte code then UTF-8 reason, at most 125 bytes (§5.5.1)."""
    data = struct.pack("!H", code) + reason.encode("utf-8")
    return data[:125]


def parse_close_payload(payload: bytes) -> tuple[int | None, str]:
    """Code and reason of a received close frame; ``(None, "")`` for an empty body."""
    if len(payload) < 2:
        return None, ""
    (code,) = struct.unpack("!H", payload[:2])
    return code, payload[2:].decode("utf-8", errors="replace")


def _unmask(data: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: far faster in CPython than a per-byte loop
    # (docs/stack-notes.md: gevent-websocket's byte loop costs 40-60 ms per 200 KB).
    n = len(data)
    if n == 0:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class FrameParser:
    """Incremental parser of client frames.

    ``feed(data)`` returns the complete frames now available: control frames
    as they arrive, data messages once their last fragment is in. Raises
    :class:`ProtocolError` on an unmasked frame, a bad opcode, a fragmented
    or oversized control frame, a stray continuation, or a message longer
    than ``max_message``.
    """

    def __init__(self, max_message: int = 1 << 16) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self) -> Frame | None:
        while True:
            parsed = self._parse_one()
            if parsed is None:
                return None
            fin, opcode, payload = parsed
            if opcode >= Opcode.CLOSE:
                return Frame(opcode, payload)
            if opcode == Opcode.CONT:
                if self._fragment_opcode is None:
                    raise ProtocolError("continuation without a started message")
                self._add_fragment(payload)
                if fin:
                    message = Frame(self._fragment_opcode, b"".join(self._fragments))
                    self._fragments, self._fragment_opcode, self._fragment_size = (
                        [],
                        None,
                        0,
                    )
                    return message
                continue
            if self._fragment_opcode is not None:
                raise ProtocolError("new message before the previous one finished")
            if fin:
                return Frame(opcode, payload)
            self._fragment_opcode = opcode
            self._add_fragment(payload)

    def _add_fragment(self, payload: bytes) -> None:
        self._fragment_size += len(payload)
        if self._fragment_size > self.max_message:
            raise ProtocolError("message too big", CloseCode.MESSAGE_TOO_BIG)
        self._fragments.append(payload)

    def _parse_one(self) -> tuple[bool, Opcode, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if first & 0x70:
            raise ProtocolError("reserved bits set")
        try:
            opcode = Opcode(first & 0x0F)
        except ValueError as exc:
            raise ProtocolError(f"unknown opcode {first & 0x0F}") from exc
        fin = bool(first & 0x80)
        if not second & 0x80:
            raise ProtocolError("unmasked client frame")  # RFC 6455 §5.1
        length = second & 0x7F
        offset = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, 2)
            offset = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, 2)
            offset = 10
        if opcode >= Opcode.CLOSE and (length > 125 or not fin):
            raise ProtocolError("bad control frame")  # RFC 6455 §5.5
        if length > self.max_message:
            raise ProtocolError("message too big", CloseCode.MESSAGE_TOO_BIG)
        end = offset + 4 + length
        if len(buf) < end:
            return None
        mask = bytes(buf[offset : offset + 4])
        payload = _unmask(bytes(buf[offset + 4 : end]), mask)
        del buf[:end]
        return fin, opcode, payload
