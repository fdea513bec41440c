"""Budgets with a documented answer (docs/protocol.md, limits), each beside a neighbour that must not notice.

Pings (1008), an unfinished message (1008), messages per connection
(``rate_limited``, then 4003), connections per address (429) and per node
(503) before the upgrade, the ``Origin`` rule, and draining that is visible
the moment SIGTERM arrives.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.harness import Client, GatewayProcess, close_code, masked_frame, raw_upgrade

PING, TEXT, CONTINUATION, CLOSE = 0x9, 0x1, 0x0, 0x8


@pytest.fixture(scope="module")
def gw():
    with GatewayProcess({"WS_MESSAGE_DEADLINE": "600", "WS_SWEEP_INTERVAL": "100"}) as g:
        yield g


def _upgraded(gw: GatewayProcess, user: str, headers: dict[str, str] | None = None):
    sock, head = raw_upgrade(gw.port, f"/ws?token={gw.token(user)}", headers)
    assert head.startswith("HTTP/1.1 101"), head
    opcode, payload = sock.read_frame()
    assert opcode == TEXT and json.loads(payload)["type"] == "connection"
    return sock


def _close_of(sock) -> tuple[int | None, str]:
    """Read frames until the server's close frame."""
    sock.settimeout(10)
    while True:
        opcode, payload = sock.read_frame()
        if opcode == CLOSE:
            return close_code(payload)


def _neighbour_is_fine(neighbour: Client) -> None:
    assert neighbour.request({"type": "ping", "id": "n"})["type"] == "pong"


def test_a_ping_flood_is_closed_with_1008(gw):
    neighbour = gw.connect("nina")
    neighbour.recv()
    sock = _upgraded(gw, "flood")
    sock.sendall(b"".join(masked_frame(PING, b"x") for _ in range(200)))
    pongs = 0
    sock.settimeout(10)
    while True:
        opcode, payload = sock.read_frame()
        if opcode == 0xA:
            pongs += 1
        elif opcode == CLOSE:
            assert close_code(payload) == (1008, "ping flood: more than 5 pings a second")
            break
    assert 0 < pongs <= 21  # the burst (4 x the rate) was answered, not the flood
    sock.close()
    _neighbour_is_fine(neighbour)
    neighbour.close()


def test_pings_at_the_allowed_rate_are_answered(gw):
    sock = _upgraded(gw, "steady")
    for _ in range(3):
        sock.sendall(masked_frame(PING, b"ok"))
        assert sock.read_frame() == (0xA, b"ok")
    sock.close()


@pytest.mark.parametrize("partial", ["a first fragment", "half a frame"])
def test_a_message_unfinished_past_the_deadline_is_closed_with_1008(gw, partial):
    neighbour = gw.connect("nick")
    neighbour.recv()
    sock = _upgraded(gw, "slowloris")
    started = time.monotonic()
    if partial == "a first fragment":
        sock.sendall(masked_frame(TEXT, b'{"type":"pi', fin=False))
    else:
        sock.sendall(masked_frame(TEXT, b'{"type":"ping"}' + b" " * 100)[:20])
    assert _close_of(sock) == (1008, "message not finished within 0.6 s")
    print(f"{partial}: closed after {time.monotonic() - started:.2f} s (deadline 0.6 s, sweep 0.1 s)")
    sock.close()
    _neighbour_is_fine(neighbour)
    neighbour.close()


def test_a_fragmented_message_that_finishes_in_time_is_handled(gw):
    sock = _upgraded(gw, "patient")
    sock.sendall(masked_frame(TEXT, b'{"type":"ping",', fin=False))
    time.sleep(0.2)
    sock.sendall(masked_frame(CONTINUATION, b'"id":"f"}'))
    opcode, payload = sock.read_frame()
    assert opcode == TEXT and json.loads(payload)["type"] == "pong" and json.loads(payload)["id"] == "f"
    sock.close()


def _flood(client: Client, messages: list[dict]) -> tuple[list[dict], tuple[int | None, str]]:
    """Send everything at once, then read the replies up to the close frame."""
    for message in messages:
        try:
            client.send(message)
        except OSError:
            break  # closed under us
    replies = []
    client.ws.settimeout(10)
    while True:
        opcode, data = client.ws.recv_data(control_frame=True)
        if opcode == CLOSE:
            return replies, close_code(data)
        if opcode == TEXT:
            replies.append(json.loads(data))


def test_a_message_flood_gets_rate_limited_then_4003(gw):
    neighbour = gw.connect("nora")
    neighbour.recv()
    flooder = gw.connect("flo")
    flooder.recv()
    replies, code = _flood(flooder, [{"type": "ping", "id": str(i)} for i in range(300)])
    assert code == (4003, "rate limited")
    pongs = [r for r in replies if r["type"] == "pong"]
    limited = [r for r in replies if r.get("code") == "rate_limited"]
    # The burst is answered (a token or two may refill meanwhile); past it each message is refused
    # by name, and the 21st refusal is past the error budget.
    assert 40 <= len(pongs) <= 45 and [p["id"] for p in pongs[:40]] == [str(i) for i in range(40)]
    assert len(limited) == 21 and int(limited[0]["id"]) >= 40
    assert limited[0]["message"] == "more than 20 messages a second (burst 40): this one was not handled"
    flooder.close()
    _neighbour_is_fine(neighbour)
    neighbour.close()


