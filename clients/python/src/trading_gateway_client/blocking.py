"""The blocking shell: :class:`BlockingClient`, on websocket-client, one thread, callbacks.

The client's thread connects, reads, runs the token refresh and calls the
handlers, in the order the events happen. Handlers run on that thread: keep
them short (a handler that blocks for long delays reading; the gateway
closes a reader that falls 1 MiB behind with 4001, and the client then
reconnects and recovers). Requests (``subscribe``, ``bot_command``...) may
be made from any thread; from a handler they do not wait for the answer.

Bot commands: :meth:`BlockingClient.command` returns a
:class:`BlockingCommandHandle` (``handle.sent(timeout)``,
``handle.result(timeout)``); :meth:`BlockingClient.on_command_result` sees
every state of every command of the user once. Services:
:meth:`BlockingClient.on_command` and :meth:`BlockingClient.report`.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, cast

import websocket

from trading_gateway_client.aio import market_params, refusal_details, refused_error, retry_after_seconds
from trading_gateway_client.commands import CommandHandleBase, PendingCommand
from trading_gateway_client.core import ClientCore
from trading_gateway_client.errors import ConnectionLost, RequestError, TerminalError, TokenUnavailable
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
    Resync,
    Subscribed,
    Unsubscribed,
)
from trading_gateway_client.policy import Decision, ReconnectPolicy, RefreshSchedule

__all__ = ["BlockingClient", "BlockingCommandHandle"]

log = logging.getLogger("trading_gateway_client")
Handler = Callable[[Any], None]
READ_TICK = 1.0  # seconds: the longest the thread reads without looking at its timers


def _quiet(future: Future[Any]) -> None:
    future.add_done_callback(lambda f: f.cancelled() or f.exception())


class BlockingCommandHandle(CommandHandleBase):
    """One bot command (blocking): its ack, each of its states once, its final result.

    ``handle.sent(timeout)`` is the gateway's ack, ``handle.result(timeout)`` the final
    :class:`BotCommandResult` (``succeeded``, ``failed`` or ``timed_out``), both waiting across
    reconnects and raising ``TimeoutError`` after ``timeout`` (the command is still tracked), or
    :class:`~trading_gateway_client.errors.RequestError` when the gateway refused it (``no_service``,
    ``forbidden``, ``conflict``, ``not_found`` after a reconnect: the gateway lost it).
    ``handle.updates`` holds each state delivered so far. Not from a handler: the client's own thread
    cannot wait for what it has yet to read (``RuntimeError``).
    """

    def __init__(self, pending: PendingCommand, client: BlockingClient) -> None:
        self._ack: Future[BotCommandAck] = Future()
        self._done: Future[BotCommandResult] = Future()
        _quiet(self._ack)
        _quiet(self._done)
        super().__init__(pending, self._ack, self._done)
        self._client = client

    def sent(self, timeout: float | None = 10.0) -> BotCommandAck:
        self._client._not_from_handler("handle.sent()")
        return self._ack.result(timeout)

    def result(self, timeout: float | None = None) -> BotCommandResult:
        self._client._not_from_handler("handle.result()")
        return self._done.result(timeout)

    def forget(self) -> None:
        """Stop tracking the command (no resend, no status query after reconnects)."""
        self._client._forget(self.command_id)


class BlockingClient:
    """The same client as :class:`~trading_gateway_client.aio.AsyncClient`, for code without an event loop.

    Register handlers with :meth:`on` (every event of a type, optionally of
    one channel) or ``on_event`` (every event), then :meth:`start` the
    thread; :meth:`join` waits until the client stops and raises the
    :class:`~trading_gateway_client.errors.TerminalError` that stopped it.
    """

    def __init__(self, url: str | Sequence[str], *, token: str | None = None,
                 get_token: Callable[[], str] | None = None, on_event: Handler | None = None,
                 positions: Mapping[str, Position | tuple[int, str]] | None = None,
                 policy: ReconnectPolicy | None = None, refresh: RefreshSchedule | None = None,
                 auto_refresh: bool = True, open_timeout: float = 10.0,
                 trace: Callable[[str, str], None] | None = None, rng: Any = None,
                 connect_kwargs: Mapping[str, Any] | None = None) -> None:
        if token is None and get_token is None:
            raise ValueError("give a token or a get_token callback")
        self._core = ClientCore(url, positions=positions, policy=policy, refresh=refresh, auto_refresh=auto_refresh,
                                can_renew_token=get_token is not None, rng=rng)
        if token is not None:
            self._core.set_token(token, time.time())
        self._get_token = get_token
        self._handlers: list[tuple[tuple[type, ...] | None, str | None, Handler]] = []
        if on_event is not None:
            self._handlers.append((None, None, on_event))
        self._open_timeout = open_timeout
        self._trace = trace
        self._connect_kwargs = dict(connect_kwargs or {})
        self._lock = threading.RLock()  # the core
        self._send_lock = threading.Lock()  # frame order on the socket (taken before the core's lock)
        self._ws: websocket.WebSocket | None = None
        self._waiters: dict[str, Future[Any]] = {}
        self._handles: dict[str, BlockingCommandHandle] = {}
        self._last_subscribed: dict[str, Subscribed] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None

    # -- handlers -----------------------------------------------------------------------------

    def on(self, kind: type | tuple[type, ...] | None = None, handler: Handler | None = None, *,
           channel: str | None = None) -> Any:
        """Call ``handler(event)`` for events of ``kind`` (all if None), of ``channel`` if given.

        Usable as a decorator: ``@client.on(Data, channel="trades")``.
        """
        kinds = None if kind is None else (kind if isinstance(kind, tuple) else (kind,))

        def register(fn: Handler) -> Handler:
            self._handlers.append((kinds, channel, fn))
            return fn

        return register(handler) if handler is not None else register

    def on_data(self, channel: str, handler: Handler | None = None) -> Any:
        return self.on(Data, handler, channel=channel)

    def on_command_result(self, handler: Callable[[BotCommandResult], None]) -> Callable[[BotCommandResult], None]:
        """Call ``handler(result)`` for each new state of each command of this user, once (a decorator too)."""
        self.on(BotCommandResult, handler)
        return handler

    def on_command(self, handler: Callable[[BotCommandRequest], None]) -> Callable[[BotCommandRequest], None]:
        """Services: call ``handler(command)`` for each command for the bots this service owns (a decorator too).

        Subscribes to ``bot-commands`` (kept across reconnects, recovered with ``since``: each command once).
        Report with :meth:`report`; from the handler it does not wait (a refusal is then a
        :class:`ReportRefused` event).
        """
        def on_data(event: Data) -> None:
            if isinstance(event.payload, BotCommandRequest):
                handler(event.payload)

        self.on(Data, on_data, channel="bot-commands")
        with self._lock:
            self._core.subscribe("bot-commands")
        self._flush()
        return handler

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> BlockingClient:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trading-gateway-client", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> BlockingClient:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection (1000) and stop the thread."""
        with self._lock:
            self._core.close()
        self._wake.set()
        ws = self._ws
        if ws is not None:
            try:
                with self._send_lock:
                    ws.send_close(websocket.STATUS_NORMAL, b"client closing")
            except Exception:  # noqa: BLE001 - already gone
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive() and self._ws is not None:
                _drop(self._ws)  # the server did not answer the close: drop the socket
                thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the client stops; raise the error that stopped it (None after :meth:`close`)."""
        if not self._stopped.wait(timeout):
            raise TimeoutError("the client is still running")
        if self._error is not None:
            raise self._error

    def run_forever(self) -> None:
        self.start()
        self.join()

    def wait_connected(self, timeout: float | None = None) -> Connection:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self._stopped.is_set():
                raise self._error or ConnectionLost("the client is closed")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("not connected in time")
        session = self._core.session
        if session is None:
            return self.wait_connected(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return session

    # -- requests -----------------------------------------------------------------------------

    def subscribe(self, channel: str, params: Mapping[str, Any] | None = None, *, since: Position | None = None,
                  wait: bool = True, timeout: float | None = 10.0) -> Subscribed | None:
        with self._lock:
            intent = self._core.subscribe(channel, params, since=since)
            if intent.active and intent.id in self._last_subscribed:
                return self._last_subscribed[intent.id]
            future = self._waiter(intent.id)
        self._flush()
        return cast('Subscribed | None', self._wait(future, wait, timeout))

    def subscribe_market(self, symbol: str, streams: Iterable[str] = ("ticker",), *, category: str | None = None,
                         exchange: str | None = None, wait: bool = True,
                         timeout: float | None = 10.0) -> Subscribed | None:
        return self.subscribe("market-data", market_params(symbol, streams, category, exchange), wait=wait,
                              timeout=timeout)

    def unsubscribe(self, channel: str, params: Mapping[str, Any] | None = None, *, wait: bool = True,
                    timeout: float | None = 10.0) -> Unsubscribed | None:
        with self._lock:
            rid = self._core.unsubscribe(channel, params)
            if rid is None:
                return None
            future = self._waiter(rid)
        self._flush()
        return cast('Unsubscribed | None', self._wait(future, wait, timeout))

    def ping(self, data: Any = None, *, timeout: float | None = 10.0) -> Pong:
        with self._lock:
            future = self._waiter(self._core.ping(data))
        self._flush()
        return cast(Pong, self._wait(future, True, timeout))

    def bot_command(self, bot_id: str, command: str, params: Mapping[str, Any] | None = None, *,
                    command_id: str | None = None, timeout_ms: int | None = None, wait: bool = True,
                    timeout: float | None = 10.0) -> BotCommandAck | None:
        """Send a command now (NotConnected while disconnected) and wait for its ack (see :meth:`command`)."""
        with self._lock:
            future = self._waiter(self._core.bot_command(bot_id, command, params, command_id=command_id,
                                                         timeout_ms=timeout_ms))
        self._flush()
        return cast('BotCommandAck | None', self._wait(future, wait, timeout))

    def command(self, bot_id: str, command: str, params: Mapping[str, Any] | None = None, *,
                command_id: str | None = None, timeout_ms: int | None = None) -> BlockingCommandHandle:
        """Send a bot command and track it until it finishes; returns at once with its handle.

        The same rules as :meth:`AsyncClient.command <trading_gateway_client.aio.AsyncClient.command>`:
        sent now or on the next connection, resent with its ``commandId`` when a reconnect lost the ack,
        its state asked after every reconnect, each state delivered once.
        """
        with self._lock:
            pending = self._core.send_command(bot_id, command, params, command_id=command_id,
                                              timeout_ms=timeout_ms)
            handle = self._handles.get(pending.command_id)
            if handle is None:
                handle = self._handles[pending.command_id] = BlockingCommandHandle(pending, self)
        self._flush()
        return handle

    def report(self, command: BotCommandRequest, state: str, result: Any = None, *, wait: bool = True,
               timeout: float | None = 10.0) -> BotCommandReportAck | None:
        """Services: report ``accepted``, then ``succeeded`` or ``failed`` with ``result``.

        Kept and sent again after reconnects until acknowledged, in order per command. With ``wait``
        (not from a handler) it returns the ack, or raises
        :class:`~trading_gateway_client.errors.ReportRefusedError` (``invalid_state``, ``not_found``...:
        never retried); ``TimeoutError`` stops the waiting, not the report.
        """
        with self._lock:
            pending = self._core.report(command.command_id, command.user_id, state, result)
            future = self._waiter(pending.request_id)
        self._flush()
        return cast('BotCommandReportAck | None', self._wait(future, wait, timeout))

    def _forget(self, command_id: str) -> None:
        with self._lock:
            self._core.forget_command(command_id)
            self._handles.pop(command_id, None)

    def _not_from_handler(self, what: str) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"{what} cannot wait on the client's own thread (in a handler): it reads the answer")

    def _wait(self, future: Future[Any], wait: bool, timeout: float | None) -> Any:
        if not wait or threading.current_thread() is self._thread:
            return None  # a handler cannot wait for what its own thread has yet to read
        return future.result(timeout)

    # -- state --------------------------------------------------------------------------------

    def book(self, symbol: str, category: str = "spot", stream: str | None = None) -> OrderBook | None:
        with self._lock:
            return self._core.book(symbol, category, stream)

    @property
    def positions(self) -> dict[str, Position | None]:
        with self._lock:
            return dict(self._core.positions)

    @property
    def session(self) -> Connection | None:
        return self._core.session

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._core.stats, **self._core.tracker.stats}

    @property
    def core(self) -> ClientCore:
        return self._core

    # -- internals ----------------------------------------------------------------------------

    def _waiter(self, rid: str) -> Future[Any]:
        future = self._waiters.get(rid)
        if future is None or future.done():
            future = Future()
            _quiet(future)
            if self._stopped.is_set():
                future.set_exception(self._error or ConnectionLost("the client is closed"))
            else:
                self._waiters[rid] = future
        return future

    def _resolve(self, rid: str | None, value: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            future = self._waiters.pop(rid, None) if rid is not None else None
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                frames = self._core.take_outgoing()
            ws = self._ws
            for frame in frames:
                if ws is None:
                    return
                if self._trace is not None:
                    self._trace("send", frame)
                try:
                    ws.send(frame)
                except (OSError, websocket.WebSocketException):
                    return  # the reader sees the end

    def _token(self) -> str:
        if self._get_token is None:
            raise TokenUnavailable("the token is no longer usable and the client has no get_token")
        return str(self._get_token())

    def _emit(self, event: Event) -> None:
        rid = getattr(event, "id", None)
        if isinstance(event, Subscribed):
            if event.id is not None:
                self._last_subscribed[event.id] = event
            self._resolve(rid, event)
        elif isinstance(event, Unsubscribed | Pong | Refreshed | BotCommandReportAck):
            self._resolve(rid, event)
        elif isinstance(event, BotCommandAck):
            self._resolve(rid, event)
            with self._lock:
                handle = self._handles.get(event.command_id)
            if handle is not None:
                handle._acked(event)
        elif isinstance(event, BotCommandResult):
            with self._lock:
                handle = self._handles.get(event.command_id)
                if handle is not None and event.finished:
                    del self._handles[event.command_id]
            if handle is not None:
                handle._update(event)
        elif isinstance(event, BotCommandRefused | ReportRefused):
            error = refused_error(event)
            self._resolve(rid, error=error)
            with self._lock:
                refused = (self._handles.pop(event.command_id, None) if isinstance(event, BotCommandRefused)
                           else None)
            if refused is not None:
                refused._fail(error)
        elif isinstance(event, ErrorMessage):
            with self._lock:
                retrying = self._core.retrying(rid)
            if rid is not None and not retrying:
                self._last_subscribed.pop(rid, None)
                self._resolve(rid, error=RequestError(event.code, event.message, rid, event.channel))
        elif isinstance(event, Connection):
            self._connected.set()
        channel = getattr(event, "channel", None) if isinstance(event, Data | Resync | Subscribed) else None
        for kinds, wanted, handler in list(self._handlers):
            if kinds is not None and not isinstance(event, kinds):
                continue
            if wanted is not None and wanted != channel:
                continue
            try:
                handler(event)
            except Exception:
                log.exception("a handler failed on %s", type(event).__name__)

    def _run(self) -> None:
        core = self._core
        try:
            while not core.closing:
                with self._lock:
                    needed = core.token_needed(time.time())
                if needed:
                    try:
                        token = self._token()
                    except TerminalError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - an auth service that failed is retried like a node
                        log.warning("get_token failed: %r", exc)
                        with self._lock:
                            decided = core.failed(f"get_token failed: {exc!r}", time.time())
                        if not self._after(*decided):
                            break
                        continue
                    with self._lock:
                        core.set_token(token, time.time())
                with self._lock:
                    request = core.connect_request()
                try:
                    ws = websocket.create_connection(
                        request.url, timeout=self._open_timeout, subprotocols=list(request.subprotocols),
                        suppress_origin=True, enable_multithread=True, **self._connect_kwargs)
                except websocket.WebSocketBadStatusException as exc:
                    headers = exc.resp_headers or {}
                    error, message = refusal_details(exc.resp_body)
                    with self._lock:
                        decided = core.refused(exc.status_code, error, message, time.time(),
                                               retry_after_seconds(headers.get("retry-after")))
                except (OSError, websocket.WebSocketException) as exc:
                    with self._lock:
                        decided = core.failed(f"{type(exc).__name__}: {exc}", time.time())
                else:
                    decided = self._session(ws)
                if not self._after(*decided):
                    break
        except TerminalError as exc:
            self._error = exc
        except Exception as exc:
            log.exception("the client stopped on an unexpected error")
            self._error = exc
        finally:
            self._finish()

    def _session(self, ws: websocket.WebSocket) -> tuple[Decision, Any]:
        core = self._core
        with self._lock:
            core.opened(time.time())
        self._ws = ws
        code, reason = 1006, ""
        last_heard = time.monotonic()
        try:
            while True:
                with self._lock:
                    deadline = core.next_deadline()
                    session = core.session
                # Nothing at all from the gateway (it pings every heartbeatInterval) for two intervals: it is gone.
                silence = 2 * (session.heartbeat_interval / 1000 if session else 30.0) + 10.0
                now = time.time()
                wait = READ_TICK if deadline is None else min(READ_TICK, max(0.01, deadline - now))
                if core.closing:
                    wait = min(wait, 0.2)
                ws.settimeout(wait)
                try:
                    opcode, frame = ws.recv_data_frame(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    if time.monotonic() - last_heard > silence:
                        break
                    self._run_timers()
                    continue
                last_heard = time.monotonic()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    text = frame.data.decode("utf-8", "replace") if isinstance(frame.data, bytes) else frame.data
                    if self._trace is not None:
                        self._trace("recv", text)
                    with self._lock:
                        events = core.receive(text, time.time())
                    self._flush()
                    for event in events:
                        self._emit(event)
                    self._run_timers()
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    payload = frame.data or b""
                    if len(payload) >= 2:
                        code = struct.unpack("!H", payload[:2])[0]
                        reason = payload[2:].decode("utf-8", "replace")
                    else:
                        code = 1005 if not core.closing else 1000
                    break
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("connection ended: %r", exc)
        finally:
            self._ws = None
            self._connected.clear()
            _drop(ws)
        if code == 1005:  # a close frame without a code: nothing the table names
            code = 1006
        with self._lock:
            return core.closed(code, reason, time.time())

    def _run_timers(self) -> None:
        with self._lock:
            due = self._core.tick(time.time())
        if due:
            try:
                token = self._token()
            except Exception as exc:  # noqa: BLE001 - retried before the token expires
                log.warning("get_token failed for a refresh: %r", exc)
                with self._lock:
                    self._core.refresh_failed(time.time())
                return
            with self._lock:
                if self._core.is_open:
                    self._core.refresh(token, time.time())
        self._flush()

    def _after(self, decision: Decision, event: Any) -> bool:
        self._connected.clear()
        self._emit(event)
        lost = ConnectionLost(f"the connection ended: {event.reason or event.code}")
        with self._lock:
            stale = [r for r in self._waiters if not self._core.survives(r)]
        for rid in stale:
            self._resolve(rid, error=lost)
        if decision.error is not None:
            raise decision.error
        if not decision.reconnect:
            return False
        if decision.delay > 0:
            self._wake.wait(decision.delay)
        return not self._core.closing

    def _finish(self) -> None:
        self._connected.clear()
        error = self._error or ConnectionLost("the client is closed")
        with self._lock:
            rids = list(self._waiters)
            handles = list(self._handles.values())
            self._handles.clear()
        for rid in rids:
            self._resolve(rid, error=error)
        for handle in handles:
            handle._fail(error)
        self._stopped.set()


def _drop(ws: Any) -> None:
    """Close the socket without the closing handshake (it is over, or the peer is gone)."""
    try:
        ws.shutdown()
    except Exception:  # noqa: BLE001 - already closed
        pass
