"""Start the gateway: ``python app.py`` or ``trading-gateway serve`` (settings from the environment).

The composition root: builds the hub, the gateway, the HTTP app and the
pywsgi server on one port, installs signal handlers, and serves until
SIGTERM/SIGINT. :func:`cli` is the installed command, ``trading-gateway
serve | token | simulator | audit``; ``serve --help`` lists every setting with its
default (:data:`gateway.config.VARIABLES`).

A setting that cannot work, or a port that cannot be bound, is one
CRITICAL line and exit status 2, never a traceback (docs/operations.md).
"""

from gevent import monkey

# websocket-client (the exchange streams) uses the socket module: patch it
# before anything imports socket, threading or ssl.
monkey.patch_all()

import argparse
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from audit.store import open_store
from audit.writer import AuditLog
from brokers.memory import MemoryBroker
from gateway.config import DEMO_SECRET_FILE, VARIABLES, ConfigError, Settings, unknown_variables
from gateway.http import create_app
from gateway.hub import Hub
from gateway.logs import configure_logging
from gateway.marketdata import MarketFeeds
from gateway.server import Gateway
from gateway.workers import WorkerPool, worker_index
from metrics.definitions import build as build_metrics
from protocol.auth import Authenticator
from protocol.close_codes import CloseCode
from supervision import Supervisor, exit_process
from transport.handler import GatewayServer

log = logging.getLogger("gateway")

@dataclass
class System:
    settings: Settings
    gateway: Gateway
    server: GatewayServer
    supervisor: Supervisor
    market: MarketFeeds
    own_server: GatewayServer | None = None  # a worker's port of its own (WORKERS > 1)
    stopping: bool = False

    @property
    def port(self) -> int:
        return self.server.server_port

    def start(self) -> None:
        self.market.start()
        self.server.start()
        if self.own_server is not None:
            self.own_server.start()
        self.gateway.start_sweeper()

    def shutdown(self, exit_code: int = 0) -> None:
        """Drain within ``SHUTDOWN_TIMEOUT``: /health 503 and new upgrades refused
        at once, clients closed with 1001 in batches (each with a jittered
        reconnect hint), then the bridge and exchange streams, then the server."""
        if self.stopping:
            return
        self.stopping = True
        deadline = time.monotonic() + self.settings.shutdown_timeout
        self.gateway.draining = True
        count = self.gateway.close_all(CloseCode.GOING_AWAY)
        log.info("shutting down: closing connections", extra={"fields": {"connections": count}})
        while self.gateway.hub.sessions and time.monotonic() < deadline - 2.0:
            gevent.sleep(0.05)
        # Children stop in reverse start order: the bridge, then the exchange streams.
        self.supervisor.shutdown(timeout_per_child=max(0.1, min(2.0, (deadline - time.monotonic()) / 4)))
        self.market.stop()
        self.gateway.hub.broker.close()
        self.gateway.commands.stop()
        if self.gateway.audit is not None:
            self.gateway.audit.close(timeout=max(0.1, min(2.0, deadline - time.monotonic() - 1.0)))
        self.server.stop(timeout=max(0.1, deadline - time.monotonic() - 0.5))
        if self.own_server is not None:
            self.own_server.stop(timeout=0.1)
        log.info("stopped", extra={"fields": {"exit_code": exit_code,
                                              "unclosed": len(self.gateway.hub.sessions)}})


def _demo_settings(settings: Settings) -> Settings:
    """In demo mode, keep the generated key in .demo/ so `make token` can mint for it."""
    from dataclasses import replace

    DEMO_SECRET_FILE.parent.mkdir(exist_ok=True)
    if DEMO_SECRET_FILE.exists():
        secret = DEMO_SECRET_FILE.read_text().strip()
    else:
        secret = settings.authenticator.signing_key
        DEMO_SECRET_FILE.write_text(secret)
        os.chmod(DEMO_SECRET_FILE, 0o600)
    auth = settings.authenticator
    return replace(settings, authenticator=Authenticator(
        secret, auth.algorithms, auth.audience, auth.issuer, auth.leeway, signing_key=secret))


