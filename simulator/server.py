"""The fake Bybit v5 public WebSocket server, with its HTTP control API, on one loopback port.

Routes (HTTP/1.1, one request per TCP connection except the WebSocket):

* ``GET /v5/public/spot`` and ``GET /v5/public/linear`` with a WebSocket
  upgrade: the market streams (see :mod:`simulator.protocol` for every reply
  shape and :mod:`simulator.feeds` for the data).
* ``GET /control/state``: connections, their subscriptions, active faults,
  message counts and the subscribe/unsubscribe requests seen per topic
  (``requests``: ``{"spot:orderbook.50.BTCUSDT": {"subscribe": 2, ...}}``),
  as JSON.
* ``POST /control/fault`` with a JSON fault (see :mod:`simulator.faults`):
  ``200 {"ok": true, ...}`` or ``400 {"ok": false, "error": "..."}``.
* ``GET /control/symbols``: the symbol policy and the instrument table;
  ``POST /control/symbols`` with ``{"mode": "known" | "any"}`` (and
  optionally ``"reject": [symbols]``) replaces the policy for subscribes
  from then on (see :mod:`simulator.instruments`).

Which symbols exist is the :class:`~simulator.instruments.SymbolPolicy`'s
call: by default the built-in table only. A subscribe naming a symbol that
does not exist on that market gets the market's own failure reply and no
data ever streams for it (see :meth:`SimulatorServer._subscribe`).

The opening handshake is the gateway's own, :mod:`transport.handshake`
(``parse_request_head``, ``check_upgrade``, ``upgrade_response``); a refused
upgrade is a :class:`~transport.handshake.Rejection` answered with
``rejection_response``. Framing is :mod:`transport.frames` (see
:mod:`simulator.connection`).

Built on ``gevent.server.StreamServer`` and gevent's own sockets: it needs
no monkey patching, and works the same in a process that has called
``gevent.monkey.patch_all()``. Everything runs in the hub's thread; call
:meth:`SimulatorServer.inject` from a greenlet of that thread.

One greenlet steps the markets ``rate_hz`` times a second; each step every
subscribed topic publishes once, and each message is encoded once and
queued to every subscriber (:class:`~simulator.connection.Connection`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import socket
import time
import uuid
from collections import Counter
from typing import Any

import gevent
import gevent.event
from gevent.server import StreamServer

from simulator import protocol
from simulator.connection import Connection
from simulator.faults import (
    Burst,
    Close,
    FaultBook,
    FaultError,
    Frame,
    Garbage,
    Latency,
    Refuse,
    RejectSubscribe,
    Resume,
    Silent,
    SkipU,
    SnapshotBeforeAck,
    U1Snapshot,
    describe,
    garbage_payloads,
    parse_fault,
)
from simulator.feeds import Emission, Feed, OrderbookFeed, make_feed
from simulator.instruments import SYMBOL_MODES, SymbolPolicy, listings_state
from simulator.market import Instrument, instrument_spec
from simulator.protocol import (
    Category,
    RequestError,
    Topic,
    TopicError,
    TopicKind,
)
from transport.frames import Opcode, encode_frame
from transport.handshake import (
    MAX_HEAD,
    Rejection,
    RequestHead,
    check_upgrade,
    parse_request_head,
    rejection_response,
    upgrade_response,
)

__all__ = ["SimulatorServer"]

logger = logging.getLogger("simulator")

_WS_PATHS = {f"/v5/public/{c}": c for c in Category}
_MAX_BODY = 64 * 1024
# the answers to a ``refuse`` fault in mode "503" and to a plain GET of a stream path
_REFUSED = rejection_response(
    Rejection("503 Service Unavailable", "service unavailable", "refused by a refuse fault", [("Retry-After", "1")])
)
_NOT_UPGRADE = rejection_response(
    Rejection("426 Upgrade Required", "websocket upgrade required", "this path is a websocket stream",
              [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])
)
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    413: "413 Payload Too Large",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_loopback(host: str) -> None:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve host {host!r}") from exc
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise ValueError(f"host {host!r} is not a loopback address; the simulator serves 127.0.0.1 only")


class SimulatorServer:
    """A local Bybit v5 public WebSocket server.

    ``port=0`` picks a free port (read :attr:`port` after :meth:`start`).
    ``seed`` fixes every price path, book and id; ``rate_hz`` is the number
    of updates per second per topic. ``idle_timeout`` (seconds, ``None`` =
    never) drops a client that sent no frame for that long, like Bybit's
    10-minute cut-off. ``symbols`` decides which symbols exist (default:
    the built-in instrument table only, ``SymbolPolicy("any")`` for any
    well-formed symbol).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int | str = 0,
        rate_hz: float = 10.0,
        idle_timeout: float | None = None,
        symbols: SymbolPolicy | None = None,
        handshake_timeout: float = 10.0,
        max_queue: int = 10_000,
    ) -> None:
        _check_loopback(host)
        if not rate_hz > 0:
            raise ValueError("rate_hz must be positive")
        self.host = host
        self.seed = seed
        self.rate_hz = float(rate_hz)
        self.idle_timeout = idle_timeout
        self.symbols = symbols or SymbolPolicy()
        self.handshake_timeout = handshake_timeout
        self.max_queue = max_queue
        self.stats: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()  # (category:topic, op) -> subscribe/unsubscribe seen
        self.faults = FaultBook(time.monotonic)
        self._requested_port = port
        self._server: StreamServer | None = None
        self._ticker: gevent.Greenlet | None = None
        self._stopped = gevent.event.Event()
        self._rng = random.Random(f"{seed}:conn_id")
        self._connections: dict[int, Connection] = {}
        self._next_number = 1
        self._instruments: dict[tuple[Category, str], Instrument] = {}
        self._feeds: dict[tuple[Category, str], Feed] = {}
        self._subscribers: dict[tuple[Category, str], dict[int, Connection]] = {}
        self._started_at = 0.0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving in background greenlets; returns at once."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = StreamServer((self.host, self._requested_port), self._handle)
        self._server.start()
        self._started_at = time.monotonic()
        self._stopped.clear()
        self._ticker = gevent.spawn(self._tick_loop)
        logger.info(
            "simulator listening on %s:%d (seed=%s, rate_hz=%s, symbols=%s)",
            self.host,
            self.port,
            self.seed,
            self.rate_hz,
            self.symbols.mode,
        )

    def stop(self) -> None:
        """Close every connection (1001 going away), stop listening and ticking."""
        if self._server is None:
            return
        for conn in list(self._connections.values()):
            conn.close(1001, "server stopping")
        if self._ticker is not None:
            self._ticker.kill(block=False)
        self._server.stop(timeout=1.0)
        self._server = None
        self._stopped.set()
        logger.info("simulator stopped")

    def serve_forever(self) -> None:
        """:meth:`start` (if needed) and block until :meth:`stop`."""
        if self._server is None:
            self.start()
        self._stopped.wait()

    @property
    def port(self) -> int:
        """The bound port (only after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.address[1])

    def url(self, category: str | Category) -> str:
        """``ws://HOST:PORT/v5/public/{category}``."""
        return f"ws://{self.host}:{self.port}/v5/public/{Category(category)}"

    # --- accepting ----------------------------------------------------------------------------

    def _handle(self, sock: Any, address: tuple[str, int]) -> None:
        peer = f"{address[0]}:{address[1]}"
        try:
            sock.settimeout(self.handshake_timeout)
            read = _read_head(sock)
            if read is None:
                return
            raw_head, rest = read
            head = parse_request_head(raw_head)
            if head is None:
                sock.sendall(_http_response(400, b'{"error":"bad request"}'))
                return
            path = head.path
            if path in _WS_PATHS:
                self._websocket(sock, peer, head, Category(_WS_PATHS[path]), rest)
            elif path.startswith("/control/"):
                self._control(sock, head, rest)
            else:
                sock.sendall(_http_response(404, b'{"error":"not found"}'))
        except OSError:
            pass
        except Exception:
            logger.exception("error serving %s", peer)
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _websocket(self, sock: Any, peer: str, head: RequestHead, category: Category, rest: bytes) -> None:
        refusal = self.faults.refusal(category)
        if refusal is not None:
            self.stats["connections_refused"] += 1
            if refusal == "503":
                sock.sendall(_REFUSED)
            return  # "close": drop TCP without an answer
        if not head.is_websocket_upgrade:
            sock.sendall(_NOT_UPGRADE)
            return
        try:
            accept = check_upgrade(head.environ(), head.version)
        except Rejection as rejection:
            sock.sendall(rejection_response(rejection))
            return
        sock.sendall(upgrade_response(accept, None))
        number = self._next_number
        self._next_number += 1
        conn_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        conn = Connection(
            number,
            conn_id,
            category,
            sock,
            peer,
            self._on_text,
            self.stats,
            idle_timeout=self.idle_timeout,
            max_queue=self.max_queue,
        )
        self._connections[number] = conn
        self.stats["connections_accepted"] += 1
        logger.debug("connection %d from %s to %s", number, peer, category)
        try:
            conn.run(rest)
        finally:
            del self._connections[number]
            for name in conn.subscriptions:
                self._subscribers.get((category, name), {}).pop(number, None)
            logger.debug("connection %d closed", number)

    # --- requests -----------------------------------------------------------------------------

    def _on_text(self, conn: Connection, payload: str | bytes) -> None:
        delay = self.faults.latency(conn.category)
        if delay > 0 or conn.delayed:  # a latency fault: in order, each request ``delay`` after it came
            conn.delayed.append((time.monotonic() + delay, payload))
            if conn.delay_worker is None or conn.delay_worker.dead:
                conn.delay_worker = gevent.spawn(self._drain_delayed, conn)
            return
        self._handle_request(conn, payload)

    def _drain_delayed(self, conn: Connection) -> None:
        while conn.delayed:
            due, payload = conn.delayed[0]
            gevent.sleep(max(0.0, due - time.monotonic()))
            conn.delayed.popleft()
            if conn.number in self._connections:
                self._handle_request(conn, payload)

    def _handle_request(self, conn: Connection, payload: str | bytes) -> None:
        category = conn.category
        try:
            request = protocol.parse_request(payload)
        except RequestError as exc:
            self.stats["bad_requests"] += 1
            conn.send_message(protocol.request_error(category, conn.conn_id, exc), reply=True)
            return
        for name in request.args:
            self.requests[(f"{category}:{name}", request.op)] += 1
        if request.op == "ping":
            conn.send_message(protocol.pong(category, conn.conn_id, request.req_id), reply=True)
        elif request.op == "subscribe":
            self.stats["subscribe_requests"] += 1
            self._subscribe(conn, request)
        else:
            for name in request.args:
                if conn.subscriptions.pop(name, None) is not None:
                    conn.unsynced.discard(name)
                    self._subscribers.get((category, name), {}).pop(conn.number, None)
            conn.send_message(protocol.ack(category, "unsubscribe", conn.conn_id, request.req_id), reply=True)

    def _subscribe(self, conn: Connection, request: protocol.Request) -> None:
        """Answer a subscribe as Bybit does: one reply for the whole request.

        Order of checks: more than 10 args on spot (``args size >10``); then
        every topic must parse and name a symbol that exists on this market.
        If any does not, **the whole request fails** and none of its topics
        is subscribed, on spot and on linear: docs/bybit-v5.md §1 "Failure
        replies" records that one bad topic fails the whole batch (and §6
        lists it as the fake server's behaviour). The reply is the market's
        own: spot ``Invalid symbol :[<bad topics>]``, linear
        ``error:handler not found,topic:<first bad topic>``. No feed is
        created for a refused topic, so nothing ever streams for an unknown
        symbol; the good topics of that request stream only once they are
        subscribed again (as the gateway does).
        """
        category, req_id = conn.category, request.req_id
        if category is Category.SPOT and len(request.args) > protocol.SPOT_MAX_ARGS:
            conn.send_message(protocol.args_too_many(conn.conn_id, req_id), reply=True)
            return
        topics: list[Topic] = []
        bad: list[str] = []
        for name in request.args:
            try:
                topic = protocol.parse_topic(name)
            except TopicError:
                bad.append(name)
                continue
            if not self.symbols.exists(category, topic.symbol):
                bad.append(name)
                continue
            topics.append(topic)
        if bad:  # one bad topic fails the whole request (docs/bybit-v5.md §1, [obs])
            self.stats["subscribe_failed"] += 1
            conn.send_message(protocol.invalid_topics(category, bad, conn.conn_id, req_id), reply=True)
            return
        if topics:
            forced = self.faults.take_reject(category, [t.symbol for t in topics])
            if forced is not None:
                self.stats["subscribe_failed"] += 1
                named = [request.args[i] for i in forced.indices]
                conn.send_message(protocol.invalid_topics(category, named, conn.conn_id, req_id, form=forced.form),
                                  reply=True)
                return
        duplicate = next((t.name for t in topics if t.name in conn.subscriptions), None)
        fresh = list({t.name: t for t in topics if t.name not in conn.subscriptions}.values())
        now_ms = _now_ms()
        for topic in fresh:
            feed = self._feed(category, topic, now_ms)
            conn.subscriptions[topic.name] = topic
            self._subscribers.setdefault((category, topic.name), {})[conn.number] = conn
            if feed.stateful:
                conn.unsynced.add(topic.name)
        has_book = any(t.kind is TopicKind.ORDERBOOK for t in fresh)
        if has_book and self.faults.take_snapshot_before_ack(category):
            self._send_snapshots(conn, [t for t in fresh if t.kind is TopicKind.ORDERBOOK], now_ms)
        if duplicate is not None and category is Category.LINEAR:
            conn.send_message(protocol.already_subscribed(conn.conn_id, req_id, duplicate), reply=True)
        else:
            conn.send_message(protocol.ack(category, "subscribe", conn.conn_id, req_id), reply=True)
        self._send_snapshots(conn, fresh, now_ms)

    def _send_snapshots(self, conn: Connection, topics: list[Topic], now_ms: int) -> None:
        for topic in topics:
            if topic.name not in conn.unsynced:
                continue
            snapshot = self._feeds[(conn.category, topic.name)].snapshot(now_ms)
            if snapshot is not None and conn.send_message(snapshot):
                conn.unsynced.discard(topic.name)

    def _feed(self, category: Category, topic: Topic, now_ms: int) -> Feed:
        key = (category, topic.name)
        feed = self._feeds.get(key)
        if feed is None:
            ikey = (category, topic.symbol)
            instrument = self._instruments.get(ikey)
            if instrument is None:
                instrument = Instrument(instrument_spec(category, topic.symbol), self.seed)
                self._instruments[ikey] = instrument
            feed = self._feeds[key] = make_feed(category, topic, instrument, now_ms)
        return feed

    # --- publishing ---------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        deadline = time.monotonic()
        while True:
            period = 1.0 / (self.rate_hz * self.faults.rate_factor())  # a ``burst`` fault speeds it up
            deadline += period
            try:
                self._tick()
            except Exception:
                logger.exception("tick failed")
            delay = deadline - time.monotonic()
            if delay < -5 * period:  # fell far behind (a paused process): do not burst to catch up
                deadline = time.monotonic()
                delay = 0.0
            gevent.sleep(max(0.0, delay))

    def _tick(self) -> None:
        now_ms = _now_ms()
        active = [(key, feed) for key, feed in self._feeds.items() if self._subscribers.get(key)]
        stepped: set[int] = set()
        for _key, feed in active:
            if id(feed.instrument) not in stepped:
                stepped.add(id(feed.instrument))
                feed.instrument.step(now_ms)
        for key, feed in active:
            self._publish(key, feed, feed.tick(now_ms), now_ms)

    def _publish(
        self,
        key: tuple[Category, str],
        feed: Feed,
        emissions: list[Emission],
        now_ms: int,
    ) -> None:
        name = key[1]
        now = time.monotonic()
        for emission in emissions:
            frame = encode_frame(Opcode.TEXT, protocol.dumps(emission.message))
            snapshot_frame: bytes | None = None
            for conn in list(self._subscribers.get(key, {}).values()):
                if conn.is_silenced(now):
                    conn.dropped_silent += 1
                    self.stats["messages_dropped_silent"] += 1
                    continue
                if emission.full:
                    conn.unsynced.discard(name)
                    conn.send(frame)
                elif name in conn.unsynced:
                    if snapshot_frame is None:
                        snapshot = feed.snapshot(now_ms)
                        assert snapshot is not None
                        snapshot_frame = encode_frame(Opcode.TEXT, protocol.dumps(snapshot))
                    if conn.send(snapshot_frame):
                        conn.unsynced.discard(name)
                else:
                    conn.send(frame)

    # --- faults and control -------------------------------------------------------------------

    def inject(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply a fault command (the body of ``POST /control/fault``); returns what it touched.

        Raises :class:`~simulator.faults.FaultError` for an invalid command.
        """
        fault = parse_fault(command)
        scope = fault.category
        conns = [c for c in self._connections.values() if scope is None or c.category is scope]
        result: dict[str, Any] = {"ok": True, "fault": describe(fault)}
        if isinstance(fault, Close):
            for conn in conns:
                conn.close(fault.code, fault.reason, abrupt=fault.abrupt)
            result["connections"] = [c.number for c in conns]
        elif isinstance(fault, Silent):
            for conn in conns:
                conn.silence(fault.seconds, replies=fault.replies)
            result["connections"] = [c.number for c in conns]
        elif isinstance(fault, Frame):
            frame = encode_frame(Opcode.TEXT, fault.text.encode("utf-8"))
            for conn in conns:
                for _ in range(fault.count):
                    conn.send(frame)
            result["connections"] = [c.number for c in conns]
        elif isinstance(fault, Garbage):
            payloads = garbage_payloads(fault.kind, fault.count)
            for conn in conns:
                for binary, payload in payloads:
                    conn.send(
                        encode_frame(Opcode.BINARY if binary else Opcode.TEXT, payload),
                        force=True,
                    )
            result["connections"] = [c.number for c in conns]
        elif isinstance(fault, RejectSubscribe | SnapshotBeforeAck | Refuse | Latency | Burst):
            self.faults.add(fault)
        elif isinstance(fault, SkipU | U1Snapshot):
            touched = []
            for (category, name), feed in self._feeds.items():
                if not isinstance(feed, OrderbookFeed) or (scope is not None and category is not scope):
                    continue
                if fault.symbol is not None and feed.topic.symbol != fault.symbol:
                    continue
                if not self._subscribers.get((category, name)):
                    continue
                if isinstance(fault, SkipU):
                    feed.skip_u()
                else:
                    feed.restart()
                touched.append(f"{category}:{name}")
            result["topics"] = touched
        elif isinstance(fault, Resume):
            self.faults.clear(scope)
            for conn in conns:
                conn.unsilence()
            for (category, _name), feed in self._feeds.items():
                if isinstance(feed, OrderbookFeed) and (scope is None or category is scope):
                    feed.pending_skip_u = feed.pending_restart = False
        self.stats["faults_injected"] += 1
        logger.info("fault injected: %s", json.dumps(result["fault"]))
        return result

    def set_symbols(self, policy: SymbolPolicy) -> dict[str, Any]:
        """Replace the symbol policy; subscribes from now on follow it (existing ones keep streaming)."""
        self.symbols = policy
        logger.info("symbol policy: %s", json.dumps(policy.describe()))
        return {"ok": True, "symbols": policy.describe()}

    def state(self) -> dict[str, Any]:
        """Connections, subscriptions, active faults and counts (``GET /control/state``)."""
        now = time.monotonic()
        conns = [c.state(now) for c in self._connections.values()]
        faults: dict[str, Any] = self.faults.state()
        faults["silent"] = [c["id"] for c in conns if c["silenced"]]
        faults["skip_u"] = [
            f"{k[0]}:{k[1]}" for k, f in self._feeds.items() if isinstance(f, OrderbookFeed) and f.pending_skip_u
        ]
        faults["u1_snapshot"] = [
            f"{k[0]}:{k[1]}" for k, f in self._feeds.items() if isinstance(f, OrderbookFeed) and f.pending_restart
        ]
        requests: dict[str, dict[str, int]] = {}
        for (topic, op), n in sorted(self.requests.items()):
            requests.setdefault(topic, {})[op] = n
        return {
            "host": self.host,
            "port": self.port,
            "seed": self.seed,
            "rate_hz": self.rate_hz,
            "idle_timeout": self.idle_timeout,
            "symbols": self.symbols.describe(),
            "uptime_s": round(now - self._started_at, 3),
            "connections": conns,
            "topics": sorted(f"{k[0]}:{k[1]}" for k, subs in self._subscribers.items() if subs),
            "faults": faults,
            "counts": dict(sorted(self.stats.items())),
            "requests": requests,
        }

    def _control(self, sock: Any, head: RequestHead, rest: bytes) -> None:
        path = head.path
        if path == "/control/state":
            if head.method != "GET":
                sock.sendall(_http_response(405, b'{"error":"use GET"}'))
                return
            sock.sendall(_http_response(200, json.dumps(self.state()).encode()))
        elif path == "/control/fault":
            if head.method != "POST":
                sock.sendall(_http_response(405, b'{"error":"use POST"}'))
                return
            body = _read_body(sock, head, rest)
            if body is None:
                sock.sendall(_http_response(413, b'{"ok":false,"error":"bad or missing content-length"}'))
                return
            try:
                result = self.inject(json.loads(body or b"null"))
            except (FaultError, ValueError) as exc:
                sock.sendall(_http_response(400, json.dumps({"ok": False, "error": str(exc)}).encode()))
                return
            sock.sendall(_http_response(200, json.dumps(result).encode()))
        elif path == "/control/symbols":
            self._control_symbols(sock, head, rest)
        else:
            sock.sendall(_http_response(404, b'{"error":"not found"}'))

    def _control_symbols(self, sock: Any, head: RequestHead, rest: bytes) -> None:
        if head.method == "GET":
            body = {"symbols": self.symbols.describe(), "instruments": listings_state()}
            sock.sendall(_http_response(200, json.dumps(body).encode()))
            return
        if head.method != "POST":
            sock.sendall(_http_response(405, b'{"error":"use GET or POST"}'))
            return
        raw = _read_body(sock, head, rest)
        if raw is None:
            sock.sendall(_http_response(413, b'{"ok":false,"error":"bad or missing content-length"}'))
            return
        try:
            policy = _parse_symbols(json.loads(raw or b"null"), self.symbols)
        except ValueError as exc:
            sock.sendall(_http_response(400, json.dumps({"ok": False, "error": str(exc)}).encode()))
            return
        sock.sendall(_http_response(200, json.dumps(self.set_symbols(policy)).encode()))


def _parse_symbols(obj: Any, current: SymbolPolicy) -> SymbolPolicy:
    """``{"mode": "known"|"any", "reject": [...]}`` → a policy (other settings kept from ``current``)."""
    if not isinstance(obj, dict):
        raise ValueError("symbols command must be a json object")
    unexpected = sorted(set(obj) - {"mode", "reject"})
    if unexpected:
        raise ValueError(f"unexpected key {unexpected[0]!r}")
    mode = obj.get("mode", current.mode)
    if mode not in SYMBOL_MODES:
        raise ValueError(f"mode must be one of {', '.join(SYMBOL_MODES)}")
    reject = obj.get("reject", sorted(current.reject))
    if not isinstance(reject, list) or not all(isinstance(s, str) for s in reject):
        raise ValueError("reject must be a list of symbols")
    return SymbolPolicy(
        mode=mode,
        quotes=current.quotes,
        reject=frozenset(s.upper() for s in reject),
        reject_substring=current.reject_substring,
    )


def _read_head(sock: Any) -> tuple[bytes, bytes] | None:
    """Read up to the blank line; ``(head, bytes after it)`` or ``None`` (EOF, too long)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            return None
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _http_response(status: int, body: bytes) -> bytes:
    """A complete ``Connection: close`` JSON response (the control API's answers)."""
    head = (
        f"HTTP/1.1 {_STATUS[status]}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _read_body(sock: Any, head: RequestHead, rest: bytes) -> bytes | None:
    try:
        length = int(head.headers.get("content-length", "0"))
    except ValueError:
        return None
    if length < 0 or length > _MAX_BODY:
        return None
    body = rest
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return body[:length]
