"""The outbound queue of one connection and the only writer of its socket.

Channels and the hub need this queue, not the socket: a channel pushes the
same ready-made frame bytes into each subscriber's :class:`Outbox`.
Writing costs no greenlet while the client keeps up (one event-loop
callback flushes every outbox with frames, each with one non-blocking
``send``); a writer greenlet exists only while a client's socket is full.
A full queue or a write blocked longer than ``write_timeout`` marks the
client a slow consumer (4001).
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

from transport.frames import encode_close

__all__ = ["Outbox"]

log = logging.getLogger("gateway.transport")

# Frames and bytes written per sendall: coalescing is where the fan-out
# speed comes from (one system call per batch, not per message).
_BATCH_FRAMES = 256
_BATCH_BYTES = 256 * 1024


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
        batch: list[bytes] = []
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
