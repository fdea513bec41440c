"""Rows about connections: per user (4503), per address (429), per node (503), slow consumers (4001),
clients that never answer pings (4002)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bench.wsclient import WSClosed, connect
from tests.abuse.fleet import Fleet, Gateway, RawWS, Row, wait_until

TEXT = 0x1


def _opened(gw, user: str, **kwargs) -> RawWS:
    ws = RawWS.open(gw, user, **kwargs)
    ws.hello()
    return ws


def test_the_sixth_connection_of_a_user_is_closed_4503(main_gw, fleet):
    with Row(fleet, "6th connection of a user") as row:
        held = [_opened(main_gw, "greedy") for _ in range(5)]
        sixth = RawWS.open(main_gw, "greedy")
        assert sixth.status == 101  # the limit is decided right after the upgrade
        started = time.monotonic()
        closed = sixth.expect_close(5, started)
        assert (closed.code, closed.reason, closed.frames[TEXT]) == (4503, "at most 5 connections per user", 0)
        for ws in [sixth, *held]:
            ws.close()
        row.report(f"6th connection: 101 then close 4503 '{closed.reason}' in the same write, "
                   "no connection message")


def test_twenty_simultaneous_connects_of_one_user_exactly_five_succeed(main_gw, fleet):
    token = main_gw.token("rush")

    async def attempt(go: asyncio.Event) -> tuple[str, object]:
        await go.wait()
        c = await connect("127.0.0.1", main_gw.port, f"/ws?token={token}")
        try:
            message = json.loads(await c.recv())
            return "ok", c if message["type"] == "connection" else message
        except WSClosed as closed:
            c.abort()
            return "closed", closed.code

    async def rush() -> list:
        go = asyncio.Event()
        tasks = [asyncio.ensure_future(attempt(go)) for _ in range(20)]
        await asyncio.sleep(0.05)
        go.set()
        results = await asyncio.gather(*tasks)
        for kind, value in results:
            if kind == "ok":
                await value.close()
        return results

    with Row(fleet, "20 simultaneous connects of one user") as row:
        started = time.monotonic()
        results = asyncio.run(rush())
        took = time.monotonic() - started
        kinds = [kind for kind, _ in results]
        assert kinds.count("ok") == 5, results
        assert sorted(value for kind, value in results if kind == "closed") == [4503] * 15
        wait_until(lambda: "rush" not in main_gw.stats()["connectionsByUser"], 5, "rush's connections to end")
        row.report(f"20 at once: exactly 5 connected, 15 closed 4503 ({took * 1000:.0f} ms for all)")


def test_a_slow_consumer_is_closed_4001_and_its_subscriptions_released(main_gw, fleet):
    with Row(fleet, "slow consumer") as row:
        before = main_gw.stats()
        closes_before = main_gw.metric("ws_close_codes_total", code="4001")
        dropped_before = main_gw.metric("ws_messages_dropped_total", reason="slow_consumer")
        ws = _opened(main_gw, "slowpoke", rcvbuf=4096)  # a small window: the kernel holds little for it
        ws.send_text('{"type":"subscribe","channel":"signals","id":"s"}')
        assert ws.read_json()["type"] == "subscribed"
        assert main_gw.stats()["connectionsByChannel"]["signals"] == before["connectionsByChannel"]["signals"] + 1
        pad = "x" * 60000
        started = time.monotonic()
        sent = 0
        while main_gw.metric("ws_close_codes_total", code="4001") == closes_before:
            assert sent < 100, "the slow consumer was never cut"
            status, _ = main_gw.publish("slowpoke", {"i": sent, "pad": pad})
            assert status == 202
            sent += 1
        cut_after = time.monotonic() - started
        # Still not reading: the close frame cannot reach it, so the connection ends at the close timeout.
        after = wait_until(lambda: (s := main_gw.stats())["connectionsByChannel"].get("signals")
                           == before["connectionsByChannel"]["signals"] and "slowpoke" not in s["connectionsByUser"]
                           and s, 10, "its subscription released")
        released_after = time.monotonic() - started
        assert after["connections"] == before["connections"] and after["channels"] == before["channels"]
        assert main_gw.metric("ws_close_codes_total", code="4001") == closes_before + 1
        dropped = main_gw.metric("ws_messages_dropped_total", reason="slow_consumer") - dropped_before
        # Reading at last: what the kernel held, then the end (a close frame only if it fitted).
        closed = ws.expect_close(10)
        ws.close()
        row.report(f"a reader that stopped: 4001 decided after {sent} publications of 60 KB ({sent * 60 / 1024:.1f} "
                   f"MB, {cut_after:.2f} s; WS_QUEUE_BYTES 256 KiB), {dropped:.0f} queued messages dropped; "
                   f"connection and subscription gone from /ws/stats {released_after:.2f} s after the burst began "
                   f"(the close frame cannot reach a client that does not read); reading at last it got "
                   f"{closed.frames[TEXT]} messages and "
                   f"{'close ' + str(closed.code) if closed.code else 'the end of the stream (1006)'}")


# -- a client that never answers pings: short heartbeat on a gateway of its own --------------------------

HEARTBEAT = {"WS_HEARTBEAT_INTERVAL": "300", "WS_SILENCE_TIMEOUT": "1200"}


@pytest.fixture(scope="module")
def heartbeat_fleet():
    gw = Gateway(HEARTBEAT)
    fleet = None
    try:
        gw.start()
        fleet = Fleet(gw, 20, prefix="hb").start()
        yield fleet
    finally:
        if fleet is not None:
            fleet.stop()
        gw.stop()


def test_a_client_that_never_answers_pings_is_closed_4002(heartbeat_fleet):
    gw = heartbeat_fleet.gw
    with Row(heartbeat_fleet, "never answers pings") as row:
        started = time.monotonic()
        ws = _opened(gw, "mute")
        closed = ws.expect_close(10, started)
        assert (closed.code, closed.reason) == (4002, "heartbeat timeout"), closed
        pings = closed.frames[0x9]
        ws.close()
        wait_until(lambda: "mute" not in gw.stats()["connectionsByUser"], 5, "every trace of it removed")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))  # the neighbours live through several pings
        row.report(f"closed 4002 after {closed.after:.2f} s ({pings} pings unanswered; heartbeat 0.3 s, silence "
                   "1.2 s); the 20 neighbours answered every ping for 3 s and stayed")


# -- admission caps: a gateway of its own, the neighbours each behind their own forwarded address --------

EDGE = {"WS_MAX_CONNECTIONS": "30", "WS_MAX_CONNECTIONS_PER_ADDRESS": "5", "WS_TRUSTED_PROXIES": "127.0.0.1"}


@pytest.fixture(scope="module")
def edge_fleet():
    gw = Gateway(EDGE)
    fleet = None
    try:
        gw.start()
        fleet = Fleet(gw, 20, prefix="ed", headers=lambda i: {"X-Forwarded-For": f"10.9.0.{i + 1}"}).start()
        yield fleet
    finally:
        if fleet is not None:
            fleet.stop()
        gw.stop()


def _forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def test_connections_from_one_address_over_the_cap_get_429(edge_fleet):
    gw = edge_fleet.gw
    with Row(edge_fleet, "connections per address") as row:
        held = [_opened(gw, f"addr{i}", headers=_forwarded("203.0.113.7")) for i in range(5)]
        over = RawWS.open(gw, "addr5", headers=_forwarded("203.0.113.7"))
        body = json.loads(over.body())
        assert (over.status, body["error"], over.header("Retry-After")) == (
            429, "too_many_connections_from_address", "30"), over.head
        over.close()
        service = _opened(gw, None, token=gw.token("engine", role="service"), headers=_forwarded("203.0.113.7"))
        service.close()  # services are not counted against the address
        held.pop().close()
        again = wait_until(lambda: (ws := RawWS.open(gw, "addr6", headers=_forwarded("203.0.113.7"))).status == 101
                           and ws, 5, "a place to free")
        again.hello()
        for ws in [again, *held]:
            ws.close()
        row.report("6th connection from 203.0.113.7 (WS_MAX_CONNECTIONS_PER_ADDRESS 5): 429 "
                   "too_many_connections_from_address, Retry-After 30; a service token from it: 101; "
                   "a place frees when one closes")


def test_a_node_at_capacity_answers_503_before_the_upgrade(edge_fleet):
    gw = edge_fleet.gw
    with Row(edge_fleet, "node at capacity") as row:
        wait_until(lambda: gw.stats()["connections"] == len(edge_fleet.neighbours), 5, "only the fleet connected")
        held = [_opened(gw, f"cap{i}", headers=_forwarded(f"198.51.100.{i + 1}"))
                for i in range(30 - len(edge_fleet.neighbours))]
        over = RawWS.open(gw, "cap-over", headers=_forwarded("198.51.100.200"))
        body = json.loads(over.body())
        assert (over.status, body["error"], over.header("Retry-After")) == (503, "at_capacity", "5"), over.head
        over.close()
        status, _, ready = gw.get("/readyz")
        assert status == 200 and json.loads(ready)["status"] == "ready"  # full is not unready
        for ws in held:
            ws.close()
        row.report(f"at WS_MAX_CONNECTIONS (30 = {len(edge_fleet.neighbours)} neighbours + {len(held)}): 503 "
                   "at_capacity, Retry-After 5; /readyz stays 200")
