"""Supervision: restart policy, a pure decision core, and its gevent/pykka shell.

pykka has no supervision (jodal/pykka#42), and a stopped pykka actor can never
be restarted: a restart here is a *new* actor with a new URN and an empty
inbox. This module makes that safe (pykka's failure rules: docs/stack-notes.md;
the operator's view: docs/operations.md). It is the control plane only:
steady-state traffic goes straight to the children through
:class:`ChildHandle`, never through the supervisor.

The module has two sections:

* **The decision core** (:class:`SupervisorCore`, :class:`RestartPolicy`):
  no gevent, no pykka, no clock. Every input carries ``now`` (monotonic
  seconds), randomness comes from an injected ``random.Random``, and every
  method returns *effects* (``Spawn``, ``Schedule``, ``Kill``, ``Log`` ...)
  for the shell to carry out. All policy lives there and is tested with a
  fake clock and seeded randomness (tests/test_supervision_policy.py).
* **The shell** (:class:`Supervisor`, :class:`SupervisedActor`,
  :class:`ChildHandle`): a plain object with one control greenlet that takes
  every input (child reports, timers, API calls) from one queue, feeds it to
  the core and executes the effects. One greenlet and no mailbox hop through
  pykka keeps it simple: no decision ever interleaves with another, and
  callers in the hub (greenlet links, timers) only enqueue. Time comes from an
  injected :class:`Scheduler` (:class:`GeventScheduler` in production,
  :class:`FakeScheduler` in tests).

Restart types by tier (one-for-one under the root supervisor):

* exchange streams: ``PERMANENT``, static (per-child metric series). They
  call :meth:`SupervisedActor.report_healthy` once connected *and*
  subscribed; only that resets their backoff.
* channels: ``TRANSIENT``. A channel that crashes (a bad message, a bug) is
  shared by many connections and nobody else would recreate it: it must come
  back, and its restart is made visible (``ChildDown``/``ChildUp`` with the
  incarnation) so the connection layer re-subscribes and tells clients to
  resync: the gap is a data gap. A channel that ends *normally* (its last
  subscriber left) must stay gone, so not ``PERMANENT``. Channels are
  dynamic: no per-channel metric series.
* connections: ``TEMPORARY``: never restarted, the client reconnects.

How a child dies, and how it is seen (pykka's blind spots, docs/stack-notes.md):

=====================================  ======================================
tell handler raises                    pykka ``_handle_failure`` (+on_failure)
``on_start`` / ``on_stop`` raises      ``_handle_failure`` wrapped here, phase
                                       ``start`` / ``stop``
``gevent.Timeout``, ``GreenletExit``   converted by actors.runtime into
in a handler                           ``HandlerTimeout`` / ``ActorKilled``
greenlet killed, idle or busy          ``on_greenlet_exit`` / ``ActorKilled``,
                                       phase ``killed``
hung (no ``Pong`` within hung_after)   supervisor kills the greenlet, phase
                                       ``hung``
=====================================  ======================================

Users never hold a child's ActorRef (it changes at every restart)::

    supervisor = Supervisor("root", metrics=metrics, on_escalate=exit_process)
    stream = supervisor.start_child(ChildSpec(
        "exchange:bybit:spot", "exchange_stream", lambda ctx: StreamActor.start(ctx, cfg), static=True))
    stream.tell(Subscribe("tickers.BTCUSDT"))    # a ChildHandle: stashed while it is down
    supervisor.watch(channel_handle, "exchange:bybit:spot")  # ChildDown/ChildUp: resync on a gap
    supervisor.shutdown(timeout_per_child=5.0)

Every decision is ONE log line on ``gateway.supervisor`` with structured
``fields`` (see :func:`render`), for example::

    child exchange:bybit:spot failed (ConnectionResetError: reset by peer)
    after 12.3s; restart 3 in 0.41s at 2026-09-21T14:13:32.713Z
    (window 3/10 in 600s)
"""

from __future__ import annotations

import datetime
import enum
import heapq
import itertools
import logging
import math
import os
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import gevent
import gevent.event
import gevent.queue
import pykka
from gevent import Greenlet, GreenletExit
from pykka.messages import _ActorStop

from actors.runtime import ActorKilled, GeventActor, HandlerTimeout

__all__ = [
    "ChildContext",
    "ChildDown",
    "ChildHandle",
    "ChildSpec",
    "ChildUp",
    "Failure",
    "FakeScheduler",
    "GeventScheduler",
    "Ping",
    "Restart",
    "RestartPolicy",
    "Scheduler",
    "SupervisedActor",
    "Supervisor",
    "SupervisorCore",
    "SupervisorPolicy",
    "exit_process",
    "render",
]

log = logging.getLogger("gateway.supervisor")

# ============================================================================
# The decision core: pure (no gevent, no pykka, no clock, injected random)
# ============================================================================


class Restart(enum.Enum):
    """When a child is restarted (OTP's restart types)."""

    PERMANENT = "permanent"  #: always, even after a normal exit
    TRANSIENT = "transient"  #: only after a failure
    TEMPORARY = "temporary"  #: never


