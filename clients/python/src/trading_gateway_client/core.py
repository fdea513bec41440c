"""The client's state machine, without I/O: the two shells (asyncio, blocking) feed it and do what it says.

A shell asks :meth:`ClientCore.connect_request` for the URL and the
subprotocols to offer (the token travels in the ``Sec-WebSocket-Protocol``
header as ``bearer.<jwt>``, never in the URL), tells the core that the
connection opened, hands it every text frame (:meth:`ClientCore.receive`
returns the events to deliver), sends what :meth:`ClientCore.take_outgoing`
gives, and when the connection ends asks :meth:`ClientCore.closed` (or
:meth:`ClientCore.refused`, :meth:`ClientCore.failed`) what to do next. The
token refresh is a timer: :meth:`ClientCore.next_deadline`,
:meth:`ClientCore.refresh_due`, :meth:`ClientCore.refresh`.

What the core keeps across connections:

* **Subscriptions** (intents): renewed on every ``connection`` message,
  each with the same request ``id`` as the caller's first subscribe.
* **Positions** of brokered channels (private channels, ``bot-commands``):
  the last *delivered* ``(seq, epoch)``, never ``subscribed.offset`` when
  messages are replayed after it. Resubscribes carry ``since`` from it; a
  message at or before it is a duplicate and dropped, so every publication
  is delivered once per channel across reconnects, or a :class:`Resync`
  says what could not be.
* **Seq tracking** of the gateway-counted channels (market data per
  symbol, category and stream; ``time-sync``; ``system-health``), reset on
  every ``subscribed``; a forward jump on ``trades``/``kline`` is a
  :class:`SeqGap`.
* **Order books** per ``(symbol, category, stream)``.
* **Bot commands and reports** (:mod:`trading_gateway_client.commands`):
  a bot's unfinished commands, resent (same ``commandId``) or queried
  after every reconnect, each state delivered once; a service's reports,
  sent again until acknowledged.
* **The token's revocation** (close 4501, or a refusal ``token_revoked``):
  with ``get_token`` the client asks it once for another token and goes on
  with it if it is a different one; the same token, no ``get_token``, or a
  second revocation in a row stops the client.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trading_gateway_client.commands import CommandTracker, PendingCommand, PendingReport, new_command_id
from trading_gateway_client.errors import ClosedByGateway, NotConnected
from trading_gateway_client.market import BookView, OrderBook
from trading_gateway_client.messages import (
    BROKERED_CHANNELS,
    EVENT_STREAMS,
    BotCommandAck,
    BotCommandReportAck,
    BotCommandResult,
    Connection,
    Data,
    Disconnected,
    ErrorMessage,
    Event,
    MarketParams,
    Position,
    Refreshed,
    Resync,
    SeqGap,
    Subscribed,
    Unknown,
    encode,
    parse_server_message,
    ping_message,
    refresh_message,
    subscribe_message,
    unsubscribe_message,
)
from trading_gateway_client.policy import Decision, ReconnectPolicy, RefreshSchedule, jwt_expiry

__all__ = ["SUBPROTOCOL", "ClientCore", "ConnectRequest", "Intent"]

SUBPROTOCOL = "trading.v1"
BEARER_PREFIX = "bearer."
_GATEWAY_COUNTED = ("time-sync", "system-health")
# Refusals of a subscribe that say "not now" rather than "no": the subscribe is sent again a little later.
TRANSIENT_ERRORS = frozenset({"rate_limited", "internal_error"})
RESUBSCRIBE_AFTER = (0.5, 1.5)  # seconds, random within


@dataclass(frozen=True)
class ConnectRequest:
    url: str
    subprotocols: tuple[str, str]  # ("trading.v1", "bearer.<jwt>"): the server echoes trading.v1, never the token


@dataclass
class Intent:
    """One subscription the caller asked for; renewed on every connection until unsubscribed."""

    id: str
    channel: str
    params: dict[str, Any] | None  # market-data parameters as last sent
    confirmed: MarketParams | None = None  # market-data parameters as the gateway normalized them
    active: bool = False  # confirmed on the current connection
    since_sent: Position | None = None  # the `since` of the subscribe in flight
    retry: bool = False  # refused for now (rate_limited): sent again at the core's resubscribe deadline
    rejected_streams: set[str] = field(default_factory=set)  # refused upstream: not asked for again

    @property
    def key(self) -> tuple[str, str]:
        return _intent_key(self.channel, self.params)


def _intent_key(channel: str, params: Mapping[str, Any] | None) -> tuple[str, str]:
    return channel, json.dumps(params, sort_keys=True, separators=(",", ":"))


def _check_token(token: str) -> str:
    if not isinstance(token, str) or not token or any(c.isspace() or c == "," for c in token):
        raise ValueError("a token must be a non-empty string without spaces or commas (it goes in a header)")
    return token


class ClientCore:
    def __init__(self, url: str | Sequence[str], *, positions: Mapping[str, Position | tuple[int, str]] | None = None,
                 policy: ReconnectPolicy | None = None, refresh: RefreshSchedule | None = None,
                 auto_refresh: bool = True, can_renew_token: bool = True, rng: random.Random | None = None,
                 command_ids: Callable[[], str] | None = None) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("at least one URL")
        for u in urls:
            if not u.startswith(("ws://", "wss://")):
                raise ValueError(f"not a WebSocket URL: {u!r}")
            if "token=" in u:
                raise ValueError("the token goes in the Sec-WebSocket-Protocol header, not in the URL")
        self.urls = urls
        self.policy = policy or ReconnectPolicy()
        self.schedule = refresh or RefreshSchedule()
        self.auto_refresh = auto_refresh
        self.can_renew_token = can_renew_token
        self.rng = rng or random.Random()
        self.state = "idle"  # idle, connecting, open, closed (between attempts), stopped
        self.session: Connection | None = None
        self.token: str | None = None
        self._token_exp: float | None = None  # the token's exp claim (unverified), local clock
        self._renew = False
        self._url_index = 0
        self.attempt = 0  # failures in a row (reset after a connection stays up policy.stable_after)
        self._opened_at: float | None = None
        self._closing = False
        # Token refresh on the open connection.
        self._skew = 0.0  # server clock - local clock, from the connection message
        self._expires_at: float | None = None  # the connection's token expiry, local clock
        self._refresh_at: float | None = None
        self._refresh_inflight: str | None = None
        self._refresh_token: str | None = None
        self._resubscribe_at: float | None = None
        # Subscriptions and positions.
        self.intents: dict[str, Intent] = {}
        self._by_key: dict[tuple[str, str], Intent] = {}
        self.positions: dict[str, Position | None] = {}
        for channel, pos in (positions or {}).items():
            self.positions[channel] = pos if isinstance(pos, Position) else Position(int(pos[0]), str(pos[1]))
        self._seq: dict[tuple[Any, ...], int] = {}
        self.books: dict[tuple[str, str, str], OrderBook] = {}
        self.outgoing: list[str] = []
        self._ids = 0
        self.stats = {"connections": 0, "duplicates_dropped": 0, "resyncs": 0, "seq_gaps": 0, "refreshes": 0}
        # Bot commands (a bot's) and reports (a service's), kept across connections.
        self.tracker = CommandTracker(self._queue, self._next_id, self.rng, command_ids or new_command_id)
        # The token was revoked (4501 / 401 token_revoked): get_token is asked once for another one.
        self._revoked_token: str | None = None

    # -- ids and frames -------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids}"

    def _queue(self, msg: Mapping[str, Any]) -> None:
        self.outgoing.append(encode(msg))

    def take_outgoing(self) -> list[str]:
        """The frames to send now, in order."""
        frames, self.outgoing = self.outgoing, []
        return frames

    @property
    def is_open(self) -> bool:
        """Open, and the ``connection`` message has arrived: requests can be sent."""
        return self.state == "open" and self.session is not None

    # -- the token ------------------------------------------------------------------------

    def set_token(self, token: str, now: float) -> None:
        if self._revoked_token is not None and token == self._revoked_token:
            self.state = "stopped"
            raise ClosedByGateway(4501, "token revoked", "TOKEN_REVOKED",
                                  "The token was revoked and get_token gave the same token again: not reconnecting "
                                  "with it.")
        self.token = _check_token(token)
        self._token_exp = jwt_expiry(token)
        self._renew = False

    def token_needed(self, now: float) -> bool:
        """Before an attempt: is a (new) token needed? (None yet, 4000 or a refusal as expired, or it expires.)"""
        if self.token is None or self._renew:
            return True
        return self.can_renew_token and self._token_exp is not None and self._token_exp <= now + 1.0

    # -- connecting -----------------------------------------------------------------------

    def connect_request(self) -> ConnectRequest:
        if self.token is None:
            raise RuntimeError("no token: call set_token first")
        if self.state == "stopped":
            raise RuntimeError("the client has stopped")
        self.state = "connecting"
        return ConnectRequest(self.urls[self._url_index % len(self.urls)],
                              (SUBPROTOCOL, BEARER_PREFIX + self.token))

    def opened(self, now: float) -> None:
        """The upgrade succeeded; the ``connection`` message comes next."""
        self.state = "open"
        self._opened_at = now
        self.session = None

    def close(self) -> None:
        """The caller closes the client: the close that follows is not reconnected."""
        self._closing = True

    @property
    def closing(self) -> bool:
        return self._closing

    def closed(self, code: int, reason: str, now: float) -> tuple[Decision, Disconnected]:
        """The open connection ended with ``code`` (1006 when there was no close frame)."""
        if self._opened_at is not None and now - self._opened_at >= self.policy.stable_after:
            self.attempt = 0
        decision = self.policy.after_close(code, reason, attempt=self.attempt, can_renew_token=self._can_renew(code),
                                           closed_by_client=self._closing, rng=self.rng)
        self._revoked(code == 4501, decision)
        self._ended(decision)
        return decision, Disconnected(code, reason, decision.delay if decision.reconnect else None)

    def refused(self, status: int, error: str, message: str, now: float,
                retry_after: float | None = None) -> tuple[Decision, Disconnected]:
        """The upgrade was answered with an HTTP error status."""
        revoked = status == 401 and error == "token_revoked"
        decision = self.policy.after_refusal(status, error, message, attempt=self.attempt,
                                             can_renew_token=self._can_renew(4501 if revoked else None),
                                             retry_after=retry_after, rng=self.rng)
        if self._closing:
            decision = Decision(False)
        self._revoked(revoked, decision)
        self._ended(decision)
        return decision, Disconnected(None, message, decision.delay if decision.reconnect else None, status, error)

    def failed(self, description: str, now: float) -> tuple[Decision, Disconnected]:
        """The attempt got no answer (refused TCP connect, timeout, reset, DNS) or get_token failed."""
        decision = Decision(False) if self._closing else self.policy.after_failure(self.attempt, self.rng)
        self._ended(decision)
        return decision, Disconnected(None, description, decision.delay if decision.reconnect else None)

    def _can_renew(self, code: int | None) -> bool:
        """A revocation right after another (the token get_token gave was revoked too) is not renewed again."""
        if code == 4501 and self._revoked_token is not None:
            return False
        return self.can_renew_token

    def _revoked(self, revoked: bool, decision: Decision) -> None:
        if revoked and decision.reconnect and self.token is not None:
            self._revoked_token = self.token  # get_token must give another one

    def _ended(self, decision: Decision) -> None:
        self.state = "closed" if decision.reconnect else "stopped"
        self.session = None
        self._opened_at = None
        self._refresh_at = None
        self._refresh_inflight = None
        self._resubscribe_at = None
        self.outgoing.clear()
        for book in self.books.values():
            book.mark_stale()
        for intent in self.intents.values():
            intent.active = False
            intent.since_sent = None
            intent.retry = False
        self.tracker.disconnected()
        if decision.renew_token:
            self._renew = True
        if decision.reconnect:
            self.attempt += 1
            self._url_index += 1  # with several URLs (nodes), the next attempt goes to the next one

    # -- requests ---------------------------------------------------------------------------

    def subscribe(self, channel: str, params: Mapping[str, Any] | None = None, *,
                  since: Position | None = None) -> Intent:
        """Record a subscription (renewed on every connection); sent now if connected. Idempotent."""
        key = _intent_key(channel, params)
        existing = self._by_key.get(key)
        if existing is not None:
            return existing
        if since is not None and channel in BROKERED_CHANNELS:
            self.positions[channel] = since
        intent = Intent(self._next_id("s"), channel, dict(params) if params is not None else None)
        self.intents[intent.id] = intent
        self._by_key[key] = intent
        if self.is_open:
            self._send_subscribe(intent)
        return intent

    def _send_subscribe(self, intent: Intent) -> None:
        since = self.positions.get(intent.channel) if intent.channel in BROKERED_CHANNELS else None
        if intent.rejected_streams and intent.params is not None:
            # Streams the exchange refused are not asked for again: the rest are.
            streams = [s for s in (intent.confirmed.streams if intent.confirmed else intent.params.get("streams", []))
                       if s not in intent.rejected_streams]
            if not streams:
                self._forget(intent)
                return
            del self._by_key[intent.key]
            intent.params = {**intent.params, "streams": streams}
            intent.rejected_streams.clear()
            self._by_key[intent.key] = intent
        intent.since_sent = since
        self._queue(subscribe_message(intent.channel, intent.params, since=since, request_id=intent.id))

    def _forget(self, intent: Intent) -> None:
        self.intents.pop(intent.id, None)
        if self._by_key.get(intent.key) is intent:
            del self._by_key[intent.key]

    def unsubscribe(self, channel: str, params: Mapping[str, Any] | None = None) -> str | None:
        """Forget a subscription (and, on a brokered channel, its position); the request id if sent now."""
        intent = self._by_key.get(_intent_key(channel, params))
        if intent is not None:
            self._forget(intent)
            params = intent.params
        if channel in BROKERED_CHANNELS:
            self.positions.pop(channel, None)
        if not self.is_open:
            return None
        rid = self._next_id("u")
        self._queue(unsubscribe_message(channel, params, request_id=rid))
        return rid

    def ping(self, data: Any = None) -> str:
        self._require_open("ping")
        rid = self._next_id("p")
        self._queue(ping_message(data, request_id=rid))
        return rid

    def bot_command(self, bot_id: str, command: str, params: Mapping[str, Any] | None = None, *,
                    command_id: str | None = None, timeout_ms: int | None = None) -> str:
        """Send a command now (an open connection is required); the request id its ack answers.

        The command is tracked like :meth:`send_command`'s: resent or queried after a reconnect.
        """
        self._require_open("bot_command")
        return self.send_command(bot_id, command, params, command_id=command_id, timeout_ms=timeout_ms).request_id

    def send_command(self, bot_id: str, command: str, params: Mapping[str, Any] | None = None, *,
                     command_id: str | None = None, timeout_ms: int | None = None) -> PendingCommand:
        """Track a bot command until it finishes: sent now if connected, else on the next connection.

        Without ``command_id`` one is chosen, so that every resend is the same command to the gateway.
        ``timeout_ms`` (1,000-600,000) is the command's deadline, else the gateway's ``BOT_COMMAND_TIMEOUT``.
        Raises ``ValueError`` for an invalid id or timeout, or an id already tracked for another command.
        """
        self._require_running("a bot command")
        return self.tracker.command(bot_id, command, params, command_id=command_id, timeout_ms=timeout_ms)

    def forget_command(self, command_id: str) -> PendingCommand | None:
        """Stop tracking a command: no resend, no status query (its pushed results are still delivered)."""
        return self.tracker.forget(command_id)

    def report(self, command_id: str, user_id: str, state: str, result: Any = None) -> PendingReport:
        """A service reports a command's progress; kept (and sent again after reconnects) until acknowledged."""
        self._require_running("a report")
        return self.tracker.report(command_id, user_id, state, result)

    def _require_running(self, what: str) -> None:
        if self.state == "stopped":
            raise NotConnected(f"{what} needs a running client: this one has stopped")

    def _require_open(self, what: str) -> None:
        if not self.is_open:
            raise NotConnected(f"{what} needs an open connection (state: {self.state})")

    # -- the token refresh ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (local clock), or None."""
        if not self.is_open:
            return None
        deadlines = [d for d in (self._refresh_at if self._refresh_inflight is None else None,
                                 self._resubscribe_at, self.tracker.next_deadline()) if d is not None]
        return min(deadlines, default=None)

    def tick(self, now: float) -> bool:
        """Run the timers: subscribes refused for now are sent again. True when a token refresh is due:
        the shell then gets a new token and calls :meth:`refresh`."""
        if not self.is_open:
            return False
        if self._resubscribe_at is not None and now >= self._resubscribe_at:
            self._resubscribe_at = None
            for intent in list(self.intents.values()):
                if intent.retry:
                    intent.retry = False
                    self._send_subscribe(intent)
        self.tracker.tick(now)
        return self.refresh_due(now)

    def refresh_due(self, now: float) -> bool:
        return (self.is_open and self._refresh_inflight is None and self._refresh_at is not None
                and now >= self._refresh_at)

    def retrying(self, request_id: str | None) -> bool:
        """Is this subscribe being sent again (its refusal was only "not now")?"""
        intent = self.intents.get(request_id) if request_id is not None else None
        return (intent is not None and intent.retry) or self.tracker.retrying(request_id)

    def survives(self, request_id: str) -> bool:
        """Is this request kept across reconnects (a subscription, a tracked command, a pending report)?"""
        return request_id in self.intents or self.tracker.survives(request_id)

    @property
    def expires_at(self) -> float | None:
        """The open connection's token expiry (local clock)."""
        return self._expires_at if self.is_open else None

    def refresh(self, token: str, now: float) -> str:
        """Send ``refresh`` with a new token; the request id."""
        self._require_open("refresh")
        _check_token(token)
        rid = self._next_id("r")
        self._refresh_inflight, self._refresh_token = rid, token
        self._queue(refresh_message(token, request_id=rid))
        return rid

    def refresh_failed(self, now: float) -> None:
        """get_token failed: try again later (before the token expires, if there is time)."""
        if self._expires_at is not None and self.is_open:
            self._refresh_at = self.schedule.retry_at(now, self._expires_at)

    # -- receiving --------------------------------------------------------------------------

    def receive(self, text: str | bytes, now: float) -> list[Event]:
        """One frame from the gateway: the events to deliver, in order (maybe none: a duplicate)."""
        try:
            obj = json.loads(text)
        except ValueError:
            return [Unknown({"raw": text if isinstance(text, str) else text.decode("utf-8", "replace")})]
        if not isinstance(obj, dict):
            return [Unknown({"raw": obj})]
        event = parse_server_message(obj)
        if isinstance(event, Data):
            return self._on_data(event)
        if isinstance(event, Connection):
            return self._on_connection(event, now)
        if isinstance(event, Subscribed):
            return self._on_subscribed(event)
        if isinstance(event, Resync):
            if event.channel in BROKERED_CHANNELS:
                self.positions[event.channel] = (Position(event.offset, event.epoch)
                                                 if event.offset is not None and event.epoch else None)
            self.stats["resyncs"] += 1
            return [event]
        if isinstance(event, Refreshed):
            self._on_refreshed(event, now)
            return [event]
        if isinstance(event, BotCommandAck):
            return self.tracker.on_ack(event)
        if isinstance(event, BotCommandResult):
            return self.tracker.on_result(event)
        if isinstance(event, BotCommandReportAck):
            return self.tracker.on_report_ack(event)
        if isinstance(event, ErrorMessage):
            answered = self.tracker.on_error(event, now)
            if answered is not None:
                return answered
            self._on_error(event, now)
            return [event]
        return [event]

    def _on_connection(self, event: Connection, now: float) -> list[Event]:
        self.session = event
        self.stats["connections"] += 1
        self._skew = event.server_time / 1000 - now
        self._expires_at = event.expires_at / 1000 - self._skew
        lifetime = (event.expires_at - event.server_time) / 1000
        self._refresh_at = (self.schedule.refresh_at(self._expires_at, lifetime)
                            if self.auto_refresh and self.can_renew_token else None)
        self._refresh_inflight = None
        self._revoked_token = None  # the token that opened this connection is good
        for intent in list(self.intents.values()):
            self._send_subscribe(intent)
        self.tracker.connected()
        return [event]

    def _on_subscribed(self, event: Subscribed) -> list[Event]:
        intent = self.intents.get(event.id) if event.id is not None else None
        if event.already:
            return [event]
        out: list[Event] = [event]
        channel = event.channel
        if channel == "market-data" and event.params is not None:
            p = event.params
            for stream in p.streams:
                self._seq.pop((channel, p.symbol, p.category, stream), None)
                if stream.startswith("orderbook"):
                    self.books.setdefault((p.symbol, p.category, stream), OrderBook(p.symbol, p.category, stream))
        elif channel in _GATEWAY_COUNTED:
            self._seq.pop((channel,), None)
        elif channel in BROKERED_CHANNELS:
            since = intent.since_sent if intent is not None else None
            head = Position(event.offset, event.epoch) if event.offset is not None and event.epoch else None
            if since is None:
                # Nothing delivered before this subscribe: the channel's head is the position (None: unknown,
                # the broker could not be asked; the next data message sets it).
                self.positions[channel] = head
            elif not event.recovered:
                self.positions[channel] = head
                self.stats["resyncs"] += 1
                out.append(Resync(channel, f"the position {since.offset} in epoch {since.epoch!r} could not be "
                                  "recovered (no longer kept, or the broker is unavailable): refetch the state",
                                  "not_recovered", head.offset if head else None, head.epoch if head else None))
            # recovered: the missed messages follow; the position stays the last one delivered.
        if intent is not None:
            intent.active = True
            intent.since_sent = None
            if event.params is not None:
                intent.confirmed = event.params
        return out

    def _on_data(self, event: Data) -> list[Event]:
        channel = event.channel
        if channel in BROKERED_CHANNELS and event.epoch is not None:
            pos = self.positions.get(channel)
            out: list[Event] = []
            if pos is not None:
                if event.epoch == pos.epoch:
                    if event.seq <= pos.offset:
                        self.stats["duplicates_dropped"] += 1
                        return []
                    if event.seq > pos.offset + 1:
                        self.stats["resyncs"] += 1
                        out.append(Resync(channel, f"offsets {pos.offset + 1}-{event.seq - 1} were not delivered",
                                          "gap", event.seq - 1, event.epoch))
                else:
                    self.stats["resyncs"] += 1
                    out.append(Resync(channel, f"the channel's history changed from epoch {pos.epoch!r} to "
                                      f"{event.epoch!r} without a resync message", "epoch_changed",
                                      event.seq - 1, event.epoch))
            self.positions[channel] = Position(event.seq, event.epoch)
            out.append(event)
            return out
        if channel == "market-data" and event.stream is not None:
            category = event.category or "spot"
            symbol = event.symbol or ""
            stream = event.stream
            gap = self._track((channel, symbol, category, stream), event.seq,
                              stream in EVENT_STREAMS or stream.startswith("kline"))
            out = [] if gap is None else [SeqGap(channel, gap[0], gap[1], symbol, stream)]
            if stream.startswith("orderbook") and isinstance(event.payload, BookView):
                book = self.books.setdefault((symbol, category, stream), OrderBook(symbol, category, stream))
                book.apply(event.payload, event.seq)
                if event.payload.resync:
                    self.stats["resyncs"] += 1
                    out.append(Resync(channel, event.payload.reason or "the gateway lost an order-book update",
                                      "book", symbol=symbol, stream=stream, category=category))
                    return out
            out.append(event)
            return out
        if channel in _GATEWAY_COUNTED:
            self._track((channel,), event.seq, False)
        return [event]

    def _track(self, key: tuple[Any, ...], seq: int, every_one_matters: bool) -> tuple[int, int] | None:
        """Gap tracking for gateway-counted seqs: (expected, got) when a stream that skips nothing skipped."""
        previous = self._seq.get(key)
        self._seq[key] = seq
        if previous is None or seq <= previous or seq == previous + 1:
            return None  # a baseline (first after subscribed, or the channel restarted), or in order
        if every_one_matters:
            self.stats["seq_gaps"] += 1
            return previous + 1, seq
        return None  # latest-value streams: newer values replaced older ones while we were behind

    def _on_refreshed(self, event: Refreshed, now: float) -> None:
        if event.id is None or event.id != self._refresh_inflight:
            return
        self._refresh_inflight = None
        self.stats["refreshes"] += 1
        if self._refresh_token is not None:
            self.set_token(self._refresh_token, now)  # the next connection uses the new token too
            self._refresh_token = None
        expires = event.expires_at / 1000 - self._skew
        previous = self._expires_at
        self._expires_at = expires
        if previous is None or expires > previous + 0.001:
            self._refresh_at = self.schedule.refresh_at(expires, expires - now)
        else:
            self._refresh_at = self.schedule.retry_at(now, expires)  # get_token gave no later expiry

    def _on_error(self, event: ErrorMessage, now: float) -> None:
        if event.id is not None and event.id == self._refresh_inflight:
            self._refresh_inflight, self._refresh_token = None, None
            if self._expires_at is not None:
                self._refresh_at = self.schedule.retry_at(now, self._expires_at)
            return
        intent = self.intents.get(event.id) if event.id is not None else None
        if intent is not None and not intent.active and event.code in TRANSIENT_ERRORS:
            intent.retry = True
            if self._resubscribe_at is None:
                self._resubscribe_at = now + self.rng.uniform(*RESUBSCRIBE_AFTER)
            return
        if intent is not None and not intent.active:
            # The subscribe was refused (forbidden, invalid_params, rate_limited...): the caller is told, and it is
            # not renewed on the next connection either.
            self._forget(intent)
            if intent.channel in BROKERED_CHANNELS:
                self.positions.pop(intent.channel, None)
            return
        if event.code == "upstream_rejected" and event.channel == "market-data" and event.symbol and event.stream:
            for intent in list(self.intents.values()):
                confirmed = intent.confirmed
                if intent.channel == "market-data" and confirmed is not None and confirmed.symbol == event.symbol \
                        and event.stream in confirmed.streams:
                    intent.rejected_streams.add(event.stream)

    # -- what the caller reads ------------------------------------------------------------

    def book(self, symbol: str, category: str = "spot", stream: str | None = None) -> OrderBook | None:
        """The local book of ``symbol`` (the deepest subscribed book stream unless ``stream`` names one)."""
        symbol = symbol.upper()
        if stream is not None:
            return self.books.get((symbol, category, stream))
        found = [b for (s, c, _), b in self.books.items() if s == symbol and c == category]
        return max(found, key=lambda b: int(b.stream.partition(".")[2] or 0), default=None)
