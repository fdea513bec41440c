"""Rows: /health, /metrics and /ws/stats under load; nothing private on the open endpoints."""

from __future__ import annotations

import json
import statistics
import time

from tests.abuse.fleet import FLEET_SIZE, SERVICE_KEY, Row


def test_probes_under_load_answer_and_leak_no_user_or_token(main_gw, fleet):
    with Row(fleet, "probes under load", publish_every=0.1) as row:
        took: dict[str, list[float]] = {"/health": [], "/metrics": [], "/ws/stats": []}
        bodies: dict[str, bytes] = {}
        for _ in range(20):
            for path in took:
                started = time.monotonic()
                status, _, body = main_gw.get(path)
                took[path].append(time.monotonic() - started)
                assert status == 200, (path, status, body[:200])
                bodies[path] = body
        health = json.loads(bodies["/health"])
        assert health["status"] == "ok" and health["connections"] >= FLEET_SIZE
        metrics = bodies["/metrics"].decode()
        open_stats = json.loads(bodies["/ws/stats"])
        assert "connectionsByUser" not in open_stats and open_stats["users"] >= FLEET_SIZE
        for nb in fleet.neighbours:
            assert nb.user not in metrics and nb.user not in bodies["/ws/stats"].decode()
            for part in nb.token.split(".")[1:]:
                assert part not in metrics and part not in bodies["/ws/stats"].decode()
        assert SERVICE_KEY not in metrics
        service = main_gw.stats()
        assert all(service["connectionsByUser"].get(nb.user) == 1 for nb in fleet.neighbours)
        for path, times in took.items():
            row.report(f"{path}: 20 requests, median {statistics.median(times) * 1000:.1f} ms, "
                       f"max {max(times) * 1000:.1f} ms")