def test_a_subscribe_unsubscribe_flood_is_limited_too(gw):
    flooder = gw.connect("flip")
    flooder.recv()
    replies, code = _flood(flooder, [{"type": "subscribe" if i % 2 == 0 else "unsubscribe", "channel": "trades",
                                      "id": str(i)} for i in range(300)])
    assert code[0] == 4003 and sum(r.get("code") == "rate_limited" for r in replies) == 21
    flooder.close()


def _status(gw: GatewayProcess, user: str | None = None, headers: dict[str, str] | None = None,
            token: str | None = None) -> tuple[str, socket.socket]:
    sock, head = raw_upgrade(gw.port, f"/ws?token={token or gw.token(user)}", headers)
    return head.split("\r\n", 1)[0], sock


def test_connections_per_address_are_capped_with_429():
    with GatewayProcess({"WS_MAX_CONNECTIONS_PER_ADDRESS": "6"}) as gw:
        _address_cap(gw)


def _address_cap(gw: GatewayProcess) -> None:
    held = [_upgraded(gw, f"addr{i}") for i in range(6)]
    status, sock = _status(gw, "addr6")
    assert status == "HTTP/1.1 429 Too Many Requests"
    sock.close()
    # Service connections are not counted against the address.
    status, service = _status(gw, token=gw.token("engine", role="service"))
    assert status == "HTTP/1.1 101 Switching Protocols"
    service.close()
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:  # a place frees when the closed one has ended
        status, sock = _status(gw, "addr7")
        sock.close()
        if status.endswith("101 Switching Protocols") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == "HTTP/1.1 101 Switching Protocols"
    for sock in held:
        sock.close()


def test_behind_a_trusted_proxy_the_forwarded_address_counts():
    with GatewayProcess({"WS_MAX_CONNECTIONS_PER_ADDRESS": "2", "WS_TRUSTED_PROXIES": "127.0.0.1"}) as g:
        fwd = {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}
        held = [_upgraded(g, f"p{i}", fwd) for i in range(2)]
        assert _status(g, "p2", fwd)[0] == "HTTP/1.1 429 Too Many Requests"
        other = _upgraded(g, "q0", {"X-Forwarded-For": "198.51.100.4"})  # another client behind the proxy
        for sock in [*held, other]:
            sock.close()


def test_a_node_at_capacity_answers_503_before_the_upgrade():
    with GatewayProcess({"WS_MAX_CONNECTIONS": "3"}) as g:
        held = [_upgraded(g, f"c{i}") for i in range(3)]
        status, sock = _status(g, "c3")
        assert status == "HTTP/1.1 503 Service Unavailable"
        sock.close()
        health = json.loads(urllib.request.urlopen(g.http + "/readyz", timeout=5).read())
        assert health["status"] == "ready"  # full is not unready: existing clients are served
        for s in held:
            s.close()


def test_origin_is_checked_for_browsers_and_optional_for_bots():
    allowed = {"WS_ALLOWED_ORIGINS": "https://dash.example"}
    with GatewayProcess(allowed) as g:
        assert _status(g, "b1", {"Origin": "https://evil.example"})[0] == "HTTP/1.1 403 Forbidden"
        assert _status(g, "b2", {"Origin": "https://dash.example"})[0].endswith("101 Switching Protocols")
        assert _status(g, "bot")[0].endswith("101 Switching Protocols")  # no Origin: the token decides
    with GatewayProcess({**allowed, "WS_REQUIRE_ORIGIN": "true"}) as g:
        status, sock = _status(g, "bot")
        assert status == "HTTP/1.1 403 Forbidden"
        body = sock.recv(4096).decode()
        assert "an Origin header is required" in body


def test_draining_is_visible_the_moment_sigterm_arrives():
    g = GatewayProcess({"SHUTDOWN_TIMEOUT": "5000"}).start()
    stuck = _upgraded(g, "stuck")  # never answers the close: the drain lasts while we ask
    try:
        g.proc.send_signal(signal.SIGTERM)
        # From the signal's callback on (it logs "received SIGTERM" after setting draining): a
        # request the loop took before the callback ran may still be answered 200 (under CPU load
        # this test asked that early about 1 time in 3, with or without this session's changes).
        g.wait_for_log(lambda rec: "received SIGTERM" in rec.get("msg", ""), timeout=10)
        for path in ("/health", "/readyz"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(g.http + path, timeout=5)
            assert err.value.code == 503
    finally:
        stuck.close()
        assert g.stop() == 0
