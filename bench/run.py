"""Every gateway benchmark and its peers in one run: ``python bench/run.py`` (``make bench``).

Scenarios go through the real market-data path (exchange frame → exchange
stream actor, one message per socket read → market publisher → channel,
called directly → each connection's outbox → socket):

  a  burst fan-out   N clients on one symbol; a Bybit-protocol firehose
                     (bench/firehose.py) sends tickers as fast as the
                     pipeline takes them: delivered messages/s, server CPU
                     per delivery. Peers: asyncio ``websockets`` and Node.js
                     ``ws`` broadcasting ~200-byte messages as fast as they can.
  b  paced           clients over 4 symbols, the simulator at exchange-like
                     rates: latency from the exchange frame's arrival at the
                     gateway (``data.receivedAt``) to the client's receive.
                     Peers: the same per-client rate and message size.
  c  capacity        authenticated, subscribed, idle connections with
                     heartbeats: resident memory per connection (gateway and peers;
                     the gateway as --capacity-workers processes on one port over
                     a redis-server, RSS summed over all of them).
  d  churn           connect + authenticate + subscribe + close per second
                     while the first capacity step's connections stay open, on a
                     gateway of its own per --churn-workers process count.
  e  slow consumers  as b, with 1% of clients not reading: the others' p99
                     and delivered rate, what the slow ones get, gateway memory.
  f  ingest          a Bybit-protocol feed (bench/ingest_feed.py) pushes S
                     symbols × (orderbook.50, publicTrade, tickers) at rising
                     rates; 1 and 10 clients take everything: the highest
                     exchange rate sustained, server CPU per exchange
                     message, p99 from the feed's write to the client, books
                     checked against the feed's truth. Peers: cryptofeed, ccxt
                     and pybit on the same feed (bench/ingest.py).

Load generators are separate processes (bench/loadgen.py, asyncio + uvloop)
and report their own CPU. Results: ``artifacts/bench/results.json`` and a
table with ratios on stdout. ``--quick`` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ingest
from bench.lgclient import Histogram
from bench.procs import (
    BENCH,
    PY,
    ROOT,
    Gateway,
    JsonProc,
    call_all,
    cpu_seconds,
    http_json,
    raise_nofile,
    rss_kib,
    total_cpu_seconds,
    total_rss_kib,
)
from bench.profile import PySpy

NODE_DIR = BENCH / "peers" / "node"
PEERS = ("websockets", "node_ws")
PER_WORKER = 7000  # connections per load-generator process (its own open-file limit, one core each)
FD_RESERVE = 400  # descriptors the gateway keeps for itself, the churn and the exchange streams
QUEUE_BYTES = 1 << 20  # the gateway's WS_QUEUE_BYTES default (the benchmark does not change it)


# --- machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"


def git_state(tree: Path) -> dict[str, Any]:
    """The commit the gateway ran from, and files changed in that tree but not committed."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                                  timeout=10).stdout.rstrip("\n")
        except (OSError, subprocess.TimeoutExpired):
            return ""

    stamp = tree / ".bench-commit"  # an exported tree (git archive) names its commit here
    if stamp.exists():
        commit, _, subject = stamp.read_text().strip().partition(" ")
        return {"tree": str(tree), "commit": commit, "subject": subject, "modified": []}
    return {"tree": str(tree), "commit": git("rev-parse", "--short", "HEAD"),
            "subject": git("log", "-1", "--format=%s")[:120],
            "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]}


def machine() -> dict[str, Any]:
    import resource

    try:
        import websockets

        ws_version = websockets.__version__
    except ImportError:
        ws_version = "not installed"
    node_ws = "not installed"
    pkg = NODE_DIR / "node_modules" / "ws" / "package.json"
    if pkg.exists():
        node_ws = json.loads(pkg.read_text())["version"]
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed (plain asyncio)"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": _mem_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _version(["node", "--version"]),
        "websockets": ws_version,
        "node_ws": node_ws,
        "uvloop_loadgen": uv,
        "nofile_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "ip_local_port_range": Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split(),
    }


def tcp_mem_kib() -> int:
    """Kernel memory of every TCP socket on the machine (/proc/net/sockstat, pages of 4 KiB)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()
            return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


def busy_cores_snapshot() -> tuple[float, float]:
    """(busy seconds of every CPU, wall time) from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


# --- setup ---------------------------------------------------------------------------------


def _pinned(name: str) -> str:
    """``name==version`` as bench/requirements.txt pins it."""
    for line in (BENCH / "requirements.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec.split("==", 1)[0].strip().lower() == name:
            return spec
    return name


def ensure_feed_handlers(peers: list[str]) -> dict[str, str]:
    """Install the (f) peers' libraries if missing (bench/requirements.txt's pins); {peer: reason} for the unusable."""
    import importlib.util

    missing: dict[str, str] = {}
    for peer in peers:
        if importlib.util.find_spec(peer) is not None:
            continue
        rc = subprocess.run([PY, "-m", "pip", "install", "--quiet", _pinned(peer)], capture_output=True, text=True)
        if rc.returncode != 0:
            missing[peer] = f"pip install {_pinned(peer)} failed: " + rc.stderr[-300:]
    return missing


def ensure_peers(peers: list[str]) -> dict[str, str]:
    """Install what the peers need if missing (bench/requirements.txt, npm ci); {peer: reason} for the unusable."""
    missing: dict[str, str] = {}
    if "websockets" in peers:
        try:
            import websockets  # noqa: F401
        except ImportError:
            rc = subprocess.run([PY, "-m", "pip", "install", "--quiet", "-r", str(BENCH / "requirements.txt")],
                                capture_output=True, text=True)
            if rc.returncode != 0:
                missing["websockets"] = "pip install -r bench/requirements.txt failed: " + rc.stderr[-300:]
    if "node_ws" in peers:
        if shutil.which("node") is None or shutil.which("npm") is None:
            missing["node_ws"] = "node/npm not found"
        elif not (NODE_DIR / "node_modules" / "ws").exists():
            rc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR,
                                capture_output=True, text=True)
            if rc.returncode != 0:
                missing["node_ws"] = "npm ci failed: " + rc.stderr[-300:]
    return missing


# --- processes ---------------------------------------------------------------------------


