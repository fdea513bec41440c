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
SERVICE_KEY = "dashboard-test-service-key"
GATEWAY_ENV = {"MARKET_SOURCE": "simulator", "DEMO_MODE": "true", "STATUS_INTERVAL": "1000",
               "SHUTDOWN_TIMEOUT": "4000", "SERVICE_API_KEY": SERVICE_KEY}


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


# -- the trader's panels: private channels, the symbol picker, candles, bot commands ------------


def _publish(g: GatewayProcess, channel: str, user: str, data: Any) -> dict[str, Any]:
    """``POST /api/publish`` as a platform service (the SERVICE_API_KEY the gateway was given)."""
    request = urllib.request.Request(
        g.http + "/api/publish", data=json.dumps({"channel": channel, "user": user, "data": data}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {SERVICE_KEY}"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202, response.read()
        return json.loads(response.read())


def _page_text(browser: Browser, selector: str) -> str:
    return browser.js(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.textContent).join(' | ')")


def test_private_panels_show_this_users_publications_only(browser: Browser, gateway: GatewayProcess) -> None:
    me, other = "erin", "frank"
    # Published before the page connects: kept in the channel's history, which the page asks for.
    _publish(gateway, "positions", other, {"symbol": "DOGEUSDT", "side": "Sell", "size": "999",
                                            "entryPrice": "0.2", "unrealizedPnl": "-1"})
    _publish(gateway, "positions", me, {"symbol": "BTCUSDT", "side": "Buy", "size": "0.5",
                                         "entryPrice": "60000.5", "unrealizedPnl": "12.25"})
    _connect_with_demo_token(browser, gateway, me)
    browser.wait("!!document.querySelector('#positions tr[data-symbol=\"BTCUSDT\"]')", "the earlier BTCUSDT position")

    # Live: another user's publication on every channel, then this user's.
    _publish(gateway, "positions", other, {"symbol": "ETHUSDT", "side": "Buy", "size": "7", "entryPrice": "1"})
    _publish(gateway, "bot-status", other, {"botId": "frank-bot", "status": "running"})
    _publish(gateway, "signals", other, {"symbol": "DOGEUSDT", "side": "buy", "note": "frank's signal"})
    _publish(gateway, "positions", me, {"symbol": "ETHUSDT", "side": "Sell", "size": "2", "entryPrice": "3500.1",
                                         "unrealizedPnl": "-3.5"})
    _publish(gateway, "bot-status", me, {"botId": "bot-1", "status": "running", "uptime": 12})
    _publish(gateway, "bot-status", me, {"botId": "bot-2", "status": "starting"})
    _publish(gateway, "bot-status", me, {"botId": "bot-2", "status": "stopped", "reason": "manual"})
    for n in range(3):
        _publish(gateway, "signals", me, {"symbol": "SOLUSDT", "side": "buy" if n % 2 == 0 else "sell", "n": n})
    browser.wait("document.querySelectorAll('#signals .signal').length === 3", "three signals")
    browser.wait("document.querySelector('#bots tr[data-bot-id=\"bot-2\"]')?.dataset.status === 'stopped'",
                 "bot-2 stopped")

    positions = browser.js("""[...document.querySelectorAll('#positions tr')].map(r => ({
        symbol: r.dataset.symbol, side: r.querySelector('.side').textContent,
        size: r.querySelector('.size').textContent,
        entry: r.querySelector('.entry').textContent, pnl: r.querySelector('.pnl').textContent,
        sign: r.querySelector('.pnl').dataset.sign}))""")
    assert positions == [
        {"symbol": "BTCUSDT", "side": "Buy", "size": "0.5", "entry": "60000.5", "pnl": "12.25", "sign": "up"},
        {"symbol": "ETHUSDT", "side": "Sell", "size": "2", "entry": "3500.1", "pnl": "-3.5", "sign": "down"},
    ], positions
    bots = browser.js("""[...document.querySelectorAll('#bots tr')].map(r =>
        [r.dataset.botId, r.querySelector('.status').textContent])""")
    assert bots == [["bot-1", "running"], ["bot-2", "stopped"]], bots  # one row per bot, its latest status
    signals = browser.js("[...document.querySelectorAll('#signals .signal')].map(li => li.textContent)")
    assert ['"n":2' in signals[0], '"n":1' in signals[1], '"n":0' in signals[2]] == [True] * 3, signals  # newest first
    everything = _page_text(browser, "#positions-panel, #bots-panel, #signals-panel")
    for foreign in ("DOGEUSDT", "frank", "999"):
        assert foreign not in everything, f"another user's data on the page: {foreign!r} in {everything!r}"

    # A closed position (size 0) leaves the table.
    _publish(gateway, "positions", me, {"symbol": "ETHUSDT", "side": "Sell", "size": "0"})
    browser.wait("!document.querySelector('#positions tr[data-symbol=\"ETHUSDT\"]')", "the closed position to go")

    # Offline: what is published meanwhile arrives after the reconnect (subscribe with `since`), once.
    browser.js("window.dashboard.disconnect()")
    browser.wait("document.querySelector('#conn-state').dataset.state === 'closed'", "disconnected")
    _publish(gateway, "signals", me, {"symbol": "SOLUSDT", "side": "sell", "n": 3})
    _publish(gateway, "positions", me, {"symbol": "BTCUSDT", "side": "Buy", "size": "0.75",
                                         "entryPrice": "60100", "unrealizedPnl": "20"})
    _publish(gateway, "signals", other, {"symbol": "DOGEUSDT", "side": "buy", "note": "frank again"})
    browser.click("#connect")  # the same token
    browser.wait("document.querySelector('#conn-state').dataset.state === 'connected'", "reconnected")
    browser.wait("document.querySelectorAll('#signals .signal').length === 4", "the missed signal")
    browser.wait("document.querySelector('#positions tr[data-symbol=\"BTCUSDT\"] .size').textContent === '0.75'",
                 "the missed position update")
    state = browser.js("window.__dashboard.private")
    assert all(state[c]["recovered"] is True for c in ("positions", "bot-status", "signals")), state
    time.sleep(0.3)
    signals = browser.js("[...document.querySelectorAll('#signals .signal')].map(li => li.textContent)")
    assert len(signals) == 4 and '"n":3' in signals[0], signals  # no duplicates from the replay
    assert "frank" not in _page_text(browser, "#signals-panel")
    assert browser.text("#seq-gaps") == "0"


def test_symbol_picker_switches_market_and_survives_an_unknown_symbol(
        browser: Browser, gateway: GatewayProcess) -> None:
    _connect_with_demo_token(browser, gateway, "gina")
    browser.wait("document.querySelectorAll('#book-bids .level').length === 10", "the BTCUSDT book")

    # Not a symbol: refused by the page itself, nothing changes.
    browser.js("document.querySelector('#symbol-input').value = 'x'")
    browser.click("#symbol-go")
    assert "not a symbol" in browser.text("#symbol-error")
    assert browser.js("window.__dashboard.focus.symbol") == "BTCUSDT"

    # XRPUSDT: listed by the simulator, not a popular pair. Typed in lower case.
    browser.js("document.querySelector('#symbol-input').value = ' xrpusdt '")
    browser.click("#symbol-go")
    assert browser.js("document.querySelector('#symbol-input').value") == "XRPUSDT"
    assert browser.js("document.querySelector('#orderbook').dataset.symbol") == "XRPUSDT"
    assert browser.text("#book-symbol") == "XRPUSDT" and browser.text("#trades-symbol") == "XRPUSDT"
    browser.wait("document.querySelectorAll('#book-bids .level').length === 10"
                 " && document.querySelector('#book-status').dataset.state === 'live'", "the XRPUSDT book")
    browser.wait("document.querySelector('#focus-ticker .price').dataset.value", "the XRPUSDT ticker")
    browser.wait("document.querySelectorAll('#trades .trade').length > 0", "XRPUSDT trades")
    best_bid, best_ask = (Decimal(browser.text("#book-best-bid")), Decimal(browser.text("#book-best-ask")))
    assert 0 < best_bid < best_ask < 100, (best_bid, best_ask)  # XRP, not BTC
    assert 0 < Decimal(browser.js("document.querySelector('#focus-ticker .price').dataset.value")) < 100
    assert browser.text("#symbol-status") == "live" and browser.text("#symbol-error") == ""
    subs = browser.js("window.__dashboard.focus.subscriptions")
    assert subs == [{"symbol": "XRPUSDT", "streams": ["ticker", "trades", "orderbook"]},
                    {"symbol": "XRPUSDT", "streams": ["kline.1"]}], subs

    # The old book and trades stopped; the BTCUSDT card keeps its ticker.
    time.sleep(0.5)
    counts = browser.js("window.__dashboard.marketCounts")
    btc_price = browser.js("document.querySelector('[data-symbol=\"BTCUSDT\"] .price').dataset.value")
    time.sleep(1.5)
    later = browser.js("window.__dashboard.marketCounts")
    assert later.get("BTCUSDT|orderbook.50") == counts.get("BTCUSDT|orderbook.50"), (counts, later)
    assert later.get("BTCUSDT|trades") == counts.get("BTCUSDT|trades"), (counts, later)
    assert later["XRPUSDT|orderbook.50"] > counts["XRPUSDT|orderbook.50"]
    btc_card = "document.querySelector('[data-symbol=\"BTCUSDT\"] .price').dataset.value"
    browser.wait(f"{btc_card} !== {json.dumps(btc_price)}", "the BTCUSDT card to keep updating")

    # NOPEUSDT: the exchange rejects it; the page says so and keeps working.
    browser.js("document.querySelector('#symbol-input').value = 'NOPEUSDT'")
    browser.click("#symbol-go")
    browser.wait("document.querySelector('#symbol-status').dataset.state === 'rejected'", "NOPEUSDT rejected")
    error = browser.text("#symbol-error")
    assert "NOPEUSDT" in error and "upstream_rejected" in error, error
    assert browser.js("window.__dashboard.focus.error.code") == "upstream_rejected"
    assert browser.js("document.querySelector('#conn-state').dataset.state") == "connected"
    assert browser.js("document.querySelectorAll('#book-bids .level').length") == 0

    # A popular pair from the quick choices: everything flows again, the error is gone.
    browser.click('.quick-symbol[data-symbol="ETHUSDT"]')
    browser.wait("document.querySelectorAll('#book-bids .level').length === 10"
                 " && document.querySelector('#book-status').dataset.state === 'live'", "the ETHUSDT book")
    assert browser.text("#symbol-error") == ""
    assert browser.js("document.querySelector('#symbol-input').value") == "ETHUSDT"
    assert 1000 < Decimal(browser.text("#book-best-bid")) < 100000
    # ETHUSDT's ticker comes with its card: the focus subscription leaves it out.
    assert browser.js("window.__dashboard.focus.subscriptions")[0]["streams"] == ["trades", "orderbook"]
    browser.wait("document.querySelector('#focus-ticker .price').dataset.value", "the ETHUSDT ticker line")
    browser.click('.quick-symbol[data-symbol="BTCUSDT"]')
    browser.wait("document.querySelector('#orderbook').dataset.symbol === 'BTCUSDT'"
                 " && document.querySelectorAll('#book-bids .level').length === 10", "back to BTCUSDT")
    assert browser.js("document.querySelector('#conn-state').dataset.state") == "connected"


def _kline_frame(g: GatewayProcess, symbol: str, interval: str) -> dict[str, Any]:
    """One kline ``data`` frame for ``symbol``, read from the gateway by a client of our own."""
    client = g.connect("chart-checker")
    try:
        client.recv()
        client.send({"type": "subscribe", "channel": "market-data",
                     "data": {"symbol": symbol, "streams": [f"kline.{interval}"]}})
        return client.recv_until(lambda m: m.get("type") == "data" and m.get("stream") == f"kline.{interval}")
    finally:
        client.close()


def test_candle_chart_draws_the_kline_stream(browser: Browser, gateway: GatewayProcess) -> None:
    _connect_with_demo_token(browser, gateway, "hank")
    browser.js("window.dashboard.chooseSymbol('SOLUSDT')")
    browser.wait("window.__dashboard.chart.count >= 1 && window.__dashboard.chart.draws >= 1", "a candle drawn")
    frame = _kline_frame(gateway, "SOLUSDT", "1")
    data = frame["data"]
    assert frame["symbol"] == "SOLUSDT" and data["interval"] == "1" and isinstance(data["confirm"], bool)
    # The page holds the same candle (same start and open) and has seen at least its range:
    # the open candle only widens as trades come in.
    start = data["start"]
    candle = browser.wait(f"window.__dashboard.chart.candles.find(c => c.start === {start}"
                          f" && Number(c.high) >= {data['high']} && Number(c.low) <= {data['low']})",
                          "the page's candle to cover the frame read directly")
    assert candle["open"] == data["open"], (candle, data)
    assert Decimal(candle["low"]) <= Decimal(candle["close"]) <= Decimal(candle["high"])
    chart = browser.js("window.__dashboard.chart")
    assert chart["symbol"] == "SOLUSDT" and chart["interval"] == "1" and 1 <= chart["count"] <= 60
    assert chart["last"]["start"] >= start
    assert chart["ticks"] and all(Decimal(t) > 0 for t in chart["ticks"]), chart["ticks"]  # price axis labels
    assert "SOLUSDT" in browser.text("#chart-note") and chart["last"]["close"] in browser.text("#chart-note")

    # The canvas shows candles: pixels in the up or down colour.
    pixels = browser.js("""(() => {
        const c = document.querySelector('#chart-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let up = 0, down = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i] === 0x2e && d[i + 1] === 0xbd && d[i + 2] === 0x85) up++;
            if (d[i] === 0xf6 && d[i + 1] === 0x46 && d[i + 2] === 0x5d) down++;
        }
        return {up, down, width: c.width, height: c.height};
    })()""")
    assert pixels["width"] > 300 and pixels["height"] > 100, pixels
    assert pixels["up"] + pixels["down"] > 50, pixels

    # Another interval: the 1-minute stream is left, 5-minute candles come in.
    browser.js("(s => { s.value = '5'; s.dispatchEvent(new Event('change')); })"
               "(document.querySelector('#kline-interval'))")
    browser.wait("window.__dashboard.chart.interval === '5' && window.__dashboard.chart.count >= 1", "a 5m candle")
    five = _kline_frame(gateway, "SOLUSDT", "5")["data"]
    assert browser.wait(f"window.__dashboard.chart.candles.find(c => c.start === {five['start']})", "the 5m candle")
    streams = [s["streams"] for s in browser.js("window.__dashboard.focus.subscriptions")]
    assert streams == [["trades", "orderbook"], ["kline.5"]], streams
    time.sleep(0.5)
    before = browser.js("window.__dashboard.marketCounts").get("SOLUSDT|kline.1")
    time.sleep(1.0)
    assert browser.js("window.__dashboard.marketCounts").get("SOLUSDT|kline.1") == before  # unsubscribed

    # The merge rules, on made-up frames: the open candle updates in place, a closed one is kept,
    # a late non-closing frame does not reopen it, at most 60 are kept.
    merged = browser.js("""(() => { const m = window.dashboard.mergeCandle;
        const k = (start, close, confirm = false) => ({start, open: '1', high: '2', low: '0.5', close, confirm});
        let list = m([], k(0, '1.1'), 60);
        list = m(list, k(0, '1.2'), 60);
        const inPlace = list.map(c => c.close);
        list = m(list, k(0, '1.3', true), 60);
        list = m(list, k(60000, '1.4'), 60);
        list = m(list, k(0, '9', false), 60);
        const kept = list.map(c => [c.start, c.close, c.confirm]);
        for (let i = 2; i < 100; i++) list = m(list, k(i * 60000, String(i), true), 60);
        list = m(list, k(0, '7', true), 60);
        return {inPlace, kept, n: list.length, first: list[0].start, last: list[59].close}; })()""")
    assert merged["inPlace"] == ["1.2"]
    assert merged["kept"] == [[0, "1.3", True], [60000, "1.4", False]]
    assert merged["n"] == 60 and merged["first"] == 40 * 60000 and merged["last"] == "99"


def _fill_command(browser: Browser, bot: str, command: str, params: dict[str, Any]) -> str:
    """Fill and submit the command form; return the commandId the page chose."""
    before = len(browser.js("window.__dashboard.commands"))
    browser.js(f"""(() => {{ document.querySelector('#cmd-bot').value = {json.dumps(bot)};
        document.querySelector('#cmd-name').value = {json.dumps(command)};
        document.querySelector('#cmd-params').value = {json.dumps(json.dumps(params))}; }})()""")
    browser.click("#cmd-send")
    commands = browser.js("window.__dashboard.commands")
    assert len(commands) == before + 1, commands
    command_id = commands[-1]["commandId"]
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", command_id), command_id
    return command_id


def _command(browser: Browser, command_id: str) -> str:
    return f"document.querySelector('#commands .command[data-command-id=\"{command_id}\"]')"


def test_bot_command_form_shows_no_service(browser: Browser, gateway: GatewayProcess) -> None:
    """No platform service owns the bot: the gateway answers no_service and the page shows it."""
    _connect_with_demo_token(browser, gateway, "ivy")
    # A form error first: params must be a JSON object.
    browser.js("document.querySelector('#cmd-params').value = '[1, 2'")
    browser.click("#cmd-send")
    assert "params" in browser.text("#cmd-error")
    assert browser.js("window.__dashboard.commands") == []

    command_id = _fill_command(browser, "bot-1", "start", {"size": 1})
    row = _command(browser, command_id)
    browser.wait(f"{row}?.dataset.state === 'rejected'", "the command rejected")
    assert "no_service" in browser.text(f'#commands .command[data-command-id="{command_id}"] .error-line')
    assert browser.text(f'#commands .command[data-command-id="{command_id}"] .state') == "rejected"
    assert browser.js("document.querySelector('#conn-state').dataset.state") == "connected"


def test_bot_command_lifecycle_with_a_service(browser: Browser, gateway: GatewayProcess) -> None:
    """sent → accepted → succeeded with a result, reported by a service; a result missed while
    offline is fetched with bot_command_status after the reconnect.

    Needs the gateway's bot command lifecycle (bot_command_ack with state, bot_command_result,
    bot_command_report, bot_command_status)."""
    user = "judy"
    service = gateway.connect(token=gateway.token("bot-engine", role="service"))
    try:
        assert service.recv()["type"] == "connection"
        service.send({"type": "subscribe", "channel": "bot-commands", "id": "s1"})
        subscribed = service.recv_until(lambda m: m.get("type") in ("subscribed", "error"))
        assert subscribed["type"] == "subscribed", subscribed

        def receive_command() -> dict[str, Any]:
            message = service.recv_until(lambda m: m.get("type") == "data" and m.get("channel") == "bot-commands")
            return message["data"]

        def report(command_id: str, state: str, result: Any = None) -> None:
            rid = f"rep-{command_id[:8]}-{state}"
            data: dict[str, Any] = {"commandId": command_id, "userId": user, "state": state}
            if result is not None:
                data["result"] = result
            service.send({"type": "bot_command_report", "id": rid, "data": data})
            ack = service.recv_until(lambda m: m.get("type") in ("bot_command_report_ack", "error"))
            assert ack["type"] == "bot_command_report_ack", ack
            assert ack["data"]["commandId"] == command_id and ack["data"]["state"] == state, ack

        _connect_with_demo_token(browser, gateway, user)
        command_id = _fill_command(browser, "bot-7", "start", {"size": 2, "symbol": "BTCUSDT"})
        row = _command(browser, command_id)
        received = receive_command()
        assert received["commandId"] == command_id and received["userId"] == user, received
        assert (received["botId"], received["command"], received["params"]) == (
            "bot-7", "start", {"size": 2, "symbol": "BTCUSDT"})
        browser.wait(f"{row}?.dataset.state === 'sent'", "the command acknowledged (sent)")

        report(command_id, "accepted")
        browser.wait(f"{row}?.dataset.state === 'accepted'", "accepted on the page")
        assert browser.text(f'#commands .command[data-command-id="{command_id}"] .state') == "accepted"
        result = {"orderId": "o-17", "filled": "2", "nested": {"ok": True}}
        report(command_id, "succeeded", result)
        browser.wait(f"{row}?.dataset.state === 'succeeded'", "succeeded on the page")
        history = browser.js(f"{row}.dataset.history").split()
        assert history[-3:] == ["sent", "accepted", "succeeded"], history
        shown = browser.text(f'#commands .command[data-command-id="{command_id}"] .result')
        assert json.loads(shown or "") == result, shown

        # A second command: accepted, then the page goes offline and the service finishes it.
        second = _fill_command(browser, "bot-7", "stop", {})
        assert receive_command()["commandId"] == second
        report(second, "accepted")
        row2 = _command(browser, second)
        browser.wait(f"{row2}?.dataset.state === 'accepted'", "the second command accepted")
        browser.js("window.dashboard.disconnect()")
        browser.wait("document.querySelector('#conn-state').dataset.state === 'closed'", "disconnected")
        report(second, "failed", {"error": "bot-7 is not running"})
        browser.click("#connect")
        browser.wait("document.querySelector('#conn-state').dataset.state === 'connected'", "reconnected")
        browser.wait(f"{row2}?.dataset.state === 'failed'", "the missed result, asked for after the reconnect")
        assert json.loads(browser.text(f'#commands .command[data-command-id="{second}"] .result') or "") == {
            "error": "bot-7 is not running"}
        # The first one stays as it was; nothing was sent to the service again.
        assert browser.js(f"{row}.dataset.state") == "succeeded"
        try:
            again = service.recv_until(lambda m: m.get("type") == "data", timeout=1.0)
        except websocket.WebSocketTimeoutException:
            again = None
        assert again is None, f"the service got a command again: {again}"
    finally:
        service.close()
