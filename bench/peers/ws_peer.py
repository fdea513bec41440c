"""Peer: a minimal broadcast server on asyncio ``websockets`` (pinned in bench/requirements.txt).

Accepts any number of clients on ``ws://127.0.0.1:PORT/?g=GROUP`` and, on
command, publishes with the library's own ``broadcast()``:

* ``burst``: ~200-byte messages to every client as fast as possible; every
  8 publications it yields to the loop and waits while any client's write
  buffer holds more than 256 KiB (``broadcast`` itself has no backpressure:
  unbounded, it only measures how fast memory fills);
* ``paced``: ``per_tick`` messages of ``size`` bytes to each group
  ``hz`` times a second; every message of one tick carries the tick's
  time as ``receivedAt`` (like the gateway's exchange frames of one
  simulator step, which arrive together), so a group's latency includes
  the broadcasts to the groups before it, as in the gateway.

Server pings every ``--ping-interval`` seconds (the library's heartbeat).
stdin/stdout: one JSON object per line (``burst``, ``paced``, ``stop``,
``stats``, ``exit``); the first line out is ``{"port": P}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from websockets.asyncio.server import broadcast, serve

from bench.peers.message import message

HWM = 256 * 1024


class Peer:
    def __init__(self) -> None:
        self.groups: dict[str, set] = defaultdict(set)
        self.all: set = set()
        self.seq = 0
        self.task: asyncio.Task[None] | None = None

    async def handler(self, ws) -> None:
        group = parse_qs(urlsplit(ws.request.path).query).get("g", ["0"])[0]
        self.groups[group].add(ws)
        self.all.add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.groups[group].discard(ws)
            self.all.discard(ws)

    async def burst(self, size: int) -> None:
        conns = self.all
        while True:
            for _ in range(8):
                self.seq += 1
                broadcast(conns, message(self.seq, int(time.time() * 1000), size))
            while any(c.transport.get_write_buffer_size() > HWM for c in conns):
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0)

    async def paced(self, hz: float, per_tick: int, size: int) -> None:
        period = 1.0 / hz
        next_t = time.monotonic()
        while True:
            next_t += period
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            # Every group's update "arrives" now, as the gateway's exchange frames of one tick arrive
            # together: all carry this tick's receivedAt, then go out one group after the other.
            now_ms = int(time.time() * 1000)
            for conns in list(self.groups.values()):
                for _ in range(per_tick):
                    self.seq += 1
                    broadcast(conns, message(self.seq, now_ms, size))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ping-interval", type=float, default=20.0)
    args = parser.parse_args()
    peer = Peer()
    loop = asyncio.get_running_loop()
    async with serve(peer.handler, "127.0.0.1", 0, ping_interval=args.ping_interval, ping_timeout=args.ping_interval,
                     compression=None, backlog=4096) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            reply: dict = {"ok": True}
            if cmd["cmd"] in ("burst", "paced", "stop") and peer.task is not None:
                peer.task.cancel()
                peer.task = None
            if cmd["cmd"] == "burst":
                peer.task = asyncio.create_task(peer.burst(cmd.get("size", 200)))
            elif cmd["cmd"] == "paced":
                peer.task = asyncio.create_task(peer.paced(cmd["hz"], cmd["per_tick"], cmd["size"]))
            elif cmd["cmd"] == "stats":
                reply = {"clients": len(peer.all), "sent": peer.seq}
            elif cmd["cmd"] == "exit":
                print(json.dumps(reply), flush=True)
                break
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
