"""The shell: runs the decision core on gevent and pykka.

:class:`Supervisor` is a plain object with one control greenlet that takes
every input (child reports, timers, API calls) from one queue, feeds it to
the core (:class:`_supervision.core.SupervisorCore`) and executes the effects
it returns. One greenlet and no mailbox hop through pykka keeps it simple: no
decision ever interleaves with another, and callers in the hub (greenlet
links, timers) only enqueue. Time comes from an injected :class:`Scheduler`
(:class:`GeventScheduler` in production, a fake clock in the tests).

:class:`SupervisedActor` is the base class of every child: it reports its
start, health and end, answers the heartbeat, and closes pykka's blind spots
(docs/stack-notes.md). :class:`ChildHandle` is how users reach a child across
restarts.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import gevent
import gevent.event
import gevent.queue
import pykka
from gevent import Greenlet, GreenletExit
from pykka.messages import _ActorStop

from _supervision.core import (
    ChildSpec,
    DropStash,
    Effect,
    Escalate,
    Failure,
    Kill,
    Log,
    Schedule,
    SendHeartbeat,
    Spawn,
    Stop,
    StopDue,
    SupervisorCore,
    SupervisorPolicy,
    Timer,
    failure_reason,
)
from _supervision.decision_log import LOGGER, emit, iso_utc
from _supervision.runtime import ActorKilled, GeventActor, HandlerTimeout

log = logging.getLogger(LOGGER)  # the decision log's logger, for the lines that are not decisions


class Scheduler(Protocol):
    def now(self) -> float:
        """Monotonic seconds: every decision's clock."""

    def wall(self) -> float:
        """Epoch seconds, for the timestamps in log lines only."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` once after ``delay``; it may run in the hub, so it must not block."""


class GeventScheduler:
    """Production scheduler: ``time.monotonic`` and the hub's timers."""

    def __init__(self) -> None:
        self._timers: set[Any] = set()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        timer = gevent.get_hub().loop.timer(max(0.0, delay))
        self._timers.add(timer)  # an active watcher must stay referenced

        def fire() -> None:
            self._timers.discard(timer)
            fn()

        timer.start(fire)

    def close(self) -> None:
        for timer in self._timers:
            timer.close()
        self._timers.clear()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Heartbeat from the supervisor; :class:`SupervisedActor` answers it
    from its inbox, so a child stuck in a handler does not."""

    seq: int


def failure_of(phase: str, exc: BaseException) -> Failure:
    """The Failure of ``exc`` raised in ``phase`` (a killed greenlet is ``killed``)."""
    if isinstance(exc, ActorKilled):
        phase = "killed"
    text = " ".join(str(exc).split())
    return Failure(phase, type(exc).__name__, text[:300], failure_reason(phase, exc))


class ChildContext:
    """What a factory gets: pass it to the actor's ``start``."""

    __slots__ = ("_actor", "child_id", "incarnation", "kind", "supervisor")

    def __init__(self, supervisor: Supervisor, child_id: str, kind: str, incarnation: int) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.kind = kind
        self.incarnation = incarnation
        self._actor: SupervisedActor | None = None

    def __repr__(self) -> str:
        return f"<ChildContext {self.child_id} #{self.incarnation}>"


# --- what children report; the control greenlet's inputs ------------------------------


@dataclass(frozen=True, slots=True)
class _Started:
    child_id: str
    incarnation: int
    healthy: bool


@dataclass(frozen=True, slots=True)
class _Healthy:
    child_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class _Exited:
    child_id: str
    incarnation: int
    failure: Failure | None
    pending: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _HeartbeatReply:
    child_id: str
    incarnation: int
    seq: int


@dataclass(frozen=True, slots=True)
class _Call:
    """Run ``decide(now)`` in the control greenlet and apply the effects it
    returns; ``done`` (if any) is set afterwards."""

    decide: Callable[[float], list[Effect]]
    done: gevent.event.AsyncResult | None = None


_CLOSE = object()


