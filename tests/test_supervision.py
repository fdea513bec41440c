"""The supervisor with real gevent actors: every way a child dies, the restart, redelivery, logs and shutdown.

Time is a FakeScheduler (no waiting for backoffs) except where real time is
the point (shutdown bounds, the production scheduler). Tests wait, with
timeouts and never on sleeps, for the decision lines an operator reads
(tests/supervision_doubles.py's Lifecycle).
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import random
import time
from dataclasses import dataclass, field

import gevent
import gevent.event
import pykka
import pytest
from gevent import GreenletExit
from prometheus_client import CollectorRegistry

from gateway.logs import JsonFormatter, TextFormatter
from metrics.definitions import build
from supervision import ActorKilled, ChildSpec, RestartPolicy, SupervisedActor, Supervisor, SupervisorPolicy
from tests.supervision_doubles import Down, FakeScheduler, Lifecycle

QUIET = RestartPolicy(heartbeat_every=None)  # no pings unless a test is about them
START_WALL = 1_790_000_000.0  # 2026-09-21T14:13:20Z, FakeScheduler's default


@dataclass
class Script:
    """What a Worker does, shared by all its incarnations."""

    received: list = field(default_factory=list)
    start_failures: int = 0
    start_timeouts: int = 0
    healthy_in_on_start: bool = False
    fail_on_stop: bool = False
    slow_stop: bool = False
    stopped: list = field(default_factory=list)


class Worker(SupervisedActor):
    def __init__(self, context, script):
        super().__init__(context)
        self.script = script

    def on_start(self):
        if self.script.start_failures:
            self.script.start_failures -= 1
            raise RuntimeError("cannot connect")
        if self.script.start_timeouts:  # a BaseException escaping on_start
            self.script.start_timeouts -= 1
            with gevent.Timeout(0.001):
                gevent.sleep(1)
        if self.script.healthy_in_on_start:
            self.report_healthy()

    def on_stop(self):
        self.script.stopped.append(self.child_id)
        if self.script.fail_on_stop:
            raise OSError("flush failed")
        if self.script.slow_stop:
            gevent.sleep(30)

    def on_receive(self, message):
        match message:
            case "boom":
                raise ValueError("boom")
            case "timeout":
                with gevent.Timeout(0.001):
                    gevent.sleep(1)
            case "exit":
                raise GreenletExit
            case "hang":
                gevent.sleep(30)
            case "stop-self":
                self.stop()
            case "greenlet":
                return self.actor_greenlet
            case "sync":
                return self.incarnation
            case "subscribed":
                self.report_healthy()
            case _:
                self.script.received.append((self.incarnation, message))


class Stream(Worker):
    """Like an exchange stream: healthy only once subscribed."""

    healthy_on_start = False


@pytest.fixture
def clock():
    return FakeScheduler()


@pytest.fixture
def metrics():
    return build(CollectorRegistry())


@pytest.fixture
def escalations():
    return []


@pytest.fixture
def make_supervisor(clock, metrics, escalations):
    made = []

    def make(**kwargs):
        kwargs.setdefault("scheduler", clock)
        kwargs.setdefault("rng", random.Random(3))
        kwargs.setdefault("metrics", metrics)
        kwargs.setdefault("on_escalate", escalations.append)
        supervisor = Supervisor(**kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        supervisor.shutdown(0.1)


@pytest.fixture
def caplog_sup(caplog):
    caplog.set_level(logging.DEBUG, logger="gateway.supervisor")
    return caplog


@pytest.fixture
def events(caplog_sup):
    """The children's ups and downs, from the decision lines."""
    lifecycle = Lifecycle().install()
    yield lifecycle
    lifecycle.remove()


def decisions(caplog, event):
    return [r for r in caplog.records
            if r.name == "gateway.supervisor" and getattr(r, "fields", {}).get("event") == event]


def worker(child_id, script, *, kind="worker", policy=QUIET, actor=Worker):
    return ChildSpec(child_id, kind, lambda ctx: actor.start(ctx, script), policy=policy, static=True)


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


