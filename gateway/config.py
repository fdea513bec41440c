"""Settings from the environment, read once at start-up: the one place for them.

:data:`VARIABLES` lists every environment variable the gateway reads, with
its default and meaning; ``trading-gateway serve --help`` prints it, the
README's table repeats it (a test keeps the two equal), and
:func:`unknown_variables` warns about a name with one of our prefixes that
is not in it (``WS_MAX_CHANNEL`` → "did you mean WS_MAX_CHANNELS?").

Times in the platform's env files are milliseconds
(``WS_HEARTBEAT_INTERVAL``, ``WS_CONNECTION_TIMEOUT``); the fields of
:class:`Settings` are seconds. A value that cannot work raises
:class:`ConfigError` whose text names the variable and what is wrong: the
process prints it as one line and exits 2 (docs/operations.md).
"""

from __future__ import annotations

import builtins
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jwt

from gateway.logs import redact
from protocol.auth import Authenticator, demo_secret

__all__ = ["DEMO_SECRET_FILE", "VARIABLES", "ConfigError", "Settings", "Variable", "unknown_variables"]

# In DEMO_MODE the generated key is kept here (relative to the working
# directory), so `make token` / `trading-gateway token` can mint for it.
DEMO_SECRET_FILE = Path(".demo") / "jwt_secret"


class ConfigError(Exception):
    """The server cannot start with these settings."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: ``default`` as text ("" = unset), ``help`` for humans."""

    name: str
    default: str
    help: str


