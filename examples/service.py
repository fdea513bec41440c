"""A platform service: answers the users' bot commands and publishes their bots' status.

Against the demo gateway (``make run``), from the repository's root (the
service token is minted with the key the demo gateway keeps in
``.demo/jwt_secret``, as ``make token USER=bot-engine ROLE=service`` does)::

    .venv/bin/pip install -e clients/python
    .venv/bin/python examples/service.py             # Ctrl-C to stop
    .venv/bin/python examples/bot.py                 # in another terminal

Or give it a token: ``SERVICE_TOKEN=$(make -s token USER=bot-engine ROLE=service)``
(it then stops when that token expires; minted ones are renewed).

It uses the blocking client (a thread, callbacks): each ``bot-commands``
message is a typed :class:`~trading_gateway_client.BotCommandRequest`
whose ``user_id`` the gateway set from the sender's token. The answer is a
``bot-status`` publication to that user, over HTTP with an idempotency key
derived from the command id (a retried answer is stored once). Every 5 s it
publishes the status of every bot it knows in one batch.

Options: ``--url``, ``--seconds N`` (stop after N s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from trading_gateway_client import BlockingClient, BotCommandRequest, Data, Publication, Publisher, Resync

ROOT = Path(__file__).resolve().parents[1]
STATES = {"start": "running", "resume": "running", "stop": "stopped", "pause": "paused"}


def service_token() -> str:
    """SERVICE_TOKEN, or a fresh one-hour service token from the gateway's own minting tool."""
    token = os.environ.get("SERVICE_TOKEN")
    if token:
        return token
    out = subprocess.run([sys.executable, "-m", "gateway.token", "bot-engine", "--role", "service"], cwd=ROOT,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://localhost:3001/ws")
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()

    static = os.environ.get("SERVICE_TOKEN")
    client = BlockingClient(args.url, token=static, get_token=None if static else service_token)
    publisher = Publisher(args.url, token=static, get_token=None if static else service_token)
    bots: dict[tuple[str, str], str] = {}  # (user, bot) -> state
    lock = threading.Lock()

    @client.on(Data, channel="bot-commands")
    def on_command(event: Data) -> None:
        command = event.payload
        if not isinstance(command, BotCommandRequest):
            return
        state = STATES.get(command.command, "unknown-command")
        print(f"command {command.command} for {command.bot_id} from {command.user_id}", flush=True)
        with lock:
            bots[(command.user_id, command.bot_id)] = state
        published = publisher.publish("bot-status", command.user_id,
                                      {"botId": command.bot_id, "state": state, "commandId": command.command_id},
                                      id=f"answer-{command.command_id}")
        print(f"answered {command.user_id}/{command.bot_id}: {state} (offset {published.offset})", flush=True)

    @client.on(Resync)
    def on_resync(event: Resync) -> None:
        print(f"resync on {event.channel}: commands may have been lost ({event.reason})", flush=True)

    client.start()
    client.subscribe("bot-commands")
    print("ready: subscribed to bot-commands", flush=True)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                client.join(timeout=5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic())))
                break  # the client stopped (join raises if it stopped on an error)
            except TimeoutError:
                pass
            with lock:
                heartbeat = [Publication("bot-status", user, {"botId": bot, "state": state, "heartbeat": True})
                             for (user, bot), state in bots.items()]
            if heartbeat:
                publisher.publish_many(heartbeat)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    main()
