"""Every metric the gateway exports, in one place.

Label values are bounded: channel names, message types, close codes,
reasons from fixed tables, child kinds and static child ids. Never a user
id, a token or a client-chosen symbol.

:func:`build` makes a :class:`Metrics` over a registry of its own; the
gateway builds one at start-up and passes it down, and tests build their
own and read ``registry.get_sample_value``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client import values as prometheus_values
from prometheus_client.core import CounterMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CallbackCounter", "Metrics", "build", "labelled"]


class _LoopValue:
    """A metric's value without a lock: the gateway runs on one OS thread (gevent).

    prometheus-client guards every value with a ``threading.Lock``; under
    gevent's monkey patching that is a greenlet lock, and taking it was a
    tenth of the CPU of the market-data path (profiled under scenario f).
    Nothing yields inside ``inc`` or ``set``, so one thread needs no lock.
    Installed as prometheus-client's value class when this module is
    imported, before any metric is made.
    """

    _multiprocess = False
    __slots__ = ("_exemplar", "_value")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._value = 0.0
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


if not prometheus_values.ValueClass._multiprocess:  # prometheus' multiprocess mode keeps its own
    prometheus_values.ValueClass = _LoopValue


@functools.lru_cache(maxsize=8192)
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per label set.

    prometheus-client validates the values and takes a lock on every
    ``labels()`` call; on the per-connection and per-message paths a cached
    child is a dict hit. Label sets here are bounded (docs/metrics.md), so
    the cache is too.
    """
    return metric.labels(*values)


