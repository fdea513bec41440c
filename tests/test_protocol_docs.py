"""docs/protocol.md and the code agree: close codes, error codes, and every JSON example.

Every fenced ```json block of the doc is an example, and the line right
before it says what it is:

* ``<!-- example: server -->``: each JSON object in the block is a server
  message. The ``reality`` fixture runs real gateways (one with the
  in-process simulated exchange) and records every frame its clients receive
  over real sockets; an example passes when some recorded frame has the same
  naming fields (``CONSTANT_PATHS``: type, channel, code...) and the same
  shape: the same keys at every depth and the same JSON types (integer,
  number, string, boolean, null, array, object). Keys documented as
  "integer or null" (``INT_OR_NULL``) accept either. Content the client
  chooses (a ``ping``'s data, what a service publishes, a bot command's
  params) is taken from the example itself, so only the envelope is compared.
* ``<!-- example: client -->``: each object parses with
  ``protocol.messages.parse``.
* ``<!-- example: http-request METHOD PATH -->``: the body is sent to the
  real gateway and must be accepted (2xx).
* ``<!-- example: http-response METHOD PATH STATUS -->``: compared like a
  server message with the real answers of that status.

A ```json block without a marker, a marker the test does not know, or JSON
in a block that is not tagged ``json`` fails the test: no example escapes.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
import websocket

from protocol.channels import PRIVATE_CHANNELS
from protocol.close_codes import CLOSE_CODES
from protocol.errors import ERROR_MEANINGS
from protocol.messages import parse
from tests.harness import ROOT, Client, GatewayProcess

DOC = (ROOT / "docs" / "protocol.md").read_text()


def test_close_code_table_matches_the_code():
    rows = re.findall(r"^\| (\d{4}) \| (\w+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", DOC, re.MULTILINE)
    documented = {int(code): (name, reason.strip(), action.strip(), meaning.strip())
                  for code, name, reason, action, meaning in rows}
    expected = {int(code): (code.name, info.reason, info.action.value, info.meaning)
                for code, info in CLOSE_CODES.items()}
    assert documented == expected


def test_error_code_table_matches_the_code():
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|$", DOC, re.MULTILINE))
    assert {code: meaning.strip() for code, meaning in rows.items()} == {
        code.value: meaning for code, meaning in ERROR_MEANINGS.items()}


# -- the examples, as the doc gives them ------------------------------------------------

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^\s*<!-- example: (.+?) -->\s*$")
_KIND = re.compile(r"^(server|client|http-request (GET|POST) /\S*|http-response (GET|POST) /\S* \d{3})$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    marker: str | None
    body: str


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line where the object starts
    kind: str
    text: str
    obj: Any

    @property
    def label(self) -> str:
        o = self.obj if isinstance(self.obj, dict) else {}
        head = [self.kind] if self.kind.startswith("http") else [o.get("type")]
        parts = [*head, o.get("channel"), o.get("stream"), o.get("code")]
        return f"L{self.line}-" + "/".join(str(p) for p in parts if p)


def _blocks(doc: str) -> list[Block]:
    lines = doc.splitlines()
    out, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, lang = match.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        out.append(Block(i + 1, lang, marker.group(1) if marker else None, body))
        i = end + 1
    return out


def _objects(block: Block) -> tuple[list[Example], list[str]]:
    """The JSON values of a block (one or more, each may span lines), and what failed to parse."""
    decoder, text, pos = json.JSONDecoder(), block.body, 0
    examples, problems = [], []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return examples, problems
        line = block.line + 1 + text.count("\n", 0, pos)
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError as exc:
            problems.append(f"docs/protocol.md:{line}: not valid JSON ({exc.msg})")
            return examples, problems
        examples.append(Example(line, block.marker or "", text[pos:end], obj))
        pos = end


BLOCKS = _blocks(DOC)
EXAMPLES: list[Example] = []
PARSE_PROBLEMS: list[str] = []
for _block in BLOCKS:
    if _block.lang == "json":
        _found, _problems = _objects(_block)
        EXAMPLES += _found
        PARSE_PROBLEMS += _problems
SERVER = [e for e in EXAMPLES if e.kind == "server" or e.kind.startswith("http-response ")]
CLIENT = [e for e in EXAMPLES if e.kind == "client"]
HTTP_REQUESTS = [e for e in EXAMPLES if e.kind.startswith("http-request ")]


def test_every_json_example_is_marked_and_parses():
    problems = list(PARSE_PROBLEMS)
    for block in BLOCKS:
        where = f"docs/protocol.md:{block.line}"
        if block.lang == "json":
            if block.marker is None:
                problems.append(f"{where}: a ```json block needs a `<!-- example: KIND -->` line right before it")
            elif not _KIND.match(block.marker):
                problems.append(f"{where}: unknown example kind {block.marker!r}")
        elif any(line.lstrip().startswith("{") for line in block.body.splitlines()):
            problems.append(f"{where}: JSON in a ```{block.lang} block is checked by nothing: "
                            "put it in a marked ```json block")
    problems += [f"docs/protocol.md:{e.line}: an example must be a JSON object" for e in EXAMPLES
                 if not isinstance(e.obj, dict)]
    assert not problems, "\n".join(problems)
    assert len(SERVER) >= 25 and len(CLIENT) >= 8 and len(HTTP_REQUESTS) >= 2  # the parser found them


@pytest.mark.parametrize("example", CLIENT, ids=lambda e: e.label)
def test_client_example_parses(example: Example):
    parse(example.text)  # raises ProtocolError with the reason


# -- comparing an example with real frames ------------------------------------------------

# Fields that name the message: an example and a real frame must agree on their values.
CONSTANT_PATHS = (("type",), ("channel",), ("code",), ("stream",), ("status",), ("error",), ("published",),
                  ("already",), ("recovered",), ("wasSubscribed",), ("data", "category"))
# Keys documented as "an integer, or null" (time-sync and system-health).
INT_OR_NULL = frozenset({"offsetMs", "lagMs"})
_MISSING = object()


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def shape_diff(example: Any, real: Any, path: str = "$", key: str | None = None) -> list[str]:
    """What differs between the example and a real frame: keys at every depth and JSON types."""
    te, tr = _json_type(example), _json_type(real)
    if key in INT_OR_NULL and {te, tr} <= {"integer", "null"}:
        return []
    if te != tr:
        return [f"{path}: the example has {te} {json.dumps(example)[:40]}, the real frame {tr} "
                f"{json.dumps(real)[:40]}"]
    diffs: list[str] = []
    if te == "object":
        extra, missing = sorted(example.keys() - real.keys()), sorted(real.keys() - example.keys())
        diffs += [f"{path}.{k}: in the example, not in the real frame" for k in extra]
        diffs += [f"{path}.{k}: in the real frame, missing from the example" for k in missing]
        for k in sorted(example.keys() & real.keys()):
            diffs += shape_diff(example[k], real[k], f"{path}.{k}", k)
    elif te == "array":
        if bool(example) != bool(real):
            diffs.append(f"{path}: {'the example' if not example else 'the real frame'}'s array is empty, "
                         "the other's is not")
        elif example:
            for i, item in enumerate(example):
                diffs += shape_diff(item, real[min(i, len(real) - 1)], f"{path}[{i}]", key)
    return diffs


def test_shape_diff_sees_what_matters():
    assert shape_diff({"a": 1, "b": [{"c": "x"}]}, {"a": 2, "b": [{"c": "y"}, {"c": "z"}]}) == []
    assert shape_diff({"a": 1}, {"a": 1.0}) == ["$.a: the example has integer 1, the real frame number 1.0"]
    assert shape_diff({"a": True}, {"a": 1}) != []
    assert shape_diff({"a": 1}, {"a": 1, "epoch": "e"}) == ["$.epoch: in the real frame, missing from the example"]
    assert shape_diff({"x": {"offsetMs": None}}, {"x": {"offsetMs": -3}}) == []
    assert shape_diff({"x": {"offsetMs": 1.5}}, {"x": {"offsetMs": -3}}) != []
    assert shape_diff({"b": []}, {"b": [1]}) != []


def _matches(example: Any, pool: list[Any]) -> tuple[list[Any], list[str] | None]:
    """The real frames with the example's naming fields, and the differences to the closest (None: a match)."""
    constants = {p: v for p in CONSTANT_PATHS if (v := _get(example, p)) is not _MISSING}
    candidates = [r for r in pool if all(_get(r, p) == v for p, v in constants.items())]
    best: list[str] | None = None
    for real in candidates:
        diffs = shape_diff(example, real)
        if not diffs:
            return candidates, None
        if best is None or len(diffs) < len(best):
            best = diffs
    return candidates, best