class Status(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    CIRCUIT_OPEN = "circuit_open"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Circuit(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"  #: a probe incarnation is up, not yet healthy
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How one child is restarted. All times in seconds.

    Backoff is exponential with AWS "full jitter" and a floor:
    ``delay = max(floor, uniform(0, min(cap, base * 2**attempt)))``, where
    ``attempt`` counts consecutive failures from 0. It is reset only when the
    child has been healthy (see :meth:`SupervisedActor.report_healthy`) for
    ``reset_after`` seconds.

    The circuit opens at the ``max_failures``-th consecutive failure, or at
    the ``max_failures``-th failure within ``failure_window`` (a child that
    flaps even while it is healthy in between). While it is open, attempts go
    on every ``cooldown`` seconds (equal jitter: ``uniform(cooldown/2,
    cooldown)``), logged at ERROR; a PERMANENT child is never given up. The
    first healthy report closes it. The defaults give the platform's old rule:
    after 10 failed reconnection attempts, stop hammering.

    The heartbeat (``Ping`` every ``heartbeat_every``, ``Pong`` due within
    ``hung_after``) goes through the inbox: a handler that blocks longer than
    ``hung_after``, or an ``on_start`` longer than ``heartbeat_every +
    hung_after``, is killed as hung. Connections, which have WebSocket pings,
    should set ``heartbeat_every=None``. ``shutdown_timeout`` bounds a
    ``remove_child``; :meth:`Supervisor.shutdown` takes its own.
    """

    base: float = 0.5
    cap: float = 30.0
    floor: float = 0.1
    reset_after: float = 30.0
    max_failures: int = 10
    failure_window: float = 600.0
    cooldown: float = 60.0
    stash_capacity: int = 1000
    heartbeat_every: float | None = 10.0  #: None: no hung detection
    hung_after: float = 5.0
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        checks = (
            (self.base >= 0, "base must be >= 0"),
            (self.cap > 0, "cap must be > 0"),
            (0 <= self.floor <= self.cap, "floor must be between 0 and cap"),
            (self.reset_after >= 0, "reset_after must be >= 0"),
            (self.max_failures >= 1, "max_failures must be >= 1"),
            (self.failure_window > 0, "failure_window must be > 0"),
            (self.cooldown >= self.floor, "cooldown must be >= floor"),
            (self.stash_capacity >= 0, "stash_capacity must be >= 0"),
            (self.heartbeat_every is None or self.heartbeat_every > 0, "heartbeat_every must be > 0 or None"),
            (self.hung_after > 0, "hung_after must be > 0"),
            (self.shutdown_timeout >= 0, "shutdown_timeout must be >= 0"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def ceiling(self, attempt: int) -> float:
        """``min(cap, base * 2**attempt)``, for any attempt without overflow."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        if self.base == 0:
            return 0.0
        try:
            return min(self.cap, math.ldexp(self.base, attempt))
        except OverflowError:  # 2**attempt beyond float range: long past cap
            return self.cap

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The full-jitter delay before restart number ``attempt + 1``."""
        return max(self.floor, rng.uniform(0.0, self.ceiling(attempt)))

    def cooldown_delay(self, rng: random.Random) -> float:
        return max(self.floor, rng.uniform(self.cooldown / 2, self.cooldown))


@dataclass(frozen=True, slots=True)
class SupervisorPolicy:
    """Supervisor-wide restart intensity: more than ``intensity`` restarts
    within ``period`` seconds, all children together, escalates (the app
    exits non-zero so systemd/k8s restarts the process). One child alone
    cannot trip it with the default backoff; a systemic failure does. OTP's
    rule applies: restarts multiply through levels, keep this small."""

    intensity: int = 50
    period: float = 10.0

    def __post_init__(self) -> None:
        if self.intensity < 0 or self.period <= 0:
            raise ValueError("intensity must be >= 0 and period > 0")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """A supervised child.

    ``factory(context)`` must start a :class:`SupervisedActor` subclass with
    that context and return its ref, without blocking: ``Worker.start``
    returns before ``on_start`` runs. ``kind`` is a metric label: a fixed
    word ("exchange_stream", "channel", "connection"). ``static`` children
    (few, from configuration) also get metric series labelled by child_id.
    """

    child_id: str
    kind: str
    factory: Callable[[ChildContext], pykka.ActorRef[Any]]
    restart: Restart = Restart.PERMANENT
    policy: RestartPolicy = RestartPolicy()
    static: bool = False

    def __post_init__(self) -> None:
        if not self.child_id or not self.kind:
            raise ValueError("child_id and kind must not be empty")
        if not callable(self.factory):
            raise ValueError(f"factory of {self.child_id!r} is not callable")
        if not isinstance(self.restart, Restart):
            raise ValueError(f"restart must be a Restart, not {self.restart!r}")


#: Reason label values: a failure's phase, or the nearest of these classes in
#: the exception's MRO. Bounded on purpose (metric label).
REASON_TYPES = (
    "HandlerTimeout", "ConnectionResetError", "ConnectionRefusedError", "ConnectionError",
    "TimeoutError", "OSError", "ValueError", "KeyError", "TypeError", "RuntimeError",
)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an incarnation ended. ``phase``: start | receive | stop | killed |
    hung | normal. ``reason`` is the bounded metric label."""

    phase: str
    exc_type: str | None = None
    message: str = ""
    reason: str = "normal"


NORMAL_EXIT = Failure("normal")


def failure_reason(phase: str, exc: BaseException | None) -> str:
    if phase != "receive" or exc is None:
        return phase
    for klass in type(exc).__mro__:
        if klass.__name__ in REASON_TYPES:
            return klass.__name__
    return "Exception"


# --- lifecycle events for watchers (ChildHandle, ActorRef or callable) -------


@dataclass(frozen=True, slots=True)
class ChildUp:
    """Incarnation ``incarnation`` of ``child_id`` is running (on_start done).
    Dependents resync here: a restart is a gap."""

    child_id: str
    kind: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class ChildDown:
    """Incarnation ``incarnation`` ended. ``restart_in`` is None when it will
    not come back (temporary, removed, shutdown)."""

    child_id: str
    kind: str
    incarnation: int
    phase: str
    exc_type: str | None
    restart_in: float | None


# --- timers the core asks for; they come back through SupervisorCore.timer ---


@dataclass(frozen=True, slots=True)
class RestartDue:
    child_id: str
    incarnation: int  # the dead one


@dataclass(frozen=True, slots=True)
class HeartbeatDue:
    child_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class PongDue:
    child_id: str
    incarnation: int
    seq: int


@dataclass(frozen=True, slots=True)
class StopDue:
    child_id: str
    incarnation: int


Timer = RestartDue | HeartbeatDue | PongDue | StopDue

# --- effects: what the shell must do -----------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    child_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Stop:
    child_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Kill:
    """Drain the inbox (its tells are redelivered), kill the greenlet, then
    report ``failure`` as that incarnation's exit."""

    child_id: str
    incarnation: int
    failure: Failure


@dataclass(frozen=True, slots=True)
class Schedule:
    delay: float
    timer: Timer


@dataclass(frozen=True, slots=True)
class SendPing:
    child_id: str
    incarnation: int
    seq: int


@dataclass(frozen=True, slots=True)
class Notify:
    """Send ``event`` to the child's watchers, or only to ``to``."""

    event: ChildUp | ChildDown
    to: Any = None


@dataclass(frozen=True, slots=True)
class DropStash:
    child_id: str
    kind: str


@dataclass(frozen=True, slots=True)
class Forget:
    child_id: str


@dataclass(frozen=True, slots=True)
class Log:
    """One decision line. The shell sets ``next_attempt_at`` from
    ``retry_in`` and its wall clock, then renders the text (:func:`render`)."""

    event: str
    level: int
    fields: dict[str, Any]
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class Escalate:
    reason: str


Effect = Spawn | Stop | Kill | Schedule | SendPing | Notify | DropStash | Forget | Log | Escalate

_ALIVE = (Status.STARTING, Status.RUNNING)
_DOWN = (Status.BACKING_OFF, Status.CIRCUIT_OPEN)


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    order: int
    incarnation: int = 0
    status: Status = Status.STARTING
    attempt: int = 0  # consecutive failures, reset after reset_after healthy
    restarts: int = 0
    failures: deque[float] = field(default_factory=deque)
    circuit: Circuit = Circuit.CLOSED
    probes: int = 0
    spawned_at: float = 0.0
    healthy_since: float | None = None
    down_since: float | None = None
    delay: float | None = None
    retry_at: float | None = None
    failure: Failure | None = None
    failure_uptime: float = 0.0
    failure_at: float = 0.0
    ping_seq: int = 0
    pong_seq: int = 0
    stop_reason: str = ""
    stop_timeout: float = 0.0


def _failure_fields(failure: Failure, uptime: float) -> dict[str, Any]:
    return {"phase": failure.phase, "exc_type": failure.exc_type, "exc_message": failure.message,
            "reason": failure.reason, "uptime_s": round(uptime, 3)}


def _prune(times: deque[float], older_than: float) -> None:
    while times and times[0] <= older_than:
        times.popleft()


class SupervisorCore:
    """All supervision decisions, one-for-one. Pure: see the module docstring.

    Inputs are the methods below; each returns a list of effects. Every
    report carries ``(child_id, incarnation)``; reports about an incarnation
    that is no longer current, or in a state where they cannot happen, are
    stale and ignored (a late exit of incarnation 3 never restarts 4).
    """

    def __init__(self, name: str = "root", policy: SupervisorPolicy | None = None,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.policy = policy or SupervisorPolicy()
        self._rng = rng or random.Random()
        self._children: dict[str, _Child] = {}
        self._order = itertools.count()
        self._restarts: deque[float] = deque()
        self.escalated = False
        self.shutting_down = False

    # --- inputs ---------------------------------------------------------------

    def add(self, spec: ChildSpec, now: float) -> list[Effect]:
        old = self._children.get(spec.child_id)
        if old is not None and old.status is not Status.STOPPED:
            raise ValueError(f"child {spec.child_id!r} already exists")
        if self.escalated or self.shutting_down:
            return []
        child = _Child(spec, next(self._order), incarnation=old.incarnation if old else 0)
        self._children[spec.child_id] = child
        return self._spawn(child, now)

    def remove(self, child_id: str, now: float, *, reason: str = "removed",
               timeout: float | None = None) -> list[Effect]:
        """Stop a child for good: ``stop()``, then a kill after the timeout."""
        c = self._children.get(child_id)
        if c is None:
            return []
        if c.status in _ALIVE:
            c.status, c.stop_reason = Status.STOPPING, reason
            c.stop_timeout = c.spec.policy.shutdown_timeout if timeout is None else timeout
            return [Stop(child_id, c.incarnation), Schedule(c.stop_timeout, StopDue(child_id, c.incarnation))]
        if c.status in _DOWN:
            c.stop_reason = reason
            return self._stopped(c, now, None)
        if c.status is Status.STOPPED and reason == "removed":
            del self._children[child_id]
            return [Forget(child_id)]
        return []

    def started(self, child_id: str, incarnation: int, now: float, *, healthy: bool,
                redelivered: int = 0, dropped: int = 0) -> list[Effect]:
        """The incarnation's ``on_start`` returned."""
        c = self._live(child_id, incarnation, (Status.STARTING,))
        if c is None:
            return []
        c.status = Status.RUNNING
        spec = c.spec
        if c.down_since is None:
            event, level = "child_started", logging.INFO if spec.static else logging.DEBUG
            extra: dict[str, Any] = {}
        else:
            extra = {"down_s": round(now - c.down_since, 3), "redelivered": redelivered, "dropped": dropped}
            if c.circuit is Circuit.OPEN:
                c.circuit = Circuit.HALF_OPEN
                event, level = "circuit_half_open", logging.WARNING
            else:
                event, level = "restarted", logging.INFO
        c.down_since = None
        effects: list[Effect] = [
            Log(event, level, self._fields(c, event, probes=c.probes, **extra)),
            Notify(ChildUp(child_id, spec.kind, incarnation)),
        ]
        if healthy:
            effects += self.healthy(child_id, incarnation, now)
        return effects

    def healthy(self, child_id: str, incarnation: int, now: float) -> list[Effect]:
        """The incarnation works (an exchange stream: connected and subscribed)."""
        c = self._live(child_id, incarnation, (Status.RUNNING,))
        if c is None:
            return []
        if c.healthy_since is None:
            c.healthy_since = now
        if c.circuit is Circuit.CLOSED:
            return []
        c.circuit = Circuit.CLOSED
        c.failures.clear()
        fields = self._fields(c, "circuit_closed", probes=c.probes)
        c.probes = 0
        return [Log("circuit_closed", logging.INFO, fields)]

    def exited(self, child_id: str, incarnation: int, now: float, failure: Failure | None = None,
               *, pending: int = 0, stashed: int = 0) -> list[Effect]:
        """The incarnation ended; ``failure`` None means a normal stop."""
        c = self._live(child_id, incarnation, (*_ALIVE, Status.STOPPING))
        if c is None:
            return []
        if failure is not None:
            c.failure, c.failure_uptime, c.failure_at = failure, now - c.spawned_at, now
        if c.status is Status.STOPPING or self.shutting_down:
            c.stop_reason = c.stop_reason or "shutdown"
            return self._stopped(c, now, failure)
        return self._failed(c, now, failure or NORMAL_EXIT, pending, stashed)

    def pong(self, child_id: str, incarnation: int, seq: int, now: float) -> list[Effect]:
        c = self._live(child_id, incarnation, _ALIVE)
        if c is None or seq != c.ping_seq or c.spec.policy.heartbeat_every is None:
            return []
        c.pong_seq = seq
        return [Schedule(c.spec.policy.heartbeat_every, HeartbeatDue(child_id, incarnation))]

    def timer(self, timer: Timer, now: float) -> list[Effect]:
        if isinstance(timer, RestartDue):
            return self._restart_due(timer, now)
        if isinstance(timer, HeartbeatDue):
            c = self._live(timer.child_id, timer.incarnation, _ALIVE)
            if c is None:
                return []
            c.ping_seq += 1
            return [SendPing(timer.child_id, timer.incarnation, c.ping_seq),
                    Schedule(c.spec.policy.hung_after, PongDue(timer.child_id, timer.incarnation, c.ping_seq))]
        if isinstance(timer, PongDue):
            c = self._live(timer.child_id, timer.incarnation, _ALIVE)
            if c is None or c.pong_seq >= timer.seq:
                return []
            hung_after = c.spec.policy.hung_after
            failure = Failure("hung", "ChildHung", f"no pong to ping {timer.seq} within {hung_after:g}s", "hung")
            fields = self._fields(c, "hung_detected", seq=timer.seq, hung_after_s=hung_after,
                                  **_failure_fields(failure, now - c.spawned_at))
            return [Log("hung_detected", logging.ERROR, fields), Kill(c.spec.child_id, c.incarnation, failure)]
        if isinstance(timer, StopDue):
            c = self._live(timer.child_id, timer.incarnation, (Status.STOPPING,))
            if c is None:
                return []
            failure = Failure("killed", "ShutdownTimeout", f"did not stop within {c.stop_timeout:g}s", "killed")
            fields = self._fields(c, "shutdown_killed", timeout_s=c.stop_timeout, stop_reason=c.stop_reason,
                                  **_failure_fields(failure, now - c.spawned_at))
            return [Log("shutdown_killed", logging.ERROR, fields), Kill(c.spec.child_id, c.incarnation, failure)]
        raise TypeError(f"unknown timer {timer!r}")

    def begin_shutdown(self) -> list[str]:
        """From now on nothing restarts. Returns children in reverse start order."""
        self.shutting_down = True
        live = [c for c in self._children.values() if c.status is not Status.STOPPED]
        return [c.spec.child_id for c in sorted(live, key=lambda c: c.order, reverse=True)]

    # --- queries ----------------------------------------------------------------

    def healthy_overall(self) -> bool:
        """For /health: not escalated, not shutting down, no static child
        with an open or half-open circuit (backing off briefly is normal)."""
        if self.escalated or self.shutting_down:
            return False
        return all(c.circuit is Circuit.CLOSED for c in self._children.values() if c.spec.static)

    def tree_restarts(self, now: float) -> int:
        return sum(1 for t in self._restarts if t > now - self.policy.period)

    def status(self, now: float, *, dynamic: bool = True) -> dict[str, Any]:
        counts: dict[str, Counter[str]] = {}
        children = []
        for c in sorted(self._children.values(), key=lambda c: c.order):
            counts.setdefault(c.spec.kind, Counter())[c.status.value] += 1
            if dynamic or c.spec.static:
                children.append(self._child_status(c, now))
        state = "escalated" if self.escalated else "shutting_down" if self.shutting_down else "running"
        return {
            "supervisor": self.name,
            "state": state,
            "healthy": self.healthy_overall(),
            "restarts_in_period": self.tree_restarts(now),
            "intensity": self.policy.intensity,
            "period_s": self.policy.period,
            "counts": {kind: dict(c) for kind, c in counts.items()},
            "children": children,
        }

    def lifecycle_snapshot(self, child_id: str | None, now: float) -> list[ChildUp | ChildDown]:
        """Current state as events, so a late watcher still learns of a death."""
        events: list[ChildUp | ChildDown] = []
        for c in self._children.values():
            if child_id is not None and c.spec.child_id != child_id:
                continue
            if c.status is Status.RUNNING:
                events.append(ChildUp(c.spec.child_id, c.spec.kind, c.incarnation))
            elif c.status in _DOWN:
                failure = c.failure or NORMAL_EXIT
                retry_in = max(0.0, (c.retry_at or now) - now)
                events.append(ChildDown(c.spec.child_id, c.spec.kind, c.incarnation, failure.phase,
                                        failure.exc_type, retry_in))
        return events

    # --- decisions -----------------------------------------------------------------

    def _live(self, child_id: str, incarnation: int, states: tuple[Status, ...]) -> _Child | None:
        if self.escalated:
            return None
        c = self._children.get(child_id)
        if c is None or c.incarnation != incarnation or c.status not in states:
            return None
        return c

    def _spawn(self, c: _Child, now: float) -> list[Effect]:
        c.incarnation += 1
        c.status, c.spawned_at = Status.STARTING, now
        c.healthy_since, c.ping_seq, c.pong_seq = None, 0, 0
        effects: list[Effect] = [Spawn(c.spec.child_id, c.incarnation)]
        every = c.spec.policy.heartbeat_every
        if every is not None:
            effects.append(Schedule(every, HeartbeatDue(c.spec.child_id, c.incarnation)))
        return effects

    def _restart_due(self, timer: RestartDue, now: float) -> list[Effect]:
        c = self._children.get(timer.child_id)
        if (c is None or self.escalated or self.shutting_down or c.incarnation != timer.incarnation
                or c.status not in _DOWN):
            return []
        c.restarts += 1
        c.retry_at = None
        if c.circuit is Circuit.OPEN:
            c.probes += 1
        return self._spawn(c, now)

    def _failed(self, c: _Child, now: float, failure: Failure, pending: int, stashed: int) -> list[Effect]:
        spec, p = c.spec, c.spec.policy
        c.failure, c.failure_uptime, c.failure_at = failure, now - c.spawned_at, now
        normal = failure.phase == "normal"
        if spec.restart is Restart.TEMPORARY or (spec.restart is Restart.TRANSIENT and normal):
            c.stop_reason = "exited normally" if normal else f"not restarted ({spec.restart.value})"
            return self._stopped(c, now, failure)

        if c.healthy_since is not None and now - c.healthy_since >= p.reset_after:
            c.attempt = 0
        c.healthy_since = None
        c.attempt += 1
        _prune(c.failures, now - p.failure_window)
        c.failures.append(now)
        _prune(self._restarts, now - self.policy.period)
        self._restarts.append(now)
        if c.down_since is None:
            c.down_since = now
        extra = {"pending": pending, "stash": stashed}
        if len(self._restarts) > self.policy.intensity:
            return self._escalate(c, now, extra)

        if c.attempt >= p.max_failures or len(c.failures) >= p.max_failures:
            probe_failed = c.circuit is not Circuit.CLOSED
            c.circuit, c.status = Circuit.OPEN, Status.CIRCUIT_OPEN
            delay = p.cooldown_delay(self._rng)
            event, level = "circuit_opened", logging.ERROR
            extra["probe_failed"] = probe_failed
        else:
            c.status = Status.BACKING_OFF
            delay = p.delay(c.attempt - 1, self._rng)
            event, level = "restart_scheduled", logging.WARNING
        c.delay, c.retry_at = delay, now + delay
        return [
            Log(event, level, self._fields(c, event, **extra), retry_in=delay),
            Notify(ChildDown(spec.child_id, spec.kind, c.incarnation, failure.phase, failure.exc_type, delay)),
            Schedule(delay, RestartDue(spec.child_id, c.incarnation)),
        ]

    def _stopped(self, c: _Child, now: float, failure: Failure | None) -> list[Effect]:
        spec = c.spec
        previous = c.status
        c.status, c.retry_at = Status.STOPPED, None
        crashed = failure is not None and failure.phase != "normal"
        if crashed and previous in _ALIVE:
            event, level = "child_failed", logging.WARNING
        else:
            event, level = "child_stopped", logging.INFO if spec.static else logging.DEBUG
        ran = None if previous in _DOWN else round(now - c.spawned_at, 3)
        fields = self._fields(c, event, ran_s=ran, stop_reason=c.stop_reason, crashed=crashed)
        last = failure or NORMAL_EXIT
        effects: list[Effect] = [
            Log(event, level, fields),
            Notify(ChildDown(spec.child_id, spec.kind, c.incarnation, last.phase, last.exc_type, None)),
            DropStash(spec.child_id, spec.kind),
        ]
        if not spec.static or c.stop_reason == "removed":
            del self._children[spec.child_id]
            effects.append(Forget(spec.child_id))
        return effects

    def _escalate(self, c: _Child, now: float, extra: dict[str, Any]) -> list[Effect]:
        self.escalated = True
        c.status = Status.STOPPED
        n = len(self._restarts)
        fields = self._fields(c, "escalated", tree_restarts=n, intensity=self.policy.intensity,
                              period_s=self.policy.period, **extra)
        reason = f"{n} restarts in {self.policy.period:g}s > {self.policy.intensity} (last: {c.spec.child_id})"
        return [Log("escalated", logging.CRITICAL, fields), Escalate(reason)]

    def _fields(self, c: _Child, event: str, **extra: Any) -> dict[str, Any]:
        """The fields every child decision line carries."""
        p, f = c.spec.policy, c.failure
        fields: dict[str, Any] = {
            "event": event,
            "supervisor": self.name,
            "child_id": c.spec.child_id,
            "kind": c.spec.kind,
            "restart": c.spec.restart.value,
            "incarnation": c.incarnation,
            **(_failure_fields(f, c.failure_uptime) if f else dict.fromkeys(
                ("phase", "exc_type", "exc_message", "reason", "uptime_s"))),
            "attempt": c.attempt,
            "delay_s": None if c.delay is None else round(c.delay, 3),
            "next_attempt_at": None,
            "failures_in_window": len(c.failures),
            "max_failures": p.max_failures,
            "window_s": p.failure_window,
            "circuit": c.circuit.value,
            "restarts": c.restarts,
        }
        fields.update(extra)
        return fields

    def _child_status(self, c: _Child, now: float) -> dict[str, Any]:
        p, f = c.spec.policy, c.failure
        healthy_for = None if c.healthy_since is None else now - c.healthy_since
        attempt = 0 if healthy_for is not None and healthy_for >= p.reset_after else c.attempt
        return {
            "child_id": c.spec.child_id,
            "kind": c.spec.kind,
            "restart": c.spec.restart.value,
            "state": c.status.value,
            "incarnation": c.incarnation,
            "restarts": c.restarts,
            "attempt": attempt,
            "healthy": healthy_for is not None,
            "backoff_s": round(c.delay, 3) if c.status in _DOWN and c.delay is not None else 0.0,
            "next_attempt_in_s": None if c.retry_at is None else round(max(0.0, c.retry_at - now), 3),
            "circuit": c.circuit.value,
            "failures_in_window": sum(1 for t in c.failures if t > now - p.failure_window),
            "last_failure": None if f is None else {
                "phase": f.phase, "exc_type": f.exc_type, "message": f.message,
                "uptime_s": round(c.failure_uptime, 3), "ago_s": round(now - c.failure_at, 3),
            },
        }


# --- the one-line text of each decision ------------------------------------------


def _what(f: dict[str, Any]) -> str:
    exc = f"{f['exc_type']}: {f['exc_message']}" if f.get("exc_message") else str(f.get("exc_type"))
    return {
        "start": f"failed in on_start ({exc})",
        "stop": f"failed in on_stop ({exc})",
        "killed": f"was killed ({exc})",
        "hung": f"hung ({exc})",
        "normal": "stopped by itself",
    }.get(f.get("phase") or "", f"failed ({exc})")


def _secs(seconds: float) -> str:
    return f"{seconds:.3f}s" if seconds < 0.1 else f"{seconds:.2f}s"


def _window(f: dict[str, Any]) -> str:
    return f"(window {f['failures_in_window']}/{f['max_failures']} in {f['window_s']:g}s)"


def _stopped_text(f: dict[str, Any]) -> str:
    if f.get("crashed"):
        return f"child {f['child_id']} {_what(f)} after {f['ran_s']:.1f}s; {f['stop_reason']}"
    when = "while down" if f.get("ran_s") is None else f"after {f['ran_s']:.1f}s"
    return f"child {f['child_id']} stopped {when} ({f['stop_reason'] or 'exited normally'})"


def _opened(f: dict[str, Any]) -> str:
    if f.get("probe_failed"):
        return "probe failed, circuit stays open"
    if f["attempt"] >= f["max_failures"]:
        return f"circuit opened after {f['attempt']} consecutive failures"
    return f"circuit opened after {f['failures_in_window']} failures in {f['window_s']:g}s"


_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "restart_scheduled": lambda f: (
        f"child {f['child_id']} {_what(f)} after {f['uptime_s']:.1f}s; restart {f['attempt']} in "
        f"{_secs(f['delay_s'])} at {f['next_attempt_at']} {_window(f)}"),
    "circuit_opened": lambda f: (
        f"child {f['child_id']} {_what(f)} after {f['uptime_s']:.1f}s; {_opened(f)} {_window(f)}; "
        f"next attempt in {f['delay_s']:.1f}s at {f['next_attempt_at']}"),
    "child_failed": _stopped_text,
    "child_stopped": _stopped_text,
    "child_started": lambda f: f"child {f['child_id']} started (incarnation {f['incarnation']})",
    "restarted": lambda f: (
        f"child {f['child_id']} restarted as incarnation {f['incarnation']} after {_secs(f['down_s'])} down "
        f"(attempt {f['attempt']}; {f['redelivered']} message{'' if f['redelivered'] == 1 else 's'} "
        f"redelivered, {f['dropped']} dropped)"),
    "circuit_half_open": lambda f: (
        f"child {f['child_id']} probe {f['probes']} is up as incarnation {f['incarnation']} after "
        f"{f['down_s']:.1f}s down; circuit half-open until it reports healthy"),
    "circuit_closed": lambda f: (
        f"child {f['child_id']} is healthy as incarnation {f['incarnation']}; circuit closed "
        f"after {f['probes']} probes"),
    "hung_detected": lambda f: (
        f"child {f['child_id']} incarnation {f['incarnation']} did not answer ping {f['seq']} within "
        f"{f['hung_after_s']:g}s; killing its greenlet"),
    "shutdown_killed": lambda f: (
        f"child {f['child_id']} incarnation {f['incarnation']} did not stop within {f['timeout_s']:g}s; "
        f"killing its greenlet"),
    "escalated": lambda f: (
        f"supervisor {f['supervisor']} escalates: {f['tree_restarts']} restarts in {f['period_s']:g}s "
        f"exceed the limit of {f['intensity']}; last child {f['child_id']} {_what(f)}"),
}


def render(event: str, fields: dict[str, Any]) -> str:
    """The readable sentence of a decision line."""
    text = _TEXT.get(event)
    return text(fields) if text else f"{event} {fields.get('child_id', '')}".strip()


def iso_utc(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ============================================================================
# The shell: gevent + pykka
# ============================================================================


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


class FakeScheduler:
    """A manual clock for tests: nothing fires until :meth:`advance`.

    After each timer it waits for the hub to be idle (``gevent.idle``), a
    deterministic quiescence barrier: the actors it woke have run.
    """

    def __init__(self, *, start: float = 1000.0, wall: float = 1_790_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (self._now + max(0.0, delay), next(self._seq), fn))

    def advance(self, seconds: float) -> None:
        end = self._now + seconds
        gevent.idle()
        while self._heap and self._heap[0][0] <= end:
            due, _, fn = heapq.heappop(self._heap)
            self._now = max(self._now, due)
            fn()
            gevent.idle()
        self._now = end


@dataclass(frozen=True, slots=True)
class Ping:
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
    never asks), answers :class:`Ping`, and closes pykka's blind spots: a
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

    @property
    def supervisor(self) -> Supervisor:
        return self.context.supervisor

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
        if message.__class__ is Ping:
            self.context.supervisor._post(_Pong(self.child_id, self.incarnation, message.seq))
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

    def _drain_inbox(self) -> None:  # actors.runtime, after a kill while idle
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
            elif not isinstance(message, (Ping, _ActorStop)):
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
        """For tests and edges only: actors talk with tells."""
        slot = self._supervisor._slots.get(self.child_id)
        ref = None if slot is None else slot.ref
        if ref is None:
            raise pykka.ActorDeadError(f"child {self.child_id} is not running")
        return ref.ask(message, timeout=timeout)

    @property
    def incarnation(self) -> int | None:
        """The incarnation messages go to now, None while it is down."""
        slot = self._supervisor._slots.get(self.child_id)
        return None if slot is None or slot.ref is None else slot.incarnation

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ChildHandle) and other.child_id == self.child_id
                and other._supervisor is self._supervisor)

    def __hash__(self) -> int:
        return hash(self.child_id)

    def __repr__(self) -> str:
        return f"<ChildHandle {self.child_id}>"


