"""The decision core: every supervision decision, pure.

No gevent, no pykka, no clock. Every input carries ``now`` (monotonic
seconds), randomness comes from an injected ``random.Random``, and every
method returns *effects* (:class:`Spawn`, :class:`Schedule`, :class:`Kill`,
:class:`Log` ...) for the shell (:mod:`_supervision.shell`) to carry out. All
policy lives here and is tested with a fake clock and seeded randomness
(tests/test_supervision_policy.py).
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Restart(enum.Enum):
    """When a child is restarted (OTP's restart types).

    Only ``PERMANENT``: every child the gateway supervises must come back,
    even after a normal exit. Actors that must not come back (connections)
    or that their owner replaces (channels) are not supervised at all.
    """

    PERMANENT = "permanent"  #: always, even after a normal exit


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
    child has been healthy (``SupervisedActor.report_healthy``) for
    ``reset_after`` seconds.

    The circuit opens at the ``max_failures``-th consecutive failure, or at
    the ``max_failures``-th failure within ``failure_window`` (a child that
    flaps even while it is healthy in between). While it is open, attempts go
    on every ``cooldown`` seconds (equal jitter: ``uniform(cooldown/2,
    cooldown)``), logged at ERROR; a child is never given up. The first
    healthy report closes it. The defaults give the platform's old rule:
    after 10 failed reconnection attempts, stop hammering.

    The heartbeat (``Heartbeat`` every ``heartbeat_every``, ``Pong`` due within
    ``hung_after``) goes through the inbox: a handler that blocks longer than
    ``hung_after``, or an ``on_start`` longer than ``heartbeat_every +
    hung_after``, is killed as hung. ``heartbeat_every=None``: no hung
    detection.

    :meth:`delay` alone is also used outside the supervisor: the WORKERS
    parent (gateway/workers.py) restarts its worker processes with it.
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

    ``factory(context)`` must start a ``SupervisedActor`` subclass with that
    ``ChildContext`` and return its ref, without blocking: ``Worker.start``
    returns before ``on_start`` runs. ``kind`` is a metric label: a fixed
    word ("exchange_stream", "bridge"). ``static`` children (few, from
    configuration) also get metric series labelled by child_id, and are the
    ones ``status(dynamic=False)`` lists and ``/health`` judges.
    """

    child_id: str
    kind: str
    factory: Callable[[Any], Any]  # (ChildContext) -> pykka.ActorRef: the core never calls it
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
class HeartbeatReplyDue:
    child_id: str
    incarnation: int
    seq: int


@dataclass(frozen=True, slots=True)
class StopDue:
    """The shutdown timeout of a stopping child has passed (the shell's
    shutdown posts it: it waits for each child in real time anyway)."""

    child_id: str
    incarnation: int


Timer = RestartDue | HeartbeatDue | HeartbeatReplyDue | StopDue

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
class SendHeartbeat:
    child_id: str
    incarnation: int
    seq: int


@dataclass(frozen=True, slots=True)
class DropStash:
    """The child will not run again: drop its stash and every later tell."""

    child_id: str
    kind: str


@dataclass(frozen=True, slots=True)
class Log:
    """One decision line. The shell sets ``next_attempt_at`` from
    ``retry_in`` and its wall clock, then renders the text
    (:func:`_supervision.decision_log.render`)."""

    event: str
    level: int
    fields: dict[str, Any]
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class Escalate:
    reason: str


Effect = Spawn | Stop | Kill | Schedule | SendHeartbeat | DropStash | Log | Escalate

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
    Children are added for the life of the process: they stop only at
    shutdown (or escalation, which ends the process).
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
        if spec.child_id in self._children:
            raise ValueError(f"child {spec.child_id!r} already exists")
        if self.escalated or self.shutting_down:
            return []
        child = _Child(spec, next(self._order))
        self._children[spec.child_id] = child
        return self._spawn(child, now)

    def started(self, child_id: str, incarnation: int, now: float, *, healthy: bool,
                redelivered: int = 0, dropped: int = 0) -> list[Effect]:
        """The incarnation's ``on_start`` returned."""
        c = self._live(child_id, incarnation, (Status.STARTING,))
        if c is None:
            return []
        c.status = Status.RUNNING
        if c.down_since is None:
            event, level = "child_started", logging.INFO
            extra: dict[str, Any] = {}
        else:
            extra = {"down_s": round(now - c.down_since, 3), "redelivered": redelivered, "dropped": dropped}
            if c.circuit is Circuit.OPEN:
                c.circuit = Circuit.HALF_OPEN
                event, level = "circuit_half_open", logging.WARNING
            else:
                event, level = "restarted", logging.INFO
        c.down_since = None
        effects: list[Effect] = [Log(event, level, self._fields(c, event, probes=c.probes, **extra))]
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
            reply_due = HeartbeatReplyDue(timer.child_id, timer.incarnation, c.ping_seq)
            return [SendHeartbeat(timer.child_id, timer.incarnation, c.ping_seq),
                    Schedule(c.spec.policy.hung_after, reply_due)]
        if isinstance(timer, HeartbeatReplyDue):
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

    def stop(self, child_id: str, now: float, *, timeout: float) -> list[Effect]:
        """Shutdown, one child: ``stop()`` it (a ``StopDue`` after ``timeout``
        kills it), or, if it is down, cancel its restart."""
        c = self._children.get(child_id)
        if c is None:
            return []
        c.stop_reason = "shutdown"
        if c.status in _ALIVE:
            c.status, c.stop_timeout = Status.STOPPING, timeout
            return [Stop(child_id, c.incarnation)]
        if c.status in _DOWN:
            return self._stopped(c, now, None)
        return []

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
            Schedule(delay, RestartDue(spec.child_id, c.incarnation)),
        ]

    def _stopped(self, c: _Child, now: float, failure: Failure | None) -> list[Effect]:
        previous = c.status
        c.status, c.retry_at = Status.STOPPED, None
        crashed = failure is not None and failure.phase != "normal"
        if crashed and previous in _ALIVE:
            event, level = "child_failed", logging.WARNING
        else:
            event, level = "child_stopped", logging.INFO
        ran = None if previous in _DOWN else round(now - c.spawned_at, 3)
        fields = self._fields(c, event, ran_s=ran, stop_reason=c.stop_reason, crashed=crashed)
        return [Log(event, level, fields), DropStash(c.spec.child_id, c.spec.kind)]

    def _escalate(self, c: _Child, now: float, extra: dict[str, Any]) -> list[Effect]:
        self.escalated = True
        c.status = Status.STOPPED
        n = len(self._restarts)
        fields = self._fields(c, "escalated", tree_restarts=n, intensity=self.policy.intensity,
                              period_s=self.policy.period, **extra)
        reason = f"{n} restarts in {self.policy.period:g}s > {self.policy.intensity} (last: {c.spec.child_id})"
        return [Log("escalated", logging.CRITICAL, fields), Escalate(reason)]

    def _fields(self, c: _Child, event: str, **extra: Any) -> dict[str, Any]:
        """The fields every child decision line carries (docs/operations.md)."""
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
