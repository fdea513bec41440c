"""Start the gateway: ``python app.py`` (settings from the environment, see README.md).

The composition root: builds the hub, the gateway, the HTTP app and the
pywsgi server on one port, installs signal handlers, and serves until
SIGTERM/SIGINT.
"""

from gevent import monkey

# websocket-client (the exchange streams) uses the socket module: patch it
# before anything imports socket, threading or ssl.
monkey.patch_all()

import gc
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent

from brokers.memory import MemoryBroker
from gateway.auth import Authenticator
from gateway.config import ConfigError, Settings
from gateway.http import create_app
from gateway.hub import Hub
from gateway.logs import configure_logging
from gateway.marketdata import MarketData
from gateway.server import Gateway
from gateway.workers import WorkerPool, worker_index
from metrics.definitions import build as build_metrics
from protocol.close_codes import CloseCode
from supervision import Supervisor, exit_process
from transport.handler import GatewayServer

log = logging.getLogger("gateway")

DEMO_SECRET_FILE = Path(".demo") / "jwt_secret"


@dataclass
class System:
    settings: Settings
    gateway: Gateway
    server: GatewayServer
    supervisor: Supervisor
    market: MarketData
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


def _shared_listener(host: str, port: int) -> socket.socket:
    """The public port, bound by every worker: the kernel spreads connections over them."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def build(settings: Settings, worker: int | None = None) -> System:
    metrics = build_metrics()
    if settings.redis_url:
        from brokers.redis_broker import RedisBroker

        broker: Any = RedisBroker(settings.redis_url, history_size=settings.history_size,
                                  history_ttl=settings.history_ttl)
    else:
        broker = MemoryBroker(history_size=settings.history_size, history_ttl=settings.history_ttl)
    hub = Hub(metrics, max_connections_per_user=settings.max_connections_per_user, broker=broker)
    gateway = Gateway(settings, metrics, hub)
    supervisor = Supervisor("root", metrics=metrics, on_escalate=lambda reason: exit_process(reason))
    market = MarketData(settings, hub, supervisor, metrics)

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
        server = GatewayServer(listener, app, log=None, error_log=logging.getLogger("gateway.wsgi"))
        server.gateway = gateway
        server.handshake_timeout = settings.connection_timeout
        return server

    if worker is None:
        server, own = serve_on((settings.host, settings.port)), None
    else:
        server = serve_on(_shared_listener(settings.host, settings.port))
        own = serve_on((settings.host, settings.worker_ports_from + worker))
    gateway.server = server
    return System(settings, gateway, server, supervisor, market, own)


def main() -> int:
    configure_logging()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        log.critical("cannot start: %s", exc)
        return 2
    if settings.demo_mode and not os.environ.get("JWT_SECRET"):
        settings = _demo_settings(settings)
    worker = worker_index()
    if settings.workers > 1 and worker is None:
        return WorkerPool(settings).run()
    system = build(settings, worker)
    system.start()
    if os.environ.get("GATEWAY_GC_TUNE", "1") == "1":
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

    def on_signal(signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        gevent.spawn(lambda: (system.shutdown(), done.set()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
