"""The opening handshake without sockets: request heads in, answers out."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transport.handshake import (
    Rejection,
    check_upgrade,
    parse_request_head,
    rejection_response,
    upgrade_response,
)

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)

HEAD = (b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: trading.v1\r\nSec-WebSocket-Protocol: bearer.x")


def test_a_browser_upgrade_head():
    head = parse_request_head(HEAD)
    assert head is not None and head.method == "GET" and head.path == "/ws" and head.version == "HTTP/1.1"
    assert head.is_websocket_upgrade
    env = head.environ()
    assert env["QUERY_STRING"] == "token=abc" and env["PATH_INFO"] == "/ws"
    assert env["HTTP_SEC_WEBSOCKET_PROTOCOL"] == "trading.v1, bearer.x"  # repeated fields joined
    # RFC 6455 §1.3's example key and accept value
    assert check_upgrade(env, head.version) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("head", [
    b"GET /ws HTTP/2\r\nHost: x",                      # not HTTP/1.x
    b"GET  /ws HTTP/1.1\r\nHost: x",                   # not three words
    b"GET /%77s HTTP/1.1\r\nHost: x",                  # escapes in the path: pywsgi decodes them
    b"GET /ws HTTP/1.1\r\nHost: x\r\n folded",         # obsolete line folding
    b"GET /ws HTTP/1.1\r\nNo colon here",
    b"GET /ws HTTP/1.1\r\nName : value",               # whitespace before the colon (RFC 9112 §5.1)
    b"GET ws HTTP/1.1\r\nHost: x",                     # not an origin-form target
])
def test_heads_this_parser_leaves_to_pywsgi(head):
    assert parse_request_head(head) is None


@given(st.binary(max_size=200))
def test_parse_never_raises(data):
    parse_request_head(data)


@pytest.mark.parametrize(("change", "status"), [
    ({"REQUEST_METHOD": "POST"}, "405"),
    ({"HTTP_CONNECTION": "keep-alive"}, "400"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, "426"),
    ({"CONTENT_LENGTH": "5"}, "400"),
    ({"HTTP_TRANSFER_ENCODING": "chunked"}, "400"),
    ({"HTTP_SEC_WEBSOCKET_KEY": "short"}, "400"),
])
def test_bad_upgrades_are_rejected_with_a_status(change, status):
    env = {**parse_request_head(HEAD).environ(), **change}
    with pytest.raises(Rejection) as err:
        check_upgrade(env, "HTTP/1.1")
    assert err.value.status.startswith(status)


def test_http_1_0_is_rejected():
    with pytest.raises(Rejection) as err:
        check_upgrade(parse_request_head(HEAD).environ(), "HTTP/1.0")
    assert err.value.status.startswith("400")


def test_responses():
    key = base64.b64encode(b"0123456789abcdef").decode()
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert upgrade_response(accept.decode(), "trading.v1") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: trading.v1\r\n\r\n")
    raw = rejection_response(Rejection("426 Upgrade Required", "unsupported_version", "v13 only",
                                       [("Sec-WebSocket-Version", "13")]))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n") and b"Sec-WebSocket-Version: 13" in head
    assert b"Content-Length: %d" % len(body) in head
    assert body == b'{"error": "unsupported_version", "message": "v13 only"}'
