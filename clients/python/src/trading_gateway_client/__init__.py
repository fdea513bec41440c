"""A client for the trading gateway's WebSocket protocol (``trading.v1``), for bots and platform services.

* :class:`AsyncClient` (asyncio, on ``websockets``) and :class:`BlockingClient`
  (a thread and callbacks, on websocket-client): one connection kept open
  across reconnects, subscriptions renewed, private channels recovered
  exactly once with ``since``, the token refreshed before it expires.
* :class:`Publisher` / :class:`AsyncPublisher`: ``POST /api/publish`` (and
  ``/api/publish/batch``) with retries and idempotency keys.
* Bot commands, both sides: a bot's :meth:`AsyncClient.command` (a
  :class:`CommandHandle`: its ack, each state once, its result, across
  reconnects), a service's :meth:`AsyncClient.on_command` and
  :meth:`AsyncClient.report` (kept until acknowledged); the same on
  :class:`BlockingClient`.
* :class:`ClientCore`: the state machine both clients share, without I/O.
"""

from trading_gateway_client.aio import AsyncClient, CommandHandle
from trading_gateway_client.blocking import BlockingClient, BlockingCommandHandle
from trading_gateway_client.close_codes import CLOSE_CODES, Action, CloseInfo, close_info
from trading_gateway_client.core import ClientCore
from trading_gateway_client.errors import (
    ClosedByGateway,
    ConnectionLost,
    GatewayClientError,
    HandshakeRefused,
    MaybePublished,
    NotConnected,
    PublishError,
    ReportRefusedError,
    RequestError,
    TerminalError,
    TokenUnavailable,
)
from trading_gateway_client.market import (
    BookView,
    BotCommandRequest,
    Kline,
    Level,
    OrderBook,
    SystemHealth,
    Ticker,
    TimeSync,
    Trade,
    Trades,
)
from trading_gateway_client.messages import (
    TERMINAL_STATES,
    BotCommandAck,
    BotCommandRefused,
    BotCommandReportAck,
    BotCommandResult,
    Connection,
    Data,
    Disconnected,
    ErrorMessage,
    Event,
    MarketParams,
    Pong,
    Position,
    Refreshed,
    ReportRefused,
    Resync,
    SeqGap,
    Subscribed,
    Unknown,
    Unsubscribed,
)
from trading_gateway_client.policy import ReconnectPolicy, RefreshSchedule
from trading_gateway_client.publisher import AsyncPublisher, Publication, Published, Publisher

__version__ = "0.1.0"

__all__ = [
    "CLOSE_CODES",
    "TERMINAL_STATES",
    "Action",
    "AsyncClient",
    "AsyncPublisher",
    "BlockingClient",
    "BlockingCommandHandle",
    "BookView",
    "BotCommandAck",
    "BotCommandRefused",
    "BotCommandReportAck",
    "BotCommandRequest",
    "BotCommandResult",
    "ClientCore",
    "CloseInfo",
    "ClosedByGateway",
    "CommandHandle",
    "Connection",
    "ConnectionLost",
    "Data",
    "Disconnected",
    "ErrorMessage",
    "Event",
    "GatewayClientError",
    "HandshakeRefused",
    "Kline",
    "Level",
    "MarketParams",
    "MaybePublished",
    "NotConnected",
    "OrderBook",
    "Pong",
    "Position",
    "Publication",
    "PublishError",
    "Published",
    "Publisher",
    "ReconnectPolicy",
    "RefreshSchedule",
    "Refreshed",
    "ReportRefused",
    "ReportRefusedError",
    "RequestError",
    "Resync",
    "SeqGap",
    "Subscribed",
    "SystemHealth",
    "TerminalError",
    "Ticker",
    "TimeSync",
    "TokenUnavailable",
    "Trade",
    "Trades",
    "Unknown",
    "Unsubscribed",
    "__version__",
    "close_info",
]