@dataclass
class World:
    supervisor: Supervisor
    events: Lifecycle
    handle: object  # the victim's ChildHandle
    victim: Script
    other: object  # the bystander's ChildHandle
    bystander: Script
    clock: FakeScheduler

    def restarted(self, phase, exc_type):
        """Wait for the victim's death and its incarnation 2 running."""
        down = self.events.down(VICTIM, 1)
        assert (down.phase, down.exc_type) == (phase, exc_type)
        self.clock.advance(down.restart_in)
        self.events.up(VICTIM, 2)
        assert self.handle.ask("sync", timeout=1) == 2

    def assert_bystander_untouched(self):
        self.other.tell("still here")
        assert self.other.ask("sync", timeout=1) == 1
        assert self.bystander.received == [(1, "still here")]
        assert not [e for e in self.events.items if isinstance(e, Down) and e.child_id == "bystander"]


VICTIM = "exchange:bybit:spot"
#: With Random(3) and the fake clock, a first failure at t=0 is restarted
#: after 0.11898 s: this is when, on the wall clock.
FIRST_RETRY_AT = "2026-09-21T14:13:20.118Z"


def first_restart_line(what, uptime="0.0s", at=FIRST_RETRY_AT, child_id=VICTIM):
    return f"child {child_id} {what} after {uptime}; restart 1 in 0.12s at {at} (window 1/10 in 600s)"


@pytest.fixture
def world(make_supervisor, clock, events):
    """A supervisor with a victim and a bystander, both up."""
    supervisor = make_supervisor()
    victim, bystander = Script(), Script()
    handle = supervisor.start_child(worker(VICTIM, victim, kind="exchange_stream"))
    other = supervisor.start_child(worker("bystander", bystander))
    events.up(VICTIM, 1)
    events.up("bystander", 1)
    return World(supervisor, events, handle, victim, other, bystander, clock)


# --- pykka's private hooks we override ------------------------------------------------------


def test_pykka_still_calls_the_private_hooks_supervised_actor_overrides():
    # SupervisedActor wraps these to see on_start/on_stop failures and keep
    # queued tells; if pykka renames or reorders them, fail here.
    loop = inspect.getsource(pykka.Actor._actor_loop)
    assert loop.index("_actor_loop_setup()") < loop.index("_actor_loop_running()") < loop.index(
        "_actor_loop_teardown()")
    assert "self.on_start()" in inspect.getsource(pykka.Actor._actor_loop_setup)
    assert "_handle_failure" in inspect.getsource(pykka.Actor._actor_loop_setup)
    assert "self.on_stop()" in inspect.getsource(pykka.Actor._stop)
    assert "actor_inbox.get()" in inspect.getsource(pykka.Actor._actor_loop_teardown)


# --- each way a child dies ------------------------------------------------------------------------


def test_tell_failure_restarts_redelivers_in_order_and_logs_one_exact_line(world, clock, caplog_sup, metrics):
    clock.advance(12.3)
    for message in ("a", "boom", "b", "c"):  # b and c wait in the inbox behind the crash
        world.handle.tell(message)
    down = world.events.down(VICTIM, 1)
    assert (down.phase, down.exc_type) == ("receive", "ValueError")
    assert world.handle.tell("d")  # stashed while it backs off
    assert world.supervisor.status()["children"][0]["state"] == "backing_off"
    with pytest.raises(pykka.ActorDeadError):  # an ask is not stashed: it fails while the child is down
        world.handle.ask("sync", timeout=1)

    clock.advance(down.restart_in)
    world.events.up(VICTIM, 2)
    world.handle.tell("e")
    assert world.handle.ask("sync", timeout=1) == 2
    assert world.victim.received == [(1, "a"), (2, "b"), (2, "c"), (2, "d"), (2, "e")]
    world.assert_bystander_untouched()

    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "child exchange:bybit:spot failed (ValueError: boom) after 12.3s; restart 1 in 0.12s at "
        "2026-09-21T14:13:32.418Z (window 1/10 in 600s)")
    assert record.fields == {
        "event": "restart_scheduled", "supervisor": "root", "child_id": "exchange:bybit:spot",
        "kind": "exchange_stream", "restart": "permanent", "incarnation": 1, "phase": "receive",
        "exc_type": "ValueError", "exc_message": "boom", "reason": "ValueError", "uptime_s": 12.3, "attempt": 1,
        "delay_s": 0.119, "next_attempt_at": "2026-09-21T14:13:32.418Z", "failures_in_window": 1,
        "max_failures": 10, "window_s": 600.0, "circuit": "closed", "restarts": 0, "pending": 2, "stash": 2,
    }
    (restarted,) = decisions(caplog_sup, "restarted")
    assert restarted.getMessage() == (
        "child exchange:bybit:spot restarted as incarnation 2 after 0.12s down "
        "(attempt 1; 3 messages redelivered, 0 dropped)")
    assert sample(metrics, "ws_supervisor_restarts_total", kind="exchange_stream", reason="ValueError") == 1
    assert sample(metrics, "ws_supervisor_time_to_recover_seconds_count", kind="exchange_stream") == 1
    assert sample(metrics, "ws_supervisor_backoff_seconds", child_id="exchange:bybit:spot") == 0


