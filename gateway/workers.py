"""Several gateway processes on one port (``WORKERS=N``): the parent that runs them.

One Python process uses one core and, here, at most 20,000 descriptors.
With ``WORKERS=N`` the command that starts the gateway becomes a small
parent that starts N workers (``python app.py`` with ``GATEWAY_WORKER=i``)
and serves nothing itself. Each worker is a whole gateway:

* it binds the public port with ``SO_REUSEPORT``, so the kernel spreads new
  connections over the workers (by a hash of the client's address and port);
* it also serves alone on ``WORKER_PORTS_FROM + i`` (default ``PORT + 1 + i``):
  Prometheus scrapes each worker there, and ``/ws/stats`` there is that
  worker's own;
* it keeps its own exchange streams (as separate nodes do, docs/scale-out.md)
  and reaches the other workers only through the Redis broker, which is
  why ``WORKERS > 1`` requires ``REDIS_URL``: a publication, a private
  channel's subscribers and a user's connection count span the workers.

The parent restarts a worker that exits with the exchange streams'
backoff policy (``RESTART_BASE``/``RESTART_CAP``/``RESTART_FLOOR``), logging
each exit and restart; on SIGTERM/SIGINT it passes the signal on (each
worker drains its clients with 1001) and exits when they have, within
``SHUTDOWN_TIMEOUT`` plus a grace period.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import gevent
from gevent.event import Event

from gateway.config import Settings
from supervision import RestartPolicy

__all__ = ["WORKER_ENV", "WorkerPool", "worker_index"]

log = logging.getLogger("gateway.workers")

WORKER_ENV = "GATEWAY_WORKER"
APP = Path(__file__).resolve().parents[1] / "app.py"
_KILL_GRACE = 5.0  # seconds after SHUTDOWN_TIMEOUT before a worker that has not exited is killed


def worker_index() -> int | None:
    """This process's worker number, or None in a single-process gateway (or the parent)."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw else None


class WorkerPool:
    """Starts ``settings.workers`` gateway processes, restarts any that exits, stops them on request."""

    def __init__(self, settings: Settings, *, app: Path = APP) -> None:
        self.settings = settings
        self.app = app
        self.policy = RestartPolicy(base=settings.restart_base, cap=settings.restart_cap,
                                    floor=settings.restart_floor, reset_after=settings.restart_reset_after)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self.stopping = False
        self._rng = random.Random()
        self._watchers: list[gevent.Greenlet] = []

    def port_of(self, index: int) -> int:
        return self.settings.own_port(index)

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start every worker and wait until each answers HTTP on its own port."""
        for i in range(self.settings.workers):
            self._spawn(i)
        deadline = time.monotonic() + ready_timeout
        for i in range(self.settings.workers):
            self._wait_ready(i, deadline)
        self._watchers = [gevent.spawn(self._watch, i) for i in range(self.settings.workers)]

    def _spawn(self, index: int) -> None:
        env = {**os.environ, WORKER_ENV: str(index)}
        # Workers inherit stdout/stderr (one log stream, each line tagged worker=i) and
        # the working directory (an installed app.py lives in site-packages; .demo/ does not).
        self.procs[index] = subprocess.Popen([sys.executable, str(self.app)], env=env)

    def _wait_ready(self, index: int, deadline: float) -> None:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "") else "127.0.0.1"
        url = f"http://{host}:{self.port_of(index)}/health"
        while time.monotonic() < deadline:
            if self.procs[index].poll() is not None:
                raise RuntimeError(f"worker {index} exited with {self.procs[index].returncode} while starting")
            try:
                urllib.request.urlopen(url, timeout=2).read()
                return
            except urllib.error.HTTPError:
                return  # 503 while the exchange streams connect: it is serving
            except OSError:
                gevent.sleep(0.05)
        raise RuntimeError(f"worker {index} did not answer on port {self.port_of(index)}")

    def _watch(self, index: int) -> None:
        attempt = 0
        while True:
            proc = self.procs[index]
            started = time.monotonic()
            code = proc.wait()
            if self.stopping:
                return
            uptime = time.monotonic() - started
            if uptime >= self.policy.reset_after:
                attempt = 0
            delay = self.policy.delay(attempt, self._rng)
            attempt += 1
            log.error("worker %d exited with %s after %.1f s; restarting in %.2f s", index, code, uptime, delay,
                      extra={"fields": {"worker_index": index, "exit_code": code, "uptime_s": round(uptime, 3),
                                        "restart_in_s": round(delay, 3), "attempt": attempt}})
            gevent.sleep(delay)
            if self.stopping:
                return
            self._spawn(index)
            self.restarts += 1
            log.info("worker %d restarted (pid %d)", index, self.procs[index].pid,
                     extra={"fields": {"worker_index": index, "pid": self.procs[index].pid}})

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Pass ``sig`` to every worker and wait for them; returns 0 when all exited cleanly."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)
        deadline = time.monotonic() + self.settings.shutdown_timeout + _KILL_GRACE
        worst = 0
        for index, proc in self.procs.items():
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time: killed", index)
                proc.kill()
                code = proc.wait()
            worst = worst or code
        gevent.killall(self._watchers, block=False)
        return 0 if worst == 0 else 1

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop; the parent's whole life."""
        try:
            self.start()
        except RuntimeError as exc:
            log.critical("cannot start the workers: %s", exc)
            self.stop()  # the ones that did start
            # A worker that found a misconfiguration (a port in use) said so in one line and exited 2.
            return 2 if any(proc.returncode == 2 for proc in self.procs.values()) else 1
        log.info("listening on http://%s:%d (websocket path %s) with %d workers; worker i alone on port %d + i",
                 self.settings.host, self.settings.port, self.settings.ws_path, self.settings.workers,
                 self.settings.own_port(0))
        done = Event()
        result: list[int] = []

        def stop_workers() -> None:
            result.append(self.stop(signal.SIGTERM))
            done.set()

        def on_signal(signum: int) -> None:
            log.info("received %s: stopping the workers", signal.Signals(signum).name)
            if not self.stopping:
                gevent.spawn(stop_workers)

        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, on_signal, signum)
        done.wait()
        return result[0]