class StartError(Exception):
    """The gateway cannot start (a port, DATA_DIR); the text says which setting to change."""


def _listen(host: str, port: int, setting: str, *, reuse_port: bool = False) -> socket.socket:
    """A bound, listening socket, so that a taken port stops the start before anything runs.

    ``reuse_port``: the public port of ``WORKERS=N``, bound by every worker;
    the kernel spreads connections over them.
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise StartError(f"HOST={host} cannot be resolved") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reasons: dict[int | None, str] = {  # exc.errno may be None
            errno.EADDRINUSE: f"port {port} on {host} is already in use ({setting}): "
                              "stop the other process or choose another port",
            errno.EACCES: f"no permission to listen on port {port} ({setting}): ports below 1024 need privileges",
            errno.EADDRNOTAVAIL: f"HOST={host} is not an address of this machine",
        }
        raise StartError(reasons.get(exc.errno, f"cannot listen on {host}:{port} ({setting}): {exc.strerror}")
                         ) from None
    sock.setblocking(False)
    return sock


def _audit(settings: Settings, metrics: Any) -> AuditLog | None:
    """The audit trail (docs/operations.md): SQLite under DATA_DIR unless DATABASE_URL says otherwise.

    Migrations are applied here; a database that cannot be reached at start
    is one ERROR line, and the writer keeps trying (commands flow meanwhile)."""
    try:
        store = open_store(settings.database_url, settings.data_dir)
    except OSError as exc:
        raise StartError(f"DATA_DIR {settings.data_dir!r} cannot hold the audit database: {exc}") from None
    if store is None:
        return None
    audit = AuditLog(store, metrics, buffer=settings.audit_buffer, flush_interval=settings.audit_flush_interval,
                     redact_keys=settings.audit_redact_keys, overflow=settings.audit_overflow,
                     node=f"{socket.gethostname()}:{os.getpid()}")
    audit.start()
    return audit


def build(settings: Settings, worker: int | None = None) -> System:
    metrics = build_metrics()
    if settings.redis_url:
        from brokers.redis_broker import RedisBroker

        broker: Any = RedisBroker(settings.redis_url, history_size=settings.history_size,
                                  history_ttl=settings.history_ttl, probe_interval=settings.redis_probe_interval,
                                  retry_interval=settings.redis_retry_interval)
        metrics.redis_connected.set_function(lambda: float(broker.healthy()))
        metrics.registry.register(metrics.redis_connected)
    else:
        broker = MemoryBroker(history_size=settings.history_size, history_ttl=settings.history_ttl)
    hub = Hub(metrics, max_connections_per_user=settings.max_connections_per_user, broker=broker)
    audit = _audit(settings, metrics)
    gateway = Gateway(settings, metrics, hub, audit)
    supervisor = Supervisor("root", metrics=metrics, on_escalate=lambda reason: exit_process(reason))
    market = MarketFeeds(settings, hub, supervisor, metrics)

    def supervision_health() -> tuple[str, bool, Any]:
        return "supervisor", supervisor.healthy(), supervisor.status(dynamic=False)

    def broker_health() -> tuple[str, bool | None, Any]:
        # None: reported, but a broker outage does not take the node out of
        # rotation (it keeps serving its local data).
        return "broker", None, broker.stats()

    app = create_app(
        gateway,
        health_checks=[supervision_health, broker_health],
        stats_sections=[lambda: ("bridge", market.stats()), lambda: ("supervisor", supervisor.status())],
    )

    def serve_on(listener: Any) -> GatewayServer:
        return GatewayServer(listener, app, upgrades=gateway, handshake_timeout=settings.connection_timeout,
                             quiet_paths=frozenset({"/livez", "/readyz"}), log=None,
                             error_log=logging.getLogger("gateway.wsgi"))

    if worker is None:
        server, own = serve_on(_listen(settings.host, settings.port, "PORT")), None
    else:
        server = serve_on(_listen(settings.host, settings.port, "PORT", reuse_port=True))
        own = serve_on(_listen(settings.host, settings.own_port(worker), "WORKER_PORTS_FROM"))
    return System(settings, gateway, server, supervisor, market, own)


def settings_help() -> str:
    """Every setting, its default and meaning: the epilog of ``serve --help``."""
    width = max(len(v.name) for v in VARIABLES)
    rows = [f"  {v.name:<{width}}  {v.help} [default: {v.default or 'unset'}]" for v in VARIABLES]
    return "settings (environment variables; times in milliseconds):\n" + "\n".join(rows)


def serve_parser(prog: str = "trading-gateway serve") -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start the gateway: WebSocket, /health, /livez, /readyz, /ws/stats, /metrics and the "
                    "dashboard on one port. Settings come from the environment.",
        epilog=settings_help())


def main(argv: list[str] | None = None) -> int:
    serve_parser("app.py" if argv is None else "trading-gateway serve").parse_args(
        sys.argv[1:] if argv is None else argv)
    worker = worker_index()
    configure_logging(worker=worker)  # the defaults, until the settings say otherwise
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        log.critical("cannot start: %s", exc)
        return 2
    configure_logging(settings.log_format, settings.log_level, worker=worker)
    for warning in unknown_variables(dict(os.environ)):
        log.warning(warning)
    if settings.demo_key_generated:
        settings = _demo_settings(settings)
    if settings.workers > 1 and worker is None:
        return WorkerPool(settings).run()
    try:
        system = build(settings, worker)
    except StartError as exc:
        log.critical("cannot start: %s", exc)
        return 2
    system.start()
    if settings.gc_tune:
        # Everything built so far lives as long as the process: keep the cyclic
        # GC from walking it again and again, and let it run less often (each
        # connection makes a few hundred objects; the default threshold of 700
        # means a collection every few connections).
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
    if worker is not None:
        own_port = system.own_server.server_port if system.own_server else 0
        log.info("worker %d serving on port %d and alone on port %d", worker, system.port, own_port,
                 extra={"fields": {"pid": os.getpid(), "own_port": own_port}})
    else:
        log.info("listening on http://%s:%d (websocket path %s)%s", settings.host, system.port,
                 settings.ws_path, " demo mode: mint a token with `make token USER=alice` or POST /api/demo/token"
                 if settings.demo_mode else "")
    done = gevent.event.Event()

    def shut_down() -> None:
        system.shutdown()
        done.set()

    def on_signal(signum: int) -> None:
        # Draining first, in the signal's own callback: no request handled after
        # this moment may answer as if the node were still taking clients.
        system.gateway.draining = True
        log.info("received %s", signal.Signals(signum).name)
        gevent.spawn(shut_down)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    done.wait()
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``trading-gateway serve | token | simulator``: the command ``pip install`` puts on the PATH."""
    from gateway import token
    from simulator import __main__ as simulator

    def audit(rest: list[str]) -> int:
        from audit.cli import main as audit_main

        try:
            settings = Settings.from_env()
        except ConfigError as exc:
            print(f"cannot read the settings: {exc}", file=sys.stderr)
            return 2
        return audit_main(rest, settings.database_url, settings.data_dir)

    commands: dict[str, tuple[Callable[[list[str]], int], str]] = {
        "serve": (main, "start the gateway (settings from the environment; serve --help lists them)"),
        "token": (token.main, "mint a JWT for a user or a service (token --help)"),
        "simulator": (simulator.main, "run the local Bybit v5 simulator on its own (simulator --help)"),
        "audit": (audit, "the audit trail: migrate, commands, revocations (audit --help)"),
    }
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in commands:
        usage = "usage: trading-gateway {serve,token,simulator,audit} ...\n\n" + "\n".join(
            f"  {name:<10} {text}" for name, (_, text) in commands.items())
        known = bool(args) and args[0] in ("-h", "--help")
        print(usage, file=sys.stdout if known else sys.stderr)
        return 0 if known else 2
    return commands[args[0]][0](args[1:])


if __name__ == "__main__":
    sys.exit(main())
