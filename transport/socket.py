"""One upgraded WebSocket connection: a bounded reader and a single writer.

This replaces gevent-websocket's ``WebSocket`` object after the handshake
(see ``transport/handler.py``), because the library's version cannot send
close codes, reads frames of any size, accepts unmasked frames and lets two
greenlets write one socket (../shared/NOTES.md).

* :meth:`WebSocketConnection.receive` is called by one greenlet only (the
  pywsgi handler's). It enforces the message size limit from the frame
  header, answers pings and close frames *through the outbox*, and returns
  whole text messages.
* :class:`Outbox` is the only code that writes to the socket: a bounded
  queue of ready-made frame bytes drained by one writer greenlet, which
  writes everything queued in one ``sendall``. A full queue or a write
  blocked longer than ``write_timeout`` marks the client a slow consumer.
"""

from __future__ import annotations

import codecs
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from transport.frames import (
    FrameError,
    FrameHeader,
    Opcode,
    encode_close,
    encode_frame,
    parse_close,
    parse_header,
    unmask,
)

__all__ = ["ConnectionClosed", "Outbox", "WebSocketConnection"]

log = logging.getLogger("gateway.transport")

# Frames and bytes written per sendall: coalescing is where the fan-out
# speed comes from (one system call per batch, not per message).
_BATCH_FRAMES = 256
_BATCH_BYTES = 256 * 1024


class ConnectionClosed(Exception):
    """The connection is closed; ``code`` is the close code that ended it."""

    def __init__(self, code: int | None, reason: str = "", *, by_server: bool = False) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason
        self.by_server = by_server


class WriteTimeout(Exception):
    pass


# Outboxes with frames to write, flushed together by one event-loop callback:
# a publication to N subscribers schedules one callback, not N.
_DIRTY: list[Outbox] = []


def _flush_dirty() -> None:
    global _DIRTY
    dirty, _DIRTY = _DIRTY, []
    for outbox in dirty:
        try:
            outbox._flush()
        except Exception:  # one broken outbox must not stop the others' writes
            log.exception("flush failed")
            outbox.abort()


