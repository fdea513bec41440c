"""Settings from the environment, read once at start-up.

Every variable is documented in README.md. Times in the platform's env files
are milliseconds (``WS_HEARTBEAT_INTERVAL``, ``WS_CONNECTION_TIMEOUT``); the
fields here are seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.auth import Authenticator, demo_secret

__all__ = ["ConfigError", "Settings"]


class ConfigError(Exception):
    """The server cannot start with these settings."""


def _flag(env: dict[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _choice(env: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _ms(env: dict[str, str], name: str, default_ms: int) -> float:
    return _int(env, name, default_ms) / 1000.0


def _key(value: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    path = Path(value)
    if path.is_file():
        return path.read_text()
    raise ConfigError("JWT_PUBLIC_KEY / JWT_PRIVATE_KEY must be PEM text or a path to a PEM file")


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3001
    ws_path: str = "/ws"
    demo_mode: bool = False
    authenticator: Authenticator = field(default_factory=lambda: Authenticator(verify_key=demo_secret()))
    service_api_key: str | None = None
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
    shutdown_timeout: float = 10.0
    test_echo_route: bool = False
    # market data
    market_source: str = "none"  # bybit | simulator | none
    bybit_testnet: bool = True
    bybit_ws_base: str | None = None  # e.g. ws://127.0.0.1:9100/v5/public (the category is appended)
    market_categories: tuple[str, ...] = ("spot", "linear")
    popular_pairs: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "ADAUSDT", "SOLUSDT")
    upstream_ping_interval: float = 20.0
    upstream_stale_after: float = 30.0
    unsubscribe_grace: float = 5.0
    status_interval: float = 5.0
    restart_base: float = 0.5
    restart_cap: float = 30.0
    restart_floor: float = 0.1
    restart_reset_after: float = 30.0
    circuit_cooldown: float = 60.0
    # broker
    redis_url: str | None = None
    history_size: int = 100
    history_ttl: float = 300.0
    # several processes on one port (gateway/workers.py)
    workers: int = 1
    worker_ports_from: int = 0  # worker i also serves alone on worker_ports_from + i (0: port + 1)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        demo = _flag(env, "DEMO_MODE")
        algorithm = env.get("JWT_ALGORITHM", "HS256").upper()
        if algorithm not in ("HS256", "RS256", "ES256"):
            raise ConfigError(f"JWT_ALGORITHM must be HS256, RS256 or ES256, got {algorithm!r}")
        leeway = float(_int(env, "JWT_LEEWAY", 10))
        audience = env.get("JWT_AUDIENCE") or None
        issuer = env.get("JWT_ISSUER") or None
        if algorithm == "HS256":
            secret = env.get("JWT_SECRET")
            if not secret:
                if not demo:
                    raise ConfigError("JWT_SECRET is not set: refusing to start without a key "
                                      "(set DEMO_MODE=true to generate a throwaway key)")
                secret = demo_secret()
            if len(secret.encode()) < 32:
                raise ConfigError("JWT_SECRET must be at least 32 bytes (RFC 7518 §3.2)")
            authenticator = Authenticator(secret, ("HS256",), audience, issuer, leeway, signing_key=secret)
        else:
            public = env.get("JWT_PUBLIC_KEY")
            if not public:
                raise ConfigError(f"JWT_PUBLIC_KEY is required with JWT_ALGORITHM={algorithm}")
            private = env.get("JWT_PRIVATE_KEY")
            authenticator = Authenticator(_key(public), (algorithm,), audience, issuer, leeway,
                                          signing_key=_key(private) if private else None)
        heartbeat = _ms(env, "WS_HEARTBEAT_INTERVAL", 30000)
        origins = frozenset(o.strip() for o in env.get("WS_ALLOWED_ORIGINS", "").split(",") if o.strip())
        port = _int(env, "PORT", _int(env, "WS_PORT", 3001))
        workers = _int(env, "WORKERS", 1)
        redis_url = env.get("REDIS_URL") or None
        if not 1 <= workers <= 64:
            raise ConfigError(f"WORKERS must be between 1 and 64, got {workers}")
        if workers > 1 and not redis_url:
            raise ConfigError("WORKERS > 1 needs REDIS_URL: private channels, publications and per-user "
                              "connection limits must reach every worker process")
        if workers > 1 and port == 0:
            raise ConfigError("WORKERS > 1 needs a fixed PORT (every worker binds the same one)")
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            port=port,
            demo_mode=demo,
            authenticator=authenticator,
            service_api_key=env.get("SERVICE_API_KEY") or None,
            max_connections_per_user=_int(env, "WS_MAX_CONNECTIONS_PER_USER", 5),
            max_channels_per_connection=_int(env, "WS_MAX_CHANNELS", 100),
            max_message_size=_int(env, "WS_MAX_MESSAGE_SIZE", 64 * 1024),
            heartbeat_interval=heartbeat,
            silence_timeout=_ms(env, "WS_SILENCE_TIMEOUT", int(heartbeat * 2000)),
            connection_timeout=_ms(env, "WS_CONNECTION_TIMEOUT", 10000),
            allowed_origins=origins,
            max_queue_bytes=_int(env, "WS_QUEUE_BYTES", 1024 * 1024),
            write_timeout=_ms(env, "WS_WRITE_TIMEOUT", 1000),
            sweep_interval=_ms(env, "WS_SWEEP_INTERVAL", 1000),
            shutdown_timeout=_ms(env, "SHUTDOWN_TIMEOUT", 10000),
            test_echo_route=_flag(env, "GATEWAY_TEST_ECHO"),
            market_source=_choice(env, "MARKET_SOURCE", ("bybit", "simulator", "none"), "bybit"),
            bybit_testnet=_flag(env, "BYBIT_TESTNET", True),
            bybit_ws_base=env.get("BYBIT_WS_URL") or None,
            market_categories=tuple(c for c in env.get("MARKET_CATEGORIES", "spot,linear").split(",") if c),
            popular_pairs=tuple(p.strip().upper() for p in
                                env.get("POPULAR_PAIRS", "BTCUSDT,ETHUSDT,ADAUSDT,SOLUSDT").split(",") if p.strip()),
            upstream_ping_interval=_ms(env, "UPSTREAM_PING_INTERVAL", 20000),
            upstream_stale_after=_ms(env, "UPSTREAM_STALE_AFTER", 30000),
            unsubscribe_grace=_ms(env, "MARKET_UNSUBSCRIBE_GRACE", 5000),
            status_interval=_ms(env, "STATUS_INTERVAL", 5000),
            restart_base=_ms(env, "RESTART_BASE", 500),
            restart_cap=_ms(env, "RESTART_CAP", 30000),
            restart_floor=_ms(env, "RESTART_FLOOR", 100),
            restart_reset_after=_ms(env, "RESTART_RESET_AFTER", 30000),
            circuit_cooldown=_ms(env, "CIRCUIT_COOLDOWN", 60000),
            redis_url=redis_url,
            history_size=_int(env, "HISTORY_SIZE", 100),
            history_ttl=_ms(env, "HISTORY_TTL", 300000),
            workers=workers,
            worker_ports_from=_int(env, "WORKER_PORTS_FROM", port + 1),
        )
