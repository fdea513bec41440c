"""The gateway over real sockets: exact frames, close codes and HTTP statuses."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import websocket

from tests.harness import GatewayProcess, masked_frame, raw_upgrade


@pytest.fixture(scope="module")
def gw():
    with GatewayProcess({"SERVICE_API_KEY": "test-service-key-placeholder"}) as g:
        yield g


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def publish(gw: GatewayProcess, body: dict, key: str = "test-service-key-placeholder"):
    return http("POST", gw.http + "/api/publish", body, {"Authorization": f"Bearer {key}"})


# -- the platform's client code, frame for frame ----------------------------------


def test_platform_client_flow(gw):
    c = gw.connect("alice")
    hello = c.recv()
    assert hello["type"] == "connection" and hello["status"] == "connected"
    assert hello["userId"] == "alice" and hello["sessionId"]
    assert hello["heartbeatInterval"] == 30000
    assert abs(hello["serverTime"] - time.time() * 1000) < 5000
    assert hello["limits"] == {"maxConnectionsPerUser": 5, "maxChannels": 100, "maxMessageSize": 65536}

    c.send({"type": "subscribe", "channel": "market-data", "data": {"symbol": "BTCUSDT"}})
    assert c.recv() == {"type": "subscribed", "channel": "market-data",
                        "data": {"symbol": "BTCUSDT", "exchange": "bybit", "category": "spot",
                                 "streams": ["ticker"]}}
    c.send({"type": "subscribe", "channel": "bot-status"})
    sub = c.recv()
    assert sub == {"type": "subscribed", "channel": "bot-status", "offset": 0, "epoch": sub["epoch"]}
    c.send({"type": "unsubscribe", "channel": "trades"})
    assert c.recv() == {"type": "unsubscribed", "channel": "trades", "wasSubscribed": False}

    status, _, _ = publish(gw, {"channel": "bot-status", "user": "alice", "data": {"botId": "b1", "state": "running"}})
    assert status == 202
    msg = c.recv()
    assert msg["type"] == "data" and msg["channel"] == "bot-status"
    assert msg["seq"] == 1 and msg["epoch"] == sub["epoch"] and isinstance(msg["ts"], int)
    assert msg["data"] == {"botId": "b1", "state": "running"}
    c.close()


def test_subscribe_twice_is_harmless_and_unsubscribe_confirms(gw):
    c = gw.connect("carol")
    c.recv()
    sub = {"type": "subscribe", "channel": "positions", "id": "r1"}
    first = c.request(sub)
    assert first == {"type": "subscribed", "channel": "positions", "id": "r1", "offset": 0, "epoch": first["epoch"]}
    assert c.request(sub) == {"type": "subscribed", "channel": "positions", "id": "r1", "already": True}
    publish(gw, {"channel": "positions", "user": "carol", "data": {"n": 1}})
    first = c.recv()
    assert first["seq"] == 1  # one subscription, one delivery
    assert c.request({"type": "unsubscribe", "channel": "positions", "id": 7}) == {
        "type": "unsubscribed", "channel": "positions", "id": "7"}
    publish(gw, {"channel": "positions", "user": "carol", "data": {"n": 2}})
    assert c.request({"type": "ping", "data": "after"})["type"] == "pong"  # nothing else arrived
    c.close()


def test_ping_answers_pong_with_payload_and_server_time(gw):
    c = gw.connect("dave")
    c.recv()
    pong = c.request({"type": "ping", "id": "p", "data": {"t": 123, "nested": [1, 2]}})
    assert pong["type"] == "pong" and pong["id"] == "p"
    assert pong["data"] == {"t": 123, "nested": [1, 2]}
    assert abs(pong["serverTime"] - time.time() * 1000) < 5000
    c.close()


@pytest.mark.parametrize(("frame", "code", "message"), [
    ("not json", "invalid_json", "message is not valid JSON"),
    ("[1,2,3]", "invalid_message", "message must be a JSON object"),
    ('{"channel":"trades"}', "invalid_message", "type must be a string"),
    ('{"type":"subscrib","channel":"trades"}', "unknown_type", "unknown message type 'subscrib'"),
    ('{"type":"subscribe","channel":"nope"}', "unknown_channel", "unknown channel 'nope'"),
    ('{"type":"subscribe","channel":"market-data"}', "invalid_params", "market-data needs data.symbol"),
    ('{"type":"subscribe","channel":"market-data","data":{"symbol":"BTC/USDT"}}', "invalid_params",
     "data.symbol must be 2-24 letters or digits, like BTCUSDT"),
    ('{"type":"subscribe","channel":"trades","data":{"userId":"bob"}}', "forbidden",
     "trades is private: it always carries the token's own user"),
    ('{"type":"subscribe","channel":"bot-commands"}', "forbidden", "bot-commands is for platform services only"),
    ('{"type":"ping","data":NaN}', "invalid_json", "message is not valid JSON"),
    ("[" * 5000, "invalid_json", "message is not valid JSON"),
])
def test_bad_input_gets_an_error_and_the_connection_stays(gw, frame, code, message):
    c = gw.connect("erin")
    c.recv()
    c.send(frame)
    err = c.recv()
    assert err["type"] == "error" and err["code"] == code and err["message"] == message
    assert c.request({"type": "ping"})["type"] == "pong"
    c.close()


def test_binary_frame_closes_1003(gw):
    c = gw.connect("erin")
    c.recv()
    c.ws.send_binary(b"\x00\x01")
    assert c.expect_close() == (1003, "binary frames are not accepted")


# -- private channels never leak --------------------------------------------------


def test_private_channels_carry_only_the_tokens_user(gw):
    alice, bob = gw.connect("alice"), gw.connect("bob")
    alice.recv(), bob.recv()
    for c in (alice, bob):
        c.request({"type": "subscribe", "channel": "trades"})
    publish(gw, {"channel": "trades", "user": "alice", "data": {"id": "alice-1"}})
    publish(gw, {"channel": "trades", "user": "bob", "data": {"id": "bob-1"}})
    assert alice.recv()["data"] == {"id": "alice-1"}
    assert bob.recv()["data"] == {"id": "bob-1"}  # bob's first message is his own
    assert alice.request({"type": "ping"})["type"] == "pong"  # and alice got nothing of bob's
    alice.close(), bob.close()


# -- publishing API ------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"channel": "trades", "data": {}}, 400, "invalid_message"),
    ({"channel": "nope", "user": "a", "data": {}}, 400, "unknown_channel"),
    ({"channel": "market-data", "user": "a", "data": {}}, 400, "not_publishable"),
    ({"channel": "trades", "user": "a"}, 400, "invalid_message"),
])
def test_publish_rejects_bad_requests(gw, body, status, error):
    got, _, raw = publish(gw, body)
    assert got == status and json.loads(raw)["error"] == error


def test_publish_needs_a_service_credential(gw):
    status, _, raw = publish(gw, {"channel": "trades", "user": "a", "data": {}}, key="wrong")
    assert status == 401 and json.loads(raw)["error"] == "unauthorized"
    user_token = gw.token("mallory")
    status, _, _ = publish(gw, {"channel": "trades", "user": "a", "data": {}}, key=user_token)
    assert status == 401
    service_token = gw.token("engine", role="service")
    status, _, raw = publish(gw, {"channel": "trades", "user": "a", "data": {}}, key=service_token)
    body = json.loads(raw)
    assert status == 202 and body["published"] is True and body["channel"] == "trades" and body["offset"] >= 1


# -- bot commands --------------------------------------------------------------------


def test_bot_command_without_a_service_is_an_error(gw):
    c = gw.connect("frank")
    c.recv()
    err = c.request({"type": "bot_command", "id": "c1", "data": {"botId": "bot-1", "command": "start"}})
    assert err == {"type": "error", "code": "no_service",
                   "message": "no service that owns bot 'bot-1' is connected; nothing was sent: try again later",
                   "id": "c1"}
    c.close()


def test_bot_command_reaches_services_with_the_tokens_user(gw):
    service = gw.connect(token=gw.token("bot-engine", role="service"))
    service.recv()
    assert service.request({"type": "subscribe", "channel": "bot-commands"})["type"] == "subscribed"
    user = gw.connect(token=gw.token("grace", bots=["bot-7"]))
    user.recv()
    ack = user.request({"type": "bot_command", "id": "c2",
                        "data": {"botId": "bot-7", "command": "stop", "params": {"reason": "x"}}})
    assert ack["type"] == "bot_command_ack" and ack["id"] == "c2" and ack["data"]["deliveredTo"] == 1
    cmd = service.recv()
    assert cmd["channel"] == "bot-commands"
    assert cmd["data"]["userId"] == "grace" and cmd["data"]["botId"] == "bot-7"
    assert cmd["data"]["command"] == "stop" and cmd["data"]["commandId"] == ack["data"]["commandId"]
    other = user.request({"type": "bot_command", "data": {"botId": "bot-8", "command": "stop"}})
    assert other["code"] == "forbidden"
    spoof = user.request({"type": "bot_command", "data": {"botId": "bot-7", "command": "stop", "userId": "x"}})
    assert spoof["code"] == "forbidden"
    service.close(), user.close()


# -- authentication --------------------------------------------------------------------


def _handshake_status(gw, token: str | None) -> tuple[int, dict]:
    url = gw.ws_url + (f"?token={token}" if token is not None else "")
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(url, timeout=5)
    return info.value.status_code, json.loads(info.value.resp_body)


def test_bad_tokens_get_401_before_the_upgrade(gw):
    now = int(time.time())
    import jwt as pyjwt
    cases = {
        None: "token_missing",
        "": "token_missing",
        "abc": "token_malformed",
        "a.b.c": "token_malformed",
        gw.token("alice", secret="another-secret-of-sufficient-length-123"): "token_bad_signature",
        gw.token("alice", ttl=-60): "token_expired",
        pyjwt.encode({"sub": "alice", "iat": now}, gw.secret, algorithm="HS256"): "token_bad_claims",
        pyjwt.encode({"exp": now + 60}, gw.secret, algorithm="HS256"): "token_bad_claims",
        pyjwt.encode({"sub": "alice", "exp": now + 60}, None, algorithm="none"): "token_bad_signature",
    }
    for token, error in cases.items():
        status, body = _handshake_status(gw, token)
        assert (status, body["error"]) == (401, error), token


def test_token_in_subprotocol_header_is_accepted_and_never_echoed(gw):
    token = gw.token("henry")
    ws = websocket.create_connection(gw.ws_url, timeout=5, subprotocols=["trading.v1", f"bearer.{token}"])
    assert ws.getsubprotocol() == "trading.v1"
    assert token not in json.dumps(dict(ws.getheaders()))
    assert json.loads(ws.recv())["userId"] == "henry"
    ws.close()


def test_no_log_line_contains_a_token(gw):
    tokens = [gw.token("ivan"), gw.token("ivan", ttl=-100), gw.token("ivan", secret="x" * 40)]
    for token in tokens:
        try:
            websocket.create_connection(f"{gw.ws_url}?token={token}", timeout=5).close()
        except websocket.WebSocketBadStatusException:
            pass
    gw.wait_for_log(lambda r: r.get("logger") == "gateway.access" and "401" in r["msg"])
    text = "\n".join(gw.lines)
    assert "GET /ws" in text
    for token in tokens:
        assert token not in text
        assert token.split(".")[2] not in text
    assert "?token=" not in text


# -- limits ------------------------------------------------------------------------------


def test_sixth_connection_of_a_user_is_closed_4503(gw):
    clients = [gw.connect("judy") for _ in range(5)]
    for c in clients:
        assert c.recv()["type"] == "connection"
    sixth = gw.connect("judy")
    assert sixth.expect_close() == (4503, "at most 5 connections per user")
    clients[0].close()
    deadline = time.monotonic() + 5
    while True:  # the slot frees once the server has seen the close
        seventh = gw.connect("judy")
        opcode, _ = seventh.ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            break
        assert time.monotonic() < deadline
    for c in clients[1:]:
        c.close()
    seventh.close()


def test_concurrent_connects_exactly_five_succeed(gw):
    outcomes: list[str] = []
    token = gw.token("kate")
    barrier = threading.Barrier(20)

    def attempt() -> None:
        barrier.wait()
        ws = websocket.create_connection(f"{gw.ws_url}?token={token}", timeout=5)
        opcode, data = ws.recv_data(control_frame=True)
        outcomes.append("ok" if opcode == websocket.ABNF.OPCODE_TEXT else f"close:{data[:2].hex()}")
        ws.sock.settimeout(5)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            done.wait(10)
        ws.close()

    done = threading.Event()
    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(outcomes) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    for t in threads:
        t.join(10)
    assert outcomes.count("ok") == 5
    assert outcomes.count("close:" + (4503).to_bytes(2, "big").hex()) == 15


def test_oversized_frame_is_refused_from_its_header_1009(gw):
    sock, head = raw_upgrade(gw.port, f"/ws?token={gw.token('leo')}")
    assert head.startswith("HTTP/1.1 101")
    assert json.loads(sock.read_frame()[1])["type"] == "connection"
    # Announce 1 GiB and send none of it: the server must not wait for the payload.
    sock.sendall(bytes((0x81, 0x80 | 127)) + (1 << 30).to_bytes(8, "big") + b"mask")
    opcode, payload = sock.read_frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1009
    sock.close()


def test_after_a_1009_the_clients_close_reply_ends_the_connection_at_once(gw):
    # The client sends a whole oversized frame (1 MiB over a 64 KiB limit), reads the 1009, answers with
    # its close frame: the server passes over the frame's bytes, reads the answer and closes TCP then, not
    # at its close deadline (2 x 2 s: before this change every 1009 ended there).
    sock, head = raw_upgrade(gw.port, f"/ws?token={gw.token('lea')}")
    assert head.startswith("HTTP/1.1 101")
    sock.read_frame()
    sock.sendall(masked_frame(0x2, os.urandom(1 << 20)))
    opcode, payload = sock.read_frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1009
    sock.sendall(masked_frame(0x8, (1009).to_bytes(2, "big")))
    answered = time.monotonic()
    sock.settimeout(10)
    assert sock.recv(1) == b""  # the server closed the connection
    assert time.monotonic() - answered < 3.0, "the server waited for its close deadline"
    sock.close()


def test_unmasked_client_frame_is_closed_1002(gw):
    sock, _ = raw_upgrade(gw.port, f"/ws?token={gw.token('mia')}")
    sock.read_frame()
    sock.sendall(masked_frame(0x1, b'{"type":"ping"}', mask=False))
    opcode, payload = sock.read_frame()
    assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1002)
    assert payload[2:] == b"client frame not masked"
    sock.close()


def test_old_protocol_version_gets_426(gw):
    sock, head = raw_upgrade(gw.port, f"/ws?token={gw.token('ned')}", {"Sec-WebSocket-Version": "8"})
    assert head.startswith("HTTP/1.1 426")
    assert "Sec-WebSocket-Version: 13" in head
    sock.close()


def test_plain_get_of_ws_is_426(gw):
    status, _, raw = http("GET", gw.http + "/ws")
    assert status == 426 and json.loads(raw)["error"] == "upgrade_required"


def test_channel_cap_and_message_size_limits():
    with GatewayProcess({"WS_MAX_CHANNELS": "3", "WS_MAX_MESSAGE_SIZE": "1024"}) as g:
        c = g.connect("olga")
        assert c.recv()["limits"]["maxChannels"] == 3
        for ch in ("trades", "positions", "signals"):
            assert c.request({"type": "subscribe", "channel": ch})["type"] == "subscribed"
        err = c.request({"type": "subscribe", "channel": "bot-status"})
        assert err["code"] == "too_many_channels" and err["message"] == "at most 3 channels per connection"
        c.send({"type": "ping", "data": "x" * 2000})
        assert c.expect_close() == (1009, "frame of 2028 bytes exceeds the limit of 1024")


# -- liveness and expiry ---------------------------------------------------------------------


def test_heartbeat_and_silence():
    env = {"WS_HEARTBEAT_INTERVAL": "300", "WS_SILENCE_TIMEOUT": "1200", "WS_SWEEP_INTERVAL": "100"}
    with GatewayProcess(env) as g:
        # A client that answers pings (websocket-client does, while reading) stays.
        live = g.connect("pat")
        live.recv()
        live.ws.settimeout(3)
        opcode, _ = live.ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PING
        # A raw client that never answers is closed with 4002 and forgotten.
        sock, _ = raw_upgrade(g.port, f"/ws?token={g.token('quinn')}")
        while True:
            opcode, payload = sock.read_frame()
            if opcode == 0x8:
                break
        assert int.from_bytes(payload[:2], "big") == 4002
        sock.close()
        deadline = time.monotonic() + 5
        while True:
            stats = g.stats()
            if "quinn" not in stats["connectionsByUser"]:
                break
            assert time.monotonic() < deadline
        live.close()


def test_token_expiry_and_in_band_refresh():
    with GatewayProcess({"WS_SWEEP_INTERVAL": "100", "JWT_LEEWAY": "0"}) as g:
        # Expiry without refresh: 4000; with a refresh of the same user: stays.
        short = g.connect(token=g.token("rita", ttl=2))
        short.recv()
        refreshed = g.connect(token=g.token("sam", ttl=2))
        refreshed.recv()
        reply = refreshed.request({"type": "refresh", "token": g.token("sam", ttl=60)})
        assert reply["type"] == "refreshed"
        mismatch = refreshed.request({"type": "refresh", "token": g.token("other", ttl=60)})
        assert mismatch["code"] == "token_subject_mismatch"
        assert short.expect_close(6) == (4000, "token expired")
        assert refreshed.request({"type": "ping"})["type"] == "pong"
        short.close(), refreshed.close()


def test_half_sent_handshake_is_dropped():
    import socket
    with GatewayProcess({"WS_CONNECTION_TIMEOUT": "500"}) as g:
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        answer = sock.recv(1000)
        assert answer.startswith(b"HTTP/1.1 408") and sock.recv(100) == b""
        assert time.monotonic() - start < 3
        sock.close()


def test_origin_allow_list():
    with GatewayProcess({"WS_ALLOWED_ORIGINS": "https://dash.example"}) as g:
        token = g.token("tom")
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(f"{g.ws_url}?token={token}", origin="https://evil.example", timeout=5)
        assert info.value.status_code == 403
        ws = websocket.create_connection(f"{g.ws_url}?token={token}", origin="https://dash.example", timeout=5)
        assert json.loads(ws.recv())["type"] == "connection"
        ws.close()


# -- HTTP -------------------------------------------------------------------------------------


def test_http_endpoints(gw):
    status, headers, raw = http("GET", gw.http + "/health")
    body = json.loads(raw)
    assert status == 200 and body["status"] == "ok" and body["components"]["server"]["state"] == "serving"
    status, _, raw = http("GET", gw.http + "/ws/stats")
    stats = json.loads(raw)
    # Anyone gets the counts; user ids only with a service credential.
    assert status == 200 and {"connections", "channels", "connectionsByChannel", "subscriptionsByChannel",
                              "users"} <= set(stats) and "connectionsByUser" not in stats
    stats = json.loads(http("GET", gw.http + "/ws/stats",
                            headers={"Authorization": "Bearer test-service-key-placeholder"})[2])
    assert "connectionsByUser" in stats
    assert "connectionsByUser" in gw.stats()  # a service-role token works too
    user = json.loads(http("GET", gw.http + "/ws/stats", headers={"Authorization": f"Bearer {gw.token('ann')}"})[2])
    assert "connectionsByUser" not in user
    status, _, raw = http("GET", gw.http + "/api/version")
    assert status == 200 and json.loads(raw)["protocol"] == "trading.v1"
    from market.bybit import COMPILED
    assert json.loads(raw)["compiled"] == {"bybitFrames": COMPILED}
    status, headers, raw = http("GET", gw.http + "/metrics")
    assert status == 200
    from prometheus_client import CONTENT_TYPE_LATEST
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert b"ws_connections_opened_total" in raw


def test_stats_follow_connections_and_subscriptions(gw):
    c = gw.connect("uma")
    c.recv()
    c.request({"type": "subscribe", "channel": "signals"})
    stats = gw.stats()
    assert stats["connectionsByUser"]["uma"] == 1 and stats["connectionsByChannel"]["signals"] >= 1
    c.close()
    deadline = time.monotonic() + 5
    while "uma" in gw.stats()["connectionsByUser"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    # connectionsByChannel counts connections; subscriptionsByChannel one per symbol and stream.
    clients = []
    for user in ("uma", "vic"):
        m = gw.connect(user)
        m.recv()
        for symbol in ("BTCUSDT", "ETHUSDT"):
            reply = m.request({"type": "subscribe", "channel": "market-data",
                               "data": {"symbol": symbol, "streams": ["ticker", "trades"]}})
            assert reply["type"] == "subscribed"
        assert m.request({"type": "subscribe", "channel": "market-data", "data": {"symbol": "SOLUSDT"}})["type"] \
            == "subscribed"
        clients.append(m)
    deadline = time.monotonic() + 5
    while True:  # channel actors count their subscribers asynchronously; earlier tests' clients may be closing
        stats = gw.stats()
        if (stats["connectionsByChannel"].get("market-data"), stats["subscriptionsByChannel"].get("market-data")) \
                == (2, 10):
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.02)
    for m in clients:
        m.close()


def test_refuses_to_start_without_a_key():
    g = GatewayProcess({"JWT_SECRET": ""})
    with pytest.raises(RuntimeError):
        g.start(timeout=10)
    assert g.proc.wait(10) == 2
    assert any("JWT_SECRET is not set" in line for line in g.lines)


def test_slow_consumer_is_cut_with_4001_and_others_keep_their_data():
    with GatewayProcess({"SERVICE_API_KEY": "test-service-key-placeholder", "WS_QUEUE_BYTES": "262144",
                         "WS_WRITE_TIMEOUT": "300", "WS_MAX_MESSAGE_SIZE": "200000"}) as g:
        healthy = g.connect("victor")
        healthy.recv()
        healthy.request({"type": "subscribe", "channel": "signals"})
        stalled, _ = raw_upgrade(g.port, f"/ws?token={g.token('victor')}")
        stalled.read_frame()
        stalled.sendall(masked_frame(0x1, b'{"type":"subscribe","channel":"signals"}'))
        stalled.read_frame()
        big = "x" * 60000
        for i in range(250):  # about 15 MB: beyond what socket buffers hold, far beyond the queue
            assert publish(g, {"channel": "signals", "user": "victor", "data": {"i": i, "pad": big}})[0] == 202
            assert healthy.recv()["data"]["i"] == i  # the healthy client gets every message, in order
        # The gateway gave up on the stalled one (it never read): closed with 4001, its frames dropped.
        deadline = time.monotonic() + 10
        while g.stats()["connectionsByUser"].get("victor") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        metrics = http("GET", g.http + "/metrics")[2].decode()
        assert 'ws_close_codes_total{code="4001"} 1.0' in metrics
        # How many were dropped depends on how much of the 15 MB the kernel's autotuned socket buffers took
        # (98 of the 250 were dropped in one CI run, where "> 100" had been asserted); some always are.
        assert float(metrics.split('ws_messages_dropped_total{reason="slow_consumer"} ')[1].split()[0]) > 0
        # Reading at last, it finds what the kernel buffered and then the end of the connection.
        stalled.settimeout(10)
        while stalled.recv(1 << 20):
            pass
        healthy.close()


def test_first_frame_sent_with_the_request_head_is_answered(gw):
    # A client may send its first frame in the same packet as the upgrade request.
    token = gw.token("otto")
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    request = (f"GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    sock.sendall(request + masked_frame(0x1, b'{"type":"subscribe","channel":"signals","id":"early"}'))
    data = b""
    deadline = time.monotonic() + 5
    while b'"early"' not in data and time.monotonic() < deadline:
        data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 101")
    assert b'"type":"connection"' in data and b'"type":"subscribed"' in data and b'"id":"early"' in data
    sock.close()


def test_upgrade_request_with_a_body_is_400(gw):
    sock, head = raw_upgrade(gw.port, f"/ws?token={gw.token('pia')}", {"Content-Length": "5"})
    assert head.startswith("HTTP/1.1 400")
    length = int(next(line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
    assert json.loads(sock.recv_exact(length)) == {"error": "bad_handshake",
                                                   "message": "a websocket upgrade request has no body"}
    sock.close()


def test_upgrade_after_a_plain_request_on_a_kept_alive_connection(gw):
    # pywsgi serves the first request; the second, an upgrade, still becomes a WebSocket.
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
    while len(body) < length:
        body += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    token = gw.token("kai")
    sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = body[length:]
    while b'"type":"connection"' not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101")
    sock.close()
