"""Every misconfiguration in docs/operations.md's table produces exactly the line the table shows.

The table is the specification: each row names what is set (``NAME=value``
code spans, on top of a good configuration), the exact line the gateway
writes (its timestamp left out) and what happens then: ``exit 2``, or
``keeps serving``. This test starts ``python app.py`` for every row and
holds the process to it, so the doc cannot drift from the code.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
HEADING = "## Misconfiguration: one line, then exit 2"
GOOD = {"JWT_SECRET": "t" * 40, "MARKET_SOURCE": "none", "HOST": "127.0.0.1", "PORT": "0", "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
TAKEN_PORT = 3001  # what the doc shows for "a port another process holds"; the test holds a free one


@dataclass(frozen=True)
class Row:
    setting: str  # the first cell, as written
    env: dict[str, str]
    line: str
    outcome: str


def rows() -> list[Row]:
    text = DOC.read_text()
    assert HEADING in text, f"{DOC.name} has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    found = []
    for raw in section.splitlines():
        cells = [c.strip() for c in raw.strip().strip("|").split("|")] if raw.startswith("|") else []
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        env = dict(span.split("=", 1) for span in re.findall(r"`([A-Z_]+=[^`]*)`", cells[0]))
        found.append(Row(cells[0], env, cells[1].strip("`"), cells[2]))
    return found


def _stripped(line: str) -> str:
    """``2026-12-03 08:00:46,113 CRITICAL gateway ...`` → ``CRITICAL gateway ...``."""
    return line.split(" ", 2)[2] if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line) else line


def run(row: Row) -> tuple[int | None, list[str], str]:
    """(exit status or None if still serving, the lines written, the expected line for this run)."""
    env = {k: v for k, v in os.environ.items() if k not in GOOD and not k.startswith(("WS_", "JWT_", "REDIS"))}
    env.update(GOOD)
    env.update(row.env)
    expected = row.line
    holder = None
    if "held by another process" in row.setting:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env["PORT"] = str(port)
        expected = expected.replace(f"port {TAKEN_PORT} ", f"port {port} ")
    elif env.get("PORT") == "0" and row.outcome != "exit 2":
        env["PORT"] = str(free_port())
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            lines.append(_stripped(line.rstrip("\n")))
            if lines[-1] == expected or time.monotonic() > deadline:
                break
        if row.outcome == "exit 2":
            lines += [_stripped(x.rstrip("\n")) for x in proc.stdout]
            return proc.wait(30), lines, expected
        time.sleep(0.3)  # still serving a moment after the line
        return proc.poll(), lines, expected
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        if holder is not None:
            holder.close()


def test_the_table_covers_every_kind_of_misconfiguration() -> None:
    table = rows()
    assert len(table) >= 20
    assert {r.outcome for r in table} == {"exit 2", "keeps serving"}
    named = {name for r in table for name in r.env}
    for needed in ("PORT", "HOST", "REDIS_URL", "JWT_SECRET", "LOG_LEVEL", "WS_MAX_CHANNEL", "WORKERS"):
        assert needed in named, needed


@pytest.mark.slow
def test_each_misconfiguration_gives_its_line() -> None:
    table = rows()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, table))
    for row, (status, lines, expected) in zip(table, results, strict=True):
        assert expected in lines, f"{row.setting}: expected {expected!r}, got {lines}"
        assert not any("Traceback" in line for line in lines), f"{row.setting}: {lines}"
        if row.outcome == "exit 2":
            assert status == 2, f"{row.setting}: exit {status}"
            # One clear line: nothing else at ERROR or above.
            loud = [x for x in lines if x.split(" ", 1)[0] in ("ERROR", "CRITICAL")]
            assert loud == [expected], f"{row.setting}: {loud}"
        else:
            assert status is None, f"{row.setting}: exited {status}: {lines}"
