"""Fixtures shared by the test files: the one simulator launcher.

The one gateway launcher is :class:`tests.harness.GatewayProcess` (a context
manager: each test says the settings it needs); the one simulator launcher is
:class:`tests.harness.SimulatorProcess`, shared per module through ``sim``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import SimulatorProcess


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    """A simulated Bybit exchange (its own process, 20 updates a second per topic) for the module."""
    simulator = SimulatorProcess()
    yield simulator
    simulator.stop()
