"""ChannelActor: one per channel key; fans each publication out to its subscribers.

Takes: :class:`Join`, :class:`Leave`, :class:`Publish` (local channels),
:class:`Deliver` and :class:`CatchUp` (brokered channels), :class:`Evict`,
:class:`IdleCheck`.
Sends: :class:`SubscriptionRevoked` to the connections it evicts.

Each publication is encoded once into a text frame and the same bytes are
pushed into every subscriber's outbox; an outbox that is full refuses the
frame and closes its connection as a slow consumer (the channel never
blocks on a client).

**Local channels** (market data, time-sync, system-health: every node has
its own upstream) number their publications themselves (``seq``).
**Brokered channels** (private channels, bot-commands) take offset and epoch
from the broker: ``seq`` is the broker's offset, so it means the same on
every node. A subscriber that joins with a position gets what it missed
from the broker's history first, then live publications, with no
duplicate and no gap; a gap in live delivery (a node that missed broker
messages) is filled from the history, and when that is impossible the
subscribers get a ``resync`` message.

A channel with no subscribers for ``idle_grace`` seconds stops and removes
itself from the hub. A channel whose handler fails is replaced by the hub
at once with the same subscribers (``on_failed``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent

from actors.messages import (
    CatchUp,
    Deliver,
    Evict,
    IdleCheck,
    Join,
    Leave,
    Publish,
    SubscriptionRevoked,
)
from brokers.broker import Broker, BrokerUnavailable, Publication
from protocol.channels import ChannelKey, Position
from protocol.messages import RawJson, data_message, dumps, resync_message
from supervision import GeventActor
from transport.frames import Opcode, encode_frame
from transport.outbox import Outbox

__all__ = ["ChannelActor"]

# Keys data_message itself writes: an ``extra`` naming one of them takes the general path.
_ENVELOPE_KEYS = frozenset({"type", "channel", "seq", "ts", "data"})


def _frame(text: str) -> bytes:
    return encode_frame(Opcode.TEXT, text.encode("utf-8"))


# Channels with deliveries not yet added to their counters: added once per turn of the
# event loop (two prometheus calls per publication were a tenth of a market-data publish).
_COUNTING: list[ChannelActor] = []


def _add_counts() -> None:
    global _COUNTING
    channels, _COUNTING = _COUNTING, []
    for channel in channels:
        channel._add_counts()


class ChannelActor(GeventActor):
    registered = False  # the hub holds every channel; pykka's registry is a linear list
    on_demand = True  # no idle greenlet per connection/channel (_supervision/runtime.py)

    def __init__(
        self,
        key: ChannelKey,
        public_name: str,
        *,
        on_idle: Callable[[ChannelKey, Any], None],
        on_count: Callable[[ChannelKey, int], None],
        on_failed: Callable[[ChannelKey, Any, dict[str, Outbox], dict[str, Any]], None] | None = None,
        broker: Broker | None = None,
        sent_counter: Any = None,
        bytes_counter: Any = None,
        idle_grace: float = 30.0,
        depth_histogram: Any = None,
        local: dict[ChannelKey, ChannelActor] | None = None,
    ) -> None:
        """``local``: where a channel without a broker (market data, time-sync, system-health)
        lists itself while it runs, so the market publisher (actors/bridge.py) can hand it each
        update through :meth:`publish_now`: one hop from the exchange frame to the fan-out."""
        super().__init__()
        self.key = key
        self.public_name = public_name
        self.broker = broker
        self.seq = 0
        self.position: Position | None = None  # brokered: the last offset delivered
        self.skip: dict[str, int] = {}  # brokered: session → offsets it already got from history
        self.subscribers: dict[str, Outbox] = {}
        self.owners: dict[str, Any] = {}
        self.retained: bytes | None = None
        self._on_idle = on_idle
        self._on_count = on_count
        self._on_failed = on_failed
        self._sent = sent_counter
        self._bytes = bytes_counter
        self._stamp_turn = 0
        self._idle_grace = idle_grace
        self._idle_generation = 0
        self._depth = depth_histogram  # market data: inbox depth, sampled at one publish in sixteen
        self._depth_turn = 0
        self._sent_n = 0  # deliveries and their bytes, not yet added to the counters
        self._bytes_n = 0
        self._counting = False
        # The envelope of data messages up to ``"seq":``, made once per ``extra`` (the market
        # publisher passes one dict per key): json.dumps of the envelope was a third of a publish.
        self._extra: Any = _ENVELOPE_KEYS  # a sentinel no Publish carries
        self._prefix: str | None = None
        self._local = local if broker is None else None
        if self._local is not None:
            self._local[key] = self

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Deliver):
            self._deliver(message.publication)
        elif isinstance(message, Publish):
            return self._publish(message)
        elif isinstance(message, Join):
            self._join(message)
        elif isinstance(message, Leave):
            if self.subscribers.pop(message.session_id, None) is not None:
                self.owners.pop(message.session_id, None)
                self.skip.pop(message.session_id, None)
                self._on_count(self.key, len(self.subscribers))
                if not self.subscribers:
                    self._idle_soon()
        elif isinstance(message, CatchUp):
            self._catch_up("the broker reconnected")
        elif isinstance(message, Evict):
            frame = _frame(message.frame_text)
            for session_id, outbox in self.subscribers.items():
                outbox.push(frame)
                owner = self.owners.get(session_id)
                if owner is not None:
                    owner.tell(SubscriptionRevoked(self.key))
            self.subscribers.clear()
            self.owners.clear()
            self.retained = None
            self._on_count(self.key, 0)
            self._idle_soon()
        elif isinstance(message, IdleCheck):
            if not self.subscribers and message.generation == self._idle_generation:
                self._on_idle(self.key, self.actor_ref)
                self.stop()
        else:
            return super().on_receive(message)
        return None

    def publish_now(self, message: Publish) -> bool:
        """Publish at once, from the caller's greenlet (the market publisher's direct hop).

        Safe under gevent: a local channel's handlers never yield, so this
        never runs in the middle of one. False when the channel has stopped
        (the caller forgets it)."""
        return self.publish_data(message.data, message.ts, message.extra, message.retain, message.received)

    def publish_data(self, data: Any, ts: int, extra: dict[str, Any] | None, retain: bool,
                     received: float | None) -> bool:
        """:meth:`publish_now` without a :class:`Publish` to unpack (one fewer object per update)."""
        if self.actor_stopped.is_set():
            return False
        if self._depth is not None:
            self._depth_turn += 1
            if not self._depth_turn & 15:  # sampled: what is still queued for this channel
                self._depth.observe(self.actor_inbox.qsize())
        self._publish_fields(data, ts, extra, retain, received)
        return True

    def on_stop(self) -> None:
        self._unlist()

    def _unlist(self) -> None:
        if self._local is not None and self._local.get(self.key) is self:
            del self._local[self.key]

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Not left to die with its subscribers: the hub starts a successor
        # at once and moves every subscriber over.
        self._unlist()
        if self._on_failed is not None:
            self._on_failed(self.key, self.actor_ref, dict(self.subscribers), dict(self.owners))

    def _idle_soon(self) -> None:
        self._idle_generation += 1
        gevent.spawn_later(self._idle_grace, self._tell_idle, self._idle_generation)

    def _tell_idle(self, generation: int) -> None:
        if not self.actor_stopped.is_set():
            self.actor_ref.tell(IdleCheck(generation))

    # -- joining -------------------------------------------------------------------

    def _join(self, message: Join) -> None:
        outbox = message.outbox
        if self.broker is None:
            if message.confirm is not None:
                outbox.push(_frame(message.confirm(None, None)))
            if self.retained is not None:
                outbox.push(self.retained)
        else:
            self._join_brokered(message)
        self.subscribers[message.session_id] = outbox
        self.owners[message.session_id] = message.owner
        self._on_count(self.key, len(self.subscribers))

    def _join_brokered(self, message: Join) -> None:
        assert self.broker is not None
        outbox = message.outbox
        missed: list[Publication] = []
        recovered: bool | None = None
        head: Position | None
        try:
            if message.since is None and self.position is not None and self.broker.healthy():
                # Live on the broker since it started: the last offset delivered is the head (a
                # publication still in flight reaches this subscriber too). Saves a round trip
                # per subscribe on a busy or reconnecting channel.
                head = self.position
            else:
                head = self.broker.position(self.key)
            if message.since is not None:
                missed, recovered = self.broker.history(self.key, message.since)
        except BrokerUnavailable:
            # Live delivery only; the client learns its position is not honoured.
            head, recovered = self.position, (False if message.since is not None else None)
        if self.position is None:
            self.position = head
        last = max([head.offset if head else 0] + [p.offset for p in missed])
        position = Position(last, missed[-1].epoch if missed else (head.epoch if head else ""))
        if message.confirm is not None:
            outbox.push(_frame(message.confirm(recovered, position)))
        for pub in missed:
            outbox.push(self._encode(pub))
        self.skip[message.session_id] = last

    # -- publishing ----------------------------------------------------------------

    def _encode(self, pub: Publication) -> bytes:
        return _frame(data_message(self.public_name, pub.offset, pub.ts, pub.data, {"epoch": pub.epoch}))

    def _deliver(self, pub: Publication) -> None:
        position = self.position
        if position is not None and pub.epoch == position.epoch:
            if pub.offset <= position.offset:
                return  # already delivered (a catch-up got there first)
            if pub.offset > position.offset + 1:
                self._catch_up(f"offsets {position.offset + 1}-{pub.offset - 1} arrived late or not at all")
                if self.position is not None and pub.offset <= self.position.offset:
                    return
        elif position is None or pub.epoch != position.epoch:
            # A new history, or none known (joined or resynced while the broker was
            # away): what this node did not hear of it is in the history.
            self._new_epoch(pub)
            return
        self._send(pub)

    def _new_epoch(self, pub: Publication) -> None:
        """The history restarted: resync, then everything of the new epoch this node has not sent.

        Publications the broker accepted before this node heard of the new
        epoch (its subscription was still coming back) are in the new history:
        they are replayed from its start, so none is lost. When that history
        is incomplete, the subscribers resync to the position before ``pub``.
        """
        reason = "the channel's history restarted"
        try:
            fresh, whole = self.broker.history(self.key, Position(0, pub.epoch)) if self.broker else ([], False)
        except BrokerUnavailable:
            fresh, whole = [], False
        if whole and fresh and fresh[-1].offset >= pub.offset:
            self._resync(reason, Position(0, pub.epoch))
            for earlier in fresh:
                if earlier.offset <= pub.offset:
                    self._send(earlier)
            return
        self._resync(reason, Position(pub.offset - 1, pub.epoch))
        self._send(pub)

    def _send(self, pub: Publication) -> None:
        frame = self._encode(pub)
        skip = self.skip
        delivered = 0
        for session_id, outbox in self.subscribers.items():
            if skip:
                seen = skip.get(session_id)
                if seen is not None:
                    if pub.offset <= seen:
                        continue
                    del skip[session_id]
            if outbox.push(frame):
                delivered += 1
        self.position = pub.position
        self._count(delivered, frame)

    def _catch_up(self, reason: str) -> None:
        """Fill a gap from the broker's history, or tell subscribers to resync."""
        if self.broker is None:
            return
        if self.position is not None:
            try:
                missed, recovered = self.broker.history(self.key, self.position)
            except BrokerUnavailable:
                missed, recovered = [], False
            if recovered:
                for pub in missed:
                    self._send(pub)
                return
        # Our epoch is gone (Redis restarted empty, the history expired), or we
        # never knew our place. What was published in the current epoch is still
        # in its history: resync to the start of that epoch and replay it, so
        # that nothing accepted is lost (publications accepted before this
        # node's subscription came back).
        try:
            head = self.broker.position(self.key)
            fresh, whole = self.broker.history(self.key, Position(0, head.epoch))
        except BrokerUnavailable:
            self._resync(reason)
            return
        if whole and (self.position is None or head.epoch != self.position.epoch):
            self._resync(reason, Position(0, head.epoch))
            for pub in fresh:
                self._send(pub)
        else:
            self._resync(reason, head)

    def _resync(self, reason: str, head: Position | None = None) -> None:
        """Tell every subscriber to refetch the state and continue from ``head``.

        ``head`` is the position just before the next publication they will be sent.
        None: not known now (the broker cannot be read). The message then carries
        no position, and the channel does not claim one either: the next
        publication finds it without one and replays its epoch's history from the
        start (:meth:`_new_epoch`), rather than skip what it never heard.
        """
        frame = _frame(resync_message(self.public_name, head, reason))
        for outbox in self.subscribers.values():
            outbox.push(frame)
        self.skip.clear()
        self.position = head

    def _envelope(self, extra: dict[str, Any] | None) -> str | None:
        """``{"type":"data","channel":…,<extra>,"seq":`` as data_message writes it (None: use it)."""
        if extra and not _ENVELOPE_KEYS.isdisjoint(extra):
            prefix = None
        else:
            prefix = dumps({"type": "data", "channel": self.public_name, **(extra or {})})[:-1] + ',"seq":'
        self._extra, self._prefix = extra, prefix
        return prefix

    def _publish(self, message: Publish) -> int:
        return self._publish_fields(message.data, message.ts, message.extra, message.retain, message.received)

    def _publish_fields(self, data: Any, ts: int, extra: dict[str, Any] | None, retain: bool,
                        received: float | None) -> int:
        self.seq += 1
        prefix = self._prefix if extra is self._extra or extra == self._extra else self._envelope(extra)
        if prefix is None:
            text = data_message(self.public_name, self.seq, ts, data, extra)
        else:  # the same text, without encoding the envelope again
            text = f'{prefix}{self.seq},"ts":{ts},"data":{data if isinstance(data, RawJson) else dumps(data)}}}'
        frame = _frame(text)
        if retain:
            self.retained = frame
        delivered = 0
        subscribers = self.subscribers
        # Latest-value data (retained: tickers, book views): a subscriber that is
        # behind keeps only the newest per key (Outbox.push_latest); events use push.
        key = self.key
        stamped = -1
        if received is not None and subscribers:
            # Fan-out latency is sampled: one publication in eight, one subscriber of it, in turn.
            self._stamp_turn = turn = self._stamp_turn + 1
            if not turn & 7:
                stamped = (turn >> 3) % len(subscribers)
        if stamped >= 0:
            for i, outbox in enumerate(subscribers.values()):
                stamp = received if i == stamped else None
                if outbox.push_latest(frame, key, stamp) if retain else outbox.push(frame, stamp):
                    delivered += 1
        elif retain:
            for outbox in subscribers.values():
                if outbox.push_latest(frame, key):
                    delivered += 1
        else:
            for outbox in subscribers.values():
                if outbox.push(frame):
                    delivered += 1
        self._count(delivered, frame)
        return self.seq

    def _count(self, delivered: int, frame: bytes) -> None:
        if delivered and self._sent is not None:
            self._sent_n += delivered
            self._bytes_n += delivered * len(frame)
            if not self._counting:
                self._counting = True
                _COUNTING.append(self)
                if len(_COUNTING) == 1:
                    gevent.get_hub().loop.run_callback(_add_counts)

    def _add_counts(self) -> None:
        self._counting = False
        if self._sent_n:
            self._sent.inc(self._sent_n)
            self._bytes.inc(self._bytes_n)
            self._sent_n = self._bytes_n = 0
