"""Test doubles for supervision: a manual clock, and a recorder of the supervisor's decisions.

Neither ships with the gateway. Tests see a child go down and come back the
way an operator does: through the decision lines on ``gateway.supervisor``
(docs/operations.md), not through a hook production does not have.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import gevent
import gevent.event

__all__ = ["Down", "FakeScheduler", "Lifecycle", "Up"]


class FakeScheduler:
    """A manual clock (a ``supervision.Scheduler``): nothing fires until :meth:`advance`.

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


#: The log rounds delays to the millisecond; advancing by a logged delay plus
#: this is always at or past the restart timer.
TICK = 0.001

UP_EVENTS = ("child_started", "restarted", "circuit_half_open")
DOWN_EVENTS = ("restart_scheduled", "circuit_opened", "child_failed", "child_stopped", "escalated")


@dataclass(frozen=True)
class Up:
    """An incarnation is running (its ``on_start`` returned)."""

    child_id: str
    incarnation: int
    event: str


@dataclass(frozen=True)
class Down:
    """An incarnation ended. ``delay_s`` (as logged) is None when the child will not come back."""

    child_id: str
    incarnation: int
    event: str
    phase: str | None
    exc_type: str | None
    delay_s: float | None

    @property
    def restart_in(self) -> float | None:
        """How far to advance a FakeScheduler for the restart to fire."""
        return None if self.delay_s is None else self.delay_s + TICK


class Lifecycle(logging.Handler):
    """Records the supervisor's decision lines as :class:`Up`/:class:`Down`
    and lets a test wait for one. :meth:`install` it on ``gateway.supervisor``;
    :meth:`remove` it afterwards."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.items: list[Up | Down] = []
        self._changed = gevent.event.Event()
        self._logger = logging.getLogger("gateway.supervisor")
        self._level = self._logger.level

    def install(self) -> Lifecycle:
        self._level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)
        return self

    def remove(self) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        f = getattr(record, "fields", {})
        event = f.get("event")
        if event in UP_EVENTS:
            self.items.append(Up(f["child_id"], f["incarnation"], event))
        elif event in DOWN_EVENTS:
            restarting = event in ("restart_scheduled", "circuit_opened")
            self.items.append(Down(f["child_id"], f["incarnation"], event, f.get("phase"), f.get("exc_type"),
                                   f["delay_s"] if restarting else None))
        else:
            return
        self._changed.set()

    def wait_for(self, predicate: Callable[[Up | Down], bool], timeout: float = 1.0) -> Up | Down:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            for item in self.items:
                if predicate(item):
                    return item
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._changed.wait(remaining):
                raise AssertionError(f"no matching decision in {self.items}")

    def up(self, child_id: str, incarnation: int) -> Up:
        found = self.wait_for(lambda e: isinstance(e, Up) and e.child_id == child_id
                              and e.incarnation == incarnation)
        assert isinstance(found, Up)
        return found

    def down(self, child_id: str, incarnation: int) -> Down:
        found = self.wait_for(lambda e: isinstance(e, Down) and e.child_id == child_id
                              and e.incarnation == incarnation)
        assert isinstance(found, Down)
        return found
