"""The actor runtime on gevent, and supervision of the long-lived actors: backoff, circuit, escalation.

**The runtime.** :class:`GeventActor` fills pykka 4's three runtime hooks
with gevent (pykka has no gevent runtime since 3.0), contains
``BaseException`` in handlers (``gevent.Timeout`` → :class:`HandlerTimeout`,
``GreenletExit`` → :class:`ActorKilled`: in pykka they would stop every actor
in the process), and can run actors *on demand* (no idle greenlet).
:class:`ExpectedFailure` marks a failure the supervisor's line already
explains. Every actor in the gateway is built on it, supervised or not; it
lives here because the supervisor is built on it too, and the role actors
(actors/) sit above both.

pykka has no supervision (jodal/pykka#42), and a stopped pykka actor can never
be restarted: a restart here is a *new* actor with a new URN and an empty
inbox, reached through a :class:`ChildHandle` that survives it (pykka's failure
rules: docs/stack-notes.md; the operator's view: docs/operations.md).

**What production supervises.** One root supervisor, one-for-one, with the
children gateway/marketdata.py starts: the exchange streams
(``exchange:bybit:<category>``), healthy only once connected *and* subscribed
(:meth:`SupervisedActor.report_healthy`), and the market-data bridge. Every
child is ``PERMANENT`` and static (few, from configuration). The WORKERS parent
(gateway/workers.py) uses :class:`RestartPolicy`'s backoff alone for its worker
processes.

**What it does not supervise, and why.**

* Channels: when a channel actor fails, the hub (gateway/hub.py) starts its
  successor at once and moves every subscriber over. That is simpler and
  faster than a round trip through a supervisor, for what may be tens of
  thousands of channels whose only state is their subscriber set.
* Connections: never restarted; the client reconnects. A failing connection
  closes its socket with 1011 and is counted.

For the children it has, it keeps: full-jitter backoff with a floor, reset
only after reported health; a circuit that opens after repeated failures and
keeps probing on a cooldown; supervisor-wide restart intensity, escalated to
exit status 1 (:func:`exit_process`); detection of every way a child dies (a
tell handler raises, ``on_start``/``on_stop`` raise, ``gevent.Timeout`` or
``GreenletExit`` in a handler, a killed greenlet, a hung child missing its
heartbeat); a bounded stash that redelivers in order; ordered shutdown with a
kill after a timeout; one operators' log line per decision on
``gateway.supervisor``; metrics; and ``status()``/``healthy()`` for ``/health``
and ``/ws/stats``. It is the control plane only: steady-state traffic goes
straight to the children through their handles::

    supervisor = Supervisor("root", metrics=metrics, on_escalate=exit_process)
    stream = supervisor.start_child(ChildSpec(
        "exchange:bybit:spot", "exchange_stream", lambda ctx: StreamActor.start(ctx, cfg), static=True))
    stream.tell(Subscribe("tickers.BTCUSDT"))  # stashed while it is down
    supervisor.shutdown(timeout_per_child=5.0)

This module is the public face; the parts live in the private package
``_supervision``: ``runtime`` (the actor runtime above), ``core`` (the pure
decision core: policy, state machine, effects; no gevent, no pykka, no
clock), ``decision_log`` (the operators' line) and ``shell`` (gevent and
pykka: :class:`Supervisor`,
:class:`SupervisedActor`, :class:`ChildHandle`, the scheduler). The test
doubles are in tests/supervision_doubles.py.
"""

from __future__ import annotations

from _supervision.core import REASON_TYPES, ChildSpec, Restart, RestartPolicy, SupervisorPolicy
from _supervision.runtime import ActorKilled, ExpectedFailure, GeventActor, HandlerTimeout
from _supervision.shell import (
    ChildContext,
    ChildHandle,
    Scheduler,
    SupervisedActor,
    Supervisor,
    exit_process,
)

__all__ = [
    "REASON_TYPES",
    "ActorKilled",
    "ChildContext",
    "ChildHandle",
    "ChildSpec",
    "ExpectedFailure",
    "GeventActor",
    "HandlerTimeout",
    "Restart",
    "RestartPolicy",
    "Scheduler",
    "SupervisedActor",
    "Supervisor",
    "SupervisorPolicy",
    "exit_process",
]
