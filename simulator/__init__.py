"""A local fake of Bybit v5's public WebSocket, so the gateway runs and is tested offline.

Start it with ``python -m simulator --port 0`` (prints ``listening on
127.0.0.1:PORT`` first) or in a gevent process::

    server = SimulatorServer(seed=1, rate_hz=10)
    server.start()
    server.url("spot")  # ws://127.0.0.1:PORT/v5/public/spot
    server.inject({"fault": "silent", "seconds": 5})
    server.stop()

It lists a built-in table of common pairs at made-up but believable prices
(:mod:`~simulator.instruments`) and answers any other symbol the way Bybit
answers an unknown one; ``python -m simulator --symbols any`` (or
``SimulatorServer(symbols=SymbolPolicy("any"))``) lists every well-formed
symbol instead, for benchmarks and tests that need made-up ones.

Modules, one per role: :mod:`~simulator.protocol` (Bybit's exact message
shapes), :mod:`~simulator.instruments` (the instrument table and which
symbols exist), :mod:`~simulator.market` (seeded prices and books),
:mod:`~simulator.feeds` (topics to messages), :mod:`~simulator.faults`
(fault commands), :mod:`~simulator.connection` and
:mod:`~simulator.server` (gevent I/O).

Dependencies point one way: the WebSocket layer is the gateway's own
:mod:`transport` (framing and the opening handshake, one implementation
for both ends), and nothing here imports :mod:`market`, whose Bybit
parser this server is the test oracle for (see :mod:`simulator.protocol`).
"""

from __future__ import annotations

from simulator.faults import FaultError
from simulator.instruments import SymbolPolicy
from simulator.protocol import Category
from simulator.server import SimulatorServer

__all__ = ["Category", "FaultError", "SimulatorServer", "SymbolPolicy"]
