"""When to reconnect (from the close-code table) and when to refresh the token. Pure: no I/O, no clock.

Every function takes the time and the random source as arguments, so the
decisions can be tested exactly.
"""

from __future__ import annotations

import base64
import json
import random
import re
from dataclasses import dataclass

from trading_gateway_client.close_codes import Action, close_info
from trading_gateway_client.errors import ClosedByGateway, HandshakeRefused, TerminalError, TokenUnavailable

__all__ = ["Decision", "ReconnectPolicy", "RefreshSchedule", "jwt_expiry"]

_HINT = re.compile(r"reconnect in (\d+)\s*ms")


@dataclass(frozen=True)
class Decision:
    """What to do after a connection ended or an attempt failed."""

    reconnect: bool
    delay: float = 0.0
    renew_token: bool = False  # get a new token before the next attempt
    error: TerminalError | None = None  # set when the client must stop (reconnect is False)


@dataclass(frozen=True)
class ReconnectPolicy:
    """The close-code table's actions, made concrete.

    * ``reconnect`` rows: 1001 after the delay the close reason suggests
      (the gateway spreads its clients: "reconnect in 2345ms"), else a random
      0–``going_away_max``; 4000 with a new token and 4002, after a random
      0–``quick_max``.
    * ``back off`` rows, 1006 and failed attempts: full jitter, a random
      0–min(``cap``, ``base`` × 2^attempt); 4503 (the user's connection
      limit) a random ``connection_limit`` interval (30–60 s), never at once.
    * ``do not reconnect`` rows: stop with :class:`~trading_gateway_client.errors.ClosedByGateway`;
      except 4501 (token revoked) with ``can_renew_token``: a new token from
      ``get_token``, after a backoff (a 401 ``token_revoked`` refusal alike).
      The core passes ``can_renew_token=False`` for a second revocation in a
      row, and stops when ``get_token`` hands back the revoked token.
    * 4004 (an operator disconnected the user) is a ``back off`` row: the token is still good.

    The attempt count goes back to 0 once a connection has stayed up
    ``stable_after`` seconds. ``max_attempts`` (None: never) stops the client
    after that many failures in a row.
    """

    base: float = 1.0
    cap: float = 30.0
    stable_after: float = 60.0
    going_away_max: float = 5.0
    quick_max: float = 1.0
    connection_limit: tuple[float, float] = (30.0, 60.0)
    max_attempts: int | None = None

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform over 0 .. min(cap, base * 2**attempt)."""
        return rng.uniform(0.0, min(self.cap, self.base * 2 ** min(attempt, 32)))

    def _retry(self, delay: float, attempt: int, *, renew_token: bool = False) -> Decision:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return Decision(False, error=TerminalError(f"gave up after {attempt} failed attempts in a row"))
        return Decision(True, delay, renew_token)

    def after_close(self, code: int, reason: str, *, attempt: int, can_renew_token: bool,
                    closed_by_client: bool, rng: random.Random) -> Decision:
        """A connection that was open has ended with ``code`` (1006: without a close frame)."""
        if closed_by_client:
            return Decision(False)
        info = close_info(code)
        if code == 4501 and can_renew_token:
            # Revoked: never again with this token, but get_token may give another one (the shell stops if it
            # gives the same; the core does not renew twice in a row).
            return self._retry(self.backoff(attempt, rng), attempt, renew_token=True)
        if info.action is Action.DO_NOT_RECONNECT:
            return Decision(False, error=ClosedByGateway(code, reason, info.name, info.meaning))
        if code == 1001:
            hint = _HINT.search(reason or "")
            if hint is not None:
                delay = min(int(hint.group(1)) / 1000, self.going_away_max)
            else:
                delay = rng.uniform(0.0, self.going_away_max)
            return Decision(True, delay)
        if code == 4000:
            if not can_renew_token:
                return Decision(False, error=TokenUnavailable(
                    "the gateway closed the connection with 4000 (token expired) and the client has no "
                    "get_token to get a new one"))
            return Decision(True, rng.uniform(0.0, self.quick_max), renew_token=True)
        if info.action is Action.RECONNECT:
            return Decision(True, rng.uniform(0.0, self.quick_max))
        if code == 4503:
            low, high = self.connection_limit
            return self._retry(rng.uniform(low, high), attempt)
        return self._retry(self.backoff(attempt, rng), attempt)

    def after_refusal(self, status: int, error: str, message: str, *, attempt: int, can_renew_token: bool,
                      retry_after: float | None, rng: random.Random) -> Decision:
        """The upgrade was answered with an HTTP error (docs/protocol.md, "Refusals before the upgrade")."""
        if status == 401 and error == "token_expired":
            if not can_renew_token:
                return Decision(False, error=TokenUnavailable(
                    f"the gateway refused the token as expired ({message}) and the client has no get_token"))
            return self._retry(self.backoff(attempt, rng), attempt, renew_token=True)
        if status == 401 and error == "token_revoked" and can_renew_token:
            return self._retry(self.backoff(attempt, rng), attempt, renew_token=True)
        if status in (429, 503) or status == 408 or status >= 500:
            delay = self.backoff(attempt, rng)
            if retry_after is not None:
                delay = max(delay, retry_after + rng.uniform(0.0, min(retry_after, self.cap) / 2 + 0.001))
            return self._retry(delay, attempt)
        # 401 (malformed, forged, bad claims, missing), 403 (origin), 400/405/426 (a client bug): retrying the
        # same request cannot help.
        return Decision(False, error=HandshakeRefused(status, error, message))

    def after_failure(self, attempt: int, rng: random.Random) -> Decision:
        """No answer at all: refused TCP connect, DNS, timeout, a connection reset during the handshake."""
        return self._retry(self.backoff(attempt, rng), attempt)




@dataclass(frozen=True)
class RefreshSchedule:
    """When to send ``refresh`` with a new token: before the token's ``exp``, never after.

    The refresh goes out when ``fraction`` of the token's lifetime is left,
    but never earlier than ``max_lead`` seconds before it expires (a one-hour
    token is refreshed 60 s before its end, a 4 s one after 3 s). A refresh
    that was refused, or that did not push the expiry later (``get_token``
    handed back the same token), is tried again ``retry_after`` seconds later
    (or half-way to the expiry, if that is sooner).
    """

    fraction: float = 0.25
    max_lead: float = 60.0
    retry_after: float = 5.0

    def refresh_at(self, expires_at: float, lifetime: float) -> float:
        lead = min(self.max_lead, max(0.0, lifetime) * self.fraction)
        return expires_at - lead

    def retry_at(self, now: float, expires_at: float) -> float:
        return now + max(0.05, min(self.retry_after, (expires_at - now) / 2))


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (the gateway verifies); None if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
    except (IndexError, ValueError, TypeError):
        return None
