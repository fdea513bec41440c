"""The operators' decision log: ONE line per decision on ``gateway.supervisor``.

The line is a readable sentence (:func:`render`) plus structured ``fields``
that gateway/logs.py prints after it (text) or beside it (JSON). The fields
of a child decision are built by the core (``SupervisorCore._fields``);
docs/operations.md ("Reading the supervisor's log") says how to read them.
For example::

    child exchange:bybit:spot failed (ConnectionResetError: reset by peer)
    after 12.3s; restart 3 in 0.41s at 2026-09-21T14:13:32.713Z
    (window 3/10 in 600s)
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

LOGGER = "gateway.supervisor"
log = logging.getLogger(LOGGER)


def _what(f: dict[str, Any]) -> str:
    exc = f"{f['exc_type']}: {f['exc_message']}" if f.get("exc_message") else str(f.get("exc_type"))
    return {
        "start": f"failed in on_start ({exc})",
        "stop": f"failed in on_stop ({exc})",
        "killed": f"was killed ({exc})",
        "hung": f"hung ({exc})",
        "normal": "stopped by itself",
    }.get(f.get("phase") or "", f"failed ({exc})")


def _secs(seconds: float) -> str:
    return f"{seconds:.3f}s" if seconds < 0.1 else f"{seconds:.2f}s"


def _window(f: dict[str, Any]) -> str:
    return f"(window {f['failures_in_window']}/{f['max_failures']} in {f['window_s']:g}s)"


def _stopped_text(f: dict[str, Any]) -> str:
    if f.get("crashed"):
        return f"child {f['child_id']} {_what(f)} after {f['ran_s']:.1f}s; {f['stop_reason']}"
    when = "while down" if f.get("ran_s") is None else f"after {f['ran_s']:.1f}s"
    return f"child {f['child_id']} stopped {when} ({f['stop_reason'] or 'exited normally'})"


def _opened(f: dict[str, Any]) -> str:
    if f.get("probe_failed"):
        return "probe failed, circuit stays open"
    if f["attempt"] >= f["max_failures"]:
        return f"circuit opened after {f['attempt']} consecutive failures"
    return f"circuit opened after {f['failures_in_window']} failures in {f['window_s']:g}s"


_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "restart_scheduled": lambda f: (
        f"child {f['child_id']} {_what(f)} after {f['uptime_s']:.1f}s; restart {f['attempt']} in "
        f"{_secs(f['delay_s'])} at {f['next_attempt_at']} {_window(f)}"),
    "circuit_opened": lambda f: (
        f"child {f['child_id']} {_what(f)} after {f['uptime_s']:.1f}s; {_opened(f)} {_window(f)}; "
        f"next attempt in {f['delay_s']:.1f}s at {f['next_attempt_at']}"),
    "child_failed": _stopped_text,
    "child_stopped": _stopped_text,
    "child_started": lambda f: f"child {f['child_id']} started (incarnation {f['incarnation']})",
    "restarted": lambda f: (
        f"child {f['child_id']} restarted as incarnation {f['incarnation']} after {_secs(f['down_s'])} down "
        f"(attempt {f['attempt']}; {f['redelivered']} message{'' if f['redelivered'] == 1 else 's'} "
        f"redelivered, {f['dropped']} dropped)"),
    "circuit_half_open": lambda f: (
        f"child {f['child_id']} probe {f['probes']} is up as incarnation {f['incarnation']} after "
        f"{f['down_s']:.1f}s down; circuit half-open until it reports healthy"),
    "circuit_closed": lambda f: (
        f"child {f['child_id']} is healthy as incarnation {f['incarnation']}; circuit closed "
        f"after {f['probes']} probes"),
    "hung_detected": lambda f: (
        f"child {f['child_id']} incarnation {f['incarnation']} did not answer ping {f['seq']} within "
        f"{f['hung_after_s']:g}s; killing its greenlet"),
    "shutdown_killed": lambda f: (
        f"child {f['child_id']} incarnation {f['incarnation']} did not stop within {f['timeout_s']:g}s; "
        f"killing its greenlet"),
    "escalated": lambda f: (
        f"supervisor {f['supervisor']} escalates: {f['tree_restarts']} restarts in {f['period_s']:g}s "
        f"exceed the limit of {f['intensity']}; last child {f['child_id']} {_what(f)}"),
    # Lines of the shell, not of the core:
    "stash_full": lambda f: (
        f"child {f['child_id']} stash full ({f['capacity']} messages) while it is down; dropping new messages "
        f"until it restarts"),
    "shutdown_started": lambda f: (
        f"supervisor {f['supervisor']} shutting down {f['children']} children ({f['timeout_s']:g}s each)"),
    "shutdown_complete": lambda f: (
        f"supervisor {f['supervisor']} shut down in {f['elapsed_s']:.2f}s ({f['children']} children, "
        f"{f['killed']} killed)"),
}


def render(event: str, fields: dict[str, Any]) -> str:
    """The readable sentence of a decision line."""
    text = _TEXT.get(event)
    return text(fields) if text else f"{event} {fields.get('child_id', '')}".strip()


def emit(level: int, fields: dict[str, Any]) -> None:
    """Log one decision line: the sentence, with ``fields`` attached."""
    log.log(level, render(fields["event"], fields), extra={"fields": fields}, stacklevel=2)


def iso_utc(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
