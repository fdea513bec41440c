"""Fixtures shared by the test files: the one simulator launcher.

The one gateway launcher is :class:`tests.harness.GatewayProcess` (a context
manager: each test says the settings it needs); the one simulator launcher is
:class:`tests.harness.SimulatorProcess`, shared per module through ``sim``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import SimulatorProcess
from tests.installs import Background

# Install builds started after collection, when the run selected a test that needs them
# (tests/installs.py): test file, or node id -> the build it waits for.
_NEEDS = {"tests/test_install.py": "gateway",
          "tests/test_client_library.py::test_the_client_installs_alone_without_gevent": "client"}
BUILDS: dict[str, Background] = {}


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what this run will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("collectonly"):
        return
    for item in items:
        for prefix, kind in _NEEDS.items():
            if (item.nodeid == prefix or item.nodeid.startswith(prefix + "::")) and kind not in BUILDS:
                BUILDS[kind] = Background(kind)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for build in BUILDS.values():
        build.cleanup()


@pytest.fixture(scope="session")
def background_install() -> dict[str, Background]:
    """The builds this run started (tests/installs.py): ``background_install["gateway"].result()``."""
    return BUILDS


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    """A simulated Bybit exchange (its own process, 20 updates a second per topic) for the module."""
    simulator = SimulatorProcess()
    yield simulator
    simulator.stop()