# --- shell-internal inputs of the control greenlet ---------------------------------


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
class _Pong:
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

Watcher = Any  # ChildHandle | pykka.ActorRef | Callable[[ChildUp | ChildDown], None]


class _Slot:
    """The shell's side of a child: where tells go now, and its stash."""

    __slots__ = ("actor", "incarnation", "outage_dropped", "overflowing", "redelivered", "ref", "spec", "stash",
                 "stash_dropped", "stopped")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.ref: pykka.ActorRef[Any] | None = None
        self.actor: SupervisedActor | None = None
        self.incarnation = 0
        self.stash: deque[Any] = deque()
        self.redelivered = 0
        self.stash_dropped = 0  # lifetime
        self.outage_dropped = [0, 0]  # [while down now, during the last outage]
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
    """The root supervisor (one-for-one): see the module docstring.

    ``on_escalate(reason)`` is called once when the supervisor-wide restart
    intensity is exceeded; the app passes :func:`exit_process` (the default),
    tests a fake. ``metrics`` is a :class:`metrics.definitions.Metrics`.
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
        self._watchers: dict[str | None, list[Watcher]] = {}
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
        old = self._slots.get(spec.child_id)
        if old is not None and not old.stopped:
            raise ValueError(f"child {spec.child_id!r} already exists")
        self._slots[spec.child_id] = _Slot(spec)
        self._post(_Call(lambda now: self._core.add(spec, now)))
        return ChildHandle(self, spec.child_id)

    def remove_child(self, child_id: str, *, timeout: float | None = None) -> None:
        """Stop a child for good (asynchronously): ``stop()``, kill after
        ``timeout`` (default: its policy's ``shutdown_timeout``)."""
        self._post(_Call(lambda now: self._core.remove(child_id, now, timeout=timeout)))

    def handle(self, child_id: str) -> ChildHandle:
        if child_id not in self._slots:
            raise KeyError(f"unknown child {child_id!r}")
        return ChildHandle(self, child_id)

    def watch(self, watcher: Watcher, child_id: str | None = None) -> None:
        """Send :class:`ChildUp`/:class:`ChildDown` of ``child_id`` (None: all
        children) to ``watcher`` (a ChildHandle, an ActorRef or a callable run
        in the control greenlet, which must not block). The current state is
        sent at once, so a watcher that comes late still learns of a death."""
        def add(now: float) -> list[Effect]:
            self._watchers.setdefault(child_id, []).append(watcher)
            return [Notify(event, watcher) for event in self._core.lifecycle_snapshot(child_id, now)]
        self._post(_Call(add))

    def unwatch(self, watcher: Watcher, child_id: str | None = None) -> None:
        def remove(now: float) -> list[Effect]:
            watchers = self._watchers.get(child_id, [])
            if watcher in watchers:
                watchers.remove(watcher)
            return []
        self._post(_Call(remove))

    def status(self, *, dynamic: bool = True) -> dict[str, Any]:
        """A JSON-able view of the tree; ``dynamic=False`` lists only static
        children (counts by kind and state always cover all)."""
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
        """Wait until every input posted so far has been decided (tests)."""
        if gevent.getcurrent() is self._loop or self._closed:
            return
        self._call(lambda now: [], timeout)

    def shutdown(self, timeout_per_child: float = 5.0) -> None:
        """Stop every child in reverse start order and stop the supervisor.

        Each static child gets ``stop()`` and ``timeout_per_child`` seconds
        (real time), then its greenlet is killed and the next one goes: one
        hung child never stops the shutdown. A run of dynamic children
        (connections) is stopped together under one timeout. Called from the
        control greenlet (a watcher, ``on_escalate``), it runs in a new one."""
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
        log.info("supervisor %s shutting down %d children (%gs each)", self.name, len(order),
                 timeout_per_child, extra={"fields": {"event": "shutdown_started", "supervisor": self.name,
                                                      "children": len(order), "timeout_s": timeout_per_child}})
        killed = 0
        for batch in self._batches(order):
            waiting: list[tuple[str, SupervisedActor]] = []
            for child_id in batch:
                slot = self._slots.get(child_id)
                if slot is not None and slot.actor is not None:
                    waiting.append((child_id, slot.actor))
                self._post(_Call(lambda now, cid=child_id: self._core.remove(
                    cid, now, reason="shutdown", timeout=timeout_per_child)))
            greenlets = [a.actor_greenlet for _, a in waiting if a.actor_greenlet is not None]
            gevent.joinall(greenlets, timeout=timeout_per_child)
            late = [(cid, a) for cid, a in waiting if a.actor_greenlet is not None and not a.actor_greenlet.dead]
            for child_id, actor in late:
                self._post(StopDue(child_id, actor.incarnation))  # as if its timer fired now
            killed += len(late)
            if late:
                gevent.joinall([a.actor_greenlet for _, a in late], timeout=min(0.1, timeout_per_child))
        self.flush(timeout=max(1.0, timeout_per_child))
        self._closed = True
        self._inbox.put(_CLOSE)
        self._loop.join(timeout=1.0)
        if self._own_scheduler and isinstance(self._scheduler, GeventScheduler):
            self._scheduler.close()
        elapsed = time.monotonic() - started
        log.info("supervisor %s shut down in %.2fs (%d children, %d killed)", self.name, elapsed, len(order),
                 killed, extra={"fields": {"event": "shutdown_complete", "supervisor": self.name,
                                           "children": len(order), "killed": killed,
                                           "elapsed_s": round(elapsed, 3)}})

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
            dropped = slot.outage_dropped[1] if slot else 0
            self._apply(core.started(item.child_id, item.incarnation, now, healthy=item.healthy,
                                     redelivered=redelivered, dropped=dropped))
        elif isinstance(item, _Healthy):
            self._apply(core.healthy(item.child_id, item.incarnation, now))
        elif isinstance(item, _Pong):
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
        elif isinstance(effect, Notify):
            if effect.to is not None:
                self._deliver(effect.to, effect.event, None)
                return []
            for key in (effect.event.child_id, None):
                for watcher in list(self._watchers.get(key, ())):
                    self._deliver(watcher, effect.event, key)
        elif isinstance(effect, SendPing):
            slot = self._slots.get(effect.child_id)
            if slot is not None and slot.ref is not None and slot.incarnation == effect.incarnation:
                try:
                    slot.ref.tell(Ping(effect.seq))
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
        elif isinstance(effect, Forget):
            slot = self._slots.pop(effect.child_id, None)
            self._watchers.pop(effect.child_id, None)
            if slot is not None and slot.spec.static and self._metrics is not None:
                for gauge in (self._metrics.supervisor_backoff_seconds, self._metrics.supervisor_circuit_state):
                    try:
                        gauge.remove(effect.child_id)
                    except KeyError:
                        pass
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
        slot.outage_dropped = [0, slot.outage_dropped[0]]
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
            log.warning("child %s stash full (%d messages) while it is down; dropping new messages until it "
                        "restarts", slot.spec.child_id, capacity,
                        extra={"fields": {"event": "stash_full", "supervisor": self.name,
                                          "child_id": slot.spec.child_id, "kind": slot.spec.kind,
                                          "incarnation": slot.incarnation, "capacity": capacity}})
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
        slot.outage_dropped[0] += n
        if self._metrics is not None:
            self._metrics.supervisor_stash_dropped.labels(slot.spec.kind, reason).inc(n)

    # --- output -----------------------------------------------------------------------------

    def _deliver(self, watcher: Watcher, event: ChildUp | ChildDown, key: str | None) -> None:
        try:
            if isinstance(watcher, (ChildHandle, pykka.ActorRef)):
                watcher.tell(event)
            else:
                watcher(event)
        except pykka.ActorDeadError:
            watchers = self._watchers.get(key, [])
            if watcher in watchers:
                watchers.remove(watcher)
        except Exception:
            log.exception("watcher %r failed on %r", watcher, event)

    def _log(self, effect: Log) -> None:
        if not log.isEnabledFor(effect.level):  # connection churn logs at DEBUG: skip the rendering
            self._observe(effect.event, effect.fields)
            return
        fields = dict(effect.fields)
        if effect.retry_in is not None:
            fields["next_attempt_at"] = iso_utc(self._scheduler.wall() + effect.retry_in)
        log.log(effect.level, render(effect.event, fields), extra={"fields": fields})
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

    def _batches(self, order: list[str]) -> list[list[str]]:
        """Static children one by one; runs of dynamic children together."""
        batches: list[list[str]] = []
        previous_dynamic = False
        for child_id in order:
            slot = self._slots.get(child_id)
            dynamic = slot is not None and not slot.spec.static
            if dynamic and previous_dynamic:
                batches[-1].append(child_id)
            else:
                batches.append([child_id])
            previous_dynamic = dynamic
        return batches
