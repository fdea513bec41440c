"""A local fake of Bybit v5's public WebSocket, so the gateway runs and is tested offline.

Start it with ``python -m simulator --port 0`` (prints ``listening on
127.0.0.1:PORT`` first) or in a gevent process::

    server = SimulatorServer(seed=1, rate_hz=10)
    server.start()
    server.url("spot")  # ws://127.0.0.1:PORT/v5/public/spot
    server.inject({"fault": "silent", "seconds": 5})
    server.stop()

Modules, one per role: :mod:`~simulator.protocol` (Bybit's exact message
shapes), :mod:`~simulator.market` (seeded prices and books),
:mod:`~simulator.feeds` (topics to messages), :mod:`~simulator.faults`
(fault commands), :mod:`~simulator.frames` (RFC 6455 framing),
:mod:`~simulator.connection` and :mod:`~simulator.server` (gevent I/O).
"""

from __future__ import annotations

from simulator.faults import FaultError
from simulator.protocol import Category, SymbolPolicy
from simulator.server import SimulatorServer

__all__ = ["Category", "FaultError", "SimulatorServer", "SymbolPolicy"]
