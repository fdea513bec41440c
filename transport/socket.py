"""One upgraded WebSocket connection: a bounded reader and a single writer.

This replaces gevent-websocket's ``WebSocket`` object after the handshake
(see ``transport/handler.py``), because the library's version cannot send
close codes, reads frames of any size, accepts unmasked frames and lets two
greenlets write one socket (docs/stack-notes.md).

* :class:`WebSocketConnection` reads in event-loop callbacks, without a
  greenlet: it parses with :class:`transport.frames.FrameReader` (message
  size limit decided from the frame header), answers pings and close
  frames *through the outbox*, and hands whole messages to its owner.
* :class:`Outbox` is the only code that writes to the socket: a bounded
  queue of ready-made frame bytes, written from the event loop with
  non-blocking sends (one per batch); a writer greenlet exists only while
  the socket is full. A full queue or a write blocked longer than
  ``write_timeout`` marks the client a slow consumer.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from protocol.limits import TokenBucket
from transport.frames import FrameError, FrameReader, Opcode, encode_close, encode_frame

__all__ = ["ConnectionClosed", "Outbox", "WebSocketConnection"]

log = logging.getLogger("gateway.transport")

# Frames and bytes written per sendall: coalescing is where the fan-out
# speed comes from (one system call per batch, not per message).
_BATCH_FRAMES = 256
_BATCH_BYTES = 256 * 1024
_READ_SIZE = 32 * 1024  # per recv; a larger message takes several (the loop calls again while bytes wait)


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
        "_head_bytes",
        "_latest",
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
        "conflated",
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
        self._head_bytes = 0  # of the handshake response still to write (not counted as WebSocket bytes)
        # Fan-out latency: a few frames carry the time their data arrived from
        # the exchange; once the writer has written past them, it observes
        # the delay. Frames are counted, not timestamped, to keep push cheap.
        self._pushed = 0
        self._written = 0
        self._stamps: deque[tuple[int, float]] | None = None
        self.closed = Event()
        self.overflowed = False
        self.dropped = 0  # frames refused or discarded (slow consumer)
        # Latest-value frames held back while the client is behind, newest per key
        # (``push_latest``); made the first time a client falls behind.
        self._latest: dict[Any, bytes] | None = None
        self.conflated = 0  # latest-value frames replaced by a newer one before they were written

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet written: what ``max_bytes`` (WS_QUEUE_BYTES, 4001 above) bounds."""
        return self._queued_bytes

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

    def push_latest(self, frame: bytes, key: Any, stamp: float | None = None) -> bool:
        """Queue a latest-value frame (a ticker, a book view) for ``key``.

        While the client keeps up this is :meth:`push`. While it is behind
        (the writer is waiting for its socket), the frame is held aside and
        a newer frame for the same key replaces it: a client that reads
        slower than a burst gets each key's newest value when it catches up,
        not a backlog of stale ones, and is not cut off for it. Trades go
        through :meth:`push` and are never replaced.
        """
        if self._writer is None or self._closing:
            return self.push(frame, stamp)
        latest = self._latest
        if latest is None:
            latest = self._latest = {}
        old = latest.get(key)
        grow = len(frame) - (len(old) if old is not None else 0)
        if self._queued_bytes + grow > self.max_bytes:
            self.dropped += 1
            self._overflow()
            return False
        latest[key] = frame
        self._queued_bytes += grow
        if old is not None:
            self.conflated += 1
        return True

    def _take_latest(self) -> bool:
        """Queue the held-back latest values behind what was queued; True if there were any."""
        latest = self._latest
        if not latest:
            return False
        self._frames.extend(latest.values())
        self._pushed += len(latest)
        latest.clear()
        return True

    def push_handshake(self, response: bytes) -> None:
        """Queue the HTTP 101 response first, so it leaves with the first frames in one write."""
        self._head_bytes += len(response)
        self.push_control(response)

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
            self.dropped += len(self._frames) + len(self._latest or ())
            self._frames.clear()
            if self._latest:
                self._latest.clear()
            self._queued_bytes = 0
            self._written = self._pushed
            self._stamps = None
        self._close_frame = encode_close(code, reason)
        self._schedule()

    def abort(self) -> None:
        """Stop writing at once (the peer is gone)."""
        self._closing = True
        self._frames.clear()
        if self._latest:
            self._latest.clear()
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
            frames = self._frames
            if len(frames) == 1 and not self._closing and not self._head_bytes:
                # The common case under paced load: one frame, one send, no batching.
                data = frames[0]
                sent = self._send_nowait(data)
                self._queued_bytes -= sent
                self.bytes_written += sent
                if sent == len(data):
                    frames.popleft()
                    self._written += 1
                    if self._stamps:
                        self._observe_latency()
                else:
                    frames[0] = data[sent:]
                    self._writer = gevent.spawn(self._drain, 1)
                return
            while frames:
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
            while self._frames or self._take_latest():
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
        self.dropped += len(self._frames) + len(self._latest or ())
        self._frames.clear()
        if self._latest:
            self._latest.clear()
        self._queued_bytes = 0
        if timed_out and not self._closing:
            # A slow consumer: the owner closes it with 4001 (the close frame
            # gets its own write deadline); until then new frames are queued.
            self._overflow()
            return
        self._closing = True
        self.closed.set()

    def _wrote(self, nbytes: int, frames: int) -> None:
        if self._head_bytes:
            head = min(nbytes, self._head_bytes)
            self._head_bytes -= head
            nbytes -= head
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

    Reading costs no greenlet: :meth:`start_reading` registers the socket
    with the event loop, whose callback reads what arrived, parses it
    (:class:`transport.frames.FrameReader`) and hands each whole message to
    ``on_message``. An idle connection is a few objects and a watcher, not
    a parked greenlet with a copy of its stack.

    Parameters are the handler's socket, the bytes it had already read past
    the request head (a client may send its first frame at once), the 101
    response to write first, and the limits from configuration.
    """

    def __init__(
        self,
        sock: socket.socket,
        pending: bytes = b"",
        *,
        handshake: bytes = b"",
        max_message_size: int,
        max_queue_bytes: int,
        write_timeout: float,
        close_timeout: float = 2.0,
        ping_rate: float = 0.0,
        on_overflow: Callable[[], None] | None = None,
        on_latency: Callable[[float], None] | None = None,
    ) -> None:
        self.sock = sock
        self._raw = getattr(sock, "_sock", sock)
        self._pending = pending
        self.reader = FrameReader(max_message_size)
        self.close_timeout = close_timeout
        self.outbox = Outbox(
            sock, max_bytes=max_queue_bytes, write_timeout=write_timeout,
            on_overflow=on_overflow, on_latency=on_latency,
        )
        if handshake:
            self.outbox.push_handshake(handshake)
        self.last_activity = gevent.get_hub().loop.now()
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by_server = False
        self._server_closed = False
        self._watcher: Any = None
        self._on_message: Callable[[str | bytes], None] | None = None
        self._on_end: Callable[[ConnectionClosed], None] | None = None
        self._error: FrameError | None = None  # after a protocol error: input is discarded until EOF
        self._ended = False
        # Budgets (docs/protocol.md, limits): pings answered per second (made at the first
        # ping: most clients never send one), and since when a message has been unfinished.
        self.ping_rate = ping_rate
        self._pings: TokenBucket | None = None
        self.message_since: float | None = None

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

    def start_reading(self, on_message: Callable[[str | bytes], None],
                      on_end: Callable[[ConnectionClosed], None]) -> None:
        """Read from now on in event-loop callbacks.

        ``on_message`` gets each whole text (``str``) or binary (``bytes``)
        message; it runs in the loop and must not block. ``on_end`` runs
        once, in a greenlet of its own, when the connection is over (close
        handshake done, protocol error, or the peer gone); by then the close
        frame, if any, has been queued. Then call :meth:`finish`.
        """
        self._on_message = on_message
        self._on_end = on_end
        self._watcher = gevent.get_hub().loop.io(self._raw.fileno(), 1)
        self._watcher.start(self._on_readable)
        pending, self._pending = self._pending, b""
        if pending:
            self._received(pending)

    def _on_readable(self) -> None:
        try:
            data = self._raw.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.outbox.abort()  # the peer is gone: nothing more can be written
            self._end()
            return
        try:
            self._received(data)
        except Exception:  # a bug must not leave the connection half alive
            log.exception("reading a connection failed")
            self.outbox.abort()
            self._end()

    def _received(self, data: bytes) -> None:
        self.last_activity = gevent.get_hub().loop.now()
        if self._error is not None or self._ended:
            return
        try:
            for opcode, value in self.reader.feed(data):
                if opcode == Opcode.TEXT or opcode == Opcode.BINARY:
                    self._on_message(value)  # type: ignore[misc]
                elif opcode == Opcode.PING:
                    if self.ping_rate and not self._ping_allowed():
                        raise FrameError(1008, f"ping flood: more than {self.ping_rate:g} pings a second")
                    self.outbox.push_control(encode_frame(Opcode.PONG, value))
                elif opcode == Opcode.CLOSE:
                    self._peer_closed(*value)
                    return
            # A message (fragments, or a frame's first bytes) left unfinished has a deadline.
            if self.reader.in_progress:
                if self.message_since is None:
                    self.message_since = self.last_activity
            else:
                self.message_since = None
        except FrameError as exc:
            # Close with the code, then discard input until the peer closes
            # (or the close deadline shuts the socket): closing with unread
            # input would make the kernel send RST, and the client might never
            # see the close code (reliability-and-security §7).
            self._error = exc
            self.close(exc.code, exc.reason)

    def _ping_allowed(self) -> bool:
        if self._pings is None:
            self._pings = TokenBucket(self.ping_rate, 4 * self.ping_rate, self.last_activity)
        return self._pings.take(self.last_activity)

    def violate(self, code: int, reason: str) -> None:
        """Close for a broken usage limit found outside the reader (a message past its deadline)."""
        if self._error is None and not self._ended:
            self._error = FrameError(code, reason)
            self.close(code, reason)

    def _peer_closed(self, code: int | None, reason: str) -> None:
        if not self._server_closed:
            self.close_code, self.close_reason = (code if code is not None else 1005), reason
            self._server_closed = True
            # Echo the code (RFC 6455 §5.5.1); an empty close is answered empty.
            self.outbox.close(code if code is not None else None, "")
        # else: the reply to our close frame: the handshake is complete.
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self.close_code is None:
            self.close_code = 1006
        closed = ConnectionClosed(self.close_code, self.close_reason, by_server=self.closed_by_server)
        if self._on_end is not None:
            gevent.spawn(self._on_end, closed)

    def finish(self) -> None:
        """After ``on_end``: let the close frame go out (bounded), then release the socket."""
        self.outbox.closed.wait(self.close_timeout)
        self.outbox.abort()
        try:
            self.sock.close()
        except OSError:
            pass

    def wait_closed(self) -> None:
        """Before reading started, after the server closed: wait (bounded) for the peer's close frame."""
        if not self._server_closed:
            return
        data, self._pending = self._pending, b""
        try:
            with gevent.Timeout(self.close_timeout, False):
                while True:
                    if data and any(op == Opcode.CLOSE for op, _ in self.reader.feed(data)):
                        break
                    data = self.sock.recv(65536)
                    if not data:
                        break
        except (FrameError, OSError):
            pass
        self.outbox.abort()
