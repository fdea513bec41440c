"""The gevent runtime for pykka: its contract with pykka's private hooks, and the holes it closes."""

from __future__ import annotations

import inspect

import gevent
import pykka
import pytest

from supervision import ActorKilled, GeventActor, HandlerTimeout


class Echo(GeventActor):
    def on_receive(self, message):
        if message == "timeout":
            with gevent.Timeout(0.001):
                gevent.sleep(1)
        if message == "boom":
            raise ValueError("boom")
        if message == "block":
            gevent.sleep(0.3)
        return message


class Unregistered(Echo):
    registered = False


@pytest.fixture(autouse=True)
def _stop_all():
    yield
    pykka.ActorRegistry.stop_all()


def test_pykka_still_has_the_three_runtime_hooks_we_fill():
    # If pykka renames these, our runtime silently falls back to abstract
    # methods: fail loudly instead (pykka is pinned for this reason).
    for name in ("_create_actor_inbox", "_create_future", "_start_actor_loop"):
        assert getattr(pykka.Actor, name).__isabstractmethod__
    assert "ActorRegistry.stop_all()" in inspect.getsource(pykka.Actor._actor_loop_running)


def test_ask_and_tell_round_trip():
    ref = Echo.start()
    ref.tell("hello")
    assert ref.ask("ping", timeout=1) == "ping"


def test_ask_timeout_raises_pykka_timeout():
    ref = Echo.start()
    ref.tell("block")
    with pytest.raises(pykka.Timeout):
        ref.ask("x", timeout=0.05)


def _until(condition, timeout: float = 2.0) -> None:
    """Wait for a condition, yielding to the actors; fail after ``timeout``."""
    with gevent.Timeout(timeout, AssertionError("the condition never held")):
        while not condition():
            gevent.sleep(0.001)


def test_gevent_timeout_in_a_handler_fails_only_that_actor():
    bystander = Echo.start()
    victim = Echo.start()
    with pytest.raises(HandlerTimeout):
        victim.ask("timeout", timeout=1)
    victim.tell("timeout")
    _until(lambda: not victim.is_alive())
    assert bystander.is_alive()
    assert bystander.ask("still here", timeout=1) == "still here"


def test_killed_idle_greenlet_is_not_a_zombie():
    exits = []

    class Watched(Echo):
        def on_greenlet_exit(self, greenlet, *, abnormal):
            exits.append(abnormal)

    ref = Watched.start()
    ref.ask("warm", timeout=1)
    ref._actor_weakref().actor_greenlet.kill()
    gevent.idle()  # link callbacks run on the hub's next turn
    assert exits == [True]
    assert not ref.is_alive()
    assert ref not in pykka.ActorRegistry.get_all()


def test_killed_busy_greenlet_fails_the_actor_not_the_process():
    failures = []

    class Watched(Echo):
        def on_failure(self, exc_type, exc, tb):
            failures.append(exc_type)

    bystander = Echo.start()
    ref = Watched.start()
    ref.tell("block")
    gevent.sleep(0)
    ref._actor_weakref().actor_greenlet.kill()
    assert failures == [ActorKilled]
    assert not ref.is_alive()
    assert bystander.ask("ok", timeout=1) == "ok"


def test_unregistered_actor_works_and_stays_out_of_the_registry():
    ref = Unregistered.start()
    assert ref.ask("hi", timeout=1) == "hi"
    assert ref not in pykka.ActorRegistry.get_all()
    ref.stop()
    assert not ref.is_alive()


class OnDemand(GeventActor):
    registered = False
    on_demand = True

    def on_start(self):
        self.seen = []

    def on_receive(self, message):
        if message == "timeout":
            with gevent.Timeout(0.001):
                gevent.sleep(1)
        self.seen.append(message)
        return list(self.seen)


def test_on_demand_actor_holds_no_greenlet_while_idle():
    ref = OnDemand.start()
    actor = ref._actor_weakref()
    gevent.idle()
    assert actor.actor_greenlet is None  # on_start ran, nothing queued: no greenlet
    for i in range(3):
        ref.tell(i)
    assert ref.ask("last", timeout=1) == [0, 1, 2, "last"]
    gevent.idle()
    assert actor.actor_greenlet is None
    ref.stop()
    assert not ref.is_alive()


def test_on_demand_actor_base_exception_fails_only_itself():
    bystander = OnDemand.start()
    victim = OnDemand.start()
    victim.tell("timeout")
    _until(lambda: not victim.is_alive())
    assert bystander.ask("ok", timeout=1) == ["ok"]
