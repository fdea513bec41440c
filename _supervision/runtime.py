"""pykka on gevent: the runtime pykka 4 no longer ships.

pykka 3.0 removed ``pykka.gevent`` (jodal/pykka#111). pykka still defines
three runtime hooks, ``_create_actor_inbox``, ``_create_future`` and
``_start_actor_loop``; this module fills them with a gevent queue, a future
on ``gevent.event.AsyncResult`` and ``gevent.spawn``. The hooks are private
API, so pykka is pinned in setup.cfg and ``tests/test_runtime.py`` fails if
they change.

Two more holes are closed here, because every actor of ours needs them:

* **A BaseException in a handler must not stop the process's actors.**
  pykka catches ``BaseException`` around a handler and calls
  ``ActorRegistry.stop_all()``; ``gevent.Timeout`` and ``GreenletExit`` are
  BaseExceptions. ``GeventActor._handle_receive`` turns them into
  :class:`HandlerTimeout` / :class:`ActorKilled`, ordinary exceptions that
  fail only this actor (``on_failure`` for a tell, the caller's future for
  an ask).
* **Actors that are not in pykka's registry.** The registry is a list
  searched linearly; with 50,000 connections registered, starting and
  stopping an actor falls to about 150/s (docs/stack-notes.md). Classes with
  ``registered = False`` skip it; whoever starts them keeps the reference.

Greenlet death outside a handler (killed while idle, an exception escaping
``on_start``) is observed with ``Greenlet.link``: ``on_greenlet_exit`` runs
and the actor is marked stopped, so it never lingers as a zombie that still
looks alive. ``supervision.py`` builds on that hook.

**Actors without an idle greenlet.** A greenlet blocked on an empty inbox
costs about 8 KiB (its saved C stack and Python frames); with one actor per
client connection that is most of a connection's memory. Classes with
``on_demand = True`` (connections, channels) get a greenlet only while
messages are queued: a ``put`` into the empty inbox spawns one, it handles
what is queued and ends. Their envelopes are handled exactly as pykka's
loop does (``_handle_envelope``), except that a BaseException fails only
this actor.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast

import gevent
import gevent.event
import gevent.queue
import pykka
from gevent import Greenlet, GreenletExit

__all__ = ["ActorKilled", "ExpectedFailure", "GeventActor", "GeventFuture", "HandlerTimeout"]


class ExpectedFailure(Exception):
    """A failure that is part of normal operation (an exchange dropped the
    connection, a stream went silent). It still stops the actor and the
    supervisor still logs its one decision line; pykka's traceback for it is
    left out of the logs (gateway/logs.py), because it says nothing more."""


class HandlerTimeout(Exception):
    """A ``gevent.Timeout`` escaped a message handler."""


class ActorKilled(Exception):
    """The actor's greenlet was killed while it handled a message."""


class GeventFuture(pykka.Future[Any]):
    """A pykka future backed by ``gevent.event.AsyncResult``."""

    __slots__ = ("async_result",)

    def __init__(self) -> None:
        super().__init__()
        self.async_result: gevent.event.AsyncResult = gevent.event.AsyncResult()

    def get(self, *, timeout: float | None = None) -> Any:
        try:
            return super().get(timeout=timeout)
        except NotImplementedError:
            pass
        try:
            return self.async_result.get(timeout=timeout)
        except gevent.Timeout as exc:
            raise pykka.Timeout(f"{timeout} seconds") from exc

    def set(self, value: Any | None = None) -> None:
        self.async_result.set(value)

    def set_exception(self, exc_info: Any = None) -> None:
        if exc_info is None:
            exc_info = sys.exc_info()
        self.async_result.set_exception(exc_info[1], exc_info=exc_info)