# Every variable read anywhere in the gateway, in the order --help shows them.
VARIABLES: tuple[Variable, ...] = (
    Variable("PORT", "3001", "HTTP and WebSocket port (WS_PORT is read when PORT is unset)"),
    Variable("WS_PORT", "", "the platform's older name for PORT"),
    Variable("HOST", "0.0.0.0", "bind address"),
    Variable("JWT_SECRET", "", "HS256 key, at least 32 bytes; required unless DEMO_MODE or a public key is set"),
    Variable("JWT_ALGORITHM", "HS256", "HS256, or RS256 / ES256 to verify with JWT_PUBLIC_KEY"),
    Variable("JWT_PUBLIC_KEY", "", "PEM text or a path to a PEM file (RS256/ES256)"),
    Variable("JWT_PRIVATE_KEY", "", "PEM text or path, only to mint tokens (RS256/ES256)"),
    Variable("JWT_AUDIENCE", "", "when set, tokens must carry this aud"),
    Variable("JWT_ISSUER", "", "when set, tokens must carry this iss"),
    Variable("JWT_LEEWAY", "10", "seconds of clock skew allowed on exp"),
    Variable("DEMO_MODE", "false", "generate a key (kept in .demo/jwt_secret) and allow POST /api/demo/token"),
    Variable("SERVICE_API_KEY", "", "bearer key for POST /api/publish (service-role tokens work too)"),
    Variable("PUBLISH_BATCH_MAX", "1000", "publications in one POST /api/publish/batch (400 too_many_publications "
             "above)"),
    Variable("PUBLISH_BODY_BYTES", "1048576", "request body of POST /api/publish and /api/publish/batch in bytes "
             "(413 too_large above)"),
    Variable("PUBLISH_DATA_BYTES", "65536", "one publication's data, as compact JSON, in bytes (too_large above)"),
    Variable("ADMIN_API_KEY", "", "bearer key for /api/admin/* and /api/audit/* (admin-role tokens work too)"),
    Variable("BOT_COMMAND_TIMEOUT", "30000", "ms a bot command may take before it is timed_out (a command's "
             "timeoutMs may ask for less or more, up to 10 minutes)"),
    Variable("BOT_COMMAND_MAX_OPEN", "100", "unfinished bot commands one user may have sent through one node "
             "(too_many_commands above; a command counts until its result or its deadline)"),
    Variable("DATA_DIR", "data", "directory of the embedded audit database (audit.sqlite3)"),
    Variable("DATABASE_URL", "", "postgresql://user:password@host/db for the audit trail; unset: SQLite in "
             "DATA_DIR; none: no audit trail"),
    Variable("AUDIT_REDACT_KEYS", "password,secret,token,apiKey,apiSecret,privateKey,passphrase",
             "params keys (any depth, any case) recorded as \"[redacted]\" in the audit trail"),
    Variable("AUDIT_BUFFER", "100000", "audit records held while the database is down (then AUDIT_OVERFLOW)"),
    Variable("AUDIT_OVERFLOW", "drop", "past AUDIT_BUFFER: drop (count and log; commands flow) or refuse (new "
             "bot commands get audit_unavailable)"),
    Variable("AUDIT_FLUSH_INTERVAL", "200", "ms between the audit writer's batches"),
    Variable("WS_MAX_CONNECTIONS_PER_USER", "5", "the next connection of that user is closed with 4503"),
    Variable("WS_MAX_CHANNELS", "100", "channel subscriptions per connection"),
    Variable("WS_MAX_MESSAGE_SIZE", "65536", "inbound message size in bytes (1009 above)"),
    Variable("WS_HEARTBEAT_INTERVAL", "30000", "ms between server pings"),
    Variable("WS_SILENCE_TIMEOUT", "", "ms of silence before close 4002 (default 2 x WS_HEARTBEAT_INTERVAL)"),
    Variable("WS_CONNECTION_TIMEOUT", "10000", "ms for the handshake (408 after)"),
    Variable("WS_ALLOWED_ORIGINS", "", "comma-separated exact origins; others get 403 (unset: any)"),
    Variable("WS_QUEUE_BYTES", "1048576", "outbound queue per connection in bytes (4001 above)"),
    Variable("WS_WRITE_TIMEOUT", "1000", "ms a write may block (4001 after)"),
    Variable("WS_SWEEP_INTERVAL", "1000", "ms between liveness sweeps"),
    Variable("WS_COMMAND_RATE", "20", "client messages per second a connection may sustain (rate_limited above)"),
    Variable("WS_COMMAND_BURST", "40", "client messages a connection may send at once"),
    Variable("WS_ERROR_BUDGET", "20", "error replies within 10 s before the connection is closed with 4003"),
    Variable("WS_PING_RATE", "5", "WebSocket pings per second a client may sustain, burst 4x (1008 above)"),
    Variable("WS_MESSAGE_DEADLINE", "10000", "ms a started message (fragments, a partial frame) may take (1008)"),
    Variable("WS_MAX_CONNECTIONS", "0", "connections this process takes; 503 before the upgrade at the cap "
             "(0: the open-file limit minus 256)"),
    Variable("WS_MAX_CONNECTIONS_PER_ADDRESS", "500", "user connections from one client address; 429 above"),
    Variable("WS_TRUSTED_PROXIES", "", "comma-separated proxy addresses whose X-Forwarded-For names the client"),
    Variable("WS_REQUIRE_ORIGIN", "false", "with WS_ALLOWED_ORIGINS: refuse upgrades without an Origin header too"),
    Variable("SHUTDOWN_TIMEOUT", "10000", "ms the shutdown may take"),
    Variable("MARKET_SOURCE", "bybit", "bybit, simulator (in-process, the make run default) or none"),
    Variable("BYBIT_TESTNET", "true", "false for Bybit mainnet"),
    Variable("BYBIT_WS_URL", "", "base URL override, e.g. ws://127.0.0.1:9100/v5/public (the category is appended)"),
    Variable("MARKET_CATEGORIES", "spot,linear", "one exchange stream per category (spot, linear)"),
    Variable("POPULAR_PAIRS", "BTCUSDT,ETHUSDT,ADAUSDT,SOLUSDT", "spot pairs kept subscribed"),
    Variable("UPSTREAM_PING_INTERVAL", "20000", "ms between pings to the exchange"),
    Variable("UPSTREAM_STALE_AFTER", "30000", "ms without data or pong before a stream is restarted"),
    Variable("UPSTREAM_DATA_SILENCE", "10000", "ms without market data, while a level-1 book (the canary) is "
             "subscribed, before a stream is restarted"),
    Variable("MARKET_UNSUBSCRIBE_GRACE", "5000", "ms after the last subscriber leaves before unsubscribing"),
    Variable("STATUS_INTERVAL", "5000", "ms between time-sync / system-health publications"),
    Variable("RESTART_BASE", "500", "ms: exchange-stream restart backoff base (full jitter)"),
    Variable("RESTART_CAP", "30000", "ms: the longest restart backoff"),
    Variable("RESTART_FLOOR", "100", "ms: the shortest restart backoff"),
    Variable("RESTART_RESET_AFTER", "30000", "ms of health before the attempt count resets"),
    Variable("CIRCUIT_COOLDOWN", "60000", "ms between attempts while a circuit is open"),
    Variable("REDIS_URL", "", "redis://host[:port][/db] (or rediss://, unix://): many gateway processes as one"),
    Variable("REDIS_PROBE_INTERVAL", "1000", "ms between a node's Redis probes; none back for two intervals = "
             "connection lost (a half-open Redis)"),
    Variable("REDIS_RETRY_INTERVAL", "500", "ms: longest wait between Redis reconnect attempts in an outage's "
             "first minute"),
    Variable("HISTORY_SIZE", "100", "publications kept per private channel for recovery"),
    Variable("HISTORY_TTL", "300000", "ms a publication stays recoverable"),
    Variable("WORKERS", "1", "gateway processes on the one port (SO_REUSEPORT); more than 1 needs REDIS_URL"),
    Variable("WORKER_PORTS_FROM", "", "worker i also serves alone on this port + i (default PORT + 1)"),
    Variable("LOG_FORMAT", "text", "text, or json for JSON lines"),
    Variable("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    Variable("GATEWAY_GC_TUNE", "1", "0 keeps Python's default GC thresholds"),
    Variable("GATEWAY_TEST_ECHO", "false", "adds the /ws-echo route Autobahn runs against (tests only)"),
)
_BY_NAME = {v.name: v for v in VARIABLES}
# Set by the gateway itself, never by an operator: known, so never "unknown".
INTERNAL = frozenset({"GATEWAY_WORKER"})
# A name starting with one of these is ours: if it is not a setting, it is a typo.
PREFIXES = ("WS_", "JWT_", "GATEWAY_", "BYBIT_", "MARKET_", "UPSTREAM_", "RESTART_", "CIRCUIT_", "HISTORY_",
            "WORKER", "POPULAR_PAIR", "DEMO_", "SHUTDOWN_", "SERVICE_API", "REDIS_PROBE", "REDIS_RETRY", "PUBLISH_",
            "ADMIN_", "BOT_COMMAND", "AUDIT_", "DATABASE_", "DATA_DIR")
# What Kubernetes injects for every service (a service named ws-gateway gives
# WS_GATEWAY_SERVICE_HOST, WS_GATEWAY_PORT_3001_TCP, ...): not typos.
_SERVICE_LINKS = re.compile(
    r".+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$")
CATEGORIES = ("spot", "linear")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def unknown_variables(env: dict[str, str]) -> list[str]:
    """One warning per variable that looks like ours but is not a setting."""
    known = _BY_NAME.keys() | INTERNAL
    warnings = []
    for name in sorted(env):
        if name in known or not name.startswith(PREFIXES) or _SERVICE_LINKS.match(name):
            continue
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "no setting has a similar name"
        warnings.append(f"unknown setting {name} is ignored: {hint} (trading-gateway serve --help lists them)")
    return warnings


class _Env:
    """Reads one variable at a time, with the table's default and a clear error."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str:
        value = self.env.get(name)
        return _BY_NAME[name].default if value is None or value.strip() == "" else value.strip()

    def text(self, name: str) -> str | None:
        return self.raw(name) or None

    def flag(self, name: str) -> bool:
        value = self.raw(name).lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {self.env.get(name)!r}")

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        """One of ``allowed``, whatever the case, spelled as ``allowed`` spells it."""
        by_lower = {a.lower(): a for a in allowed}
        value = by_lower.get(self.raw(name).lower())
        if value is None:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {self.env.get(name)!r}")
        return value

    def int(self, name: str, low: int = 0, high: int | None = None, default: int | None = None) -> int:
        raw = self.raw(name)
        if raw == "" and default is not None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{name} must be {bound}, got {value}")
        return value

    # builtins.int: in this class body, ``int`` is the method above
    def ms(self, name: str, low: builtins.int = 1, default: builtins.int | None = None) -> float:
        return self.int(name, low, default=default) / 1000.0

    def items(self, name: str) -> tuple[str, ...]:
        """A comma-separated list; set but empty means an empty list (POPULAR_PAIRS= pins none)."""
        value = self.env.get(name)
        value = _BY_NAME[name].default if value is None else value
        return tuple(item.strip() for item in value.split(",") if item.strip())


def _key(value: str, name: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    path = Path(value)
    if path.is_file():
        return path.read_text()
    raise ConfigError(f"{name} must be PEM text or a path to a PEM file (no file at {value[:80]!r})")


def _checked_key(key: str, algorithm: str, name: str) -> str:
    """A key PyJWT can use: checked now, not at the first client's connect."""
    try:
        jwt.get_algorithm_by_name(algorithm).prepare_key(key)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ConfigError(f"{name} is not a usable {algorithm} key ({type(exc).__name__})") from None
    return key


def _redis_url(raw: str | None) -> str | None:
    if not raw:
        return None
    shown = redact(raw)
    try:
        parts = urlsplit(raw)
        port_ok = parts.port is None or 0 < parts.port
        db = parts.path.strip("/")
    except ValueError:
        parts, port_ok, db = None, False, ""
    if parts is None or parts.scheme not in ("redis", "rediss", "unix") or not port_ok \
            or (parts.scheme != "unix" and (not parts.hostname or (db and not db.isdigit()))):
        raise ConfigError(f"REDIS_URL must be redis://host[:port][/db], rediss://… or unix://… "
                          f"(a password goes before the host: user:password@), got {shown!r}")
    return raw


def _database_url(raw: str | None) -> str | None:
    """DATABASE_URL: unset (SQLite in DATA_DIR), none, sqlite:///path or postgresql://…"""
    if raw is None:
        return None
    if raw.lower() == "none":
        return "none"
    scheme = urlsplit(raw).scheme
    if scheme in ("postgresql", "postgres"):
        if not urlsplit(raw).hostname and "host=" not in raw:
            raise ConfigError(f"DATABASE_URL must name a host: postgresql://user:password@host/db, "
                              f"got {redact(raw)!r}")
        return raw
    if scheme == "sqlite" and raw.startswith("sqlite:///") and len(raw) > len("sqlite:///"):
        return raw
    raise ConfigError(f"DATABASE_URL must be postgresql://user:password@host/db, sqlite:///path or none, "
                      f"got {redact(raw)!r}")


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3001
    ws_path: str = "/ws"
    demo_mode: bool = False
    demo_key_generated: bool = False  # DEMO_MODE without a key: a throwaway one was made (app.py keeps it)
    authenticator: Authenticator = field(default_factory=lambda: Authenticator(verify_key=demo_secret()))
    service_api_key: str | None = None
    # the publishing API (gateway/http.py)
    publish_batch_max: int = 1000
    publish_body_bytes: int = 1024 * 1024
    publish_data_bytes: int = 64 * 1024
    # bot commands, the audit trail and the admin API
    admin_api_key: str | None = None
    bot_command_timeout: float = 30.0
    bot_command_max_open: int = 100
    data_dir: str = "data"
    database_url: str | None = None  # None: SQLite in data_dir; "none": no audit trail
    audit_redact_keys: tuple[str, ...] = ("password", "secret", "token", "apiKey", "apiSecret", "privateKey",
                                          "passphrase")
    audit_buffer: int = 100_000
    audit_overflow: str = "drop"  # drop | refuse
    audit_flush_interval: float = 0.2
    max_connections_per_user: int = 5
    max_channels_per_connection: int = 100
    max_message_size: int = 64 * 1024
    heartbeat_interval: float = 30.0
    silence_timeout: float = 60.0
    connection_timeout: float = 10.0
    allowed_origins: frozenset[str] = frozenset()
    max_queue_bytes: int = 1024 * 1024
    write_timeout: float = 1.0
    sweep_interval: float = 1.0
    command_rate: int = 20
    command_burst: int = 40
    error_budget: int = 20
    ping_rate: int = 5
    message_deadline: float = 10.0
    max_connections: int = 0  # 0: from the open-file limit (gateway/server.py)
    max_connections_per_address: int = 500
    trusted_proxies: frozenset[str] = frozenset()
    require_origin: bool = False
    shutdown_timeout: float = 10.0
    test_echo_route: bool = False
    # market data
    market_source: str = "bybit"  # bybit | simulator | none
    bybit_testnet: bool = True
    bybit_ws_base: str | None = None  # e.g. ws://127.0.0.1:9100/v5/public (the category is appended)
    market_categories: tuple[str, ...] = ("spot", "linear")
    popular_pairs: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "ADAUSDT", "SOLUSDT")
    upstream_ping_interval: float = 20.0
    upstream_stale_after: float = 30.0
    upstream_data_silence: float = 10.0
    unsubscribe_grace: float = 5.0
    status_interval: float = 5.0
    restart_base: float = 0.5
    restart_cap: float = 30.0
    restart_floor: float = 0.1
    restart_reset_after: float = 30.0
    circuit_cooldown: float = 60.0
    # broker
    redis_url: str | None = None
    redis_probe_interval: float = 1.0
    redis_retry_interval: float = 0.5
    history_size: int = 100
    history_ttl: float = 300.0
    # several processes on one port (gateway/workers.py)
    workers: int = 1
    worker_ports_from: int = 0  # WORKER_PORTS_FROM; 0 (unset): port + 1. Read it as own_port(i).
    # logging and the process
    log_format: str = "text"
    log_level: str = "INFO"
    gc_tune: bool = True

    def own_port(self, worker: int) -> int:
        """The port worker ``worker`` also serves alone on (WORKERS > 1)."""
        return (self.worker_ports_from or self.port + 1) + worker

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = _Env(dict(os.environ) if env is None else env)
        demo = e.flag("DEMO_MODE")
        algorithm = e.raw("JWT_ALGORITHM").upper()
        if algorithm not in ("HS256", "RS256", "ES256"):
            raise ConfigError(f"JWT_ALGORITHM must be HS256, RS256 or ES256, got {algorithm!r}")
        leeway = float(e.int("JWT_LEEWAY"))
        audience, issuer = e.text("JWT_AUDIENCE"), e.text("JWT_ISSUER")
        generated = False
        if algorithm == "HS256":
            secret = e.text("JWT_SECRET")
            if not secret:
                if not demo:
                    raise ConfigError("JWT_SECRET is not set: refusing to start without a key "
                                      "(set DEMO_MODE=true to generate a throwaway key)")
                secret, generated = demo_secret(), True
            if len(secret.encode()) < 32:
                raise ConfigError("JWT_SECRET must be at least 32 bytes (RFC 7518 §3.2)")
            authenticator = Authenticator(secret, ("HS256",), audience, issuer, leeway, signing_key=secret)
        else:
            public = e.text("JWT_PUBLIC_KEY")
            if not public:
                raise ConfigError(f"JWT_PUBLIC_KEY is required with JWT_ALGORITHM={algorithm}")
            private = e.text("JWT_PRIVATE_KEY")
            authenticator = Authenticator(
                _checked_key(_key(public, "JWT_PUBLIC_KEY"), algorithm, "JWT_PUBLIC_KEY"), (algorithm,),
                audience, issuer, leeway,
                signing_key=_checked_key(_key(private, "JWT_PRIVATE_KEY"), algorithm, "JWT_PRIVATE_KEY")
                if private else None)
        heartbeat_ms = e.int("WS_HEARTBEAT_INTERVAL", 1)
        # PORT wins; WS_PORT is the platform's older name, read only when PORT is unset.
        port = e.int("PORT", 0, 65535) if e.env.get("PORT", "").strip() else e.int("WS_PORT", 0, 65535, default=3001)
        workers = e.int("WORKERS", 1, 64)
        redis_url = _redis_url(e.text("REDIS_URL"))
        if workers > 1 and not redis_url:
            raise ConfigError("WORKERS > 1 needs REDIS_URL: private channels, publications and per-user "
                              "connection limits must reach every worker process")
        if workers > 1 and port == 0:
            raise ConfigError("WORKERS > 1 needs a fixed PORT (every worker binds the same one)")
        bybit_ws_base = e.text("BYBIT_WS_URL")
        if bybit_ws_base is not None and urlsplit(bybit_ws_base).scheme not in ("ws", "wss"):
            raise ConfigError(f"BYBIT_WS_URL must start with ws:// or wss://, got {bybit_ws_base!r}")
        categories = e.items("MARKET_CATEGORIES")
        for category in categories:
            if category not in CATEGORIES:
                raise ConfigError(f"MARKET_CATEGORIES must name only {', '.join(CATEGORIES)}, got {category!r}")
        restart_cap = e.ms("RESTART_CAP")
        return cls(
            host=e.raw("HOST"),
            port=port,
            demo_mode=demo,
            demo_key_generated=generated,
            authenticator=authenticator,
            service_api_key=e.text("SERVICE_API_KEY"),
            publish_batch_max=e.int("PUBLISH_BATCH_MAX", 1, 100_000),
            publish_body_bytes=e.int("PUBLISH_BODY_BYTES", 1024),
            publish_data_bytes=e.int("PUBLISH_DATA_BYTES", 16),
            admin_api_key=e.text("ADMIN_API_KEY"),
            bot_command_timeout=e.ms("BOT_COMMAND_TIMEOUT", 100),
            bot_command_max_open=e.int("BOT_COMMAND_MAX_OPEN", 1),
            data_dir=e.raw("DATA_DIR"),
            database_url=_database_url(e.text("DATABASE_URL")),
            audit_redact_keys=e.items("AUDIT_REDACT_KEYS"),
            audit_buffer=e.int("AUDIT_BUFFER", 1),
            audit_overflow=e.choice("AUDIT_OVERFLOW", ("drop", "refuse")),
            audit_flush_interval=e.ms("AUDIT_FLUSH_INTERVAL", 1),
            max_connections_per_user=e.int("WS_MAX_CONNECTIONS_PER_USER", 1),
            max_channels_per_connection=e.int("WS_MAX_CHANNELS", 1),
            max_message_size=e.int("WS_MAX_MESSAGE_SIZE", 125),
            heartbeat_interval=heartbeat_ms / 1000.0,
            silence_timeout=e.ms("WS_SILENCE_TIMEOUT", default=2 * heartbeat_ms),
            connection_timeout=e.ms("WS_CONNECTION_TIMEOUT"),
            allowed_origins=frozenset(e.items("WS_ALLOWED_ORIGINS")),
            max_queue_bytes=e.int("WS_QUEUE_BYTES", 1024),
            write_timeout=e.ms("WS_WRITE_TIMEOUT"),
            sweep_interval=e.ms("WS_SWEEP_INTERVAL"),
            command_rate=e.int("WS_COMMAND_RATE", 1),
            command_burst=e.int("WS_COMMAND_BURST", 1),
            error_budget=e.int("WS_ERROR_BUDGET", 1),
            ping_rate=e.int("WS_PING_RATE", 1),
            message_deadline=e.ms("WS_MESSAGE_DEADLINE"),
            max_connections=e.int("WS_MAX_CONNECTIONS", 0),
            max_connections_per_address=e.int("WS_MAX_CONNECTIONS_PER_ADDRESS", 1),
            trusted_proxies=frozenset(e.items("WS_TRUSTED_PROXIES")),
            require_origin=e.flag("WS_REQUIRE_ORIGIN"),
            shutdown_timeout=e.ms("SHUTDOWN_TIMEOUT"),
            test_echo_route=e.flag("GATEWAY_TEST_ECHO"),
            market_source=e.choice("MARKET_SOURCE", ("bybit", "simulator", "none")),
            bybit_testnet=e.flag("BYBIT_TESTNET"),
            bybit_ws_base=bybit_ws_base,
            market_categories=categories,
            popular_pairs=tuple(p.upper() for p in e.items("POPULAR_PAIRS")),
            upstream_ping_interval=e.ms("UPSTREAM_PING_INTERVAL"),
            upstream_stale_after=e.ms("UPSTREAM_STALE_AFTER"),
            upstream_data_silence=e.ms("UPSTREAM_DATA_SILENCE"),
            unsubscribe_grace=e.ms("MARKET_UNSUBSCRIBE_GRACE", 0),
            status_interval=e.ms("STATUS_INTERVAL"),
            restart_base=e.ms("RESTART_BASE", 0),
            restart_cap=restart_cap,
            restart_floor=e.ms("RESTART_FLOOR", 0),
            restart_reset_after=e.ms("RESTART_RESET_AFTER", 0),
            circuit_cooldown=e.ms("CIRCUIT_COOLDOWN", 0),
            redis_url=redis_url,
            redis_probe_interval=e.ms("REDIS_PROBE_INTERVAL", 50),
            redis_retry_interval=e.ms("REDIS_RETRY_INTERVAL", 50),
            history_size=e.int("HISTORY_SIZE", 1),
            history_ttl=e.ms("HISTORY_TTL", 1000),
            workers=workers,
            worker_ports_from=e.int("WORKER_PORTS_FROM", 1, 65535, default=0),
            log_format=e.choice("LOG_FORMAT", ("text", "json")),
            log_level=e.choice("LOG_LEVEL", LOG_LEVELS),
            gc_tune=e.flag("GATEWAY_GC_TUNE"),
        )
