"""The pywsgi handler: HTTP to Flask, ``/ws`` upgrades to our own connection.

A subclass of gevent-websocket's ``WebSocketHandler`` that keeps its place
in pywsgi but does the upgrade itself, because the library's version:

* accepts protocol versions 7 and 8 (we answer 426 with version 13);
* has no handshake deadline (half-sent requests were held 75 s and more);
* logs a rejected handshake's query string, token included;
* sends 101 before the application can refuse the request, so a bad token
  could only be answered after the upgrade;
* under Werkzeug 3, lets Flask answer 400 after the 101 (docs/stack-notes.md): ``/ws``
  never reaches Flask here.

A connection's first request head is read here: a WebSocket upgrade for a
gateway path is answered without pywsgi's request machinery (the pure
handshake logic is in ``transport/handshake.py``); anything else is replayed
into pywsgi, which serves it (and any keep-alive requests after it) as usual.

The server (:class:`GatewayServer`) is handed the :class:`Upgrades` it
needs (``gateway/server.py``'s ``Gateway`` implements it): admission
before the 101 (``admit``), the connection after it (``serve``). After the 101 the socket
leaves pywsgi: the handler's greenlet ends and the connection is read in
event-loop callbacks (``transport/socket.py``), so an idle connection holds
no greenlet.
"""

from __future__ import annotations

import io
import logging
import socket
from typing import Any, Protocol

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer
from geventwebsocket.handler import WebSocketHandler

from transport.handshake import (
    MAX_HEAD,
    Rejection,
    check_upgrade,
    parse_request_head,
    rejection_body,
    rejection_response,
    upgrade_response,
)
from transport.socket import WebSocketConnection

__all__ = ["GatewayHandler", "GatewayServer", "HandshakeTimeout", "Rejection"]

access_log = logging.getLogger("gateway.access")

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class HandshakeTimeout(Exception):
    """The request head (or a whole plain HTTP request) took too long."""


# Read buffer of a plain HTTP connection handed to pywsgi (its default, 8 KiB,
# would be most of a connection's memory; larger reads bypass the buffer).
READ_BUFFER = 1024
SEND_BUFFER = 256 * 1024
_NO_RFILE = io.BytesIO()  # until handle() knows whether pywsgi needs a file object
_NO_RFILE.close()


class _Replay(io.RawIOBase):
    """The bytes already read from a socket, then the socket: pywsgi's input for a request we peeked at."""

    def __init__(self, data: bytes, sock: Any) -> None:
        super().__init__()
        self._data = data
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self._data:
            n = min(len(buffer), len(self._data))
            buffer[:n] = self._data[:n]
            self._data = self._data[n:]
            return n
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            return None


