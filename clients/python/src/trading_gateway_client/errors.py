"""Exceptions. :class:`TerminalError` and its subclasses stop a client for good."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClosedByGateway",
    "ConnectionLost",
    "GatewayClientError",
    "HandshakeRefused",
    "MaybePublished",
    "NotConnected",
    "PublishError",
    "ReportRefusedError",
    "RequestError",
    "TerminalError",
    "TokenUnavailable",
]


class GatewayClientError(Exception):
    """Base of every error this package raises."""


class TerminalError(GatewayClientError):
    """The client has stopped and will not reconnect: what went wrong needs a person (or new code)."""


class ClosedByGateway(TerminalError):
    """The gateway closed the connection with a code whose row says "do not reconnect"."""

    def __init__(self, code: int, reason: str, name: str, meaning: str) -> None:
        self.code, self.reason, self.name, self.meaning = code, reason, name, meaning
        super().__init__(f"the gateway closed the connection with {code} {name} ({reason or 'no reason'!r}); "
                         f"the close-code table says: do not reconnect. {meaning}")


class HandshakeRefused(TerminalError):
    """The gateway refused the WebSocket upgrade in a way retrying cannot fix (a bad token, a forbidden origin)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        self.status, self.error, self.message = status, error, message
        super().__init__(f"the gateway refused the connection: HTTP {status} {error or ''} "
                         f"({message or 'no message'}); not retrying")


class TokenUnavailable(TerminalError):
    """The token expired (or was refused as expired) and there is no ``get_token`` to get a new one."""


class RequestError(GatewayClientError):
    """The gateway answered a request with an ``error`` message (the connection stays open)."""

    def __init__(self, code: str, message: str, request_id: str | None = None, channel: str | None = None) -> None:
        self.code, self.message, self.request_id, self.channel = code, message, request_id, channel
        super().__init__(f"{code}: {message}")


class ReportRefusedError(RequestError):
    """A service's ``bot_command_report`` refused for good (``invalid_state``, ``not_found``...): not retried.

    ``current_state``: the command's state the gateway named (``invalid_state``); ``resent``: the report
    had gone out on a connection that ended before its answer, so the gateway may have taken that one
    (then ``current_state`` is the reported state, or later).
    """

    def __init__(self, code: str, message: str, request_id: str | None = None, *, command_id: str = "",
                 user_id: str = "", state: str = "", current_state: str | None = None,
                 resent: bool = False) -> None:
        super().__init__(code, message, request_id)
        self.command_id, self.user_id, self.state = command_id, user_id, state
        self.current_state, self.resent = current_state, resent


class ConnectionLost(GatewayClientError):
    """The connection ended before the answer to a request arrived.

    For a ``bot_command`` this means "unknown": it may have reached the
    services. Subscriptions are not failed this way: they are renewed on the
    next connection.
    """


class NotConnected(GatewayClientError):
    """A request that cannot wait for a connection (a ping, a bot command) was made while disconnected."""


class PublishError(GatewayClientError):
    """``POST /api/publish`` refused a publication: nothing was published."""

    def __init__(self, status: int | None, error: str, message: str, body: Any = None) -> None:
        self.status, self.error, self.message, self.body = status, error, message, body
        super().__init__(f"publish failed: {status if status is not None else 'no answer'} {error}: {message}")


class MaybePublished(PublishError):
    """Retries ran out on an answer that does not say "nothing published" (a timeout).

    The publication may have been stored, and is then delivered. Publishing it
    again with the same ``id`` is safe: the gateway answers the first one's
    offset instead of storing a second copy.
    """