class CallbackCounter:
    """A counter whose value is read at scrape time from ``source``.

    For totals that hot paths already keep in a plain int (bytes written by
    each connection's outbox): incrementing a prometheus-client Counter on
    every socket write cost a fifth of the work per delivery.
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self._name = name  # the attribute names prometheus-client's metrics have
        self._labelnames: tuple[str, ...] = ()
        self.documentation = documentation
        self.source: Callable[[], float] = lambda: 0.0
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.source())


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    # --- gateway core -------------------------------------------------------
    connections: Gauge
    connections_opened: Counter
    closes_sent: Counter
    auth_failures: Counter
    handshake_seconds: Histogram
    subscriptions: Gauge
    messages_received: Counter
    messages_sent: Counter
    bytes_sent: CallbackCounter
    messages_dropped: Counter
    errors_sent: Counter
    publications: Counter
    users: Gauge
    handshake_rejections: Counter
    bytes_received: Counter
    bytes_queued: Counter
    fanout_latency_seconds: Histogram
    queue_bytes: Histogram
    # --- supervision (section owned by supervision.py) ----------------------
    supervisor_restarts: Counter
    supervisor_failures: Counter
    supervisor_backoff_seconds: Gauge
    supervisor_circuit_state: Gauge
    supervisor_time_to_recover_seconds: Histogram
    supervisor_stash_dropped: Counter
    supervisor_escalations: Counter
    # --- market data (section owned by actors/exchange_stream.py) -----------
    upstream_bad_messages: Counter
    book_resyncs: Counter
    exchange_messages: Counter
    exchange_connected: Gauge
    exchange_lag_seconds: Gauge
    conflated: Counter
    internal_queue_depth: Histogram
    # --- the broker ---------------------------------------------------------
    redis_connected: Gauge
    # --- bot commands, the audit trail, the admin API -------------------------
    bot_commands: Counter
    audit_pending: Gauge
    audit_written: Counter
    audit_dropped: Counter
    audit_write_errors: Counter
    audit_database_up: Gauge
    admin_actions: Counter


def build(registry: CollectorRegistry | None = None) -> Metrics:
    r = registry or CollectorRegistry()
    # The standard process_*, python_info and python_gc_* series (memory,
    # CPU, open files, start time) in our own registry.
    ProcessCollector(registry=r)
    PlatformCollector(registry=r)
    GCCollector(registry=r)
    m: dict[str, Any] = dict(
        registry=r,
        connections=Gauge("ws_connections", "Open WebSocket connections by state", ["state"], registry=r),
        connections_opened=Counter("ws_connections_opened", "WebSocket connections accepted", registry=r),
        closes_sent=Counter("ws_close_codes", "Close frames sent by code", ["code"], registry=r),
        auth_failures=Counter("ws_auth_failures", "Rejected authentications by reason", ["reason"], registry=r),
        handshake_seconds=Histogram(
            "ws_handshake_seconds", "Upgrade request to connection message queued", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        ),
        subscriptions=Gauge("ws_subscriptions", "Active subscriptions by channel", ["channel"], registry=r),
        messages_received=Counter("ws_messages_received", "Client messages by type", ["type"], registry=r),
        messages_sent=Counter("ws_messages_sent", "Messages queued to clients by channel and type",
                              ["channel", "type"], registry=r),
        bytes_sent=CallbackCounter("ws_bytes_sent", "Bytes written to client sockets", r),
        messages_dropped=Counter("ws_messages_dropped",
                                 "Messages not delivered, by reason (slow_consumer: queued or refused frames "
                                 "of a connection cut for not reading)", ["reason"], registry=r),
        errors_sent=Counter("ws_errors_sent", "error messages sent by code", ["code"], registry=r),
        publications=Counter("ws_publications", "Publications accepted by channel", ["channel"], registry=r),
        users=Gauge("ws_users", "Distinct users with at least one open connection", registry=r),
        handshake_rejections=Counter("ws_handshake_rejections", "Upgrade requests answered with an HTTP error",
                                     ["status"], registry=r),
        bytes_received=Counter("ws_bytes_received", "Payload bytes of client messages", registry=r),
        bytes_queued=Counter("ws_bytes_queued", "Bytes of data messages queued to clients, by channel",
                             ["channel"], registry=r),
        fanout_latency_seconds=Histogram(
            "ws_fanout_latency_seconds",
            "Exchange frame received by the gateway to the client socket write (sampled)", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        ),
        # Bytes, the unit of WS_QUEUE_BYTES (1 MiB by default): a connection whose
        # queue would pass that limit is closed with 4001. Buckets resolve the
        # approach to the default limit and go past it for larger settings.
        queue_bytes=Histogram(
            "ws_connection_queue_bytes",
            "Bytes waiting in each connection's outbound queue, the amount WS_QUEUE_BYTES limits "
            "(every connection sampled each slow sweep)",
            registry=r, buckets=(0, 1024, 4096, 16384, 65536, 262144, 524288, 786432, 1048576, 4194304, 16777216),
        ),
    )
    # --- supervision (section owned by supervision.py) ----------------------
    # reason: a failure phase (start, stop, killed, hung, normal) or an
    # exception type from supervision.REASON_TYPES; child_id only for static
    # children (exchange streams), never for connections or channels.
    m.update(
        supervisor_restarts=Counter("ws_supervisor_restarts", "Child restarts scheduled, by kind and reason",
                                    ["kind", "reason"], registry=r),
        supervisor_failures=Counter("ws_supervisor_child_failures",
                                    "Child deaths by kind and reason, restarted or not", ["kind", "reason"],
                                    registry=r),
        supervisor_backoff_seconds=Gauge("ws_supervisor_backoff_seconds",
                                         "Restart delay a static child waits now (0 when running)", ["child_id"],
                                         registry=r),
        supervisor_circuit_state=Gauge("ws_supervisor_circuit_state",
                                       "Circuit of a static child: 0 closed, 1 half-open, 2 open", ["child_id"],
                                       registry=r),
        supervisor_time_to_recover_seconds=Histogram(
            "ws_supervisor_time_to_recover_seconds", "First failure to the next incarnation running, by kind",
            ["kind"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
        ),
        supervisor_stash_dropped=Counter("ws_supervisor_stash_dropped",
                                         "Messages to a down child not delivered (full stash, not restarted)",
                                         ["kind", "reason"], registry=r),
        supervisor_escalations=Counter("ws_supervisor_escalations",
                                       "Supervisor-wide restart intensity exceeded", registry=r),
    )
    # --- market data (section owned by actors/exchange_stream.py) -----------
    m.update(
        # reason: market.exchange.DropReason (unparseable, bad_value, wrong_symbol, unsubscribed)
        upstream_bad_messages=Counter("ws_exchange_bad_messages",
                                      "Frames from an exchange dropped (the stream stays up), by reason",
                                      ["exchange", "reason"], registry=r),
        book_resyncs=Counter("ws_exchange_book_resyncs", "Order books resubscribed after a lost update",
                             ["exchange", "category"], registry=r),
        exchange_messages=Counter("ws_exchange_messages", "Data frames received from an exchange stream",
                                  ["exchange", "category"], registry=r),
        exchange_connected=Gauge("ws_exchange_connected", "1 while the exchange stream is connected",
                                 ["exchange", "category"], registry=r),
        exchange_lag_seconds=Gauge("ws_exchange_lag_seconds",
                                   "Median of receive time minus exchange timestamp over recent frames",
                                   ["exchange", "category"], registry=r),
    )
    # Bursts (docs/operations.md): latest-value data skipped because a newer
    # value came while something was behind (the exchange stream, or a client),
    # and how deep the queues on the market-data path are.
    m.update(
        conflated=Counter("ws_market_data_conflated", "Latest-value updates (tickers, book views) replaced by a "
                          "newer one before they went on, by stage (channel: before the fan-out, in one socket "
                          "read while the exchange stream was behind; connection: in a client's queue while it "
                          "was behind, counted when it closes)", ["stage"], registry=r),
        internal_queue_depth=Histogram(
            "ws_internal_queue_depth", "Messages waiting in an actor's inbox on the market-data path, sampled as "
            "each is taken, by stage (exchange_stream, market_channel)", ["stage"], registry=r,
            buckets=(0, 1, 4, 16, 64, 256, 1024, 4096, 16384)),
    )
    # --- the broker ---------------------------------------------------------
    # Registered only with REDIS_URL (app.py): without Redis the series is
    # absent rather than a 0 that would read as an outage.
    m.update(
        redis_connected=Gauge("ws_redis_connected", "1 while this node's connection to Redis (REDIS_URL) is up",
                              registry=None),
    )
    # --- bot commands, the audit trail, the admin API -------------------------
    # state: a protocol.commands state (sent, accepted, succeeded, failed,
    # timed_out) or duplicate (a resend answered from the stored command).
    m.update(
        bot_commands=Counter("ws_bot_commands", "Bot command state changes, by state (sent: stored and routed "
                             "to the owning service)", ["state"], registry=r),
        audit_pending=Gauge("ws_audit_pending", "Audit records waiting for the database (bounded by AUDIT_BUFFER)",
                            registry=r),
        audit_written=Counter("ws_audit_written", "Audit records written to the database", registry=r),
        audit_dropped=Counter("ws_audit_dropped", "Audit records dropped past AUDIT_BUFFER while the database "
                              "was down (AUDIT_OVERFLOW=drop)", registry=r),
        audit_write_errors=Counter("ws_audit_write_errors", "Failed audit batch writes (retried)", registry=r),
        audit_database_up=Gauge("ws_audit_database_up", "1 while the audit database takes writes", registry=r),
        admin_actions=Counter("ws_admin_actions", "Admin API actions taken, by action (revoke_token, "
                              "revoke_user, disconnect)", ["action"], registry=r),
    )
    names = {f.name for f in fields(Metrics)}
    return Metrics(**{k: v for k, v in m.items() if k in names})