class GatewayHandler(WebSocketHandler):
    socket: Any  # pywsgi's (gevent) socket, untyped; None once the connection is handed to the gateway
    _timer: gevent.Timeout | None = None
    _fast = False  # this request was read by handle() itself, not by pywsgi

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        super().__init__(sock, address, server, rfile if rfile is not None else _NO_RFILE)

    def handle(self) -> None:
        """Read the first request head; serve a WebSocket upgrade here, give anything else to pywsgi."""
        # No Nagle, for every connection: pywsgi writes a response's head and body in two
        # sends, and on a kept-alive connection the second waited for the client's
        # delayed ACK (about 40 ms per request). Upgraded sockets need it too: the
        # outbox already coalesces what is queued into one write.
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # a peer already gone: the read below finds out
        timer = gevent.Timeout.start_new(self.server.handshake_timeout, HandshakeTimeout)
        try:
            data = self._read_head()
        except HandshakeTimeout:
            self.server.upgrades.handshake_rejected("408")
            self._send_raw(_REQUEST_TIMEOUT)
            return
        except OSError:
            return
        finally:
            timer.cancel()
        if not data:
            return
        end = data.find(b"\r\n\r\n")
        head = parse_request_head(data[:end]) if end > 0 else None
        if head is not None and head.path in self.server.upgrades.ws_paths and head.is_websocket_upgrade:
            self._fast = True
            self.requestline = f"{head.method} {head.path} {head.version}"  # never the query (?token=)
            self.request_version = head.version
            self.environ = head.environ()
            self.environ["REMOTE_ADDR"] = self.client_address[0] if isinstance(self.client_address, tuple) else ""
            self._upgrade(self.environ, data[end + 4:])
            return
        self.rfile = io.BufferedReader(_Replay(data, self.socket), READ_BUFFER)
        super().handle()

    def _read_head(self) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data and len(data) <= MAX_HEAD:
            chunk = self.socket.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def _send_raw(self, data: bytes) -> None:
        try:
            self.socket.sendall(data)
        except OSError:
            pass

    # -- pywsgi's path (plain HTTP, and an upgrade on a kept-alive connection) ----

    def handle_one_request(self) -> Any:
        timeout = self.server.handshake_timeout
        self._timer = gevent.Timeout.start_new(timeout, HandshakeTimeout)
        try:
            return super().handle_one_request()
        except HandshakeTimeout:
            self.close_connection = True
            return None
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _handle_client_error(self, ex: BaseException) -> Any:
        if isinstance(ex, HandshakeTimeout):
            self.close_connection = True
            self.server.upgrades.handshake_rejected("408")
            return ("408", _REQUEST_TIMEOUT)
        return super()._handle_client_error(ex)

    def run_application(self) -> None:
        env = self.environ
        if (env.get("PATH_INFO") not in self.server.upgrades.ws_paths
                or "websocket" not in env.get("HTTP_UPGRADE", "").lower()):
            WSGIHandler.run_application(self)
            return
        self._upgrade(env, None)

    # -- the upgrade -----------------------------------------------------------------

    def _upgrade(self, env: dict[str, Any], pending: bytes | None) -> None:
        """Admission, then the 101 and the connection handed to the gateway (``pending``: bytes
        read past the head; None when pywsgi read the request and may hold some)."""
        gateway = self.server.upgrades
        try:
            accept = check_upgrade(env, self.request_version)
            admission = gateway.admit(env)
        except Rejection as rejection:
            self._reject(rejection)
            return
        sock = self.socket
        # A bounded kernel send buffer, so WS_QUEUE_BYTES is the real bound on
        # what a client that stops reading can hold up (Linux would grow it to 4 MiB).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.status = "101 Switching Protocols"
        if not self._fast:
            self.headers_sent = True
            self.close_connection = True
            assert self._timer is not None  # set by handle_one_request, which this path runs under
            self._timer.cancel()
            self._timer = None
            self.headers = None
            pending = self._take_buffered()
        # The request is over: keep only what the access line needs.
        env = self.environ = {"PATH_INFO": env.get("PATH_INFO"), "REQUEST_METHOD": "GET"}
        # The 101 goes out with the first frames (the ``connection`` message) in one write.
        try:
            conn = gateway.make_connection(sock, pending or b"", env, upgrade_response(accept, admission.protocol))
        except BaseException:
            gateway.release(admission)  # admitted, never served: its place is free again
            raise
        gateway.serve(conn, admission, env)
        # The connection is the gateway's now: pywsgi must neither read nor close it.
        self.server.detach(sock)
        self.socket = None
        if self._fast:
            self.log_request()

    def _take_buffered(self) -> bytes:
        """What pywsgi's reader holds past the request head (a client's first frames), without waiting."""
        sock, rfile = self.socket, self.rfile
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            pending = rfile.peek(READ_BUFFER) if rfile.raw is not None else b""
        except (BlockingIOError, OSError, ValueError):
            pending = b""
        finally:
            sock.settimeout(timeout)
        pending = bytes(pending)
        rfile.close()
        return pending

    def _reject(self, rejection: Rejection) -> None:
        self.server.upgrades.handshake_rejected(rejection.status.split()[0])
        if self._fast:
            self.status = rejection.status
            self.response_length = len(rejection_body(rejection))
            self._send_raw(rejection_response(rejection))
            self.log_request()
            return
        body = rejection_body(rejection)
        self.close_connection = True
        self.start_response(
            rejection.status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *rejection.headers],
        )
        self.result = [body]
        self.process_result()

    def format_request(self) -> str:
        # Access log line without the query string (it may carry ?token=).
        env = getattr(self, "environ", None) or {}
        path = env.get("PATH_INFO") or (self.requestline or "").split("?")[0]
        method = env.get("REQUEST_METHOD", "-")
        status = (self._orig_status or self.status or "000").split()[0]
        client = self.client_address[0] if isinstance(self.client_address, tuple) else self.client_address
        return f'{client or "-"} "{method} {path}" {status} {self.response_length or "-"}'

    def log_request(self) -> None:
        if not access_log.isEnabledFor(logging.INFO):  # the line is built only when it is written
            return
        env = getattr(self, "environ", None) or {}
        if env.get("PATH_INFO") in self.server.quiet_paths and (self._orig_status or "").startswith("2"):
            return  # an orchestrator's probe every few seconds; a failed one is still logged
        access_log.info(self.format_request())


class Upgrades(Protocol):
    """What the handler needs from whoever serves WebSocket connections (the gateway)."""

    ws_paths: frozenset[str]

    def admit(self, environ: dict[str, Any]) -> Any:
        """Before the 101: an admission, or raise :class:`transport.handshake.Rejection`."""

    def release(self, admission: Any) -> None:
        """An admitted upgrade that was never served: give its place back."""

    def make_connection(self, sock: socket.socket, pending: bytes, environ: dict[str, Any],
                        handshake: bytes = b"") -> WebSocketConnection: ...

    def serve(self, conn: WebSocketConnection, admission: Any, environ: dict[str, Any]) -> None:
        """After the 101: the connection is the gateway's from now on."""

    def handshake_rejected(self, status: str) -> None:
        """Count an upgrade refused with an HTTP ``status``."""


class GatewayServer(WSGIServer):
    """pywsgi's server, except that it leaves alone the sockets of upgraded connections.

    ``upgrades`` serves ``/ws``; ``handshake_timeout`` bounds a request head;
    successful requests to ``quiet_paths`` (health probes) leave no access line.
    """

    handler_class = GatewayHandler

    def __init__(self, listener: Any, application: Any, *, upgrades: Upgrades, handshake_timeout: float = 10.0,
                 quiet_paths: frozenset[str] = frozenset(), **kwargs: Any) -> None:
        super().__init__(listener, application, **kwargs)
        self.upgrades = upgrades
        self.handshake_timeout = handshake_timeout
        self.quiet_paths = quiet_paths
        self._detached: set[int] = set()

    def detach(self, sock: Any) -> None:
        self._detached.add(id(sock))

    def do_close(self, sock: Any, *args: Any) -> None:
        if id(sock) in self._detached:
            self._detached.discard(id(sock))
            return
        super().do_close(sock, *args)