class SupervisedActor(GeventActor):
    """Base class of every supervised child.

    Write it as a normal actor (``on_start``, ``on_receive``, ``on_stop``),
    take the :class:`ChildContext` as the first constructor argument::

        class Worker(SupervisedActor):
            def __init__(self, context, symbol):
                super().__init__(context)
                self.symbol = symbol

        spec = ChildSpec("worker:btc", "worker", lambda ctx: Worker.start(ctx, "BTCUSDT"))

    It reports its own start, health and end to the supervisor (with tells,
    never asks), answers :class:`Heartbeat`, and closes pykka's blind spots: a
    failure in ``on_start``/``on_stop``, a ``gevent.Timeout`` escaping
    ``on_start``, a killed greenlet; and it keeps the tells still queued in
    its inbox when it dies so the next incarnation gets them. Actors whose
    health is more than "started" (an exchange stream) set
    ``healthy_on_start = False`` and call :meth:`report_healthy`.

    Uses pykka's private ``_actor_loop_setup``, ``_actor_loop_teardown``,
    ``_handle_failure`` and ``_stop`` (contract test in
    tests/test_supervision.py). Subclasses that override
    ``on_greenlet_exit`` must call ``super()``.
    """

    registered: ClassVar[bool] = False  # the supervisor keeps the refs
    healthy_on_start: ClassVar[bool] = True

    def __init__(self, context: ChildContext, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context
        self._phase = "start"  # until on_start returns: start, receive, stop
        self._exit: Failure | None = None
        self._pending: list[Any] = []
        self._healthy_early = False
        context._actor = self

    @property
    def child_id(self) -> str:
        return self.context.child_id

    @property
    def incarnation(self) -> int:
        return self.context.incarnation

    def report_healthy(self) -> None:
        """Tell the supervisor this incarnation works; after ``reset_after``
        seconds of health its backoff resets, and an open circuit closes."""
        if self._phase == "start":
            self._healthy_early = True  # sent with the start report
        else:
            self.context.supervisor._post(_Healthy(self.child_id, self.incarnation))

    # --- pykka hooks ----------------------------------------------------------------

    def _actor_loop_setup(self) -> None:
        try:
            super()._actor_loop_setup()  # on_start; an Exception -> _handle_failure
        except gevent.Timeout as exc:  # a BaseException: would kill the greenlet
            failure = HandlerTimeout(str(exc) or repr(exc))
            self._handle_failure(HandlerTimeout, failure, exc.__traceback__)
        if not self.actor_stopped.is_set():
            self._phase = "receive"
            healthy = self.healthy_on_start or self._healthy_early
            self.context.supervisor._post(_Started(self.child_id, self.incarnation, healthy))

    def _handle_receive(self, message: Any) -> Any:
        if message.__class__ is Heartbeat:
            self.context.supervisor._post(_HeartbeatReply(self.child_id, self.incarnation, message.seq))
            return None
        try:
            return super()._handle_receive(message)
        except ActorKilled as exc:  # also in an ask, where pykka reports nothing
            self._note_failure("killed", exc)
            raise

    def _stop(self) -> None:
        self._phase = "stop"
        super()._stop()

    def _handle_failure(self, *exc_info: Any) -> None:
        self._note_failure(self._phase, exc_info[1])
        super()._handle_failure(*exc_info)

    def _actor_loop_teardown(self) -> None:
        self._collect_pending()  # before pykka drops the queued tells
        super()._actor_loop_teardown()

    def _drain_inbox(self) -> None:  # _supervision.runtime, after a kill while idle
        self._collect_pending()

    def on_greenlet_exit(self, greenlet: Greenlet, *, abnormal: bool) -> None:
        failure = self._exit
        if failure is None and abnormal:
            exc = greenlet.exception
            if exc is not None and not isinstance(exc, GreenletExit):
                failure = failure_of(self._phase, exc)
            else:
                where = "on_start" if self._phase == "start" else "idle"
                failure = Failure("killed", "ActorKilled", f"greenlet killed ({where})", "killed")
        pending, self._pending = tuple(self._pending), []
        self.context.supervisor._post(_Exited(self.child_id, self.incarnation, failure, pending))

    # --- internals --------------------------------------------------------------------

    def _note_failure(self, phase: str, exc: BaseException | None) -> None:
        if self._exit is None and exc is not None:
            self._exit = failure_of(phase, exc)

    def _collect_pending(self) -> None:
        inbox = self.actor_inbox
        while not inbox.empty():
            envelope = inbox.get()
            message = envelope.message
            if envelope.reply_to is not None:  # asks fail, as pykka would fail them
                if isinstance(message, _ActorStop):
                    envelope.reply_to.set(None)
                else:
                    dead = pykka.ActorDeadError(f"{self.actor_ref} stopped before handling the message")
                    envelope.reply_to.set_exception(exc_info=(pykka.ActorDeadError, dead, None))
            elif not isinstance(message, (Heartbeat, _ActorStop)):
                self._pending.append(message)

    def _take_pending(self) -> list[Any]:
        self._collect_pending()
        pending, self._pending = self._pending, []
        return pending


class ChildHandle:
    """How users reach a child: ``tell`` goes straight to the current
    incarnation (one dict read, no registry lookup). While the child is down
    or restarting, messages wait in its bounded stash and reach the next
    incarnation in order. Handles stay valid across restarts."""

    __slots__ = ("_supervisor", "child_id")

    def __init__(self, supervisor: Supervisor, child_id: str) -> None:
        self._supervisor = supervisor
        self.child_id = child_id

    def tell(self, message: Any) -> bool:
        """Deliver or stash ``message``; False if it was dropped."""
        slot = self._supervisor._slots.get(self.child_id)
        if slot is None:
            return False
        ref = slot.ref
        if ref is not None:
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass  # died a moment ago: its exit report is on the way
            else:
                return True
        return self._supervisor._stash(slot, message)

    def ask(self, message: Any, *, timeout: float) -> Any:
        """For the HTTP edge (stats) and tests: actors talk with tells.
        Raises ``pykka.ActorDeadError`` while the child is down."""
        slot = self._supervisor._slots.get(self.child_id)
        ref = None if slot is None else slot.ref
        if ref is None:
            raise pykka.ActorDeadError(f"child {self.child_id} is not running")
        return ref.ask(message, timeout=timeout)

    def __repr__(self) -> str:
        return f"<ChildHandle {self.child_id}>"


class _Slot:
    """The shell's side of a child: where tells go now, and its stash."""

    __slots__ = ("actor", "dropped_last_outage", "dropped_while_down", "incarnation", "overflowing", "redelivered",
                 "ref", "spec", "stash", "stash_dropped", "stopped")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.ref: pykka.ActorRef[Any] | None = None
        self.actor: SupervisedActor | None = None
        self.incarnation = 0
        self.stash: deque[Any] = deque()
        self.redelivered = 0
        self.stash_dropped = 0  # lifetime
        self.dropped_while_down = 0  # stashed tells dropped in the outage going on now
        self.dropped_last_outage = 0  # ... and in the last one, once it has ended
        self.overflowing = False
        self.stopped = False


def exit_process(reason: str) -> None:
    """The production ``on_escalate``: flush the logs, exit 1 at once (the
    process manager restarts us; nothing here can be trusted any more)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(1)


class Supervisor:
    """The root supervisor (one-for-one): see :mod:`supervision`.

    ``on_escalate(reason)`` is called once when the supervisor-wide restart
    intensity is exceeded; the app passes :func:`exit_process` (the default),
    tests a fake. ``metrics`` is a :class:`metrics.definitions.Metrics`.
    Children are started once and live until :meth:`shutdown`.
    """

    def __init__(self, name: str = "root", *, policy: SupervisorPolicy | None = None,
                 scheduler: Scheduler | None = None, rng: random.Random | None = None,
                 metrics: Any = None, on_escalate: Callable[[str], None] = exit_process) -> None:
        self.name = name
        self._core = SupervisorCore(name, policy, rng)
        self._own_scheduler = scheduler is None
        self._scheduler: Scheduler = scheduler or GeventScheduler()
        self._metrics = metrics
        self._on_escalate = on_escalate
        self._slots: dict[str, _Slot] = {}
        self._inbox: gevent.queue.SimpleQueue[Any] = gevent.queue.SimpleQueue()
        self._closing = False
        self._closed = False
        self._loop = gevent.spawn(self._run)

    # --- public API -------------------------------------------------------------------

    def start_child(self, spec: ChildSpec) -> ChildHandle:
        """Add a child and start it (asynchronously); returns its handle,
        usable at once: tells are stashed until the child runs."""
        if self._closing:
            raise RuntimeError(f"supervisor {self.name} is shutting down")
        if spec.child_id in self._slots:
            raise ValueError(f"child {spec.child_id!r} already exists")
        self._slots[spec.child_id] = _Slot(spec)
        self._post(_Call(lambda now: self._core.add(spec, now)))
        return ChildHandle(self, spec.child_id)

    def status(self, *, dynamic: bool = True) -> dict[str, Any]:
        """A JSON-able view of the tree (``/ws/stats``); ``dynamic=False``
        lists only static children (``/health``). Counts by kind and state
        always cover all."""
        now, wall = self._scheduler.now(), self._scheduler.wall()
        status = self._core.status(now, dynamic=dynamic)
        for child in status["children"]:
            slot = self._slots.get(child["child_id"])
            child["stash"] = 0 if slot is None else len(slot.stash)
            child["stash_dropped"] = 0 if slot is None else slot.stash_dropped
            if child["next_attempt_in_s"] is not None:
                child["next_attempt_at"] = iso_utc(wall + child["next_attempt_in_s"])
            if child["last_failure"] is not None:
                child["last_failure"]["at"] = iso_utc(wall - child["last_failure"]["ago_s"])
        return status

    def healthy(self) -> bool:
        """For /health: see :meth:`SupervisorCore.healthy_overall`."""
        return not self._closed and self._core.healthy_overall()

    def flush(self, timeout: float = 1.0) -> None:
        """Wait until every input posted so far has been decided."""
        if gevent.getcurrent() is self._loop or self._closed:
            return
        self._call(lambda now: [], timeout)

    def shutdown(self, timeout_per_child: float = 5.0) -> None:
        """Stop every child in reverse start order and stop the supervisor.

        Each child gets ``stop()`` and ``timeout_per_child`` seconds (real
        time), then its greenlet is killed and the next one goes: one hung
        child never stops the shutdown. Called from the control greenlet (an
        ``on_escalate`` that shuts down), it runs in a new greenlet instead of
        waiting on itself."""
        if self._closing:
            return
        if gevent.getcurrent() is self._loop:
            gevent.spawn(self.shutdown, timeout_per_child)
            return
        self._closing = True
        started = time.monotonic()
        order: list[str] = []

        def begin(now: float) -> list[Effect]:
            order.extend(self._core.begin_shutdown())
            return []

        self._call(begin, timeout=5.0)
        emit(logging.INFO, {"event": "shutdown_started", "supervisor": self.name, "children": len(order),
                            "timeout_s": timeout_per_child})
        killed = 0
        for child_id in order:
            actor = self._slots[child_id].actor  # None while it is down
            self._post(_Call(functools.partial(self._core.stop, child_id, timeout=timeout_per_child)))
            if actor is None or actor.actor_greenlet is None:
                continue
            greenlet = actor.actor_greenlet
            greenlet.join(timeout=timeout_per_child)
            if not greenlet.dead:
                self._post(StopDue(child_id, actor.incarnation))  # the core kills it
                killed += 1
                greenlet.join(timeout=min(0.1, timeout_per_child))
        self.flush(timeout=max(1.0, timeout_per_child))
        self._closed = True
        self._inbox.put(_CLOSE)
        self._loop.join(timeout=1.0)
        if self._own_scheduler and isinstance(self._scheduler, GeventScheduler):
            self._scheduler.close()
        elapsed = time.monotonic() - started
        emit(logging.INFO, {"event": "shutdown_complete", "supervisor": self.name, "children": len(order),
                            "killed": killed, "elapsed_s": round(elapsed, 3)})

    # --- the control greenlet ---------------------------------------------------------

    def _post(self, item: Any) -> None:
        if not self._closed:
            self._inbox.put(item)

    def _call(self, decide: Callable[[float], list[Effect]], timeout: float) -> None:
        """Run ``decide`` in the control greenlet and wait until it is applied."""
        done: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self._post(_Call(decide, done))
        try:
            done.get(timeout=timeout)
        except gevent.Timeout as exc:
            raise TimeoutError(f"supervisor {self.name} did not answer within {timeout}s") from exc

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _CLOSE:
                return
            try:
                self._handle(item)
            except Exception:  # a bug here must not take the control plane down
                log.critical("supervisor %s failed to handle %r", self.name, item, exc_info=True,
                             extra={"fields": {"event": "internal_error", "supervisor": self.name}})

    def _handle(self, item: Any) -> None:
        now = self._scheduler.now()
        core = self._core
        if isinstance(item, _Call):
            try:
                self._apply(item.decide(now))
            except Exception as exc:
                if item.done is not None:
                    item.done.set_exception(exc)
                raise
            if item.done is not None:
                item.done.set(None)
        elif isinstance(item, _Started):
            slot = self._slots.get(item.child_id)
            redelivered = slot.redelivered if slot else 0
            dropped = slot.dropped_last_outage if slot else 0
            self._apply(core.started(item.child_id, item.incarnation, now, healthy=item.healthy,
                                     redelivered=redelivered, dropped=dropped))
        elif isinstance(item, _Healthy):
            self._apply(core.healthy(item.child_id, item.incarnation, now))
        elif isinstance(item, _HeartbeatReply):
            self._apply(core.pong(item.child_id, item.incarnation, item.seq, now))
        elif isinstance(item, _Exited):
            slot = self._slots.get(item.child_id)
            stashed = 0
            if slot is not None and slot.incarnation == item.incarnation and slot.ref is not None:
                slot.ref = slot.actor = None  # tells stash from now on
                self._requeue(slot, item.pending)
                stashed = len(slot.stash)
            elif item.pending and slot is not None:
                self._count_dropped(slot, len(item.pending), "stale")
            self._apply(core.exited(item.child_id, item.incarnation, now, item.failure,
                                    pending=len(item.pending), stashed=stashed))
        elif isinstance(item, Timer):
            self._apply(core.timer(item, now))
        else:
            raise TypeError(f"unknown input {item!r}")

    def _apply(self, effects: Iterable[Effect]) -> None:
        todo = deque(effects)
        while todo:
            effect = todo.popleft()
            todo.extend(self._execute(effect))

    def _execute(self, effect: Effect) -> list[Effect]:
        if isinstance(effect, Log):
            self._log(effect)
        elif isinstance(effect, Schedule):
            timer = effect.timer
            self._scheduler.call_later(effect.delay, lambda: self._post(timer))
        elif isinstance(effect, Spawn):
            return self._spawn(effect)
        elif isinstance(effect, SendHeartbeat):
            slot = self._slots.get(effect.child_id)
            if slot is not None and slot.ref is not None and slot.incarnation == effect.incarnation:
                try:
                    slot.ref.tell(Heartbeat(effect.seq))
                except pykka.ActorDeadError:
                    pass  # its exit report is queued
        elif isinstance(effect, Stop):
            slot = self._slots.get(effect.child_id)
            if slot is not None and slot.ref is not None:
                slot.ref.stop(block=False)
        elif isinstance(effect, Kill):
            return self._kill(effect)
        elif isinstance(effect, DropStash):
            slot = self._slots.get(effect.child_id)
            if slot is not None:
                slot.stopped = True
                self._count_dropped(slot, len(slot.stash), "not_restarted")
                slot.stash.clear()
        elif isinstance(effect, Escalate):
            if self._metrics is not None:
                self._metrics.supervisor_escalations.inc()
            self._on_escalate(effect.reason)
        return []

    def _spawn(self, effect: Spawn) -> list[Effect]:
        slot = self._slots.get(effect.child_id)
        if slot is None:
            return []
        context = ChildContext(self, effect.child_id, slot.spec.kind, effect.incarnation)
        try:
            ref = slot.spec.factory(context)
            actor = context._actor
            if actor is None or actor.actor_ref is not ref:
                raise TypeError(f"factory of {effect.child_id} must start a SupervisedActor with its context")
        except Exception as exc:
            log.debug("factory of %s failed", effect.child_id, exc_info=True)
            failure = failure_of("start", exc)
            return self._core.exited(effect.child_id, effect.incarnation, self._scheduler.now(), failure,
                                     stashed=len(slot.stash))
        slot.ref, slot.actor, slot.incarnation = ref, actor, effect.incarnation
        slot.overflowing = False
        slot.dropped_while_down, slot.dropped_last_outage = 0, slot.dropped_while_down
        # The stash goes first, in order, before any new tell: gevent cannot
        # switch inside this loop, and the route is set only after it.
        delivered = 0
        while slot.stash:
            ref.tell(slot.stash.popleft())
            delivered += 1
        slot.redelivered = delivered
        return []

    def _kill(self, effect: Kill) -> list[Effect]:
        slot = self._slots.get(effect.child_id)
        pending: list[Any] = []
        if slot is not None and slot.actor is not None and slot.incarnation == effect.incarnation:
            actor = slot.actor
            pending = actor._take_pending()
            slot.ref = slot.actor = None
            self._requeue(slot, pending)
            if actor.actor_greenlet is not None:
                actor.actor_greenlet.kill(block=False)
        stashed = 0 if slot is None else len(slot.stash)
        return self._core.exited(effect.child_id, effect.incarnation, self._scheduler.now(), effect.failure,
                                 pending=len(pending), stashed=stashed)

    # --- stash ----------------------------------------------------------------------------

    def _stash(self, slot: _Slot, message: Any) -> bool:
        if slot.stopped:
            self._count_dropped(slot, 1, "not_restarted")
            return False
        capacity = slot.spec.policy.stash_capacity
        if len(slot.stash) < capacity:
            slot.stash.append(message)
            return True
        self._count_dropped(slot, 1, "full")
        if not slot.overflowing:
            slot.overflowing = True
            emit(logging.WARNING, {"event": "stash_full", "supervisor": self.name, "child_id": slot.spec.child_id,
                                   "kind": slot.spec.kind, "incarnation": slot.incarnation, "capacity": capacity})
        return False

    def _requeue(self, slot: _Slot, pending: Iterable[Any]) -> None:
        """Put a dead incarnation's unprocessed tells before the stash."""
        slot.stash.extendleft(reversed(tuple(pending)))
        overflow = len(slot.stash) - slot.spec.policy.stash_capacity
        for _ in range(max(0, overflow)):
            slot.stash.pop()
        if overflow > 0:
            self._count_dropped(slot, overflow, "full")

    def _count_dropped(self, slot: _Slot, n: int, reason: str) -> None:
        if n <= 0:
            return
        slot.stash_dropped += n
        slot.dropped_while_down += n
        if self._metrics is not None:
            self._metrics.supervisor_stash_dropped.labels(slot.spec.kind, reason).inc(n)

    # --- output: the decision line and the metrics --------------------------------------------

    def _log(self, effect: Log) -> None:
        if not log.isEnabledFor(effect.level):  # below LOG_LEVEL: skip the rendering
            self._observe(effect.event, effect.fields)
            return
        fields = dict(effect.fields)
        if effect.retry_in is not None:
            fields["next_attempt_at"] = iso_utc(self._scheduler.wall() + effect.retry_in)
        emit(effect.level, fields)
        self._observe(effect.event, fields)

    def _observe(self, event: str, f: dict[str, Any]) -> None:
        m = self._metrics
        if m is None:
            return
        kind, reason = f.get("kind"), f.get("reason") or "normal"
        if event in ("restart_scheduled", "circuit_opened", "child_failed", "escalated"):
            m.supervisor_failures.labels(kind, reason).inc()
        if event in ("restart_scheduled", "circuit_opened"):
            m.supervisor_restarts.labels(kind, reason).inc()
        if event in ("restarted", "circuit_half_open"):
            m.supervisor_time_to_recover_seconds.labels(kind).observe(f["down_s"])
        child_id = f.get("child_id")
        slot = self._slots.get(child_id or "")
        if slot is None or not slot.spec.static:
            return
        if event in ("restart_scheduled", "circuit_opened"):
            m.supervisor_backoff_seconds.labels(child_id).set(f["delay_s"])
        elif event in ("child_started", "restarted", "circuit_half_open", "child_stopped", "child_failed"):
            m.supervisor_backoff_seconds.labels(child_id).set(0)
        circuit = {"closed": 0, "half_open": 1, "open": 2}.get(f.get("circuit", ""), 0)
        m.supervisor_circuit_state.labels(child_id).set(circuit)
