"""The audit database: one :class:`Store` protocol, two backends, the same versioned schema.

SQLite (standard library ``sqlite3``) is the embedded default: one file,
``<DATA_DIR>/audit.sqlite3``, in WAL mode with ``synchronous=NORMAL`` (a
commit survives a crash of the process; a power cut may lose the last
commits, which is what an audit *buffer* loses anyway) and a busy timeout.
PostgreSQL (psycopg 3, docs/stack-notes.md "PostgreSQL driver") is for
production and for several nodes, which then share one trail.

Every method blocks its caller: :class:`audit.writer.AuditLog` decides where
it runs (gevent's threadpool, or the event loop itself when the driver
cooperates with gevent, :attr:`Store.cooperative`). A failure of the database
is :class:`StoreUnavailable` (retry later: the connection is dropped and made
again on the next call); a record the database refuses whatever happens is
:class:`RecordRejected` (retrying it would block every record behind it).

Writes are idempotent, so a batch whose commit was lost in a failure can be
written again: commands only move forward (a row is replaced only by a
higher ``version``), revocations and admin actions are inserted once by id.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from audit.migrations import migrations
from audit.records import AdminAction, CommandRecord, Record, Revocation

__all__ = ["MAX_LIMIT", "PostgresStore", "RecordRejected", "SqliteStore", "Store", "StoreUnavailable",
           "open_store", "shown_url"]

MAX_LIMIT = 1000
SQLITE_FILE = "audit.sqlite3"
# pg_advisory_xact_lock key: one node migrates at a time ("audit" in ASCII).
_MIGRATION_LOCK = 0x6175646974


class StoreUnavailable(Exception):
    """The database cannot answer now (down, unreachable, locked, its file gone): try again later."""


class RecordRejected(Exception):
    """The database refuses a record of the batch (a constraint, a value it cannot hold): retrying will not help."""


class Store(Protocol):
    url: str  # for people: the password replaced by ***
    dialect: str  # "sqlite" or "postgresql"
    cooperative: bool  # True: calls yield to gevent's loop while they wait, so they may run on it

    def migrate(self) -> list[int]: ...

    def write(self, batch: Sequence[Record]) -> None: ...

    def query_commands(self, user: str | None = None, bot: str | None = None, since: float | None = None,
                       until: float | None = None, limit: int = 100) -> list[dict[str, Any]]: ...

    def revocations(self, active_at: float) -> list[Revocation]: ...

    def admin_actions(self, limit: int = 100) -> list[AdminAction]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def open_store(database_url: str | None, data_dir: str, *, busy_timeout: float = 5.0) -> Store | None:
    """The store ``DATABASE_URL`` names: unset, SQLite in ``data_dir``; ``none``: None; else sqlite:/// or postgresql://.

    Nothing is connected yet; the SQLite file's directory is created here, so
    a ``data_dir`` that cannot hold it is an ``OSError`` at start-up.
    """
    if database_url is None or database_url.strip() == "":
        return SqliteStore(os.path.join(data_dir, SQLITE_FILE), busy_timeout=busy_timeout)
    if database_url.strip().lower() == "none":
        return None
    scheme = urlsplit(database_url).scheme.lower()
    if scheme == "sqlite" and database_url.startswith("sqlite:///") and len(database_url) > len("sqlite:///"):
        return SqliteStore(database_url[len("sqlite:///"):], busy_timeout=busy_timeout)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(database_url)
    raise ValueError(f"DATABASE_URL must be postgresql://…, sqlite:///path or none, got {shown_url(database_url)!r}")


def shown_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for log lines, errors and ``stats``).

    The same rule as gateway/logs.py's ``redact`` for URLs, kept here because
    audit/ sits below gateway/ in the layers; also covers libpq's
    ``password=…`` key/value form.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{host}")
        url = urlunsplit(parts)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", url, flags=re.IGNORECASE)


# -- shared by both backends -----------------------------------------------------------------

_COMMAND_COLUMNS = ("user_id", "command_id", "bot_id", "command", "params", "state", "version", "node", "service",
                    "created_at", "accepted_at", "finished_at", "result", "session_id")
# The answer of query_commands, in the order both backends select it.
_ANSWER_KEYS = ("commandId", "userId", "botId", "command", "params", "state", "node", "service", "createdAt",
                "acceptedAt", "finishedAt", "result")
_TIME_KEYS = ("createdAt", "acceptedAt", "finishedAt")


def _dumps(value: Any) -> str:
    # default=str: a value JSON cannot hold is kept as its text rather than losing the whole record.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _ms(t: float | None) -> int | None:
    return None if t is None else round(t * 1000)


def check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def split(batch: Sequence[Record]) -> tuple[list[CommandRecord], list[Revocation], list[AdminAction]]:
    """The batch by table; several updates of one command become the one with the highest version."""
    commands: dict[tuple[str, str], CommandRecord] = {}
    revocations: list[Revocation] = []
    actions: list[AdminAction] = []
    for rec in batch:
        if isinstance(rec, CommandRecord):
            key = (rec.user_id, rec.command_id)
            held = commands.get(key)
            if held is None or rec.version > held.version:
                commands[key] = rec
        elif isinstance(rec, Revocation):
            revocations.append(rec)
        elif isinstance(rec, AdminAction):
            actions.append(rec)
        else:
            raise TypeError(f"not an audit record: {type(rec).__name__}")
    return list(commands.values()), revocations, actions


def _answer(row: Sequence[Any], decode: Callable[[Any], Any]) -> dict[str, Any]:
    out = dict(zip(_ANSWER_KEYS, row, strict=True))
    out["params"] = decode(out["params"])
    out["result"] = decode(out["result"])
    for key in _TIME_KEYS:
        out[key] = _ms(out[key])
    return out


def _where(user: str | None, bot: str | None, since: float | None, until: float | None, mark: str,
           time_mark: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, op, value, m in (("user_id", "=", user, mark), ("bot_id", "=", bot, mark),
                                 ("created_at", ">=", since, time_mark), ("created_at", "<=", until, time_mark)):
        if value is not None:
            clauses.append(f"{column} {op} {m}")
            args.append(float(value) if column == "created_at" else value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


# -- SQLite ---------------------------------------------------------------------------------

_SQLITE_UPSERT = (
    f"INSERT INTO commands ({', '.join(_COMMAND_COLUMNS)}) VALUES ({', '.join('?' for _ in _COMMAND_COLUMNS)}) "
    "ON CONFLICT (user_id, command_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COMMAND_COLUMNS[2:])
    + " WHERE excluded.version > commands.version"
)


def sql_statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time (``executescript`` would commit our transaction first)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    rest = "\n".join(line for line in buffer.splitlines() if not line.strip().startswith("--")).strip()
    if rest:
        raise ValueError(f"incomplete SQL statement at the end of a migration: {rest[:80]!r}")


class SqliteStore:
    dialect = "sqlite"
    cooperative = False  # sqlite3 blocks its thread: the writer calls it in gevent's threadpool

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(f"{directory} is not writable")
        self._conn: sqlite3.Connection | None = None
        self._inode: int | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is not None:
            # The file deleted or replaced under us: an open connection would go on
            # writing into a file nobody can read. Reconnect (and fail if it is gone).
            try:
                if os.stat(self.path).st_ino == self._inode:
                    return self._conn
            except FileNotFoundError:
                pass
            self._drop()
            if not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
                raise StoreUnavailable(f"the directory of {self.path} is gone")
        # isolation_level=None: we say BEGIN and COMMIT ourselves; check_same_thread=False:
        # the threadpool's threads take turns (AuditLog makes one call at a time).
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._inode = os.stat(self.path).st_ino
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None
            self._inode = None

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError) as exc:
            raise RecordRejected(f"{type(exc).__name__}: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            self._drop()
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write: no upgrade deadlock
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    self._drop()
            raise

    def migrate(self) -> list[int]:
        applied: list[int] = []
        with self._guard():
            db = self._db()
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                       "applied_at REAL NOT NULL)")
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for migration in migrations("sqlite"):
                if migration.version in done:
                    continue
                with self._transaction(db):
                    # Another process may have applied it while we waited for the lock.
                    if db.execute("SELECT 1 FROM schema_migrations WHERE version = ?",
                                  (migration.version,)).fetchone():
                        continue
                    for statement in sql_statements(migration.sql):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                               (migration.version, time.time()))
                applied.append(migration.version)
        return applied

    def write(self, batch: Sequence[Record]) -> None:
        commands, revocations, actions = split(batch)
        with self._guard():
            db = self._db()
            with self._transaction(db):
                if commands:
                    db.executemany(_SQLITE_UPSERT, [
                        (c.user_id, c.command_id, c.bot_id, c.command, _dumps(c.params), c.state, c.version, c.node,
                         c.service, c.created_at, c.accepted_at, c.finished_at,
                         None if c.result is None else _dumps(c.result), c.session_id) for c in commands])
                if revocations:
                    db.executemany(
                        "INSERT INTO revocations (id, kind, jti, user_id, revoked_at, until, actor, reason) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                        [(r.id, r.kind, r.jti, r.user_id, r.revoked_at, r.until, r.actor, r.reason)
                         for r in revocations])
                if actions:
                    db.executemany(
                        "INSERT INTO admin_actions (id, at, actor, action, target, node) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (id) DO NOTHING",
                        [(a.id, a.at, a.actor, a.action, _dumps(a.target), a.node) for a in actions])

    def query_commands(self, user: str | None = None, bot: str | None = None, since: float | None = None,
                       until: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        check_limit(limit)
        where, args = _where(user, bot, since, until, "?", "?")
        sql = ("SELECT command_id, user_id, bot_id, command, params, state, node, service, created_at, accepted_at, "
               "finished_at, result FROM commands"
               f"{where} ORDER BY created_at DESC, user_id, command_id LIMIT ?")
        with self._guard():
            rows = self._db().execute(sql, [*args, limit]).fetchall()
        return [_answer(row, lambda v: None if v is None else json.loads(v)) for row in rows]

    def revocations(self, active_at: float) -> list[Revocation]:
        with self._guard():
            rows = self._db().execute(
                "SELECT id, kind, jti, user_id, revoked_at, until, actor, reason FROM revocations "
                "WHERE until IS NULL OR until > ? ORDER BY revoked_at, id", (active_at,)).fetchall()
        return [Revocation(*row) for row in rows]

    def admin_actions(self, limit: int = 100) -> list[AdminAction]:
        check_limit(limit)
        with self._guard():
            rows = self._db().execute("SELECT id, at, actor, action, target, node FROM admin_actions "
                                      "ORDER BY at DESC, id LIMIT ?", (limit,)).fetchall()
        return [AdminAction(i, at, actor, action, json.loads(target), node)
                for i, at, actor, action, target, node in rows]

    def ping(self) -> None:
        with self._guard():
            self._db().execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._drop()


# -- PostgreSQL -----------------------------------------------------------------------------

_PG_TIME = {"created_at", "accepted_at", "finished_at"}
_PG_JSON = {"params", "result"}
_PG_UPSERT = (
    f"INSERT INTO commands ({', '.join(_COMMAND_COLUMNS)}) VALUES ("
    + ", ".join("to_timestamp(%s)" if c in _PG_TIME else "%s::jsonb" if c in _PG_JSON else "%s"
                for c in _COMMAND_COLUMNS)
    + ") ON CONFLICT (user_id, command_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COMMAND_COLUMNS[2:])
    + " WHERE EXCLUDED.version > commands.version"
)


def _pg_json(value: Any) -> str:
    """JSON text jsonb takes: it refuses \\u0000, which a bot's parameters may well contain."""
    text = _dumps(value)
    return _dumps(_without_nul(value)) if "\\u0000" in text else text


