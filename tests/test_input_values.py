"""Nothing is acknowledged that is not delivered: arbitrary JSON values through every entry.

Each value goes through a real gateway over real sockets, at each place
input enters: a client message (``ping`` data, echoed in the ``pong``), a
``bot_command``'s ``params`` (to a service connection) and ``POST
/api/publish`` (to a subscriber). The property: the sender gets a clear
refusal (``invalid_message`` / ``invalid_json``, or HTTP 400) and nothing is
published, or the value arrives exactly as sent. Never an acknowledgement
without delivery, never a 1011, never a hole in a channel's sequence.

The values are built with their JSON text, so the test knows which ones
no JSON peer can receive: numbers out of range (``1e999``), lone surrogate
escapes (``"\\ud800"``), nesting deeper than the limit. Every other value
must arrive.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.messages import MAX_DEPTH
from tests.harness import Client, GatewayProcess

KEY = "input-values-test-key-placeholder"


@dataclass(frozen=True)
class Sample:
    """A JSON value and its text; ``bad`` when no JSON peer could receive it; ``depth``: nested containers."""

    text: str
    value: Any
    bad: bool
    depth: int


def _leaf() -> st.SearchStrategy[Sample]:
    good = st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ).map(lambda v: Sample(json.dumps(v, ensure_ascii=False), v, False, 0))
    huge = st.sampled_from(["1e999", "-1e999", "1E400", "-2.5e308"]).map(lambda t: Sample(t, None, True, 0))
    lone = st.tuples(st.text(max_size=5), st.integers(0xD800, 0xDFFF)).map(
        lambda p: Sample(json.dumps(p[0])[:-1] + f"\\u{p[1]:04x}" + '"', None, True, 0))
    return st.one_of(good, good, good, huge, lone)


def _containers(children: st.SearchStrategy[Sample]) -> st.SearchStrategy[Sample]:
    def array(items: list[Sample]) -> Sample:
        return Sample("[" + ",".join(i.text for i in items) + "]", [i.value for i in items],
                      any(i.bad for i in items), 1 + max((i.depth for i in items), default=0))

    def obj(pairs: dict[str, Sample]) -> Sample:
        text = "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{s.text}" for k, s in pairs.items()) + "}"
        return Sample(text, {k: s.value for k, s in pairs.items()}, any(s.bad for s in pairs.values()),
                      1 + max((s.depth for s in pairs.values()), default=0))

    return st.one_of(st.lists(children, max_size=4).map(array),
                     st.dictionaries(st.text(max_size=8), children, max_size=4).map(obj))


def _deep(depth: int) -> Sample:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return Sample("[" * depth + "]" * depth, value, False, depth)


SAMPLES = st.one_of(
    st.recursive(_leaf(), _containers, max_leaves=12),
    st.integers(MAX_DEPTH - 4, MAX_DEPTH + 4).map(_deep),
)
OBJECTS = _containers(st.recursive(_leaf(), _containers, max_leaves=8)).filter(lambda s: s.text.startswith("{"))


@pytest.fixture(scope="module")
def gw():
    # Refusals are the point here: budgets high enough that no refusal closes the connection.
    with GatewayProcess({"SERVICE_API_KEY": KEY, "LOG_LEVEL": "INFO", "WS_ERROR_BUDGET": "1000000",
                         "WS_COMMAND_RATE": "100000", "WS_COMMAND_BURST": "100000"}) as g:
        yield g


@pytest.fixture(scope="module")
def peers(gw):
    """A user, a service subscribed to bot-commands, and the user subscribed to its own signals."""
    service = gw.connect(token=gw.token("engine", role="service"))
    service.recv()
    assert service.request({"type": "subscribe", "channel": "bot-commands"})["type"] == "subscribed"
    user = gw.connect(token=gw.token("vera", bots=["bot-1"]))
    user.recv()
    assert user.request({"type": "subscribe", "channel": "signals"})["type"] == "subscribed"
    yield user, service
    user.close(), service.close()


def _refused(reply: dict[str, Any]) -> bool:
    return reply.get("type") == "error" and reply.get("code") in ("invalid_message", "invalid_json")


def _alive(client: Client) -> None:
    """The connection survived (no 1011): it still answers."""
    assert client.request({"type": "ping", "id": "alive"})["type"] == "pong"


def _refusable(sample: Sample, envelope: int) -> bool:
    """No peer can receive it, or inside an ``envelope`` of that many levels it nests too deep."""
    return sample.bad or sample.depth + envelope > MAX_DEPTH


def _delivered(sample: Sample, got: Any) -> None:
    assert got == sample.value and json.dumps(got) == json.dumps(sample.value)


@given(sample=SAMPLES)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_client_message_is_refused_or_echoed_exactly(peers, sample):
    user, _ = peers
    reply = user.request('{"type":"ping","id":"p","data":' + sample.text + "}")
    if _refusable(sample, 1):
        assert _refused(reply), reply
    else:
        assert reply["type"] == "pong"
        _delivered(sample, reply["data"])
    _alive(user)


@given(sample=OBJECTS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_bot_command_params_are_refused_or_reach_the_service_exactly(peers, sample):
    user, service = peers
    reply = user.request('{"type":"bot_command","id":"c","data":{"botId":"bot-1","command":"set","params":'
                         + sample.text + "}}")
    if _refusable(sample, 3):
        assert _refused(reply), reply
        _alive(user)
        return
    assert reply["type"] == "bot_command_ack" and reply["data"]["deliveredTo"] == 1
    command = service.recv_until(lambda m: m.get("channel") == "bot-commands")
    assert command["data"]["commandId"] == reply["data"]["commandId"]
    _delivered(sample, command["data"]["params"])


def _publish(gw: GatewayProcess, text: str) -> tuple[int, dict[str, Any]]:
    body = ('{"channel":"signals","user":"vera","data":' + text + "}").encode("utf-8")
    request = urllib.request.Request(gw.http + "/api/publish", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@given(sample=SAMPLES)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_published_data_is_refused_or_reaches_the_subscriber_exactly(gw, peers, sample):
    user, _ = peers
    status, body = _publish(gw, sample.text)
    if _refusable(sample, 1) or sample.text == "null":  # data: null is "no data", refused too
        assert status == 400, body
        assert body["error"] in ("invalid_message", "invalid_json")
        return
    assert status == 202, body
    message = user.recv_until(lambda m: m.get("type") == "data" and m.get("channel") == "signals")
    assert message["seq"] == body["offset"]
    _delivered(sample, message["data"])


def test_a_refused_publication_leaves_no_hole_in_the_sequence(gw, peers):
    user, _ = peers
    first = _publish(gw, '{"n":1}')
    assert first[0] == 202
    assert _publish(gw, '{"n":1e999}')[0] == 400
    assert _publish(gw, '"\\udc00"')[0] == 400
    second = _publish(gw, '{"n":2}')
    assert second[0] == 202 and second[1]["offset"] == first[1]["offset"] + 1
    seen = [user.recv_until(lambda m: m.get("type") == "data")["seq"] for _ in range(2)]
    assert seen == [first[1]["offset"], second[1]["offset"]]


def test_no_traceback_in_the_log(gw, peers):
    user, _ = peers
    for text in ('{"type":"ping","id":"\\ud800"}', '{"type":"ping","data":1e999}', '{"type":"subscribe",'
                 '"channel":"signals","id":"\\udfff"}'):
        assert _refused(user.request(text))
    _alive(user)
    assert not [line for line in gw.lines if "Traceback" in line or '"level": "ERROR"' in line]
