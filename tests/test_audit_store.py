"""The audit trail's storage, one suite run against a SQLite file and a real PostgreSQL server.

Every test takes ``backend`` (or ``store``, a migrated store of it): the
same assertions hold for both dialects. PostgreSQL is a real server the
tests start (tests/postgres_server.py), one per module, with a fresh
database per test. Faults are real too: PostgreSQL is stopped (fast
shutdown) and started again; SQLite's write lock is held by another
connection (what an operator's ``sqlite3`` shell in a transaction, or a
backup tool, does), so every write gets "database is locked".

The writer tests run the real :class:`audit.writer.AuditLog` on gevent's
loop (this process is not monkey-patched, so both backends go through the
threadpool); the last test checks the patched gateway's path, psycopg
cooperating with gevent on the loop itself, in a child process.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from audit.migrations import DIALECTS, migrations
from audit.records import AdminAction, CommandRecord, Revocation, redact
from audit.store import Store, open_store, shown_url
from audit.writer import AuditLog, AuditUnavailable
from metrics.definitions import build
from tests.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # created_at of the first command in the query tests
KEYS = ("password", "secret", "token", "apiKey", "apiSecret", "privateKey", "passphrase")


# -- pure parts -------------------------------------------------------------------------------

@pytest.mark.unit
def test_redact_replaces_matching_keys_at_any_depth_in_any_case():
    params = {"symbol": "BTCUSDT", "APIKEY": "k", "nested": {"Secret": "s", "list": [{"password": "p", "x": 1},
                                                                                        "token", ["a"]]},
              "tuple": ({"passphrase": "q"},), "count": 3}
    out = redact(params, KEYS)
    assert out == {"symbol": "BTCUSDT", "APIKEY": "[redacted]",
                   "nested": {"Secret": "[redacted]", "list": [{"password": "[redacted]", "x": 1}, "token", ["a"]]},
                   "tuple": [{"passphrase": "[redacted]"}], "count": 3}
    assert params["APIKEY"] == "k" and params["nested"]["list"][0]["password"] == "p"  # a copy
    assert redact("plain", KEYS) == "plain" and redact(None, KEYS) is None
    assert redact({"token": 1}, ()) == {"token": 1}


@pytest.mark.unit
def test_every_migration_exists_in_both_dialects():
    versions = {d: [m.version for m in migrations(d)] for d in DIALECTS}
    assert versions["sqlite"] == versions["postgresql"]
    assert versions["sqlite"][0] == 1 and versions["sqlite"] == sorted(set(versions["sqlite"]))


@pytest.mark.unit
def test_shown_url_hides_the_password():
    assert shown_url("postgresql://gw:s3cret@db:5432/audit") == "postgresql://gw:***@db:5432/audit"
    assert shown_url("host=db password=s3cret user=gw") == "host=db password=*** user=gw"
    assert shown_url("sqlite:///data/audit.sqlite3") == "sqlite:///data/audit.sqlite3"


# -- the two backends ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.cleanup()


class Backend:
    """One database of one dialect, and a real fault to put it in."""

    dialect: str
    url: str

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def open(self) -> Store:
        store = open_store(self.url, self.data_dir, busy_timeout=0.2)
        assert store is not None
        return store

    def break_(self) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def secret(self) -> str | None:
        return None


class SqliteBackend(Backend):
    dialect = "sqlite"

    def __init__(self, data_dir: str) -> None:
        super().__init__(data_dir)
        self.path = os.path.join(data_dir, "nested", "audit.sqlite3")
        self.url = f"sqlite:///{self.path}"
        self.blocker: sqlite3.Connection | None = None

    def break_(self) -> None:
        self.blocker = sqlite3.connect(self.path, isolation_level=None)
        self.blocker.execute("BEGIN EXCLUSIVE")  # holds the write lock: every writer gets "database is locked"

    def heal(self) -> None:
        assert self.blocker is not None
        self.blocker.execute("ROLLBACK")
        self.blocker.close()
        self.blocker = None


class PostgresBackend(Backend):
    dialect = "postgresql"

    def __init__(self, data_dir: str, server: PostgresServer) -> None:
        import psycopg

        super().__init__(data_dir)
        self.server = server
        self.database = f"audit_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")
        self.url = server.url.rsplit("/", 1)[0] + "/" + self.database

    def break_(self) -> None:
        self.server.stop()

    def heal(self) -> None:
        self.server.start()

    def secret(self) -> str | None:
        return self.server.password


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b: Backend = SqliteBackend(str(tmp_path))
        yield b
        if isinstance(b, SqliteBackend) and b.blocker is not None:
            b.heal()
    else:
        server = request.getfixturevalue("pg_server")
        b = PostgresBackend(str(tmp_path), server)
        yield b
        if not os.path.exists(os.path.join(server.data, "postmaster.pid")):
            server.start()  # a failed test must not leave the module's server down


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = backend.open()
    s.migrate()
    yield s
    s.close()


def cmd(user: str = "alice", command_id: str = "c1", *, bot: str = "bot-1", state: str = "sent", version: int = 1,
        created: float = T0, params: Any = None, result: Any = None, **kw: Any) -> CommandRecord:
    return CommandRecord(user_id=user, command_id=command_id, bot_id=bot, command=kw.get("command", "place_order"),
                         params={"symbol": "BTCUSDT", "qty": 1} if params is None else params, state=state,
                         version=version, node=kw.get("node", "node-a:1"), service=kw.get("service"),
                         created_at=created, accepted_at=kw.get("accepted"), finished_at=kw.get("finished"),
                         result=result, session_id=kw.get("session"))


def test_migrations_apply_once_and_are_idempotent(backend: Backend):
    first = backend.open()
    assert first.migrate() == [1]
    assert first.migrate() == []
    first.close()
    second = backend.open()  # another process, or the next start
    assert second.migrate() == []
    assert second.query_commands() == []
    second.close()


def test_commands_only_move_forward(store: Store):
    store.write([cmd(state="accepted", version=2, accepted=T0 + 1, service="svc-1")])
    store.write([cmd(state="sent", version=1)])  # late: must not move the command back
    [row] = store.query_commands()
    assert (row["state"], row["service"], row["acceptedAt"]) == ("accepted", "svc-1", round((T0 + 1) * 1000))
    store.write([cmd(state="succeeded", version=3, accepted=T0 + 1, finished=T0 + 2, result={"orderId": "o-1"})])
    store.write([cmd(state="failed", version=3, result={"error": "replayed"})])  # same version: a replay, ignored
    [row] = store.query_commands()
    assert (row["state"], row["result"], row["finishedAt"]) == ("succeeded", {"orderId": "o-1"}, (T0 + 2) * 1000)
    # Several updates of one command in one batch: the highest version wins whatever the order.
    store.write([cmd("bob", "c9", state="accepted", version=2), cmd("bob", "c9", state="timed_out", version=4),
                 cmd("bob", "c9", state="sent", version=1)])
    assert store.query_commands(user="bob")[0]["state"] == "timed_out"


def test_query_filters_newest_first_and_json_ready(store: Store):
    rows = [cmd("alice", f"a{i}", bot="bot-1" if i % 2 else "bot-2", created=T0 + i, params={"i": i, "n": [1, {}]})
            for i in range(6)]
    rows += [cmd("bob", f"b{i}", bot="bot-3", created=T0 + 10 + i, result=None) for i in range(3)]
    store.write(rows)
    everything = store.query_commands()
    assert [r["commandId"] for r in everything] == ["b2", "b1", "b0", "a5", "a4", "a3", "a2", "a1", "a0"]
    first = everything[-1]
    assert first == {"commandId": "a0", "userId": "alice", "botId": "bot-2", "command": "place_order",
                     "params": {"i": 0, "n": [1, {}]}, "state": "sent", "node": "node-a:1", "service": None,
                     "createdAt": 1_800_000_000_000, "acceptedAt": None, "finishedAt": None, "result": None}
    assert isinstance(first["createdAt"], int)
    json.dumps(everything)  # JSON-ready as it is
    assert [r["commandId"] for r in store.query_commands(user="alice", bot="bot-1")] == ["a5", "a3", "a1"]
    assert [r["commandId"] for r in store.query_commands(bot="bot-3")] == ["b2", "b1", "b0"]
    assert [r["commandId"] for r in store.query_commands(since=T0 + 4, until=T0 + 10)] == ["b0", "a5", "a4"]
    assert [r["commandId"] for r in store.query_commands(user="alice", since=T0 + 4.5)] == ["a5"]
    assert [r["commandId"] for r in store.query_commands(limit=2)] == ["b2", "b1"]
    assert store.query_commands(user="nobody") == []
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            store.query_commands(limit=bad)


def test_revocations_active_and_expired(store: Store):
    now = T0
    store.write([
        Revocation("r-forever", "user", None, "mallory", now - 100, None, "admin", "compromised"),
        Revocation("r-later", "token", "jti-1", None, now - 50, now + 3600, "admin", None),
        Revocation("r-expired", "token", "jti-2", None, now - 7200, now - 1, "admin", None),
    ])
    store.write([Revocation("r-later", "token", "jti-1", None, now - 50, now + 3600, "admin", None)])  # seen again
    active = store.revocations(now)
    assert [r.id for r in active] == ["r-forever", "r-later"]
    assert active[0] == Revocation("r-forever", "user", None, "mallory", now - 100, None, "admin", "compromised")
    assert active[1].until == pytest.approx(now + 3600, abs=1e-3) and active[1].jti == "jti-1"
    assert [r.id for r in store.revocations(now + 3600)] == ["r-forever"]


def test_admin_actions_newest_first(store: Store):
    store.write([AdminAction(f"x{i}", T0 + i, "ops@example", "disconnect", {"userId": f"u{i}", "n": [i]}, "node-a")
                 for i in range(3)])
    actions = store.admin_actions(limit=2)
    assert [a.id for a in actions] == ["x2", "x1"]
    assert actions[0].target == {"userId": "u2", "n": [2]} and actions[0].at == pytest.approx(T0 + 2)


# -- the writer --------------------------------------------------------------------------------------

def audit_log(store: Store, *, buffer: int = 100_000, overflow: str = "drop", flush: float = 0.02) -> AuditLog:
    log = AuditLog(store, build(), buffer=buffer, flush_interval=flush, redact_keys=KEYS, overflow=overflow,
                   node="node-a:1")
    log.start()
    return log


def sample(log: AuditLog, name: str) -> float | None:
    return log.metrics.registry.get_sample_value(name)


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.02)


def audit_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.audit" and text in r.getMessage()]


def test_writer_redacts_params_before_they_are_queued(store: Store):
    log = audit_log(store)
    assert log.command(cmd(params={"symbol": "ETHUSDT", "auth": {"apiKey": "k", "ApiSecret": "s"},
                                   "legs": [{"passphrase": "p", "qty": 2}]}))
    assert log._pending[0].params["auth"]["apiKey"] == "[redacted]"  # in memory too, not only in the database
    assert log.flush(10)
    [row] = log.query_commands()
    assert row["params"] == {"symbol": "ETHUSDT", "auth": {"apiKey": "[redacted]", "ApiSecret": "[redacted]"},
                             "legs": [{"passphrase": "[redacted]", "qty": 2}]}
    log.close(5)


def test_writer_does_not_block_the_event_loop(store: Store):
    log = audit_log(store, flush=0.05)
    records = [cmd(f"user-{i % 50}", f"cmd-{i}", bot=f"bot-{i % 7}", created=T0 + i / 1000, params={"i": i})
               for i in range(20_000)]
    for rec in records:
        assert log.command(rec)
    assert sample(log, "ws_audit_pending") == 20_000
    gaps: list[float] = []

    def tick() -> None:
        last = time.monotonic()
        while True:
            gevent.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = gevent.spawn(tick)
    started = time.monotonic()
    assert log.flush(120)
    took = time.monotonic() - started
    ticker.kill()
    assert len(gaps) >= 5, f"the ticker barely ran while {took:.2f}s of writes went on"
    assert max(gaps) < 0.2, f"the event loop stalled {max(gaps) * 1000:.0f} ms while the writer wrote"
    assert sample(log, "ws_audit_written_total") == 20_000
    assert sample(log, "ws_audit_pending") == 0
    assert len(log.query_commands(limit=1000)) == 1000
    assert log.query_commands(user="user-7", limit=1000)[0]["commandId"] == "cmd-19957"
    log.close(5)


def test_database_down_then_back_loses_nothing(backend: Backend, store: Store, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="gateway.audit")
    log = audit_log(store)
    assert log.command(cmd("alice", "before"))
    assert log.flush(10)
    backend.break_()
    for i in range(50):
        assert log.command(cmd("alice", f"during-{i}", created=T0 + i))
    log.admin_action(AdminAction("act-1", T0, "ops", "disconnect", {"userId": "bob"}, "node-a:1"))
    wait_until(lambda: sample(log, "ws_audit_database_up") == 0)
    assert sample(log, "ws_audit_write_errors_total") >= 1
    assert log.stats()["pending"] == 51 and log.stats()["up"] is False
    with pytest.raises(AuditUnavailable):
        log.store_revocation(Revocation("r-1", "user", None, "bob", T0, None, "ops", None))
    gevent.sleep(0.5)  # several retries: still one line
    [down] = audit_lines(caplog, "audit database unavailable")
    assert down.levelno == logging.ERROR
    secret = backend.secret()
    if secret is not None:
        assert secret not in caplog.text and "***" in down.getMessage()
    backend.heal()
    assert log.flush(30)
    assert sample(log, "ws_audit_database_up") == 1
    [back] = audit_lines(caplog, "audit database back")
    assert "wrote 51 records held during the outage" in back.getMessage()
    ids = {r["commandId"] for r in log.query_commands(limit=1000)}
    assert ids == {"before", *(f"during-{i}" for i in range(50))}
    assert [a.id for a in store.admin_actions()] == ["act-1"]
    log.store_revocation(Revocation("r-1", "user", None, "bob", T0, None, "ops", None))
    assert [r.id for r in log.active_revocations(T0)] == ["r-1"]
    assert sample(log, "ws_audit_written_total") == 53
    log.close(5)


def test_overflow_drop_counts_and_logs_once(backend: Backend, store: Store, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="gateway.audit")
    log = audit_log(store, buffer=10, overflow="drop")
    backend.break_()
    results = [log.command(cmd("alice", f"c{i}", created=T0 + i)) for i in range(15)]
    assert results == [True] * 15  # commands flow: drop never refuses
    assert log.accepting
    assert sample(log, "ws_audit_dropped_total") == 5
    assert sample(log, "ws_audit_pending") == 10
    [full] = audit_lines(caplog, "audit buffer full")
    assert full.levelno == logging.ERROR
    wait_until(lambda: sample(log, "ws_audit_database_up") == 0)
    backend.heal()
    assert log.flush(30)
    assert {r["commandId"] for r in log.query_commands()} == {f"c{i}" for i in range(10)}
    [back] = audit_lines(caplog, "audit database back")
    assert "5 dropped" in back.getMessage()
    assert len(audit_lines(caplog, "audit buffer full")) == 1
    log.close(5)


def test_overflow_refuse_returns_false(backend: Backend, store: Store):
    log = audit_log(store, buffer=10, overflow="refuse")
    backend.break_()
    results = [log.command(cmd("alice", f"c{i}", created=T0 + i)) for i in range(15)]
    assert results == [True] * 10 + [False] * 5
    assert not log.accepting
    assert log.admin_action(AdminAction("a", T0, "ops", "disconnect", {}, "n")) is False
    assert sample(log, "ws_audit_dropped_total") == 0
    backend.heal()
    assert log.flush(30)
    assert log.accepting
    assert len(log.query_commands()) == 10
    log.close(5)


def test_close_writes_what_is_pending(backend: Backend, store: Store):
    log = audit_log(store, flush=10.0)  # the writer would not flush by itself before close
    for i in range(30):
        log.command(cmd("alice", f"c{i}", created=T0 + i))
    log.close(10)
    assert not log.accepting and log.command(cmd("alice", "late")) is False
    reopened = backend.open()
    assert len(reopened.query_commands()) == 30
    reopened.close()


# -- the gateway's own configuration: monkey-patched, psycopg on the loop ------------------------------

def test_postgres_cooperates_with_gevent_when_patched(pg_server: PostgresServer, tmp_path: Path):
    """In the patched gateway psycopg waits through gevent: 50 concurrent pg_sleep(0.1) take ~0.1 s, not 5 s."""
    script = textwrap.dedent("""
        import sys, time
        from gevent import monkey
        monkey.patch_all()
        import gevent
        import psycopg
        from audit.store import open_store
        from audit.writer import AuditLog
        from metrics.definitions import build

        url = sys.argv[1]
        store = open_store(url, sys.argv[2])
        assert store.cooperative, "psycopg does not cooperate with gevent"
        conns = [psycopg.connect(url, autocommit=True) for _ in range(50)]
        started = time.monotonic()
        gevent.joinall([gevent.spawn(c.execute, "SELECT pg_sleep(0.1)") for c in conns], raise_error=True)
        print(f"sleeps {time.monotonic() - started:.3f}")
        log = AuditLog(store, build(), buffer=100000, flush_interval=0.05, redact_keys=(), overflow="drop",
                       node="n")
        log.start()
        from audit.records import CommandRecord
        for i in range(20000):
            log.command(CommandRecord("u", f"c{i}", "b", "x", {"i": i}, "sent", 1, "n", None, 1e9 + i, None, None,
                                      None, None))
        gaps = []
        def tick():
            last = time.monotonic()
            while True:
                gevent.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
        ticker = gevent.spawn(tick)
        assert log.flush(120)
        ticker.kill()
        print(f"maxgap {max(gaps):.3f}")
        print(f"rows {len(store.query_commands(limit=1000))}")
        log.close(5)
    """)
    import psycopg

    database = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    url = pg_server.url.rsplit("/", 1)[0] + "/" + database
    done = subprocess.run([sys.executable, "-c", script, url, str(tmp_path)], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    figures = dict(line.split() for line in done.stdout.split("\n") if line)
    assert float(figures["sleeps"]) < 1.0, figures  # blocking would be 50 x 0.1 s = 5 s
    assert float(figures["maxgap"]) < 0.2, figures
    assert figures["rows"] == "1000"