# -- reality: real gateways, real sockets --------------------------------------------------

SERVICE_KEY = "test-service-key-placeholder"
MAIN_ENV = {"MARKET_SOURCE": "simulator", "STATUS_INTERVAL": "300", "SERVICE_API_KEY": SERVICE_KEY,
            "DEMO_MODE": "true", "POPULAR_PAIRS": "BTCUSDT"}
# A history that expires at once: the next publication starts a new epoch, and subscribers get `resync`.
RESYNC_ENV = {"SERVICE_API_KEY": SERVICE_KEY, "HISTORY_TTL": "1000"}


@dataclass
class Reality:
    frames: list[dict[str, Any]] = field(default_factory=list)  # every WebSocket message received
    http: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))  # "POST /x 202" -> bodies
    requests: dict[int, int] = field(default_factory=dict)  # http-request example line -> status


class Recorder(Client):
    """A client that records every message it receives."""

    def __init__(self, ws: websocket.WebSocket, frames: list[dict[str, Any]]) -> None:
        super().__init__(ws)
        self.frames = frames

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = super().recv(timeout)
        self.frames.append(msg)
        return msg

    def ask(self, msg: dict[str, Any], *types: str, timeout: float = 5.0) -> dict[str, Any]:
        """Send; the next message of one of ``types`` (data of earlier subscriptions is recorded on the way)."""
        self.send(msg)
        return self.recv_until(lambda m: m["type"] in types, timeout)

    def data(self, channel: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        return self.recv_until(lambda m: m["type"] == "data" and m["channel"] == channel
                               and all(m.get(k) == v for k, v in fields.items()), timeout)


def _connect(gw: GatewayProcess, reality: Reality, user: str, **claims: Any) -> Recorder:
    c = Recorder(gw.connect(token=gw.token(user, **claims)).ws, reality.frames)
    assert c.recv()["type"] == "connection"
    return c


def _http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _publish(gw: GatewayProcess, channel: str, user: str, data: Any) -> dict[str, Any]:
    status, body = _http("POST", gw.http + "/api/publish", {"channel": channel, "user": user, "data": data},
                         {"Authorization": f"Bearer {SERVICE_KEY}"})
    assert status == 202, body
    return body


def _server_examples(**fields: Any) -> list[dict[str, Any]]:
    return [e.obj for e in SERVER if e.kind == "server" and isinstance(e.obj, dict)
            and all(e.obj.get(k) == v for k, v in fields.items())]


def _requests_and_answers(gw: GatewayProcess, r: Reality) -> None:
    c = _connect(gw, r, "alice")
    c.ask({"type": "subscribe", "channel": "market-data", "data": {"symbol": "BTCUSDT"}}, "subscribed")
    c.ask({"type": "unsubscribe", "channel": "market-data", "data": {"symbol": "BTCUSDT"}}, "unsubscribed")
    sub = {"type": "subscribe", "channel": "positions", "id": "r1"}
    assert "offset" in c.ask(sub, "subscribed")
    assert c.ask(sub, "subscribed")["already"] is True
    c.ask({"type": "unsubscribe", "channel": "positions", "id": 7}, "unsubscribed")
    c.ask({"type": "unsubscribe", "channel": "trades"}, "unsubscribed")
    for pong in _server_examples(type="pong"):
        ping = {"type": "ping", "data": pong.get("data")}
        if "id" in pong:
            ping["id"] = pong["id"]
        c.ask(ping, "pong")
    assert c.ask({"type": "subscribe", "channel": "nope", "id": "r9"}, "error")["code"] == "unknown_channel"
    c.ask({"type": "refresh", "token": gw.token("alice")}, "refreshed")
    c.close()


def _private_data(gw: GatewayProcess, r: Reality) -> None:
    # What a service publishes is up to it: publish each example's own data, compare the envelope.
    c = _connect(gw, r, "pat")
    subscribed: set[str] = set()
    for example in _server_examples(type="data"):
        channel = example["channel"]
        if channel not in PRIVATE_CHANNELS:
            continue
        if channel not in subscribed:
            c.ask({"type": "subscribe", "channel": channel}, "subscribed")
            subscribed.add(channel)
        _publish(gw, channel, "pat", example["data"])
        c.data(channel)
    c.close()


def _recovery(gw: GatewayProcess, r: Reality) -> None:
    c = _connect(gw, r, "rob")
    c.ask({"type": "subscribe", "channel": "trades"}, "subscribed")
    for i in range(3):
        _publish(gw, "trades", "rob", {"i": i})
    last = [c.data("trades") for _ in range(3)][-1]
    c.close()
    for i in range(3, 5):
        _publish(gw, "trades", "rob", {"i": i})
    c = _connect(gw, r, "rob")
    since = {"offset": last["seq"], "epoch": last["epoch"]}
    assert c.ask({"type": "subscribe", "channel": "trades", "since": since}, "subscribed")["recovered"] is True
    assert [c.data("trades")["data"] for _ in range(2)] == [{"i": 3}, {"i": 4}]
    c.close()


def _bot_commands(gw: GatewayProcess, r: Reality) -> None:
    service = _connect(gw, r, "bot-engine", role="service")
    service.ask({"type": "subscribe", "channel": "bot-commands"}, "subscribed")
    user = _connect(gw, r, "grace")
    for example in _server_examples(type="data", channel="bot-commands"):
        command = {k: example["data"][k] for k in ("botId", "command", "params", "commandId") if k in example["data"]}
        user.ask({"type": "bot_command", "id": "c2", "data": command}, "bot_command_ack")
        sent = service.data("bot-commands")["data"]
        # The lifecycle: the service reports, the user gets each state, then asks for it again.
        for result in _server_examples(type="bot_command_result"):
            report = {"commandId": sent["commandId"], "userId": sent["userId"], "state": result["data"]["state"],
                      "result": result["data"]["result"]}
            service.ask({"type": "bot_command_report", "id": "r5", "data": report}, "bot_command_report_ack")
            user.recv_until(lambda m: m["type"] == "bot_command_result")
        user.ask({"type": "bot_command_status", "id": "q1", "data": {"commandId": sent["commandId"]}},
                 "bot_command_result")
        # A resend of the same commandId: answered, not sent again.
        user.ask({"type": "bot_command", "id": "c2", "data": command}, "bot_command_ack")
    service.close(), user.close()


def _market_data(gw: GatewayProcess, r: Reality) -> None:
    announced = gw.wait_for_log(lambda rec: "simulated exchange on" in rec.get("msg", ""))
    port = re.search(r":(\d+)/", announced["msg"]).group(1)  # "simulated exchange on ws://127.0.0.1:N/v5/public"
    control = f"http://127.0.0.1:{port}/control/fault"
    c = _connect(gw, r, "md")
    c.ask({"type": "subscribe", "channel": "market-data",
           "data": {"symbol": "BTCUSDT", "category": "linear", "streams": ["ticker"]}}, "subscribed")
    c.ask({"type": "subscribe", "channel": "market-data",
           "data": {"symbol": "BTCUSDT", "streams": ["ticker", "trades", "orderbook", "kline.1"]}}, "subscribed")
    wanted = {("linear", "ticker"), ("spot", "ticker"), ("spot", "trades"), ("spot", "orderbook.50"),
              ("spot", "kline.1")}
    deadline = time.monotonic() + 15
    while wanted:
        assert time.monotonic() < deadline, f"no market data for {wanted}"
        m = c.recv()
        if m["type"] == "data":
            wanted.discard((m["data"]["category"], m["stream"]))
    # A lost book update: subscribers get an empty book with resync: true.
    assert _http("POST", control, {"fault": "skip_u", "symbol": "BTCUSDT", "category": "spot"})[0] == 200
    c.recv_until(lambda m: m.get("stream") == "orderbook.50" and m["data"].get("resync") is True, 10)
    for channel in ("time-sync", "system-health"):
        c.ask({"type": "subscribe", "channel": channel}, "subscribed")
        c.data(channel)
    # A symbol the exchange refuses.
    assert _http("POST", control, {"fault": "reject_subscribe", "symbol": "NOPEUSDT"})[0] == 200
    c.ask({"type": "subscribe", "channel": "market-data", "data": {"symbol": "NOPEUSDT"}}, "subscribed")
    assert c.recv_until(lambda m: m["type"] == "error", 10)["code"] == "upstream_rejected"
    _http("POST", control, {"fault": "resume"})
    c.close()


def _http_examples(gw: GatewayProcess, r: Reality) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"{gw.ws_url}?token={gw.token('alice', ttl=-60)}", timeout=5)
    r.http[f"GET /ws {refused.value.status_code}"].append(json.loads(refused.value.resp_body))
    for example in HTTP_REQUESTS:
        _, method, path = example.kind.split()
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"} if path.startswith("/api/publish") else {}
        status, body = _http(method, gw.http + path, example.obj, headers)
        r.requests[example.line] = status
        r.http[f"{method} {path} {status}"].append(body)


