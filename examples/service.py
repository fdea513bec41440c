"""A platform service: owns a group of bots, carries out their users' commands, reports and publishes their status.

Against the demo gateway (``make run``), from the repository's root (the
service token is minted with the key the demo gateway keeps in
``.demo/jwt_secret``, with a ``serves`` claim naming the bots it owns)::

    .venv/bin/pip install -e clients/python
    .venv/bin/python examples/service.py             # owns bot-*; Ctrl-C to stop
    .venv/bin/python examples/bot.py                 # in another terminal

Or give it a token: ``SERVICE_TOKEN=<a service token>`` (it then stops when
that token expires; minted ones are renewed). A service token without a
``serves`` claim owns every bot.

It uses the blocking client (a thread, callbacks). ``on_command`` hands each
command for its bots (a typed :class:`~trading_gateway_client.BotCommandRequest`,
``user_id`` set by the gateway from the sender's token) to a worker thread,
so the client's own thread keeps reading. The worker reports ``accepted``,
does the work, publishes the bot's new status on ``bot-status`` with the
batch publisher (an idempotency key derived from the command id: a retried
publication is stored once), then reports ``succeeded`` with the result, or
``failed`` for a command it does not know. Reports are kept and sent again
after reconnects until the gateway acknowledges them; a refused one
(``invalid_state``: the command timed out meanwhile) is printed, not retried.
Every 5 s it publishes the status of every bot it knows in one batch.

Options: ``--url``, ``--serves bot-*`` (comma-separated bot ids or prefixes ending in ``*``),
``--work-seconds`` (how long a command takes), ``--seconds N`` (stop after N s).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from trading_gateway_client import (
    BlockingClient,
    BotCommandRequest,
    Publication,
    Publisher,
    ReportRefusedError,
    Resync,
)

ROOT = Path(__file__).resolve().parents[1]
STATES = {"start": "running", "resume": "running", "stop": "stopped", "pause": "paused"}
# The gateway's minting (what `make token` runs), with the `serves` claim.
_MINT = """
import json, os, sys
from gateway.config import DEMO_SECRET_FILE, Settings
env = dict(os.environ)
if not env.get("JWT_SECRET") and not env.get("JWT_PUBLIC_KEY") and DEMO_SECRET_FILE.exists():
    env["JWT_SECRET"] = DEMO_SECRET_FILE.read_text().strip()  # the key a demo-mode gateway kept
print(Settings.from_env(env).authenticator.mint(sys.argv[1], role="service", serves=json.loads(sys.argv[2])))
"""


def service_token(name: str, serves: list[str]) -> str:
    """SERVICE_TOKEN, or a fresh one-hour service token that owns ``serves``, minted with the gateway's key."""
    token = os.environ.get("SERVICE_TOKEN")
    if token:
        return token
    out = subprocess.run([sys.executable, "-c", _MINT, name, json.dumps(serves)], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://localhost:3001/ws")
    parser.add_argument("--name", default="bot-engine", help="the service's name (its token's sub)")
    parser.add_argument("--serves", default="bot-*", help="the bots it owns: ids or prefixes ending in *")
    parser.add_argument("--work-seconds", type=float, default=0.3)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    serves = [p for p in args.serves.split(",") if p]

    static = os.environ.get("SERVICE_TOKEN")

    def get_token() -> str:
        return service_token(args.name, serves)

    client = BlockingClient(args.url, token=static, get_token=None if static else get_token)
    publisher = Publisher(args.url, token=static, get_token=None if static else get_token)
    bots: dict[tuple[str, str], str] = {}  # (user, bot) -> state
    lock = threading.Lock()
    work: queue.Queue[BotCommandRequest | None] = queue.Queue()

    @client.on_command
    def on_command(command: BotCommandRequest) -> None:  # the client's thread: hand it over, do not block
        print(f"command {command.command} for {command.bot_id} from {command.user_id} ({command.command_id})",
              flush=True)
        work.put(command)

    @client.on(Resync)
    def on_resync(event: Resync) -> None:
        print(f"resync on {event.channel}: commands may have been lost ({event.reason})", flush=True)

    def carry_out(command: BotCommandRequest) -> None:
        if command.expired(int(time.time() * 1000)):
            print(f"skipped {command.command_id}: past its deadline", flush=True)
            return
        client.report(command, "accepted", timeout=None)  # waits across reconnects until the gateway has it
        state = STATES.get(command.command)
        if state is None:
            client.report(command, "failed", {"error": f"unknown command {command.command!r}"}, timeout=None)
            print(f"failed {command.user_id}/{command.bot_id}: unknown command {command.command!r}", flush=True)
            return
        time.sleep(args.work_seconds)  # the work itself
        with lock:
            bots[(command.user_id, command.bot_id)] = state
        published = publisher.publish_many([Publication(
            "bot-status", command.user_id, {"botId": command.bot_id, "state": state, "commandId": command.command_id},
            id=f"status-{command.command_id}")])
        client.report(command, "succeeded", {"state": state, "statusOffset": published[0].offset}, timeout=None)
        print(f"answered {command.user_id}/{command.bot_id}: {state} (offset {published[0].offset})", flush=True)

    def worker() -> None:
        while (command := work.get()) is not None:
            try:
                carry_out(command)
            except ReportRefusedError as exc:
                print(f"report refused for {exc.command_id}: {exc.code} (the command is {exc.current_state})",
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - one command's failure does not stop the service
                print(f"command {command.command_id} failed here: {exc!r}", flush=True)

    threading.Thread(target=worker, name="worker", daemon=True).start()
    client.start()
    client.subscribe("bot-commands")  # on_command subscribed; this waits for the confirmation
    print(f"ready: subscribed to bot-commands, serving {', '.join(serves)}", flush=True)
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
        work.put(None)
        client.close()


if __name__ == "__main__":
    main()
