"""Smoke test of the benchmark suite: ``bench/run.py --quick`` runs every scenario and its peers.

Real processes (gateway, firehose, simulator, peers, load generators) with a
handful of clients for about half a minute. It checks that every scenario
and peer produced its numbers, not how good they are: there is no timing
threshold here (the numbers live in docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("websockets", "node_ws")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench/run.py --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "(a) burst fan-out" in proc.stdout  # the readable table is printed too
    return json.loads(out.read_text())


pytestmark = pytest.mark.slow


def test_every_scenario_and_target_is_reported(results: dict) -> None:
    assert results["errors"] == {}
    assert set(results["scenarios"]) == {"a_burst", "b_paced", "c_capacity", "d_churn", "e_slow", "f_ingest"}
    assert set(results["targets"]) == {"a", "b", "c", "d", "e", "f"}
    assert results["machine"]["nproc"] > 0 and results["machine"]["python"]


def test_burst_fan_out_numbers(results: dict) -> None:
    a = results["scenarios"]["a_burst"]
    for server in ("gateway", *PEERS):
        assert a[server], server
        for row in a[server]:
            assert row["delivered_per_s"] > 0 and row["server_us_per_delivery"] > 0, (server, row)
            assert row["clients_open"] == row["clients"], (server, row)
    assert all(a["ratios"][str(r["clients"])][f"vs_{p}"] > 0 for r in a["gateway"] if r["clients"] > 1 for p in PEERS)


def test_paced_latency_numbers(results: dict) -> None:
    b = results["scenarios"]["b_paced"]
    for server in ("gateway", *PEERS):
        row = b[server]
        assert row["delivered_per_s"] > 0, server
        assert 0 < row["p50"] <= row["p99"] <= row["max"] + 0.1, (server, row)
    assert b["p99_ratio_vs_best_peer"] > 0


def test_capacity_and_churn_numbers(results: dict) -> None:
    c = results["scenarios"]["c_capacity"]
    for server in ("gateway", *PEERS):
        for row in c[server]:
            assert row["open"] == row["connections"] > 0, (server, row)
            assert row["kib_per_connection"] > 0, (server, row)
            assert row["pings_answered_during_wait"] > 0, (server, row)  # heartbeats were running
    d = results["scenarios"]["d_churn"]["gateway"]
    assert d["cycles"] > 0 and d["cycles_per_s"] > 0 and d["errors"] == 0
    assert d["still_open_after"] == d["open_connections"]


def test_slow_consumer_numbers(results: dict) -> None:
    e = results["scenarios"]["e_slow"]
    for load in ("paced", "burst"):
        row = e[load]
        assert row["slow_clients"] >= 1
        assert row["others_delivered_per_client_per_s"] > 0
        assert sum(row["slow_ends"].values()) == row["slow_clients"]
        assert row["rss_max_kib"] > 0
    assert e["paced"]["others_p99_ms"] > 0


def test_ingest_numbers_and_books(results: dict) -> None:
    f = results["scenarios"]["f_ingest"]
    assert f["gateway"]["symbols"] > 1
    for run in f["gateway"]["runs"]:
        rows = [r for r in run["rows"] if "exchange_per_s" in r]
        assert rows, run
        for row in rows:
            assert row["exchange_per_s"] > 0 and row["server_us_per_msg"] > 0, row
            assert row["client_msgs_per_s"] > 0 and row["samples"] > 0 and row["p99_ms"] >= row["p50_ms"], row
            assert row["clients_open"] == run["clients"], row
        # after the run, with nothing in flight, every client holds the feed's books and every trade
        check = run["correctness"]
        assert check["ok"], check
        assert check["books_equal"] == check["books_checked"] == run["clients"] * f["gateway"]["symbols"]
    for kind, peer in f["peers"].items():  # --quick runs one peer (pybit)
        assert peer["frames_per_s"] > 0 and peer["frames_per_cpu_s"] > 0, (kind, peer)
        assert peer["correctness"]["ok"], (kind, peer["correctness"])
    assert f["peers"], "no feed-handler peer ran"
