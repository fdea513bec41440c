"""MemoryBroker: the default broker, for one gateway process.

History is kept per channel in memory: at most ``history_size``
publications, none older than ``history_ttl`` seconds. The epoch of a
channel is made when its history starts, so a restarted process answers
``recovered: false`` to positions from before the restart.

Idempotency keys (``publish_many``) are kept with the history they belong
to: per channel, the ids of its last ``id_window`` publications that carried
one, each dropped once it is older than ``history_ttl``, all of them with
the epoch. Channels untouched for ``history_ttl`` (their history would
start again at the next use) are swept out every ``history_ttl``, so a
channel published to once holds no memory for good.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from brokers.broker import BrokerUnavailable, Outgoing, Publication, Stored
from protocol.channels import Position

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    items: deque[Publication] = field(default_factory=deque)
    touched: float = 0.0
    # Idempotency keys of this epoch: id → its publication, and the ids in publication order.
    ids: dict[str, Publication] = field(default_factory=dict)
    id_order: deque[tuple[str, Publication]] = field(default_factory=deque)


class MemoryBroker:
    def __init__(self, *, history_size: int = 100, history_ttl: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.clock = clock
        self.on_publication: Callable[[Publication], None] = lambda pub: None
        self.on_reconnected: Callable[[], None] = lambda: None
        self._streams: dict[str, _Stream] = {}
        self._connections: dict[str, set[str]] = defaultdict(set)
        self._next_sweep = clock() + history_ttl
        self._records: dict[str, tuple[str, float]] = {}  # key -> (text, expires at)
        self._next_record_sweep = 0.0
        self._services: dict[str, tuple[str, ...]] = {}

    def _stream(self, key: str, now: float | None = None) -> _Stream:
        now = self.clock() if now is None else now
        if now >= self._next_sweep:
            self._sweep(now)
        stream = self._streams.get(key)
        if stream is None or now - stream.touched > self.history_ttl:
            # Nothing kept (or all of it too old): a new history, a new epoch.
            stream = self._streams[key] = _Stream(secrets.token_hex(4))
        stream.touched = now
        return stream

    def _trim(self, stream: _Stream, now: float | None = None) -> None:
        cutoff = ((self.clock() if now is None else now) - self.history_ttl) * 1000
        items = stream.items
        while items and (len(items) > self.history_size or items[0].ts < cutoff):
            items.popleft()

    def _sweep(self, now: float) -> None:
        """Forget channels untouched for history_ttl: the next use would start a new history anyway."""
        self._next_sweep = now + self.history_ttl
        stale = [key for key, stream in self._streams.items() if now - stream.touched > self.history_ttl]
        for key in stale:
            del self._streams[key]

    def _append(self, stream: _Stream, key: str, data: Any, ts: int, now: float | None = None) -> Publication:
        stream.offset += 1
        pub = Publication(key, stream.offset, stream.epoch, data, ts)
        stream.items.append(pub)
        self._trim(stream, now)
        return pub

    def publish(self, key: str, data: Any, ts: int) -> Publication:
        pub = self._append(self._stream(key), key, data, ts)
        self.on_publication(pub)
        return pub

    def publish_many(self, items: Sequence[Outgoing], *, id_window: int) -> list[Stored | BrokerUnavailable]:
        now = self.clock()  # one moment for the whole batch (no item waits for another here)
        cutoff = (now - self.history_ttl) * 1000
        out: list[Stored | BrokerUnavailable] = []
        for item in items:
            stream = self._stream(item.key, now)
            pid = item.id
            if pid is not None:
                ids, order = stream.ids, stream.id_order
                while order and (len(order) > id_window or order[0][1].ts < cutoff):
                    del ids[order.popleft()[0]]
                seen = ids.get(pid)
                if seen is not None:
                    out.append(Stored(seen, duplicate=True))
                    continue
            pub = self._append(stream, item.key, item.data, item.ts, now)
            if pid is not None:
                stream.ids[pid] = pub
                stream.id_order.append((pid, pub))
            self.on_publication(pub)
            out.append(Stored(pub))
        return out

    def subscribe(self, key: str) -> None:
        pass

    def unsubscribe(self, key: str) -> None:
        pass

    def position(self, key: str) -> Position:
        stream = self._stream(key)
        return Position(stream.offset, stream.epoch)

    def history(self, key: str, since: Position) -> tuple[list[Publication], bool]:
        stream = self._stream(key)
        self._trim(stream)
        if since.epoch != stream.epoch or since.offset > stream.offset:
            return [], False
        if since.offset == stream.offset:
            return [], True
        items = stream.items
        if not items or items[0].offset > since.offset + 1:
            return [], False
        return [p for p in items if p.offset > since.offset], True

    def receivers(self, key: str) -> int | None:
        return None

    def acquire_connection(self, user: str, session_id: str, limit: int) -> bool:
        sessions = self._connections[user]
        if session_id in sessions:
            return True
        if len(sessions) >= limit:
            if not sessions:
                del self._connections[user]
            return False
        sessions.add(session_id)
        return True

    def release_connection(self, user: str, session_id: str) -> None:
        sessions = self._connections.get(user)
        if sessions is not None:
            sessions.discard(session_id)
            if not sessions:
                del self._connections[user]

    def refresh_connections(self, sessions: list[tuple[str, str]]) -> None:
        pass

    def _record(self, key: str) -> str | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._records[key]
            return None
        return entry[0]

    def record_put(self, key: str, text: str, ttl: float) -> str | None:
        now = self.clock()
        if len(self._records) > 10_000 and now >= self._next_record_sweep:
            self._next_record_sweep = now + 60.0
            for stale in [k for k, (_, expires) in self._records.items() if expires <= now]:
                del self._records[stale]
        existing = self._record(key)
        if existing is not None:
            return existing
        self._records[key] = (text, now + ttl)
        return None

    def record_get(self, key: str) -> str | None:
        return self._record(key)

    def record_swap(self, key: str, expected: str, text: str, ttl: float) -> bool:
        if self._record(key) != expected:
            return False
        self._records[key] = (text, self.clock() + ttl)
        return True

    def record_delete(self, key: str) -> None:
        self._records.pop(key, None)

    def register_service(self, service: str, patterns: Sequence[str]) -> None:
        self._services[service] = tuple(patterns)

    def services(self) -> dict[str, tuple[str, ...]]:
        return dict(self._services)

    def healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"kind": "memory", "connected": True, "channels": len(self._streams)}

    def close(self) -> None:
        pass
