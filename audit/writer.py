"""The audit log the gateway talks to: records go into a bounded buffer, a writer greenlet stores them in batches.

A bot command must never wait for a disk or a network round trip, and must
keep flowing while the database is down: :meth:`AuditLog.command` and
:meth:`AuditLog.admin_action` only append to a buffer (parameters redacted
first) and return. The writer greenlet takes up to :data:`BATCH` records per
transaction every ``flush_interval`` (sooner when a batch is ready).

Where the blocking database call runs: in gevent's threadpool for SQLite
(``sqlite3`` holds its OS thread) and for PostgreSQL when psycopg cannot
cooperate with gevent (a process that is not monkey-patched, e.g. the
tests); on the event loop itself when it can (psycopg 3 in the patched
gateway: its waits yield to gevent, docs/stack-notes.md). Either way one
call at a time (a semaphore): each backend holds one connection.

While the database is down the batch stays at the head of the buffer
(nothing is lost up to ``buffer`` records), ``audit_database_up`` is 0,
``audit_write_errors`` counts each failed attempt, one ERROR line says so
(``audit database unavailable …``), and the writer retries with a capped,
jittered backoff. When a write works again one WARNING line says
``audit database back …; wrote N records held during the outage``. Past
``buffer`` records, ``overflow="drop"`` drops the new record (counted in
``audit_dropped``, one ERROR line per outage, the number in the ``back``
line) and ``overflow="refuse"`` makes :meth:`command` return False and
:attr:`accepting` False (the gateway then refuses new bot commands).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.lock

from audit.records import AdminAction, CommandRecord, Record, Revocation, redact
from audit.store import RecordRejected, Store, StoreUnavailable
from metrics.definitions import Metrics

__all__ = ["BATCH", "AuditLog", "AuditUnavailable"]

log = logging.getLogger("gateway.audit")

BATCH = 500  # records per transaction
BACKOFF_CAP = 5.0  # seconds between attempts while the database is down, at most
PROBE_INTERVAL = 5.0  # an idle writer checks the database this often, so the gauge tells the truth
CALL_WAIT = 10.0  # a read waits this long for the writer's call to finish, then gives up

T = TypeVar("T")


class AuditUnavailable(Exception):
    """The audit database cannot store or answer now."""


class AuditLog:
    def __init__(self, store: Store, metrics: Metrics, *, buffer: int, flush_interval: float,
                 redact_keys: tuple[str, ...], overflow: str, node: str) -> None:
        if overflow not in ("drop", "refuse"):
            raise ValueError(f"overflow must be drop or refuse, got {overflow!r}")
        if buffer < 1 or flush_interval <= 0:
            raise ValueError("buffer must be at least 1 and flush_interval above 0")
        self.store = store
        self.metrics = metrics
        self.buffer = buffer
        self.flush_interval = flush_interval
        self.redact_keys = tuple(redact_keys)
        self.overflow = overflow
        self.node = node
        self._pending: deque[Record] = deque()
        self._wake = gevent.event.Event()
        self._call_lock = gevent.lock.BoundedSemaphore(1)
        self._writer: gevent.Greenlet | None = None
        self._closed = False
        self._migrated = False
        # totals for stats()
        self._written = 0
        self._dropped = 0
        self._errors = 0
        # the current outage, if any
        self._up = True
        self._down_since: float | None = None
        self._failures = 0  # consecutive failed attempts: the backoff
        self._outage_dropped = 0
        self._overflow_logged = False
        self._held: int | None = None  # records held when the database came back, logged once they are written
        self._last_ok = time.monotonic()
        metrics.audit_database_up.set(1)
        metrics.audit_pending.set(0)

    # -- the gateway's side: never blocks ----------------------------------------------------

    def command(self, rec: CommandRecord) -> bool:
        """Queue a command's new state; False only with overflow=refuse and the buffer full (or after close)."""
        if self.redact_keys:
            rec = dataclasses.replace(rec, params=redact(rec.params, self.redact_keys))
        return self._enqueue(rec)

    def admin_action(self, action: AdminAction) -> bool:
        """Queue an admin action's record; False as for :meth:`command`."""
        return self._enqueue(action)

    def revocation_seen(self, rev: Revocation) -> bool:
        """Queue a revocation another node announced (stored once by id: with PostgreSQL it is already there)."""
        return self._enqueue(rev)

    @property
    def accepting(self) -> bool:
        """False when a new record would be refused (overflow=refuse and the buffer full, or closed)."""
        if self._closed:
            return False
        return self.overflow == "drop" or len(self._pending) < self.buffer

    def _enqueue(self, rec: Record) -> bool:
        if self._closed:
            return False
        if len(self._pending) >= self.buffer:
            if self.overflow == "refuse":
                return False
            self._dropped += 1
            self._outage_dropped += 1
            self.metrics.audit_dropped.inc()
            if not self._overflow_logged:
                self._overflow_logged = True
                log.error("audit buffer full (%d records held, AUDIT_BUFFER): new audit records are dropped until "
                          "the database takes writes again (AUDIT_OVERFLOW=drop; ws_audit_dropped counts them)",
                          len(self._pending))
            return True
        self._pending.append(rec)
        self.metrics.audit_pending.set(len(self._pending))
        if len(self._pending) >= BATCH and self._failures == 0:
            self._wake.set()
        return True

    # -- synchronous for the caller, off the loop ---------------------------------------------

    def store_revocation(self, rev: Revocation) -> None:
        """Store ``rev`` now (the admin API answers once it is stored); AuditUnavailable if it cannot be."""
        if self._closed:
            raise AuditUnavailable("the audit log is closed")
        try:
            self._call(self.store.write, [rev])
        except (StoreUnavailable, RecordRejected) as exc:
            self._errors += 1
            self.metrics.audit_write_errors.inc()
            raise AuditUnavailable(str(exc)) from None
        self._written += 1
        self.metrics.audit_written.inc()

    def query_commands(self, user: str | None = None, bot: str | None = None, since: float | None = None,
                       until: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Commands newest first (``since``/``until``: epoch seconds bounding createdAt; ``limit`` 1..1000)."""
        try:
            return self._call(self.store.query_commands, user, bot, since, until, limit)
        except StoreUnavailable as exc:
            raise AuditUnavailable(str(exc)) from None

    def active_revocations(self, now: float) -> list[Revocation]:
        """The revocations still in force at ``now`` (epoch seconds)."""
        try:
            return self._call(self.store.revocations, now)
        except StoreUnavailable as exc:
            raise AuditUnavailable(str(exc)) from None

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` off the event loop (or on it, when the driver cooperates), one call at a time."""
        if not self._call_lock.acquire(timeout=CALL_WAIT):
            raise AuditUnavailable(f"the audit database did not answer within {CALL_WAIT:.0f}s")
        try:
            if self.store.cooperative:
                return fn(*args)
            result: T = gevent.get_hub().threadpool.apply(fn, args)
            return result
        finally:
            self._call_lock.release()

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Apply the migrations (an unreachable database is one ERROR line; the writer retries) and start writing."""
        if self._writer is not None:
            return
        self._migrate()
        self._writer = gevent.spawn(self._run)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the buffer to empty; True if it did."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._pending or self._held is not None:
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        return True

    def close(self, timeout: float) -> None:
        """Stop taking records, write what can be written within ``timeout`` seconds, close the store."""
        self._closed = True
        deadline = time.monotonic() + timeout
        if self._writer is not None:
            self._failures = 0  # one more attempt now, not after the backoff
            self._wake.set()
            self._writer.join(timeout=max(0.0, deadline - time.monotonic()))
            self._writer.kill(block=True, timeout=1.0)
            self._writer = None
        if self._pending:
            log.error("audit log closed with %d records not written to %s", len(self._pending), self.store.url)
        if self._call_lock.acquire(timeout=max(0.1, deadline - time.monotonic())):
            try:
                self.store.close()
            finally:
                self._call_lock.release()

    def stats(self) -> dict[str, Any]:
        return {
            "database": self.store.url,
            "dialect": self.store.dialect,
            "up": self._up,
            "downSinceMs": None if self._down_since is None else round(self._down_since * 1000),
            "pending": len(self._pending),
            "buffer": self.buffer,
            "overflow": self.overflow,
            "accepting": self.accepting,
            "written": self._written,
            "dropped": self._dropped,
            "writeErrors": self._errors,
        }

    # -- the writer greenlet -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self._failures:
                base = min(BACKOFF_CAP, self.flush_interval * 2 ** min(self._failures, 16))
                delay = random.uniform(base / 2, base)
            else:
                delay = self.flush_interval
            self._wake.wait(timeout=delay)
            self._wake.clear()
            self._flush()
            if self._closed and not self._pending:
                return

    def _migrate(self) -> bool:
        try:
            applied = self._call(self.store.migrate)
        except (StoreUnavailable, RecordRejected, AuditUnavailable) as exc:
            self._failed(exc, "applying migrations")
            return False
        if applied:
            log.info("audit database %s migrated to version %d (applied %s)", self.store.url, applied[-1],
                     ", ".join(map(str, applied)))
        self._migrated = True
        return True

    def _flush(self) -> None:
        if not self._migrated and not self._migrate():
            return
        if not self._pending:
            if not self._up or time.monotonic() - self._last_ok >= PROBE_INTERVAL:
                try:
                    self._call(self.store.ping)
                except (StoreUnavailable, AuditUnavailable) as exc:
                    self._failed(exc, "checking it")
                    return
                self._succeeded(0)
            self._finish_recovery()
            return
        while self._pending:
            n = min(BATCH, len(self._pending))
            batch = list(itertools.islice(self._pending, n))
            try:
                self._write(batch)
            except (StoreUnavailable, AuditUnavailable) as exc:
                self._failed(exc, f"writing {n} records")
                return
            except Exception as exc:  # a bug must not stop the audit trail silently: logged, retried
                log.exception("audit writer failed writing %d records", n)
                self._failed(exc, f"writing {n} records")
                return
            for _ in range(n):
                self._pending.popleft()
            self._succeeded(n)
            gevent.sleep(0)  # other greenlets run between batches
        self._finish_recovery()

    def _write(self, batch: list[Record]) -> None:
        """One transaction; a record the database refuses must not hold back every record behind it.

        Then each record goes alone, and the refused ones are skipped, logged
        and counted as dropped (writes are idempotent: writing the others
        again is harmless)."""
        try:
            self._call(self.store.write, batch)
            return
        except RecordRejected:
            if len(batch) == 1:
                skipped = batch
            else:
                skipped = []
                for rec in batch:
                    try:
                        self._call(self.store.write, [rec])
                    except RecordRejected:
                        skipped.append(rec)
        for rec in skipped:
            log.error("audit record refused by the database and skipped: %s %s", type(rec).__name__, _key(rec))
        self._dropped += len(skipped)
        self.metrics.audit_dropped.inc(len(skipped))

    def _succeeded(self, n: int) -> None:
        self._last_ok = time.monotonic()
        if n:
            self._written += n
            self.metrics.audit_written.inc(n)
            self.metrics.audit_pending.set(len(self._pending))
        if not self._up:
            self._up = True
            self.metrics.audit_database_up.set(1)
            self._held = len(self._pending) + n
        self._failures = 0

    def _finish_recovery(self) -> None:
        if self._held is None:
            if not self._pending:
                self._overflow_logged = False
            return
        took = 0.0 if self._down_since is None else time.time() - self._down_since
        dropped = f"; {self._outage_dropped} dropped (buffer full)" if self._outage_dropped else ""
        log.warning("audit database back after %.1fs; wrote %d records held during the outage%s (%s)", took,
                    self._held, dropped, self.store.url)
        self._held = None
        self._down_since = None
        self._outage_dropped = 0
        self._overflow_logged = False

    def _failed(self, exc: BaseException, doing: str) -> None:
        self._failures += 1
        self._errors += 1
        self.metrics.audit_write_errors.inc()
        self._migrated = self._migrated and not isinstance(exc, StoreUnavailable)
        if self._up:
            self._up = False
            self._down_since = time.time()
            self.metrics.audit_database_up.set(0)
            log.error("audit database unavailable (%s) while %s: %s; holding %d records (up to %d, then "
                      "AUDIT_OVERFLOW=%s) and retrying", self.store.url, doing, exc, len(self._pending), self.buffer,
                      self.overflow)
        else:
            log.debug("audit database still unavailable (%s): %s; %d records held", self.store.url, exc,
                      len(self._pending))


def _key(rec: Record) -> str:
    if isinstance(rec, CommandRecord):
        return f"user={rec.user_id} command={rec.command_id} version={rec.version}"
    return f"id={rec.id}"
