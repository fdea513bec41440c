"""The supervision decision core: pure, with a fake clock (explicit ``now``) and seeded randomness."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _supervision.core import (
    ChildSpec,
    DropStash,
    Escalate,
    Failure,
    HeartbeatDue,
    HeartbeatReplyDue,
    Kill,
    Log,
    RestartDue,
    RestartPolicy,
    Schedule,
    SendHeartbeat,
    Spawn,
    Stop,
    StopDue,
    SupervisorCore,
    SupervisorPolicy,
)
from _supervision.decision_log import render

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)

BOOM = Failure("receive", "ValueError", "boom", "ValueError")
NO_HEARTBEAT = RestartPolicy(heartbeat_every=None)
LOG_KEYS = {
    "event", "supervisor", "child_id", "kind", "restart", "incarnation", "phase", "exc_type", "exc_message",
    "reason", "uptime_s", "attempt", "delay_s", "next_attempt_at", "failures_in_window", "max_failures",
    "window_s", "circuit", "restarts",
}


def spec(child_id="exchange:bybit:spot", policy=NO_HEARTBEAT):
    return ChildSpec(child_id, "exchange_stream", lambda ctx: None, policy=policy, static=True)


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def only(effects, kind):
    (found,) = of(effects, kind)
    return found


class Child:
    """Drives one child through the core, tracking its incarnation and clock."""

    def __init__(self, core, spec_, now=0.0, *, healthy=False):
        self.core, self.id, self.now = core, spec_.child_id, now
        effects = core.add(spec_, now)
        self.inc = only(effects, Spawn).incarnation
        self.last = core.started(self.id, self.inc, now, healthy=healthy)

    def fail(self, after=0.0, failure=BOOM):
        self.now += after
        self.last = self.core.exited(self.id, self.inc, self.now, failure)
        return self.last

    def restart(self, *, healthy=False, up=True):
        """Let the scheduled restart fire, then report the new incarnation up."""
        due = only(self.last, Schedule)
        assert isinstance(due.timer, RestartDue)
        self.now += due.delay
        spawn = only(self.core.timer(due.timer, self.now), Spawn)
        assert spawn.incarnation == self.inc + 1
        self.inc = spawn.incarnation
        if up:
            self.last = self.core.started(self.id, self.inc, self.now, healthy=healthy)
        return self.last

    def healthy(self, after=0.0):
        self.now += after
        self.last = self.core.healthy(self.id, self.inc, self.now)
        return self.last


def decision(effects):
    return only(effects, Log)


# --- backoff -----------------------------------------------------------------------


def test_ceiling_doubles_from_base_up_to_cap():
    policy = RestartPolicy(base=0.2, cap=30.0)
    assert [policy.ceiling(n) for n in range(10)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]


@pytest.mark.parametrize("attempt", [1_024, 10_000, 10**100])
def test_huge_attempts_do_not_overflow(attempt):
    policy = RestartPolicy()
    assert policy.ceiling(attempt) == 30.0
    assert 0.1 <= policy.delay(attempt, random.Random(1)) <= 30.0


@settings(max_examples=150)
@given(
    attempt=st.one_of(st.integers(0, 2_000), st.integers(0, 10**30)),
    base=st.floats(0.0, 100.0),
    cap=st.floats(0.001, 1_000.0),
    floor_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_delay_is_never_above_cap_nor_below_floor(attempt, base, cap, floor_share, seed):
    policy = RestartPolicy(base=base, cap=cap, floor=cap * floor_share, cooldown=cap)
    delay = policy.delay(attempt, random.Random(seed))
    assert policy.floor <= delay <= policy.cap
    if attempt <= 1_000:  # the plain formula overflows beyond
        assert delay <= max(policy.floor, min(cap, base * 2.0**attempt))


def test_full_jitter_spreads_over_the_whole_window_and_is_reproducible():
    policy = RestartPolicy(base=0.5, cap=30.0, floor=0.0, cooldown=30.0)
    delays = [policy.delay(10, random.Random(7 + i)) for i in range(2_000)]
    assert min(delays) < 1.0 and max(delays) > 29.0
    assert 14.0 < sum(delays) / len(delays) < 16.0
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert [policy.delay(n, rng_a) for n in range(20)] == [policy.delay(n, rng_b) for n in range(20)]


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="floor must be between 0 and cap"):
        RestartPolicy(floor=40.0)
    with pytest.raises(ValueError, match="max_failures must be >= 1"):
        RestartPolicy(max_failures=0)


# --- one failure, exactly -----------------------------------------------------------------


def test_a_failure_schedules_a_jittered_restart_and_logs_one_line():
    core = SupervisorCore("root", rng=random.Random(3))
    child = Child(core, spec(), now=100.0)
    effects = child.fail(after=12.3, failure=Failure("receive", "ConnectionResetError", "reset by peer",
                                                     "ConnectionResetError"))
    expected_delay = max(0.1, random.Random(3).uniform(0.0, 0.5))
    line = decision(effects)
    assert line.event == "restart_scheduled" and line.retry_in == expected_delay
    assert line.fields == {
        "event": "restart_scheduled", "supervisor": "root", "child_id": "exchange:bybit:spot",
        "kind": "exchange_stream", "restart": "permanent", "incarnation": 1, "phase": "receive",
        "exc_type": "ConnectionResetError", "exc_message": "reset by peer", "reason": "ConnectionResetError",
        "uptime_s": 12.3, "attempt": 1, "delay_s": round(expected_delay, 3), "next_attempt_at": None,
        "failures_in_window": 1, "max_failures": 10, "window_s": 600.0, "circuit": "closed", "restarts": 0,
        "pending": 0, "stash": 0,
    }
    assert render(line.event, {**line.fields, "next_attempt_at": "2026-09-21T14:15:12.419Z"}) == (
        "child exchange:bybit:spot failed (ConnectionResetError: reset by peer) after 12.3s; restart 1 in 0.12s "
        "at 2026-09-21T14:15:12.419Z (window 1/10 in 600s)"
    )
    assert only(effects, Schedule) == Schedule(expected_delay, RestartDue("exchange:bybit:spot", 1))


def test_restart_spawns_the_next_incarnation_and_reports_recovery_when_up():
    core = SupervisorCore(rng=random.Random(1))
    child = Child(core, spec())
    child.fail(after=5.0)
    effects = child.restart()
    line = decision(effects)
    assert line.event == "restarted"
    assert line.fields["incarnation"] == 2 and line.fields["restarts"] == 1
    assert line.fields["down_s"] == 0.1  # the floor: Random(1) draws below it
    assert core.status(child.now)["children"][0]["state"] == "running"


# --- properties --------------------------------------------------------------------------


@settings(max_examples=80)
@given(st.lists(st.tuples(st.floats(0.0, 100.0), st.one_of(st.none(), st.floats(0.0, 100.0))),
                min_size=1, max_size=25))
def test_attempt_resets_only_after_healthy_for_reset_after(steps):
    policy = RestartPolicy(reset_after=30.0, max_failures=1_000, heartbeat_every=None)
    core = SupervisorCore(policy=SupervisorPolicy(intensity=10**6), rng=random.Random(0))
    child = Child(core, spec(policy=policy))
    expected = 0
    for uptime, healthy_after in steps:
        start, healthy_at = child.now, None
        if healthy_after is not None and healthy_after <= uptime:
            healthy_at = start + healthy_after
            core.healthy(child.id, child.inc, healthy_at)
        child.now = start + uptime
        child.last = core.exited(child.id, child.inc, child.now, BOOM)
        line = decision(child.last)
        healthy_long_enough = healthy_at is not None and child.now - healthy_at >= 30.0
        expected = 1 if healthy_long_enough else expected + 1
        assert line.fields["attempt"] == expected
        incarnation = child.inc
        child.restart()
        assert child.inc == incarnation + 1  # incarnations strictly increase


@settings(max_examples=80)
@given(n=st.integers(1, 12), gaps=st.lists(st.floats(0.0, 5_000.0), min_size=15, max_size=15))
def test_circuit_opens_exactly_at_the_nth_consecutive_failure(n, gaps):
    policy = RestartPolicy(max_failures=n, failure_window=60.0, heartbeat_every=None)
    core = SupervisorCore(policy=SupervisorPolicy(intensity=10**6), rng=random.Random(5))
    child = Child(core, spec(policy=policy))
    events = []
    for gap in gaps[:n]:
        events.append(decision(child.fail(after=gap)).event)
        child.restart()
    assert events == ["restart_scheduled"] * (n - 1) + ["circuit_opened"]
    assert core.status(child.now)["children"][0]["circuit"] == "half_open"


@settings(max_examples=80)
@given(st.lists(st.floats(31.0, 400.0), min_size=1, max_size=40))
def test_circuit_opens_exactly_when_the_nth_failure_lands_within_the_window(gaps):
    # Healthy for more than reset_after between failures: the attempt count
    # resets every time, so only the window (5 failures in 600 s) can open it.
    policy = RestartPolicy(reset_after=30.0, max_failures=5, failure_window=600.0, heartbeat_every=None)
    core = SupervisorCore(policy=SupervisorPolicy(intensity=10**6), rng=random.Random(9))
    child = Child(core, spec(policy=policy), healthy=True)
    window: list[float] = []
    for gap in gaps:
        line = decision(child.fail(after=gap))
        window = [t for t in window if t > child.now - 600.0] + [child.now]
        if len(window) >= 5:
            assert line.event == "circuit_opened"
            window = []  # the next incarnation is healthy at once: closes it, clears the window
        else:
            assert line.event == "restart_scheduled"
        assert line.fields["attempt"] == 1
        child.restart(healthy=True)
        assert core.status(child.now)["children"][0]["circuit"] == "closed"


@settings(max_examples=100)
@given(failed_probes=st.integers(0, 5), seed=st.integers(0, 1_000))
def test_circuit_closes_on_the_first_healthy_report(failed_probes, seed):
    policy = RestartPolicy(max_failures=3, cooldown=60.0, heartbeat_every=None)
    core = SupervisorCore(rng=random.Random(seed))
    child = Child(core, spec(policy=policy))
    for _ in range(2):
        child.fail()
        child.restart()
    opened = decision(child.fail())
    assert opened.event == "circuit_opened" and opened.level >= 40  # ERROR
    assert 30.0 <= opened.retry_in <= 60.0  # cooldown, never given up
    for _ in range(failed_probes):  # probes that die in on_start keep it open
        child.restart(up=False)
        line = decision(child.fail(failure=Failure("start", "ConnectionRefusedError", "refused", "start")))
        assert line.event == "circuit_opened" and line.fields["probe_failed"] is True
    half_open = decision(child.restart(healthy=False))
    assert half_open.event == "circuit_half_open"
    assert core.status(child.now)["children"][0]["circuit"] == "half_open"
    closed = decision(child.healthy(after=1.0))
    assert closed.event == "circuit_closed" and closed.fields["probes"] == failed_probes + 1
    status = core.status(child.now)["children"][0]
    assert status["circuit"] == "closed" and status["failures_in_window"] == 0
    assert core.healthy_overall()


def test_a_probe_that_dies_before_reset_after_reopens_the_circuit():
    policy = RestartPolicy(max_failures=2, reset_after=30.0, heartbeat_every=None)
    core = SupervisorCore(rng=random.Random(2))
    child = Child(core, spec(policy=policy))
    child.fail()
    child.restart()
    assert decision(child.fail()).event == "circuit_opened"
    child.restart(healthy=True)  # half-open, then closed at once
    assert core.status(child.now)["children"][0]["circuit"] == "closed"
    line = decision(child.fail(after=5.0))
    assert line.event == "circuit_opened" and line.fields["attempt"] == 3
    assert render(line.event, line.fields).startswith(
        "child exchange:bybit:spot failed (ValueError: boom) after 5.0s; circuit opened after 3 consecutive failures")


@settings(max_examples=80)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0.0, 6.0)), min_size=1, max_size=30))
def test_escalates_exactly_when_tree_restarts_exceed_intensity_in_period(failures):
    core = SupervisorCore(policy=SupervisorPolicy(intensity=4, period=10.0), rng=random.Random(0))
    policy = RestartPolicy(max_failures=1_000, heartbeat_every=None)
    children = {cid: Child(core, spec(cid, policy=policy)) for cid in "abc"}
    now, times = 0.0, []
    for cid, gap in failures:
        now += gap
        child = children[cid]
        child.now = now
        effects = child.fail()
        times = [t for t in times if t > now - 10.0] + [now]
        if len(times) > 4:
            assert decision(effects).event == "escalated"
            assert only(effects, Escalate).reason.startswith(f"5 restarts in 10s > 4 (last: {cid})")
            assert core.status(now)["state"] == "escalated" and not core.healthy_overall()
            assert core.exited("b", 1, now, BOOM) == []  # nothing more is decided
            return
        assert decision(effects).event == "restart_scheduled"
        # restart at once: delays don't matter for the tree window
        spawn = only(core.timer(only(effects, Schedule).timer, now), Spawn)
        child.inc = spawn.incarnation
        core.started(cid, child.inc, now, healthy=False)


# --- restart: always ----------------------------------------------------------------------


def test_permanent_child_restarts_even_after_a_normal_exit():
    core = SupervisorCore()
    child = Child(core, spec())
    line = decision(child.fail(failure=None))
    assert line.event == "restart_scheduled" and line.fields["phase"] == "normal"
    assert render(line.event, {**line.fields, "next_attempt_at": "T"}).startswith(
        "child exchange:bybit:spot stopped by itself after 0.0s; restart 1 in")


# --- stale reports, heartbeat, stop ----------------------------------------------------------


def test_stale_reports_and_timers_are_ignored():
    core = SupervisorCore(rng=random.Random(4))
    child = Child(core, spec())
    first = child.fail()
    child.restart()
    assert core.exited(child.id, 1, child.now, BOOM) == []  # a late report about incarnation 1
    assert core.timer(only(first, Schedule).timer, child.now) == []  # its restart timer again
    assert core.started(child.id, 1, child.now, healthy=True) == []
    assert core.status(child.now)["children"][0]["incarnation"] == 2


def test_heartbeat_pings_and_a_missing_pong_kills_and_restarts_as_hung():
    policy = RestartPolicy(heartbeat_every=10.0, hung_after=5.0)
    core = SupervisorCore(rng=random.Random(1))
    effects = core.add(spec(policy=policy), 0.0)
    assert only(effects, Schedule) == Schedule(10.0, HeartbeatDue("exchange:bybit:spot", 1))
    core.started("exchange:bybit:spot", 1, 0.0, healthy=True)
    effects = core.timer(HeartbeatDue("exchange:bybit:spot", 1), 10.0)
    assert only(effects, SendHeartbeat) == SendHeartbeat("exchange:bybit:spot", 1, 1)
    assert only(effects, Schedule) == Schedule(5.0, HeartbeatReplyDue("exchange:bybit:spot", 1, 1))
    assert core.pong("exchange:bybit:spot", 1, 1, 10.01) == [Schedule(10.0, HeartbeatDue("exchange:bybit:spot", 1))]
    assert core.timer(HeartbeatReplyDue("exchange:bybit:spot", 1, 1), 15.0) == []  # answered in time
    core.timer(HeartbeatDue("exchange:bybit:spot", 1), 20.01)
    effects = core.timer(HeartbeatReplyDue("exchange:bybit:spot", 1, 2), 25.01)
    line, kill = decision(effects), only(effects, Kill)
    assert line.event == "hung_detected" and line.fields["phase"] == "hung"
    assert render(line.event, line.fields) == (
        "child exchange:bybit:spot incarnation 1 did not answer ping 2 within 5s; killing its greenlet")
    assert kill.failure == Failure("hung", "ChildHung", "no pong to ping 2 within 5s", "hung")
    line = decision(core.exited("exchange:bybit:spot", 1, 25.01, kill.failure, pending=3))
    assert line.event == "restart_scheduled"
    assert (line.fields["phase"], line.fields["reason"], line.fields["pending"]) == ("hung", "hung", 3)


def test_adding_a_child_twice_is_refused():
    core = SupervisorCore()
    Child(core, spec("a"))
    with pytest.raises(ValueError, match="child 'a' already exists"):
        core.add(spec("a"), 1.0)


def test_shutdown_stops_a_child_then_kills_it_after_the_timeout():
    core = SupervisorCore()
    child = Child(core, spec("a"))
    assert core.begin_shutdown() == ["a"]
    assert core.stop("a", 1.0, timeout=0.5) == [Stop("a", 1)]
    effects = core.timer(StopDue("a", 1), 1.5)
    assert decision(effects).event == "shutdown_killed"
    kill = only(effects, Kill)
    effects = core.exited("a", 1, 1.5, kill.failure)
    line = decision(effects)
    assert line.event == "child_stopped"
    assert render(line.event, line.fields) == (
        "child a was killed (ShutdownTimeout: did not stop within 0.5s) after 1.5s; shutdown")
    assert DropStash("a", "exchange_stream") in effects
    assert core.status(1.5)["children"][0]["state"] == "stopped"
    assert child.inc == 1


def test_shutdown_of_a_child_that_backs_off_cancels_its_restart():
    core = SupervisorCore(rng=random.Random(1))
    child = Child(core, spec("a"))
    first = child.fail(after=2.0)
    core.begin_shutdown()
    effects = core.stop("a", 2.0, timeout=0.5)
    line = decision(effects)
    assert line.event == "child_stopped"
    assert render(line.event, line.fields) == "child a stopped while down (shutdown)"
    assert DropStash("a", "exchange_stream") in effects
    assert core.timer(only(first, Schedule).timer, 3.0) == []


def test_shutdown_returns_reverse_start_order_and_nothing_restarts():
    core = SupervisorCore()
    a, b = Child(core, spec("a")), Child(core, spec("b"))
    Child(core, spec("c"))
    first = a.fail()
    assert core.begin_shutdown() == ["c", "b", "a"]
    assert core.timer(only(first, Schedule).timer, 1.0) == []
    line = decision(b.fail())
    assert line.event == "child_failed" and line.fields["stop_reason"] == "shutdown"


def test_every_decision_line_carries_the_operator_fields_and_status_is_json():
    core = SupervisorCore(rng=random.Random(8))
    child = Child(core, spec(policy=RestartPolicy(max_failures=2, heartbeat_every=None)))
    lines = [decision(child.fail(after=1.0)), decision(child.restart()), decision(child.fail(after=1.0))]
    lines.append(decision(child.restart(healthy=False)))
    lines.append(decision(child.healthy()))
    assert [line.event for line in lines] == [
        "restart_scheduled", "restarted", "circuit_opened", "circuit_half_open", "circuit_closed"]
    for line in lines:
        assert LOG_KEYS <= set(line.fields)
        assert render(line.event, line.fields)
    json.dumps(core.status(child.now))


def test_the_core_and_the_decision_log_import_neither_gevent_nor_pykka():
    package = Path(__file__).resolve().parents[1] / "_supervision"
    for module in ("core.py", "decision_log.py"):
        tree = ast.parse((package / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {name for name in imported if name.split(".")[0] in ("gevent", "pykka", "actors")}, module
        assert "_supervision.shell" not in imported, module
