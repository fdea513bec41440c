"""ConnectionActor: one per client connection; owns its subscriptions and answers its messages.

Takes: :class:`Inbound` (a parsed client message), :class:`Rejected` (a
message that failed to parse), :class:`CloseConnection`,
:class:`Disconnected`, :class:`SubscriptionRevoked`.
Does: joins and leaves channels through the :class:`actors.directory.Directory`
(the hub); hands bot commands, reports and status queries to the
gateway's command desk (:class:`actors.directory.Commands`); writes its
replies (``subscribed``, ``pong``, ``error`` ...) into the connection's
outbox, the only writer of the socket. Data from channels never passes
through it: channel actors push frames into the outbox themselves.

It knows the gateway only through its :class:`actors.directory.ConnectionContext`
(limits, a token verifier, metrics, the directory). The socket's reader
(``gateway/server.py``, in event-loop callbacks) parses frames and tells
it the result. It is never restarted: when it fails, the connection is
closed with 1011 and the client reconnects; the failure is counted.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from actors.directory import ConnectionContext, Session
from actors.messages import CloseConnection, Disconnected, Inbound, Rejected, SubscriptionRevoked
from metrics.definitions import labelled
from protocol.auth import AuthError
from protocol.channels import BROKERED_CHANNELS, SERVICE_CHANNELS, Channel, ChannelKey, keys_for
from protocol.close_codes import CLOSE_CODES, CloseCode
from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import TokenBucket
from protocol.messages import (
    BotCommand,
    BotCommandReport,
    BotCommandStatus,
    Ping,
    Refresh,
    Subscribe,
    Unsubscribe,
    error_message,
    pong_message,
    refreshed_message,
    subscribed_message,
    unsubscribed_message,
)
from supervision import GeventActor

if TYPE_CHECKING:
    from transport.socket import WebSocketConnection

__all__ = ["ConnectionActor"]

log = logging.getLogger("gateway.connection")

# Metric label: the protocol's name of each client message type.
_TYPE_NAMES = {Subscribe: "subscribe", Unsubscribe: "unsubscribe", Ping: "ping", Refresh: "refresh",
               BotCommand: "bot_command", BotCommandStatus: "bot_command_status",
               BotCommandReport: "bot_command_report"}

# More errors than WS_ERROR_BUDGET within the window closes the connection with 4003.
ERROR_WINDOW = 10.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class ConnectionActor(GeventActor):
    registered = False  # the hub's dicts track connections, not pykka's linear registry
    on_demand = True  # no idle greenlet per connection/channel (_supervision/runtime.py)

    def __init__(self, context: ConnectionContext, session: Session, conn: WebSocketConnection) -> None:
        super().__init__()
        self.context = context
        self.directory = context.directory
        self.metrics = context.metrics
        self.limits = context.limits
        self.session = session
        self.conn = conn
        self.principal = session.principal
        self.subscriptions: dict[tuple[Channel, Any], list[ChannelKey]] = {}
        self._errors: deque[float] | None = None  # made on the first error: most connections never err
        self._closed = False
        limits = context.limits
        self._clock = context.clock
        self._budget = TokenBucket(limits.command_rate, limits.command_burst, self._clock())

    # -- helpers -----------------------------------------------------------------

    def _send(self, text: str, kind: str) -> None:
        labelled(self.metrics.messages_sent, "-", kind).inc()
        self.conn.send_text(text)

    def _error(self, code: ErrorCode, message: str, *, request_id: str | None = None,
               channel: str | None = None) -> None:
        labelled(self.metrics.errors_sent, code.value).inc()
        self._send(error_message(code, message, request_id=request_id, channel=channel), "error")
        now = self._clock()
        errors = self._errors if self._errors is not None else deque()
        self._errors = errors
        errors.append(now)
        while errors and errors[0] < now - ERROR_WINDOW:
            errors.popleft()
        if len(errors) > self.limits.error_budget:
            self._close(CloseCode.RATE_LIMITED)

    def _close(self, code: CloseCode, reason: str | None = None, *, discard_pending: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        labelled(self.metrics.closes_sent, str(int(code))).inc()
        self.conn.close(int(code), reason or CLOSE_CODES[code].reason, discard_pending=discard_pending)

    # -- messages ----------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Inbound):
            self._handle(message.message)
        elif isinstance(message, Rejected):
            err = message.error
            self._error(err.code, err.message, request_id=err.request_id, channel=err.channel)
        elif isinstance(message, CloseConnection):
            self._close(CloseCode(message.code), message.reason, discard_pending=message.discard_pending)
        elif isinstance(message, Disconnected):
            self.stop()
        elif isinstance(message, SubscriptionRevoked):
            self._revoked(message.key)
        else:
            super().on_receive(message)

    def on_stop(self) -> None:
        self.directory.close_session(self.session)

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        log.error("connection actor failed", exc_info=(exc_type, exc, tb),
                  extra={"fields": {"session": self.session.session_id}})
        # Never restarted (the client reconnects), but counted like every child death.
        labelled(self.metrics.supervisor_failures, "connection", "receive").inc()
        self._close(CloseCode.INTERNAL_ERROR)
        self.directory.close_session(self.session)

    def _handle(self, msg: Any) -> None:
        labelled(self.metrics.messages_received, _TYPE_NAMES[type(msg)]).inc()
        if not self._budget.take(self._clock()):
            # Refused, not queued: the client is told, and a client that keeps
            # flooding runs out of its error budget too (4003).
            limits = self.limits
            self._error(ErrorCode.RATE_LIMITED, f"more than {limits.command_rate:g} messages a second "
                        f"(burst {limits.command_burst}): this one was not handled", request_id=msg.request_id)
            return
        if isinstance(msg, Subscribe):
            self._subscribe(msg)
        elif isinstance(msg, Unsubscribe):
            self._unsubscribe(msg)
        elif isinstance(msg, Ping):
            self._send(pong_message(msg.data, _now_ms(), msg.request_id), "pong")
        elif isinstance(msg, Refresh):
            self._refresh(msg)
        elif isinstance(msg, BotCommand | BotCommandStatus | BotCommandReport):
            self._command(msg)

    def _subscribe(self, msg: Subscribe) -> None:
        channel, params = msg.channel, msg.params
        if channel in SERVICE_CHANNELS and not self.principal.is_service:
            self._error(ErrorCode.FORBIDDEN, f"{channel.value} is for platform services only",
                        request_id=msg.request_id, channel=channel.value)
            return
        ident = (channel, params)
        if ident in self.subscriptions:
            # Twice is harmless: confirm again, change nothing.
            self._send(subscribed_message(channel, params, msg.request_id, already=True), "subscribed")
            return
        keys = keys_for(channel, params, self.principal.user_id)
        limit = self.limits.max_channels
        if len(self.session.channels) + len(keys) > limit:
            self._error(ErrorCode.TOO_MANY_CHANNELS, f"at most {limit} channels per connection",
                        request_id=msg.request_id, channel=channel.value)
            return
        self.subscriptions[ident] = keys
        if channel in SERVICE_CHANNELS:
            self.context.commands.register_service(self.principal)
        if channel in BROKERED_CHANNELS:
            # One key; the channel confirms, with the position and whether the
            # missed publications since ``msg.since`` could be recovered.
            request_id, counter = msg.request_id, labelled(self.metrics.messages_sent, "-", "subscribed")

            def confirm(recovered: bool | None, position: Any) -> str:
                counter.inc()
                return subscribed_message(channel, None, request_id, recovered=recovered, position=position)

            self.directory.join(self.session, keys[0], since=msg.since, confirm=confirm)
            return
        # The confirmation goes first, so it precedes the retained value and live data.
        # Non-brokered channels keep no history: a ``since`` gets recovered=false and the current state.
        self._send(subscribed_message(channel, params, msg.request_id,
                                      recovered=False if msg.since is not None else None), "subscribed")
        for key in keys:
            self.directory.join(self.session, key)

    def _unsubscribe(self, msg: Unsubscribe) -> None:
        # Idempotent like subscribe: unsubscribing from a channel the
        # connection is not on is confirmed too (``wasSubscribed: false``).
        keys = self.subscriptions.pop((msg.channel, msg.params), None)
        for key in keys or ():
            self.directory.leave(self.session, key)
        self._send(unsubscribed_message(msg.channel, msg.params, msg.request_id, was_subscribed=keys is not None),
                   "unsubscribed")

    def _revoked(self, key: ChannelKey) -> None:
        self.session.channels.discard(key)
        for ident, keys in list(self.subscriptions.items()):
            if key in keys:
                keys.remove(key)
                if not keys:
                    del self.subscriptions[ident]

    def _refresh(self, msg: Refresh) -> None:
        try:
            principal = self.context.verify(msg.token)
        except AuthError as exc:
            labelled(self.metrics.auth_failures, f"refresh_{exc.reason}").inc()
            self._error(ErrorCode.INVALID_TOKEN, exc.message, request_id=msg.request_id)
            return
        if principal.user_id != self.principal.user_id:
            self._error(ErrorCode.TOKEN_SUBJECT_MISMATCH, "the new token is for another user",
                        request_id=msg.request_id)
            return
        self.principal = principal
        self.session.principal = principal
        self._send(refreshed_message(int(principal.expires_at * 1000), msg.request_id), "refreshed")

    def _command(self, msg: BotCommand | BotCommandStatus | BotCommandReport) -> None:
        commands = self.context.commands
        try:
            if isinstance(msg, BotCommandReport):
                if not self.principal.is_service:
                    raise ProtocolError(ErrorCode.FORBIDDEN, "only platform services report on commands",
                                        request_id=msg.request_id)
                frames = commands.report(self.principal, msg)
            elif isinstance(msg, BotCommandStatus):
                frames = commands.status(self.principal, msg)
            else:
                frames = commands.submit(self.principal, self.session.session_id, msg)
        except ProtocolError as exc:
            self._error(exc.code, exc.message, request_id=exc.request_id)
            return
        for text, kind in frames:
            self._send(text, kind)