def _pg_text(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k) if isinstance(k, str) else k: _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def _psycopg_cooperates(waiting: Any) -> bool:
    """True when psycopg's waits yield to gevent: the process is monkey-patched and psycopg saw it at import.

    psycopg (3.1.14 on) picks a gevent-friendly wait function when it is
    imported after ``gevent.monkey.patch_all()`` (app.py patches first);
    imported before, or in a process that is not patched (the tests), it
    waits in C and would block the loop, so the writer uses the threadpool.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("select"):
        return False
    return waiting.wait is not getattr(waiting, "wait_c", None)


class PostgresStore:
    dialect = "postgresql"

    def __init__(self, url: str, *, connect_timeout: int = 5, statement_timeout: float = 15.0) -> None:
        # Imported here, not at the top: psycopg chooses how it waits when it is
        # imported, and must see gevent's monkey patching (app.py patches first).
        import psycopg
        from psycopg import waiting

        self._psycopg = psycopg
        self._dsn = url
        self.url = shown_url(url)
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.cooperative = _psycopg_cooperates(waiting)
        self._conn: Any = None

    def _db(self) -> Any:
        if self._conn is None or self._conn.closed:
            # TCP keepalives: a server that vanished without a FIN is noticed in ~25 s, not hours.
            conn = self._psycopg.connect(self._dsn, autocommit=True, connect_timeout=self.connect_timeout,
                                         application_name="trading-gateway audit", keepalives=1,
                                         keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
            conn.execute(f"SET statement_timeout = {int(self.statement_timeout * 1000)}")
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except self._psycopg.Error:
                pass
            self._conn = None

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (self._psycopg.DataError, self._psycopg.IntegrityError) as exc:
            raise RecordRejected(f"{type(exc).__name__}: {exc}") from exc
        except (self._psycopg.Error, OSError) as exc:
            self._drop()
            raise StoreUnavailable(f"{type(exc).__name__}: {str(exc).strip()}") from exc

    def migrate(self) -> list[int]:
        applied: list[int] = []
        with self._guard():
            db = self._db()
            with db.transaction():
                # Several nodes start at once: one migrates, the others wait here and then find it done.
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
                done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for migration in migrations("postgresql"):
                if migration.version in done:
                    continue
                with db.transaction():
                    db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    if db.execute("SELECT 1 FROM schema_migrations WHERE version = %s",
                                  (migration.version,)).fetchone():
                        continue
                    db.execute(migration.sql)  # no parameters: several statements in one call are fine
                    db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (%s, now())",
                               (migration.version,))
                applied.append(migration.version)
        return applied

    def write(self, batch: Sequence[Record]) -> None:
        commands, revocations, actions = split(batch)
        t = _pg_text
        with self._guard():
            db = self._db()
            with db.transaction(), db.cursor() as cur:
                if commands:
                    cur.executemany(_PG_UPSERT, [
                        (t(c.user_id), t(c.command_id), t(c.bot_id), t(c.command), _pg_json(c.params), t(c.state),
                         c.version, t(c.node), t(c.service), float(c.created_at),
                         None if c.accepted_at is None else float(c.accepted_at),
                         None if c.finished_at is None else float(c.finished_at),
                         None if c.result is None else _pg_json(c.result), t(c.session_id)) for c in commands])
                if revocations:
                    cur.executemany(
                        "INSERT INTO revocations (id, kind, jti, user_id, revoked_at, until, actor, reason) "
                        "VALUES (%s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s) "
                        "ON CONFLICT (id) DO NOTHING",
                        [(t(r.id), r.kind, t(r.jti), t(r.user_id), float(r.revoked_at),
                          None if r.until is None else float(r.until), t(r.actor), t(r.reason)) for r in revocations])
                if actions:
                    cur.executemany(
                        "INSERT INTO admin_actions (id, at, actor, action, target, node) "
                        "VALUES (%s, to_timestamp(%s), %s, %s, %s::jsonb, %s) ON CONFLICT (id) DO NOTHING",
                        [(t(a.id), float(a.at), t(a.actor), t(a.action), _pg_json(a.target), t(a.node))
                         for a in actions])

    def query_commands(self, user: str | None = None, bot: str | None = None, since: float | None = None,
                       until: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        check_limit(limit)
        where, args = _where(user, bot, since, until, "%s", "to_timestamp(%s)")
        sql = ("SELECT command_id, user_id, bot_id, command, params, state, node, service, "
               "extract(epoch FROM created_at)::float8, extract(epoch FROM accepted_at)::float8, "
               f"extract(epoch FROM finished_at)::float8, result FROM commands{where} "
               "ORDER BY created_at DESC, user_id, command_id LIMIT %s")
        with self._guard():
            rows = self._db().execute(sql, [*args, limit]).fetchall()
        return [_answer(row, lambda v: v) for row in rows]  # jsonb arrives decoded

    def revocations(self, active_at: float) -> list[Revocation]:
        with self._guard():
            rows = self._db().execute(
                "SELECT id, kind, jti, user_id, extract(epoch FROM revoked_at)::float8, "
                "extract(epoch FROM until)::float8, actor, reason FROM revocations "
                "WHERE until IS NULL OR until > to_timestamp(%s) ORDER BY revoked_at, id",
                (float(active_at),)).fetchall()
        return [Revocation(*row) for row in rows]

    def admin_actions(self, limit: int = 100) -> list[AdminAction]:
        check_limit(limit)
        with self._guard():
            rows = self._db().execute(
                "SELECT id, extract(epoch FROM at)::float8, actor, action, target, node FROM admin_actions "
                "ORDER BY at DESC, id LIMIT %s", (limit,)).fetchall()
        return [AdminAction(*row) for row in rows]

    def ping(self) -> None:
        with self._guard():
            self._db().execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._drop()
