"""Bot commands: their states, who owns a bot, and the stored record. Pure.

A user's ``bot_command`` goes to the one platform service that owns the bot
(:func:`owners`), is stored as a :class:`Command` in state ``sent``, and
moves forward only (:func:`advance`): the owning service reports
``accepted``, then ``succeeded`` or ``failed`` with a result; a command that
has not finished by its deadline is ``timed_out``. Every change reaches
every connection of the issuing user as ``bot_command_result``.

The record travels as JSON text through the broker, which swaps it only if
nobody changed it meanwhile (compare and set): two nodes, or two replicas
of a service, cannot both move one command.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

__all__ = [
    "COMMAND_ID",
    "MAX_TIMEOUT_MS",
    "MIN_TIMEOUT_MS",
    "TERMINAL",
    "Command",
    "CommandState",
    "advance",
    "owners",
    "serves",
]


class CommandState(StrEnum):
    SENT = "sent"  # stored and published to the owning service
    ACCEPTED = "accepted"  # the owning service took it
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


TERMINAL = frozenset({CommandState.SUCCEEDED, CommandState.FAILED, CommandState.TIMED_OUT})
# What a service may report, and from which state. ``sent`` → ``succeeded``
# directly is allowed: a quick command needs no separate ``accepted``.
_NEXT: dict[CommandState, frozenset[CommandState]] = {
    CommandState.SENT: frozenset({CommandState.ACCEPTED, CommandState.SUCCEEDED, CommandState.FAILED,
                                  CommandState.TIMED_OUT}),
    CommandState.ACCEPTED: frozenset({CommandState.SUCCEEDED, CommandState.FAILED, CommandState.TIMED_OUT}),
}
REPORTABLE = frozenset({CommandState.ACCEPTED, CommandState.SUCCEEDED, CommandState.FAILED})

COMMAND_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MIN_TIMEOUT_MS = 1_000
MAX_TIMEOUT_MS = 600_000
# A ``serves`` pattern: an exact bot id, a prefix ending in ``*`` or ``*`` alone.
_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{0,128}\*?$")


@dataclass(frozen=True, slots=True)
class Command:
    """One bot command as stored: the whole of its state (times in epoch ms)."""

    user_id: str
    command_id: str
    bot_id: str
    command: str
    params: dict[str, Any]
    service: str  # the owning service's token ``sub``
    node: str  # the node the user sent it to
    session_id: str
    created_at: int
    deadline: int
    state: CommandState = CommandState.SENT
    version: int = 1
    accepted_at: int | None = None
    finished_at: int | None = None
    result: Any = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def same_request(self, bot_id: str, command: str, params: dict[str, Any]) -> bool:
        """A resend of this command (same commandId) asks for the same thing."""
        return (self.bot_id, self.command, self.params) == (bot_id, command, params)

    def to_json(self) -> dict[str, Any]:
        return {"userId": self.user_id, "commandId": self.command_id, "botId": self.bot_id,
                "command": self.command, "params": self.params, "service": self.service, "node": self.node,
                "sessionId": self.session_id, "createdAt": self.created_at, "deadline": self.deadline,
                "state": self.state.value, "version": self.version, "acceptedAt": self.accepted_at,
                "finishedAt": self.finished_at, "result": self.result}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Command:
        return cls(obj["userId"], obj["commandId"], obj["botId"], obj["command"], obj["params"], obj["service"],
                   obj["node"], obj["sessionId"], obj["createdAt"], obj["deadline"], CommandState(obj["state"]),
                   obj["version"], obj.get("acceptedAt"), obj.get("finishedAt"), obj.get("result"))

    def to_service(self) -> dict[str, Any]:
        """What the owning service receives on ``bot-commands``."""
        return {"commandId": self.command_id, "userId": self.user_id, "botId": self.bot_id,
                "command": self.command, "params": self.params, "sessionId": self.session_id,
                "deadline": self.deadline}

    def to_user(self) -> dict[str, Any]:
        """The ``data`` of ``bot_command_result``."""
        return {"commandId": self.command_id, "botId": self.bot_id, "command": self.command,
                "state": self.state.value, "result": self.result,
                "ts": self.finished_at or self.accepted_at or self.created_at}


def advance(cmd: Command, to: CommandState, now_ms: int, result: Any = None) -> Command | None:
    """``cmd`` moved to ``to``, or None when that is not a step forward from where it is."""
    if to not in _NEXT.get(cmd.state, frozenset()):
        return None
    accepted_at = cmd.accepted_at if cmd.accepted_at is not None else (
        now_ms if to in (CommandState.ACCEPTED, CommandState.SUCCEEDED, CommandState.FAILED) else None)
    return replace(cmd, state=to, version=cmd.version + 1, accepted_at=accepted_at,
                   finished_at=now_ms if to in TERMINAL else None,
                   result=result if to in TERMINAL else cmd.result)


def valid_pattern(pattern: Any) -> bool:
    return isinstance(pattern, str) and bool(pattern) and bool(_PATTERN.match(pattern))


def serves(claim: Any) -> tuple[str, ...]:
    """A service token's ``serves`` claim as patterns; no claim: every bot (``*``)."""
    if claim is None:
        return ("*",)
    if isinstance(claim, str):
        claim = [claim]
    if not isinstance(claim, list):
        return ()
    return tuple(p for p in claim if valid_pattern(p))


def _specificity(pattern: str, bot_id: str) -> int | None:
    """How closely ``pattern`` names ``bot_id``: higher wins, None when it does not match."""
    if pattern == bot_id:
        return 1 << 20  # an exact id beats every prefix
    if pattern.endswith("*") and bot_id.startswith(pattern[:-1]):
        return len(pattern) - 1  # a longer prefix beats a shorter one; ``*`` alone is 0
    return None


def owners(bot_id: str, services: Mapping[str, Iterable[str]]) -> list[str]:
    """The services that own ``bot_id``, by name: the caller takes the first one connected.

    The most specific claim wins: an exact id, then the longest prefix, then
    ``*``. Only the services with the most specific claim own the bot: when
    they are all gone, the command is ``no_service``, never handed to a
    broader claim that may not know this bot. Several services with equally
    specific claims are replicas: ordered by name, so every node picks alike.
    """
    ranked: dict[int, list[str]] = {}
    for service, patterns in services.items():
        best = max((s for s in (_specificity(p, bot_id) for p in patterns) if s is not None), default=None)
        if best is not None:
            ranked.setdefault(best, []).append(service)
    return sorted(ranked[max(ranked)]) if ranked else []
