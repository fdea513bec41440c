"""ChannelActor: one per channel key; fans each publication out to its subscribers.

Takes: :class:`Join`, :class:`Leave`, :class:`Publish`, :class:`Evict`,
:class:`IdleCheck`.
Sends: :class:`SubscriptionRevoked` to the connections it evicts. Each publication is encoded once into a text
frame and the same bytes are pushed into every subscriber's outbox; an
outbox that is full refuses the frame and closes its connection as a slow
consumer (the channel never blocks on a client).

A channel with no subscribers for ``idle_grace`` seconds stops and removes
itself from the hub; the hub starts a fresh one (a new ``epoch``) on the
next subscribe. A channel whose handler fails is replaced by the hub at once
with the same subscribers (``on_failed``): the publication being handled is
lost and ``seq`` starts again at 1, which clients see as a gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent

from actors.messages import Evict, IdleCheck, Join, Leave, Publish, SubscriptionRevoked
from actors.runtime import GeventActor
from protocol.channels import ChannelKey
from protocol.messages import data_message
from transport.frames import Opcode, encode_frame
from transport.socket import Outbox

__all__ = ["ChannelActor"]


class ChannelActor(GeventActor):
    registered = False  # the hub holds every channel; pykka's registry is a linear list

    def __init__(
        self,
        key: ChannelKey,
        public_name: str,
        *,
        on_idle: Callable[[ChannelKey, Any], None],
        on_count: Callable[[ChannelKey, int], None],
        on_failed: Callable[[ChannelKey, Any, dict[str, Outbox], dict[str, Any]], None] | None = None,
        sent_counter: Any = None,
        bytes_counter: Any = None,
        idle_grace: float = 30.0,
    ) -> None:
        super().__init__()
        self.key = key
        self.public_name = public_name
        self.epoch = int(time.time() * 1000)
        self.seq = 0
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

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Publish):
            return self._publish(message)
        if isinstance(message, Join):
            self.subscribers[message.session_id] = message.outbox
            self.owners[message.session_id] = message.owner
            if self.retained is not None:
                message.outbox.push(self.retained)
            self._on_count(self.key, len(self.subscribers))
            return None
        if isinstance(message, Leave):
            if self.subscribers.pop(message.session_id, None) is not None:
                self.owners.pop(message.session_id, None)
                self._on_count(self.key, len(self.subscribers))
                if not self.subscribers:
                    self._idle_soon()
            return None
        if isinstance(message, Evict):
            frame = encode_frame(Opcode.TEXT, message.frame_text.encode("utf-8"))
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
            return None
        if isinstance(message, IdleCheck):
            if not self.subscribers and message.generation == self._idle_generation:
                self._on_idle(self.key, self.actor_ref)
                self.stop()
            return None
        return super().on_receive(message)

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Not left to die with its subscribers: the hub starts a successor
        # at once and moves every subscriber over (a new epoch, seq from 1).
        if self._on_failed is not None:
            self._on_failed(self.key, self.actor_ref, dict(self.subscribers), dict(self.owners))

    def _idle_soon(self) -> None:
        self._idle_generation += 1
        gevent.spawn_later(self._idle_grace, self._tell_idle, self._idle_generation)

    def _tell_idle(self, generation: int) -> None:
        if not self.actor_stopped.is_set():
            self.actor_ref.tell(IdleCheck(generation))

    def _publish(self, message: Publish) -> int:
        self.seq += 1
        text = data_message(self.public_name, self.seq, message.ts, message.data, message.extra)
        frame = encode_frame(Opcode.TEXT, text.encode("utf-8"))
        if message.retain:
            self.retained = frame
        delivered = 0
        subscribers = self.subscribers
        if message.received is not None and subscribers:
            # Fan-out latency is sampled: one subscriber per publication, in turn.
            self._stamp_turn = (self._stamp_turn + 1) % len(subscribers)
            stamped = self._stamp_turn
            for i, outbox in enumerate(subscribers.values()):
                if outbox.push(frame, message.received if i == stamped else None):
                    delivered += 1
        else:
            for outbox in subscribers.values():
                if outbox.push(frame):
                    delivered += 1
        if delivered and self._sent is not None:
            self._sent.inc(delivered)
            self._bytes.inc(delivered * len(frame))
        return self.seq
