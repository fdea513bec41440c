"""What a connection actor knows of the gateway: its session, its limits, and the directory.

The gateway (``gateway/server.py``) hands each :class:`actors.connection.ConnectionActor`
one :class:`ConnectionContext`, built once; the hub (``gateway/hub.py``)
implements :class:`Directory`. Nothing here imports the gateway: the
dependencies point down (protocol, transport → actors → gateway).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from metrics.definitions import Metrics
from protocol.auth import Principal
from protocol.channels import ChannelKey, Position
from protocol.messages import BotCommand, BotCommandReport, BotCommandStatus
from transport.outbox import Outbox

__all__ = ["Commands", "ConnectionContext", "ConnectionLimits", "Directory", "Session"]


@dataclass(slots=True)
class Session:
    """One client connection as the directory tracks it."""

    session_id: str
    principal: Principal
    outbox: Outbox
    conn: Any = None  # transport.socket.WebSocketConnection, once upgraded
    actor: Any = None  # the connection actor's ref
    ping_bucket: int = 0  # spreads heartbeat pings over the interval (gateway/server.py)
    opened_at: float = 0.0
    channels: set[ChannelKey] = field(default_factory=set)


class Directory(Protocol):
    """The directory of sessions and channels, as a connection actor uses it."""

    def join(self, session: Session, key: ChannelKey, *, since: Position | None = None,
             confirm: Callable[[bool | None, Any], str] | None = None) -> None:
        """Subscribe ``session`` to ``key``; a brokered channel confirms through ``confirm``."""

    def leave(self, session: Session, key: ChannelKey) -> None: ...

    def close_session(self, session: Session) -> None:
        """Forget the session and leave every channel (idempotent)."""



class Commands(Protocol):
    """Bot commands (gateway/commands.py): each call returns the frames to send as
    (text, message type), or raises ProtocolError for an ``error`` reply."""

    def register_service(self, principal: Principal) -> None:
        """A service subscribes to bot-commands: it owns the bots its token's ``serves`` names."""

    def submit(self, principal: Principal, session_id: str, msg: BotCommand) -> list[tuple[str, str]]: ...

    def status(self, principal: Principal, msg: BotCommandStatus) -> list[tuple[str, str]]: ...

    def report(self, principal: Principal, msg: BotCommandReport) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The per-connection budgets (docs/protocol.md, limits)."""

    max_channels: int
    command_rate: float
    command_burst: int
    error_budget: int


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    directory: Directory
    limits: ConnectionLimits
    verify: Callable[[str], Principal]  # a refresh token → its principal, or AuthError (revoked too)
    metrics: Metrics
    commands: Commands
    clock: Callable[[], float] = time.monotonic  # for the budgets; tests pass a fake one
