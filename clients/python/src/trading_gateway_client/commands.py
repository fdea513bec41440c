"""Bot commands, both sides, without I/O: what a bot sent and has not seen finish, what a service reported.

The core (:class:`~trading_gateway_client.core.ClientCore`) owns one
:class:`CommandTracker` and feeds it the connection's life and the answers;
the tracker queues the frames to send (``send``) and returns the events to
deliver.

**A bot's commands** (docs/protocol.md, "Bot commands"). Each command has a
``commandId`` (chosen here when the caller gives none), so sending it again
is idempotent: the gateway answers a known id ``duplicate: true`` and does
not hand it to the service twice. The tracker keeps every command that has
not reached a final state:

* after every ``connection`` message it sends each one again: a
  ``bot_command`` with the same ``commandId`` when it never got an ack (the
  connection ended first: it may or may not have reached the gateway), a
  ``bot_command_status`` query otherwise (its results may have been pushed
  while the client was away);
* it delivers each state of a command once, moving forward only
  (``accepted``, then one of ``succeeded``, ``failed``, ``timed_out``): a
  status answer or a push that repeats or precedes a state already
  delivered is dropped. ``sent`` is the ack, not a result;
* a final state ends tracking; so does a refusal (:class:`BotCommandRefused`):
  ``no_service``, ``forbidden``, ``conflict``, ``invalid_message``,
  ``audit_unavailable``, ``too_many_commands``, or ``not_found`` to a status query (the gateway
  lost the command, or it finished more than an hour ago: its outcome is
  unknown).
  ``rate_limited``, ``internal_error`` and a ``no_service`` saying the
  command *may have been sent* are not refusals: the same command goes
  again after a backoff.

**A service's reports** (``bot_command_report``) are kept until the gateway
acknowledges them (``bot_command_report_ack``) and sent again on every new
connection, one at a time per command so that ``accepted`` is never
overtaken by ``succeeded``. A refusal (``invalid_state``, ``not_found``,
``forbidden``, ``invalid_message``) is final: a :class:`ReportRefused`
event, never retried. A report whose answer was lost with its connection is
marked ``resent`` when it goes again: if the gateway had taken it, the
resend is answered ``invalid_state`` naming the reported state.
"""

from __future__ import annotations

import random
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from trading_gateway_client.messages import (
    COMMAND_ID,
    COMMAND_STATES,
    MAX_TIMEOUT_MS,
    MIN_TIMEOUT_MS,
    REPORT_STATES,
    BotCommandAck,
    BotCommandRefused,
    BotCommandReportAck,
    BotCommandResult,
    ErrorMessage,
    Event,
    ReportRefused,
    bot_command_message,
    bot_command_report_message,
    bot_command_status_message,
    state_rank,
)

__all__ = ["CommandHandleBase", "CommandTracker", "PendingCommand", "PendingReport", "new_command_id"]

# Answers that say "not now" rather than "no": the same request goes again after a backoff.
TRANSIENT = frozenset({"rate_limited", "internal_error"})
REMEMBERED = 10_000  # commands whose latest delivered state is kept, to drop repeats after they finish
_STATE_NAMED = re.compile(r"\b(" + "|".join(COMMAND_STATES) + r")\b")


def new_command_id() -> str:
    """A fresh commandId: random (from the OS, never from a seeded generator), 36 characters."""
    return "cmd-" + uuid.uuid4().hex


@dataclass
class PendingCommand:
    """A command the bot sent that has not reached a final state."""

    command_id: str
    bot_id: str
    command: str
    params: dict[str, Any]
    timeout_ms: int | None
    request_id: str  # the id of every bot_command frame of this command (the same on each resend)
    acked: bool = False  # the gateway knows it (an ack, or a state from it)
    ack: BotCommandAck | None = None
    state: str | None = None  # the latest state known (sent, accepted)
    inflight: str | None = None  # the request waiting for its answer on this connection
    retry_at: float | None = None
    attempts: int = 0  # "not now" answers in a row
    sends: int = 0  # bot_command frames sent (1 + resends)


@dataclass
class PendingReport:
    """A service's report not yet acknowledged."""

    request_id: str  # the same on each resend
    command_id: str
    user_id: str
    state: str
    result: Any
    sent_on: int | None = None  # the connection (its number) it last went out on
    resent: bool = False  # it went out on an earlier connection that ended before the answer
    inflight: bool = False
    retry_at: float | None = None
    attempts: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.user_id, self.command_id