def test_on_start_failure_is_seen_and_queued_tells_reach_the_next_incarnation(make_supervisor, clock, events,
                                                                               caplog_sup):
    supervisor = make_supervisor()
    script, bystander = Script(start_failures=1), Script()
    other = supervisor.start_child(worker("bystander", bystander))
    handle = supervisor.start_child(worker("w", script))
    handle.tell("early")  # stashed, then in incarnation 1's inbox, which never runs
    down = events.down("w", 1)
    assert (down.phase, down.exc_type) == ("start", "RuntimeError")
    clock.advance(down.restart_in)
    events.up("w", 2)
    assert handle.ask("sync", timeout=1) == 2
    assert script.received == [(2, "early")]
    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.getMessage() == first_restart_line("failed in on_start (RuntimeError: cannot connect)",
                                                     child_id="w")
    assert (record.fields["phase"], record.fields["reason"], record.fields["pending"]) == ("start", "start", 1)
    World(supervisor, events, handle, script, other, bystander, clock).assert_bystander_untouched()


def test_on_stop_failure_is_seen(world, caplog_sup):
    world.victim.fail_on_stop = True
    world.handle.tell("stop-self")  # queues a stop behind "before"
    world.handle.tell("before")
    down = world.events.down(VICTIM, 1)
    world.handle.tell("after")
    world.victim.fail_on_stop = False
    world.clock.advance(down.restart_in)
    world.events.up(VICTIM, 2)
    assert world.handle.ask("sync", timeout=1) == 2
    assert (down.phase, down.exc_type) == ("stop", "OSError")
    assert world.victim.received == [(1, "before"), (2, "after")]
    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.getMessage() == first_restart_line("failed in on_stop (OSError: flush failed)")
    world.assert_bystander_untouched()


def test_gevent_timeout_in_a_handler_fails_only_that_child(world, caplog_sup, metrics):
    world.handle.tell("timeout")
    world.handle.tell("after")
    world.restarted("receive", "HandlerTimeout")
    assert world.victim.received == [(2, "after")]
    world.assert_bystander_untouched()
    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.getMessage() == first_restart_line("failed (HandlerTimeout: 0.001 seconds)")
    assert record.fields["reason"] == "HandlerTimeout"
    assert sample(metrics, "ws_supervisor_restarts_total", kind="exchange_stream", reason="HandlerTimeout") == 1


def test_greenlet_exit_raised_in_a_handler_fails_only_that_child(world, caplog_sup):
    world.handle.tell("exit")
    world.handle.tell("after")
    world.restarted("killed", "ActorKilled")
    assert world.victim.received == [(2, "after")]
    world.assert_bystander_untouched()
    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.getMessage() == first_restart_line("was killed (ActorKilled: Worker greenlet killed)")


def test_killed_idle_greenlet_is_restarted_and_its_late_tells_redelivered(world, caplog_sup):
    greenlet = world.handle.ask("greenlet", timeout=1)
    greenlet.kill()  # idle: pykka would leave a zombie that still looks alive
    world.handle.tell("late")  # lands in the dead inbox before anyone noticed
    world.restarted("killed", "ActorKilled")
    assert world.victim.received == [(2, "late")]
    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.getMessage() == first_restart_line("was killed (ActorKilled: greenlet killed (idle))")
    world.assert_bystander_untouched()


