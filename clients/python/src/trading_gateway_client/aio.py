"""The asyncio shell: :class:`AsyncClient`, on ``websockets`` (its ``websockets.asyncio.client`` API).

It only moves bytes and time: every decision (what to subscribe after a
reconnect, which message is a duplicate, how long to wait, when to refresh
the token) is the core's (:mod:`trading_gateway_client.core`).

Events are read with ``async for event in client`` (or
:meth:`AsyncClient.next_event`); the iteration ends when the client is
closed, and raises the :class:`~trading_gateway_client.errors.TerminalError`
that stopped it otherwise. Events wait in an unbounded queue while the
caller is busy: the gateway never sees a slow reader (no 4001), and nothing
is lost across reconnects (a client that only uses callbacks passes
``queue_events=False``).

Bot commands: :meth:`AsyncClient.command` returns a :class:`CommandHandle`
(``await handle.sent()``, ``await handle.result()``, ``async for state in
handle``), :meth:`AsyncClient.on_command_result` sees every state of every
command of the user once. Services: :meth:`AsyncClient.on_command` and
:meth:`AsyncClient.report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol
from websockets.version import version as websockets_version

from trading_gateway_client.commands import CommandHandleBase, PendingCommand
from trading_gateway_client.core import ClientCore
from trading_gateway_client.errors import (
    ConnectionLost,
    ReportRefusedError,
    RequestError,
    TerminalError,
    TokenUnavailable,
)
from trading_gateway_client.market import BotCommandRequest, OrderBook
from trading_gateway_client.messages import (
    BotCommandAck,
    BotCommandRefused,
    BotCommandReportAck,
    BotCommandResult,
    Connection,
    Data,
    ErrorMessage,
    Event,
    Pong,
    Position,
    Refreshed,
    ReportRefused,
    Subscribed,
    Unsubscribed,
)
from trading_gateway_client.policy import Decision, ReconnectPolicy, RefreshSchedule

__all__ = ["AsyncClient", "CommandHandle"]

log = logging.getLogger("trading_gateway_client")
_END = object()
TokenSource = Callable[[], "str | Awaitable[str]"]
CommandCallback = Callable[[BotCommandRequest], "Awaitable[None] | None"]
ResultCallback = Callable[[BotCommandResult], "Awaitable[None] | None"]


def _quiet(future: asyncio.Future[Any]) -> None:
    """A future nobody awaits may end with an exception: not an "exception was never retrieved" warning."""
    future.add_done_callback(lambda f: f.cancelled() or f.exception())


def refused_error(event: BotCommandRefused | ReportRefused) -> RequestError:
    """The exception for a refusal event."""
    if isinstance(event, ReportRefused):
        return ReportRefusedError(event.code, event.message, event.id, command_id=event.command_id,
                                  user_id=event.user_id, state=event.state, current_state=event.current_state,
                                  resent=event.resent)
    return RequestError(event.code, event.message, event.id)


class CommandHandle(CommandHandleBase):
    """One bot command (asyncio): its ack, each of its states once, its final result.

    ``await handle.sent()`` is the gateway's ack (:class:`BotCommandAck`; across reconnects: an ack lost
    with its connection is asked for again with the same ``commandId``). ``await handle.result()`` is
    the final :class:`BotCommandResult` (``succeeded``, ``failed`` or ``timed_out``: check ``.state`` or
    ``.ok``). ``async for update in handle`` yields each state as it comes (``accepted``, then the final
    one) and ends after the final one. A refusal (``no_service``, ``forbidden``, ``conflict``, or
    ``not_found`` after a reconnect: the gateway lost the command) raises
    :class:`~trading_gateway_client.errors.RequestError` from all three.
    """

    def __init__(self, pending: PendingCommand, forget: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        self._ack: asyncio.Future[BotCommandAck] = loop.create_future()
        self._done: asyncio.Future[BotCommandResult] = loop.create_future()
        _quiet(self._ack)
        _quiet(self._done)
        super().__init__(pending, self._ack, self._done)
        self._changed = asyncio.Event()
        self._forget = forget

    async def sent(self, timeout: float | None = None) -> BotCommandAck:
        return await asyncio.wait_for(asyncio.shield(self._ack), timeout)

    async def result(self, timeout: float | None = None) -> BotCommandResult:
        """The final state (``asyncio.TimeoutError`` after ``timeout``; the command is still tracked)."""
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    def __aiter__(self) -> AsyncIterator[BotCommandResult]:
        return self._updates()

    async def _updates(self) -> AsyncIterator[BotCommandResult]:
        seen = 0
        while True:
            while seen < len(self.updates):
                seen += 1
                yield self.updates[seen - 1]
            if self._done.done():
                if self._done.exception() is not None:
                    raise cast(BaseException, self._done.exception())
                return
            self._changed.clear()
            await self._changed.wait()

    def forget(self) -> None:
        """Stop tracking the command (no resend, no status query after reconnects)."""
        self._forget(self.command_id)

    def _notify(self) -> None:
        self._changed.set()


def market_params(symbol: str, streams: Iterable[str] = ("ticker",), category: str | None = None,
                  exchange: str | None = None) -> dict[str, Any]:
    """The ``data`` of a market-data subscribe."""
    params: dict[str, Any] = {"symbol": symbol.upper(), "streams": list(streams)}
    if category is not None:
        params["category"] = category
    if exchange is not None:
        params["exchange"] = exchange
    return params


def refusal_details(body: bytes | bytearray | str | None) -> tuple[str, str]:
    """(error, message) of a refused upgrade's JSON body."""
    try:
        obj = json.loads(body or b"{}")
    except ValueError:
        return "", (bytes(body).decode("utf-8", "replace") if isinstance(body, bytes | bytearray)
                    else str(body or ""))[:200]
    if not isinstance(obj, dict):
        return "", ""
    return str(obj.get("error", "")), str(obj.get("message", ""))


