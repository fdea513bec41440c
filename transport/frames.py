"""RFC 6455 framing, with no I/O: bytes in, typed values out.

gevent-websocket 0.10.1 gets several things wrong that a gateway cannot live
with (docs/stack-notes.md): close codes are never sent, frame sizes are not
bounded, unmasked client frames are accepted and unmasking runs byte by byte
in Python. The socket layer (``transport/socket.py``) uses this module
instead of gevent-websocket's ``WebSocket`` for every frame it reads or
writes.

Frames we send are built here once and shared: a fan-out to N clients costs
one ``encode_frame`` call, not N.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

__all__ = [
    "ClientFrameReader",
    "FrameError",
    "FrameHeader",
    "FrameReader",
    "Opcode",
    "encode_close",
    "encode_frame",
    "parse_close",
    "parse_header",
    "unmask",
]


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})


class FrameError(Exception):
    """A frame breaks RFC 6455 or our limits; ``code`` is the close code to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FrameHeader:
    fin: bool
    opcode: Opcode
    length: int
    mask: bytes
    header_size: int


def parse_header(data: bytes, *, max_size: int) -> FrameHeader | int:
    """Parse a client frame header from the start of ``data``.

    Returns the header, or the number of bytes needed when ``data`` is too
    short. Raises :class:`FrameError` with the close code to send:
    1002 for reserved bits, unknown opcodes, unmasked frames (RFC 6455 §5.1),
    fragmented or oversized control frames (§5.5); 1009 when the payload
    length exceeds ``max_size`` — decided from the header, before a byte of
    the payload is read.
    """
    if len(data) < 2:
        return 2
    b0, b1 = data[0], data[1]
    if b0 & 0x70:
        raise FrameError(1002, "reserved bits set without an extension")
    try:
        opcode = Opcode(b0 & 0x0F)
    except ValueError:
        raise FrameError(1002, f"unknown opcode {b0 & 0x0F}") from None
    fin = bool(b0 & 0x80)
    if not b1 & 0x80:
        raise FrameError(1002, "client frame not masked")
    length = b1 & 0x7F
    offset = 2
    if length == 126:
        if len(data) < 4:
            return 4
        (length,) = struct.unpack_from("!H", data, 2)
        offset = 4
    elif length == 127:
        if len(data) < 10:
            return 10
        (length,) = struct.unpack_from("!Q", data, 2)
        offset = 10
    if opcode in CONTROL_OPCODES:
        if not fin:
            raise FrameError(1002, "fragmented control frame")
        if length > 125:
            raise FrameError(1002, "control frame payload over 125 bytes")
    elif length > max_size:
        raise FrameError(1009, f"frame of {length} bytes exceeds the limit of {max_size}")
    if len(data) < offset + 4:
        return offset + 4
    return FrameHeader(fin, opcode, length, bytes(data[offset : offset + 4]), offset + 4)


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask``, a whole integer at a time."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def encode_frame(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    """A server frame (unmasked, RFC 6455 §5.1) carrying ``payload``."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def encode_close(code: int | None, reason: str = "") -> bytes:
    """A close frame with a status code (RFC 6455 §5.5.1), reason cut to fit 125 bytes."""
    if code is None:
        return encode_frame(Opcode.CLOSE, b"")
    raw = reason.encode("utf-8")[:123]
    while True:
        try:
            raw.decode("utf-8")
            break
        except UnicodeDecodeError:
            raw = raw[:-1]
    return encode_frame(Opcode.CLOSE, struct.pack("!H", code) + raw)


