"""Where a gateway connection's resident memory goes (evidence for docs/performance.md).

    python bench/experiments/memory_breakdown.py [--connections 5000] [--channel trades] [--gateway-app PATH]

Starts the gateway under tracemalloc (``tracemalloc_app.py``), snapshots it,
opens N authenticated, subscribed, idle connections, waits for a heartbeat,
snapshots again, and prints RSS per connection beside the Python-allocated
bytes per connection, grouped by the source line that allocated them
(tracemalloc sees the heap of Python objects and greenlet stack copies; RSS
also counts allocator slack and C allocations it cannot see).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.procs import PY, Gateway, JsonProc, raise_nofile, rss_kib

CHECKOUT = Path(__file__).resolve().parents[2]

HERE = Path(__file__).resolve().parent


def snapshot(gw: Gateway, out: Path, n: int) -> tracemalloc.Snapshot:
    os.kill(gw.pid, signal.SIGUSR1)
    path = out / f"snapshot-{n}.bin"
    for _ in range(600):
        if path.exists():
            time.sleep(0.5)
            return tracemalloc.Snapshot.load(str(path))
        time.sleep(0.1)
    raise RuntimeError("no snapshot written")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--channel", default="trades")
    p.add_argument("--gateway-app", default="", help="another checkout's app.py (as bench/run.py --gateway-app)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "artifacts" / "bench" / "memory"))
    args = p.parse_args()
    raise_nofile()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("snapshot-*.bin"):
        old.unlink()
    gw = Gateway({"MARKET_SOURCE": "none", "WS_HEARTBEAT_INTERVAL": "2000", "PYTHONTRACEMALLOC": "1",
                  "TRACEMALLOC_DIR": str(out), "BENCH_GATEWAY_APP": args.gateway_app},
                 out / "gateway.log", app=HERE / "tracemalloc_app.py").start()
    load = JsonProc([PY, str(HERE.parent / "loadgen.py")], name="loadgen")
    try:
        time.sleep(1)
        before = snapshot(gw, out, 1)
        rss0 = rss_kib(gw.pid)
        load.send({"host": "127.0.0.1", "port": gw.port, "count": args.connections, "path": "/ws?token={token}",
                   "jwt_secret": gw.secret, "user_prefix": "mem-", "hello": True,
                   "subscribe": [{"type": "subscribe", "channel": args.channel}], "mode": "idle",
                   "local_addrs": ["127.0.0.250"]})
        load.recv(30)
        print(load.call({"cmd": "connect"}, timeout=600))
        time.sleep(3)
        rss1 = rss_kib(gw.pid)
        after = snapshot(gw, out, 2)
    finally:
        load.stop()
        gw.stop()
    n = args.connections
    stats = after.compare_to(before, "lineno")
    traced = sum(s.size_diff for s in stats)
    print(f"RSS: {rss0} -> {rss1} KiB: {(rss1 - rss0) / n:.1f} KiB per connection (tracemalloc itself adds some)")
    print(f"Python allocations traced: {traced / 1024 / n:.1f} KiB per connection")
    print(f"{'KiB/conn':>9} {'blocks/conn':>11}  allocated at")
    for s in stats[:30]:
        frame = s.traceback[0]
        where = frame.filename.removeprefix(f"{CHECKOUT}/")
        print(f"{s.size_diff / 1024 / n:9.2f} {s.count_diff / n:11.1f}  {where}:{frame.lineno}")


if __name__ == "__main__":
    main()
