"""Rows at the message level: malformed JSON, unknown channels, other users' data, churn, channel cap,
command floods, token expiry."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time

import websocket

from bench.wsclient import connect
from tests.abuse.fleet import MAIN_ENV, Row, wait_until
from tests.harness import Client

MAX_CHANNELS = int(MAIN_ENV["WS_MAX_CHANNELS"])


def _client(gw, user: str, token: str | None = None) -> Client:
    c = gw.connect(user, token=token, suppress_origin=True)  # websocket-client sends an Origin by default
    assert c.recv()["type"] == "connection"
    return c


def _alive(c: Client) -> None:
    assert c.request({"type": "ping", "id": "alive"})["type"] == "pong"


MALFORMED = {
    "truncated JSON": ('{"type":"ping"', {"invalid_json"}),
    "an array": ("[1,2,3]", {"invalid_message"}),
    "an empty object": ("{}", {"invalid_message"}),
    "null": ("null", {"invalid_message"}),
    "an empty text": ("", {"invalid_json"}),
    "an unknown type": ('{"type":"subscribe_all","id":"t"}', {"unknown_type"}),
    '"[" x 60,000': ("[" * 60000, {"invalid_json"}),
    "nesting 33 deep": ('{"type":"ping","data":' + "[" * 33 + "]" * 33 + "}", {"invalid_message"}),
    '"\\ud800" in a channel name': ('{"type":"subscribe","channel":"sig\\ud800nals"}', {"invalid_message"}),
    "a 10 KB channel name": (json.dumps({"type": "subscribe", "channel": "c" * 10240, "id": "long"}),
                             {"unknown_channel"}),
    "NaN": ('{"type":"ping","data":NaN}', {"invalid_json"}),
    "Infinity": ('{"type":"ping","data":Infinity}', {"invalid_json"}),
    "1e999": ('{"type":"ping","data":1e999}', {"invalid_message"}),
    "a 5,000-digit number": ('{"type":"ping","data":' + "9" * 5000 + "}", {"invalid_message"}),
    "an id of 65 characters": ('{"type":"ping","id":"' + "i" * 65 + '"}', {"invalid_message"}),
    "a type that is a number": ('{"type":7}', {"invalid_message"}),
}


def test_malformed_messages_get_an_error_reply_and_never_1011(main_gw, fleet):
    with Row(fleet, "malformed messages") as row:
        internal_before = main_gw.metric("ws_close_codes_total", code="1011")
        seen = {}
        for name, (text, codes) in MALFORMED.items():
            c = _client(main_gw, "malformed")
            started = time.monotonic()
            c.send(text)
            reply = c.recv()
            took = time.monotonic() - started
            assert reply["type"] == "error" and reply["code"] in codes, (name, reply)
            if '"id":"long"' in text:
                assert reply["id"] == "long" and len(reply["message"]) < 200
            _alive(c)
            c.close()
            seen[name] = (reply["code"], took)
        assert main_gw.metric("ws_close_codes_total", code="1011") == internal_before
        for name, (code, took) in seen.items():
            row.report(f"{name}: error {code} in {took * 1000:.1f} ms, connection open")


def test_unknown_channels_get_unknown_channel_with_the_id(main_gw, fleet):
    names = ["nope", "", "SIGNALS", "signals ", "market-data.BTCUSDT", "signals:nb000", "__proto__", "constructor",
             "trades/../positions", "bot-commands2"]
    with Row(fleet, "unknown channels") as row:
        c = _client(main_gw, "lost")
        for i, name in enumerate(names):
            reply = c.request({"type": "subscribe", "channel": name, "id": f"u{i}"})
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "unknown_channel", f"u{i}"), reply
        _alive(c)
        c.close()
        row.report(f"{len(names)} unknown channel names: each answered unknown_channel with its id, connection open")


def test_a_user_never_reaches_another_users_private_data(main_gw, fleet):
    victim = fleet.neighbours[0].user
    with Row(fleet, "another user's private data") as row:
        c = _client(main_gw, "mallory")
        refusals = 0
        for i, channel in enumerate(("signals", "trades", "positions", "bot-status")):
            for params in ({"userId": victim}, {"user": victim}):
                reply = c.request({"type": "subscribe", "channel": channel, "id": f"f{i}", "data": params})
                assert reply["type"] == "error" and reply["code"] == "forbidden", (channel, params, reply)
                refusals += 1
        reply = c.request({"type": "bot_command", "id": "cmd",
                           "data": {"botId": "bot-1", "command": "stop", "userId": victim}})
        assert reply["code"] == "forbidden"
        # Any other parameter is refused too (only market-data takes parameters).
        for i, key in enumerate(("sub", "userID", "owner")):
            reply = c.request({"type": "subscribe", "channel": "signals", "id": f"o{i}", "data": {key: victim}})
            assert reply["type"] == "error" and reply["code"] == "invalid_params", reply
            refusals += 1
        assert c.request({"type": "subscribe", "channel": "signals", "id": "own"})["type"] == "subscribed"
        time.sleep(1.0)  # the victim's rounds keep being published meanwhile (Row's background publisher)
        status, body = main_gw.publish("mallory", {"mine": True})
        assert status == 202
        got = c.recv_until(lambda m: m["type"] == "data")
        assert got["channel"] == "signals" and got["data"] == {"mine": True} and got["seq"] == body["offset"]
        _alive(c)  # nothing else arrived in between
        c.close()
        others = sum(1 for nb in fleet.neighbours for e in nb.expected if e[2] >= row.base.rounds)
        row.report(f"{refusals + 1} attempts naming {victim} (userId/user: forbidden, a bot_command: forbidden, "
                   f"sub/userID/owner: invalid_params): all refused; mallory received only her own "
                   f"message while {others:,} were published to the neighbours")


def test_connect_subscribe_disconnect_churn_leaves_no_trace(main_gw, fleet):
    cycles = 300
    with Row(fleet, "connect/subscribe/disconnect churn") as row:
        before = main_gw.stats()
        stop = threading.Event()
        published = itertools.count()

        def publish_to_churners() -> None:
            for i in itertools.cycle(range(cycles)):
                if stop.is_set():
                    return
                main_gw.publish(f"churn{i:03d}", {"to": i})
                next(published)

        publisher = threading.Thread(target=publish_to_churners, daemon=True)
        publisher.start()

        async def cycle(i: int, gate: asyncio.Semaphore) -> str:
            async with gate:
                c = await connect("127.0.0.1", main_gw.port, f"/ws?token={main_gw.token(f'churn{i:03d}')}")
                c.send_json({"type": "subscribe", "channel": ("signals", "trades", "positions")[i % 3]})
                how = ("close", "abort", "abort-before-reply", "close-after-reply")[i % 4]
                if how == "abort-before-reply":
                    c.abort()
                    return how
                await c.recv()  # connection
                if how == "close-after-reply":
                    await c.recv()  # subscribed
                if how == "abort":
                    c.abort()
                else:
                    await c.close()
                return how

        async def churn() -> list:
            gate = asyncio.Semaphore(20)
            return await asyncio.gather(*(cycle(i, gate) for i in range(cycles)), return_exceptions=True)

        started = time.monotonic()
        outcomes = asyncio.run(churn())
        took = time.monotonic() - started
        stop.set()
        publisher.join(10)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert not failures, failures[:3]

        def back() -> dict | None:
            s = main_gw.stats()
            ok = (s["connections"], s["channels"]) == (before["connections"], before["channels"]) and not any(
                u.startswith("churn") for u in s["connectionsByUser"])
            return s if ok else None

        settle = time.monotonic()
        after = wait_until(back, 10, "the hub's counts back at their baseline")
        row.report(f"{cycles} cycles in {took:.2f} s (close, abort, abort before the reply, close after "
                   f"subscribing) with {next(published):,} publications to the churning users: hub back to "
                   f"{after['connections']} connections / {after['channels']} channels, no churn user left, "
                   f"{time.monotonic() - settle:.2f} s after the last cycle")


def test_channel_cap_duplicate_subscribe_and_existing_subscriptions_flow(main_gw, fleet):
    with Row(fleet, "channel cap") as row:
        c = _client(main_gw, "hoarder")
        for channel in ("signals", "trades", "positions", "bot-status", "time-sync", "system-health"):
            assert c.request({"type": "subscribe", "channel": channel})["type"] == "subscribed"
        reply = c.request({"type": "subscribe", "channel": "market-data",
                           "data": {"symbol": "BTCUSDT", "streams": ["ticker", "trades"]}})
        assert reply["type"] == "subscribed"  # 8 = WS_MAX_CHANNELS
        c.send({"type": "subscribe", "channel": "market-data", "id": "9th", "data": {"symbol": "ETHUSDT"}})
        over = c.recv_until(lambda m: m.get("id") == "9th")
        assert (over["type"], over["code"]) == ("error", "too_many_channels"), over
        assert over["message"] == f"at most {MAX_CHANNELS} channels per connection"
        c.send({"type": "subscribe", "channel": "signals", "id": "again"})
        again = c.recv_until(lambda m: m.get("id") == "again")
        assert again["type"] == "subscribed" and again["already"] is True
        # The subscriptions held keep flowing: a publication on signals, and live tickers.
        status, body = main_gw.publish("hoarder", {"still": "here"})
        assert status == 202
        got = c.recv_until(lambda m: m["type"] == "data" and m["channel"] == "signals")
        assert got["data"] == {"still": "here"} and got["seq"] == body["offset"]
        c.recv_until(lambda m: m["type"] == "data" and m.get("stream") == "ticker")
        signals = main_gw.stats()["connectionsByChannel"]["signals"]
        c.close()
        row.report(f"{MAX_CHANNELS + 1}th channel: too_many_channels; duplicate subscribe: already true; signals and "
                   f"the ticker kept flowing ({signals} connections on signals)")


def test_a_subscribe_unsubscribe_flood_is_rate_limited_then_closed_4003(main_gw, fleet):
    with Row(fleet, "command flood") as row:
        c = _client(main_gw, "flooder")
        started = time.monotonic()
        sent = 0
        for i in range(300):
            try:
                c.send({"type": "subscribe" if i % 2 == 0 else "unsubscribe", "channel": "trades", "id": str(i)})
                sent += 1
            except OSError:
                break
        replies, code = [], None
        c.ws.settimeout(10)
        while True:
            try:
                opcode, data = c.ws.recv_data(control_frame=True)
            except (websocket.WebSocketConnectionClosedException, OSError):
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big"), data[2:].decode()
                break
            if opcode == websocket.ABNF.OPCODE_TEXT:
                replies.append(json.loads(data))
        took = time.monotonic() - started
        limited = [r for r in replies if r.get("code") == "rate_limited"]
        handled = [r for r in replies if r["type"] in ("subscribed", "unsubscribed")]
        assert code == (4003, "rate limited") and len(limited) == 21, (code, len(limited))
        c.close()
        row.report(f"{sent} subscribe/unsubscribe sent at once: {len(handled)} handled (the burst), "
                   f"{len(limited)} rate_limited, then 4003 after {took * 1000:.0f} ms")


def test_token_expiry_closes_4000_and_a_refresh_for_another_user_changes_nothing(main_gw, fleet):
    with Row(fleet, "token expiry") as row:
        short = main_gw.connect("fleeting", token=main_gw.token("fleeting", ttl=2), suppress_origin=True)
        expires_at = short.recv()["expiresAt"] / 1000
        mismatch = _client(main_gw, "swapper", token=main_gw.token("swapper", ttl=2))
        reply = mismatch.request({"type": "refresh", "id": "r", "token": main_gw.token("nb000", ttl=600)})
        assert (reply["type"], reply["code"]) == ("error", "token_subject_mismatch"), reply
        refreshed = _client(main_gw, "keeper", token=main_gw.token("keeper", ttl=2))
        assert refreshed.request({"type": "refresh", "token": main_gw.token("keeper", ttl=600)})["type"] == "refreshed"
        closes = {}
        for name, c in (("no refresh", short), ("refresh for another sub", mismatch)):
            closes[name] = (c.expect_close(6), time.time() - expires_at)
        for name, (close, _) in closes.items():
            assert close == (4000, "token expired"), (name, close)
        _alive(refreshed)
        refreshed.close()
        late = max(after for _, after in closes.values())
        row.report(f"ttl 2 s, JWT_LEEWAY 0: closed 4000 at most {late * 1000:.0f} ms after exp (sweep 0.1 s); "
                   "a refresh with another user's token: token_subject_mismatch, and that connection still "
                   "expired on its own token; a refresh for the same user: still open")
