"""The gateway's close codes, as data: what each means and what a client does about it.

A copy of the gateway's one table (``protocol/close_codes.py`` in the
gateway's repository, rendered in docs/protocol.md), kept as plain data so
that this package stands alone. The gateway's test suite checks that the two
are equal (``tests/test_client_library.py``), so they cannot drift apart.

4501 (token revoked) says "do not reconnect with the same token": the
clients stop on it, unless they have ``get_token``, which is then asked
once for another token (:mod:`trading_gateway_client.policy`).

Codes the table does not name are read by range, the way the gateway
splits its own: 4000–4499 "reconnect (after a backoff)", 4500–4999 "do not
reconnect with the same credentials". 1006 is never sent by a server: a
WebSocket library reports it when a connection ended without a close frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

__all__ = ["ABNORMAL_CLOSURE", "CLOSE_CODES", "Action", "CloseInfo", "close_info"]

ABNORMAL_CLOSURE = 1006  # no close frame: the network, a proxy or the process went away


class Action(str, Enum):
    """What the table tells a client to do after a close."""

    RECONNECT = "reconnect"
    BACK_OFF = "back off"
    DO_NOT_RECONNECT = "do not reconnect"


@dataclass(frozen=True)
class CloseInfo:
    name: str
    reason: str  # the reason the gateway sends (it may send a more specific one)
    action: Action
    meaning: str


_R, _B, _N = Action.RECONNECT, Action.BACK_OFF, Action.DO_NOT_RECONNECT

CLOSE_CODES: Mapping[int, CloseInfo] = MappingProxyType({
    1000: CloseInfo("NORMAL", "normal closure", _N,
                    "The server ends the session on purpose (or echoes the client's own close)."),
    1001: CloseInfo("GOING_AWAY", "server shutting down", _R,
                    "The gateway is stopping or restarting; reconnect after a random 0–5 s delay."),
    1002: CloseInfo("PROTOCOL_ERROR", "protocol error", _N,
                    "The client broke RFC 6455: unmasked frame, reserved bits, bad opcode, "
                    "fragmented or oversized control frame."),
    1003: CloseInfo("UNSUPPORTED_DATA", "binary frames are not accepted", _N,
                    "The protocol is JSON in text frames; the client sent a binary frame."),
    1007: CloseInfo("INVALID_PAYLOAD", "invalid utf-8", _N,
                    "A text frame (or close reason) was not valid UTF-8."),
    1008: CloseInfo("POLICY_VIOLATION", "policy violation", _B,
                    "The client broke a usage limit: a ping flood (more than WS_PING_RATE pings a second), or a "
                    "message left unfinished past WS_MESSAGE_DEADLINE. The reason says which. Fix the client "
                    "before reconnecting."),
    1009: CloseInfo("MESSAGE_TOO_BIG", "message too big", _N,
                    "A message exceeded the inbound size limit (decided from the frame header). "
                    "Do not resend the same message."),
    1011: CloseInfo("INTERNAL_ERROR", "internal error", _B,
                    "The gateway failed while serving this connection; reconnect with backoff."),
    4000: CloseInfo("TOKEN_EXPIRED", "token expired", _R,
                    "The token expired and no fresh one was sent with a `refresh` message. "
                    "Get a new token, then reconnect."),
    4001: CloseInfo("SLOW_CONSUMER", "slow consumer", _B,
                    "The client did not read fast enough: its outbound queue overflowed or a write "
                    "stayed blocked past the write timeout. Reconnect with backoff and read faster."),
    4002: CloseInfo("HEARTBEAT_TIMEOUT", "heartbeat timeout", _R,
                    "Nothing was received from the client (no message, no pong) for the silence timeout."),
    4003: CloseInfo("RATE_LIMITED", "rate limited", _B,
                    "More than 20 `error` replies within 10 s: the client keeps sending what the "
                    "protocol refuses. Fix it, then reconnect after a backoff."),
    4004: CloseInfo("DISCONNECTED", "disconnected by an operator", _B,
                    "An operator closed this user's connections (POST /api/admin/disconnect). The token is still "
                    "good: reconnect after a backoff."),
    4501: CloseInfo("TOKEN_REVOKED", "token revoked", _N,
                    "The token, or every token of the user issued until then, was revoked (POST /api/admin/revoke). "
                    "Do not reconnect with the same token: it is refused at the handshake (401 token_revoked)."),
    4503: CloseInfo("CONNECTION_LIMIT", "too many connections", _B,
                    "Temporary: the user already has the maximum number of open connections. Close another "
                    "of them, or retry after a long backoff (30 s or more), never at once."),
})


def close_info(code: int) -> CloseInfo:
    """The table's row for ``code``; codes it does not name are read by range."""
    known = CLOSE_CODES.get(code)
    if known is not None:
        return known
    if code == ABNORMAL_CLOSURE:
        return CloseInfo("ABNORMAL_CLOSURE", "", _B,
                         "The connection ended without a close frame (network, proxy, or the gateway died); "
                         "reconnect with exponential backoff and jitter.")
    if 4000 <= code <= 4499:
        return CloseInfo(f"CODE_{code}", "", _B, "A gateway code in 4000–4499: reconnect after a backoff.")
    if 4500 <= code <= 4999:
        return CloseInfo(f"CODE_{code}", "", _N,
                         "A gateway code in 4500–4999: do not reconnect with the same credentials.")
    return CloseInfo(f"CODE_{code}", "", _B, "A close code the gateway's table does not name; reconnect with "
                     "backoff.")
