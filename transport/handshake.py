"""The WebSocket opening handshake (RFC 6455 §4), with no I/O: request head in, answers out.

The handler (``transport/handler.py``) reads a connection's first request
head itself; when it is a WebSocket upgrade for one of the gateway's paths,
everything from here to the 101 happens without pywsgi's request
machinery (a header parser, a full WSGI environ and a file object per
connection were a sixth of a connect's CPU). Anything else, or a head this
parser does not accept, goes to pywsgi unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_HEAD",
    "Rejection",
    "RequestHead",
    "check_upgrade",
    "parse_request_head",
    "rejection_body",
    "rejection_response",
    "upgrade_response",
]

MAX_HEAD = 16 * 1024  # bytes of request line + headers read before handing the request to pywsgi
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Rejection(Exception):
    """Refuse an upgrade with an HTTP answer before any 101 is sent."""

    def __init__(self, status: str, error: str, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or []


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", " (RFC 9110 §5.3)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def is_websocket_upgrade(self) -> bool:
        return "websocket" in self.headers.get("upgrade", "").lower()

    def environ(self) -> dict[str, Any]:
        """The WSGI-style keys that admission and :func:`check_upgrade` read."""
        path, _, query = self.target.partition("?")
        env: dict[str, Any] = {"REQUEST_METHOD": self.method, "PATH_INFO": path, "QUERY_STRING": query,
                               "SERVER_PROTOCOL": self.version}
        for name, value in self.headers.items():
            if name == "content-length":
                env["CONTENT_LENGTH"] = value
            elif name == "content-type":
                env["CONTENT_TYPE"] = value
            else:
                env["HTTP_" + name.upper().replace("-", "_")] = value
        return env


def parse_request_head(head: bytes) -> RequestHead | None:
    """Parse a request line and header fields (without the blank line).

    Returns None for anything this strict parser does not take (a request
    line that is not ``METHOD target HTTP/1.x``, a field without a colon,
    obsolete line folding, a target with percent-escapes in its path): the
    caller hands such a request to pywsgi, which answers it as before.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    method, target, version = parts
    if "%" in target.split("?", 1)[0]:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line or line[0] in " \t":
            return None
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        name = name.lower()
        value = value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return RequestHead(method, target, version, headers)


def check_upgrade(env: dict[str, Any], version: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a valid upgrade request, or :class:`Rejection`."""
    if env.get("REQUEST_METHOD") != "GET":
        raise Rejection("405 Method Not Allowed", "bad_handshake", "websocket upgrade needs GET")
    if version != "HTTP/1.1":
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


def upgrade_response(accept: str, protocol: str | None) -> bytes:
    head = f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
           f"Sec-WebSocket-Accept: {accept}\r\n"
    if protocol:
        head += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    return (head + "\r\n").encode("latin-1")


def rejection_body(rejection: Rejection) -> bytes:
    return json.dumps({"error": rejection.error, "message": rejection.message}).encode()


def rejection_response(rejection: Rejection) -> bytes:
    body = rejection_body(rejection)
    head = f"HTTP/1.1 {rejection.status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n" \
           "Connection: close\r\n" + "".join(f"{k}: {v}\r\n" for k, v in rejection.headers) + "\r\n"
    return head.encode("latin-1") + body