class Load:
    """Load-generator processes, each with its own source address 127.0.0.X."""

    _next_ip = 2

    def __init__(self, host_port: int, base: dict[str, Any]) -> None:
        self.port = host_port
        self.base = base
        self.workers: list[JsonProc] = []
        self.slow_worker: JsonProc | None = None

    @classmethod
    def _ip(cls) -> str:
        ip = f"127.0.0.{cls._next_ip}"
        cls._next_ip = 2 + (cls._next_ip - 1) % 250
        return ip

    def add(self, count: int, *, per_worker: int = PER_WORKER, first: dict[str, Any] | None = None) -> dict[str, Any]:
        """Open ``count`` more connections (new worker processes); returns the connect summary.

        ``first`` is extra configuration for the first new worker only (the slow-consumer candidates).
        """
        if count <= 0:
            return {"open": 0, "failed": 0, "seconds": 0.0}
        n = math.ceil(count / per_worker)
        shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
        new = []
        offset = len(self.workers) * 1_000_000
        for i, share in enumerate(shares):
            w = JsonProc([PY, str(BENCH / "loadgen.py")], name=f"loadgen{len(self.workers)}")
            cfg = {"host": "127.0.0.1", "port": self.port, "count": share,
                   "user_prefix": f"bench-{offset + i * 100_000}-", "local_addrs": [self._ip()], **self.base,
                   **(first if first and i == 0 else {})}
            w.send(cfg)
            w.recv(30)
            if first and i == 0:
                self.slow_worker = w
            new.append(w)
            self.workers.append(w)
        t0 = time.perf_counter()
        replies = call_all(new, {"cmd": "connect"}, timeout=600)
        return {"open": sum(r["open"] for r in replies), "failed": sum(r["failed"] for r in replies),
                "seconds": round(time.perf_counter() - t0, 2),
                "errors": [e for r in replies for e in r.get("errors", [])][:5]}

    def call(self, cmd: dict[str, Any], timeout: float = 120) -> list[dict[str, Any]]:
        return call_all(self.workers, cmd, timeout)

    def snap(self) -> dict[str, Any]:
        replies = self.call({"cmd": "snap"}) if self.workers else []
        closes: dict[str, int] = {}
        for r in replies:
            for k, v in r["closes"].items():
                closes[k] = closes.get(k, 0) + v
        return {"messages": sum(r["messages"] for r in replies), "bytes": sum(r["bytes"] for r in replies),
                "cpu": sum(r["cpu"] for r in replies), "open": sum(r["open"] for r in replies),
                "pings": sum(r["pings"] for r in replies), "closes": closes}

    def hist(self) -> dict[str, Any]:
        return Histogram.merge(self.call({"cmd": "hist"}))

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []


