"""The abuse suite's tools: a gateway with process figures, a neighbour fleet, raw sockets, one row's guard.

* :class:`Gateway` is ``tests.harness.GatewayProcess`` with what a row
  measures: RSS and open descriptors of the process (``/proc/<pid>``),
  ``/metrics`` values, ``/ws/stats`` with the service key, the in-process
  simulator's fault API, tokens carrying the configured ``aud``/``iss``.
* :class:`Fleet` is N healthy clients (bench/wsclient.py on an asyncio loop
  in a background thread), each on its own user's ``signals`` channel and
  one market-data ticker. It records every message and any close per
  client; :meth:`Fleet.publish_round` publishes one numbered message per
  neighbour through ``POST /api/publish``; :meth:`Fleet.assert_unharmed`
  checks, against a :class:`Checkpoint` taken before the fault, that nobody
  was harmed (docs/reliability.md, "Unharmed").
* :class:`RawWS` drives one connection byte for byte (partial heads, odd
  frames, a socket that never reads).
* :class:`Row` wraps one row: checkpoint, publishing rounds in the
  background while the fault runs, peak RSS, then the unharmed check and the
  log check (no ``Traceback``, no ERROR line the row does not expect).

Timings are reported with :func:`report` (visible with ``pytest -s``), not asserted.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench.wsclient import WSClient, WSClosed, connect
from tests.harness import GatewayProcess, close_code, masked_frame

__all__ = [
    "BASE_ENV",
    "FLEET_SIZE",
    "MAIN_ENV",
    "SERVICE_KEY",
    "Checkpoint",
    "Fleet",
    "Gateway",
    "RawWS",
    "Row",
    "log_problems",
    "report",
    "wait_until",
]

SERVICE_KEY = "abuse-suite-service-key-not-a-secret-0123"
MIB = 1024 * 1024
RSS_TOLERANCE_KIB = 20 * 1024  # RSS back within +20 MiB of the baseline
FD_TOLERANCE = 20  # open descriptors back within +20 of the baseline
SETTLE_S = 10.0  # how long RSS and descriptors may take to come back

# What every gateway of this suite shares: the simulated exchange in process (spot only, two pairs kept
# subscribed), the service key, JSON logs, a 100 ms sweep.
BASE_ENV = {
    "MARKET_SOURCE": "simulator",
    "MARKET_CATEGORIES": "spot",
    "POPULAR_PAIRS": "BTCUSDT,ETHUSDT",
    "SERVICE_API_KEY": SERVICE_KEY,
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "WS_SWEEP_INTERVAL": "100",
}

# The shared gateway every row on it runs against (the neighbour fleet lives there): the limits the rows
# provoke are set short or small so that each row takes a second, not a minute.
MAIN_ENV = {
    "JWT_LEEWAY": "0",  # expiry rows: exp means exp
    "JWT_AUDIENCE": "trading-gateway",
    "JWT_ISSUER": "auth.abuse.test",
    "WS_ALLOWED_ORIGINS": "https://dash.example",
    "WS_CONNECTION_TIMEOUT": "1000",
    "WS_MESSAGE_DEADLINE": "1000",
    "WS_MAX_CHANNELS": "8",
    "WS_QUEUE_BYTES": "262144",
    "UPSTREAM_PING_INTERVAL": "200",
    "UPSTREAM_STALE_AFTER": "1000",
    "UPSTREAM_DATA_SILENCE": "1000",
    "RESTART_BASE": "50",
    "RESTART_CAP": "400",
    "RESTART_FLOOR": "20",
    "RESTART_RESET_AFTER": "300",
    "CIRCUIT_COOLDOWN": "500",
    "MARKET_UNSUBSCRIBE_GRACE": "300",
    "STATUS_INTERVAL": "1000",
}
FLEET_SIZE = 100


def report(text: str) -> None:
    """A figure for docs/reliability.md: printed, never asserted."""
    print(f"[abuse] {text}", flush=True)


def wait_until(check: Any, timeout: float, what: str, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# -- the gateway ---------------------------------------------------------------------------------


class Gateway(GatewayProcess):
    """A real gateway process (``python app.py``) with the figures a row measures."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__({**BASE_ENV, **(env or {})})

    def token(self, user: str = "alice", *, ttl: float = 3600, secret: str | None = None, **claims: Any) -> str:
        """A token this gateway accepts (with its ``aud``/``iss`` when configured; pass ``aud=None`` to omit)."""
        if self.env.get("JWT_AUDIENCE"):
            claims.setdefault("aud", self.env["JWT_AUDIENCE"])
        if self.env.get("JWT_ISSUER"):
            claims.setdefault("iss", self.env["JWT_ISSUER"])
        return super().token(user, ttl=ttl, secret=secret, **claims)

    # process figures

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    # HTTP

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.http + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def stats(self, service: bool = True) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"} if service else {}
        status, _, body = self.get("/ws/stats", headers)
        assert status == 200, (status, body)
        return json.loads(body)

    def publish(self, user: str, data: Any, channel: str = "signals") -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            return _post(conn, {"channel": channel, "user": user, "data": data})
        finally:
            conn.close()

    def metrics_text(self) -> str:
        return self.get("/metrics")[2].decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample (0 when absent); labels in any order."""
        want = {f'{k}="{v}"' for k, v in labels.items()}
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            sample, _, value = line.rpartition(" ")
            metric_name, _, rest = sample.partition("{")
            if metric_name != name:
                continue
            have = set(rest.rstrip("}").split(",")) if rest else set()
            if want <= have and (labels or not rest):
                return float(value)
        return 0.0

    # the simulated exchange (MARKET_SOURCE=simulator runs it in process; its control API is on its port)

    @property
    def simulator_port(self) -> int:
        for line in self.lines:
            match = re.search(r"simulated exchange on ws://127\.0\.0\.1:(\d+)", line)
            if match:
                return int(match.group(1))
        raise AssertionError("no simulated exchange in this gateway's log")

    def inject(self, fault: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.simulator_port}/control/fault",
                                         json.dumps(fault).encode(), {"Content-Type": "application/json"},
                                         method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def incarnation(self, child_id: str = "exchange:bybit:spot") -> int:
        children = self.stats()["supervisor"]["children"]
        return next(c["incarnation"] for c in children if c["child_id"] == child_id)


def _post(conn: http.client.HTTPConnection, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn.request("POST", "/api/publish", json.dumps(body).encode(),
                 {"Authorization": f"Bearer {SERVICE_KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    return response.status, json.loads(raw) if raw else {}


def log_problems(gw: GatewayProcess, since: int, expect: tuple[str, ...] = ()) -> list[str]:
    """Log lines from ``since`` on with a traceback, or at ERROR/CRITICAL without matching ``expect``."""
    problems = []
    for line in gw.lines[since:]:
        if "Traceback" in line:
            problems.append(line)
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            level = str(record.get("level", ""))
        else:  # a text line (a library writing to stderr): "<date> <time> LEVEL ..."
            level = "ERROR" if re.match(r"\S*\s*\S*\s*(ERROR|CRITICAL)\b", line) else ""
        if level in ("ERROR", "CRITICAL") and not any(re.search(p, line) for p in expect):
            problems.append(line)
    return problems


# -- raw sockets -----------------------------------------------------------------------------------


@dataclass
class Closed:
    code: int | None  # None: the connection ended without a close frame (1006 for a library)
    reason: str
    after: float  # seconds from the start given to expect_close
    how: str  # "close", "eof" or "reset"
    frames: Counter = field(default_factory=Counter)  # opcodes read before the close


class RawWS:
    """One connection driven by hand. ``status`` is the HTTP status of the answer to the request head."""

    def __init__(self, sock: socket.socket, head: str, rest: bytes) -> None:
        self.sock = sock
        self.head = head
        self.status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
        self._buf = rest

    @classmethod
    def open(cls, gw: GatewayProcess, user: str | None = "raw", *, token: str | None = None,
             headers: dict[str, str] | None = None, method: str = "GET", path: str = "/ws",
             rcvbuf: int | None = None, timeout: float = 5.0, drop: tuple[str, ...] = ()) -> RawWS:
        """Send a handshake (``drop`` leaves those default headers out) and read the answer's head."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window never grows past it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", gw.port))
        if token is None and user is not None:
            token = gw.token(user)
        target = path + (f"?token={token}" if token is not None else "")
        fields = {"Host": f"127.0.0.1:{gw.port}", "Upgrade": "websocket", "Connection": "Upgrade",
                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
        fields = {k: v for k, v in fields.items() if k not in drop}
        fields.update(headers or {})
        request = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        sock.sendall(request.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return cls(sock, head.decode("latin-1"), rest)

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def body(self) -> bytes:
        """The rest of a refusal's body (Content-Length bytes)."""
        length = int(self.header("Content-Length") or 0)
        while len(self._buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._buf += chunk
        body, self._buf = self._buf[:length], self._buf[length:]
        return body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.send(masked_frame(0x1, text.encode()))

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk

    def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        self.sock.settimeout(timeout)
        self._fill(2)
        b1 = self._buf[1] & 0x7F
        size, offset = b1, 2
        if b1 == 126:
            self._fill(4)
            size, offset = struct.unpack("!H", self._buf[2:4])[0], 4
        elif b1 == 127:
            self._fill(10)
            size, offset = struct.unpack("!Q", self._buf[2:10])[0], 10
        self._fill(offset + size)
        opcode, payload = self._buf[0] & 0x0F, self._buf[offset:offset + size]
        self._buf = self._buf[offset + size:]
        return opcode, payload

    def hello(self) -> dict[str, Any]:
        assert self.status == 101, self.head
        opcode, payload = self.read_frame()
        message = json.loads(payload)
        assert opcode == 0x1 and message["type"] == "connection", message
        return message

    def read_json(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next text message (pings answered on the way)."""
        while True:
            opcode, payload = self.read_frame(timeout)
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x9:
                self.send(masked_frame(0xA, payload))
            elif opcode == 0x8:
                raise AssertionError(f"closed: {close_code(payload)}")

    def expect_close(self, timeout: float = 10.0, started: float | None = None) -> Closed:
        """Read until the close frame, the end of the stream or a reset; never answers pings."""
        started = time.monotonic() if started is None else started
        deadline = time.monotonic() + timeout
        frames: Counter = Counter()
        while True:
            try:
                opcode, payload = self.read_frame(max(0.01, deadline - time.monotonic()))
            except EOFError:
                return Closed(None, "", time.monotonic() - started, "eof", frames)
            except ConnectionResetError:
                return Closed(None, "", time.monotonic() - started, "reset", frames)
            if opcode == 0x8:
                code, reason = close_code(payload)
                return Closed(code, reason, time.monotonic() - started, "close", frames)
            frames[opcode] += 1

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# -- the neighbour fleet ---------------------------------------------------------------------------


@dataclass
class Neighbour:
    index: int
    user: str
    symbol: str
    token: str
    client: WSClient | None = None
    subscribed: set[str] = field(default_factory=set)
    signals: list[tuple[str, int, int]] = field(default_factory=list)  # (epoch, seq, round) as received
    expected: list[tuple[str, int, int]] = field(default_factory=list)  # (epoch, offset, round) from the 202s
    refused: list[tuple[int, int, str]] = field(default_factory=list)  # (round, status, error) not published
    uncertain: list[int] = field(default_factory=list)  # rounds whose POST failed without an answer
    resyncs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    market: int = 0
    market_seq: int | None = None
    market_gaps: list[tuple[int, int]] = field(default_factory=list)  # (previous seq, seq) when not +1
    market_bad: list[Any] = field(default_factory=list)  # tickers whose lastPrice is not decimal text
    market_at: float = 0.0  # monotonic time of the last market-data message
    closed: tuple[Any, str] | None = None  # (code, reason), or ("reset", exception name)


_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


@dataclass
class Checkpoint:
    at: float
    rss_kib: int
    fds: int
    log_index: int
    rounds: int
    market: dict[int, int]
    gaps: int
    bad: int
    errors: int


class Fleet:
    """``size`` healthy neighbours on ``gw``: user ``<prefix><i>``, its ``signals`` and one ticker each."""

    def __init__(self, gw: Gateway, size: int = 100, *, prefix: str = "nb",
                 symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"), headers: Any = None) -> None:
        self.gw = gw
        self.headers = headers  # index -> extra handshake headers (e.g. X-Forwarded-For)
        self.neighbours = [Neighbour(i, f"{prefix}{i:03d}", symbols[i % len(symbols)], gw.token(f"{prefix}{i:03d}"))
                           for i in range(size)]
        self.rounds = 0
        self.stopping = False
        self._publish_lock = threading.RLock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fleet", daemon=True)
        self._tasks: list[asyncio.Task[None]] = []

    # lifecycle

    def start(self, timeout: float = 30.0) -> Fleet:
        started = time.monotonic()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._join_all(), self.loop).result(timeout)
        wait_until(lambda: all({"signals", "market-data"} <= nb.subscribed and nb.market for nb in self.neighbours),
                   timeout, "every neighbour subscribed and receiving market data")
        report(f"fleet of {len(self.neighbours)} on :{self.gw.port} connected, subscribed and receiving "
               f"market data in {time.monotonic() - started:.2f} s")
        return self

    async def _join_all(self) -> None:
        gate = asyncio.Semaphore(25)
        await asyncio.gather(*(self._join(nb, gate) for nb in self.neighbours))

    async def _join(self, nb: Neighbour, gate: asyncio.Semaphore) -> None:
        async with gate:
            headers = self.headers(nb.index) if self.headers else None
            nb.client = await connect("127.0.0.1", self.gw.port, f"/ws?token={nb.token}", headers)
            nb.client.send_json({"type": "subscribe", "channel": "signals", "id": "s"})
            nb.client.send_json({"type": "subscribe", "channel": "market-data", "id": "m",
                                 "data": {"symbol": nb.symbol}})
            self._tasks.append(asyncio.ensure_future(self._read(nb)))

    async def _read(self, nb: Neighbour) -> None:
        assert nb.client is not None
        try:
            while True:
                self._on_message(nb, json.loads(await nb.client.recv()))
        except WSClosed as closed:
            if not self.stopping:
                nb.closed = (closed.code, closed.reason)
        except (asyncio.IncompleteReadError, OSError) as exc:
            if not self.stopping:
                nb.closed = ("reset", type(exc).__name__)

    def _on_message(self, nb: Neighbour, m: dict[str, Any]) -> None:
        kind, channel = m.get("type"), m.get("channel")
        if kind == "data" and channel == "signals":
            nb.signals.append((m["epoch"], m["seq"], m["data"]["round"]))
        elif kind == "data" and channel == "market-data":
            if nb.market_seq is not None and m["seq"] != nb.market_seq + 1:
                nb.market_gaps.append((nb.market_seq, m["seq"]))
            nb.market_seq = m["seq"]
            nb.market += 1
            nb.market_at = time.monotonic()
            price = m["data"].get("lastPrice")
            if not (isinstance(price, str) and _DECIMAL.fullmatch(price)):
                nb.market_bad.append(price)
        elif kind == "subscribed":
            nb.subscribed.add(channel)
            if channel == "market-data":
                nb.market_seq = None  # a new baseline (docs/protocol.md)
        elif kind == "resync":
            nb.resyncs.append(m)
        elif kind == "error":
            nb.errors.append(m)

    def stop(self) -> None:
        """Close every neighbour (a normal close, not counted as harm)."""
        self.stopping = True

        async def close_all() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            clients = [nb.client for nb in self.neighbours if nb.client is not None]
            await asyncio.wait_for(asyncio.gather(*(c.close() for c in clients), return_exceptions=True), 5)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(10)
            except Exception:  # noqa: BLE001 - best effort in teardown: the gateway is stopped next anyway
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    # publishing

    def publish_round(self, *, parallel: bool = False) -> int:
        """One message per neighbour, ``{"round": r, "n": i}`` on its signals channel; returns ``r``.

        ``parallel``: all at once (one thread each), for a broker that may make each request wait.
        """
        with self._publish_lock:
            r = self.rounds
            self.rounds += 1
            if parallel:
                with ThreadPoolExecutor(len(self.neighbours)) as pool:
                    list(pool.map(lambda nb: self._publish_one(nb, r), self.neighbours))
            else:
                for nb in self.neighbours:
                    self._publish_one(nb, r)
            return r

    def _publish_one(self, nb: Neighbour, r: int) -> None:
        try:
            # A connection per request: on a kept-alive one each answer waits ~40 ms (delayed ACK).
            status, body = self.gw.publish(nb.user, {"round": r, "n": nb.index})
        except (OSError, http.client.HTTPException):
            nb.uncertain.append(r)
            return
        if status == 202:
            nb.expected.append((body["epoch"], body["offset"], r))
        else:
            nb.refused.append((r, status, body.get("error", "")))

    # checks

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            at=time.monotonic(), rss_kib=self.gw.rss_kib(), fds=self.gw.fds(), log_index=len(self.gw.lines),
            rounds=self.rounds, market={nb.index: nb.market for nb in self.neighbours},
            gaps=sum(len(nb.market_gaps) for nb in self.neighbours),
            bad=sum(len(nb.market_bad) for nb in self.neighbours),
            errors=sum(len(nb.errors) for nb in self.neighbours),
        )

    def _delivery(self, nb: Neighbour, allow_late_refused: bool, since_round: int = 0) -> dict[str, int]:
        """Lost, duplicated, unexpected, out-of-order and gap counts of one neighbour's signals
        (the rounds from ``since_round`` on: what came before was checked by an earlier row)."""
        expected = [e for e in nb.expected if e[2] >= since_round]
        got = [g for g in nb.signals if g[2] >= since_round]
        want = set(expected)
        tolerated = set(nb.uncertain) | ({r for r, _, _ in nb.refused} if allow_late_refused else set())
        rounds = Counter(r for _, _, r in got)
        late = [g for g in got if g not in want and g[2] in tolerated]
        unexpected = [g for g in got if g not in want and g[2] not in tolerated]
        gaps = sum(1 for a, b in itertools.pairwise(got) if a[0] == b[0] and b[1] != a[1] + 1)
        received = set(got)
        return {
            "lost": len(want - set(got)),
            "dup": sum(n - 1 for n in rounds.values() if n > 1),
            "unexpected": len(unexpected),
            "late": len(late),
            "disorder": int([g for g in got if g in want] != [e for e in expected if e in received]),
            "gaps": gaps,
        }

    def lost(self, since_round: int = 0) -> list[tuple[str, tuple[str, int, int]]]:
        """(user, (epoch, offset, round)) of every accepted publication a neighbour has not received."""
        return [(nb.user, e) for nb in self.neighbours for e in nb.expected
                if e[2] >= since_round and e not in set(nb.signals)]

    def wait_delivered(self, timeout: float = 10.0, since_round: int = 0) -> None:
        def done() -> bool:
            return all({r for _, _, r in nb.expected if r >= since_round} <= {r for _, _, r in nb.signals}
                       for nb in self.neighbours)

        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # a duplicate would come right behind

    def assert_unharmed(self, base: Checkpoint, *, peak_kib: int | None = None, allow_market_gaps: bool = False,
                        allow_late_refused: bool = False, market_timeout: float = 5.0) -> dict[str, Any]:
        """No neighbour closed, every accepted publication delivered once and in order, market data still
        arriving (gap-free unless allowed), RSS and descriptors back near ``base``. Returns the figures."""
        self.publish_round()
        self.wait_delivered(since_round=base.rounds)
        now = time.monotonic()
        wait_until(lambda: all(nb.market_at > now for nb in self.neighbours) or None, market_timeout,
                   "market data to reach every neighbour after the fault")
        closed = {nb.user: nb.closed for nb in self.neighbours if nb.closed is not None}
        totals: Counter = Counter()
        for nb in self.neighbours:
            totals.update(self._delivery(nb, allow_late_refused, base.rounds))
        published = sum(1 for nb in self.neighbours for e in nb.expected if e[2] >= base.rounds)
        refused = sum(1 for nb in self.neighbours for r in nb.refused if r[0] >= base.rounds)
        market = sum(nb.market - base.market[nb.index] for nb in self.neighbours)
        gaps = sum(len(nb.market_gaps) for nb in self.neighbours) - base.gaps
        bad = sum(len(nb.market_bad) for nb in self.neighbours) - base.bad
        errors = [e for nb in self.neighbours for e in nb.errors][base.errors:]

        def settled() -> tuple[int, int] | None:
            rss, fds = self.gw.rss_kib(), self.gw.fds()
            return (rss, fds) if rss <= base.rss_kib + RSS_TOLERANCE_KIB and fds <= base.fds + FD_TOLERANCE else None

        started = time.monotonic()
        deadline = started + SETTLE_S
        while (figures := settled()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        rss, fds = figures or (self.gw.rss_kib(), self.gw.fds())
        summary = {
            "neighbours": len(self.neighbours), "closes": len(closed), "published": published,
            "refused": refused, **totals, "market": market, "market_gaps": gaps, "market_bad": bad,
            "errors": len(errors), "rss_base_mib": base.rss_kib / 1024, "rss_peak_mib": (peak_kib or rss) / 1024,
            "rss_after_mib": rss / 1024, "fds_base": base.fds, "fds_after": fds,
            "settle_s": time.monotonic() - started,
        }
        report(f"neighbours: {len(self.neighbours)}, {len(closed)} closed, {totals['lost']} lost, {totals['dup']} "
               f"duplicated of {published:,} published ({refused} refused, {totals['late']} late), "
               f"{market:,} market-data messages, {gaps} gaps; RSS {base.rss_kib / 1024:.1f} -> peak "
               f"{(peak_kib or rss) / 1024:.1f} -> {rss / 1024:.1f} MiB, fds {base.fds} -> {fds}")
        assert not closed, f"neighbours closed: {dict(list(closed.items())[:5])}"
        assert totals["lost"] == 0 and totals["dup"] == 0 and totals["unexpected"] == 0, totals
        assert totals["disorder"] == 0 and totals["gaps"] == 0, totals
        assert not errors, errors[:5]
        assert bad == 0, "a neighbour received a ticker whose lastPrice is not decimal text"
        assert allow_market_gaps or gaps == 0, [nb.market_gaps for nb in self.neighbours if nb.market_gaps][:5]
        assert figures is not None, f"RSS {rss} KiB / fds {fds} not back within tolerance of {base}"
        return summary


# -- one row -----------------------------------------------------------------------------------------


class _Sampler(threading.Thread):
    """Peak RSS of the gateway while a row runs."""

    def __init__(self, gw: Gateway) -> None:
        super().__init__(daemon=True)
        self.gw = gw
        self.peak = gw.rss_kib()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                self.peak = max(self.peak, self.gw.rss_kib())
            except OSError:
                return


class Row:
    """``with Row(fleet, "name", expect_log=(...)) as row:`` — the fault inside, the guard around it.

    On entry: a checkpoint, a peak-RSS sampler, and (``publish_every`` s) a
    background thread publishing a round to every neighbour while the fault
    runs. On a clean exit: :meth:`Fleet.assert_unharmed` and the log check
    (no ``Traceback``; no ERROR line unless it matches one of ``expect_log``).
    """

    def __init__(self, fleet: Fleet, name: str, *, expect_log: tuple[str, ...] = (), publish_every: float = 0.1,
                 allow_market_gaps: bool = False, allow_late_refused: bool = False, parallel: bool = False) -> None:
        self.fleet = fleet
        self.parallel = parallel
        self.gw = fleet.gw
        self.name = name
        self.expect_log = expect_log
        self.publish_every = publish_every
        self.allow_market_gaps = allow_market_gaps
        self.allow_late_refused = allow_late_refused
        self.summary: dict[str, Any] = {}
        self._stop = threading.Event()
        self._paused = threading.Event()

    def report(self, text: str) -> None:
        report(f"{self.name}: {text}")

    def pause(self) -> None:
        """Stop the background rounds (the one under way finishes) until :meth:`resume`."""
        self._paused.set()
        with self.fleet._publish_lock:
            pass

    def resume(self) -> None:
        self._paused.clear()

    def _publish(self) -> None:
        while not self._stop.is_set():
            with self.fleet._publish_lock:  # pause() waits for this lock: no round starts after it returns
                if not self._paused.is_set():
                    self.fleet.publish_round(parallel=self.parallel)
            self._stop.wait(self.publish_every)

    def __enter__(self) -> Row:
        report(f"--- {self.name}")
        self.base = self.fleet.checkpoint()
        self.fleet.publish_round()  # one round before the fault (the background ones go on during it)
        self.started = time.monotonic()
        self._sampler = _Sampler(self.gw)
        self._sampler.start()
        self._publisher = threading.Thread(target=self._publish, daemon=True)
        if self.publish_every:
            self._publisher.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._publisher.is_alive():
            self._publisher.join(30)
        self._sampler.done.set()
        self._sampler.join(5)
        if exc_type is not None:
            return
        self.summary = self.fleet.assert_unharmed(self.base, peak_kib=self._sampler.peak,
                                                  allow_market_gaps=self.allow_market_gaps,
                                                  allow_late_refused=self.allow_late_refused)
        problems = log_problems(self.gw, self.base.log_index, self.expect_log)
        assert not problems, "unexpected log lines:\n" + "\n".join(problems[:10])
        self.report(f"row took {time.monotonic() - self.started:.2f} s")