def _resync(gw: GatewayProcess, r: Reality) -> None:
    c = _connect(gw, r, "hank")
    c.ask({"type": "subscribe", "channel": "trades"}, "subscribed")
    _publish(gw, "trades", "hank", {"i": 0})
    c.data("trades")
    time.sleep(1.2)  # past HISTORY_TTL: the broker starts a new history
    _publish(gw, "trades", "hank", {"i": 1})
    c.recv_until(lambda m: m["type"] == "resync")
    c.close()


@pytest.fixture(scope="module")
def reality() -> Reality:
    r = Reality()
    with GatewayProcess(MAIN_ENV) as gw:
        _requests_and_answers(gw, r)
        _private_data(gw, r)
        _recovery(gw, r)
        _bot_commands(gw, r)
        _market_data(gw, r)
        _http_examples(gw, r)
    with GatewayProcess(RESYNC_ENV) as gw:
        _resync(gw, r)
    return r


@pytest.mark.parametrize("example", SERVER, ids=lambda e: e.label)
def test_server_example_matches_a_real_frame(example: Example, reality: Reality):
    if example.kind == "server":
        pool, what = reality.frames, "WebSocket message"
    else:
        _, method, path, status = example.kind.split()
        pool, what = reality.http.get(f"{method} {path} {status}", []), f"answer to {method} {path} ({status})"
    candidates, diffs = _matches(example.obj, pool)
    where = f"docs/protocol.md:{example.line}"
    assert candidates, (f"{where}: no real {what} with the example's "
                        f"{[p for p in CONSTANT_PATHS if _get(example.obj, p) is not _MISSING]}: "
                        "the gateway does not send this message, or this test needs a scenario that makes it")
    assert diffs is None, (f"{where}: no real {what} has the example's shape; closest of "
                           f"{len(candidates)}:\n  " + "\n  ".join(diffs))


@pytest.mark.parametrize("example", HTTP_REQUESTS, ids=lambda e: e.label)
def test_http_request_example_is_accepted(example: Example, reality: Reality):
    assert 200 <= reality.requests[example.line] < 300, f"docs/protocol.md:{example.line}: {example.kind}"
