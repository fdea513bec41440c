"""Rows refused before the upgrade: tokens, forged JWTs, Origin, odd handshakes, slowloris, token leakage."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import select
import socket
import statistics
import time
import warnings

import jwt

from tests.abuse.fleet import MAIN_ENV, SERVICE_KEY, RawWS, Row, log_problems


def _refusal(gw, token: str | None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    ws = RawWS.open(gw, None, token=token, headers=headers)
    try:
        body = ws.body()
        return ws.status, (json.loads(body) if body else {})
    finally:
        ws.close()


def _accepted(gw) -> float:
    return gw.metric("ws_connections_opened_total")


def test_bad_tokens_are_refused_with_401_before_the_upgrade(main_gw, fleet):
    cases = {
        "missing": (None, "token_missing"),
        "empty": ("", "token_missing"),
        "8 KiB random": (secrets.token_urlsafe(6144)[:8192], "token_malformed"),
        "junk three segments": ("abc.def.ghi", "token_malformed"),
        "three segments of 8 KiB": (".".join(secrets.token_urlsafe(2000) for _ in range(3))[:8190],
                                    "token_malformed"),
    }
    with Row(fleet, "bad tokens") as row:
        opened = _accepted(main_gw)
        started = time.monotonic()
        for name, (token, error) in cases.items():
            for _ in range(10):
                status, body = _refusal(main_gw, token)
                assert (status, body.get("error")) == (401, error), (name, status, body)
        took = time.monotonic() - started
        assert _accepted(main_gw) == opened  # none was upgraded
        row.report(f"{10 * len(cases)} handshakes with bad tokens: all 401 before the upgrade "
                   f"({took / (10 * len(cases)) * 1000:.1f} ms each), 0 accepted")


def _hs256_with_header(header: dict, payload: dict, key: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def _hs512(payload: dict, key: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns that the key is short for SHA-512: the point here
        return jwt.encode(payload, key, algorithm="HS512")


def test_forged_jwts_are_refused_with_401(main_gw, fleet):
    now = int(time.time())
    aud, iss = MAIN_ENV["JWT_AUDIENCE"], MAIN_ENV["JWT_ISSUER"]
    good = {"sub": "forger", "iat": now, "exp": now + 600, "aud": aud, "iss": iss}
    cases = {
        "alg none": (jwt.encode(good, None, algorithm="none"), "token_bad_signature"),
        "HS256, wrong key": (jwt.encode(good, "w" * 48, algorithm="HS256"), "token_bad_signature"),
        "HS512, right key": (_hs512(good, main_gw.secret), "token_bad_signature"),
        "RS256 header, HMAC signature": (_hs256_with_header({"alg": "RS256", "typ": "JWT"}, good, main_gw.secret),
                                         "token_bad_signature"),
        "wrong aud": (main_gw.token("forger", aud="another-service"), "token_bad_claims"),
        "no aud": (main_gw.token("forger", aud=None), "token_bad_claims"),
        "wrong iss": (main_gw.token("forger", iss="evil.example"), "token_bad_claims"),
        "no exp": (jwt.encode({k: v for k, v in good.items() if k != "exp"}, main_gw.secret, algorithm="HS256"),
                   "token_bad_claims"),
        "no sub": (jwt.encode({k: v for k, v in good.items() if k != "sub"}, main_gw.secret, algorithm="HS256"),
                   "token_bad_claims"),
        "sub not a string": (jwt.encode({**good, "sub": 42}, main_gw.secret, algorithm="HS256"), "token_bad_claims"),
        "expired beyond the leeway": (main_gw.token("forger", ttl=-5), "token_expired"),
    }
    with Row(fleet, "forged JWTs") as row:
        opened = _accepted(main_gw)
        for name, (token, error) in cases.items():
            for _ in range(5):
                status, body = _refusal(main_gw, token)
                assert (status, body.get("error")) == (401, error), (name, status, body)
            # The same token in the bearer subprotocol is refused the same way.
            status, body = _refusal(main_gw, None, {"Sec-WebSocket-Protocol": f"trading.v1, bearer.{token}"})
            assert (status, body.get("error")) == (401, error), (name, "subprotocol", status, body)
        assert _accepted(main_gw) == opened
        row.report(f"{len(cases)} kinds of forged JWT x 6 handshakes: all 401 with the documented error, 0 accepted")


def test_origin_allow_list(main_gw, fleet):
    with Row(fleet, "Origin") as row:
        for origin in ("https://evil.example", "null", "https://dash.example.evil.example", "http://dash.example"):
            status, body = _refusal(main_gw, main_gw.token("browser"), {"Origin": origin})
            assert (status, body.get("error")) == (403, "origin_not_allowed"), (origin, status, body)
        allowed = RawWS.open(main_gw, "browser", headers={"Origin": "https://dash.example"})
        allowed.hello()
        bot = RawWS.open(main_gw, "bot")  # no Origin: decided by the token
        bot.hello()
        allowed.close(), bot.close()
        row.report("evil, null, look-alike and http:// origins: 403 origin_not_allowed; "
                   "the allowed origin and no Origin: 101")


def test_unsupported_versions_missing_keys_and_other_methods_are_not_upgraded(main_gw, fleet):
    with Row(fleet, "odd handshakes") as row:
        v8 = RawWS.open(main_gw, "odd", headers={"Sec-WebSocket-Version": "8"})
        assert v8.status == 426 and v8.header("Sec-WebSocket-Version") == "13", v8.head
        assert json.loads(v8.body())["error"] == "unsupported_version"
        no_key = RawWS.open(main_gw, "odd", drop=("Sec-WebSocket-Key",))
        assert no_key.status == 400 and json.loads(no_key.body())["error"] == "bad_handshake", no_key.head
        bad_key = RawWS.open(main_gw, "odd", headers={"Sec-WebSocket-Key": "short"})
        assert bad_key.status == 400, bad_key.head
        results = {"version 8": v8.status, "no key": no_key.status, "invalid key": bad_key.status}
        for method in ("POST", "PUT", "DELETE", "HEAD"):
            other = RawWS.open(main_gw, "odd", method=method)
            assert other.status == 405, (method, other.head)
            results[method] = other.status
            other.close()
        for ws in (v8, no_key, bad_key):
            assert "Sec-WebSocket-Accept" not in ws.head
            ws.close()
        row.report(", ".join(f"{k}: {v}" for k, v in results.items()) + "; none upgraded")


def test_permessage_deflate_is_never_negotiated(main_gw, fleet):
    with Row(fleet, "permessage-deflate offered") as row:
        ws = RawWS.open(main_gw, "deflate", headers={
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame"})
        assert ws.status == 101 and ws.header("Sec-WebSocket-Extensions") is None, ws.head
        ws.hello()
        ws.send_text('{"type":"ping","id":"z"}')
        assert ws.read_json()["type"] == "pong"  # and frames are plain text frames
        ws.close()
        row.report("101 without Sec-WebSocket-Extensions; plain frames")


def test_slowloris_partial_handshakes_are_dropped_at_the_connection_timeout(main_gw, fleet):
    count, timeout = 100, int(MAIN_ENV["WS_CONNECTION_TIMEOUT"]) / 1000
    request = (f"GET /ws?token={main_gw.token('loris')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    with Row(fleet, "slowloris") as row:
        socks = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", main_gw.port), timeout=5)
            s.setblocking(False)
            socks.append(s)
        started = time.monotonic()
        sent = dict.fromkeys(socks, 0)
        answers: dict[socket.socket, tuple[float, bytes]] = {}
        fresh_connect = None
        while len(answers) < count and time.monotonic() - started < timeout + 5:
            for s in socks:
                if s not in answers and sent[s] < len(request) - 1:  # never the last byte
                    try:
                        s.send(request[sent[s]:sent[s] + 1])
                        sent[s] += 1
                    except OSError:
                        pass
            if fresh_connect is None and time.monotonic() - started > timeout / 2:
                t = time.monotonic()
                probe = RawWS.open(main_gw, "while-loris")  # a real client gets in meanwhile
                probe.hello()
                probe.close()
                fresh_connect = time.monotonic() - t
            readable, _, _ = select.select([s for s in socks if s not in answers], [], [], 0.02)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                answers[s] = (time.monotonic() - started, data)
        for s in socks:
            s.close()
        assert len(answers) == count, f"{count - len(answers)} partial handshakes still open"
        statuses = {data.split(b"\r\n", 1)[0].decode() or "closed" for _, data in answers.values()}
        assert statuses <= {"HTTP/1.1 408 Request Timeout", "closed"}, statuses
        times = sorted(t for t, _ in answers.values())
        assert times[0] >= timeout * 0.9
        row.report(f"{count} connections sending a handshake byte by byte: all answered "
                   f"{' / '.join(sorted(statuses))} after {times[0]:.2f}-{times[-1]:.2f} s "
                   f"(median {statistics.median(times):.2f} s, WS_CONNECTION_TIMEOUT {timeout:g} s; "
                   f"{max(sent.values())} bytes sent at most); a real client connected meanwhile in "
                   f"{fresh_connect * 1000:.1f} ms")


def test_tokens_never_reach_logs_metrics_or_stats(main_gw, fleet):
    with Row(fleet, "token leakage") as row:
        tokens: list[str] = []
        for i in range(20):  # valid, in the query
            token = main_gw.token(f"leak{i}")
            tokens.append(token)
            ws = RawWS.open(main_gw, None, token=token)
            ws.hello()
            if i % 2:  # and a refresh carrying another valid token, and a forged one
                fresh, forged = main_gw.token(f"leak{i}", ttl=7200), main_gw.token(f"leak{i}", secret="f" * 48)
                tokens += [fresh, forged]
                ws.send_text(json.dumps({"type": "refresh", "token": fresh, "id": "r1"}))
                assert ws.read_json()["type"] == "refreshed"
                ws.send_text(json.dumps({"type": "refresh", "token": forged, "id": "r2"}))
                error = ws.read_json()
                assert error["code"] == "invalid_token" and forged not in json.dumps(error)
            ws.close()
        for i in range(20):  # valid, in the subprotocol
            token = main_gw.token(f"leakp{i}")
            tokens.append(token)
            ws = RawWS.open(main_gw, None, token=None,
                            headers={"Sec-WebSocket-Protocol": f"trading.v1, bearer.{token}"})
            assert token not in ws.head and ws.header("Sec-WebSocket-Protocol") == "trading.v1"
            ws.hello()
            ws.close()
        for i in range(20):  # refused: expired, forged, junk
            junk = "x" + secrets.token_hex(20) + "." + secrets.token_hex(20) + ".y"
            token = [main_gw.token(f"leakx{i}", ttl=-60), main_gw.token(f"leakx{i}", secret="s" * 48),
                     secrets.token_urlsafe(600), junk][i % 4]
            tokens.append(token)
            assert _refusal(main_gw, token)[0] == 401
        service = main_gw.token("ops", role="service")
        tokens.append(service)
        assert main_gw.get("/ws/stats", {"Authorization": f"Bearer {service}"})[0] == 200
        time.sleep(0.3)  # the last access lines
        places = {"log": "\n".join(main_gw.lines), "/metrics": main_gw.metrics_text(),
                  "/ws/stats": json.dumps(main_gw.stats())}
        for token in tokens:
            pieces = [token] + ([p for p in token.split(".")[1:] if len(p) >= 16] if token.startswith("eyJ")
                                else [token[len(token) // 3:len(token) // 3 + 24]])
            for where, text in places.items():
                for piece in pieces:
                    assert piece not in text, f"a token piece is in {where}"
        assert SERVICE_KEY not in places["log"] and "?token=" not in places["log"]
        assert not log_problems(main_gw, row.base.log_index)
        row.report(f"{len(tokens)} distinct tokens (query, subprotocol, refresh, service header; valid, expired, "
                   f"forged, junk): no token, payload or signature in {len(main_gw.lines):,} log lines, "
                   "/metrics or /ws/stats")