def retry_after_seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AsyncClient:
    """A bot's or a service's connection to the gateway, kept open across reconnects.

    ``url``: ``ws://host:3001/ws`` (or several node URLs, tried in turn).
    ``token`` or ``get_token`` (sync or async, returns a JWT): ``get_token``
    is called before a connection needs a new token and to ``refresh`` the
    token before it expires; with only ``token`` the client stops with
    :class:`~trading_gateway_client.errors.TokenUnavailable` when it expires.
    ``positions``: where a previous run left brokered channels (persisted
    ``Data.position`` values), recovered with ``since`` on the first
    subscribe. ``trace(direction, text)`` sees every frame ("send"/"recv").
    ``queue_events=False``: events go to the callbacks only (``on_command``,
    ``on_command_result``), not to the iteration's queue.
    """

    def __init__(self, url: str | Sequence[str], *, token: str | None = None, get_token: TokenSource | None = None,
                 positions: Mapping[str, Position | tuple[int, str]] | None = None,
                 policy: ReconnectPolicy | None = None, refresh: RefreshSchedule | None = None,
                 auto_refresh: bool = True, open_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 ping_timeout: float | None = 20.0, close_timeout: float | None = 2.0,
                 trace: Callable[[str, str], None] | None = None, rng: Any = None,
                 connect_kwargs: Mapping[str, Any] | None = None, queue_events: bool = True) -> None:
        if token is None and get_token is None:
            raise ValueError("give a token or a get_token callback")
        self._core = ClientCore(url, positions=positions, policy=policy, refresh=refresh, auto_refresh=auto_refresh,
                                can_renew_token=get_token is not None, rng=rng)
        if token is not None:
            self._core.set_token(token, time.time())
        self._get_token = get_token
        self._queue_events = queue_events
        self._handles: dict[str, CommandHandle] = {}
        self._command_callbacks: list[CommandCallback] = []
        self._result_callbacks: list[ResultCallback] = []
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        self._open_timeout = open_timeout
        self._ping = (ping_interval, ping_timeout)
        self._close_timeout = close_timeout
        self._trace = trace
        self._connect_kwargs = dict(connect_kwargs or {})
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._last_subscribed: dict[str, Subscribed] = {}
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._timers_changed = asyncio.Event()
        self._closed_requested = asyncio.Event()
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._error: BaseException | None = None
        self._ended = False

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> AsyncClient:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trading-gateway-client")
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (1000) and stop; pending iteration ends."""
        self._core.close()
        self._closed_requested.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closing")
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def join(self) -> None:
        """Wait until the client stops; raise the error that stopped it (None after :meth:`close`)."""
        await self._stopped.wait()
        if self._error is not None:
            raise self._error

    async def wait_connected(self, timeout: float | None = None) -> Connection:
        """Wait for an open connection (its ``connection`` message); raises if the client stopped."""
        waiters = [asyncio.ensure_future(self._connected.wait()), asyncio.ensure_future(self._stopped.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if self._connected.is_set() and self._core.session is not None:
            return self._core.session
        if self._stopped.is_set():
            raise self._error or ConnectionLost("the client is closed")
        raise asyncio.TimeoutError("not connected in time")

    # -- events -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncClient:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later read ends too
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return cast(Event, item)

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event (``asyncio.TimeoutError`` after ``timeout``)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            raise ConnectionLost("the client is closed") from None

    # -- requests ---------------------------------------------------------------------------

    async def subscribe(self, channel: str, params: Mapping[str, Any] | None = None, *,
                        since: Position | None = None, wait: bool = True,
                        timeout: float | None = None) -> Subscribed | None:
        """Subscribe (now or on the next connection; renewed on every reconnect).

        With ``wait`` it returns the gateway's first confirmation and raises
        :class:`~trading_gateway_client.errors.RequestError` if it refuses.
        """
        intent = self._core.subscribe(channel, params, since=since)
        if intent.active and intent.id in self._last_subscribed:
            return self._last_subscribed[intent.id]
        future = self._waiter(intent.id)
        await self._flush()
        if not wait:
            return None
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def subscribe_market(self, symbol: str, streams: Iterable[str] = ("ticker",), *,
                               category: str | None = None, exchange: str | None = None, wait: bool = True,
                               timeout: float | None = None) -> Subscribed | None:
        return await self.subscribe("market-data", market_params(symbol, streams, category, exchange), wait=wait,
                                    timeout=timeout)

    async def unsubscribe(self, channel: str, params: Mapping[str, Any] | None = None, *,
                          timeout: float | None = 10.0) -> Unsubscribed | None:
        rid = self._core.unsubscribe(channel, params)
        if rid is None:
            return None
        future = self._waiter(rid)
        await self._flush()
        return await asyncio.wait_for(future, timeout)

    async def unsubscribe_market(self, symbol: str, streams: Iterable[str] = ("ticker",), *,
                                 category: str | None = None, exchange: str | None = None) -> Unsubscribed | None:
        return await self.unsubscribe("market-data", market_params(symbol, streams, category, exchange))

    async def ping(self, data: Any = None, *, timeout: float | None = 10.0) -> Pong:
        rid = self._core.ping(data)
        future = self._waiter(rid)
        await self._flush()
        return await asyncio.wait_for(future, timeout)

    async def bot_command(self, bot_id: str, command: str, params: Mapping[str, Any] | None = None, *,
                          command_id: str | None = None, timeout_ms: int | None = None,
                          timeout: float | None = 10.0) -> BotCommandAck:
        """Send a command now (NotConnected while disconnected) and wait for its ack.

        The command is tracked like :meth:`command`'s (resent with its ``commandId`` if a reconnect loses
        the ack, so this waits across reconnects; its states arrive as :class:`BotCommandResult` events).
        Raises RequestError (``no_service``, ``forbidden``...).
        """
        rid = self._core.bot_command(bot_id, command, params, command_id=command_id, timeout_ms=timeout_ms)
        future = self._waiter(rid)
        await self._flush()
        return await asyncio.wait_for(future, timeout)

    async def command(self, bot_id: str, command: str, params: Mapping[str, Any] | None = None, *,
                      command_id: str | None = None, timeout_ms: int | None = None) -> CommandHandle:
        """Send a bot command and track it until it finishes; returns at once with its handle.

        Sent now, or on the next connection while disconnected. Without ``command_id`` one is chosen, so
        every resend (after a reconnect that lost the ack) is the same command: the gateway does not
        hand it to the service twice. ``timeout_ms`` (1,000-600,000): the command's deadline
        (``timed_out`` past it), else the gateway's ``BOT_COMMAND_TIMEOUT``. After each reconnect the
        client asks the state of every unfinished command; each state is delivered once.
        """
        pending = self._core.send_command(bot_id, command, params, command_id=command_id, timeout_ms=timeout_ms)
        handle = self._handles.get(pending.command_id)
        if handle is None:
            handle = self._handles[pending.command_id] = CommandHandle(pending, self._forget)
        await self._flush()
        return handle

    def on_command_result(self, callback: ResultCallback) -> ResultCallback:
        """Call ``callback(result)`` (sync or async) for each new state of each command of this user, once.

        Commands sent by this client and by the user's other connections alike. Usable as a decorator.
        """
        self._result_callbacks.append(callback)
        return callback

    def on_command(self, callback: CommandCallback) -> CommandCallback:
        """Services: call ``callback(command)`` (sync or async) for each command for the bots this service owns.

        Subscribes to ``bot-commands`` (kept across reconnects, recovered with ``since``: each command
        once). Report with :meth:`report`. Usable as a decorator.
        """
        self._command_callbacks.append(callback)
        self._core.subscribe("bot-commands")
        self._soon(self._flush())
        return callback

    async def report(self, command: BotCommandRequest, state: str, result: Any = None, *, wait: bool = True,
                     timeout: float | None = None) -> BotCommandReportAck | None:
        """Services: report a command's progress: ``accepted``, then ``succeeded`` or ``failed`` with ``result``.

        The report is kept and sent again after reconnects until the gateway acknowledges it; reports of
        one command go in order. With ``wait`` it returns the :class:`BotCommandReportAck` and raises
        :class:`~trading_gateway_client.errors.ReportRefusedError` when the gateway refuses it for good
        (``invalid_state``: not a step forward, e.g. timed out or taken by another replica; ``not_found``),
        which is never retried. A ``timeout`` stops the waiting, not the report.
        """
        pending = self._core.report(command.command_id, command.user_id, state, result)
        future = self._waiter(pending.request_id)
        await self._flush()
        if not wait:
            return None
        return cast(BotCommandReportAck, await asyncio.wait_for(asyncio.shield(future), timeout))

    # -- state ------------------------------------------------------------------------------

    def book(self, symbol: str, category: str = "spot", stream: str | None = None) -> OrderBook | None:
        return self._core.book(symbol, category, stream)

    @property
    def positions(self) -> dict[str, Position | None]:
        """The last delivered position per brokered channel (what a resubscribe sends as ``since``)."""
        return dict(self._core.positions)

    @property
    def session(self) -> Connection | None:
        return self._core.session

    @property
    def stats(self) -> dict[str, int]:
        """Counters: connections, duplicates dropped, resyncs, refreshes, commands resent, status queries..."""
        return {**self._core.stats, **self._core.tracker.stats}

    @property
    def core(self) -> ClientCore:
        return self._core

    # -- internals --------------------------------------------------------------------------

    def _forget(self, command_id: str) -> None:
        self._core.forget_command(command_id)
        self._handles.pop(command_id, None)

    def _soon(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` on the running loop (none: it is closed; what it would send goes on connection)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            cast(Any, coro).close()
            return
        task = loop.create_task(cast(Any, coro))
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a callback failed", exc_info=task.exception())

    def _call(self, callback: Callable[[Any], Any], event: Any) -> None:
        try:
            outcome = callback(event)
        except Exception:
            log.exception("a callback failed on %s", type(event).__name__)
            return
        if inspect.isawaitable(outcome):
            self._soon(outcome)

    def _waiter(self, rid: str) -> asyncio.Future[Any]:
        future = self._waiters.get(rid)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            _quiet(future)
            if self._stopped.is_set():
                future.set_exception(self._error or ConnectionLost("the client is closed"))
            else:
                self._waiters[rid] = future
        return future

    def _resolve(self, rid: str | None, value: Any = None, error: BaseException | None = None) -> None:
        future = self._waiters.pop(rid, None) if rid is not None else None
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def _deliver(self, event: Event) -> None:
        rid = getattr(event, "id", None)
        if isinstance(event, Subscribed):
            if event.id is not None:
                self._last_subscribed[event.id] = event
            self._resolve(rid, event)
        elif isinstance(event, Unsubscribed | Pong | Refreshed | BotCommandReportAck):
            self._resolve(rid, event)
        elif isinstance(event, BotCommandAck):
            self._resolve(rid, event)
            handle = self._handles.get(event.command_id)
            if handle is not None:
                handle._acked(event)
        elif isinstance(event, BotCommandResult):
            handle = self._handles.get(event.command_id)
            if handle is not None:
                handle._update(event)
                if event.finished:
                    del self._handles[event.command_id]
            for result_callback in list(self._result_callbacks):
                self._call(result_callback, event)
        elif isinstance(event, BotCommandRefused | ReportRefused):
            error = refused_error(event)
            self._resolve(rid, error=error)
            refused = self._handles.pop(event.command_id, None) if isinstance(event, BotCommandRefused) else None
            if refused is not None:
                refused._fail(error)
        elif isinstance(event, ErrorMessage):
            if rid is not None and not self._core.retrying(rid):
                self._last_subscribed.pop(rid, None)
                self._resolve(rid, error=RequestError(event.code, event.message, rid, event.channel))
        elif isinstance(event, Connection):
            self._connected.set()
        elif isinstance(event, Data) and isinstance(event.payload, BotCommandRequest):
            for command_callback in list(self._command_callbacks):
                self._call(command_callback, event.payload)
        if self._queue_events:
            self._queue.put_nowait(event)

    async def _token(self) -> str:
        getter = self._get_token
        if getter is None:
            raise TokenUnavailable("the token is no longer usable and the client has no get_token")
        result: Any = await getter() if inspect.iscoroutinefunction(getter) else await asyncio.to_thread(getter)
        if inspect.isawaitable(result):
            result = await result
        return str(result)

    async def _flush(self) -> None:
        async with self._send_lock:
            frames = self._core.take_outgoing()
            ws = self._ws
            for frame in frames:
                if ws is None:
                    return  # subscriptions go again on the next connection; other requests fail with it
                if self._trace is not None:
                    self._trace("send", frame)
                try:
                    await ws.send(frame)
                except ConnectionClosed:
                    return

    async def _run(self) -> None:
        core = self._core
        try:
            while not core.closing:
                if core.token_needed(time.time()):
                    try:
                        core.set_token(await self._token(), time.time())
                    except TerminalError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - an auth service that failed is retried like a node
                        log.warning("get_token failed: %r", exc)
                        if not await self._after(*core.failed(f"get_token failed: {exc!r}", time.time())):
                            break
                        continue
                request = core.connect_request()
                try:
                    ws = await connect(
                        request.url, subprotocols=[Subprotocol(p) for p in request.subprotocols],
                        open_timeout=self._open_timeout, ping_interval=self._ping[0], ping_timeout=self._ping[1],
                        close_timeout=self._close_timeout, compression=None, max_size=2 ** 22,
                        user_agent_header=f"trading-gateway-client websockets/{websockets_version}",
                        **self._connect_kwargs)
                except InvalidStatus as exc:
                    response = exc.response
                    error, message = refusal_details(response.body)
                    decided = core.refused(response.status_code, error, message, time.time(),
                                           retry_after_seconds(response.headers.get("Retry-After")))
                except (OSError, asyncio.TimeoutError, TimeoutError, InvalidHandshake) as exc:
                    decided = core.failed(f"{type(exc).__name__}: {exc}", time.time())
                else:
                    decided = await self._session(ws)
                if not await self._after(*decided):
                    break
        except TerminalError as exc:
            self._error = exc
        except asyncio.CancelledError:
            self._error = self._error or ConnectionLost("the client task was cancelled")
            raise
        except Exception as exc:
            log.exception("the client stopped on an unexpected error")
            self._error = exc
        finally:
            self._finish()

    async def _session(self, ws: ClientConnection) -> tuple[Decision, Any]:
        core = self._core
        core.opened(time.time())
        self._ws = ws
        timers = asyncio.get_running_loop().create_task(self._timers(ws))
        try:
            async for message in ws:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                if self._trace is not None:
                    self._trace("recv", text)
                events = core.receive(text, time.time())
                await self._flush()
                for event in events:
                    self._deliver(event)
                self._timers_changed.set()
        except ConnectionClosed:
            pass
        finally:
            # The timers end when they see this session over, even if a wait_for that finished at the same
            # moment swallowed the cancel (Python < 3.12): awaiting them could otherwise hang for good.
            self._ws = None
            self._timers_changed.set()
            timers.cancel()
            with contextlib.suppress(BaseException):
                await timers
            self._connected.clear()
        received = ws.protocol.close_rcvd
        code, reason = (received.code, received.reason) if received is not None else (1006, "")
        return core.closed(code, reason, time.time())

    async def _timers(self, ws: ClientConnection) -> None:
        """Token refresh (and requests refused for now: subscribes, commands, reports) on the open connection."""
        core = self._core
        while self._ws is ws:
            self._timers_changed.clear()
            deadline = core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._timers_changed.wait(), timeout)
            if self._ws is not ws:
                return
            if core.tick(time.time()):
                try:
                    token = await self._token()
                except Exception as exc:  # noqa: BLE001 - retried before the token expires
                    log.warning("get_token failed for a refresh: %r", exc)
                    core.refresh_failed(time.time())
                    continue
                if core.is_open:
                    core.refresh(token, time.time())
            await self._flush()

    async def _after(self, decision: Decision, event: Any) -> bool:
        """Deliver the disconnect, fail what cannot survive it; wait before the next attempt. False: stop."""
        self._connected.clear()
        if self._queue_events:
            self._queue.put_nowait(event)
        lost = ConnectionLost(f"the connection ended: {event.reason or event.code}")
        for rid in [r for r in self._waiters if not self._core.survives(r)]:
            self._resolve(rid, error=lost)
        if decision.error is not None:
            raise decision.error
        if not decision.reconnect:
            return False
        if decision.delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed_requested.wait(), decision.delay)
        return not self._core.closing

    def _finish(self) -> None:
        self._ended = True
        self._connected.clear()
        error = self._error or ConnectionLost("the client is closed")
        for rid in list(self._waiters):
            self._resolve(rid, error=error)
        for handle in list(self._handles.values()):
            handle._fail(error)
        self._handles.clear()
        self._stopped.set()
        self._queue.put_nowait(_END)
