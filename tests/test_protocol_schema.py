"""docs/asyncapi.yaml, the protocol as data, against what real gateways send and accept.

Real sessions (``tests/harness.py`` gateways, one with the in-process
simulated exchange, one whose history expires so that it sends ``resync``)
are driven over real sockets: every channel kind, publishing (single and
batch), errors, pings, refresh, recovery with ``since``, bot commands,
order-book resyncs, refused upgrades; and a session of the Python client
library (clients/python), whose every frame is traced. Every frame seen in
either direction must match the message of its direction whose ``name`` is
its ``type``; the client frames the gateway refused as malformed must NOT
match (the schema is no looser than the gateway). HTTP bodies are checked
against the publishing schemas, and the examples of docs/protocol.md too.
The document's enums are checked against the code (channels, error codes,
close codes), so the two cannot drift apart.

Validation uses ``jsonschema`` (draft-07, the AsyncAPI Schema Object),
installed into the test virtualenv at the pinned version when missing.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
import websocket
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from protocol.channels import BROKERED_CHANNELS, PRIVATE_CHANNELS, Channel
from protocol.close_codes import CLOSE_CODES
from protocol.errors import ErrorCode
from tests.harness import ROOT, Client, GatewayProcess
from tests.test_client_library import ensure_client

ensure_client()

from trading_gateway_client import AsyncClient, Data, Publication, Publisher, Refreshed  # noqa: E402

DOC_PATH = ROOT / "docs" / "asyncapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
URI = "urn:trading-gateway:asyncapi"
REGISTRY = Registry().with_resource(URI, Resource.from_contents(DOC, default_specification=DRAFT7))
SCHEMAS = DOC["components"]["schemas"]
KEY = "schema-test-service-key-0123456789abcdef"


def _resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _validator(pointer: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator({"$ref": f"{URI}#{pointer}"}, registry=REGISTRY)


def _messages(channel: str) -> dict[str, dict[str, jsonschema.Draft7Validator]]:
    """{"server": {type: validator}, "client": {...}} for one channel, read from its operations.

    The document describes the gateway: ``send`` operations and the replies
    of ``receive`` operations are server messages, ``receive`` ones client messages.
    """
    out: dict[str, dict[str, jsonschema.Draft7Validator]] = {"server": {}, "client": {}}

    def add(direction: str, ref: str) -> None:
        message = _resolve(ref)
        if "$ref" in message:
            message = _resolve(message["$ref"])
        name = message["name"]
        pointer = message["payload"]["$ref"][1:]
        assert out[direction].setdefault(name, _validator(pointer)) is not None
    for op in DOC["operations"].values():
        if op["channel"]["$ref"] != f"#/channels/{channel}":
            continue
        direction = "server" if op["action"] == "send" else "client"
        for ref in op["messages"]:
            add(direction, ref["$ref"])
        for ref in op.get("reply", {}).get("messages", []):
            add("server", ref["$ref"])
    return out


WS = _messages("gateway")


def problems(frame: Any, direction: str) -> list[str]:
    """Why ``frame`` does not match the message of its direction named by its ``type`` (empty: it does)."""
    if not isinstance(frame, dict):
        return ["not a JSON object"]
    validator = WS[direction].get(frame.get("type"))
    if validator is None:
        return [f"no {direction} message named {frame.get('type')!r}"]
    errors = list(validator.iter_errors(frame))
    if not errors:
        return []
    best = jsonschema.exceptions.best_match(errors)
    return [f"{'/'.join(map(str, best.absolute_path)) or '$'}: {best.message[:300]}"] + \
        [f"  also {'/'.join(map(str, e.absolute_path)) or '$'}: {e.message[:120]}" for e in errors[:3] if e is not best]


def http_problems(schema: str, body: Any) -> list[str]:
    errors = list(_validator(f"/components/schemas/{schema}").iter_errors(body))
    return [f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message[:200]}" for e in errors]


# =====================================================================================
# The document itself
# =====================================================================================


@pytest.mark.unit
def test_the_document_is_asyncapi_3_and_every_reference_resolves():
    assert DOC["asyncapi"].startswith("3.") and DOC["info"]["version"] == "trading.v1"
    refs: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
                # Draft-07 (the AsyncAPI Schema Object) ignores keywords beside $ref: none may be there.
                assert set(node) == {"$ref"}, f"{path}: keywords beside $ref are ignored: {sorted(node)}"
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(DOC, "#")
    assert len(refs) > 100
    for ref in refs:
        _resolve(ref)  # raises KeyError for a dangling one
    for name, op in DOC["operations"].items():
        channel = _resolve(op["channel"]["$ref"])
        for ref in op["messages"]:
            assert ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), name
        if "reply" in op:
            assert all(r["$ref"].startswith(op["reply"]["channel"]["$ref"] + "/messages/")
                       for r in op["reply"]["messages"]), name
        assert channel["messages"]
    for schema in SCHEMAS:
        jsonschema.Draft7Validator.check_schema(SCHEMAS[schema])
    assert set(WS["server"]) == {"connection", "subscribed", "unsubscribed", "data", "resync", "pong", "refreshed",
                                 "bot_command_ack", "bot_command_result", "bot_command_report_ack", "error"}
    assert set(WS["client"]) == {"subscribe", "unsubscribe", "ping", "refresh", "bot_command", "bot_command_status",
                                 "bot_command_report"}


@pytest.mark.unit
def test_the_documents_enums_are_the_codes():
    assert SCHEMAS["Channel"]["enum"] == [c.value for c in Channel]
    assert set(SCHEMAS["PrivateChannel"]["enum"]) == {c.value for c in PRIVATE_CHANNELS}
    assert set(SCHEMAS["BrokeredChannel"]["enum"]) == {c.value for c in BROKERED_CHANNELS}
    assert SCHEMAS["ErrorCode"]["enum"] == [c.value for c in ErrorCode]
    table = DOC["channels"]["gateway"]["x-close-codes"]
    assert {row["code"]: (row["name"], row["action"]) for row in table} == {
        int(code): (code.name, info.action.value) for code, info in CLOSE_CODES.items()}


@pytest.mark.unit
def test_the_schema_refuses_what_the_protocol_refuses():
    """Not vacuous: frames a step away from real ones fail, each for its reason."""
    ticker = {"symbol": "BTCUSDT", "category": "spot", "lastPrice": "1.5", "bidPrice": None, "bidSize": None,
              "askPrice": None, "askSize": None, "high24h": "2", "low24h": "1", "volume24h": "3", "turnover24h": "4",
              "change24h": "0.01", "markPrice": None, "indexPrice": None, "fundingRate": None,
              "nextFundingTime": None, "ts": 1, "receivedAt": 2}
    good = {"type": "data", "channel": "market-data", "symbol": "BTCUSDT", "stream": "ticker", "seq": 3, "ts": 4,
            "data": ticker}
    assert problems(good, "server") == []
    bad_server = [
        {**good, "data": {**ticker, "lastPrice": 1.5}},  # a float price
        {**good, "epoch": "e"},  # market data carries no epoch
        {k: v for k, v in good.items() if k != "seq"},
        {"type": "data", "channel": "trades", "seq": 1, "ts": 1, "data": {"x": 1}},  # private without epoch
        {"type": "subscribed", "channel": "trades"},  # brokered without offset/epoch
        {"type": "subscribed", "channel": "market-data"},  # market-data without its parameters
        {"type": "resync", "channel": "trades", "reason": "r", "offset": 3},  # offset without epoch
        {"type": "error", "code": "upstream_rejected", "message": "m"},  # without channel/symbol/stream
        {"type": "error", "code": "no_such_code", "message": "m"},
        {"type": "hello"},
    ]
    for frame in bad_server:
        assert problems(frame, "server"), frame
    bad_client = [
        {"type": "subscribe", "channel": "market-data"},
        {"type": "subscribe", "channel": "trades", "data": {"userId": "bob"}},
        {"type": "subscribe", "channel": "nope"},
        {"type": "subscribe", "channel": "trades", "since": {"offset": -1, "epoch": "e"}},
        {"type": "bot_command", "data": {"botId": "b", "command": "stop", "userId": "x"}},
        {"type": "refresh"},
        {"type": "ping", "id": True},
    ]
    for frame in bad_client:
        assert problems(frame, "client"), frame


# =====================================================================================
# Real sessions
# =====================================================================================


@dataclass
class Log:
    server: list[dict[str, Any]] = field(default_factory=list)  # every message a client received
    client: list[dict[str, Any]] = field(default_factory=list)  # every message a client sent (JSON objects)
    refused: list[dict[str, Any]] = field(default_factory=list)  # client messages the gateway refused as malformed
    http: list[tuple[str, Any]] = field(default_factory=list)  # (schema, body) of HTTP requests and answers


class Session(Client):
    def __init__(self, ws: Any, log: Log) -> None:
        super().__init__(ws)
        self.log = log

    def send(self, obj: Any) -> None:
        if isinstance(obj, dict):
            self.log.client.append(obj)
        super().send(obj)

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = super().recv(timeout)
        self.log.server.append(msg)
        return msg

    def ask(self, msg: dict[str, Any], *types: str, timeout: float = 5.0) -> dict[str, Any]:
        self.send(msg)
        return self.recv_until(lambda m: m["type"] in types, timeout)

    def refused(self, msg: dict[str, Any], code: str) -> None:
        """A message the gateway must refuse as malformed: the schema must refuse it too."""
        self.ws.send(json.dumps(msg))
        self.log.refused.append(msg)
        reply = self.recv_until(lambda m: m["type"] == "error")
        assert reply["code"] == code, (msg, reply)

    def data(self, channel: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.recv_until(lambda m: m["type"] == "data" and m["channel"] == channel, timeout)


def _connect(gw: GatewayProcess, log: Log, user: str, **claims: Any) -> Session:
    session = Session(gw.connect(token=gw.token(user, **claims)).ws, log)
    assert session.recv()["type"] == "connection"
    return session


def _http(log: Log, url: str, body: Any, schema: str | None, headers: dict[str, str] | None = None,
          method: str = "POST") -> tuple[int, Any]:
    if schema is not None:
        log.http.append((schema, body))
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        status, answer = err.code, json.loads(err.read())
    log.http.append(({202: "PublishAccepted", 200: "PublishBatchAnswer"}.get(status, "HttpError"), answer))
    return status, answer


def _publish(gw: GatewayProcess, log: Log, channel: str, user: str, data: Any, **extra: Any) -> dict[str, Any]:
    status, body = _http(log, gw.http + "/api/publish", {"channel": channel, "user": user, "data": data, **extra},
                         "PublishRequest", {"Authorization": f"Bearer {KEY}"})
    assert status == 202, body
    return body


def _requests_errors_and_private_channels(gw: GatewayProcess, log: Log) -> None:
    c = _connect(gw, log, "alice")
    c.ask({"type": "subscribe", "channel": "market-data", "data": {"symbol": "BTCUSDT"}}, "subscribed")
    c.ask({"type": "unsubscribe", "channel": "market-data", "data": {"symbol": "BTCUSDT"}}, "unsubscribed")
    c.ask({"type": "subscribe", "channel": "positions", "id": "r1"}, "subscribed")
    c.ask({"type": "subscribe", "channel": "positions", "id": "r1"}, "subscribed")  # already
    c.ask({"type": "unsubscribe", "channel": "positions", "id": 7}, "unsubscribed")
    c.ask({"type": "unsubscribe", "channel": "trades"}, "unsubscribed")  # wasSubscribed false
    c.ask({"type": "subscribe", "channel": "system-health", "since": {"offset": 1, "epoch": "x"}}, "subscribed")
    for ping in ({"type": "ping"}, {"type": "ping", "data": {"t": 1, "n": [1, 2]}, "id": "p"},
                 {"type": "ping", "data": "text", "id": 42}):
        c.ask(ping, "pong")
    c.ask({"type": "refresh", "token": gw.token("alice"), "id": "r"}, "refreshed")
    assert c.ask({"type": "refresh", "token": gw.token("mallory")}, "error")["code"] == "token_subject_mismatch"
    assert c.ask({"type": "refresh", "token": "not.a.jwt"}, "error")["code"] == "invalid_token"
    assert c.ask({"type": "subscribe", "channel": "bot-commands"}, "error")["code"] == "forbidden"
    assert c.ask({"type": "bot_command", "id": "c1", "data": {"botId": "b1", "command": "stop"}},
                 "error")["code"] == "no_service"
    c.refused({"type": "subscribe", "channel": "nope", "id": "r9"}, "unknown_channel")
    c.refused({"type": "teleport"}, "unknown_type")
    c.refused({"type": "subscribe"}, "invalid_message")
    c.refused({"type": "subscribe", "channel": "market-data", "data": {"symbol": "!"}}, "invalid_params")
    c.refused({"type": "subscribe", "channel": "trades", "data": {"userId": "bob"}}, "forbidden")
    c.refused({"type": "subscribe", "channel": "signals", "data": {"depth": 1}}, "invalid_params")
    c.refused({"type": "subscribe", "channel": "trades", "since": {"offset": "3", "epoch": "e"}}, "invalid_message")
    c.refused({"type": "bot_command", "data": {"botId": "b1", "command": "stop", "userId": "x"}}, "forbidden")
    c.refused({"type": "refresh", "token": ""}, "invalid_message")
    c.refused({"type": "ping", "id": ["x"]}, "invalid_message")
    c.ws.send("{not json")  # not even JSON: nothing for a schema to say, but the answer is checked
    assert c.recv_until(lambda m: m["type"] == "error")["code"] == "invalid_json"
    # Every private channel, published one by one and in a batch.
    for channel in sorted(PRIVATE_CHANNELS):
        c.ask({"type": "subscribe", "channel": channel.value}, "subscribed")
        _publish(gw, log, channel.value, "alice", {"channel": channel.value, "n": 1.5, "ok": True})
        c.data(channel.value)
    _publish(gw, log, "signals", "alice", [1, "two"], id="sig-1")
    _publish(gw, log, "signals", "alice", [1, "two"], id="sig-1")  # the same id: a duplicate, stored once
    c.data("signals")
    batch = {"publications": [{"channel": "trades", "user": "alice", "data": {"i": i}, "id": f"b{i}"}
                              for i in range(3)]}
    status, answer = _http(log, gw.http + "/api/publish/batch", batch, "PublishBatchRequest",
                           {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and len(answer["results"]) == 3, answer
    # A batch with one publication the gateway refuses (the schema too: not sent as a valid request).
    mixed = {"publications": [batch["publications"][0], {"channel": "market-data", "user": "alice", "data": {}}]}
    status, answer = _http(log, gw.http + "/api/publish/batch", mixed, None, {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and answer["results"][0]["duplicate"] is True, answer
    assert answer["results"][1]["error"] == "not_publishable", answer
    assert http_problems("PublishBatchRequest", mixed)
    for _ in range(3):
        c.data("trades")
    for wrong in ({"channel": "nope", "user": "alice", "data": 1}, {"channel": "trades", "data": 1}):
        assert _http(log, gw.http + "/api/publish", wrong, None, {"Authorization": f"Bearer {KEY}"})[0] == 400
    assert _http(log, gw.http + "/api/publish", {"channel": "trades", "user": "a", "data": 1}, None)[0] == 401
    c.close()


def _recovery(gw: GatewayProcess, log: Log) -> None:
    c = _connect(gw, log, "rob")
    c.ask({"type": "subscribe", "channel": "trades"}, "subscribed")
    for i in range(3):
        _publish(gw, log, "trades", "rob", {"i": i})
    last = [c.data("trades") for _ in range(3)][-1]
    c.close()
    for i in range(3, 5):
        _publish(gw, log, "trades", "rob", {"i": i})
    c = _connect(gw, log, "rob")
    since = {"offset": last["seq"], "epoch": last["epoch"]}
    assert c.ask({"type": "subscribe", "channel": "trades", "since": since}, "subscribed")["recovered"] is True
    c.data("trades"), c.data("trades")
    stale = {"offset": 1, "epoch": "another-epoch"}
    assert c.ask({"type": "subscribe", "channel": "positions", "since": stale}, "subscribed")["recovered"] is False
    c.close()


def _bot_commands(gw: GatewayProcess, log: Log) -> None:
    service = _connect(gw, log, "bot-engine", role="service")
    service.ask({"type": "subscribe", "channel": "bot-commands"}, "subscribed")
    user = _connect(gw, log, "grace")
    user.ask({"type": "bot_command", "id": "c2", "data": {"botId": "bot-7", "command": "stop",
                                                          "params": {"reason": "x"}}}, "bot_command_ack")
    user.ask({"type": "bot_command", "id": 3, "data": {"botId": "bot-7", "command": "start",
                                                        "commandId": "cmd-3", "timeoutMs": 60000}},
             "bot_command_ack")
    service.data("bot-commands")
    sent = service.data("bot-commands")["data"]
    for state, result in (("accepted", None), ("succeeded", {"started": True})):
        report = {"commandId": sent["commandId"], "userId": "grace", "state": state}
        if result is not None:
            report["result"] = result
        service.ask({"type": "bot_command_report", "id": "r", "data": report}, "bot_command_report_ack")
        user.recv_until(lambda m, state=state: m["type"] == "bot_command_result" and m["data"]["state"] == state)
    user.ask({"type": "bot_command_status", "id": "q", "data": {"commandId": "cmd-3"}}, "bot_command_result")
    assert service.ask({"type": "bot_command_report", "id": "late", "data": {
        "commandId": "cmd-3", "userId": "grace", "state": "failed"}}, "error")["code"] == "invalid_state"
    user.ask({"type": "bot_command", "id": 4, "data": {"botId": "bot-7", "command": "start", "commandId": "cmd-3"}},
             "bot_command_ack")
    service.close(), user.close()


def _market_data(gw: GatewayProcess, log: Log) -> None:
    announced = gw.wait_for_log(lambda rec: "simulated exchange on" in rec.get("msg", ""))
    control = "http://127.0.0.1:" + re.search(r":(\d+)/", announced["msg"]).group(1) + "/control/fault"
    c = _connect(gw, log, "md")
    c.ask({"type": "subscribe", "channel": "market-data",
           "data": {"symbol": "BTCUSDT", "category": "linear", "streams": "ticker"}}, "subscribed")
    c.ask({"type": "subscribe", "channel": "market-data",
           "data": {"symbol": "btcusdt", "exchange": "bybit",
                    "streams": ["ticker", "trades", "orderbook", "orderbook.1", "kline.1"]}}, "subscribed")
    wanted = {("linear", "ticker"), ("spot", "ticker"), ("spot", "trades"), ("spot", "orderbook.50"),
              ("spot", "orderbook.1"), ("spot", "kline.1")}
    deadline = time.monotonic() + 15
    while wanted:
        assert time.monotonic() < deadline, f"no market data for {wanted}"
        m = c.recv()
        if m["type"] == "data":
            wanted.discard((m["data"]["category"], m["stream"]))
    assert _http(Log(), control, {"fault": "skip_u", "symbol": "BTCUSDT", "category": "spot"}, None)[0] == 200
    c.recv_until(lambda m: m.get("stream") == "orderbook.50" and m["data"].get("resync") is True, 10)
    for channel in ("time-sync", "system-health"):
        c.ask({"type": "subscribe", "channel": channel}, "subscribed")
        c.data(channel)
    assert _http(Log(), control, {"fault": "reject_subscribe", "symbol": "NOPEUSDT"}, None)[0] == 200
    c.ask({"type": "subscribe", "channel": "market-data", "data": {"symbol": "NOPEUSDT"}}, "subscribed")
    assert c.recv_until(lambda m: m["type"] == "error", 10)["code"] == "upstream_rejected"
    _http(Log(), control, {"fault": "resume"}, None)
    c.close()


def _refused_upgrades(gw: GatewayProcess, log: Log) -> None:
    for token in (gw.token("alice", ttl=-60), gw.token("alice", secret="x" * 40), "garbage"):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(gw.ws_url, subprotocols=["trading.v1", f"bearer.{token}"], timeout=5)
        assert refused.value.status_code == 401
        log.http.append(("HttpError", json.loads(refused.value.resp_body)))


def _resync(gw: GatewayProcess, log: Log) -> None:
    c = _connect(gw, log, "hank")
    c.ask({"type": "subscribe", "channel": "trades"}, "subscribed")
    _publish(gw, log, "trades", "hank", {"i": 0})
    c.data("trades")
    time.sleep(1.2)  # past HISTORY_TTL (1 s): the next publication starts a new history
    _publish(gw, log, "trades", "hank", {"i": 1})
    c.recv_until(lambda m: m["type"] == "resync")
    c.data("trades")
    c.close()


def _library_session(gw: GatewayProcess, log: Log) -> None:
    """The Python client: a bot that subscribes to everything it may, commands, pings and refreshes its token."""
    import asyncio

    def trace(direction: str, text: str) -> None:
        (log.client if direction == "send" else log.server).append(json.loads(text))

    async def session() -> None:
        async with AsyncClient(gw.ws_url, get_token=lambda: gw.token("lib", ttl=3), trace=trace) as client:
            for channel in ("bot-status", "trades", "positions", "signals", "time-sync", "system-health"):
                await client.subscribe(channel)
            await client.subscribe_market("ETHUSDT", ["orderbook", "ticker"], category="spot")
            await client.ping({"hello": ["world"]})
            with pytest.raises(Exception, match="no_service"):
                await client.bot_command("bot-1", "start", {"size": 1})
            Publisher(gw.http, api_key=KEY).publish_many(
                [Publication("signals", "lib", {"n": i}) for i in range(3)])
            seen = 0
            while not (seen >= 3 and client.stats["refreshes"] >= 1):
                event = await client.next_event(timeout=10)
                seen += isinstance(event, Data) and event.channel == "signals"
                assert not isinstance(event, Refreshed) or event.expires_at > 0

    asyncio.run(asyncio.wait_for(session(), 20))


@pytest.fixture(scope="module")
def session_log() -> Iterator[Log]:
    log = Log()
    main_env = {"MARKET_SOURCE": "simulator", "STATUS_INTERVAL": "300", "SERVICE_API_KEY": KEY,
                "POPULAR_PAIRS": "BTCUSDT,ETHUSDT"}
    with GatewayProcess(main_env) as gw:
        _requests_errors_and_private_channels(gw, log)
        _recovery(gw, log)
        _bot_commands(gw, log)
        _market_data(gw, log)
        _refused_upgrades(gw, log)
        _library_session(gw, log)
    with GatewayProcess({"SERVICE_API_KEY": KEY, "HISTORY_TTL": "1000"}) as gw:
        _resync(gw, log)
    yield log


def _report(frames: list[tuple[Any, list[str]]]) -> str:
    return "\n".join(f"{json.dumps(frame)[:300]}\n  -> " + "\n  -> ".join(why) for frame, why in frames[:10])


@pytest.mark.slow
def test_every_server_frame_of_the_session_matches_the_document(session_log: Log):
    failures = [(f, why) for f in session_log.server if (why := problems(f, "server"))]
    assert not failures, _report(failures)
    kinds = {f["type"] for f in session_log.server}
    assert kinds == set(WS["server"]), f"the session never produced {set(WS['server']) - kinds}"
    channels = {f["channel"] for f in session_log.server if f["type"] == "data"}
    assert channels == {c.value for c in Channel}, f"no data seen on {set(c.value for c in Channel) - channels}"
    streams = {f["stream"].split(".")[0] for f in session_log.server if f.get("stream")}
    assert streams >= {"ticker", "trades", "orderbook", "kline"}


@pytest.mark.slow
def test_every_client_frame_matches_and_every_refused_one_does_not(session_log: Log):
    failures = [(f, why) for f in session_log.client if (why := problems(f, "client"))]
    assert not failures, _report(failures)
    assert {f["type"] for f in session_log.client} == set(WS["client"])
    accepted = [f for f in session_log.refused if not problems(f, "client")]
    assert not accepted, f"the gateway refused these as malformed, the schema accepts them: {accepted}"
    assert len(session_log.refused) >= 10


@pytest.mark.slow
def test_every_http_body_of_the_session_matches_the_document(session_log: Log):
    failures = [((schema, body), why) for schema, body in session_log.http if (why := http_problems(schema, body))]
    assert not failures, _report(failures)
    assert {schema for schema, _ in session_log.http} >= {"PublishRequest", "PublishAccepted", "PublishBatchRequest",
                                                          "PublishBatchAnswer", "HttpError"}


# =====================================================================================
# docs/protocol.md's examples
# =====================================================================================


@pytest.mark.unit
def test_the_examples_of_protocol_md_match_the_document():
    from tests.test_protocol_docs import CLIENT, HTTP_REQUESTS, SERVER

    failures = []
    for example in SERVER:
        if example.kind == "server":
            why = problems(example.obj, "server")
        else:
            _, _, path, status = example.kind.split()
            schema = {("/api/publish", "202"): "PublishAccepted",
                      ("/api/publish/batch", "200"): "PublishBatchAnswer"}.get((path, status))
            if schema is None and not status.startswith(("4", "5")):
                continue  # a route the document does not describe (the demo token)
            why = http_problems(schema or "HttpError", example.obj)
        if why:
            failures.append((example.obj, [f"docs/protocol.md:{example.line}", *why]))
    for example in CLIENT:
        if why := problems(example.obj, "client"):
            failures.append((example.obj, [f"docs/protocol.md:{example.line}", *why]))
    for example in HTTP_REQUESTS:
        schema = {"/api/publish": "PublishRequest", "/api/publish/batch": "PublishBatchRequest"}.get(
            example.kind.split()[2])
        if schema is not None and (why := http_problems(schema, example.obj)):
            failures.append((example.obj, [f"docs/protocol.md:{example.line}", *why]))
    assert not failures, _report(failures)