# RFC 6455 §7.4.1 and the IANA registry: codes an endpoint may send.
_VALID_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """Code and reason of a client close frame; raises FrameError(1002/1007)."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError(1002, "close frame payload of one byte")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
        raise FrameError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "close reason is not valid utf-8") from None
    return code, reason


_ANY_SIZE = 1 << 63  # find_close passes over frames of any length


class FrameReader:
    """A client's bytes in, whole messages and control frames out (RFC 6455 §5.2-5.5).

    :meth:`feed` takes whatever arrived and yields ``(opcode, value)`` for
    everything it completes, in order: ``TEXT`` with a ``str``, ``BINARY``
    with ``bytes`` (fragments joined), ``PING``/``PONG`` with their payload,
    ``CLOSE`` with ``(code, reason)``. A partial frame waits for the next
    call. A frame that breaks the protocol raises :class:`FrameError` when
    it is reached (what came before it has been yielded); :meth:`feed` must
    not be called after that. After :meth:`stopped`, :meth:`find_close`
    reads on to the peer's answer to our close frame, when the reader is
    still in step with the frames (:attr:`in_step`). A connection's reader
    holds only its unfinished bytes and fragments: nothing while the
    connection is idle.
    """

    __slots__ = ("_buf", "_decoder", "_mark", "_opcode", "_parts", "_size", "_skip", "in_step", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = b""
        self._opcode: Opcode | None = None  # of the fragmented message in progress
        self._parts: list[bytes] = []
        self._size = 0
        self._decoder: Any = None
        self._mark: tuple[bytes, int] = (b"", 0)  # (bytes, where the next frame starts) at the last yield
        self._skip = 0  # payload bytes still to pass over (find_close)
        self.in_step = False  # after a FrameError: the next frame's start is known

    @property
    def in_progress(self) -> bool:
        """A message has begun and not ended: fragments held, or part of a frame."""
        return self._opcode is not None or bool(self._buf)

    def feed(self, data: bytes) -> Iterator[tuple[Opcode, Any]]:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos, end = 0, len(buf)
        while pos < end:
            try:
                header = parse_header(buf[pos : pos + 14], max_size=self.max_size)  # a header is at most 14 bytes
            except FrameError as exc:
                # 1009 from the header: the frame's length is known, so it can be passed over (find_close);
                # the other header errors leave nothing to stay in step with.
                self._mark, self.in_step = (buf, pos), exc.code == 1009
                raise
            if not isinstance(header, FrameHeader):
                break
            start = pos + header.header_size
            stop = start + header.length
            if stop > end:
                break
            pos = stop
            self._mark = (buf, pos)  # a frame refused from here on was read whole: the next starts at pos
            self.in_step = True
            result = self._frame(header, unmask(buf[start:stop], header.mask))
            if result is not None:
                yield result
        self._buf = buf[pos:]

    def stopped(self) -> None:
        """After a :class:`FrameError` (from :meth:`feed`, or raised by its caller for the frame it was
        handed): keep the unread bytes for :meth:`find_close`."""
        buf, pos = self._mark
        self._buf, self._mark = buf[pos:], (b"", 0)
        self._opcode, self._parts, self._size, self._decoder = None, [], 0, None

    def find_close(self, data: bytes) -> tuple[int | None, str] | None:
        """After :meth:`stopped`, with :attr:`in_step`: pass over every frame (any size) up to the peer's
        close frame and return its ``(code, reason)`` (``(None, "")`` if it is malformed: it is the end all
        the same), or ``None`` while it has not come. Bytes that are not frames leave :attr:`in_step`
        False (the caller then waits for the close deadline)."""
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        while True:
            if self._skip:
                passed = min(self._skip, end - pos)
                pos += passed
                self._skip -= passed
                if self._skip:
                    break
            try:
                header = parse_header(buf[pos : pos + 14], max_size=_ANY_SIZE)
            except FrameError:
                self.in_step, self._buf = False, b""
                return None
            if not isinstance(header, FrameHeader):
                break
            start = pos + header.header_size
            if header.opcode == Opcode.CLOSE:
                stop = start + header.length
                if stop > end:
                    break
                self._buf = b""
                try:
                    return parse_close(unmask(buf[start:stop], header.mask))
                except FrameError:
                    return None, ""
            pos, self._skip = start, header.length
        self._buf = buf[pos:]
        return None

    def _frame(self, header: FrameHeader, payload: bytes) -> tuple[Opcode, Any] | None:
        op = header.opcode
        if op == Opcode.PING or op == Opcode.PONG:
            return op, payload
        if op == Opcode.CLOSE:
            return op, parse_close(payload)
        if op == Opcode.CONTINUATION:
            if self._opcode is None:
                raise FrameError(1002, "continuation frame without a message")
        elif self._opcode is not None:
            raise FrameError(1002, "new message inside a fragmented message")
        elif header.fin:  # a whole message in one frame: the common case
            if op == Opcode.TEXT:
                try:
                    return op, payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise FrameError(1007, "text message is not valid utf-8") from None
            return op, payload
        else:
            self._opcode = op
            if op == Opcode.TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._size += len(payload)
        if self._size > self.max_size:
            raise FrameError(1009, f"message exceeds the limit of {self.max_size} bytes")
        if self._decoder is not None:
            try:
                # Incremental, so invalid UTF-8 fails at the offending fragment.
                self._decoder.decode(payload, final=header.fin)
            except UnicodeDecodeError:
                raise FrameError(1007, "text message is not valid utf-8") from None
        self._parts.append(payload)
        if not header.fin:
            return None
        data = b"".join(self._parts)
        opcode = self._opcode
        self._opcode, self._parts, self._size, self._decoder = None, [], 0, None
        return opcode, (data.decode("utf-8") if opcode == Opcode.TEXT else data)


class ClientFrameReader:
    """The client side of :class:`FrameReader`: a server's bytes in, whole messages out.

    For the gateway's own upstream connections (the exchange streams), which
    read tens of thousands of frames a second: :meth:`feed` takes whatever
    one ``recv`` returned (many frames, or part of one) and returns every
    message it completes as ``(opcode, payload)``, in order. Text stays
    ``bytes``: the JSON parser that follows reads UTF-8 itself, and refuses
    what is not (so no second pass over every frame here). Fragments are
    joined; ``PING``/``PONG`` come with their payload, ``CLOSE`` with
    ``(code, reason)``. A frame that breaks RFC 6455 for a client (a masked
    server frame, §5.1; reserved bits, unknown opcodes, bad control frames,
    over ``max_size``) raises :class:`FrameError`; what came before it has
    been returned by an earlier call, or is lost with the connection.
    """

    __slots__ = ("_buf", "_opcode", "_parts", "_size", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = b""
        self._opcode: int | None = None  # of the fragmented message in progress
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, Any]] = []
        append = out.append
        pos, end = 0, len(buf)
        max_size = self.max_size
        while end - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1]
            if n & 0x80:
                raise FrameError(1002, "server frame masked")
            start = pos + 2
            if n >= 126:
                if n == 126:
                    start += 2
                    if start > end:
                        break
                    n = int.from_bytes(buf[pos + 2 : start], "big")
                else:
                    start += 8
                    if start > end:
                        break
                    n = int.from_bytes(buf[pos + 2 : start], "big")
                if n > max_size:
                    raise FrameError(1009, f"frame of {n} bytes exceeds the limit of {max_size}")
            stop = start + n
            if stop > end:
                break
            pos = stop
            if b0 == 0x81 and self._opcode is None:  # a whole text message in one frame: the common case
                append((1, buf[start:stop]))
            else:
                self._frame(b0, buf[start:stop], append)
        self._buf = buf[pos:] if pos < end else b""
        return out

    def _frame(self, b0: int, payload: bytes, append: Any) -> None:
        if b0 & 0x70:
            raise FrameError(1002, "reserved bits set without an extension")
        op, fin = b0 & 0x0F, bool(b0 & 0x80)
        if op not in _OPCODES:
            raise FrameError(1002, f"unknown opcode {op}")
        if op >= 0x8:
            if not fin or len(payload) > 125:
                raise FrameError(1002, "fragmented or oversized control frame")
            append((op, parse_close(payload) if op == Opcode.CLOSE else payload))
            return
        if op == Opcode.CONTINUATION:
            if self._opcode is None:
                raise FrameError(1002, "continuation frame without a message")
        elif self._opcode is not None:
            raise FrameError(1002, "new message inside a fragmented message")
        elif fin:
            append((op, payload))
            return
        else:
            self._opcode = op
        self._size += len(payload)
        if self._size > self.max_size:
            raise FrameError(1009, f"message exceeds the limit of {self.max_size} bytes")
        self._parts.append(payload)
        if fin:
            opcode = self._opcode
            append((opcode, b"".join(self._parts)))
            self._opcode, self._parts, self._size = None, [], 0


_OPCODES = frozenset(int(op) for op in Opcode)
