"""Graceful shutdown: SIGTERM with many clients connected."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.error
import urllib.request

from bench.wsclient import WSClosed, connect
from tests.harness import GatewayProcess

CLIENTS = 300


async def _run(gw: GatewayProcess) -> tuple[list, float, int]:
    clients = []
    for i in range(CLIENTS):
        c = await connect("127.0.0.1", gw.port, f"/ws?token={gw.token(f'user{i % 60}')}")
        await c.recv()
        c.send_json({"type": "subscribe", "channel": "trades"})
        await c.recv()
        clients.append(c)

    async def until_closed(c):
        try:
            while True:
                await c.recv()
        except WSClosed as closed:
            return ("close", closed.code, closed.reason)
        except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
            return ("reset", type(exc).__name__, None)

    waiters = [asyncio.ensure_future(until_closed(c)) for c in clients]
    start = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    # /health answers 503 while the gateway drains (the listener stays open until the end).
    loop = asyncio.get_running_loop()
    health = await loop.run_in_executor(None, _health, gw)
    results = await asyncio.wait_for(asyncio.gather(*waiters), 15)
    code = await loop.run_in_executor(None, gw.proc.wait, 15)
    return results, time.monotonic() - start, code, health


def _health(gw: GatewayProcess) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(gw.http + "/health", timeout=2)
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return -1
        time.sleep(0.01)
    return 200


def test_sigterm_closes_every_client_with_1001_and_exits_0():
    gw = GatewayProcess({"WS_MAX_CONNECTIONS_PER_USER": "10", "SHUTDOWN_TIMEOUT": "10000"}).start()
    try:
        results, elapsed, code, health = asyncio.run(_run(gw))
    finally:
        gw.stop()
    kinds = {r[0] for r in results}
    assert kinds == {"close"}, [r for r in results if r[0] != "close"][:5]
    assert {r[1] for r in results} == {1001}
    hints = [re.fullmatch(r"server shutting down; reconnect in (\d+)ms", r[2]) for r in results]
    assert all(hints)
    delays = [int(h.group(1)) for h in hints]
    assert 0 <= min(delays) and max(delays) < 5000 and len(set(delays)) > CLIENTS // 10  # jittered
    assert code == 0
    assert health == 503
    assert elapsed < 10
    stopped = [json.loads(line) for line in gw.lines if '"stopped"' in line]
    assert stopped and stopped[-1]["unclosed"] == 0