class Outbox:
    """Bounded per-connection queue of frame bytes, and the only writer of its socket.

    ``push`` never blocks: it returns False when the frame cannot be queued
    (closed, or the queue would exceed ``max_bytes``); ``on_overflow`` is
    then called once, and the owner closes the connection as a slow consumer.

    Writing costs no greenlet while the client keeps up: the first push
    schedules one flush on the event loop, which writes everything queued by
    then with one non-blocking ``send`` (so a burst of publications reaches
    each client in one system call). Only when the socket is full does a
    writer greenlet take over, block with a ``write_timeout`` deadline, and
    end when the queue is empty again. Either way exactly one writer is
    active at a time.
    """

    __slots__ = (
        "_close_frame",
        "_closing",
        "_frames",
        "_pushed",
        "_queued_bytes",
        "_raw",
        "_scheduled",
        "_sock",
        "_stamps",
        "_writer",
        "_written",
        "bytes_written",
        "closed",
        "dropped",
        "max_bytes",
        "on_latency",
        "on_overflow",
        "overflowed",
        "write_timeout",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_bytes: int,
        write_timeout: float,
        on_overflow: Callable[[], None] | None = None,
        on_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._sock = sock
        # The OS socket under gevent's: non-blocking, usable from a loop callback.
        self._raw = getattr(sock, "_sock", sock)
        self._frames: deque[bytes] = deque()
        self._queued_bytes = 0
        self._scheduled = False
        self._writer: gevent.Greenlet | None = None
        self._closing = False
        self._close_frame: bytes | None = None
        self.max_bytes = max_bytes
        self.write_timeout = write_timeout
        self.on_overflow = on_overflow
        self.on_latency = on_latency
        self.bytes_written = 0
        # Fan-out latency: a few frames carry the time their data arrived from
        # the exchange; once the writer has written past them, it observes
        # the delay. Frames are counted, not timestamped, to keep push cheap.
        self._pushed = 0
        self._written = 0
        self._stamps: deque[tuple[int, float]] | None = None
        self.closed = Event()
        self.overflowed = False
        self.dropped = 0  # frames refused or discarded (slow consumer)

    @property
    def depth(self) -> int:
        return len(self._frames)

    def push(self, frame: bytes, stamp: float | None = None) -> bool:
        """Queue ``frame``; ``stamp`` (epoch seconds the data arrived) samples fan-out latency."""
        if self._closing:
            if self.overflowed:
                self.dropped += 1
            return False
        size = len(frame)
        if self._queued_bytes + size > self.max_bytes:
            self.dropped += 1
            self._overflow()
            return False
        self._frames.append(frame)
        self._queued_bytes += size
        self._pushed += 1
        if stamp is not None:
            if self._stamps is None:
                self._stamps = deque()
            self._stamps.append((self._pushed, stamp))
        self._schedule()
        return True

    def push_control(self, frame: bytes) -> None:
        """Queue a ping or pong; control frames skip the byte limit (they are tiny)."""
        if not self._closing:
            self._frames.append(frame)
            self._queued_bytes += len(frame)
            self._pushed += 1
            self._schedule()

    def close(self, code: int | None, reason: str = "", *, discard_pending: bool = False) -> None:
        """Queue a close frame after what is queued (or instead of it); idempotent."""
        if self._closing:
            return
        self._closing = True
        if discard_pending:
            self.dropped += len(self._frames)
            self._frames.clear()
            self._queued_bytes = 0
            self._written = self._pushed
            self._stamps = None
        self._close_frame = encode_close(code, reason)
        self._schedule()

    def abort(self) -> None:
        """Stop writing at once (the peer is gone)."""
        self._closing = True
        self._frames.clear()
        self._close_frame = None
        if self._writer is not None:
            self._writer.kill(block=False)
        self.closed.set()

    def _overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            if self.on_overflow is not None:
                self.on_overflow()

    def _schedule(self) -> None:
        if not self._scheduled and self._writer is None:
            self._scheduled = True
            _DIRTY.append(self)
            if len(_DIRTY) == 1:
                gevent.get_hub().loop.run_callback(_flush_dirty)

    def _batch(self) -> tuple[bytes, int]:
        frames = self._frames
        if len(frames) == 1:
            return frames.popleft(), 1
        batch = []
        size = 0
        while frames and len(batch) < _BATCH_FRAMES and size < _BATCH_BYTES:
            frame = frames.popleft()
            batch.append(frame)
            size += len(frame)
        return b"".join(batch), len(batch)

    def _flush(self) -> None:
        """Runs on the event loop: write what the socket takes without blocking."""
        self._scheduled = False
        if self._writer is not None or self.closed.is_set():
            return
        try:
            while self._frames:
                data, count = self._batch()
                self._queued_bytes -= len(data)
                sent = self._send_nowait(data)
                self._wrote(sent, count if sent == len(data) else 0)
                if sent < len(data):
                    # The socket is full: a greenlet waits for it, with a deadline.
                    self._frames.appendleft(data[sent:])
                    self._queued_bytes += len(data) - sent
                    self._writer = gevent.spawn(self._drain, count)
                    return
            if self._closing:
                self._finish_nowait()
        except OSError as exc:
            log.debug("write failed: %r", exc)
            self._failed(False)

    def _send_nowait(self, data: bytes) -> int:
        try:
            return self._raw.send(data)
        except BlockingIOError:
            return 0

    def _finish_nowait(self) -> None:
        frame = self._close_frame
        self._close_frame = None
        if frame is not None:
            sent = self._send_nowait(frame)
            if sent < len(frame):
                self._frames.append(frame[sent:])
                self._writer = gevent.spawn(self._drain, 1)
                return
            self._wrote(sent, 0)
        self.closed.set()

    def _drain(self, partial_count: int) -> None:
        """The blocking writer: only while the client is not keeping up."""
        pending_count = partial_count
        try:
            while self._frames:
                if pending_count:
                    data, count = self._frames.popleft(), pending_count
                    pending_count = 0
                else:
                    data, count = self._batch()
                self._queued_bytes -= len(data)
                with gevent.Timeout(self.write_timeout, WriteTimeout):
                    self._sock.sendall(data)
                self._wrote(len(data), count)
            if self._closing and self._close_frame is not None:
                frame, self._close_frame = self._close_frame, None
                with gevent.Timeout(self.write_timeout, WriteTimeout):
                    self._sock.sendall(frame)
                self._wrote(len(frame), 0)
        except (OSError, WriteTimeout) as exc:
            log.debug("write failed: %r", exc)
            self._failed(isinstance(exc, WriteTimeout))
            return
        finally:
            self._writer = None
        if self._closing:
            self.closed.set()
        elif self._frames:
            self._schedule()

    def _failed(self, timed_out: bool) -> None:
        self.dropped += len(self._frames)
        self._frames.clear()
        self._queued_bytes = 0
        if timed_out and not self._closing:
            # A slow consumer: the owner closes it with 4001 (the close frame
            # gets its own write deadline); until then new frames are queued.
            self._overflow()
            return
        self._closing = True
        self.closed.set()

    def _wrote(self, nbytes: int, frames: int) -> None:
        if nbytes:
            self.bytes_written += nbytes
        if frames:
            self._written += frames
            if self._stamps:
                self._observe_latency()

    def _observe_latency(self) -> None:
        stamps = self._stamps
        now = time.time()
        while stamps and stamps[0][0] <= self._written:
            _, stamp = stamps.popleft()
            if self.on_latency is not None:
                self.on_latency(now - stamp)


class WebSocketConnection:
    """The server side of one upgraded connection.

    Parameters are the handler's socket and its buffered reader (which may
    already hold the first frame), and the limits from configuration.
    """

    def __init__(
        self,
        sock: socket.socket,
        rfile: Any,
        *,
        max_message_size: int,
        max_queue_bytes: int,
        write_timeout: float,
        close_timeout: float = 2.0,
        on_overflow: Callable[[], None] | None = None,
        on_latency: Callable[[float], None] | None = None,
    ) -> None:
        self.sock = sock
        self._read = rfile.read
        self.max_message_size = max_message_size
        self.close_timeout = close_timeout
        self.outbox = Outbox(
            sock, max_bytes=max_queue_bytes, write_timeout=write_timeout,
            on_overflow=on_overflow, on_latency=on_latency,
        )
        self.last_activity = gevent.get_hub().loop.now()
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by_server = False
        self._server_closed = False

    # -- writing (delegates to the single writer) ---------------------------

    def send_text(self, text: str) -> bool:
        return self.outbox.push(encode_frame(Opcode.TEXT, text.encode("utf-8")))

    def send_frame(self, frame: bytes) -> bool:
        return self.outbox.push(frame)

    def close(self, code: int, reason: str = "", *, discard_pending: bool = False) -> None:
        """Start the closing handshake from the server side."""
        if self._server_closed:
            return
        self._server_closed = True
        if self.close_code is None:
            self.close_code, self.close_reason, self.closed_by_server = code, reason, True
        self.outbox.close(code, reason, discard_pending=discard_pending)
        # The peer has close_timeout to answer our close frame; then the
        # socket is shut down, which ends the reader and a blocked writer.
        gevent.spawn_later(self.close_timeout * 2, self._force_close)

    def _force_close(self) -> None:
        self.outbox.abort()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- reading -------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise ConnectionClosed(1006, "connection lost")
        return data

    def _read_header(self) -> FrameHeader:
        data = self._read_exact(2)
        while True:
            result = parse_header(data, max_size=self.max_message_size)
            if isinstance(result, FrameHeader):
                return result
            data += self._read_exact(result - len(data))

    def receive(self) -> str | bytes:
        """Return the next text (str) or binary (bytes) message.

        Raises :class:`ConnectionClosed` once the connection is over; by then
        the close frame has been queued and the writer told to finish.
        """
        try:
            return self._receive()
        except FrameError as exc:
            self.close(exc.code, exc.reason, discard_pending=False)
            self._drain_after_error()
            raise ConnectionClosed(exc.code, exc.reason, by_server=True) from None
        except (OSError, ConnectionClosed) as exc:
            if isinstance(exc, ConnectionClosed):
                code = exc.code
            else:
                code = 1006
            if self.close_code is None:
                self.close_code = code
            self.outbox.abort()
            raise ConnectionClosed(self.close_code, self.close_reason, by_server=self.closed_by_server) from None

    def _receive(self) -> str | bytes:
        message: list[bytes] = []
        size = 0
        opcode: Opcode | None = None
        decoder = None
        while True:
            header = self._read_header()
            payload = self._read_exact(header.length) if header.length else b""
            payload = unmask(payload, header.mask)
            self.last_activity = gevent.get_hub().loop.now()
            op = header.opcode
            if op == Opcode.PING:
                self.outbox.push_control(encode_frame(Opcode.PONG, payload))
                continue
            if op == Opcode.PONG:
                continue
            if op == Opcode.CLOSE:
                code, reason = parse_close(payload)
                self._peer_closed(code, reason)
            if op == Opcode.CONTINUATION:
                if opcode is None:
                    raise FrameError(1002, "continuation frame without a message")
            else:
                if opcode is not None:
                    raise FrameError(1002, "new message inside a fragmented message")
                opcode = op
                if op == Opcode.TEXT:
                    decoder = codecs.getincrementaldecoder("utf-8")()
            size += len(payload)
            if size > self.max_message_size:
                raise FrameError(1009, f"message exceeds the limit of {self.max_message_size} bytes")
            if decoder is not None:
                try:
                    # Incremental, so invalid UTF-8 fails at the offending fragment.
                    decoder.decode(payload, final=header.fin)
                except UnicodeDecodeError:
                    raise FrameError(1007, "text message is not valid utf-8") from None
            message.append(payload)
            if header.fin:
                data = b"".join(message)
                return data.decode("utf-8") if opcode == Opcode.TEXT else data

    def _peer_closed(self, code: int | None, reason: str) -> None:
        if self._server_closed:
            # The reply to our close frame: the handshake is complete.
            raise ConnectionClosed(self.close_code, self.close_reason, by_server=True)
        self.close_code, self.close_reason = (code if code is not None else 1005), reason
        self._server_closed = True
        # Echo the code (RFC 6455 §5.5.1); an empty close is answered empty.
        self.outbox.close(code if code is not None else None, "")
        self.outbox.closed.wait(self.close_timeout)
        raise ConnectionClosed(self.close_code, reason)

    def _drain_after_error(self) -> None:
        """Keep reading until the peer closes, so our close frame is not lost to a reset.

        Closing a socket with unread input makes the kernel send RST, and the
        client may never see the close code (reliability-and-security §7).
        """
        self.outbox.closed.wait(self.close_timeout)
        try:
            with gevent.Timeout(self.close_timeout, False):
                while self.sock.recv(65536):
                    pass
        except OSError:
            pass

    def wait_closed(self) -> None:
        """After the server started closing: wait for the peer's close frame (bounded)."""
        if not self._server_closed:
            return
        try:
            with gevent.Timeout(self.close_timeout, False):
                while True:
                    self._receive()
        except (FrameError, OSError, ConnectionClosed):
            pass
        self.outbox.abort()
