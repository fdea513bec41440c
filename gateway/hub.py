"""The hub: the directory of connections and channels.

A plain object, not an actor: gevent runs one greenlet at a time, and none of
these methods yields, so a check-then-act here (the per-user connection
limit) is atomic — when many connections of one user arrive together,
exactly the limit succeed. Lookups are dicts, whatever the number of
connections (pykka's registry is a list searched linearly, docs/stack-notes.md).

Channel actors are started on the first subscribe and remove themselves
after their last subscriber has been gone for a grace period.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from actors.channel import ChannelActor
from actors.directory import Session
from actors.messages import CatchUp, Deliver, Join, Leave, Publish
from brokers.broker import Broker, BrokerUnavailable, Outgoing, Publication, Stored
from brokers.memory import MemoryBroker
from metrics.definitions import Metrics, labelled
from protocol.auth import Principal
from protocol.channels import BROKERED_CHANNELS, CONTROL_KEY, RESULTS_KEY, ChannelKey, Position
from transport.outbox import Outbox

__all__ = ["ConnectionLimitExceeded", "Hub"]


class ConnectionLimitExceeded(Exception):
    pass


def _public_name(key: ChannelKey) -> str:
    # "market-data.bybit.spot.BTCUSDT.ticker" -> "market-data"; "trades#alice" -> "trades"
    if key.startswith("market-data."):
        return "market-data"
    return key.split("#", 1)[0]


class Hub:
    def __init__(self, metrics: Metrics, *, max_connections_per_user: int, channel_idle_grace: float = 30.0,
                 broker: Broker | None = None):
        self.metrics = metrics
        self.broker: Broker = broker or MemoryBroker()
        self.broker.on_publication = self._delivered
        self.broker.on_reconnected = self._broker_reconnected
        self.max_connections_per_user = max_connections_per_user
        self.channel_idle_grace = channel_idle_grace
        self.sessions: dict[str, Session] = {}
        self.by_user: dict[str, set[str]] = defaultdict(set)
        self.channels: dict[ChannelKey, pykka.ActorRef[Any]] = {}
        # The running channels without a broker, by key: what the market publisher calls directly.
        self.local_channels: dict[ChannelKey, ChannelActor] = {}
        self.subscriber_counts: dict[ChannelKey, int] = {}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self.on_channel_count: list[Callable[[ChannelKey, int], None]] = []
        # Brokered keys that are no channel (protocol/channels.py): command results for
        # the users' connections here, admin actions for this node. Set by the gateway.
        self.on_result: Callable[[Any], None] = lambda data: None
        self.on_control: Callable[[Any], None] = lambda data: None
        self.on_broker_back: list[Callable[[], None]] = []  # after each (re)connection of the broker
        self.broker.subscribe(RESULTS_KEY)
        self.broker.subscribe(CONTROL_KEY)

    # -- connections -----------------------------------------------------------

    def open_session(self, principal: Principal, outbox: Outbox, now: float) -> Session:
        """Register a connection, or raise ConnectionLimitExceeded.

        The per-user count is the broker's: one process (memory broker, no
        yield: atomic) or every node together (Redis, one atomic script).
        """
        number = next(self._ids)
        session_id = f"{self._prefix}-{number}"
        if not principal.is_service and not self.broker.acquire_connection(
                principal.user_id, session_id, self.max_connections_per_user):
            raise ConnectionLimitExceeded(principal.user_id)
        user_sessions = self.by_user[principal.user_id]
        session = Session(session_id, principal, outbox, opened_at=now, ping_bucket=number)
        self.sessions[session.session_id] = session
        if not user_sessions:
            self.metrics.users.inc()
        user_sessions.add(session.session_id)
        return session

    def close_session(self, session: Session) -> None:
        if self.sessions.pop(session.session_id, None) is None:
            return
        for key in list(session.channels):
            self.leave(session, key)
        if not session.principal.is_service:
            self.broker.release_connection(session.principal.user_id, session.session_id)
        users = self.by_user.get(session.principal.user_id)
        if users is not None:
            users.discard(session.session_id)
            if not users:
                del self.by_user[session.principal.user_id]
                self.metrics.users.dec()

    # -- channels --------------------------------------------------------------

    def channel(self, key: ChannelKey) -> pykka.ActorRef[Any]:
        ref = self.channels.get(key)
        if ref is None or not ref.is_alive():
            name = _public_name(key)
            brokered = name in BROKERED_CHANNELS
            ref = ChannelActor.start(
                key, name, on_idle=self._channel_idle, on_count=self._channel_count,
                on_failed=self._channel_failed, broker=self.broker if brokered else None,
                sent_counter=labelled(self.metrics.messages_sent, name, "data"),
                bytes_counter=labelled(self.metrics.bytes_queued, name), idle_grace=self.channel_idle_grace,
                depth_histogram=labelled(self.metrics.internal_queue_depth, "market_channel")
                if name == "market-data" else None,
                local=self.local_channels,
            )
            self.channels[key] = ref
        return ref

    def existing_channel(self, key: ChannelKey) -> pykka.ActorRef[Any] | None:
        ref = self.channels.get(key)
        return ref if ref is not None and ref.is_alive() else None

    def join(self, session: Session, key: ChannelKey, *, since: Position | None = None,
             confirm: Any = None) -> None:
        session.channels.add(key)
        if _public_name(key) in BROKERED_CHANNELS:
            self.broker.subscribe(key)
        for _ in range(2):
            try:
                self.channel(key).tell(Join(session.session_id, session.outbox, session.actor, since, confirm))
                return
            except pykka.ActorDeadError:
                self.channels.pop(key, None)
        raise RuntimeError(f"cannot start channel {key}")

    def leave(self, session: Session, key: ChannelKey) -> None:
        session.channels.discard(key)
        ref = self.existing_channel(key)
        if ref is not None:
            try:
                ref.tell(Leave(session.session_id))
            except pykka.ActorDeadError:
                pass

    def publish(self, key: ChannelKey, message: Publish) -> bool:
        """Tell the channel to publish; False when nobody has ever subscribed to it."""
        ref = self.existing_channel(key)
        if ref is None:
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True

    def service_receivers(self, key: ChannelKey) -> int:
        """Services that would receive a publication on ``key``: on every node (Redis), or here."""
        receivers = self.broker.receivers(key)
        return self.subscribers(key) if receivers is None else receivers

    def publish_shared(self, key: ChannelKey, data: Any, ts: int) -> Publication:
        """Publish on a brokered channel (every node); raises BrokerUnavailable instead of losing it."""
        return self.broker.publish(key, data, ts)

    def publish_many(self, items: Sequence[Outgoing], *, id_window: int) -> list[Stored | BrokerUnavailable]:
        """Publish a batch on brokered channels, in order: one answer per item (brokers/broker.py)."""
        return self.broker.publish_many(items, id_window=id_window)

    def send_to_user(self, user: str, text: str, kind: str) -> int:
        """Queue ``text`` on every connection of ``user`` on this node (not their services'); how many."""
        sent = 0
        for session_id in self.by_user.get(user, ()):
            session = self.sessions.get(session_id)
            if session is not None and session.conn is not None and not session.principal.is_service:
                if session.conn.send_text(text):
                    sent += 1
        if sent:
            labelled(self.metrics.messages_sent, "-", kind).inc(sent)
        return sent

    def _delivered(self, pub: Publication) -> None:
        if pub.key == RESULTS_KEY:
            self.on_result(pub.data)
            return
        if pub.key == CONTROL_KEY:
            self.on_control(pub.data)
            return
        ref = self.existing_channel(ChannelKey(pub.key))
        if ref is not None:
            try:
                ref.tell(Deliver(pub))
            except pykka.ActorDeadError:
                pass

    def _broker_reconnected(self) -> None:
        for callback in self.on_broker_back:
            callback()
        for key, ref in list(self.channels.items()):
            if _public_name(key) in BROKERED_CHANNELS and ref.is_alive():
                ref.tell(CatchUp())

    def subscribers(self, key: ChannelKey) -> int:
        return self.subscriber_counts.get(key, 0)

    def _channel_count(self, key: ChannelKey, count: int) -> None:
        labelled(self.metrics.subscriptions, _public_name(key)).inc(count - self.subscriber_counts.get(key, 0))
        if count:
            self.subscriber_counts[key] = count
        else:
            self.subscriber_counts.pop(key, None)
        for callback in self.on_channel_count:
            callback(key, count)

    def _channel_failed(self, key: ChannelKey, ref: Any, subscribers: dict[str, Outbox],
                        owners: dict[str, Any]) -> None:
        """A channel actor died: start its successor with the same subscribers."""
        labelled(self.metrics.supervisor_failures, "channel", "receive").inc()
        if self.channels.get(key) is ref:
            del self.channels[key]
        if not subscribers:
            return
        successor = self.channel(key)
        for session_id, outbox in subscribers.items():
            successor.tell(Join(session_id, outbox, owners.get(session_id)))

    def _channel_idle(self, key: ChannelKey, ref: Any) -> None:
        if self.channels.get(key) is ref:
            del self.channels[key]
            if _public_name(key) in BROKERED_CHANNELS:
                self.broker.unsubscribe(key)

    # -- stats -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``connectionsByChannel``: connections on at least one key of each channel (two
        connections on market-data for three symbols count 2); ``subscriptionsByChannel``:
        subscriptions per channel, one per key (the same two count 6). Computed here, at
        request time, from what the hub already holds: no bookkeeping on the data path."""
        by_connection: dict[str, int] = defaultdict(int)
        for session in self.sessions.values():
            for name in {_public_name(key) for key in session.channels}:
                by_connection[name] += 1
        by_subscription: dict[str, int] = defaultdict(int)
        for key, count in self.subscriber_counts.items():
            by_subscription[_public_name(key)] += count
        return {
            "connections": len(self.sessions),
            "channels": len(self.subscriber_counts),
            "connectionsByChannel": dict(by_connection),
            "subscriptionsByChannel": dict(by_subscription),
            "connectionsByUser": {user: len(ids) for user, ids in self.by_user.items()},
        }