@pytest.mark.parametrize("via", ["tell", "ask"])
def test_killed_busy_greenlet_is_restarted(world, caplog_sup, via):
    greenlet = world.handle.ask("greenlet", timeout=1)
    if via == "tell":
        world.handle.tell("hang")
    else:  # pykka reports nothing for an ask: the caller gets the error, the actor is dead
        def ask_hang():
            with pytest.raises(ActorKilled) as killed:
                world.handle.ask("hang", timeout=5)
            return killed.value

        asker = gevent.spawn(ask_hang)
        gevent.idle()
    world.handle.tell("after")
    gevent.idle()
    greenlet.kill()
    world.restarted("killed", "ActorKilled")
    assert world.victim.received == [(2, "after")]
    if via == "ask":
        assert isinstance(asker.get(timeout=1), ActorKilled)
    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.getMessage() == first_restart_line("was killed (ActorKilled: Worker greenlet killed)")
    world.assert_bystander_untouched()


def test_hung_child_is_killed_on_a_missed_pong_and_restarted(make_supervisor, clock, events, caplog_sup, metrics):
    supervisor = make_supervisor()
    beating = RestartPolicy(heartbeat_every=1.0, hung_after=0.5)
    script, bystander = Script(), Script()
    handle = supervisor.start_child(worker("w", script, policy=beating))
    other = supervisor.start_child(worker("bystander", bystander, policy=beating))
    events.up("w", 1)
    events.up("bystander", 1)
    handle.tell("hang")
    handle.tell("queued")
    clock.advance(1.0)  # ping 1 to both; only the bystander answers
    clock.advance(0.5)
    down = events.down("w", 1)
    assert (down.phase, down.exc_type) == ("hung", "ChildHung")
    clock.advance(down.restart_in)
    events.up("w", 2)
    assert handle.ask("sync", timeout=1) == 2
    assert script.received == [(2, "queued")]
    (hung,) = decisions(caplog_sup, "hung_detected")
    assert hung.levelno == logging.ERROR
    assert hung.getMessage() == "child w incarnation 1 did not answer ping 1 within 0.5s; killing its greenlet"
    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.getMessage() == first_restart_line("hung (ChildHung: no pong to ping 1 within 0.5s)", "1.5s",
                                                     "2026-09-21T14:13:21.618Z", child_id="w")
    assert record.fields["pending"] == 1
    assert sample(metrics, "ws_supervisor_restarts_total", kind="worker", reason="hung") == 1
    World(supervisor, events, handle, script, other, bystander, clock).assert_bystander_untouched()


# --- stash, health, factories ----------------------------------------------------------------------


def test_stash_is_bounded_drops_are_counted_and_the_rest_arrive_in_order(make_supervisor, clock, events, caplog_sup,
                                                                         metrics):
    supervisor = make_supervisor()
    script = Script()
    handle = supervisor.start_child(worker("w", script, policy=RestartPolicy(heartbeat_every=None,
                                                                               stash_capacity=3)))
    events.up("w", 1)
    handle.tell("boom")
    down = events.down("w", 1)
    accepted = [handle.tell(n) for n in range(5)]
    assert accepted == [True, True, True, False, False]
    clock.advance(down.restart_in)
    events.up("w", 2)
    assert handle.ask("sync", timeout=1) == 2
    assert script.received == [(2, 0), (2, 1), (2, 2)]
    assert sample(metrics, "ws_supervisor_stash_dropped_total", kind="worker", reason="full") == 2
    (full,) = decisions(caplog_sup, "stash_full")
    assert full.getMessage() == (
        "child w stash full (3 messages) while it is down; dropping new messages until it restarts")
    (restarted,) = decisions(caplog_sup, "restarted")
    assert restarted.fields["dropped"] == 2 and restarted.fields["redelivered"] == 3
    assert supervisor.status()["children"][0]["stash_dropped"] == 2


def test_gevent_timeout_escaping_on_start_is_a_start_failure(make_supervisor, clock, events, caplog_sup):
    supervisor = make_supervisor()
    script = Script(start_timeouts=1)
    handle = supervisor.start_child(worker("w", script))
    down = events.down("w", 1)
    assert (down.phase, down.exc_type) == ("start", "HandlerTimeout")
    clock.advance(down.restart_in)
    events.up("w", 2)
    assert handle.ask("sync", timeout=1) == 2
    (record,) = decisions(caplog_sup, "restart_scheduled")
    assert record.getMessage() == first_restart_line("failed in on_start (HandlerTimeout: 0.001 seconds)",
                                                     child_id="w")


