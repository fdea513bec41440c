"""``trading-gateway audit …``: apply the migrations, read the commands, the revocations and the admin actions.

app.py's ``cli()`` calls :func:`main` with DATABASE_URL and DATA_DIR from the
settings (audit/ does not read the gateway's settings itself: it sits below
gateway/ in the layers). It talks to the store directly, blocking: a
command-line tool has no event loop to keep free.

Exit status: 0 done, 1 the database could not do it, 2 a usage error or no
audit trail (DATABASE_URL=none).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from audit.store import MAX_LIMIT, RecordRejected, Store, StoreUnavailable, open_store

__all__ = ["main", "parse_time"]


def parse_time(text: str) -> float:
    """An epoch-milliseconds integer or an ISO 8601 time (``Z`` or an offset; none means UTC), as epoch seconds."""
    text = text.strip()
    if re.fullmatch(r"\d{1,14}", text):
        return int(text) / 1000
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trading-gateway audit", description="The audit trail: the database "
                                     "DATABASE_URL names (unset: DATA_DIR/audit.sqlite3).")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("migrate", help="apply the migrations not applied yet and print their versions")
    commands = sub.add_parser("commands", help="bot commands, newest first")
    commands.add_argument("--user", help="only this user's commands")
    commands.add_argument("--bot", help="only this bot's commands")
    commands.add_argument("--since", type=parse_time, help="created at or after (ISO 8601 or epoch ms)")
    commands.add_argument("--until", type=parse_time, help="created at or before (ISO 8601 or epoch ms)")
    commands.add_argument("--limit", type=_limit, default=100, help=f"at most this many (1..{MAX_LIMIT}, 100)")
    commands.add_argument("--json", action="store_true", help="one JSON object a line, as the HTTP API answers")
    revocations = sub.add_parser("revocations", help="revocations in force now")
    revocations.add_argument("--json", action="store_true", help="one JSON object a line")
    actions = sub.add_parser("actions", help="admin actions, newest first")
    actions.add_argument("--limit", type=_limit, default=100, help=f"at most this many (1..{MAX_LIMIT}, 100)")
    actions.add_argument("--json", action="store_true", help="one JSON object a line")
    return parser


def main(argv: list[str], database_url: str | None, data_dir: str, *, out: TextIO | None = None) -> int:
    """Run ``trading-gateway audit <argv>`` against the database ``database_url``/``data_dir`` name."""
    out = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    try:
        store = open_store(database_url, data_dir)
    except (OSError, ValueError) as exc:
        print(f"trading-gateway audit: cannot open the audit database: {exc}", file=sys.stderr)
        return 2
    if store is None:
        print("trading-gateway audit: this gateway keeps no audit trail (DATABASE_URL=none)", file=sys.stderr)
        return 2
    try:
        return _run(args, store, out)
    except (StoreUnavailable, RecordRejected) as exc:
        print(f"trading-gateway audit: the audit database {store.url} could not do it: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _run(args: argparse.Namespace, store: Store, out: TextIO) -> int:
    if args.action == "migrate":
        applied = store.migrate()
        if applied:
            print(f"applied migrations {', '.join(map(str, applied))} to {store.url}", file=out)
        else:
            print(f"nothing to apply: {store.url} is up to date", file=out)
        return 0
    if args.action == "commands":
        rows = store.query_commands(user=args.user, bot=args.bot, since=args.since, until=args.until,
                                    limit=args.limit)
        if args.json:
            _json_lines(rows, out)
        else:
            _table(["created", "user", "bot", "command id", "command", "state", "service", "finished"],
                   [[_iso(r["createdAt"]), r["userId"], r["botId"], r["commandId"], r["command"], r["state"],
                     r["service"], _iso(r["finishedAt"])] for r in rows], out)
        return 0
    if args.action == "revocations":
        revs = store.revocations(time.time())
        if args.json:
            _json_lines([{"id": r.id, "kind": r.kind, "jti": r.jti, "userId": r.user_id,
                          "revokedAt": round(r.revoked_at * 1000),
                          "until": None if r.until is None else round(r.until * 1000), "actor": r.actor,
                          "reason": r.reason} for r in revs], out)
        else:
            _table(["revoked", "kind", "jti / user", "until", "actor", "reason"],
                   [[_iso(r.revoked_at * 1000), r.kind, r.jti if r.kind == "token" else r.user_id,
                     _iso(None if r.until is None else r.until * 1000) or "for ever", r.actor, r.reason]
                    for r in revs], out)
        return 0
    actions = store.admin_actions(args.limit)
    if args.json:
        _json_lines([{"id": a.id, "at": round(a.at * 1000), "actor": a.actor, "action": a.action,
                      "target": a.target, "node": a.node} for a in actions], out)
    else:
        _table(["at", "actor", "action", "target", "node"],
               [[_iso(a.at * 1000), a.actor, a.action, json.dumps(a.target, separators=(",", ":")), a.node]
                for a in actions], out)
    return 0


def _iso(ms: float | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_lines(rows: Sequence[dict[str, Any]], out: TextIO) -> None:
    for row in rows:
        print(json.dumps(row, separators=(",", ":"), ensure_ascii=False), file=out)


def _table(header: list[str], rows: list[list[Any]], out: TextIO) -> None:
    cells = [header, *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"({len(rows)} {'row' if len(rows) == 1 else 'rows'})", file=out)
