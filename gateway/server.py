"""The gateway: admission before the upgrade, one reader loop per connection, liveness.

``Gateway.admit`` runs before the 101 (origin allow-list, JWT); a refusal is
an HTTP answer (403, 401). ``Gateway.serve`` runs in the pywsgi handler's
greenlet after the 101: it registers the session with the hub (per-user
limit → close 4503), starts the connection actor, sends the ``connection``
message and returns; from then on the event loop reads the connection and
tells the actor what each message says (no greenlet per connection). One sweeper
greenlet does liveness for every connection: protocol pings every
heartbeat interval, close 4002 after the silence timeout, close 4000 when a
token expires without a refresh.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import gevent
import pykka

from actors.connection import ConnectionActor
from actors.directory import ConnectionContext, ConnectionLimits, Session
from actors.messages import CloseConnection, Disconnected, Inbound, Rejected
from audit.records import CommandRecord
from audit.writer import AuditLog
from gateway.admin import Admin
from gateway.commands import CommandDesk
from gateway.config import Settings
from gateway.hub import ConnectionLimitExceeded, Hub
from metrics.definitions import Metrics, labelled
from protocol.auth import AuthError, Principal
from protocol.close_codes import CLOSE_CODES, CloseCode
from protocol.commands import Command
from protocol.errors import ProtocolError
from protocol.messages import connection_message, parse
from transport.frames import Opcode, encode_frame
from transport.handshake import Rejection
from transport.socket import ConnectionClosed, WebSocketConnection

__all__ = ["Admission", "Gateway"]

log = logging.getLogger("gateway.server")

SUBPROTOCOL = "trading.v1"
ECHO_PATH = "/ws-echo"  # exists only with GATEWAY_TEST_ECHO=1 (Autobahn|Testsuite)
BEARER_PREFIX = "bearer."
_PING_FRAME = encode_frame(Opcode.PING, b"")
# Closes decided by the frame reader (transport/), counted here; the others are counted where decided.
_FRAME_ERROR_CODES = frozenset({1002, 1007, 1008, 1009})
SLOW_SWEEP_EVERY = 10.0  # seconds between queued-bytes samples and broker connection refreshes
LIVENESS_STALL = 5  # sweep ticks without a sweep before /livez answers 503


@dataclass(frozen=True, slots=True)
class Admission:
    principal: Principal
    protocol: str | None
    started: float
    address: str | None = None  # counted against WS_MAX_CONNECTIONS_PER_ADDRESS (None: a service, not counted)
    counted: bool = True  # holds a place in WS_MAX_CONNECTIONS until released


def open_file_capacity(reserved: int = 256) -> int:
    """Connections this process can hold: its open-file limit, less what the rest needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 1 << 20) - reserved)


