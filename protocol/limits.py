"""Rate budgets, pure: a token bucket that is told the time.

Used where a client can ask for work faster than it deserves: WebSocket
pings answered by the transport, messages handled by a connection actor.
Each limit, its setting and the answer when it runs out are in the limits
table of docs/protocol.md.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full.

    >>> bucket = TokenBucket(rate=2, burst=2, now=0.0)
    >>> [bucket.take(0.0), bucket.take(0.0), bucket.take(0.0), bucket.take(0.5)]
    [True, True, False, True]
    """

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; ``now`` is monotonic seconds."""
        tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