T_contra = TypeVar("T_contra", contravariant=True)


class _Settable(Protocol[T_contra]):
    """What a handle needs of a future: asyncio's and concurrent.futures' both have it."""

    def done(self) -> bool: ...

    def set_result(self, result: T_contra, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class CommandHandleBase:
    """One bot command as the caller holds it: its ack, each state once, its end.

    The shells (asyncio, blocking) give it their own futures and add the
    waiting; what the client feeds it (``_acked``, ``_update``, ``_fail``) is
    the same for both. ``_notify`` runs after each change (the asyncio
    handle wakes its iterators there).
    """

    def __init__(self, pending: PendingCommand, ack: _Settable[BotCommandAck],
                 done: _Settable[BotCommandResult]) -> None:
        self.command_id, self.bot_id, self.command = pending.command_id, pending.bot_id, pending.command
        self.params = dict(pending.params)
        self.updates: list[BotCommandResult] = []
        self.ack: BotCommandAck | None = None
        self.error: BaseException | None = None
        self._ack_future = ack
        self._done_future = done

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.command_id!r}, {self.bot_id!r}, {self.command!r}, "
                f"state={self.state!r})")

    @property
    def state(self) -> str | None:
        """The latest state known: None before the ack, then ``sent``, ``accepted``, a final one."""
        if self.updates:
            return self.updates[-1].state
        return self.ack.state if self.ack is not None else None

    @property
    def done(self) -> bool:
        return self._done_future.done()

    def _notify(self) -> None:
        pass

    # -- fed by the client -----------------------------------------------------------------

    def _acked(self, ack: BotCommandAck) -> None:
        if self.ack is None or not ack.duplicate:
            self.ack = ack
        if not self._ack_future.done():
            self._ack_future.set_result(ack)
        self._notify()

    def _update(self, result: BotCommandResult) -> None:
        self.updates.append(result)
        if not self._ack_future.done():  # a result before the ack (or instead of it, after a reconnect)
            self._ack_future.set_result(BotCommandAck(result.command_id, 0, None, "sent", True))
        if result.finished and not self._done_future.done():
            self._done_future.set_result(result)
        self._notify()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        for future in (self._ack_future, self._done_future):
            if not future.done():
                future.set_exception(error)
        self._notify()