def test_a_stream_reporting_healthy_in_on_start_is_healthy_once_up(make_supervisor, clock, events):
    supervisor = make_supervisor()
    supervisor.start_child(worker("s", Script(healthy_in_on_start=True), actor=Stream))
    supervisor.start_child(worker("t", Script(), actor=Stream))
    events.up("s", 1)
    events.up("t", 1)
    supervisor.flush()
    assert [c["healthy"] for c in supervisor.status(dynamic=False)["children"]] == [True, False]


def test_factory_that_does_not_start_a_supervised_actor_is_a_start_failure(make_supervisor, events):
    supervisor = make_supervisor()
    supervisor.start_child(ChildSpec("bad", "worker", lambda ctx: None, policy=QUIET))
    down = events.down("bad", 1)
    assert (down.phase, down.exc_type) == ("start", "TypeError")
    with pytest.raises(ValueError, match="child 'bad' already exists"):
        supervisor.start_child(ChildSpec("bad", "worker", lambda ctx: None, policy=QUIET))


# --- circuit, escalation, health ------------------------------------------------------------------


def test_circuit_opens_after_10_failures_and_the_first_healthy_report_closes_it(make_supervisor, clock, events,
                                                                                caplog_sup, metrics):
    supervisor = make_supervisor()
    script = Script(start_failures=10)
    handle = supervisor.start_child(worker("exchange:bybit:linear", script, kind="exchange_stream",
                                           actor=Stream))
    for incarnation in range(1, 10):
        clock.advance(events.down("exchange:bybit:linear", incarnation).restart_in)
    cooling = events.down("exchange:bybit:linear", 10)
    assert 30.0 <= cooling.delay_s <= 60.0
    (opened,) = decisions(caplog_sup, "circuit_opened")
    assert opened.levelno == logging.ERROR
    assert opened.getMessage().startswith(
        "child exchange:bybit:linear failed in on_start (RuntimeError: cannot connect) after 0.0s; "
        "circuit opened after 10 consecutive failures (window 10/10 in 600s); next attempt in ")
    assert len(decisions(caplog_sup, "restart_scheduled")) == 9
    child = supervisor.status()["children"][0]
    assert (child["state"], child["circuit"]) == ("circuit_open", "open")
    assert sample(metrics, "ws_supervisor_circuit_state", child_id="exchange:bybit:linear") == 2
    assert sample(metrics, "ws_supervisor_backoff_seconds", child_id="exchange:bybit:linear") == cooling.delay_s
    clock.advance(cooling.restart_in)
    events.up("exchange:bybit:linear", 11)
    assert supervisor.status()["children"][0]["circuit"] == "half_open"
    assert not supervisor.healthy()
    assert sample(metrics, "ws_supervisor_circuit_state", child_id="exchange:bybit:linear") == 1
    handle.tell("subscribed")  # connected and subscribed: report_healthy()
    handle.ask("sync", timeout=1)
    supervisor.flush()
    (closed,) = decisions(caplog_sup, "circuit_closed")
    assert closed.getMessage() == (
        "child exchange:bybit:linear is healthy as incarnation 11; circuit closed after 1 probes")
    assert supervisor.status()["children"][0]["circuit"] == "closed"
    assert supervisor.healthy()
    assert sample(metrics, "ws_supervisor_circuit_state", child_id="exchange:bybit:linear") == 0


def test_circuit_open_is_visible_in_status_while_cooling_down(make_supervisor, clock, events):
    supervisor = make_supervisor()
    supervisor.start_child(worker("w", Script(start_failures=5), policy=RestartPolicy(
        heartbeat_every=None, max_failures=2, cooldown=60.0)))
    clock.advance(events.down("w", 1).restart_in)
    down = events.down("w", 2)
    assert 30.0 <= down.delay_s <= 60.0
    child = supervisor.status()["children"][0]
    assert (child["state"], child["circuit"]) == ("circuit_open", "open")
    assert child["backoff_s"] == down.delay_s and child["next_attempt_at"].endswith("Z")
    json.dumps(supervisor.status())


