"""The pywsgi handler: HTTP to Flask, ``/ws`` upgrades to our own connection.

A subclass of gevent-websocket's ``WebSocketHandler`` that keeps its place
in pywsgi but does the upgrade itself, because the library's version:

* accepts protocol versions 7 and 8 (we answer 426 with version 13);
* has no handshake deadline (half-sent requests were held 75 s and more);
* logs a rejected handshake's query string, token included;
* sends 101 before the application can refuse the request, so a bad token
  could only be answered after the upgrade;
* under Werkzeug 3, lets Flask answer 400 after the 101 (NOTES.md): ``/ws``
  never reaches Flask here.

The server (:class:`GatewayServer`) carries ``gateway`` (see
``gateway/server.py``): it decides admission before the 101 (``admit``)
and serves the connection after it (``serve``). After the 101 the socket
leaves pywsgi: the handler's greenlet ends and the connection is read in
event-loop callbacks (``transport/socket.py``), so an idle connection holds
no greenlet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer
from geventwebsocket.handler import WebSocketHandler

__all__ = ["GatewayHandler", "GatewayServer", "HandshakeTimeout", "Rejection"]

access_log = logging.getLogger("gateway.access")

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class HandshakeTimeout(Exception):
    """The request head (or a whole plain HTTP request) took too long."""


class Rejection(Exception):
    """Refuse an upgrade with an HTTP answer before any 101 is sent."""

    def __init__(self, status: str, error: str, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or []


# Read buffer of each connection, for its whole life: a request head and our
# small JSON messages fit; pywsgi's default (8 KiB) would be most of a
# connection's memory. Larger reads bypass the buffer anyway.
READ_BUFFER = 1024
SEND_BUFFER = 256 * 1024


class GatewayHandler(WebSocketHandler):
    _timer: gevent.Timeout | None = None

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        super().__init__(sock, address, server, rfile if rfile is not None else sock.makefile("rb", READ_BUFFER))

    def handle_one_request(self) -> Any:
        timeout = getattr(self.server, "handshake_timeout", 10.0)
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
            self.server.gateway.handshake_rejected("408")
            return ("408", _REQUEST_TIMEOUT)
        return super()._handle_client_error(ex)

    def run_application(self) -> None:
        env = self.environ
        gateway = self.server.gateway
        if env.get("PATH_INFO") not in gateway.ws_paths or "websocket" not in env.get("HTTP_UPGRADE", "").lower():
            WSGIHandler.run_application(self)
            return
        try:
            accept = self._check_handshake()
            admission = gateway.admit(env)
        except Rejection as rejection:
            self._reject(rejection)
            return
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept),
        ]
        if admission.protocol:
            headers.append(("Sec-WebSocket-Protocol", admission.protocol))
        response = "HTTP/1.1 101 Switching Protocols\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        # A bounded kernel send buffer, so WS_QUEUE_BYTES is the real bound on
        # what a client that stops reading can hold up (Linux would grow it to 4 MiB).
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        # No Nagle: the outbox already coalesces what is queued into one write, and
        # Nagle would hold a small frame back while an earlier one is unacknowledged
        # (up to the client's delayed-ACK timer, 40 ms on Linux).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.status = "101 Switching Protocols"
        self.headers_sent = True
        self.close_connection = True
        self._timer.cancel()
        self._timer = None
        # The request is over: keep only what the access line needs.
        env = self.environ = {"PATH_INFO": env.get("PATH_INFO"), "REQUEST_METHOD": "GET"}
        self.headers = None
        sock = self.socket
        # The 101 goes out with the first frames (the ``connection`` message) in one write.
        conn = gateway.make_connection(sock, self._take_buffered(), env, response.encode("latin-1"))
        gateway.serve(conn, admission, env)
        # The connection is the gateway's now: pywsgi must neither read nor close it.
        self.server.detach(sock)
        self.socket = None

    def _take_buffered(self) -> bytes:
        """What the client sent after the request head (its first frames), without waiting for more."""
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

    def _check_handshake(self) -> str:
        env = self.environ
        if env.get("REQUEST_METHOD") != "GET":
            raise Rejection("405 Method Not Allowed", "bad_handshake", "websocket upgrade needs GET")
        if self.request_version != "HTTP/1.1":
            raise Rejection("400 Bad Request", "bad_handshake", "websocket upgrade needs HTTP/1.1")
        if "upgrade" not in env.get("HTTP_CONNECTION", "").lower():
            raise Rejection("400 Bad Request", "bad_handshake", "missing Connection: Upgrade")
        if env.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
            raise Rejection(
                "426 Upgrade Required", "unsupported_version",
                "only websocket protocol version 13 is supported",
                [("Sec-WebSocket-Version", "13")],
            )
        if env.get("CONTENT_LENGTH", "0") not in ("", "0") or "chunked" in env.get("HTTP_TRANSFER_ENCODING", ""):
            raise Rejection("400 Bad Request", "bad_handshake", "a websocket upgrade request has no body")
        key = env.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid = False
        if not valid:
            raise Rejection("400 Bad Request", "bad_handshake", "missing or invalid Sec-WebSocket-Key")
        return base64.b64encode(hashlib.sha1((key + _GUID).encode("latin-1")).digest()).decode("ascii")

    def _reject(self, rejection: Rejection) -> None:
        self.server.gateway.handshake_rejected(rejection.status.split()[0])
        body = json.dumps({"error": rejection.error, "message": rejection.message}).encode()
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
        access_log.info(self.format_request())


class GatewayServer(WSGIServer):
    """pywsgi's server, except that it leaves alone the sockets of upgraded connections."""

    handler_class = GatewayHandler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._detached: set[int] = set()

    def detach(self, sock: Any) -> None:
        self._detached.add(id(sock))

    def do_close(self, sock: Any, *args: Any) -> None:
        if id(sock) in self._detached:
            self._detached.discard(id(sock))
            return
        super().do_close(sock, *args)