def _audit_record(cmd: Command) -> CommandRecord:
    ms = 1000.0
    return CommandRecord(cmd.user_id, cmd.command_id, cmd.bot_id, cmd.command, cmd.params, cmd.state.value,
                         cmd.version, cmd.node, cmd.service, cmd.created_at / ms,
                         None if cmd.accepted_at is None else cmd.accepted_at / ms,
                         None if cmd.finished_at is None else cmd.finished_at / ms, cmd.result, cmd.session_id)


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics, hub: Hub, audit: AuditLog | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hub = hub
        self.audit = audit
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        # Bot commands (gateway/commands.py) and admin actions (gateway/admin.py), on every node.
        self.commands = CommandDesk(
            hub.broker, metrics, node=self.node, default_timeout=settings.bot_command_timeout,
            max_open=settings.bot_command_max_open,
            receivers=hub.service_receivers,
            on_change=(lambda cmd: audit.command(_audit_record(cmd))) if audit is not None else (lambda cmd: None),
            accepting=(lambda: audit.accepting) if audit is not None else (lambda: True))
        self.commands.deliver_local = lambda user, text: hub.send_to_user(user, text, "bot_command_result")
        hub.on_result = self.commands.result_published
        self.admin = Admin(hub, metrics, audit, node=self.node)
        self.admin.load()  # the revocations in force, before the first handshake
        self.ws_path = settings.ws_path
        self.ws_paths = frozenset({settings.ws_path, ECHO_PATH} if settings.test_echo_route else {settings.ws_path})
        self.draining = False
        self._sweeper: gevent.Greenlet | None = None
        # Liveness (/livez): when the sweeper last ran, and how late the event loop woke it.
        self.last_sweep = time.monotonic()
        self.loop_lag = 0.0
        # ws_bytes_sent: what ended connections wrote, plus the open ones' counts, read at scrape time.
        self._bytes_of_closed = 0
        metrics.bytes_sent.source = lambda: self._bytes_of_closed + sum(
            x.outbox.bytes_written for x in self.hub.sessions.values())
        # Admission budgets (docs/protocol.md, limits): connections admitted and
        # not yet ended, in all and per client address. Counted at admission,
        # before anything yields, so a burst of upgrades cannot overshoot.
        self.capacity = settings.max_connections or open_file_capacity()
        # What each connection actor is handed: nothing else of the gateway.
        self.connection_context = ConnectionContext(
            directory=hub,
            limits=ConnectionLimits(max_channels=settings.max_channels_per_connection,
                                    command_rate=settings.command_rate, command_burst=settings.command_burst,
                                    error_budget=settings.error_budget),
            verify=self.admin.verify(settings.authenticator.verify),
            metrics=metrics,
            commands=self.commands,
        )
        self.admitted = 0
        self.by_address: dict[str, int] = {}

    # -- before the upgrade ------------------------------------------------------

    def admit(self, environ: dict[str, Any]) -> Admission:
        started = time.perf_counter()
        if self.draining:
            raise Rejection("503 Service Unavailable", "shutting_down", "the gateway is shutting down")
        if environ.get("PATH_INFO") == ECHO_PATH:
            return Admission(Principal("autobahn", float("inf")), None, started, counted=False)
        if self.admitted >= self.capacity:
            raise Rejection("503 Service Unavailable", "at_capacity",
                            f"this node holds its maximum of {self.capacity} connections: try another node or "
                            "retry later", [("Retry-After", "5")])
        origin = environ.get("HTTP_ORIGIN")
        allowed = self.settings.allowed_origins
        # Browsers always send Origin; bots and services do not. Without one, the
        # token decides (unless WS_REQUIRE_ORIGIN): an allow-list guards browsers.
        if allowed and (origin not in allowed if origin is not None else self.settings.require_origin):
            labelled(self.metrics.auth_failures, "origin").inc()
            raise Rejection("403 Forbidden", "origin_not_allowed",
                            "this origin may not connect" if origin is not None else "an Origin header is required")
        token, protocol = self._token(environ)
        try:
            principal = self.settings.authenticator.verify(token)
            self.admin.check(principal)
        except AuthError as exc:
            labelled(self.metrics.auth_failures, exc.reason).inc()
            raise Rejection("401 Unauthorized", f"token_{exc.reason}", exc.message) from None
        address = None if principal.is_service else self._client_address(environ)
        limit = self.settings.max_connections_per_address
        if address is not None and self.by_address.get(address, 0) >= limit:
            raise Rejection("429 Too Many Requests", "too_many_connections_from_address",
                            f"at most {limit} connections from one address", [("Retry-After", "30")])
        self.admitted += 1
        if address is not None:
            self.by_address[address] = self.by_address.get(address, 0) + 1
        return Admission(principal, protocol, started, address)

    def release(self, admission: Admission) -> None:
        """The admitted connection has ended (or never started): its places are free again."""
        if not admission.counted:
            return
        self.admitted -= 1
        address = admission.address
        if address is not None:
            left = self.by_address[address] - 1
            if left:
                self.by_address[address] = left
            else:
                del self.by_address[address]

    def _client_address(self, environ: dict[str, Any]) -> str:
        """The socket's peer, or the client a trusted proxy names (the rightmost untrusted hop)."""
        peer = environ.get("REMOTE_ADDR") or "-"
        trusted = self.settings.trusted_proxies
        if peer in trusted:
            hops = [h.strip() for h in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
            for hop in reversed(hops):
                if hop not in trusted:
                    return hop
        return peer

    @staticmethod
    def _token(environ: dict[str, Any]) -> tuple[str | None, str | None]:
        """The token from ``?token=`` or a ``bearer.<jwt>`` subprotocol, and the subprotocol to echo.

        The server echoes ``trading.v1`` when offered, never the bearer value
        (that would put the token in a response header).
        """
        offered = [p.strip() for p in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",") if p.strip()]
        token = None
        for value in offered:
            if value.startswith(BEARER_PREFIX):
                token = value[len(BEARER_PREFIX):]
        protocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        if token is None:
            values = parse_qs(environ.get("QUERY_STRING", "")).get("token")
            token = values[0] if values else None
        return token, protocol

    def handshake_rejected(self, status: str) -> None:
        labelled(self.metrics.handshake_rejections, status).inc()

    # -- after the upgrade ---------------------------------------------------------

    def make_connection(self, sock: socket.socket, pending: bytes, environ: dict[str, Any],
                        handshake: bytes = b"") -> WebSocketConnection:
        s = self.settings
        echo = environ.get("PATH_INFO") == ECHO_PATH
        return WebSocketConnection(
            sock, pending, handshake=handshake,
            # Autobahn's sections 1-7 and 10 send messages up to 64 KiB + headers.
            max_message_size=16 * 1024 * 1024 if echo else s.max_message_size,
            max_queue_bytes=s.max_queue_bytes,
            write_timeout=s.write_timeout,
            ping_rate=0.0 if echo else s.ping_rate,
            on_latency=self.metrics.fanout_latency_seconds.observe,
        )

    def serve(self, conn: WebSocketConnection, admission: Admission, environ: dict[str, Any]) -> None:
        if environ.get("PATH_INFO") == ECHO_PATH:
            self._serve_echo(conn)
            return
        principal = admission.principal
        try:
            session = self.hub.open_session(principal, conn.outbox, time.time())
        except ConnectionLimitExceeded:
            self.release(admission)
            self._refuse(conn, CloseCode.CONNECTION_LIMIT,
                         f"at most {self.settings.max_connections_per_user} connections per user")
            return
        except BaseException:
            self.release(admission)
            raise
        session.conn = conn
        actor = ConnectionActor.start(self.connection_context, session, conn)
        session.actor = actor
        conn.outbox.on_overflow = lambda: self._slow_consumer(actor)
        labelled(self.metrics.connections, "open").inc()
        self.metrics.connections_opened.inc()
        labelled(self.metrics.messages_sent, "-", "connection").inc()
        conn.send_text(connection_message(
            session_id=session.session_id, user_id=principal.user_id, server_time=int(time.time() * 1000),
            heartbeat_ms=int(self.settings.heartbeat_interval * 1000),
            expires_at=int(principal.expires_at * 1000),
            limits={
                "maxConnectionsPerUser": self.settings.max_connections_per_user,
                "maxChannels": self.settings.max_channels_per_connection,
                "maxMessageSize": self.settings.max_message_size,
            },
        ))
        self.metrics.handshake_seconds.observe(time.perf_counter() - admission.started)
        metrics = self.metrics

        def on_message(message: str | bytes) -> None:
            metrics.bytes_received.inc(len(message))
            try:
                if isinstance(message, bytes):
                    actor.tell(CloseConnection(CloseCode.UNSUPPORTED_DATA,
                                               CLOSE_CODES[CloseCode.UNSUPPORTED_DATA].reason))
                    return
                try:
                    parsed = parse(message)
                except ProtocolError as exc:
                    labelled(metrics.messages_received, "invalid").inc()
                    actor.tell(Rejected(exc))
                    return
                actor.tell(Inbound(parsed))
            except pykka.ActorDeadError:
                pass  # the connection is closing: its end is on the way

        def on_end(closed: ConnectionClosed) -> None:
            if closed.by_server and closed.code in _FRAME_ERROR_CODES:
                labelled(metrics.closes_sent, str(closed.code)).inc()
            labelled(metrics.connections, "open").dec()
            try:
                actor.tell(Disconnected(closed.code))
            except pykka.ActorDeadError:
                pass
            # Idempotent: also cleans up when the actor already died.
            self.hub.close_session(session)
            self.release(admission)
            conn.finish()
            self._bytes_of_closed += conn.outbox.bytes_written
            if conn.outbox.dropped:
                labelled(metrics.messages_dropped, "slow_consumer").inc(conn.outbox.dropped)
            if conn.outbox.conflated:
                labelled(metrics.conflated, "connection").inc(conn.outbox.conflated)

        conn.start_reading(on_message, on_end)

    def _refuse(self, conn: WebSocketConnection, code: CloseCode, reason: str) -> None:
        labelled(self.metrics.closes_sent, str(int(code))).inc()
        conn.close(int(code), reason)
        conn.wait_closed()
        conn.finish()

    def _slow_consumer(self, actor: pykka.ActorRef[Any]) -> None:
        try:
            actor.tell(CloseConnection(CloseCode.SLOW_CONSUMER, CLOSE_CODES[CloseCode.SLOW_CONSUMER].reason,
                                       discard_pending=True))
        except pykka.ActorDeadError:
            pass

    def _serve_echo(self, conn: WebSocketConnection) -> None:
        """Test-only echo route (GATEWAY_TEST_ECHO=1) for Autobahn|Testsuite: the same reader, echoing."""

        def on_message(message: str | bytes) -> None:
            opcode = Opcode.BINARY if isinstance(message, bytes) else Opcode.TEXT
            conn.send_frame(encode_frame(opcode, message if isinstance(message, bytes) else message.encode("utf-8")))

        conn.start_reading(on_message, lambda closed: conn.finish())

    # -- liveness ------------------------------------------------------------------

    def start_sweeper(self) -> None:
        self._sweeper = gevent.spawn(self._sweep_forever)

    @property
    def sweep_tick(self) -> float:
        s = self.settings
        return max(0.05, min(s.sweep_interval, s.heartbeat_interval, s.silence_timeout))

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the event loop runs and the sweeper (pings, silence and expiry closes) keeps its beat.

        A sweeper that died, or an event loop blocked for ``LIVENESS_STALL``
        sweep ticks (at least 5 s), is not alive: only a restart helps.
        """
        since = time.monotonic() - self.last_sweep
        stalled_after = max(5.0, LIVENESS_STALL * self.sweep_tick)
        dead = self._sweeper is not None and self._sweeper.dead
        alive = not dead and since < stalled_after
        detail = {"status": "alive" if alive else "stalled", "lastSweepMsAgo": round(since * 1000),
                  "loopLagMs": round(self.loop_lag * 1000, 1)}
        if dead:
            detail["reason"] = "the liveness sweeper has stopped"
        elif not alive:
            detail["reason"] = f"no sweep for {since:.1f} s (the event loop is blocked or starved)"
        return alive, detail

    def _sweep_forever(self) -> None:
        s = self.settings
        tick = self.sweep_tick
        # Pings are spread over the heartbeat interval: each sweep pings one
        # bucket of connections, not all of them at once (a burst of 10,000
        # pings every interval showed up as latency and lost connects/s).
        buckets = max(1, round(s.heartbeat_interval / tick))
        next_sample = time.monotonic() + SLOW_SWEEP_EVERY
        turn = 0
        while True:
            asleep = time.monotonic()
            gevent.sleep(tick)
            now = time.monotonic()
            self.loop_lag = max(0.0, now - asleep - tick)
            self.last_sweep = now
            sample = now >= next_sample
            if sample:
                next_sample = now + SLOW_SWEEP_EVERY
            self.sweep(ping_bucket=(turn % buckets, buckets), sample=sample)
            turn += 1

    def sweep(self, *, ping_bucket: tuple[int, int] | None, sample: bool = False) -> None:
        """Close the silent and the expired; ping the connections of ``ping_bucket`` (turn, buckets)."""
        s = self.settings
        turn, buckets = ping_bucket if ping_bucket is not None else (-1, 1)
        queued = self.metrics.queue_bytes
        # One pass over every connection each tick: the comparisons are hoisted out of it.
        loop_now = gevent.get_hub().loop.now()
        silent_before = loop_now - s.silence_timeout
        unfinished_before = loop_now - s.message_deadline
        expired_before = time.time() - s.authenticator.leeway
        ping = _PING_FRAME
        for session in list(self.hub.sessions.values()):
            conn = session.conn
            if conn is None:
                continue
            if conn.last_activity < silent_before:
                self._tell_close(session, CloseCode.HEARTBEAT_TIMEOUT)
            elif conn.message_since is not None and conn.message_since < unfinished_before:
                conn.violate(int(CloseCode.POLICY_VIOLATION),
                             f"message not finished within {s.message_deadline:g} s")
            elif session.principal.expires_at < expired_before:
                self._tell_close(session, CloseCode.TOKEN_EXPIRED)
            elif session.ping_bucket % buckets == turn:
                conn.outbox.push_control(ping)
            if sample:
                # Bytes, as counted against WS_QUEUE_BYTES (the 4001 limit).
                queued.observe(conn.outbox.queued_bytes)
        if sample:
            # Keep this node's connections counted in the broker (they expire if it dies).
            self.hub.broker.refresh_connections(
                [(x.principal.user_id, x.session_id) for x in self.hub.sessions.values()
                 if not x.principal.is_service])

    def _tell_close(self, session: Session, code: CloseCode) -> None:
        try:
            session.actor.tell(CloseConnection(code, CLOSE_CODES[code].reason))
        except pykka.ActorDeadError:
            pass

    # -- shutdown ------------------------------------------------------------------

    def close_all(self, code: CloseCode, *, batch: int = 500, pause: float = 0.01,
                  reconnect_within_ms: int = 5000) -> int:
        """Close every connection with ``code``, ``batch`` at a time; returns how many.

        Each close reason carries a jittered reconnect hint ("reconnect in
        2345ms"), so clients that follow it do not all come back at once.
        """
        sessions = list(self.hub.sessions.values())
        rng = random.Random()
        base = CLOSE_CODES[code].reason
        for i, session in enumerate(sessions):
            reason = f"{base}; reconnect in {rng.randrange(reconnect_within_ms)}ms"
            try:
                session.actor.tell(CloseConnection(code, reason))
            except pykka.ActorDeadError:
                pass
            if i % batch == batch - 1:
                gevent.sleep(pause)
        return len(sessions)
