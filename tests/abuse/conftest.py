"""Fixtures of the abuse suite: one shared gateway with its neighbour fleet for the whole run.

Rows that need other settings (silence timeout, admission caps, Redis,
SIGTERM) start their own gateway with a small fleet of their own, in their
module. The SIGTERM row runs last.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.abuse.fleet import FLEET_SIZE, MAIN_ENV, Fleet, Gateway, log_problems, report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The SIGTERM row last (it stops a gateway; it is the end of a run)."""
    last = [item for item in items if item.nodeid.startswith("tests/abuse/test_shutdown.py")]
    if last:
        items[:] = [item for item in items if item not in last] + last


@pytest.fixture(scope="session")
def main_gw() -> Iterator[Gateway]:
    gw = Gateway(MAIN_ENV)
    try:
        gw.start()
        yield gw
    finally:
        code = gw.stop()
        report(f"shared gateway stopped with exit code {code}; {len(gw.lines):,} log lines")
    problems = log_problems(gw, 0, expect=_EXPECTED_ANYWHERE)
    assert not problems, "tracebacks or unexpected ERROR lines in the shared gateway's log:\n" + "\n".join(
        problems[:10])


# ERROR lines some row provokes on purpose (each row also checks its own window).
_EXPECTED_ANYWHERE = (r'"event": "circuit_opened"',)


@pytest.fixture(scope="session")
def fleet(main_gw: Gateway) -> Iterator[Fleet]:
    f = Fleet(main_gw, FLEET_SIZE)
    try:
        yield f.start()
    finally:
        f.stop()
