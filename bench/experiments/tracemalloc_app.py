"""Experiment (evidence only, not a gateway variant): app.py with tracemalloc snapshots on SIGUSR1.

    PYTHONTRACEMALLOC=25 python bench/experiments/tracemalloc_app.py   # same env as app.py
    kill -USR1 <pid>      # writes $TRACEMALLOC_DIR/snapshot-N.bin (N = 1, 2, ...)

``bench/experiments/memory_breakdown.py`` starts it, opens idle connections
between two snapshots and prints where the bytes per connection went.
"""

import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402

# BENCH_GATEWAY_APP: another checkout's app.py (a clean export of a commit), as bench/run.py --gateway-app.
APP = Path(os.environ.get("BENCH_GATEWAY_APP") or Path(__file__).resolve().parents[2] / "app.py")
_count = 0


def _dump() -> None:
    global _count
    _count += 1
    if not tracemalloc.is_tracing():
        tracemalloc.start(25)
    out = Path(os.environ.get("TRACEMALLOC_DIR", ".")) / f"snapshot-{_count}.bin"
    tracemalloc.take_snapshot().dump(str(out))


gevent.signal_handler(signal.SIGUSR1, _dump)
sys.path.insert(0, str(APP.parent))
sys.argv = [str(APP)]
runpy.run_path(str(APP), run_name="__main__")
