"""One upgraded WebSocket connection: a bounded reader and a single writer.

This replaces gevent-websocket's ``WebSocket`` object after the handshake
(see ``transport/handler.py``), because the library's version cannot send
close codes, reads frames of any size, accepts unmasked frames and lets two
greenlets write one socket (docs/stack-notes.md).

* :class:`WebSocketConnection` reads in event-loop callbacks, without a
  greenlet: it parses with :class:`transport.frames.FrameReader` (message
  size limit decided from the frame header), answers pings and close
  frames *through the outbox*, and hands whole messages to its owner.
* its :class:`transport.outbox.Outbox` is the only code that writes to
  the socket.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent

from protocol.limits import TokenBucket
from transport.frames import FrameError, FrameReader, Opcode, encode_frame
from transport.outbox import Outbox

__all__ = ["ConnectionClosed", "WebSocketConnection"]

log = logging.getLogger("gateway.transport")

_READ_SIZE = 32 * 1024  # per recv; a larger message takes several (the loop calls again while bytes wait)


class ConnectionClosed(Exception):
    """The connection is closed; ``code`` is the close code that ended it."""

    def __init__(self, code: int | None, reason: str = "", *, by_server: bool = False) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason
        self.by_server = by_server


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
            if not self._ended and self.reader.in_step:
                self._await_close_reply(data)
            return
        try:
            for opcode, value in self.reader.feed(data):
                if opcode == Opcode.TEXT or opcode == Opcode.BINARY:
                    assert self._on_message is not None  # start_reading sets it before any input is read
                    self._on_message(value)
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
            # Close with the code, then read on until the peer answers our close frame (or the close
            # deadline shuts the socket): closing with unread input would make the kernel send RST, and
            # the client might never see the close code (reliability-and-security §7). While the reader
            # still knows where frames start (an oversized frame is passed over, length from its
            # header), the peer's close ends the connection at once; otherwise input is discarded.
            self._error = exc
            self.reader.stopped()
            self.close(exc.code, exc.reason)
            if self.reader.in_step:
                self._await_close_reply(b"")

    def _await_close_reply(self, data: bytes) -> None:
        found = self.reader.find_close(data)
        if found is not None:
            self._peer_closed(*found)

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
