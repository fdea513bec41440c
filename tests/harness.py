"""Run the real gateway in a subprocess and talk to it over real sockets.

``GatewayProcess`` starts ``python app.py`` on a free port on 127.0.0.1 with
a throwaway secret generated for the run, collects every log line, and
stops it with SIGTERM. ``Client`` wraps websocket-client with helpers that
wait on frames (never sleeps) and read exact close codes.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import websocket

ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")


_DATA_DIRS: list[str] = []


def _data_dir() -> str:
    if not _DATA_DIRS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _DATA_DIRS])
    path = tempfile.mkdtemp(prefix="gateway-data-")
    _DATA_DIRS.append(path)
    return path


class GatewayProcess:
    def __init__(self, env: dict[str, str] | None = None, *, args: list[str] | None = None) -> None:
        self.secret = secrets.token_urlsafe(40)
        self.env = {
            **os.environ,
            "JWT_SECRET": self.secret,
            "HOST": "127.0.0.1",
            "PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
            "MARKET_SOURCE": "none",
            # The audit trail's SQLite file: one directory per gateway object (kept across its
            # restarts, removed when the test process ends), never the working tree.
            "DATA_DIR": _data_dir(),
            **(env or {}),
        }
        self.args = args or []
        self.lines: list[str] = []
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self, timeout: float = 15.0) -> GatewayProcess:
        """Start (or start again after ``stop``: same settings and DATA_DIR, a new port unless PORT is set)."""
        self._ready.clear()
        self.port = 0
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), *self.args], cwd=ROOT, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "\n".join(self.lines[-40:]))
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if not self._ready.is_set() and proc is self.proc:
                match = _LISTENING.search(line)
                if match:
                    self.port = int(match.group(1))
                    self._ready.set()
        if proc is self.proc:
            self._ready.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    # -- helpers -------------------------------------------------------------------

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def token(self, user: str = "alice", *, ttl: float = 3600, secret: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": user, "iat": now, "exp": now + ttl, **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, secret or self.secret, algorithm="HS256")

    def connect(self, user: str = "alice", *, token: str | None = None, **kwargs: Any) -> Client:
        token = token or self.token(user)
        ws = websocket.create_connection(f"{self.ws_url}?token={token}", timeout=5, **kwargs)
        return Client(ws)

    def stats(self) -> dict[str, Any]:
        """``/ws/stats`` as a platform service sees it (user ids included)."""
        request = urllib.request.Request(self.http + "/ws/stats",
                                         headers={"Authorization": f"Bearer {self.token('ops', role='service')}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def json_logs(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_for_log(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.json_logs():
                if predicate(record):
                    return record
            time.sleep(0.02)
        raise AssertionError("no matching log line; last lines:\n" + "\n".join(self.lines[-20:]))

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class SimulatorProcess:
    """``python -m simulator`` on a free port (the one simulator launcher; the ``sim`` fixture in conftest.py).

    Faults go through its HTTP control API (``inject``); ``state`` is what it
    saw (connections, subscriptions, requests per topic).
    """

    def __init__(self, rate_hz: float = 20.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "simulator", "--port", "0", "--rate-hz", str(rate_hz),
                                      "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        match = re.search(r":(\d+)", self.proc.stdout.readline())
        if match is None:
            self.stop()
            raise RuntimeError("the simulator did not start")
        self.port = int(match.group(1))

    @property
    def ws_base(self) -> str:
        """The value for BYBIT_WS_URL."""
        return f"ws://127.0.0.1:{self.port}/v5/public"

    def inject(self, fault: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/control/fault", json.dumps(fault).encode(),
                                     {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/control/state", timeout=5) as resp:
            return json.loads(resp.read())

    def spot_subscriptions(self) -> set[str]:
        """Topics of the newest spot connection (the gateway's current incarnation)."""
        conns = [c for c in self.state()["connections"] if c["category"] == "spot"]
        return set(max(conns, key=lambda c: c["id"])["subscriptions"]) if conns else set()

    def requests(self, topic: str, op: str) -> int:
        return self.state()["requests"].get(topic, {}).get(op, 0)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Client:
    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws

    def send(self, obj: Any) -> None:
        self.ws.send(obj if isinstance(obj, str) else json.dumps(obj))

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next JSON message (protocol pings are answered on the way)."""
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return json.loads(data)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise AssertionError(f"closed: {close_code(data)}")

    def recv_until(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.05, deadline - time.monotonic()))
            if predicate(msg):
                return msg

    def request(self, obj: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        self.send(obj)
        return self.recv(timeout)

    def expect_close(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Read until the server's close frame; return (code, reason)."""
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return close_code(data)

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:  # noqa: BLE001 - best effort in teardown
            self.ws.shutdown()


def close_code(payload: bytes) -> tuple[int | None, str]:
    if len(payload) < 2:
        return None, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")


def raw_upgrade(port: int, path: str = "/ws", headers: dict[str, str] | None = None) -> tuple[socket.socket, str]:
    """Send a handshake by hand; return the socket and the response head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    sock.sendall(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    text, _, rest = response.partition(b"\r\n\r\n")
    sock_with_rest = _Prefixed(sock, rest)
    return sock_with_rest, text.decode("latin-1")  # type: ignore[return-value]  # duck-typed socket


class _Prefixed:
    """A socket whose first reads return bytes already received with the response head."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self.sock = sock
        self.prefix = prefix

    def recv(self, n: int) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            return data
        return self.sock.recv(n)

    def recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def read_frame(self) -> tuple[int, bytes]:
        b0, b1 = self.recv_exact(2)
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self.recv_exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self.recv_exact(8))[0]
        return b0 & 0x0F, self.recv_exact(length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    key = os.urandom(4) if mask else b""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body
