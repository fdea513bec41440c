"""``pip install .`` (not editable) gives a working gateway: wheel → fresh venv → command → HTTP.

The wheel is built from a copy of the checkout, installed into a new
virtualenv in a temporary directory (its dependencies come from the package
index, or pip's cache), and the installed ``trading-gateway`` command is
started from an empty directory: nothing of the checkout is on its path, so
the dashboard it serves at ``/`` can only come from the package data.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest

from gateway.config import VARIABLES
from tests.installs import Background, clean_env
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
_clean_env = clean_env


@pytest.fixture(scope="module")
def installed(background_install: dict[str, Background]) -> Path:
    """The bin/ directory of a fresh virtualenv with the wheel installed (built in the background from
    the start of the run: tests/installs.py)."""
    return background_install["gateway"].result()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_help_lists_every_setting_with_its_default(installed: Path) -> None:
    out = subprocess.run([str(installed / "trading-gateway"), "serve", "--help"], capture_output=True, text=True,
                         env=_clean_env(), timeout=60, check=True)
    for variable in VARIABLES:
        line = next((x for x in out.stdout.splitlines() if x.split()[:1] == [variable.name]), None)
        assert line is not None, variable.name
        assert line.endswith(f"[default: {variable.default or 'unset'}]")


def test_the_installed_command_serves_the_dashboard_and_health(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    env = _clean_env(PORT=str(port), HOST="127.0.0.1", DEMO_MODE="true", MARKET_SOURCE="simulator",
                     LOG_FORMAT="json")
    env.pop("JWT_SECRET", None)
    proc = subprocess.Popen([str(installed / "trading-gateway"), "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        health = (0, b"")
        while time.monotonic() < deadline and health[0] != 200:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                health = _get(f"{base}/health")
            except OSError:
                pass
            time.sleep(0.2)
        assert health[0] == 200, health
        assert json.loads(health[1])["status"] == "ok"
        status, page = _get(f"{base}/")
        assert status == 200
        assert page == (ROOT / "gateway" / "static" / "dashboard" / "index.html").read_bytes()
        assert _get(f"{base}/dashboard/app.js")[0] == 200
        assert _get(f"{base}/livez")[0] == 200
        assert _get(f"{base}/readyz")[0] == 200
        # The wheel carries the compiled path (built by pip from market/_bybit_fast.pyx).
        assert json.loads(_get(f"{base}/api/version")[1])["compiled"] == {"bybitFrames": True}
        # The demo key was kept where the command ran, not in site-packages.
        assert (tmp_path / ".demo" / "jwt_secret").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_the_installed_command_mints_tokens(installed: Path) -> None:
    secret = "s" * 40  # a throwaway test key
    out = subprocess.run([str(installed / "trading-gateway"), "token", "svc-orders", "--role", "service"],
                         capture_output=True, text=True, env=_clean_env(JWT_SECRET=secret), timeout=60, check=True)
    claims = jwt.decode(out.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "svc-orders" and claims["role"] == "service"
