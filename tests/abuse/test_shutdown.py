"""Row: SIGTERM with a fleet connected. A gateway of its own; the last row of a run (conftest.py)."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request

from tests.abuse.fleet import Fleet, Gateway, RawWS, log_problems, report, wait_until

HINT = re.compile(r"server shutting down; reconnect in (\d+)ms")


def test_sigterm_drains_every_client_with_1001_and_a_hint_and_exits_0():
    gw = Gateway({"SHUTDOWN_TIMEOUT": "10000"})
    fleet = Fleet(gw, 50, prefix="sd")
    try:
        gw.start()
        fleet.start()
        report("--- SIGTERM")
        fleet.publish_round()
        fleet.wait_delivered()
        assert not fleet.lost()
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        health = None
        while time.monotonic() - started < 5:
            try:
                urllib.request.urlopen(gw.http + "/health", timeout=2)
            except urllib.error.HTTPError as err:
                health = (err.code, time.monotonic() - started, json.loads(err.read())["status"])
                break
            except OSError:
                break
            time.sleep(0.002)
        try:
            late = RawWS.open(gw, "latecomer", timeout=2)
            newcomer = f"{late.status} {json.loads(late.body()).get('error')}" if late.status else "no answer"
            late.close()
        except OSError as exc:
            newcomer = type(exc).__name__
        wait_until(lambda: all(nb.closed is not None for nb in fleet.neighbours), 15, "every neighbour closed")
        everyone = time.monotonic() - started
        code = gw.proc.wait(15)
        exited = time.monotonic() - started
        closes = [nb.closed for nb in fleet.neighbours]
        assert health is not None and health[0] == 503, health
        assert {c[0] for c in closes} == {1001}, closes[:5]
        hints = [HINT.fullmatch(c[1]) for c in closes]
        assert all(hints), closes[:5]
        delays = sorted(int(h.group(1)) for h in hints)
        assert 0 <= delays[0] and delays[-1] < 5000 and len(set(delays)) > len(delays) // 2  # jittered
        assert code == 0
        stopped = [json.loads(line) for line in gw.lines if '"stopped"' in line]
        assert stopped and stopped[-1].get("unclosed") == 0, stopped
        problems = log_problems(gw, 0)
        assert not problems, problems[:5]
        report(f"SIGTERM: /health {health[0]} ({health[2]}) {health[1] * 1000:.1f} ms after the signal; a new "
               f"upgrade meanwhile: {newcomer}; all {len(closes)} neighbours closed 1001 with a reconnect hint "
               f"({delays[0]}-{delays[-1]} ms, {len(set(delays))} distinct) within {everyone:.2f} s; exit code "
               f"{code} after {exited:.2f} s; every publication before the signal delivered once")
    finally:
        fleet.stop()
        gw.stop()
