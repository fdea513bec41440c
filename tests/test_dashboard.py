"""The dashboard page in a real headless Chromium against the real gateway.

Chromium is driven through its DevTools protocol over a WebSocket
(websocket-client, already a dependency), so neither ChromeDriver nor
Selenium is needed. The gateway runs with the in-process Bybit simulator
(``MARKET_SOURCE=simulator``) and ``DEMO_MODE`` for ``POST /api/demo/token``;
the harness's ``JWT_SECRET`` is kept, so demo tokens are signed with it.

Without Chromium the tests skip, or fail when ``GATEWAY_REQUIRE_TOOLS=1``
(CI, see ``.ci/run``). The screenshot goes to ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jwt
import pytest
import websocket

from tests.harness import ROOT, GatewayProcess
from tests.tools import require_tool

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--window-size=1440,1000",
    "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
]
GATEWAY_ENV = {"MARKET_SOURCE": "simulator", "DEMO_MODE": "true", "STATUS_INTERVAL": "1000",
               "SHUTDOWN_TIMEOUT": "4000"}


def _chromium() -> str:
    # Driven over the DevTools protocol: ChromeDriver is not needed.
    return require_tool("chromium", "chromium-browser", "google-chrome",
                        install="apt-get install -y chromium; .ci/run does it")


class JavaScriptError(AssertionError):
    pass


class Browser:
    """One headless Chromium and its first page, driven over the DevTools protocol."""

    def __init__(self, executable: str, timeout: float = 20.0) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="dashboard-chromium-"))
        self.stderr = open(self.profile / "chromium.log", "w+b")  # closed in close()
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr, start_new_session=True,
        )
        self._ids = itertools.count(1)
        self.ws: websocket.WebSocket | None = None
        try:
            self.ws = websocket.create_connection(self._page_target(timeout), timeout=30, suppress_origin=True)
        except BaseException:
            self.close()
            raise

    def _page_target(self, timeout: float) -> str:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, ValueError):
                port = int(active.read_text().split()[0])
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    pages = [t for t in json.load(response) if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.05)
        raise RuntimeError(f"Chromium did not start (exit {self.proc.poll()}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self.stderr.flush()
        text = (self.profile / "chromium.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:  # events (we enable none) are skipped
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str, *, timeout: float = 10.0) -> Any:
        """Evaluate in the page (awaiting a promise); return the JSON value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True,
                           timeout=int(timeout * 1000))
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise JavaScriptError(f"{text}\n  in: {expression[:300]}")
        return result["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 10.0) -> Any:
        """Poll until ``expression`` is truthy; fail with the page's connection state."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.js("[document.querySelector('#conn-state')?.textContent,"
                                " document.querySelector('#conn-detail')?.textContent,"
                                " [...document.querySelectorAll('#log li')].slice(0, 8).map(li => li.textContent)]")
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; page: {state}")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait(f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
                  " && typeof window.dashboard === 'object'", f"the page {url} to load")

    def text(self, selector: str) -> str | None:
        return self.js(f"document.querySelector({json.dumps(selector)})?.textContent ?? null")

    def click(self, selector: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.call("Browser.close")
            self.ws.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: Chromium and its helpers
            self.proc.wait(5)
        self.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser(_chromium())
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def gateway(browser: Browser) -> Iterator[GatewayProcess]:
    with GatewayProcess(GATEWAY_ENV) as g:
        yield g


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inject_fault(g: GatewayProcess, fault: dict[str, Any]) -> None:
    """Send a fault to the gateway's in-process Bybit simulator (its address is in the log)."""
    record = g.wait_for_log(lambda r: str(r.get("msg", "")).startswith("simulated exchange on "))
    host_port = re.search(r"//([^/]+)", record["msg"]).group(1)
    request = urllib.request.Request(f"http://{host_port}/control/fault", data=json.dumps(fault).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200, response.read()


def _diagnose(g: GatewayProcess, browser: Browser) -> str:
    """Why the page is not connected: the gateway's view and a direct connection with the page's token."""
    token = browser.js("document.querySelector('#token').value")
    try:
        client = g.connect(token=token)
        direct = f"a direct connection with the page's token works: {client.recv()}"
        client.close()
    except Exception as exc:  # noqa: BLE001 - a diagnostic
        direct = f"a direct connection with the page's token fails: {exc!r}"
    lines = [line for line in g.lines if '"level": "DEBUG"' not in line or "/ws" in line]
    return (f"{direct}\npage closes: {browser.js('window.dashboard.closes')}\n"
            f"gateway log (no DEBUG):\n" + "\n".join(lines[-40:]) + f"\nchromium:\n{browser.log_tail(15)}")


def _connect_with_demo_token(browser: Browser, g: GatewayProcess, user: str) -> str:
    """Open the page, click "Demo token"; return the session id once connected."""
    browser.open(f"http://127.0.0.1:{g.port}/")
    assert browser.js("document.querySelector('#conn-state').dataset.state") == "idle"
    browser.js(f"document.querySelector('#demo-user').value = {json.dumps(user)}")
    browser.click("#demo-token")
    browser.wait("document.querySelector('#conn-state').dataset.state === 'connected'", "#conn-state connected")
    token = browser.js("document.querySelector('#token').value")
    assert token.count(".") == 2, "the demo token button did not fill in a JWT"
    # Minted by the gateway with the harness's key (JWT_SECRET wins over DEMO_MODE's generated key).
    assert jwt.decode(token, g.secret, algorithms=["HS256"])["sub"] == user
    assert browser.text("#conn-state") == "connected"
    assert user in browser.text("#conn-detail")
    return browser.js("document.querySelector('#conn-state').dataset.session")


def test_dashboard_shows_live_prices_book_trades_and_health(browser: Browser, gateway: GatewayProcess) -> None:
    _connect_with_demo_token(browser, gateway, "alice")

    # Every popular pair shows a price (the exact string) and a 24h change in percent.
    for symbol in ("BTCUSDT", "ETHUSDT", "ADAUSDT", "SOLUSDT"):
        price = browser.wait(f"document.querySelector('[data-symbol=\"{symbol}\"] .price').dataset.value",
                             f"a {symbol} price")
        assert Decimal(price) > 0
        change = browser.text(f'[data-symbol="{symbol}"] .change')
        assert change and change.endswith(" %") and Decimal(change[:-2]) == Decimal(change[:-2]).quantize(
            Decimal("0.01")), change

    # The BTCUSDT price changes within a few seconds (the simulator trades at 10 Hz).
    first = browser.text('[data-symbol="BTCUSDT"] .price')
    btc_price = "document.querySelector('[data-symbol=\"BTCUSDT\"] .price').textContent"
    changed = browser.wait(f"(t => t !== {json.dumps(first)} && t)({btc_price})", "the BTCUSDT price to change",
                           timeout=8)
    assert Decimal(changed) > 0 and changed != first

    # The order book: 10 levels a side, best bid below best ask, the page's spread is exact.
    browser.wait("document.querySelectorAll('#book-bids .level').length === 10"
                 " && document.querySelectorAll('#book-asks .level').length === 10", "10 book levels a side")
    book = browser.js("""(() => {
        const prices = side => [...document.querySelectorAll(`#book-${side} .level .price`)].map(e => e.textContent);
        return {bids: prices('bids'), asks: prices('asks'), spread: document.querySelector('#book-spread').textContent,
                state: document.querySelector('#book-status').dataset.state};
    })()""")
    bids, asks = [Decimal(p) for p in book["bids"]], [Decimal(p) for p in book["asks"]]
    assert book["state"] == "live"
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    assert bids[0] < asks[0]
    spread = browser.js("[document.querySelector('#book-best-bid').textContent,"
                        " document.querySelector('#book-best-ask').textContent,"
                        " document.querySelector('#book-spread').textContent]")
    assert Decimal(spread[1]) - Decimal(spread[0]) == Decimal(spread[2]) > 0

    # The trades tape fills up to 30 rows, newest first.
    browser.wait("document.querySelectorAll('#trades .trade').length === 30", "30 trades on the tape")
    sides = browser.js("[...document.querySelectorAll('#trades .trade')].map(r => r.dataset.side)")
    assert set(sides) <= {"buy", "sell"}

    # System health: the spot stream is connected; time sync shows an offset.
    browser.wait("document.querySelector('#health tr[data-exchange=\"bybit.spot\"]')?.dataset.state === 'connected'",
                 "system-health: bybit.spot connected")
    assert browser.text('#health tr[data-exchange="bybit.spot"] .state') == "connected"
    assert browser.text('#health tr[data-exchange="bybit.spot"] .restarts') == "0"
    assert browser.text("#health-status") == "ok"
    browser.wait("document.querySelector('#clock-offset').dataset.value !== undefined", "a time-sync offset")
    assert browser.wait("document.querySelector('#time-sync tr[data-exchange=\"bybit.spot\"] .offset')?.textContent",
                        "the spot stream's exchange offset")

    # The page's pure helpers: the close-code table and exact decimals.
    policy = browser.js("""(() => { const p = window.dashboard.closePolicy, d = window.dashboard.decimal;
        return {hinted: p(1001, 'server shutting down; reconnect in 1234ms', 3), plain: p(1001, '', 0),
                no: [1002, 1003, 1007, 1009, 1000].map(c => p(c, '', 0).reconnect),
                limit: Array.from({length: 50}, () => p(4503, '', 0)),
                yes: [1006, 4000, 4001, 4002, 1011].map(c => p(c, '', 0).reconnect),
                capped: Math.max(...Array.from({length: 200}, () => p(1006, '', 50).delayMs)),
                pct: [d.percentFromFraction('0.0196'), d.percentFromFraction('-0.158315'),
                      d.percentFromFraction('0'), d.percentFromFraction('0.000049')],
                sub: d.subDec('60010.21', '60010.19'), cmp: d.cmpDec('9.9', '10.00')}; })()""")
    assert policy["hinted"]["delayMs"] == 1234 and policy["hinted"]["hinted"]
    assert 0 <= policy["plain"]["delayMs"] < 5000
    assert policy["no"] == [False] * 5 and policy["yes"] == [True] * 5
    # 4503 is temporary: retried, but only after 30–60 s.
    assert all(x["reconnect"] and 30000 <= x["delayMs"] < 60000 for x in policy["limit"])
    assert policy["capped"] < 10000
    assert policy["pct"] == ["+1.96 %", "-15.83 %", "0.00 %", "0.00 %"]
    assert policy["sub"] == "0.02" and policy["cmp"] == -1

    assert browser.text("#seq-gaps") == "0"
    path = browser.screenshot(ARTIFACTS / "dashboard.png")
    assert path.stat().st_size > 10_000
    print(f"screenshot: {path}")

    # A lost order-book update upstream: the page shows the resync, then a whole book again.
    _inject_fault(gateway, {"fault": "skip_u", "symbol": "BTCUSDT", "category": "spot"})
    browser.wait("document.querySelector('#orderbook').dataset.resyncs !== '0'", "the page to show a book resync")
    browser.wait("document.querySelector('#book-status').dataset.state === 'live'"
                 " && document.querySelectorAll('#book-bids .level').length === 10", "the book to come back")
    assert "resync" in browser.js("[...document.querySelectorAll('#log li')].map(li => li.textContent).join(' ')")
    spot_resyncs = "document.querySelector('#health tr[data-exchange=\"bybit.spot\"] .resyncs')?.textContent"
    browser.wait(f"Number({spot_resyncs}) >= 1", "system-health to count the resync")


def test_platform_browser_example_receives_market_data(browser: Browser, gateway: GatewayProcess) -> None:
    """The platform's own browser snippet (query-string token, `localhost`), run in the page."""
    browser.open(f"http://127.0.0.1:{gateway.port}/")
    token = gateway.token("bob")
    received = browser.js(f"""new Promise((resolve, reject) => {{
        const token = {json.dumps(token)};
        const seen = [];
        const ws = new WebSocket(`ws://localhost:{gateway.port}/ws?token=${{token}}`);
        ws.onopen = () => ws.send(JSON.stringify({{type: 'subscribe', channel: 'market-data',
                                                   data: {{symbol: 'BTCUSDT'}}}}));
        ws.onmessage = (e) => {{
            const m = JSON.parse(e.data);
            seen.push(m.type);
            if (m.type === 'data' && m.channel === 'market-data') {{
                ws.onclose = null;
                ws.close(1000);
                resolve({{message: m, seen}});
            }}
        }};
        ws.onclose = (e) => reject(new Error(`closed ${{e.code}} ${{e.reason}}; saw ${{seen}}`));
        setTimeout(() => reject(new Error(`no market data within 8 s; saw ${{seen}}`)), 8000);
    }})""", timeout=10)
    message = received["message"]
    assert received["seen"][:2] == ["connection", "subscribed"]
    assert message["symbol"] == "BTCUSDT" and message["stream"] == "ticker"
    last = message["data"]["lastPrice"]
    assert isinstance(last, str) and Decimal(last) > 0


def test_dashboard_waits_long_on_connection_limit(
        browser: Browser, gateway: GatewayProcess) -> None:
    """4503 (too many connections) is temporary: the page says why and retries after 30–60 s, not at once."""
    token = gateway.token("dave")
    held = [gateway.connect(token=token) for _ in range(5)]
    try:
        for client in held:
            assert client.recv()["type"] == "connection"
        browser.open(f"http://127.0.0.1:{gateway.port}/")
        browser.js(f"document.querySelector('#token').value = {json.dumps(token)}")
        browser.click("#connect")
        browser.wait("document.querySelector('#conn-state').dataset.state === 'reconnecting'", "waiting after 4503")
        assert browser.js("document.querySelector('#conn-state').dataset.closeCode") == "4503"
        assert "close another one, or wait" in browser.text("#conn-detail")
        assert int(browser.js("document.querySelector('#conn-state').dataset.retryMs")) > 25000
        time.sleep(1.0)  # no new attempt within the wait
        assert [c["code"] for c in browser.js("window.dashboard.closes")] == [4503]
    finally:
        for client in held:
            client.close()


def test_dashboard_reconnects_after_the_gateway_restarts(browser: Browser) -> None:
    port = _free_port()
    env = {**GATEWAY_ENV, "PORT": str(port)}
    first = GatewayProcess(env).start()
    try:
        session = _connect_with_demo_token(browser, first, "carol")
        browser.wait("document.querySelector('[data-symbol=\"BTCUSDT\"] .price').dataset.value", "a BTCUSDT price")
        first.stop()  # SIGTERM: clients are closed with 1001 and a "reconnect in NNNms" hint
    finally:
        first.stop()
    browser.wait("document.querySelector('#conn-state').dataset.state === 'reconnecting'", "reconnecting", timeout=5)
    assert browser.text("#conn-state").startswith("reconnecting in ")
    # The first close was the gateway's 1001, and the page waited the delay its reason hinted.
    going_away = browser.js("window.dashboard.closes[0]")
    assert going_away["code"] == 1001 and going_away["reconnect"], going_away
    hint = re.search(r"reconnect in (\d+)ms", going_away["reason"])
    assert hint and going_away["delayMs"] == int(hint.group(1)), going_away

    # The same port, the same key (the page keeps its demo token): it comes back by itself.
    second = GatewayProcess({**env, "JWT_SECRET": first.secret}).start()
    try:
        try:
            browser.wait("document.querySelector('#conn-state').dataset.state === 'connected'",
                         "the page to reconnect", timeout=20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_diagnose(second, browser)}") from None
        assert browser.js("document.querySelector('#conn-state').dataset.session") != session
        before = browser.text('[data-symbol="BTCUSDT"] .price')
        browser.wait(f"document.querySelector('[data-symbol=\"BTCUSDT\"] .price').textContent !== {json.dumps(before)}",
                     "live prices again", timeout=8)
    finally:
        second.stop()
