"""External tools some tests need (redis-server, promtool, Chromium).

A missing tool skips those tests on a developer's machine, where it may
simply not be installed; under CI (`.ci/run` sets GATEWAY_REQUIRE_TOOLS=1
after installing them) it fails instead, so a broken install can never
turn into a green run that tested nothing.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def require_tool(*names: str, install: str) -> str:
    """The path of the first of ``names`` on PATH; else fail (CI) or skip."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    _missing(f"`{names[0]}` is not installed ({install})")


def require_built(what: str, missing: bool, install: str) -> None:
    """Fail (CI) or skip when a compiled part of the package was not built."""
    if not missing:
        return
    _missing(f"{what} was not built ({install})")


def _missing(message: str) -> NoReturn:
    """Fail under CI (GATEWAY_REQUIRE_TOOLS=1, set by .ci/run after it installs everything), so
    a broken install can never pass by testing nothing. Elsewhere skip: a developer's machine
    may lack the tool or the compiler, and the rest of the suite still says something."""
    if os.environ.get("GATEWAY_REQUIRE_TOOLS") == "1":
        pytest.fail(message + " [GATEWAY_REQUIRE_TOOLS=1]", pytrace=False)
    pytest.skip(message)
