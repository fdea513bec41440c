"""Stable codes of ``error`` messages, and the one exception the parser raises.

An ``error`` message never closes the connection by itself; the close-code
table (``protocol/close_codes.py``) says when a connection is closed.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ERROR_MEANINGS", "ErrorCode", "ProtocolError"]


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_CHANNEL = "unknown_channel"
    INVALID_PARAMS = "invalid_params"
    FORBIDDEN = "forbidden"
    TOO_MANY_CHANNELS = "too_many_channels"
    INVALID_TOKEN = "invalid_token"
    TOKEN_SUBJECT_MISMATCH = "token_subject_mismatch"
    NO_SERVICE = "no_service"
    UPSTREAM_REJECTED = "upstream_rejected"
    RATE_LIMITED = "rate_limited"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID_STATE = "invalid_state"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    TOO_MANY_COMMANDS = "too_many_commands"
    INTERNAL = "internal_error"


ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_JSON: "The text frame is not a JSON object.",
    ErrorCode.INVALID_MESSAGE: "A field is missing or has the wrong type.",
    ErrorCode.UNKNOWN_TYPE: "`type` is not one the gateway accepts.",
    ErrorCode.UNKNOWN_CHANNEL: "`channel` is not one of the gateway's channels.",
    ErrorCode.INVALID_PARAMS: "The channel's parameters (`data`) are invalid, e.g. a malformed symbol.",
    ErrorCode.FORBIDDEN: "The request tries to reach another user's data or bot.",
    ErrorCode.TOO_MANY_CHANNELS: "The connection already holds the maximum number of subscriptions.",
    ErrorCode.INVALID_TOKEN: "A `refresh` token is malformed, forged or expired.",
    ErrorCode.TOKEN_SUBJECT_MISMATCH: "A `refresh` token belongs to another user (`sub`).",
    ErrorCode.NO_SERVICE: "No platform service that owns the bot is connected (or the broker cannot reach "
                          "them now); nothing was sent unless the message says it may have been.",
    ErrorCode.UPSTREAM_REJECTED: "The exchange rejected the subscription (for example an unknown symbol).",
    ErrorCode.RATE_LIMITED: "More messages than the connection's budget (`WS_COMMAND_RATE` a second): this one "
                            "was not handled. Slow down; errors past the error budget close the connection "
                            "with 4003.",
    ErrorCode.NOT_FOUND: "No command with this `commandId` for this user (never sent, or finished more than an "
                         "hour ago).",
    ErrorCode.CONFLICT: "This `commandId` was already used for another command (another bot, command or "
                        "params); nothing was sent.",
    ErrorCode.INVALID_STATE: "A service's report is not a step forward from the command's state (already "
                             "finished, timed out, or accepted by another replica); the message names the state.",
    ErrorCode.AUDIT_UNAVAILABLE: "The audit trail cannot record the command (`AUDIT_OVERFLOW=refuse` and the "
                                 "database is down past `AUDIT_BUFFER`); nothing was sent.",
    ErrorCode.TOO_MANY_COMMANDS: "The user already has `BOT_COMMAND_MAX_OPEN` commands sent through this gateway "
                                 "node that have not finished (nor passed their deadline); nothing was sent: wait "
                                 "for a result.",
    ErrorCode.INTERNAL: "The gateway failed to handle the request; retry later.",
}


class ProtocolError(ValueError):
    """A client message the gateway refuses; ``code`` goes into the ``error`` reply."""

    def __init__(self, code: ErrorCode, message: str, *, request_id: str | None = None,
                 channel: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.channel = channel
