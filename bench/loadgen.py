"""One load-generator process: many WebSocket connections on one asyncio loop (uvloop when installed).

Driven by ``bench/run.py`` over stdin/stdout, one JSON object per line each
way. The first line is the configuration::

    {"host": "127.0.0.1", "port": 3001, "count": 1000,
     "path": "/ws?token={token}",           # {token}: a JWT minted here; {g}: the client's group
     "jwt_secret": "...", "user_prefix": "w0-",
     "hello": true,                         # wait for the gateway's "connection" message
     "subscribe": [{"type": "subscribe", "channel": "market-data", "data": {"symbol": "{symbol}"}}],
     "symbols": ["BTCUSDT"], "groups": 1,   # client i gets symbols[i % len] and group i % groups
     "local_addrs": ["127.0.0.2"],          # source addresses, round robin
     "mode": "count", "concurrency": 200}

Then commands, each answered with one line: ``connect``, ``snap``,
``mode``, ``hist_reset``, ``hist``, ``pause`` (the first n clients stop
reading), ``resume_slow``, ``churn``, ``exit``. See :class:`Worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lgclient import BenchConnection, Histogram, Stats, open_connection


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _fill(obj: Any, symbol: str) -> Any:
    return json.loads(json.dumps(obj).replace("{symbol}", symbol))


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = config
        self.stats = Stats()
        self.conns: list[BenchConnection] = []
        self.slow: list[BenchConnection] = []
        self.slow_candidates: list[BenchConnection] = []  # opened with a small receive buffer
        self._jwt = None
        if config.get("jwt_secret"):
            import jwt

            self._jwt = jwt

    def token(self, user: str) -> str:
        now = int(time.time())
        return self._jwt.encode({"sub": user, "iat": now, "exp": now + 7200}, self.cfg["jwt_secret"],
                                algorithm="HS256")

    def _path(self, i: int, user: str) -> str:
        path = self.cfg["path"].replace("{g}", str(i % max(1, self.cfg.get("groups", 1))))
        if "{token}" in path:
            path = path.replace("{token}", self.token(user))
        return path

    async def _open_one(self, i: int, local_addr: str | None, *, rcvbuf: int | None = None) -> BenchConnection:
        cfg = self.cfg
        conn = await open_connection(self.stats, cfg["host"], cfg["port"], self._path(i, f"{cfg['user_prefix']}{i}"),
                                     local_addr=local_addr, rcvbuf=rcvbuf)
        if cfg.get("hello"):
            hello = json.loads(await conn.recv())
            if hello.get("type") != "connection":
                raise ConnectionError(f"expected connection, got {hello}")
        symbols = cfg.get("symbols") or ["BTCUSDT"]
        for sub in cfg.get("subscribe") or []:
            conn.send_text(json.dumps(_fill(sub, symbols[i % len(symbols)])))
            while True:
                reply = json.loads(await conn.recv())
                if reply.get("type") == "subscribed":
                    break
                if reply.get("type") == "error":
                    raise ConnectionError(f"subscribe refused: {reply}")
        return conn

    # -- commands ---------------------------------------------------------------------

    async def connect(self, _: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        addrs = cfg.get("local_addrs") or [None]
        sem = asyncio.Semaphore(cfg.get("concurrency", 200))
        errors: list[str] = []
        slow_n = cfg.get("slow", 0)
        rcvbuf = cfg.get("slow_rcvbuf")

        async def one(i: int) -> None:
            async with sem:
                for attempt in range(3):
                    try:
                        conn = await self._open_one(i, addrs[i % len(addrs)], rcvbuf=rcvbuf if i < slow_n else None)
                        self.conns.append(conn)
                        if i < slow_n:
                            self.slow_candidates.append(conn)
                        slow_mode = cfg.get("slow_mode") if i < slow_n else None
                        conn.set_mode(slow_mode or cfg.get("mode", "count"))
                        conn.inbox = asyncio.Queue()
                        return
                    except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
                        if attempt == 2:
                            errors.append(f"{type(exc).__name__}: {exc}")
                        await asyncio.sleep(0.2 * (attempt + 1))

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(cfg["count"])))
        return {"open": len(self.conns), "failed": len(errors), "errors": errors[:5],
                "seconds": round(time.perf_counter() - start, 3)}

    async def snap(self, _: dict[str, Any]) -> dict[str, Any]:
        s = self.stats
        return {"t": time.monotonic(), "messages": s.messages, "bytes": s.bytes,
                "cpu": time.process_time(), "open": s.open, "pings": s.pings, "closes": dict(s.closes)}

    async def mode(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for conn in self.conns:
            conn.set_mode(cmd["mode"])
        return {"ok": True}

    async def hist_reset(self, _: dict[str, Any]) -> dict[str, Any]:
        self.stats.hist = Histogram()
        return {"ok": True}

    async def hist(self, _: dict[str, Any]) -> dict[str, Any]:
        return self.stats.hist.to_json()

    async def pause(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``n`` clients (those opened with ``slow_rcvbuf``) stop reading: the kernel buffers fill."""
        self.slow = (self.slow_candidates or self.conns)[:cmd["n"]]
        for conn in self.slow:
            conn.pause()
        return {"paused": len(self.slow)}

    async def resume_slow(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Read again and wait (bounded) for each slow client's end: its close code, or 'eof'."""
        for conn in self.slow:
            conn.set_mode("idle")
            conn.resume()
        await asyncio.wait([c.closed for c in self.slow], timeout=cmd.get("wait", 10.0))
        codes: dict[str, int] = {}
        for conn in self.slow:
            key = "still_open" if not conn.closed.done() else (
                str(conn.close_code) if conn.close_code is not None else "eof_without_close_frame")
            codes[key] = codes.get(key, 0) + 1
        return {"slow": len(self.slow), "ends": codes}

    async def churn(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Full cycles (handshake with a JWT, ``connection``, subscribe, ``subscribed``, close) for ``seconds``."""
        cfg = self.cfg
        addrs = cmd.get("local_addrs") or cfg.get("local_addrs") or [None]
        stats = Stats()
        deadline = time.perf_counter() + cmd["seconds"]
        cycles = 0
        errors: list[str] = []
        tokens = [self.token(f"churn-{os.getpid()}-{i}") for i in range(cmd["concurrency"])]
        cpu0 = time.process_time()
        sub = json.dumps(cmd.get("subscribe", {"type": "subscribe", "channel": "trades"}))

        async def worker(w: int) -> None:
            nonlocal cycles
            k = w
            while time.perf_counter() < deadline:
                k += cmd["concurrency"]
                try:
                    conn = await open_connection(stats, cfg["host"], cfg["port"], f"/ws?token={tokens[w]}",
                                                 local_addr=addrs[k % len(addrs)], timeout=10)
                    hello = json.loads(await conn.recv())
                    assert hello["type"] == "connection", hello
                    conn.send_text(sub)
                    reply = json.loads(await conn.recv())
                    assert reply["type"] == "subscribed", reply
                    conn.close(1000)
                    await asyncio.wait_for(asyncio.shield(conn.closed), 5)
                    cycles += 1
                except (OSError, TimeoutError, ConnectionError, AssertionError, asyncio.IncompleteReadError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(cmd["concurrency"])))
        elapsed = time.perf_counter() - start
        return {"cycles": cycles, "seconds": round(elapsed, 3), "cpu": time.process_time() - cpu0,
                "errors": len(errors), "first_errors": errors[:3]}

    async def exit(self, _: dict[str, Any]) -> dict[str, Any]:
        for conn in self.conns:
            conn.abort()
        return {"ok": True}


async def main() -> None:
    _raise_nofile()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = json.loads(await reader.readline())
    worker = Worker(config)
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        handler = getattr(worker, cmd["cmd"])
        try:
            reply = await handler(cmd)
        except Exception as exc:  # noqa: BLE001 - report to the orchestrator rather than die silently
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if cmd["cmd"] == "exit":
            break


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        uvloop = None
    with contextlib.suppress(KeyboardInterrupt):
        if uvloop is not None:
            uvloop.run(main())
        else:
            asyncio.run(main())
