"""Connect + authenticate + subscribe + close per second, with N connections already open.

    python bench/connect_rate.py [--open 1000] [--cycles 2000] [--concurrency 50]

Starts the real gateway (app.py) in its own process, opens ``--open`` idle,
authenticated, subscribed connections, then runs ``--cycles`` full cycles
(handshake with a JWT, wait for ``connection``, subscribe, wait for
``subscribed``, close) from ``--concurrency`` concurrent workers, and prints
cycles per second with the CPU time of both processes. The load generator
is a raw asyncio client (bench/wsclient.py), so it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.wsclient import connect
from tests.harness import GatewayProcess


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _open_idle(gw: GatewayProcess, n: int) -> list:
    clients = []
    for i in range(n):
        c = await connect("127.0.0.1", gw.port, f"/ws?token={gw.token(f'idle-{i}')}")
        await c.recv()
        c.send_json({"type": "subscribe", "channel": "market-data", "data": {"symbol": "BTCUSDT"}})
        await c.recv()
        clients.append(c)
    return clients


async def _cycles(gw: GatewayProcess, cycles: int, concurrency: int) -> float:
    tokens = [gw.token(f"churn-{i}") for i in range(concurrency)]
    remaining = cycles

    async def worker(token: str) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            c = await connect("127.0.0.1", gw.port, f"/ws?token={token}")
            hello = json.loads(await c.recv())
            assert hello["type"] == "connection", hello
            c.send_json({"type": "subscribe", "channel": "trades"})
            reply = json.loads(await c.recv())
            assert reply["type"] == "subscribed", reply
            await c.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in tokens))
    return time.perf_counter() - start


async def main_async(args: argparse.Namespace) -> dict:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = {"LOG_LEVEL": "WARNING", "WS_MAX_CONNECTIONS_PER_USER": "1000000"}
    gw = GatewayProcess(env)
    gw.env["LOG_LEVEL"] = "INFO"  # the harness waits for the "listening" line
    gw.start()
    try:
        idle = await _open_idle(gw, args.open)
        server_cpu0, client_cpu0 = _cpu(gw.proc.pid), time.process_time()
        elapsed = await _cycles(gw, args.cycles, args.concurrency)
        server_cpu = _cpu(gw.proc.pid) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
        for c in idle:
            c.abort()
    finally:
        gw.stop()
    return {
        "open_connections": args.open,
        "cycles": args.cycles,
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 3),
        "cycles_per_second": round(args.cycles / elapsed, 1),
        "server_cpu_ms_per_cycle": round(server_cpu * 1000 / args.cycles, 3),
        "loadgen_cpu_ms_per_cycle": round(client_cpu * 1000 / args.cycles, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
