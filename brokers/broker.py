"""The broker boundary: publications with offsets, bounded history, shared connection counts.

Every publication on a brokered channel (the private channels and
``bot-commands``) gets an ``offset`` that rises by one within an ``epoch``.
An epoch names one unbroken history: when a broker loses its history (a
process restart for the memory broker, an expired or flushed key for
Redis) the epoch changes, and a client holding an older position is told
``recovered: false``.

Delivery is a callback: the broker calls ``on_publication`` for every
publication on a channel this node subscribed to (including its own), and
``on_reconnected`` each time its upstream (Redis) is connected again, or for
the first time, so the channels can catch up on what they missed.

**Idempotency.** ``publish_many`` takes an optional ``id`` per publication
(the publishing service's idempotency key). A broker remembers, per
channel and epoch, the ids of the channel's last ``id_window``
publications that carried one, no longer than the history itself
(``history_ttl``): a publication whose id is remembered is not stored or
delivered again, and answers the offset and epoch it got the first time
(``Stored.duplicate``). A new epoch forgets the ids with the history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.channels import Position

__all__ = ["Broker", "BrokerUnavailable", "Outgoing", "Publication", "Stored"]


class BrokerUnavailable(Exception):
    """The broker cannot take or serve publications now (Redis down).

    ``maybe_stored``: the request reached the broker and no answer came
    back in time, so it may have been stored (and is then delivered). The
    caller must say so rather than "nothing was published": a retry could
    publish twice.
    """

    def __init__(self, message: str, *, maybe_stored: bool = False) -> None:
        super().__init__(message)
        self.maybe_stored = maybe_stored


@dataclass(frozen=True, slots=True)
class Publication:
    key: str
    offset: int
    epoch: str
    data: Any
    ts: int

    @property
    def position(self) -> Position:
        return Position(self.offset, self.epoch)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One publication asked of :meth:`Broker.publish_many`.

    ``text``: ``data`` as compact JSON when the caller has it already (it
    encoded it to check its size); a broker that sends text uses it as is.
    ``id``: the idempotency key, or None.
    """

    key: str
    data: Any
    ts: int
    text: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of one :class:`Outgoing`: its publication, or the earlier one with the same id."""

    publication: Publication
    duplicate: bool = False


class Broker(Protocol):
    on_publication: Callable[[Publication], None]
    on_reconnected: Callable[[], None]

    def publish(self, key: str, data: Any, ts: int) -> Publication:
        """Store and deliver; raises BrokerUnavailable rather than lose it."""

    def publish_many(self, items: Sequence[Outgoing], *, id_window: int) -> list[Stored | BrokerUnavailable]:
        """Store and deliver each item, in order; one answer per item, in the same order.

        Never raises for the broker's state: an item the broker could not take
        answers the BrokerUnavailable that says so (``maybe_stored`` when it
        may have been stored all the same); the items after it are not tried
        and answer BrokerUnavailable too (nothing of them stored). An item with an ``id`` remembered on its channel is
        not published again (``Stored.duplicate``). ``id_window``: how many
        ids each channel remembers (its last publications that carried one).
        """

    def subscribe(self, key: str) -> None:
        """This node has local subscribers for ``key`` (idempotent)."""

    def unsubscribe(self, key: str) -> None:
        """This node has no local subscribers for ``key`` any more."""

    def position(self, key: str) -> Position:
        """The latest position of ``key`` (offset 0 before any publication)."""

    def history(self, key: str, since: Position) -> tuple[list[Publication], bool]:
        """Publications after ``since``, in order, and whether that is all of them.

        ``recovered`` is false when ``since`` is from another epoch or
        older than the kept history; the list is then empty.
        """

    def receivers(self, key: str) -> int | None:
        """How many nodes listen to ``key`` (None: only this node exists)."""

    def acquire_connection(self, user: str, session_id: str, limit: int) -> bool:
        """Count one more connection of ``user`` unless ``limit`` is reached (atomic)."""

    def release_connection(self, user: str, session_id: str) -> None: ...

    def refresh_connections(self, sessions: list[tuple[str, str]]) -> None:
        """Keep this node's connections counted (they expire if the node dies)."""

    # -- small shared records: bot commands and the services that own bots --------

    def record_put(self, key: str, text: str, ttl: float) -> str | None:
        """Store ``text`` under ``key`` unless something is there; None, or the text already there.

        Raises BrokerUnavailable (``maybe_stored`` when the write may have happened)."""

    def record_get(self, key: str) -> str | None:
        """The text under ``key``, or None; raises BrokerUnavailable."""

    def record_swap(self, key: str, expected: str, text: str, ttl: float) -> bool:
        """Replace ``expected`` with ``text`` atomically; False when ``key`` holds something else."""

    def record_delete(self, key: str) -> None: ...

    def register_service(self, service: str, patterns: Sequence[str]) -> None:
        """``service`` serves the bots ``patterns`` name (its token's ``serves`` claim)."""

    def services(self) -> dict[str, tuple[str, ...]]:
        """Every service ever registered, with its patterns (whether connected or not)."""

    def healthy(self) -> bool: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
