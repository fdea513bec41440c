"""Restart latency: from a child's failure to its next incarnation running.

A supervised actor raises in a tell handler; the clock starts just before
the raise and stops when the supervisor logs the next incarnation up (its
``restarted`` decision line, after the new ``on_start``). The backoff is the minimum (``base``
0, ``floor`` from ``--floor``, default 0), so what is measured is the
machinery: pykka's failure path, the exit report, one decision, the timer,
the factory, ``on_start``, the start report. Logging is on (text format to
/dev/null) because production pays for it too.

    .venv/bin/python bench/restart_latency.py --restarts 200
    .venv/bin/python bench/restart_latency.py --restarts 50 --floor 0.1
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import gevent.event

from gateway.logs import configure_logging
from supervision import ChildSpec, RestartPolicy, SupervisedActor, Supervisor, SupervisorPolicy

failed_at: list[float] = []


class UpAt(logging.Handler):
    """When each incarnation came up, from the supervisor's decision lines."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[int, float] = {}
        self.changed = gevent.event.Event()

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", {})
        if fields.get("event") in ("child_started", "restarted"):
            self.at[fields["incarnation"]] = time.perf_counter()
            self.changed.set()


class Crasher(SupervisedActor):
    def on_receive(self, message):
        if message == "crash":
            failed_at.append(time.perf_counter())
            raise RuntimeError("bench crash")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=200)
    parser.add_argument("--floor", type=float, default=0.0, help="minimum backoff in seconds")
    args = parser.parse_args()

    with open(os.devnull, "w") as devnull:
        configure_logging("text", "INFO", stream=devnull)
        latencies = run(args.restarts, args.floor)

    latencies_ms = sorted(x * 1000 for x in latencies)
    p99 = statistics.quantiles(latencies_ms, n=100)[98] if len(latencies_ms) >= 2 else latencies_ms[0]
    print(f"restarts={len(latencies_ms)} floor={args.floor * 1000:g}ms "
          f"median={statistics.median(latencies_ms):.3f}ms p99={p99:.3f}ms "
          f"min={latencies_ms[0]:.3f}ms max={latencies_ms[-1]:.3f}ms")


def run(restarts: int, floor: float) -> list[float]:
    policy = RestartPolicy(base=0.0, cap=max(floor, 0.001), floor=floor, cooldown=max(floor, 0.001),
                           reset_after=0.0, max_failures=10**9, heartbeat_every=None)
    up = UpAt()
    decisions = logging.getLogger("gateway.supervisor")
    decisions.addHandler(up)
    supervisor = Supervisor("bench", policy=SupervisorPolicy(intensity=10**9), on_escalate=print)
    handle = supervisor.start_child(ChildSpec("crasher", "bench", Crasher.start, policy=policy))
    latencies = []
    try:
        for incarnation in range(1, restarts + 2):
            while incarnation not in up.at:
                up.changed.clear()
                if not up.changed.wait(5.0):
                    raise SystemExit(f"incarnation {incarnation} never came up")
            if incarnation > 1:
                latencies.append(up.at[incarnation] - failed_at[incarnation - 2])
            if incarnation <= restarts:
                handle.tell("crash")
    finally:
        supervisor.shutdown(1.0)
        decisions.removeHandler(up)
    return latencies


if __name__ == "__main__":
    main()
