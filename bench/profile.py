"""py-spy on a running process: collapsed stacks to a file, and the hot functions from them.

``PySpy(pid, prefix, seconds)`` starts ``py-spy record --format raw`` in the
background (``--nonblocking``: the target is not paused to sample, so the
numbers it is measured with barely move; ``blocking=True`` pauses it for
each sample, which reads consistent stacks: a non-blocking sample of a
process that runs flat out often catches a stack half-updated and credits
the wrong function, as it did for scenario (f)); ``finish()`` waits for it and
returns the functions with the most samples, by own time (the leaf frame)
and by inclusive time (anywhere on the stack). The collapsed file loads in
speedscope or ``flamegraph.pl``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Frames under the checkout are shown relative to it, wherever it was cloned.
_CHECKOUT = str(Path(__file__).resolve().parents[1]) + "/"

__all__ = ["PySpy", "summarize"]

_LINE = re.compile(r":\d+\)$")


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame(frame: str) -> str:
    """``sendall (/…/site-packages/gevent/_socketcommon.py:699)`` → ``sendall (gevent/_socketcommon.py)``."""
    frame = _LINE.sub(")", frame.strip())
    for marker in ("site-packages/", _CHECKOUT, "lib/python3.11/"):
        if marker in frame:
            name, _, path = frame.partition(" (")
            return f"{name} ({path.split(marker, 1)[1]}"
    return frame


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first entry names the process/thread
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "file": str(path),
        "samples": total,
        "own": [[f, pct(c)] for f, c in own.most_common(top)],
        "inclusive": [[f, pct(c)] for f, c in inclusive.most_common(top + 10)],
    }


class PySpy:
    def __init__(self, pid: int, prefix: Path, seconds: float, rate: int = 200, *, blocking: bool = False,
                 native: bool = False) -> None:
        """``native``: C frames too (compiled modules' own functions, e.g. market/_bybit_fast)."""
        self.path = prefix.with_suffix(".collapsed.txt")
        self.proc: subprocess.Popen[str] | None = None
        exe = _py_spy()
        self.error = None if exe else "py-spy not installed (pip install -r bench/requirements.txt)"
        if exe:
            self.proc = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
                 *(() if blocking else ("--nonblocking",)), *(("--native",) if native else ()),
                 "--format", "raw", "-o", str(self.path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, Any]:
        if self.proc is None:
            return {"error": self.error}
        _, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0 or not self.path.exists():
            return {"error": f"py-spy exited {self.proc.returncode}: {err[-300:]}"}
        return summarize(self.path)