class Window:
    """Counters of every process over one measurement window."""

    def __init__(self, load: Load, server_pids: int | list[int], extra_pids: tuple[int, ...] = (),
                 probe: JsonProc | None = None) -> None:
        self.load, self.extra_pids, self.probe = load, extra_pids, probe
        self.server_pids = [server_pids] if isinstance(server_pids, int) else server_pids

    def _snap(self) -> dict[str, Any]:
        snap = {"load": self.load.snap(), "server_cpu": total_cpu_seconds(self.server_pids),
                "extra_cpu": sum(cpu_seconds(p) for p in self.extra_pids), "busy": busy_cores_snapshot()[0],
                "t": time.monotonic()}
        if self.probe is not None:
            snap["probe"] = self.probe.call({"cmd": "stats"})
        return snap

    def median(self, seconds: float, repeat: int) -> dict[str, Any]:
        """``repeat`` consecutive windows; the one with the median delivered rate, and every window's rate."""
        rows = sorted((self.measure(seconds) for _ in range(max(1, repeat))), key=lambda r: r["delivered_per_s"])
        row = rows[len(rows) // 2]
        row["windows_delivered_per_s"] = [r["delivered_per_s"] for r in rows]
        return row

    def measure(self, seconds: float) -> dict[str, Any]:
        a = self._snap()
        time.sleep(seconds)
        b = self._snap()
        dt = b["t"] - a["t"]
        msgs = b["load"]["messages"] - a["load"]["messages"]
        nbytes = b["load"]["bytes"] - a["load"]["bytes"]
        if self.probe is not None:
            msgs += b["probe"]["seen"] - a["probe"]["seen"]
        server = b["server_cpu"] - a["server_cpu"]
        loadgen = b["load"]["cpu"] - a["load"]["cpu"]
        extra = b["extra_cpu"] - a["extra_cpu"]
        if self.probe is not None:
            extra += b["probe"]["cpu"] - a["probe"]["cpu"]
        load_msgs = b["load"]["messages"] - a["load"]["messages"]
        out = {
            "seconds": round(dt, 2),
            "delivered_per_s": round(msgs / dt),
            "server_cpu_cores": round(server / dt, 3),
            "server_us_per_delivery": round(server / msgs * 1e6, 3) if msgs else None,
            "loadgen_cpu_cores": round(loadgen / dt, 3),
            "source_cpu_cores": round(extra / dt, 3),
            "other_cpu_cores": round(max(0.0, (b["busy"] - a["busy"]) - server - loadgen - extra) / dt, 3),
            "bytes_per_message": round(nbytes / load_msgs, 1) if load_msgs else None,
            "clients_open": b["load"]["open"] + (1 if self.probe is not None else 0),
            "closes": b["load"]["closes"],
        }
        if self.probe is not None:
            out["publications_per_s"] = round((b["probe"]["sent"] - a["probe"]["sent"]) / dt)
        return out


def start_peer(kind: str, ping_interval: float, log_dir: Path) -> JsonProc:
    err = open(log_dir / f"peer-{kind}.log", "a")
    if kind == "websockets":
        proc = JsonProc([PY, str(BENCH / "peers" / "ws_peer.py"), "--ping-interval", str(ping_interval)],
                        stderr=err, name=kind)
    else:
        proc = JsonProc(["node", str(NODE_DIR / "server.js"), "--ping-interval", str(ping_interval)],
                        stderr=err, name=kind)
    proc.port = proc.recv(30)["port"]  # type: ignore[attr-defined]  # set on the process handle for later
    return proc


def start_simulator(rate_hz: float, log_dir: Path) -> tuple[subprocess.Popen[str], int]:
    err = open(log_dir / "simulator.log", "a")
    proc = subprocess.Popen([PY, "-m", "simulator", "--port", "0", "--rate-hz", str(rate_hz), "--idle-timeout", "0",
                             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def start_redis() -> Any:
    """A throwaway redis-server for WORKERS > 1 (the workers share state through it)."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server): several gateway "
                           "processes need it; or pass --capacity-workers 1 --churn-workers 1 --gateway-workers 1")
    from tests.redis_server import RedisServer

    return RedisServer().start()


def stop_popen(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def token(secret: str, user: str) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 7200}, secret, algorithm="HS256")


def market_sub(symbol: str = "{symbol}", streams: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"symbol": symbol}
    if streams:
        data["streams"] = streams
    return {"type": "subscribe", "channel": "market-data", "data": data}


# --- scenarios -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out_dir = Path(args.out).parent
        self.log_dir = self.out_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {"scenarios": {}, "errors": {}, "profiles": {}}
        self.peers = [p for p in args.peers.split(",") if p]
        self.nofile = raise_nofile()
        self.app = Path(args.gateway_app) if args.gateway_app else None
        self.chosen = set(args.scenarios.split(","))
        self.slow_burst: dict[str, Any] = {}

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def run(self, name: str, fn: Any) -> None:
        self.log(f"scenario {name}")
        if self.args.wait_quiet:
            self.results.setdefault("background_cores_before", {})[name] = self.wait_quiet()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others' results
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    def wait_quiet(self) -> float:
        """Wait (at most --wait-quiet seconds) until other work on the machine uses < 0.25 cores; return its level."""
        deadline = time.monotonic() + self.args.wait_quiet
        while True:
            b0, t0 = busy_cores_snapshot()
            time.sleep(2.0)
            b1, t1 = busy_cores_snapshot()
            level = round((b1 - b0) / (t1 - t0), 2)
            if level < 0.25 or time.monotonic() > deadline:
                self.log(f"  background load {level} cores")
                return level
            self.log(f"  waiting for a quieter machine: background load {level} cores")

    # -- a: burst fan-out ----------------------------------------------------------------

    def burst_gateway(self) -> list[dict[str, Any]]:
        a = self.args
        hose = JsonProc([PY, str(BENCH / "firehose.py")], stderr=open(self.log_dir / "firehose.log", "a"),
                        name="firehose")
        gw = None
        load = None
        rows = []
        try:
            port = hose.recv(30)["port"]
            gw = Gateway({"MARKET_SOURCE": "bybit", "BYBIT_WS_URL": f"ws://127.0.0.1:{port}/v5/public",
                          "MARKET_CATEGORIES": "spot", "POPULAR_PAIRS": "",
                          # Count mode does not parse frames, so no pings in this scenario.
                          "WS_HEARTBEAT_INTERVAL": "3600000"}, self.log_dir / "gateway-a.log", self.app).start()
            hose.call({"cmd": "probe", "host": "127.0.0.1", "port": gw.port,
                       "path": f"/ws?token={token(gw.secret, 'probe')}"}, timeout=30)
            load = Load(gw.port, {"path": "/ws?token={token}", "jwt_secret": gw.secret, "hello": True,
                                  "subscribe": [market_sub()], "symbols": ["BTCUSDT"], "mode": "count"})
            have = 1  # the firehose's probe is client number one
            window = Window(load, gw.pid, (), probe=hose)
            slow_at = self.slow_step(a.burst_clients)
            slow = max(1, round(slow_at * a.slow_percent / 100)) if slow_at else 0
            for n in sorted(set(a.burst_clients)):
                first = {"slow": slow, "slow_rcvbuf": a.slow_rcvbuf, "slow_mode": "idle"} if n == slow_at else None
                connect = load.add(n - have, first=first)
                have = n
                hose.call({"cmd": "go", "window": a.firehose_window})
                time.sleep(a.warmup)
                row = {"clients": n, **window.median(a.window, a.repeat), "connect": connect}
                if a.profile and n == a.profile_clients:
                    row["profile"] = self.profile("a_burst_gateway", gw.pid, a.profile_seconds)
                if n == slow_at:
                    self.slow_burst = self.slow_consumers(gw, load, window, slow, row, clients=n, latency=False,
                                                          cut_wait=a.slow_cut_wait)
                hose.call({"cmd": "stop"})
                rows.append(row)
                self.log(f"  gateway N={n}: {row['delivered_per_s']:,} msg/s, "
                         f"{row['server_us_per_delivery']} µs/delivery, loadgen {row['loadgen_cpu_cores']} cores")
                time.sleep(0.5)
        finally:
            if load is not None:
                load.stop()
            hose.stop()
            if gw is not None:
                gw.stop()
        return rows

    def burst_peer(self, kind: str) -> list[dict[str, Any]]:
        a = self.args
        peer = start_peer(kind, 3600, self.log_dir)
        load = Load(peer.port, {"path": "/?g=0", "mode": "count"})  # type: ignore[attr-defined]  # port set at start
        rows = []
        try:
            window = Window(load, peer.pid)
            have = 0
            for n in sorted(set(a.peer_burst_clients)):
                connect = load.add(n - have)
                have = n
                peer.call({"cmd": "burst", "size": 200})
                time.sleep(a.warmup)
                row = {"clients": n, **window.median(a.window, a.repeat), "connect": connect}
                peer.call({"cmd": "stop"})
                rows.append(row)
                self.log(f"  {kind} N={n}: {row['delivered_per_s']:,} msg/s, "
                         f"{row['server_us_per_delivery']} µs/delivery")
                time.sleep(0.5)
        finally:
            load.stop()
            peer.stop()
        return rows

    def slow_step(self, steps: list[int]) -> int:
        """The burst step that also runs (e): 1,000 clients if run, else the largest (0 when e is not run)."""
        if "e" not in self.chosen or self.args.slow_percent <= 0:
            return 0
        return 1000 if 1000 in steps else max(steps)

    def scenario_a(self) -> None:
        res: dict[str, Any] = {"gateway": self.burst_gateway()}
        if self.slow_burst:
            self.results["scenarios"].setdefault("e_slow", {})["burst"] = self.slow_burst
        for kind in self.peers:
            res[kind] = self.burst_peer(kind)
        ratios: dict[str, dict[str, float]] = {}
        for row in res["gateway"]:
            for kind in self.peers:
                peer_row = next((r for r in res[kind] if r["clients"] == row["clients"]), None)
                if peer_row and peer_row["delivered_per_s"]:
                    ratios.setdefault(str(row["clients"]), {})[f"vs_{kind}"] = round(
                        row["delivered_per_s"] / peer_row["delivered_per_s"], 2)
        res["ratios"] = ratios
        self.results["scenarios"]["a_burst"] = res

    # -- b + e: paced, then slow consumers --------------------------------------------------

    def paced_gateway(self) -> tuple[dict[str, Any], dict[str, Any]]:
        a = self.args
        sim, sim_port = start_simulator(a.paced_hz, self.log_dir)
        gw = load = None
        symbols = ["BTCUSDT", "ETHUSDT", "ADAUSDT", "SOLUSDT"][:a.paced_symbols]
        streams = a.paced_streams
        slow = max(1, round(a.paced_clients * a.slow_percent / 100)) if a.slow_percent > 0 else 0
        redis = None
        try:
            if a.gateway_workers > 1:
                redis = start_redis()
            gw = Gateway({"MARKET_SOURCE": "bybit", "BYBIT_WS_URL": f"ws://127.0.0.1:{sim_port}/v5/public",
                          # Upstream carries exactly what the clients subscribe to (no pinned popular pairs).
                          "MARKET_CATEGORIES": "spot", "POPULAR_PAIRS": ""},
                         self.log_dir / "gateway-b.log", self.app, workers=a.gateway_workers,
                         redis_url=redis.url if redis is not None else None).start()
            load = Load(gw.port, {"path": "/ws?token={token}", "jwt_secret": gw.secret, "hello": True,
                                  "subscribe": [market_sub(streams=streams)], "symbols": symbols,
                                  "mode": "latency"})
            # The first ``slow`` clients are opened with a small receive buffer (used in e only).
            connect = load.add(a.paced_clients, per_worker=math.ceil(a.paced_clients / a.paced_workers),
                               first={"slow": slow, "slow_rcvbuf": a.slow_rcvbuf})
            window = Window(load, gw.pids, (sim.pid,))
            time.sleep(a.warmup)
            load.call({"cmd": "hist_reset"})
            fan0 = self.fanout_buckets(gw)
            row = window.measure(a.paced_window)
            row.update(Histogram.percentiles(load.hist()))
            row["gateway_fanout_latency_ms"] = fanout_quantiles(fan0, self.fanout_buckets(gw))
            row.update({"clients": a.paced_clients, "symbols": len(symbols), "streams": streams,
                        "gateway_processes": a.gateway_workers,
                        "rate_hz": a.paced_hz, "connect": connect,
                        "messages_per_client_per_s": round(row["delivered_per_s"] / a.paced_clients, 2)})
            self.log(f"  gateway paced: p50 {row['p50']} ms, p99 {row['p99']} ms, max {row['max']} ms, "
                     f"{row['delivered_per_s']:,} msg/s")
            if a.profile:
                row["profile"] = self.profile("b_paced_gateway", gw.pids[-1], a.profile_seconds)
            slow_row = self.slow_consumers(gw, load, window, slow, row, clients=a.paced_clients, latency=True,
                                           cut_wait=0) if slow else {}
            return row, slow_row
        finally:
            if load is not None:
                load.stop()
            if gw is not None:
                gw.stop()
            if redis is not None:
                redis.cleanup()
            stop_popen(sim)

    def slow_consumers(self, gw: Gateway, load: Load, window: Window, slow: int, base: dict[str, Any], *,
                       clients: int, latency: bool, cut_wait: float) -> dict[str, Any]:
        """``slow`` clients of ``load.slow_worker`` stop reading; measure the others, then what became of the slow."""
        a = self.args
        worker = load.slow_worker
        rss_start, tcp_start = total_rss_kib(gw.pids), tcp_mem_kib()
        metrics_start = self.slow_metrics(gw)
        samples: list[tuple[float, int, int, int]] = []
        t_pause = time.monotonic()
        paused = worker.call({"cmd": "pause", "n": slow})["paused"]
        if latency:
            load.call({"cmd": "hist_reset"})
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    conns = gw.stats()["connections"]
                except (OSError, ValueError, KeyError):
                    conns = -1
                samples.append((round(time.monotonic() - t_pause, 2), total_rss_kib(gw.pids), conns, tcp_mem_kib()))
                stop.wait(0.5)

        def cut_at(all_of_them: bool = True) -> float | None:
            """Seconds after the pause when the gateway had closed every slow client (or the first one)."""
            limit = clients - paused if all_of_them else clients - 1
            return next((t for t, _, c, _ in samples if 0 <= c <= limit), None)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        row = window.measure(a.slow_window)
        if latency:
            row.update(Histogram.percentiles(load.hist()))
        deadline = time.monotonic() + cut_wait
        while cut_at() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        stop.set()
        sampler.join()
        ends = worker.call({"cmd": "resume_slow", "wait": 1.0 if a.quick else 15.0}, timeout=60)
        metrics_end = self.slow_metrics(gw)
        row["gateway_metrics_during"] = {k: v - metrics_start.get(k, 0.0) for k, v in metrics_end.items()
                                         if v - metrics_start.get(k, 0.0)}
        others = clients - paused
        rss_max = max(r for _, r, _, _ in samples)
        tcp_max = max(m for _, _, _, m in samples)
        row.update({
            "clients": clients, "slow_clients": paused, "slow_rcvbuf": a.slow_rcvbuf,
            "others_delivered_per_client_per_s": round(row["delivered_per_s"] / others, 2),
            "baseline_delivered_per_client_per_s": round(base["delivered_per_s"] / clients, 2),
            "slow_cut_after_s": cut_at(), "first_cut_after_s": cut_at(all_of_them=False),
            "slow_cut_count": clients - min((c for _, _, c, _ in samples if c >= 0), default=clients),
            "waited_for_cut_s": round(time.monotonic() - t_pause, 1),
            "slow_ends": ends["ends"],
            "rss_start_kib": rss_start, "rss_max_kib": rss_max, "rss_growth_kib": rss_max - rss_start,
            "rss_bound_kib": paused * QUEUE_BYTES // 1024,
            "kernel_tcp_mem_start_kib": tcp_start, "kernel_tcp_mem_max_kib": tcp_max,
            "samples_t_rss_connections_tcpmem": samples[:: max(1, len(samples) // 24)],
        })
        row["delivered_ratio_vs_baseline"] = round(
            row["others_delivered_per_client_per_s"] / row["baseline_delivered_per_client_per_s"], 3)
        if latency:
            row.update({"others_p99_ms": row["p99"], "baseline_p99_ms": base["p99"],
                        "p99_ratio_vs_baseline": round(row["p99"] / base["p99"], 2) if base["p99"] else None})
        self.log(f"  slow consumers ({'paced' if latency else 'burst'}): others {row['delivered_ratio_vs_baseline']}x "
                 f"baseline rate" + (f", p99 {row['p99']} ms (baseline {base['p99']})" if latency else "")
                 + f"; slow cut after {cut_at()} s, ends {ends['ends']}, RSS +{rss_max - rss_start} KiB, "
                   f"kernel TCP memory +{tcp_max - tcp_start} KiB")
        return row

    @staticmethod
    def fanout_buckets(gw: Gateway) -> dict[float, float]:
        """The gateway's own sampled ws_fanout_latency_seconds histogram: {upper bound: cumulative count}."""
        try:
            samples = gw.metrics("ws_fanout_latency_seconds_bucket")
        except (OSError, ValueError):
            return {}
        return {float(k.split('le="', 1)[1].split('"', 1)[0]): v for k, v in samples.items()}

    @staticmethod
    def slow_metrics(gw: Gateway) -> dict[str, float]:
        try:
            return gw.metrics("ws_close_codes", "ws_messages_dropped")
        except (OSError, ValueError):
            return {}

    def paced_peer(self, kind: str, per_client_rate: float, size: int) -> dict[str, Any]:
        a = self.args
        peer = start_peer(kind, 30, self.log_dir)
        load = Load(peer.port, {"path": "/?g={g}", "groups": a.paced_symbols, "mode": "latency"})  # type: ignore[attr-defined]  # port set at start
        try:
            connect = load.add(a.paced_clients, per_worker=math.ceil(a.paced_clients / a.paced_workers))
            per_tick = max(1, round(per_client_rate / a.paced_hz))
            peer.call({"cmd": "paced", "hz": a.paced_hz, "per_tick": per_tick, "size": size})
            time.sleep(a.warmup)
            load.call({"cmd": "hist_reset"})
            row = Window(load, peer.pid).measure(a.paced_window)
            row.update(Histogram.percentiles(load.hist()))
            row.update({"clients": a.paced_clients, "groups": a.paced_symbols, "rate_hz": a.paced_hz,
                        "per_tick": per_tick, "message_bytes": size, "connect": connect,
                        "messages_per_client_per_s": round(row["delivered_per_s"] / a.paced_clients, 2)})
            peer.call({"cmd": "stop"})
            self.log(f"  {kind} paced: p50 {row['p50']} ms, p99 {row['p99']} ms, max {row['max']} ms")
            return row
        finally:
            load.stop()
            peer.stop()

    def scenario_b_e(self) -> None:
        gw_row, slow_row = self.paced_gateway()
        res: dict[str, Any] = {"gateway": gw_row}
        size = int(gw_row["bytes_per_message"] or 200)
        for kind in self.peers:
            res[kind] = self.paced_peer(kind, gw_row["messages_per_client_per_s"], size)
        peer_p99 = [res[k]["p99"] for k in self.peers if res.get(k)]
        if peer_p99:
            res["best_peer_p99_ms"] = min(peer_p99)
            res["p99_ratio_vs_best_peer"] = round(gw_row["p99"] / min(peer_p99), 2) if min(peer_p99) else None
        self.results["scenarios"]["b_paced"] = res
        if slow_row:
            self.results["scenarios"].setdefault("e_slow", {})["paced"] = slow_row

    # -- c + d: capacity, churn --------------------------------------------------------------

    def capacity_steps(self) -> tuple[list[int], list[int], str | None]:
        """Steps for the gateway (over ``--capacity-workers`` processes) and for the one-process peers."""
        per_process = self.nofile - FD_RESERVE
        workers = self.args.capacity_workers
        # The kernel's SO_REUSEPORT hash spreads connections nearly evenly; keep 5 % for the unevenness.
        limit = per_process if workers == 1 else int(workers * per_process / 1.05)
        steps: list[int] = []
        peer_steps: list[int] = []
        notes = []
        for n in self.args.capacity:
            if n > limit:
                notes.append(f"{n:,} connections need more descriptors than {workers} gateway process(es) may hold "
                             f"(RLIMIT_NOFILE's hard limit here is {self.nofile:,} per process and cannot be raised: "
                             f"no CAP_SYS_RESOURCE in this sandbox); the gateway's largest step is {limit:,}")
            if min(n, limit) not in steps:
                steps.append(min(n, limit))
            if n > per_process and not any("peers" in x for x in notes):
                notes.append(f"the peers are one process each: their largest step is {per_process:,}")
            if min(n, per_process) not in peer_steps:
                peer_steps.append(min(n, per_process))
        return steps, peer_steps, "; ".join(notes) or None

    def capacity_gateway(self, steps: list[int], workers: int, *, churn: bool = False
                         ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Open the steps' idle connections on a gateway of ``workers`` processes; with ``churn``, run (d)
        at the first step instead of measuring the rest."""
        redis = None
        if workers > 1:
            redis = start_redis()
        try:
            return self._capacity_gateway(steps, redis, workers, churn)
        finally:
            if redis is not None:
                redis.cleanup()

    def _capacity_gateway(self, steps: list[int], redis: Any, workers: int, churn_only: bool
                          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        a = self.args
        gw = Gateway({"MARKET_SOURCE": "none", "WS_HEARTBEAT_INTERVAL": str(int(a.heartbeat * 1000))},
                     self.log_dir / f"gateway-{'d' if churn_only else 'c'}-{workers}.log", self.app, workers=workers,
                     redis_url=redis.url if redis is not None else None).start()
        # Everything the server side holds: the gateway process(es) and, with workers, Redis.
        server_pids = gw.pids + ([redis.proc.pid] if redis is not None else [])
        load = Load(gw.port, {"path": "/ws?token={token}", "jwt_secret": gw.secret, "hello": True,
                              "subscribe": [{"type": "subscribe", "channel": a.capacity_channel}]
                              if a.capacity_channel != "market-data" else [market_sub("BTCUSDT")],
                              "mode": "idle"})
        rows = []
        churn: dict[str, Any] = {}
        try:
            time.sleep(1.0)
            rss0 = total_rss_kib(server_pids)
            redis_rss0 = rss_kib(redis.proc.pid) if redis is not None else 0
            have = 0
            for n in steps:
                prof = None
                if a.profile and not rows and not churn_only:
                    prof = PySpy(gw.pids[-1], self.out_dir / "profile-c_connect", a.profile_seconds * 3)
                cpu0 = total_cpu_seconds(server_pids)
                connect = load.add(n - have)
                cpu_connect = total_cpu_seconds(server_pids) - cpu0
                have = n
                snap0 = load.snap()
                time.sleep(a.heartbeat * 1.5)  # at least one heartbeat round reaches every connection
                snap1 = load.snap()
                rss = total_rss_kib(server_pids)
                row = {"connections": n, "open": snap1["open"], "rss_before_kib": rss0, "rss_after_kib": rss,
                       "kib_per_connection": round((rss - rss0) / n, 2), "connect": connect,
                       "connects_per_s": round((n - (rows[-1]["connections"] if rows else 0)) / connect["seconds"])
                       if connect["seconds"] else None,
                       "server_cpu_ms_per_connect": round(cpu_connect * 1000 / max(1, connect["open"]), 3),
                       "pings_answered_during_wait": snap1["pings"] - snap0["pings"],
                       "closes": snap1["closes"], "gateway_processes": workers}
                if redis is not None:
                    row["redis_kib_per_connection"] = round((rss_kib(redis.proc.pid) - redis_rss0) / n, 2)
                    row["per_worker"] = [http_json(p, "/ws/stats").get("connections") for p in gw.own_ports]
                if prof is not None:
                    self.results["profiles"]["c_connect_gateway"] = prof.finish()
                    row["profile"] = "c_connect_gateway"
                if a.profile and n == steps[-1] and not churn_only:
                    row["profile_idle"] = self.profile("c_idle_gateway", gw.pids[-1], a.profile_seconds)
                rows.append(row)
                self.log(f"  gateway capacity {n:,}: {row['kib_per_connection']} KiB/connection, "
                         f"{row['open']:,} open, pings answered {row['pings_answered_during_wait']:,}"
                         + (f", per worker {row['per_worker']}" if redis is not None else ""))
                if churn_only:
                    churn = self.churn(gw, load, n, server_pids, workers)
                    break
        finally:
            load.stop()
            gw.stop()
        return rows, churn

    def churn(self, gw: Gateway, load: Load, open_now: int, server_pids: list[int], workers: int) -> dict[str, Any]:
        a = self.args
        worker = JsonProc([PY, str(BENCH / "loadgen.py")], name="churn")
        try:
            worker.send({"host": "127.0.0.1", "port": gw.port, "count": 0, "path": "/ws?token={token}",
                         "jwt_secret": gw.secret, "user_prefix": "churn-"})
            worker.recv(30)
            cpu0, busy0, t0 = total_cpu_seconds(server_pids), *busy_cores_snapshot()
            ips = [Load._ip() for _ in range(4)]
            prof = (PySpy(gw.pids[-1], self.out_dir / f"profile-d_churn_gateway_{workers}", a.churn_seconds - 1)
                    if a.profile else None)
            res = worker.call({"cmd": "churn", "seconds": a.churn_seconds, "concurrency": a.churn_concurrency,
                               "local_addrs": ips}, timeout=a.churn_seconds + 60)
            server = total_cpu_seconds(server_pids) - cpu0
            busy1, t1 = busy_cores_snapshot()
            other = max(0.0, (busy1 - busy0) - server - res["cpu"]) / (t1 - t0)
            still = load.snap()["open"]
            if prof is not None:
                self.results["profiles"][f"d_churn_gateway_{workers}"] = prof.finish()
        finally:
            worker.stop()
        row = {"open_connections": open_now, "still_open_after": still, "cycles": res["cycles"],
               "seconds": res["seconds"], "cycles_per_s": round(res["cycles"] / res["seconds"], 1),
               "concurrency": a.churn_concurrency, "gateway_processes": workers,
               "server_cpu_ms_per_cycle": round(server * 1000 / max(1, res["cycles"]), 3),
               "loadgen_cpu_ms_per_cycle": round(res["cpu"] * 1000 / max(1, res["cycles"]), 3),
               "other_cpu_cores": round(other, 3), "errors": res["errors"], "first_errors": res["first_errors"]}
        self.log(f"  churn at {open_now:,} open: {row['cycles_per_s']}/s, {row['server_cpu_ms_per_cycle']} ms "
                 f"server CPU per cycle, errors {row['errors']}")
        return row

    def capacity_peer(self, kind: str, steps: list[int]) -> list[dict[str, Any]]:
        a = self.args
        peer = start_peer(kind, a.heartbeat, self.log_dir)
        load = Load(peer.port, {"path": "/?g=0", "mode": "idle"})  # type: ignore[attr-defined]  # port set at start
        rows = []
        try:
            time.sleep(0.5)
            rss0 = rss_kib(peer.pid)
            have = 0
            for n in steps:
                connect = load.add(n - have)
                have = n
                snap0 = load.snap()
                time.sleep(a.heartbeat * 1.5)
                snap1 = load.snap()
                rss = rss_kib(peer.pid)
                rows.append({"connections": n, "open": snap1["open"], "rss_before_kib": rss0, "rss_after_kib": rss,
                             "kib_per_connection": round((rss - rss0) / n, 2), "connect": connect,
                             "pings_answered_during_wait": snap1["pings"] - snap0["pings"]})
                self.log(f"  {kind} capacity {n:,}: {rows[-1]['kib_per_connection']} KiB/connection")
        finally:
            load.stop()
            peer.stop()
        return rows

    def scenario_c_d(self) -> None:
        steps, peer_steps, note = self.capacity_steps()
        rows: list[dict[str, Any]] = []
        if "c" in self.args.scenarios.split(","):
            rows, _ = self.capacity_gateway(steps, self.args.capacity_workers)
        churns = []
        if self.args.churn_seconds > 0:
            for workers in self.args.churn_workers:
                _, churn = self.capacity_gateway(steps[:1], workers, churn=True)
                churns.append(churn)
        res: dict[str, Any] = {"requested": self.args.capacity, "ran": steps, "peers_ran": peer_steps,
                               "limit_note": note, "gateway_processes": self.args.capacity_workers,
                               "subscribed_to": self.args.capacity_channel, "heartbeat_s": self.args.heartbeat,
                               "gateway": rows}
        for kind in self.peers if rows else ():
            res[kind] = self.capacity_peer(kind, peer_steps)
        if rows:
            self.results["scenarios"]["c_capacity"] = res
        if churns:
            best = max(churns, key=lambda r: r["cycles_per_s"])
            self.results["scenarios"]["d_churn"] = {"gateway": best, "runs": churns}

    # -- f: ingest ------------------------------------------------------------------------------

    def scenario_f(self) -> None:
        bench = ingest.Ingest(self.args, self.log_dir, self.out_dir, self.app, self.log)
        missing = ensure_feed_handlers(bench.peers)
        for kind, reason in missing.items():
            self.results["errors"][f"f peer {kind}"] = reason
            bench.peers.remove(kind)
        self.results["scenarios"]["f_ingest"] = bench.run(self.results["errors"])

    # -- profiles ------------------------------------------------------------------------------

    def profile(self, name: str, pid: int, seconds: float) -> str:
        prof = PySpy(pid, self.out_dir / f"profile-{name}", seconds)
        time.sleep(seconds + 0.5)
        self.results["profiles"][name] = prof.finish()
        return name


# --- verdicts and table ------------------------------------------------------------------------


def targets(res: dict[str, Any]) -> dict[str, Any]:
    sc = res["scenarios"]
    out: dict[str, Any] = {}
    a = sc.get("a_burst")
    if a:
        common = [r["clients"] for r in a["gateway"]
                  if all(any(p["clients"] == r["clients"] for p in a.get(k, [])) for k in PEERS if k in a)]
        n = 1000 if 1000 in common else max(common, default=0)
        row = next((r for r in a["gateway"] if r["clients"] == n), None)
        peers = [next((r for r in a.get(k, []) if r["clients"] == n), None) for k in PEERS]
        peers = [p for p in peers if p]
        if row and peers:
            best = max(p["delivered_per_s"] for p in peers)
            ratio = row["delivered_per_s"] / best
            out["a"] = {"met": ratio >= 10 and n == 1000,
                        "target": ">= 10x both peers' delivered msg/s at 1,000 clients",
                        "measured": f"{ratio:.1f}x the faster peer at {n:,} clients "
                                    f"({row['delivered_per_s']:,} vs {best:,} msg/s)"}
    b = sc.get("b_paced")
    if b and "best_peer_p99_ms" in b:
        out["b"] = {"met": b["gateway"]["p99"] <= b["best_peer_p99_ms"], "target": "p99 <= the best peer's",
                    "measured": f"gateway p99 {b['gateway']['p99']} ms vs best peer {b['best_peer_p99_ms']} ms"}
    c = sc.get("c_capacity")
    if c and c["gateway"]:
        top = c["gateway"][-1]
        held = top["open"] >= 50_000
        kib = max(r["kib_per_connection"] for r in c["gateway"])
        out["c"] = {"met": held and kib <= 20,
                    "target": "50,000 connections held, <= 20 KiB resident per connection",
                    "measured": f"{top['open']:,} held (largest step run), {kib} KiB per connection"
                                + (f"; {c['limit_note']}" if c.get("limit_note") else "")}
    d = sc.get("d_churn")
    if d:
        g = d["gateway"]
        out["d"] = {"met": g["cycles_per_s"] >= 1000 and g["open_connections"] >= 10_000,
                    "target": ">= 1,000 cycles/s at 10,000 open",
                    "measured": f"{g['cycles_per_s']:,}/s at {g['open_connections']:,} open"}
    e = sc.get("e_slow")
    if e:
        paced, burst = e.get("paced"), e.get("burst")
        parts, met = [], True
        if paced:
            ratio = paced["p99_ratio_vs_baseline"]
            met = met and ratio is not None and ratio <= 2
            parts.append(f"paced: others' p99 {paced['others_p99_ms']} ms vs {paced['baseline_p99_ms']} ms ({ratio}x)")
        for name, g in (("paced", paced), ("burst", burst)):
            if g:
                bounded = g["rss_growth_kib"] <= g["rss_bound_kib"] + 10 * 1024
                met = met and bounded
                parts.append(f"{name}: RSS +{g['rss_growth_kib']:,} KiB (bound {g['rss_bound_kib']:,} KiB + 10 MiB), "
                             f"others' rate {g['delivered_ratio_vs_baseline']}x, slow cut after "
                             f"{g['slow_cut_after_s']} s, slow clients saw {g['slow_ends']}")
        out["e"] = {"met": met, "target": "others' p99 within 2x of the run without slow clients; memory bounded",
                    "measured": "; ".join(parts)}
    f = sc.get("f_ingest")
    if f:
        verdict = ingest.target(f)
        if verdict:
            out["f"] = verdict
    return out


def fanout_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Bucket upper bounds (ms) holding p50 and p99 of the gateway's sampled exchange-frame-to-socket-write
    latency over a window: how much of the client's latency is spent inside the gateway."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    out: dict[str, Any] = {"samples": int(total)}
    for q in (50, 99):
        b = next((b for b, c in zip(bounds, counts, strict=True) if total and c >= q / 100 * total), None)
        out[f"p{q}_le"] = None if b is None else (b * 1000 if b != float("inf") else "inf")
    return out


def _spread(row: dict[str, Any]) -> str:
    rates = row.get("windows_delivered_per_s") or [row["delivered_per_s"]]
    return f"{min(rates) / 1000:,.0f}k-{max(rates) / 1000:,.0f}k" if len(rates) > 1 else "-"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _closes(metrics: dict[str, float]) -> str:
    """Close frames the gateway counted as sent during the slow phase: '4001×10'."""
    out = []
    for key, value in sorted(metrics.items()):
        if key.startswith("ws_close_codes") and 'code="' in key:
            code = key.split('code="', 1)[1].split('"', 1)[0]
            out.append(f"{code}×{int(value)}")
    return " ".join(out) or "none"


def render(res: dict[str, Any]) -> str:
    sc = res["scenarios"]
    parts = []
    a = sc.get("a_burst")
    if a:
        rows = []
        for r in a["gateway"]:
            ratio = a["ratios"].get(str(r["clients"]), {})
            rows.append(["gateway", r["clients"], r["delivered_per_s"], _spread(r), r["server_us_per_delivery"],
                         r["server_cpu_cores"], r["loadgen_cpu_cores"], r["other_cpu_cores"], r["bytes_per_message"],
                         ratio.get("vs_websockets"), ratio.get("vs_node_ws")])
        for kind in PEERS:
            for r in a.get(kind, []):
                rows.append([kind, r["clients"], r["delivered_per_s"], _spread(r), r["server_us_per_delivery"],
                             r["server_cpu_cores"], r["loadgen_cpu_cores"], r["other_cpu_cores"],
                             r["bytes_per_message"], None, None])
        parts.append("(a) burst fan-out, one symbol\n" + _table(
            ["server", "clients", "delivered msg/s", "windows (min-max)", "server µs/delivery", "server cores",
             "loadgen cores",
             "other cores", "bytes/msg", "x websockets", "x node ws"], rows))
    b = sc.get("b_paced")
    if b:
        rows = []
        for kind in ("gateway", *PEERS):
            r = b.get(kind)
            if r:
                rows.append([kind, r["clients"], r["messages_per_client_per_s"], r["delivered_per_s"],
                             r["bytes_per_message"], r["p50"], r["p99"], r["max"], r["server_cpu_cores"],
                             r["loadgen_cpu_cores"], r["other_cpu_cores"]])
        parts.append(f"(b) paced, {b['gateway']['symbols']} symbols at {b['gateway']['rate_hz']} Hz per stream; "
                     f"latency = client receive − receivedAt (ms); gateway p99 / best peer p99 = "
                     f"{b.get('p99_ratio_vs_best_peer')}\n" + _table(
                         ["server", "clients", "msg/s per client", "delivered msg/s", "bytes/msg", "p50 ms", "p99 ms",
                          "max ms", "server cores", "loadgen cores", "other cores"], rows))
    c = sc.get("c_capacity")
    if c:
        rows = []
        for kind in ("gateway", *PEERS):
            for r in c.get(kind, []):
                name = f"gateway ({r['gateway_processes']} processes)" if r.get("gateway_processes", 1) > 1 else kind
                rows.append([name, r["connections"], r["open"], r["rss_before_kib"] // 1024,
                             r["rss_after_kib"] // 1024, r["kib_per_connection"], r["connect"]["seconds"],
                             r["pings_answered_during_wait"]])
        note = f"\nnote: {c['limit_note']}" if c.get("limit_note") else ""
        parts.append(f"(c) capacity: idle connections subscribed to {c['subscribed_to']}, heartbeat every "
                     f"{c['heartbeat_s']} s\n" + _table(
                         ["server", "connections", "open", "RSS before MiB", "RSS after MiB", "KiB/connection",
                          "connect s", "pings answered"], rows) + note)
    d = sc.get("d_churn")
    if d:
        g = d["gateway"]
        parts.append("(d) churn: connect + JWT + subscribe + close (server ms/cycle: every gateway process and "
                     "Redis)\n" + _table(
            ["gateway processes", "open connections", "cycles/s", "server ms/cycle", "loadgen ms/cycle", "errors",
             "still open after"],
            [[r.get("gateway_processes", 1), r["open_connections"], r["cycles_per_s"], r["server_cpu_ms_per_cycle"],
              r["loadgen_cpu_ms_per_cycle"], r["errors"], r["still_open_after"]] for r in d.get("runs", [g])]))
    e = sc.get("e_slow")
    if e:
        rows = []
        for name in ("paced", "burst"):
            g = e.get(name)
            if g:
                rows.append([name, g["clients"], g["slow_clients"], g.get("others_p99_ms"), g.get("baseline_p99_ms"),
                             g.get("p99_ratio_vs_baseline"), g["others_delivered_per_client_per_s"],
                             g["baseline_delivered_per_client_per_s"],
                             f"{g['slow_cut_count']} cut, first {_fmt(g['first_cut_after_s'])}, "
                             f"all {_fmt(g['slow_cut_after_s'])}", g["waited_for_cut_s"],
                             json.dumps(g["slow_ends"]), _closes(g.get("gateway_metrics_during", {})),
                             g["rss_growth_kib"], g["rss_bound_kib"],
                             g["kernel_tcp_mem_max_kib"] - g["kernel_tcp_mem_start_kib"]])
        parts.append("(e) slow consumers: 1% of clients stop reading (paced = b's load, burst = a's 1,000 clients)\n"
                     + _table(["load", "clients", "slow", "others p99 ms", "baseline p99 ms", "p99 ratio",
                               "others msg/s/client", "baseline msg/s/client", "gateway cut the slow (s)", "watched s",
                               "slow clients saw", "gateway sent", "RSS +KiB", "RSS bound KiB", "kernel TCP +KiB"],
                              rows))
    f = sc.get("f_ingest")
    if f:
        parts.append(ingest.render(f, _table))
    t = res.get("targets", {})
    if t:
        parts.append("targets\n" + _table(["", "met", "target", "measured"],
                                          [[k, "yes" if v["met"] else "NO", v["target"], v["measured"]]
                                           for k, v in sorted(t.items())]))
    for name, err in res.get("errors", {}).items():
        parts.append(f"ERROR in {name}: {err}")
    return "\n\n".join(parts)


# --- main ------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few clients, short windows (~15 s)")
    p.add_argument("--scenarios", default="a,b,c,d,e,f", help="subset to run, e.g. a,c (b and e run together)")
    p.add_argument("--peers", default="websockets,node_ws", help="peers to run beside the gateway ('' for none)")
    p.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "results.json"))
    p.add_argument("--window", type=float, default=3.0, help="seconds per burst measurement window")
    p.add_argument("--repeat", type=int, default=3, help="burst windows per step; the median is reported")
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--burst-clients", type=_ints, default=[1, 100, 1000, 5000])
    p.add_argument("--peer-burst-clients", type=_ints, default=[1, 100, 1000, 5000])
    p.add_argument("--firehose-window", type=int, default=500,
                   help="exchange frames in flight (sent, not yet seen by the probe client)")
    p.add_argument("--paced-clients", type=int, default=1000)
    p.add_argument("--paced-symbols", type=int, default=4)
    p.add_argument("--paced-hz", type=float, default=20.0, help="simulator updates per second per topic")
    p.add_argument("--paced-streams", type=lambda t: [x for x in t.split(",") if x], default=["ticker"],
                   help="market-data streams per client (ticker = Bybit spot's 50 ms push)")
    p.add_argument("--paced-window", type=float, default=15.0)
    p.add_argument("--paced-workers", type=int, default=2, help="load-generator processes in (b) and (e)")
    p.add_argument("--gateway-workers", type=int, default=1,
                   help="gateway processes in (b) and (e): WORKERS=N over a redis-server the benchmark starts")
    p.add_argument("--slow-percent", type=float, default=1.0)
    p.add_argument("--slow-window", type=float, default=15.0)
    p.add_argument("--slow-cut-wait", type=float, default=40.0,
                   help="in the burst part of (e), seconds to wait (after the window) for the slow ones to be cut")
    p.add_argument("--slow-rcvbuf", type=int, default=4096,
                   help="SO_RCVBUF of the slow clients (bytes; the kernel doubles it)")
    p.add_argument("--capacity", type=_ints, default=[10_000, 50_000])
    p.add_argument("--capacity-channel", default="trades",
                   help="what each idle connection subscribes to: a private channel (one per user) or market-data")
    p.add_argument("--capacity-workers", type=int, default=3,
                   help="gateway processes in (c) and (d): WORKERS=N on one port over a redis-server the benchmark "
                        "starts (1: one process, memory broker)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="server ping interval in (c) and (d), seconds")
    p.add_argument("--churn-seconds", type=float, default=8.0)
    p.add_argument("--churn-workers", type=_ints, default=[1, 2],
                   help="(d) once per gateway process count (each its own gateway, the first capacity step open)")
    p.add_argument("--churn-concurrency", type=int, default=50)
    p.add_argument("--profile", action="store_true",
                   help="py-spy the gateway in (a), (b), (c) and (f, unpaced), each in a window after the measured one")
    p.add_argument("--profile-seconds", type=float, default=8.0)
    p.add_argument("--profile-clients", type=int, default=1000)
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="before each scenario, wait up to this many seconds for other CPU load < 0.25 cores")
    p.add_argument("--gateway-app", default=None,
                   help="run this app.py instead of ours: a clean export of a commit (see docs/performance.md) or an "
                        "experiment wrapper")
    ingest.add_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        ingest.quick(args)
        args.window, args.warmup, args.repeat = 1.0, 0.3, 1
        args.burst_clients, args.peer_burst_clients = [1, 20], [20]
        args.paced_clients, args.paced_window, args.paced_workers = 100, 1.0, 1
        args.slow_window, args.slow_cut_wait = 1.0, 0.0
        args.capacity, args.heartbeat, args.capacity_workers, args.churn_workers = [200], 0.5, 1, [1]
        args.churn_seconds, args.churn_concurrency = 1.0, 10
        args.profile_seconds, args.profile_clients = 2.0, 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    bench = Bench(args)
    res = bench.results
    res["machine"] = machine()
    res["gateway_code"] = git_state(Path(args.gateway_app).resolve().parent if args.gateway_app else ROOT)
    res["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    res["command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    res["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    missing = ensure_peers(bench.peers)
    for kind, reason in missing.items():
        res["errors"][f"peer {kind}"] = reason
        bench.peers.remove(kind)
    chosen = set(args.scenarios.split(","))
    if "a" in chosen:
        bench.run("a", bench.scenario_a)
    if chosen & {"b", "e"}:
        if "e" not in chosen:
            args.slow_percent = 0
        bench.run("b+e", bench.scenario_b_e)
    if chosen & {"c", "d"}:
        if "d" not in chosen:
            args.churn_seconds = 0
        bench.run("c+d", bench.scenario_c_d)
    if "f" in chosen:
        bench.run("f", bench.scenario_f)
    res["targets"] = targets(res)
    res["duration_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(render(res))
    print(f"\nresults: {out} ({res['duration_s']} s)")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