@dataclass
class CommandTracker:
    send: Callable[[Mapping[str, Any]], None]  # queue one client message
    next_id: Callable[[str], str]  # a request id with this prefix
    rng: random.Random = field(default_factory=random.Random)
    make_command_id: Callable[[], str] = new_command_id
    retry_base: float = 0.5  # seconds: the first retry after a "not now" answer, doubling up to retry_cap
    retry_cap: float = 30.0

    def __post_init__(self) -> None:
        self.commands: dict[str, PendingCommand] = {}  # by commandId, in the order sent
        self.reports: dict[str, PendingReport] = {}  # by request id, in the order made
        self._requests: dict[str, tuple[str, str]] = {}  # request id -> ("command" | "status", commandId)
        self._delivered: OrderedDict[str, int] = OrderedDict()  # commandId -> rank of its latest delivered state
        self.open = False
        self.connection = 0  # connections so far: a report sent on an earlier one is a resend
        self.stats = {"commands_resent": 0, "status_queries": 0, "results_dropped": 0, "reports_resent": 0}

    # -- a bot's commands -------------------------------------------------------------------

    def command(self, bot_id: str, command: str, params: Mapping[str, Any] | None = None, *,
                command_id: str | None = None, timeout_ms: int | None = None) -> PendingCommand:
        """Track a new command; sent now when connected, else on the next connection."""
        if not isinstance(bot_id, str) or not bot_id or not isinstance(command, str) or not command:
            raise ValueError("bot_id and command must be non-empty strings")
        if command_id is None:
            command_id = self.make_command_id()
        if not isinstance(command_id, str) or not COMMAND_ID.match(command_id):
            raise ValueError(f"a commandId is 1-64 characters of A-Z a-z 0-9 . _ : -, got {command_id!r}")
        if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int)
                                       or not MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS):
            raise ValueError(f"timeout_ms must be an integer from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}")
        params_dict = dict(params or {})
        known = self.commands.get(command_id)
        if known is not None:
            if (known.bot_id, known.command, known.params) != (bot_id, command, params_dict):
                raise ValueError(f"commandId {command_id!r} is already used for another command")
            return known  # the same command again: already tracked, nothing to send
        pending = PendingCommand(command_id, bot_id, command, params_dict, timeout_ms, self.next_id("c"))
        self.commands[command_id] = pending
        self._delivered.pop(command_id, None)  # a known id sent again on purpose: its states are wanted again
        if self.open:
            self._send_command(pending)
        return pending

    def forget(self, command_id: str) -> PendingCommand | None:
        """Stop tracking a command (no more resends or status queries; its results are still delivered)."""
        return self.commands.pop(command_id, None)

    def _send_command(self, pending: PendingCommand) -> None:
        if pending.sends:
            self.stats["commands_resent"] += 1
        pending.sends += 1
        pending.inflight = pending.request_id
        self._requests[pending.request_id] = ("command", pending.command_id)
        self.send(bot_command_message(pending.bot_id, pending.command, pending.params,
                                      command_id=pending.command_id, timeout_ms=pending.timeout_ms,
                                      request_id=pending.request_id))

    def _send_status(self, pending: PendingCommand) -> None:
        rid = self.next_id("q")
        self.stats["status_queries"] += 1
        pending.inflight = rid
        self._requests[rid] = ("status", pending.command_id)
        self.send(bot_command_status_message(pending.command_id, request_id=rid))

    def _resume(self, pending: PendingCommand) -> None:
        if pending.acked:
            self._send_status(pending)
        else:
            self._send_command(pending)

    # -- a service's reports ---------------------------------------------------------------

    def report(self, command_id: str, user_id: str, state: str, result: Any = None) -> PendingReport:
        """Keep a report until it is acknowledged; sent now when connected and first in line for its command."""
        if state not in REPORT_STATES:
            raise ValueError(f"a report's state is accepted, succeeded or failed, not {state!r}")
        if not isinstance(command_id, str) or not COMMAND_ID.match(command_id):
            raise ValueError(f"not a commandId: {command_id!r}")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be the command's user")
        report = PendingReport(self.next_id("rp"), command_id, user_id, state, result)
        self.reports[report.request_id] = report
        if self.open and self._first_for_command(report):
            self._send_report(report)
        return report

    def _first_for_command(self, report: PendingReport) -> bool:
        return next(r for r in self.reports.values() if r.key == report.key) is report

    def _send_report(self, report: PendingReport) -> None:
        if report.sent_on is not None and report.sent_on != self.connection:
            report.resent = True
            self.stats["reports_resent"] += 1
        report.sent_on = self.connection
        report.inflight = True
        self.send(bot_command_report_message(report.command_id, report.user_id, report.state, report.result,
                                             request_id=report.request_id))

    def _report_done(self, report: PendingReport) -> None:
        """Acked or refused: the next report of the same command goes."""
        self.reports.pop(report.request_id, None)
        if not self.open:
            return
        following = next((r for r in self.reports.values() if r.key == report.key), None)
        if following is not None and not following.inflight and following.retry_at is None:
            self._send_report(following)

    # -- the connection ----------------------------------------------------------------------

    def connected(self) -> None:
        """A ``connection`` message: resend what never got an ack, ask for the rest, send the reports."""
        self.open = True
        self.connection += 1
        for pending in list(self.commands.values()):
            self._resume(pending)
        heads: set[tuple[str, str]] = set()
        for report in list(self.reports.values()):
            if report.key not in heads:
                heads.add(report.key)
                self._send_report(report)

    def disconnected(self) -> None:
        """The connection ended: nothing in flight will be answered."""
        self.open = False
        self._requests.clear()
        for pending in self.commands.values():
            pending.inflight, pending.retry_at = None, None
        for report in self.reports.values():
            report.inflight, report.retry_at = False, None

    def retrying(self, request_id: str | None) -> bool:
        """Is this request going again (its refusal was only "not now")?"""
        if request_id is None:
            return False
        report = self.reports.get(request_id)
        if report is not None:
            return report.retry_at is not None
        return any(p.request_id == request_id and p.retry_at is not None for p in self.commands.values())

    def survives(self, request_id: str) -> bool:
        """Is this request kept across reconnects (a tracked command's bot_command, a pending report)?"""
        return request_id in self.reports or any(p.request_id == request_id for p in self.commands.values())

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [p.retry_at for p in self.commands.values() if p.retry_at is not None]
        times += [r.retry_at for r in self.reports.values() if r.retry_at is not None]
        return min(times, default=None)

    def tick(self, now: float) -> None:
        if not self.open:
            return
        for pending in list(self.commands.values()):
            if pending.retry_at is not None and now >= pending.retry_at:
                pending.retry_at = None
                self._resume(pending)
        for report in list(self.reports.values()):
            if report.retry_at is not None and now >= report.retry_at:
                report.retry_at = None
                self._send_report(report)

    def _backoff(self, attempts: int, now: float) -> float:
        bound = min(self.retry_cap, self.retry_base * 2.0 ** min(attempts - 1, 16))
        return now + self.rng.uniform(0.5, 1.5) * bound

    # -- answers -------------------------------------------------------------------------------

    def on_ack(self, event: BotCommandAck) -> list[Event]:
        if event.id is not None:
            self._requests.pop(event.id, None)
        pending = self.commands.get(event.command_id)
        if pending is not None:
            pending.acked, pending.ack, pending.attempts = True, event, 0
            if pending.inflight == event.id:
                pending.inflight = None
            if state_rank(event.state) > state_rank(pending.state or "sent"):
                pending.state = event.state
            # A duplicate past `sent` is followed by a bot_command_result with that state: delivered then.
        return [event]

    def on_result(self, event: BotCommandResult) -> list[Event]:
        if event.id is not None:
            self._requests.pop(event.id, None)
        pending = self.commands.get(event.command_id)
        if pending is not None:
            pending.acked, pending.attempts = True, 0
            if pending.inflight == event.id:
                pending.inflight = None
        rank = state_rank(event.state)
        out: list[Event] = []
        if rank < 0:
            out.append(event)  # a state this client does not know (a newer gateway): passed on
        elif rank > self._delivered.get(event.command_id, 0):
            self._delivered[event.command_id] = rank
            self._delivered.move_to_end(event.command_id)
            while len(self._delivered) > REMEMBERED:
                self._delivered.popitem(last=False)
            out.append(event)
        elif rank > 0:
            self.stats["results_dropped"] += 1  # delivered already (a status answer after a reconnect)
        if pending is not None and rank >= 0:
            if rank > state_rank(pending.state or "sent"):
                pending.state = event.state
            if event.finished:
                del self.commands[event.command_id]
        return out

    def on_report_ack(self, event: BotCommandReportAck) -> list[Event]:
        report = self.reports.get(event.id) if event.id is not None else None
        if report is not None:
            self._report_done(report)
        return [event]

    def on_error(self, event: ErrorMessage, now: float) -> list[Event] | None:
        """An ``error`` answering one of the tracker's requests: the events; None when it is not one."""
        rid = event.id
        if rid is None:
            return None
        report = self.reports.get(rid)
        if report is not None:
            report.inflight = False
            if event.code in TRANSIENT or event.code == "no_service":  # the broker cannot be reached now
                report.attempts += 1
                report.retry_at = self._backoff(report.attempts, now)
                return [event]
            self._report_done(report)
            named = _STATE_NAMED.search(event.message) if event.code == "invalid_state" else None
            return [ReportRefused(report.command_id, report.user_id, report.state, event.code, event.message,
                                  named.group(1) if named else None, report.resent, rid)]
        request = self._requests.pop(rid, None)
        if request is None:
            return None
        kind, command_id = request
        pending = self.commands.get(command_id)
        if pending is None:
            return [event]
        if pending.inflight == rid:
            pending.inflight = None
        transient = event.code in TRANSIENT or (
            event.code == "no_service" and (kind == "status" or "may have been sent" in event.message))
        if transient:
            pending.attempts += 1
            pending.retry_at = self._backoff(pending.attempts, now)
            return [event]
        del self.commands[command_id]
        return [BotCommandRefused(command_id, pending.bot_id, pending.command, event.code, event.message, rid)]
