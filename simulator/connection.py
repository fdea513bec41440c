"""One client WebSocket connection: a reader loop, one writer greenlet, a bounded queue.

Only the writer greenlet writes to the socket (two greenlets writing one
gevent socket raise ``ConcurrentObjectUseError``, docs/stack-notes.md), and
it writes everything queued in one ``sendall``. Everyone else calls
:meth:`Connection.send`, which never blocks: a client that stops reading
fills its own queue and is dropped, and nobody else waits for it.

Frames are read and written with the gateway's own RFC 6455 layer,
:mod:`transport.frames`: a :class:`~transport.frames.FrameReader` per
connection (masking, sizes, UTF-8, fragmentation and close codes enforced;
a client that breaks RFC 6455 is closed with the code it names), and
``encode_frame``/``encode_close`` for everything sent. Unlike
gevent-websocket 0.10.1 it sends real close codes, which the ``close``
fault needs (docs/stack-notes.md).

Uses gevent's own socket objects and primitives, so it runs the same with
or without ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from simulator.protocol import Category, Topic, dumps
from transport.frames import FrameError, FrameReader, Opcode, encode_close, encode_frame

__all__ = ["Connection"]

logger = logging.getLogger("simulator")

_CLOSE_WAIT = 2.0  # seconds to wait for the client's close frame after ours (RFC 6455 §7.1.1)
_MAX_WRITE = 256 * 1024  # bytes joined into one sendall
_MAX_MESSAGE = 1 << 16  # bytes in one client message; more is closed with 1009 (requests are tiny)
_NORMAL = 1000  # close code, RFC 6455 §7.4.1


class Connection:
    """A client connection to ``/v5/public/{category}``.

    ``on_text(conn, payload)`` runs in the reader greenlet for each text
    (``str``) or binary (``bytes``) message. ``subscriptions`` maps topic
    names to topics, in subscribe order; ``unsynced`` holds the stateful
    topics whose next message must be a snapshot. ``stats`` is the server's shared counter.
    """

    def __init__(
        self,
        number: int,
        conn_id: str,
        category: Category,
        sock: Any,
        peer: str,
        on_text: Callable[[Connection, str | bytes], None],
        stats: Counter[str],
        idle_timeout: float | None = None,
        max_queue: int = 10_000,
    ) -> None:
        self.number = number
        self.conn_id = conn_id
        self.category = category
        self.peer = peer
        self.subscriptions: dict[str, Topic] = {}
        self.unsynced: set[str] = set()
        self.silenced_until: float | None = None
        self.silence_replies = True  # while silenced, replies (pongs, acks) are dropped too
        self.delayed: deque[tuple[float, str | bytes]] = deque()  # requests waiting out a latency fault
        self.delay_worker: gevent.Greenlet | None = None
        self.messages_sent = 0
        self.bytes_sent = 0
        self.dropped_silent = 0
        self.connected_at = time.time()
        self._sock = sock
        self._on_text = on_text
        self._stats = stats
        self._idle_timeout = idle_timeout
        self._max_queue = max_queue
        self._queue: deque[bytes] = deque()
        self._wakeup = gevent.event.Event()
        self._closing = False  # no more sends, except the close frame already queued
        self._done = False  # the writer should stop once the queue is empty
        self._close_sent = False
        self._close_timer: gevent.Greenlet | None = None
        self._writer: gevent.Greenlet | None = None

    # --- sending ----------------------------------------------------------------------------

    def is_silenced(self, now: float) -> bool:
        """True while a ``silent`` fault holds; when it ends, every topic needs a snapshot again."""
        if self.silenced_until is None:
            return False
        if now < self.silenced_until:
            return True
        self.unsilence()
        return False

    def silence(self, seconds: float | None, *, replies: bool = False) -> None:
        """Send nothing for ``seconds`` (``None``: until :meth:`unsilence`);
        with ``replies``, replies to requests (pongs, acks) still go out."""
        self.silenced_until = math.inf if seconds is None else time.monotonic() + seconds
        self.silence_replies = not replies

    def unsilence(self) -> None:
        """End a silence; the deltas it swallowed are replaced by fresh snapshots."""
        if self.silenced_until is not None:
            self.silenced_until = None
            self.silence_replies = True
            self.unsynced |= set(self.subscriptions)

    def send(self, frame: bytes, *, force: bool = False, reply: bool = False) -> bool:
        """Queue an encoded frame. Returns False if dropped (silenced, closing, or the client too slow).

        ``force`` sends even while silenced (for ``close`` and ``garbage`` faults); ``reply``
        marks a reply to a request, sent while silenced if the silence spares replies.
        """
        if self._closing:
            return False
        if not force and not (reply and not self.silence_replies) and self.is_silenced(time.monotonic()):
            self.dropped_silent += 1
            self._stats["messages_dropped_silent"] += 1
            return False
        if len(self._queue) >= self._max_queue:
            logger.warning("dropping slow client %s: %d frames queued", self.peer, len(self._queue))
            self._stats["connections_dropped_slow"] += 1
            self.close(abrupt=True)
            return False
        self._queue.append(frame)
        self.messages_sent += 1
        self.bytes_sent += len(frame)
        self._stats["messages_sent"] += 1
        self._stats[f"messages_sent_{self.category}"] += 1
        self._wakeup.set()
        return True

    def send_message(self, message: dict[str, Any], *, force: bool = False, reply: bool = False) -> bool:
        """Encode ``message`` as one text frame and :meth:`send` it."""
        return self.send(encode_frame(Opcode.TEXT, dumps(message)), force=force, reply=reply)

    def close(self, code: int = _NORMAL, reason: str = "", *, abrupt: bool = False) -> None:
        """Start closing: a close frame with ``code`` (RFC 6455 §7.1.2), or with ``abrupt`` a bare TCP close."""
        if self._done:
            return
        if abrupt:
            self._closing = self._done = True
            self._queue.clear()
            self._shutdown()
            return
        if self._closing:
            return
        self._queue.append(encode_close(code, reason))
        self._closing = True
        self._wakeup.set()
        # the reader waits for the client's close frame; do not wait for ever
        self._close_timer = gevent.spawn_later(_CLOSE_WAIT, self._shutdown)

    def _shutdown(self) -> None:
        self._done = True
        self._wakeup.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_loop(self) -> None:
        sock, queue = self._sock, self._queue
        while True:
            if not queue:
                if self._done or (self._closing and self._close_sent):
                    return
                self._wakeup.clear()
                self._wakeup.wait()
                continue
            chunks, size = [], 0
            while queue and size < _MAX_WRITE:
                chunk = queue.popleft()
                chunks.append(chunk)
                size += len(chunk)
            try:
                sock.sendall(b"".join(chunks))
            except OSError:
                self._done = True
                queue.clear()
                return
            if self._closing and not queue:
                self._close_sent = True

    # --- reading ----------------------------------------------------------------------------

    def run(self, initial: bytes = b"") -> None:
        """Serve the connection until it closes; returns when the socket is done."""
        self._writer = gevent.spawn(self._write_loop)
        reader = FrameReader(_MAX_MESSAGE)
        sock = self._sock
        sock.settimeout(self._idle_timeout)
        data = initial
        try:
            while not self._done:
                if data and not self._handle_bytes(reader, data):
                    break
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    logger.info(
                        "closing idle client %s after %ss",
                        self.peer,
                        self._idle_timeout,
                    )
                    self._stats["connections_closed_idle"] += 1
                    self.close(abrupt=True)
                    break
                except OSError:
                    break
                if not data:
                    break
        finally:
            self._closing = True
            self._done = True
            self._wakeup.set()
            self._writer.join(timeout=1.0)
            self._writer.kill(block=False)
            if self._close_timer is not None:
                self._close_timer.kill(block=False)
            try:
                sock.close()
            except OSError:
                pass

    def _handle_bytes(self, reader: FrameReader, data: bytes) -> bool:
        """Dispatch received bytes; False when the connection should stop reading.

        What came before a frame that breaks RFC 6455 is handled; that frame
        closes the connection with the code :class:`~transport.frames.FrameError`
        names (the reader is not fed again).
        """
        try:
            for opcode, value in reader.feed(data):
                if opcode == Opcode.CLOSE:
                    code, _reason = value
                    if not self._closing:
                        # echo the code back (RFC 6455 §5.5.1); 1005 "no status" is never sent
                        self.close(_NORMAL if code is None else code)
                    return False
                if self._closing:
                    continue
                if opcode == Opcode.PING:
                    self.send(encode_frame(Opcode.PONG, value), reply=True)
                elif opcode != Opcode.PONG:
                    self._on_text(self, value)
        except FrameError as exc:
            self.close(exc.code, exc.reason)
            return False
        return True

    def state(self, now: float) -> dict[str, Any]:
        """JSON-ready description for ``GET /control/state``."""
        silenced = self.silenced_until is not None and now < self.silenced_until
        left = None
        if silenced and self.silenced_until is not None and math.isfinite(self.silenced_until):
            left = round(self.silenced_until - now, 3)
        return {
            "id": self.number,
            "conn_id": self.conn_id,
            "category": str(self.category),
            "peer": self.peer,
            "subscriptions": list(self.subscriptions),
            "silenced": silenced,
            "silenced_seconds_left": left,
            "messages_sent": self.messages_sent,
            "bytes_sent": self.bytes_sent,
            "messages_dropped_silent": self.dropped_silent,
            "connected_for_s": round(time.time() - self.connected_at, 3),
        }
