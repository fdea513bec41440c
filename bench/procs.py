"""Processes of a benchmark run: the gateway, the simulator, peers, load generators.

Everything here is synchronous (the orchestrator, ``bench/run.py``, drives
the asynchronous processes over pipes). CPU time and resident memory are
read from ``/proc/PID/stat`` and ``/proc/PID/status``.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.redis_server import free_port_range

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PY = sys.executable

__all__ = ["Gateway", "JsonProc", "cpu_seconds", "free_port", "raise_nofile", "rss_kib", "total_cpu_seconds",
           "total_rss_kib"]


def raise_nofile() -> int:
    """Soft open-file limit up to the hard one (children inherit it); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (threads included)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def total_cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def total_rss_kib(pids: list[int]) -> int:
    return sum(rss_kib(p) for p in pids)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (a ``WORKERS=N`` gateway's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def wait_http(port: int, path: str = "/health", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer (503 while exchange streams connect) means it is serving
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


def http_json(port: int, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


class JsonProc:
    """A child that speaks one JSON object per line on stdin/stdout."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT,
                 stderr: Any = None, name: str = "") -> None:
        self.name = name or Path(args[1] if len(args) > 1 else args[0]).stem
        self.proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, obj: dict[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 120.0) -> dict[str, Any]:
        if not self._sel.select(timeout):
            raise TimeoutError(f"{self.name}: no answer within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited with {self.proc.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, obj: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        self.send(obj)
        return self.recv(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait(5)


def call_all(procs: list[JsonProc], obj: dict[str, Any], timeout: float = 120.0) -> list[dict[str, Any]]:
    """Send one command to every process, then collect every answer (they run in parallel)."""
    for p in procs:
        p.send(obj)
    return [p.recv(timeout) for p in procs]


class Gateway:
    """``python app.py`` on a free port with a throwaway secret; output to a log file.

    Runs at ``LOG_LEVEL=WARNING`` unless told otherwise (INFO would log
    every connection); readiness is an HTTP answer from ``/health``.
    """

    def __init__(self, env: dict[str, str], log_path: Path, app: Path | None = None, *, workers: int = 1,
                 redis_url: str | None = None) -> None:
        """``app``: another checkout's app.py (e.g. a clean ``git worktree`` of a commit) instead of ours.

        ``workers`` > 1: ``WORKERS=N`` processes on one port over the Redis broker at ``redis_url``.
        """
        self.app = app or ROOT / "app.py"
        self.secret = secrets.token_urlsafe(40)
        self.workers = workers
        self.port = free_port() if workers == 1 else free_port_range(workers + 1)
        if workers > 1:
            if not redis_url:
                raise ValueError("workers > 1 needs a redis_url")
            env = {"WORKERS": str(workers), "REDIS_URL": redis_url, **env}
        self.env = {
            **os.environ,
            "JWT_SECRET": self.secret,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
            "MARKET_SOURCE": "none",
            "WS_MAX_CONNECTIONS_PER_USER": "1000000",
            **env,
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([PY, str(self.app)], cwd=self.app.parent, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_http(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError("gateway did not start; see " + str(self.log_path)) from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        """Every process of the gateway: the one process, or the parent and its workers."""
        return [self.pid, *children(self.pid)] if self.workers > 1 else [self.pid]

    @property
    def own_ports(self) -> list[int]:
        """Each worker's port of its own (``PORT + 1 + i``); the public port for one process."""
        return [self.port + 1 + i for i in range(self.workers)] if self.workers > 1 else [self.port]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def stats(self) -> Any:
        return http_json(self.port, "/ws/stats")

    def metrics(self, *names: str) -> dict[str, float]:
        """Samples of the named metric families from /metrics: {'ws_close_codes_total{code="4001"}': 3.0, ...}.

        With workers, each worker's own port is scraped and the samples are summed.
        """
        out: dict[str, float] = {}
        for port in self.own_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            for line in text.splitlines():
                if line and not line.startswith("#") and line.startswith(names):
                    key, _, value = line.rpartition(" ")
                    if not key.split("{", 1)[0].endswith("_created"):
                        out[key] = out.get(key, 0.0) + float(value)
        return out
