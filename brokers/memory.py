"""MemoryBroker: the default broker, for one gateway process.

History is kept per channel in memory: at most ``history_size``
publications, none older than ``history_ttl`` seconds. The epoch of a
channel is made when its history starts, so a restarted process answers
``recovered: false`` to positions from before the restart.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from brokers.broker import Publication
from protocol.channels import Position

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    items: deque[Publication] = field(default_factory=deque)
    touched: float = 0.0


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

    def _stream(self, key: str) -> _Stream:
        now = self.clock()
        stream = self._streams.get(key)
        if stream is None or now - stream.touched > self.history_ttl:
            # Nothing kept (or all of it too old): a new history, a new epoch.
            stream = self._streams[key] = _Stream(secrets.token_hex(4))
        stream.touched = now
        return stream

    def _trim(self, stream: _Stream) -> None:
        cutoff = (self.clock() - self.history_ttl) * 1000
        items = stream.items
        while items and (len(items) > self.history_size or items[0].ts < cutoff):
            items.popleft()

    def publish(self, key: str, data: Any, ts: int) -> Publication:
        stream = self._stream(key)
        stream.offset += 1
        pub = Publication(key, stream.offset, stream.epoch, data, ts)
        stream.items.append(pub)
        self._trim(stream)
        self.on_publication(pub)
        return pub

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

    def healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"kind": "memory", "connected": True, "channels": len(self._streams)}

    def close(self) -> None:
        pass