def test_too_many_restarts_across_the_tree_escalate(make_supervisor, escalations, events, caplog_sup, metrics):
    escalated = gevent.event.Event()
    supervisor = make_supervisor(policy=SupervisorPolicy(intensity=2, period=10.0),
                                 on_escalate=lambda reason: (escalations.append(reason), escalated.set()))
    handles = [supervisor.start_child(worker(f"w{i}", Script())) for i in range(3)]
    for i, handle in enumerate(handles):
        events.up(f"w{i}", 1)
        handle.tell("boom")
    assert escalated.wait(1)
    assert escalations == ["3 restarts in 10s > 2 (last: w2)"]
    (record,) = decisions(caplog_sup, "escalated")
    assert record.levelno == logging.CRITICAL
    assert record.getMessage() == (
        "supervisor root escalates: 3 restarts in 10s exceed the limit of 2; last child w2 failed (ValueError: boom)")
    assert not supervisor.healthy()
    assert sample(metrics, "ws_supervisor_escalations_total") == 1


# --- shutdown --------------------------------------------------------------------------------------


def test_shutdown_stops_in_reverse_order_and_a_hung_child_cannot_hold_it(make_supervisor, events, caplog_sup):
    supervisor = make_supervisor()
    order = Script()
    slow = Script(slow_stop=True, stopped=order.stopped)
    actors = []
    for child_id, script in (("a", order), ("b", slow), ("c", order)):
        supervisor.start_child(worker(child_id, script))
        events.up(child_id, 1)
        actors.append(supervisor._slots[child_id].actor)
    started = time.monotonic()
    supervisor.shutdown(timeout_per_child=0.2)
    elapsed = time.monotonic() - started
    assert elapsed < 0.6
    assert order.stopped == ["c", "b", "a"]
    assert all(actor.actor_greenlet.dead for actor in actors)
    (killed,) = decisions(caplog_sup, "shutdown_killed")
    assert killed.getMessage() == "child b incarnation 1 did not stop within 0.2s; killing its greenlet"
    (stopped,) = [r for r in decisions(caplog_sup, "child_stopped") if r.fields["child_id"] == "b"]
    assert stopped.getMessage() == (
        "child b was killed (ShutdownTimeout: did not stop within 0.2s) after 0.0s; shutdown")  # the fake clock
    (complete,) = decisions(caplog_sup, "shutdown_complete")
    assert complete.fields["killed"] == 1 and complete.fields["children"] == 3
    assert not supervisor.healthy()


def test_shutdown_while_a_child_backs_off_cancels_its_restart_and_drops_its_stash(world, clock, caplog_sup,
                                                                                   metrics):
    world.handle.tell("boom")
    down = world.events.down(VICTIM, 1)
    assert world.handle.tell("stashed")
    world.supervisor.shutdown(timeout_per_child=0.2)
    clock.advance(down.restart_in)
    assert not [e for e in world.events.items if e.child_id == VICTIM and e.incarnation == 2]
    (stopped,) = [r for r in decisions(caplog_sup, "child_stopped") if r.fields["child_id"] == VICTIM]
    assert stopped.getMessage() == "child exchange:bybit:spot stopped while down (shutdown)"
    assert not world.handle.tell("too late")
    assert sample(metrics, "ws_supervisor_stash_dropped_total", kind="exchange_stream", reason="not_restarted") == 2
    assert world.bystander.stopped == ["bystander"]


# --- the production scheduler, and the two log formats ---------------------------------------------


def test_real_clock_restart_and_log_formats(events, caplog_sup):
    supervisor = Supervisor("root", rng=random.Random(1), on_escalate=pytest.fail)
    try:
        script = Script()
        fast = RestartPolicy(base=0.001, cap=0.01, floor=0.001, heartbeat_every=None)
        handle = supervisor.start_child(worker("w", script, policy=fast))
        events.up("w", 1)
        handle.tell("boom")
        handle.tell("next")
        events.up("w", 2)
        assert handle.ask("sync", timeout=1) == 2
        assert script.received == [(2, "next")]
    finally:
        supervisor.shutdown(0.1)
    (record,) = decisions(caplog_sup, "restart_scheduled")
    text = TextFormatter().format(record)
    assert " WARNING gateway.supervisor child w failed (ValueError: boom) after " in text
    assert " event=restart_scheduled supervisor=root child_id=w kind=worker restart=permanent incarnation=1 " in text
    payload = json.loads(JsonFormatter().format(record))
    assert payload["msg"] == record.getMessage() and payload["event"] == "restart_scheduled"
    assert payload["exc_type"] == "ValueError" and payload["attempt"] == 1 and payload["window_s"] == 600.0
    assert payload["next_attempt_at"].endswith("Z")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.handle(record)
    json.loads(stream.getvalue())
