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

ROOT = Path(__file__).resolve().parents[2]
_count = 0


def _dump() -> None:
    global _count
    _count += 1
    if not tracemalloc.is_tracing():
        tracemalloc.start(25)
    out = Path(os.environ.get("TRACEMALLOC_DIR", ".")) / f"snapshot-{_count}.bin"
    tracemalloc.take_snapshot().dump(str(out))


gevent.signal_handler(signal.SIGUSR1, _dump)
sys.path.insert(0, str(ROOT))
sys.argv = [str(ROOT / "app.py")]
runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