class _StoppedFlag:
    """What pykka needs of ``actor_stopped`` (``set``/``is_set``), without the
    Condition, lock and waiter deque of a ``threading.Event`` (about 1 KiB an actor)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class Inbox(Protocol):
    """An actor's inbox as our runtime makes it: pykka's ``ActorInbox`` plus
    ``qsize`` (``gevent.queue.SimpleQueue`` and :class:`_DemandInbox` have it)."""

    def put(self, envelope: Any, /) -> None: ...

    def get(self) -> Any: ...

    def empty(self) -> bool: ...

    def qsize(self) -> int: ...


class _DemandInbox:
    """An inbox that wakes its actor when a message arrives (``on_demand`` actors)."""

    __slots__ = ("_items", "wake")

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self.wake: Callable[[], None] | None = None

    def put(self, envelope: Any, /) -> None:
        self._items.append(envelope)
        if self.wake is not None:
            self.wake()

    def get(self) -> Any:
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class GeventActor(pykka.Actor):
    """Base class of every actor in the gateway.

    Subclasses set ``registered = False`` to stay out of pykka's registry,
    and ``on_demand = True`` to hold a greenlet only while they have work.
    """

    registered: ClassVar[bool] = True
    on_demand: ClassVar[bool] = False
    actor_inbox: Inbox
    actor_greenlet: Greenlet | None = None
    _on_start_done = False

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Any]:
        if cls.registered:
            return super().start(*args, **kwargs)
        obj = cls(*args, **kwargs)
        obj._start_actor_loop()
        return obj.actor_ref

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.on_demand:
            # pykka types actor_stopped as threading.Event and only ever calls set() and is_set()
            flag = _StoppedFlag()
            self.actor_stopped = self.actor_ref.actor_stopped = flag  # type: ignore[assignment]  # duck-typed Event

    @classmethod  # pykka declares a staticmethod; on_demand is a ClassVar, so the class is enough
    def _create_actor_inbox(cls) -> Inbox:
        return _DemandInbox() if cls.on_demand else gevent.queue.SimpleQueue()

    def _demand_inbox(self) -> _DemandInbox:
        """The inbox of an ``on_demand`` actor: only it has ``wake``."""
        return cast(_DemandInbox, self.actor_inbox)

    @staticmethod
    def _create_future() -> GeventFuture:
        return GeventFuture()

    def _start_actor_loop(self) -> None:
        if self.on_demand:
            self._demand_inbox().wake = self._wake
            if type(self).on_start is pykka.Actor.on_start:
                self._on_start_done = True  # nothing to run: no greenlet until the first message
            else:
                self._wake()  # on_start runs at once, as for any pykka actor
            return
        greenlet = Greenlet(self._actor_loop)
        greenlet.link(self._greenlet_exited)
        self.actor_greenlet = greenlet
        greenlet.start()

    # -- on-demand actors ------------------------------------------------------------

    def _wake(self) -> None:
        if self.actor_greenlet is None and not self.actor_stopped.is_set():
            self.actor_greenlet = gevent.spawn(self._run_on_demand)

    def _run_on_demand(self) -> None:
        inbox = self.actor_inbox
        try:
            if not self._on_start_done:
                self._on_start_done = True
                self._actor_loop_setup()
            while not self.actor_stopped.is_set() and not inbox.empty():
                self._handle_envelope(inbox.get())
        finally:
            self.actor_greenlet = None
            if self.actor_stopped.is_set():
                self._demand_inbox().wake = None
                self._actor_loop_teardown()

    def _handle_envelope(self, envelope: Any) -> None:
        """One message, with pykka's failure rules (``Actor._actor_loop_running``)."""
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:  # noqa: BLE001 - pykka's rule: an ask gets it back, a tell fails the actor
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:  # noqa: BLE001 - as pykka: a failing on_failure is logged
                    self._handle_failure(*sys.exc_info())
        except BaseException:  # noqa: BLE001 - fail this actor only, never stop_all
            self._handle_failure(*sys.exc_info())

    def _stop(self) -> None:
        if self.registered:
            super()._stop()
            return
        # pykka's _stop() would scan the registry for an actor never put in it.
        self.actor_stopped.set()
        try:
            self.on_stop()
        except Exception:  # noqa: BLE001 - as pykka does: any failure of on_stop stops the actor
            self._handle_failure(*sys.exc_info())

    def _handle_failure(self, *exc_info: Any) -> None:
        if self.registered:
            super()._handle_failure(*exc_info)
        else:
            pykka._actor.logger.error(f"Unhandled exception in {self}:", exc_info=exc_info)
            self.actor_stopped.set()

    def _handle_receive(self, message: Any) -> Any:
        try:
            return super()._handle_receive(message)
        except gevent.Timeout as exc:
            raise HandlerTimeout(str(exc) or repr(exc)) from exc
        except GreenletExit as exc:
            self.actor_stopped.set()
            raise ActorKilled(f"{type(self).__name__} greenlet killed") from exc

    def _greenlet_exited(self, greenlet: Greenlet) -> None:
        if not self.actor_stopped.is_set():
            # Killed while idle, or a BaseException escaped on_start/on_stop:
            # pykka never noticed, so the actor would look alive forever.
            self.actor_stopped.set()
            if self.registered:
                pykka.ActorRegistry.unregister(self.actor_ref)
            self._drain_inbox()
            self.on_greenlet_exit(greenlet, abnormal=True)
        else:
            self.on_greenlet_exit(greenlet, abnormal=False)

    def _drain_inbox(self) -> None:
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception(
                    exc_info=(
                        pykka.ActorDeadError,
                        pykka.ActorDeadError(f"{self.actor_ref} died before handling the message"),
                        None,
                    )
                )

    def on_greenlet_exit(self, greenlet: Greenlet, *, abnormal: bool) -> None:
        """Called in the hub when the actor's greenlet has ended.

        ``abnormal`` is true when the actor did not stop through pykka (its
        greenlet was killed or a BaseException escaped a lifecycle hook).
        """
