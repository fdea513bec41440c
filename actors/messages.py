"""Typed messages between the gateway's actors (all ``tell``).

Frozen, slotted dataclasses. Data frames never travel as messages to a
connection: channels push ready-made frame bytes into the connection's
bounded outbox (``transport/socket.py``), which is the per-client queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from brokers.broker import Publication
from protocol.channels import ChannelKey, Position
from protocol.errors import ProtocolError
from protocol.messages import ClientMessage
from transport.outbox import Outbox

# --- to a connection actor (from its socket reader, the hub, channels) --------


@dataclass(frozen=True, slots=True)
class Inbound:
    """A parsed client message."""

    message: ClientMessage


@dataclass(frozen=True, slots=True)
class Rejected:
    """A client message that failed to parse; answered with ``error``."""

    error: ProtocolError


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The socket is gone (the reader saw the close or the loss)."""

    code: int | None


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the socket with ``code`` (from the close-code table)."""

    code: int
    reason: str
    discard_pending: bool = False


# --- to a channel actor --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionRevoked:
    """The channel dropped this connection (the exchange rejected its symbol)."""

    key: ChannelKey


@dataclass(frozen=True, slots=True)
class Join:
    """Add a subscriber.

    ``since`` asks for the publications after that position (brokered
    channels). ``confirm(recovered, position)`` builds the ``subscribed``
    reply; the channel sends it, so that it precedes the recovered
    publications and the live ones.
    """

    session_id: str
    outbox: Outbox
    owner: Any = None  # the connection actor's ref, told SubscriptionRevoked on Evict
    since: Position | None = None
    confirm: Callable[[bool | None, Position | None], str] | None = None


@dataclass(frozen=True, slots=True)
class Deliver:
    """A publication from the broker (brokered channels)."""

    publication: Publication


@dataclass(frozen=True, slots=True)
class CatchUp:
    """The broker reconnected: fetch what was missed, or tell subscribers to resync."""


@dataclass(frozen=True, slots=True)
class Evict:
    """Send ``frame_text`` to every subscriber, then drop them all."""

    frame_text: str


@dataclass(frozen=True, slots=True)
class Leave:
    session_id: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``data`` to every subscriber; ``ts`` is the server time in ms.

    ``extra`` adds top-level fields to the data message (``symbol`` and
    ``stream`` for market data). ``retain`` keeps the frame as the channel's
    latest value, sent at once to each new subscriber (tickers, books).
    ``received`` (epoch seconds) is when the data reached the gateway.
    """

    data: Any
    ts: int
    extra: dict[str, Any] | None = None
    retain: bool = False
    received: float | None = None  # when the data arrived from the exchange (fan-out latency)


@dataclass(frozen=True, slots=True)
class IdleCheck:
    """Sent by the channel to itself after its last subscriber left."""

    generation: int
