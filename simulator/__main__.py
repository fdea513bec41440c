"""``python -m simulator``: run the fake Bybit v5 public WebSocket until SIGINT or SIGTERM.

``--symbols known`` (the default) lists only the built-in instrument table
(BTCUSDT, ETHUSDT, SOLUSDT… at made-up, believable prices) and refuses any
other symbol as Bybit does; ``--symbols any`` lists every well-formed symbol
ending in a quote coin (``--quotes``), for benchmarks that subscribe made-up ones.

The first line on stdout is ``listening on HOST:PORT`` (the real port when
``--port 0``), flushed at once, so a parent process can read it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import gevent

from simulator.instruments import SYMBOL_MODES, SymbolPolicy
from simulator.server import SimulatorServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind (default 127.0.0.1)",
    )
    parser.add_argument("--port", type=int, default=9100, help="port, 0 for any free one (default 9100)")
    parser.add_argument("--seed", default="0", help="seed for prices, books and ids (default 0)")
    parser.add_argument(
        "--rate-hz",
        type=float,
        default=10.0,
        help="updates per second per topic (default 10)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        help="drop a client that sent nothing for this many seconds, 0 = never (default 600, as Bybit)",
    )
    parser.add_argument(
        "--symbols",
        choices=SYMBOL_MODES,
        default="known",
        help="which symbols exist: 'known' = the built-in instrument table only, "
        "'any' = every symbol ending in a quote coin (default known)",
    )
    parser.add_argument(
        "--reject",
        action="append",
        default=[],
        metavar="SYMBOL",
        help="a symbol that does not exist (repeatable)",
    )
    parser.add_argument(
        "--quotes",
        default="USDT,USDC,BTC,ETH,EUR",
        help="with --symbols any: comma-separated quote coins a symbol must end with (default USDT,USDC,BTC,ETH,EUR)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    seed: int | str = int(args.seed) if args.seed.lstrip("-").isdigit() else args.seed
    policy = SymbolPolicy(
        mode=args.symbols,
        quotes=tuple(q.strip().upper() for q in args.quotes.split(",") if q.strip()),
        reject=frozenset(s.upper() for s in args.reject),
    )
    try:
        server = SimulatorServer(
            args.host,
            args.port,
            seed=seed,
            rate_hz=args.rate_hz,
            idle_timeout=args.idle_timeout or None,
            symbols=policy,
        )
        server.start()
    except (OSError, ValueError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    print(f"listening on {server.host}:{server.port}", flush=True)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
