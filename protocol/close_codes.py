"""The one table of close codes: what each means and what the client should do.

RFC 6455 §7.4.1 codes plus ours in 4000–4999 (§7.4.2). Ours are split the
way Centrifugo splits them: 4000–4499 mean "reconnect (after a backoff)",
4500–4999 mean "do not reconnect with the same credentials or request",
except 4503, which is temporary: a slot frees when another connection of
the user ends, so the client waits (a long backoff) rather than gives up.
docs/protocol.md renders this table; ``tests/test_protocol_docs.py`` checks
the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = ["CLOSE_CODES", "ClientAction", "CloseCode", "CloseInfo"]


class ClientAction(StrEnum):
    RECONNECT = "reconnect"
    BACK_OFF = "back off"
    DO_NOT_RECONNECT = "do not reconnect"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TOKEN_EXPIRED = 4000
    SLOW_CONSUMER = 4001
    HEARTBEAT_TIMEOUT = 4002
    RATE_LIMITED = 4003
    DISCONNECTED = 4004
    TOKEN_REVOKED = 4501
    CONNECTION_LIMIT = 4503


@dataclass(frozen=True, slots=True)
class CloseInfo:
    reason: str
    action: ClientAction
    meaning: str


CLOSE_CODES: dict[CloseCode, CloseInfo] = {
    CloseCode.NORMAL: CloseInfo(
        "normal closure", ClientAction.DO_NOT_RECONNECT,
        "The server ends the session on purpose (or echoes the client's own close)."),
    CloseCode.GOING_AWAY: CloseInfo(
        "server shutting down", ClientAction.RECONNECT,
        "The gateway is stopping or restarting; reconnect after a random 0–5 s delay."),
    CloseCode.PROTOCOL_ERROR: CloseInfo(
        "protocol error", ClientAction.DO_NOT_RECONNECT,
        "The client broke RFC 6455: unmasked frame, reserved bits, bad opcode, "
        "fragmented or oversized control frame."),
    CloseCode.UNSUPPORTED_DATA: CloseInfo(
        "binary frames are not accepted", ClientAction.DO_NOT_RECONNECT,
        "The protocol is JSON in text frames; the client sent a binary frame."),
    CloseCode.INVALID_PAYLOAD: CloseInfo(
        "invalid utf-8", ClientAction.DO_NOT_RECONNECT,
        "A text frame (or close reason) was not valid UTF-8."),
    CloseCode.POLICY_VIOLATION: CloseInfo(
        "policy violation", ClientAction.BACK_OFF,
        "The client broke a usage limit: a ping flood (more than WS_PING_RATE pings a second), or a message "
        "left unfinished past WS_MESSAGE_DEADLINE. The reason says which. Fix the client before reconnecting."),
    CloseCode.MESSAGE_TOO_BIG: CloseInfo(
        "message too big", ClientAction.DO_NOT_RECONNECT,
        "A message exceeded the inbound size limit (decided from the frame header). "
        "Do not resend the same message."),
    CloseCode.INTERNAL_ERROR: CloseInfo(
        "internal error", ClientAction.BACK_OFF,
        "The gateway failed while serving this connection; reconnect with backoff."),
    CloseCode.TOKEN_EXPIRED: CloseInfo(
        "token expired", ClientAction.RECONNECT,
        "The token expired and no fresh one was sent with a `refresh` message. "
        "Get a new token, then reconnect."),
    CloseCode.SLOW_CONSUMER: CloseInfo(
        "slow consumer", ClientAction.BACK_OFF,
        "The client did not read fast enough: its outbound queue overflowed or a write "
        "stayed blocked past the write timeout. Reconnect with backoff and read faster."),
    CloseCode.HEARTBEAT_TIMEOUT: CloseInfo(
        "heartbeat timeout", ClientAction.RECONNECT,
        "Nothing was received from the client (no message, no pong) for the silence timeout."),
    CloseCode.RATE_LIMITED: CloseInfo(
        "rate limited", ClientAction.BACK_OFF,
        "More than 20 `error` replies within 10 s: the client keeps sending what the "
        "protocol refuses. Fix it, then reconnect after a backoff."),
    CloseCode.DISCONNECTED: CloseInfo(
        "disconnected by an operator", ClientAction.BACK_OFF,
        "An operator closed this user's connections (POST /api/admin/disconnect). The token is still "
        "good: reconnect after a backoff."),
    CloseCode.TOKEN_REVOKED: CloseInfo(
        "token revoked", ClientAction.DO_NOT_RECONNECT,
        "The token, or every token of the user issued until then, was revoked (POST /api/admin/revoke). "
        "Do not reconnect with the same token: it is refused at the handshake (401 token_revoked)."),
    CloseCode.CONNECTION_LIMIT: CloseInfo(
        "too many connections", ClientAction.BACK_OFF,
        "Temporary: the user already has the maximum number of open connections. Close another "
        "of them, or retry after a long backoff (30 s or more), never at once."),
}
