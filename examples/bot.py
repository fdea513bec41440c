"""A trading bot: follows the BTCUSDT order book, commands its bot and follows the command to its end.

Against the demo gateway (``make run``: demo mode, simulated exchange), with
the client installed from this repository::

    .venv/bin/pip install -e clients/python
    .venv/bin/python examples/bot.py                 # user "demo"; Ctrl-C to stop
    .venv/bin/python examples/service.py             # in another terminal: answers the bot's commands

The token comes from ``POST /api/demo/token`` (demo mode only; in production
``get_token`` asks the platform's auth service) and is refreshed before it
expires. The bot:

* keeps a local BTCUSDT book (``client.book``) and prints its top when it changes, at most once a second;
* sends ``start`` to its bot (``client.command``) and prints each state of the command once, as the
  owning service reports it (``sent``, ``accepted``, ``succeeded``/``failed``, or ``timed_out``), across
  reconnects: a command whose ack was lost is sent again with the same ``commandId`` (the service gets
  it once), and the state of an unfinished one is asked for after every reconnect;
* acts on ``bot-status`` (the bot's status, which the service publishes: running or stopped) and on
  ``signals`` (only while running);
* takes ``resync`` events as what they are: its state may be stale, refetch it.

Options: ``--url``, ``--user``, ``--bot``, ``--command`` (``start``), ``--seconds N`` (stop after N s),
``--once`` (stop once it has seen a ready book, the command finished and the bot's status: what the test
suite runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request

from trading_gateway_client import AsyncClient, BotCommandResult, Data, Disconnected, RequestError, Resync
from trading_gateway_client.publisher import http_base


def demo_token(url: str, user: str) -> str:
    """A one-hour user token from a demo-mode gateway."""
    request = urllib.request.Request(http_base(url) + "/api/demo/token", json.dumps({"user": user}).encode(),
                                     {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(json.loads(response.read())["token"])


async def run(url: str, user: str, bot: str, command: str, seconds: float | None, once: bool) -> None:
    async with AsyncClient(url, get_token=lambda: demo_token(url, user)) as client:

        @client.on_command_result
        def show(result: BotCommandResult) -> None:  # each state of each command of this user, once
            outcome = "" if result.result is None else f" {json.dumps(result.result)}"
            print(f"command {result.command} for {result.bot_id}: {result.state}{outcome}", flush=True)

        await client.subscribe_market("BTCUSDT", ["orderbook", "trades"])
        await client.subscribe("bot-status")
        await client.subscribe("signals")
        handle = await client.command(bot, command, {"strategy": "follow-the-book"}, timeout_ms=30_000)
        try:
            ack = await handle.sent(timeout=10)
            print(f"command {command} sent to {bot}: {ack.delivered_to} service(s) got it ({handle.command_id})",
                  flush=True)
        except RequestError as exc:
            print(f"command not delivered ({exc.code}): is examples/service.py running?", flush=True)
        except TimeoutError:
            print("no ack yet: the client keeps the command and sends it again after a reconnect", flush=True)
        running, shown, book_seen, answered = False, 0.0, False, False
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            try:
                event = await client.next_event(timeout=None if deadline is None else deadline - time.monotonic())
            except TimeoutError:
                break
            if isinstance(event, Data) and event.channel == "market-data" and event.stream == "trades":
                trades = event.payload.trades
                if running and trades:
                    print(f"trade {trades[-1].side} {trades[-1].size} @ {trades[-1].price}", flush=True)
            elif isinstance(event, Data) and event.channel == "market-data":
                book = client.book("BTCUSDT")
                if book is not None and book.ready and time.monotonic() - shown >= 1.0:
                    shown, book_seen = time.monotonic(), True
                    bid, ask = book.best_bid, book.best_ask
                    if bid is not None and ask is not None:
                        print(f"book BTCUSDT bid {bid.price} x {bid.size}  ask {ask.price} x {ask.size}  "
                              f"spread {book.spread}", flush=True)
            elif isinstance(event, Data) and event.channel == "bot-status":
                status = event.payload if isinstance(event.payload, dict) else {}
                if status.get("botId") == bot:
                    running, answered = status.get("state") == "running", True
                    print(f"bot-status {bot}: {status.get('state')} (seq {event.seq})", flush=True)
            elif isinstance(event, Data) and event.channel == "signals":
                if running:
                    print(f"signal: {event.payload}", flush=True)
            elif isinstance(event, Resync):
                print(f"resync on {event.channel}: {event.reason}: refetch the state", flush=True)
            elif isinstance(event, Disconnected):
                print(f"disconnected ({event.code} {event.reason}); reconnecting in {event.reconnect_in}",
                      flush=True)
            if once and book_seen and answered and handle.done:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://localhost:3001/ws")
    parser.add_argument("--user", default="demo")
    parser.add_argument("--bot", default="bot-1")
    parser.add_argument("--command", default="start")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.url, args.user, args.bot, args.command, args.seconds, args.once))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
