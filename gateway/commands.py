"""The command desk: bot commands from the user to the owning service and back.

A connection actor hands it a user's ``bot_command``, a service's
``bot_command_report`` or a ``bot_command_status`` query and sends on
what it returns (frames) or the :class:`ProtocolError` it raises.

- **Routing.** A service that subscribes to ``bot-commands`` registers the
  bots its token ``serves`` (protocol/commands.py); the owner of a bot is
  the service with the most specific claim that is connected on any node.
  The command is published on ``bot-commands#<owner>``, which only that
  service's connections receive.
- **State** is one record per (user, commandId) in the broker (memory, or
  Redis for every node), moved forward only, by compare and set: two
  replicas of a service cannot both accept a command, and a report after
  the deadline finds it ``timed_out``.
- **Results** go out on a brokered key every node listens to; each node
  pushes them to the issuing user's connections it holds.
- **Deadlines** are kept by the node the user sent the command to (a timer);
  if that node is gone, the first status query or report after the deadline
  moves the command to ``timed_out`` (documented in docs/protocol.md).
- **In flight.** A user may have ``max_open`` commands sent through this
  node and not yet finished (``BOT_COMMAND_MAX_OPEN``); one more is
  ``too_many_commands``, nothing sent. A command stops counting at its
  result (from any node) or at its deadline, whichever comes first.
- **Idempotency.** A resend with the same ``commandId`` is answered from the
  record (``duplicate: true``, then its latest state) and not sent again;
  the same id for a different command is ``conflict``.

Nothing is acknowledged before the record is stored and the command
published: a broker failure is ``no_service`` saying whether the command
may have been sent.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import gevent

from brokers.broker import Broker, BrokerUnavailable
from metrics.definitions import Metrics, labelled
from protocol.auth import Principal
from protocol.channels import RESULTS_KEY, Channel, ChannelKey
from protocol.commands import TERMINAL, Command, CommandState, advance, owners, serves
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    BotCommand,
    BotCommandReport,
    BotCommandStatus,
    bot_command_ack_message,
    bot_command_report_ack_message,
    bot_command_result_message,
    dumps,
)

__all__ = ["RETENTION", "CommandDesk"]

log = logging.getLogger("gateway.commands")

# Seconds a command's record answers status queries and resends after its last change: longer
# than any deadline (10 minutes at most), short enough that a client flooding the desk with new
# commandIds (20 messages a second at most, WS_COMMAND_RATE) holds a bounded amount of memory.
RETENTION = 3600.0
Frames = list[tuple[str, str]]  # (text, message type for the metrics)


_FINAL_STATES = frozenset(state.value for state in TERMINAL)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _record_key(user: str, command_id: str) -> str:
    return f"cmd:{quote(user, safe='')}:{command_id}"


def service_key(service: str) -> ChannelKey:
    return ChannelKey(f"{Channel.BOT_COMMANDS.value}#{service}")


class CommandDesk:
    def __init__(self, broker: Broker, metrics: Metrics, *, node: str, default_timeout: float,
                 receivers: Callable[[ChannelKey], int], max_open: int = 100,
                 on_change: Callable[[Command], object] = lambda cmd: None,
                 accepting: Callable[[], bool] = lambda: True,
                 clock: Callable[[], int] = _now_ms) -> None:
        """``receivers``: connections (or nodes) listening to a service's key, on every node.
        ``on_change``: each new state, for the audit trail. ``accepting``: False refuses new
        commands (the audit trail cannot take them, AUDIT_OVERFLOW=refuse)."""
        self.broker = broker
        self.metrics = metrics
        self.node = node
        self.default_timeout_ms = int(default_timeout * 1000)
        self.receivers = receivers
        self.on_change = on_change
        self.accepting = accepting
        self.clock = clock
        self.deliver_local: Callable[[str, str], object] = lambda user, text: None  # set by the gateway
        self._timers: dict[str, gevent.Greenlet] = {}
        self.max_open = max_open
        self._open: dict[str, set[str]] = {}  # user -> record keys of unfinished commands sent through this node

    # -- services ------------------------------------------------------------------

    def register_service(self, principal: Principal) -> None:
        """A service subscribes to bot-commands: it owns the bots its ``serves`` claim names."""
        try:
            self.broker.register_service(principal.user_id, serves(principal.claims.get("serves")))
        except BrokerUnavailable as exc:
            log.warning("cannot register service %s now: %s", principal.user_id, exc)

    def _owner(self, bot_id: str) -> tuple[str | None, int]:
        """The connected owner of ``bot_id`` and how many listen on its key, or (None, 0)."""
        try:
            candidates = owners(bot_id, self.broker.services())
        except BrokerUnavailable:
            return None, 0
        for service in candidates:
            listeners = self.receivers(service_key(service))
            if listeners > 0:
                return service, listeners
        return None, 0

    # -- users --------------------------------------------------------------------

    def submit(self, principal: Principal, session_id: str, msg: BotCommand) -> Frames:
        rid = msg.request_id
        bots = principal.bots
        if bots is not None and msg.bot_id not in bots:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"bot {msg.bot_id[:40]!r} does not belong to this user",
                                request_id=rid)
        command_id = msg.command_id or uuid.uuid4().hex
        key = _record_key(principal.user_id, command_id)
        if msg.command_id is not None:
            known = self._load(key, rid)
            if known is not None:
                return self._resent(known, msg)
        # A place among the user's unfinished commands is taken before any I/O (two connections of the
        # user cannot both take the last one), and given back unless the command is sent.
        open_now = self._open.setdefault(principal.user_id, set())
        if key not in open_now and len(open_now) >= self.max_open:
            labelled(self.metrics.bot_commands, "too_many_commands").inc()
            raise ProtocolError(ErrorCode.TOO_MANY_COMMANDS, f"{len(open_now)} commands of this user are not "
                                "finished yet (BOT_COMMAND_MAX_OPEN); nothing was sent: wait for a result",
                                request_id=rid)
        taken = key not in open_now
        open_now.add(key)
        sent = False
        try:
            frames, sent = self._send(principal, session_id, msg, command_id, key)
        finally:
            if taken and not sent:
                self._closed(principal.user_id, key)
        return frames

    def _send(self, principal: Principal, session_id: str, msg: BotCommand, command_id: str,
              key: str) -> tuple[Frames, bool]:
        """Store and publish a new command: its ack and True, or the answer to a resend and False."""
        rid = msg.request_id
        if not self.accepting():
            raise ProtocolError(ErrorCode.AUDIT_UNAVAILABLE, "the audit trail cannot record commands now; "
                                "nothing was sent: try again later", request_id=rid)
        owner, listeners = self._owner(msg.bot_id)
        if owner is None:
            raise ProtocolError(ErrorCode.NO_SERVICE, f"no service that owns bot {msg.bot_id[:40]!r} is "
                                "connected; nothing was sent: try again later", request_id=rid)
        now = self.clock()
        cmd = Command(principal.user_id, command_id, msg.bot_id, msg.command, msg.params, owner, self.node,
                      session_id, now, now + (msg.timeout_ms or self.default_timeout_ms))
        text = dumps(cmd.to_json())
        try:
            existing = self.broker.record_put(key, text, RETENTION)
        except BrokerUnavailable as exc:
            raise self._unreachable(exc, rid) from None
        if existing is not None:  # the same id, sent twice at once: the other one is the command
            return self._resent(Command.from_json(json.loads(existing)), msg), False
        try:
            self.broker.publish(service_key(owner), cmd.to_service(), now)
        except BrokerUnavailable as exc:
            if not exc.maybe_stored:
                self._forget(key)
            raise self._unreachable(exc, rid) from None
        labelled(self.metrics.bot_commands, CommandState.SENT.value).inc()
        self.on_change(cmd)
        self._arm(cmd)
        return [(bot_command_ack_message(command_id, cmd.state.value, rid, delivered_to=listeners),
                 "bot_command_ack")], True

    def status(self, principal: Principal, msg: BotCommandStatus) -> Frames:
        cmd = self._load(_record_key(principal.user_id, msg.command_id), msg.request_id)
        if cmd is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no command {msg.command_id!r} for this user",
                                request_id=msg.request_id)
        cmd = self._expire(cmd)
        return [(bot_command_result_message(cmd.to_user(), msg.request_id), "bot_command_result")]

    def _resent(self, known: Command, msg: BotCommand) -> Frames:
        if not known.same_request(msg.bot_id, msg.command, msg.params):
            raise ProtocolError(ErrorCode.CONFLICT, f"commandId {known.command_id!r} was used for another "
                                "command; nothing was sent", request_id=msg.request_id)
        labelled(self.metrics.bot_commands, "duplicate").inc()
        known = self._expire(known)
        frames = [(bot_command_ack_message(known.command_id, known.state.value, msg.request_id, duplicate=True),
                   "bot_command_ack")]
        if known.state is not CommandState.SENT:
            frames.append((bot_command_result_message(known.to_user()), "bot_command_result"))
        return frames

    # -- services report ------------------------------------------------------------

    def report(self, principal: Principal, msg: BotCommandReport) -> Frames:
        rid = msg.request_id
        key = _record_key(msg.user_id, msg.command_id)
        for _ in range(5):  # compare and set: retried when another node moved it meanwhile
            cmd = self._load(key, rid)
            if cmd is None or cmd.service != principal.user_id:
                # Another service's command looks like none at all: nothing about it leaks.
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no command {msg.command_id!r} of user "
                                    f"{msg.user_id[:40]!r} for this service", request_id=rid)
            cmd = self._expire(cmd)
            moved = advance(cmd, msg.state, self.clock(), msg.result)
            if moved is None:
                raise ProtocolError(ErrorCode.INVALID_STATE, f"the command is {cmd.state.value}: it cannot become "
                                    f"{msg.state.value}", request_id=rid)
            if self._swap(key, cmd, moved, rid):
                self._changed(moved)
                return [(bot_command_report_ack_message(moved.command_id, moved.state.value, rid),
                         "bot_command_report_ack")]
        raise ProtocolError(ErrorCode.INVALID_STATE, "the command kept changing under this report: ask again",
                            request_id=rid)

    # -- deadlines --------------------------------------------------------------------

    def _arm(self, cmd: Command) -> None:
        delay = max(0.0, (cmd.deadline - self.clock()) / 1000)
        key = _record_key(cmd.user_id, cmd.command_id)
        self._timers[key] = gevent.spawn_later(delay, self._deadline, key, cmd.user_id)

    def _deadline(self, key: str, user: str) -> None:
        self._timers.pop(key, None)
        self._closed(user, key)  # past its deadline it no longer counts, whatever the broker says now
        try:
            cmd = self._load(key, None)
            if cmd is not None:
                self._expire(cmd)
        except ProtocolError as exc:  # the broker is down: the next query or report times it out
            log.warning("cannot time out command %s now: %s", key, exc.message)

    def _expire(self, cmd: Command) -> Command:
        """``cmd``, moved to ``timed_out`` when its deadline has passed unfinished."""
        key = _record_key(cmd.user_id, cmd.command_id)
        for _ in range(5):
            if cmd.finished or self.clock() < cmd.deadline:
                return cmd
            moved = advance(cmd, CommandState.TIMED_OUT, self.clock())
            assert moved is not None
            if self._swap(key, cmd, moved, None):
                self._changed(moved)
                return moved
            latest = self._load(key, None)
            if latest is None:
                return cmd
            cmd = latest
        return cmd

    def stop(self) -> None:
        for timer in list(self._timers.values()):
            timer.kill(block=False)
        self._timers.clear()

    # -- the record, the results -------------------------------------------------------

    def _load(self, key: str, rid: str | None) -> Command | None:
        try:
            text = self.broker.record_get(key)
        except BrokerUnavailable as exc:
            raise self._unreachable(exc, rid) from None
        return None if text is None else Command.from_json(json.loads(text))

    def _swap(self, key: str, old: Command, new: Command, rid: str | None) -> bool:
        try:
            return self.broker.record_swap(key, dumps(old.to_json()), dumps(new.to_json()), RETENTION)
        except BrokerUnavailable as exc:
            raise self._unreachable(exc, rid) from None

    def _forget(self, key: str) -> None:
        try:
            self.broker.record_delete(key)
        except BrokerUnavailable:
            pass  # it expires; a resend with the same id gets its state

    def _changed(self, cmd: Command) -> None:
        """A new state: audit it, and tell the issuing user's connections on every node."""
        labelled(self.metrics.bot_commands, cmd.state.value).inc()
        self.on_change(cmd)
        if cmd.finished:
            key = _record_key(cmd.user_id, cmd.command_id)
            self._closed(cmd.user_id, key)
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.kill(block=False)
        try:
            self.broker.publish(RESULTS_KEY, {"userId": cmd.user_id, "result": cmd.to_user()}, self.clock())
        except BrokerUnavailable as exc:
            # Stored all the same: the user's status query answers it.
            log.warning("command %s is %s, but its result could not be sent now: %s", cmd.command_id,
                        cmd.state.value, exc)

    def result_published(self, data: Any) -> None:
        """A result from any node (the broker's delivery): to this node's connections of the user."""
        if isinstance(data, dict) and isinstance(data.get("userId"), str):
            result = data.get("result")
            if (isinstance(result, dict) and isinstance(result.get("commandId"), str)
                    and result.get("state") in _FINAL_STATES):
                self._closed(data["userId"], _record_key(data["userId"], result["commandId"]))
            self.deliver_local(data["userId"], bot_command_result_message(data["result"]))

    def _closed(self, user: str, key: str) -> None:
        """The command no longer counts toward its user's ``max_open``."""
        keys = self._open.get(user)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._open[user]

    @staticmethod
    def _unreachable(exc: BrokerUnavailable, rid: str | None) -> ProtocolError:
        return ProtocolError(ErrorCode.NO_SERVICE, "bot services cannot be reached now; the command may have "
                             "been sent: ask bot_command_status before sending another" if exc.maybe_stored else
                             "bot services cannot be reached now; nothing was sent: try again later",
                             request_id=rid)
