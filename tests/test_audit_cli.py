"""``trading-gateway audit …`` (audit/cli.py), called in-process on a SQLite file, and once as a command.

app.py's ``cli()`` passes DATABASE_URL and DATA_DIR in; here they are the
test's. The store behind it is the one tests/test_audit_store.py runs
against both dialects.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audit.cli import main, parse_time
from audit.records import AdminAction, CommandRecord, Revocation
from audit.store import open_store

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def seed(data_dir: Path) -> None:
    store = open_store(None, str(data_dir))
    assert store is not None
    store.migrate()
    store.write([
        CommandRecord("alice", "a1", "bot-1", "place_order", {"qty": 1}, "succeeded", 3, "n1", "svc", T0, T0 + 1,
                      T0 + 2, {"orderId": "o-1"}, None),
        CommandRecord("alice", "a2", "bot-2", "cancel_order", {}, "sent", 1, "n1", None, T0 + 60, None, None, None,
                      None),
        CommandRecord("bob", "b1", "bot-3", "place_order", {}, "failed", 3, "n2", "svc", T0 + 120, None, T0 + 121,
                      {"error": "rejected"}, None),
        Revocation("r1", "user", None, "mallory", T0, None, "ops", "compromised"),
        Revocation("r2", "token", "jti-old", None, 1e9, 1e9 + 1, "ops", None),  # expired in 2001
        AdminAction("x1", T0, "ops", "revoke_user", {"userId": "mallory"}, "n1"),
    ])
    store.close()


def test_migrate_prints_the_versions_applied(tmp_path, capsys):
    assert main(["migrate"], None, str(tmp_path / "data")) == 0
    out = capsys.readouterr().out
    assert "applied migrations 1 to sqlite:///" in out
    assert (tmp_path / "data" / "audit.sqlite3").exists()
    assert main(["migrate"], None, str(tmp_path / "data")) == 0
    assert "nothing to apply" in capsys.readouterr().out


def test_commands_filter_and_print_a_table(tmp_path, capsys):
    seed(tmp_path)
    assert main(["commands", "--user", "alice"], None, str(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["created", "user", "bot", "command", "id", "command", "state", "service", "finished"]
    assert [line.split()[3] for line in lines[1:-1]] == ["a2", "a1"]  # newest first
    assert "2027-01-15T08:00:00.000Z" in lines[2] and lines[-1] == "(2 rows)"
    assert main(["commands", "--since", "2027-01-15T08:01:00Z", "--until", str(int((T0 + 119) * 1000)), "--json"],
                None, str(tmp_path)) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["commandId"] == "a2" and row["createdAt"] == (T0 + 60) * 1000
    assert main(["commands", "--bot", "bot-3", "--json", "--limit", "1"], None, str(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out)["result"] == {"error": "rejected"}


def test_revocations_and_actions(tmp_path, capsys):
    seed(tmp_path)
    assert main(["revocations", "--json"], None, str(tmp_path)) == 0
    [rev] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rev == {"id": "r1", "kind": "user", "jti": None, "userId": "mallory", "revokedAt": T0 * 1000,
                   "until": None, "actor": "ops", "reason": "compromised"}
    assert main(["revocations"], None, str(tmp_path)) == 0
    assert "for ever" in capsys.readouterr().out
    assert main(["actions"], None, str(tmp_path)) == 0
    assert "revoke_user" in capsys.readouterr().out


def test_usage_errors_and_no_audit_trail(tmp_path, capsys):
    assert main(["commands", "--limit", "0"], None, str(tmp_path)) == 2
    assert main(["commands", "--since", "yesterday"], None, str(tmp_path)) == 2
    assert main(["migrate"], "none", str(tmp_path)) == 2
    assert "DATABASE_URL=none" in capsys.readouterr().err


@pytest.mark.unit
def test_parse_time_takes_iso_8601_and_epoch_ms():
    assert parse_time("1800000000000") == T0
    assert parse_time("2027-01-15T08:00:00Z") == T0
    assert parse_time("2027-01-15T10:00:00+02:00") == T0
    assert parse_time("2027-01-15T08:00:00") == T0  # no offset: UTC


def test_runs_as_a_command(tmp_path):
    script = ("import sys; from audit.cli import main; "
              "sys.exit(main(sys.argv[2:], 'sqlite:///' + sys.argv[1] + '/x.db', '.'))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), "migrate"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied migrations 1 to sqlite:///")
    assert (tmp_path / "x.db").exists()
