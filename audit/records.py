"""The audit trail's rows, as frozen dataclasses, and the redaction of command parameters.

Pure: no I/O. Times are epoch seconds (floats), as the gateway keeps them;
the query answers turn them into epoch milliseconds for JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["REDACTED", "STATES", "AdminAction", "CommandRecord", "Record", "Revocation", "redact"]

REDACTED = "[redacted]"
# A bot command's states (protocol/commands.py): sent, then accepted, then one final state.
STATES = ("sent", "accepted", "succeeded", "failed", "timed_out")


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """The full current state of one bot command, keyed by (user_id, command_id).

    A whole row rather than a diff, so any one record is enough to rebuild the
    row and a replayed or late record is harmless: the store keeps the one
    with the highest ``version`` (it rises by one per state change).
    """

    user_id: str
    command_id: str
    bot_id: str
    command: str
    params: Any
    state: str
    version: int
    node: str
    service: str | None
    created_at: float
    accepted_at: float | None
    finished_at: float | None
    result: Any | None
    session_id: str | None


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked token (``kind="token"``, ``jti``) or a user's tokens issued until ``revoked_at`` (``kind="user"``).

    ``until``: when the revocation stops mattering (the token's expiry, or the
    admin's choice); None keeps it for ever.
    """

    id: str
    kind: str
    jti: str | None
    user_id: str | None
    revoked_at: float
    until: float | None
    actor: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class AdminAction:
    """One admin API action (revoke_token, revoke_user, disconnect): who, when, on what, from which node."""

    id: str
    at: float
    actor: str
    action: str
    target: dict[str, Any]
    node: str


Record = CommandRecord | Revocation | AdminAction


def redact(params: Any, keys: Iterable[str]) -> Any:
    """A copy of ``params`` where every dict key in ``keys`` (any case, any depth) has the value "[redacted]".

    Dicts inside lists are searched too. Command parameters come from users'
    bots and may carry exchange credentials; the audit trail must never hold
    them, so this runs before a record is even queued.
    """
    wanted = frozenset(k.lower() for k in keys)
    if not wanted:
        return params
    return _redact(params, wanted)


def _redact(value: Any, wanted: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and k.lower() in wanted else _redact(v, wanted)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, wanted) for v in value]
    return value
