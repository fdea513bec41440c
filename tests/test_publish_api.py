"""The publishing API for services: batches, idempotency keys, payload checks, scopes.

Real gateways over real sockets, with the memory broker (one process) and
with Redis (two processes on one real redis-server: the service publishes
to node A, the subscriber is on node B). The rule throughout: a publication
answered with an offset is one the subscriber receives, exactly once, as
sent; a publication refused or not stored is never received.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from itertools import count
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.broker import BrokerUnavailable, Outgoing, Stored
from brokers.memory import MemoryBroker
from gateway.http import _encode
from protocol.messages import MAX_DEPTH, dumps
from tests.harness import ROOT, Client, GatewayProcess
from tests.redis_server import RedisServer
from tests.test_input_values import SAMPLES, Sample
from tests.test_recovery import Cluster

SERVICE_KEY = "test-service-key-placeholder"
BATCH_MAX, BODY_BYTES, DATA_BYTES = 50, 65536, 2048
# Cluster adds HISTORY_SIZE=20: a channel remembers max(20, 50) ids.
LIMITS = {"PUBLISH_BATCH_MAX": str(BATCH_MAX), "PUBLISH_BODY_BYTES": str(BODY_BYTES),
          "PUBLISH_DATA_BYTES": str(DATA_BYTES), "WS_ERROR_BUDGET": "1000000"}
PRIVATE = ("bot-status", "trades", "positions", "signals")
_users = count(1)


def fresh_user(prefix: str = "u") -> str:
    return f"{prefix}{next(_users)}-{os.getpid()}"


def post(node: GatewayProcess, path: str, body: Any, key: str | None = SERVICE_KEY) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(node.http + path, data, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def batch(node: GatewayProcess, items: list[Any] | str, key: str | None = SERVICE_KEY) -> tuple[int, Any]:
    """``items`` as values, or the body's text."""
    return post(node, "/api/publish/batch", items if isinstance(items, str) else {"publications": items}, key)


def results(node: GatewayProcess, items: list[Any] | str, key: str | None = SERVICE_KEY) -> list[dict[str, Any]]:
    status, body = batch(node, items, key)
    assert status == 200, body
    return body["results"]


def stored(result: Stored | BrokerUnavailable) -> Stored:
    assert isinstance(result, Stored), result
    return result


def codes(answer: list[dict[str, Any]]) -> list[str]:
    return [r.get("error", "ok") for r in answer]


def subscriber(node: GatewayProcess, user: str, channels: tuple[str, ...] = ("trades",)) -> Client:
    c = node.connect(user)
    assert c.recv()["type"] == "connection"
    for channel in channels:
        assert c.request({"type": "subscribe", "channel": channel})["type"] == "subscribed"
    return c


def received(c: Client, n: int) -> list[dict[str, Any]]:
    return [c.recv_until(lambda m: m["type"] == "data", timeout=10) for _ in range(n)]


def nothing_more(c: Client) -> None:
    """No further data message: the answer to a ping comes next."""
    reply = c.request({"type": "ping", "id": "end"})
    assert reply["type"] == "pong", reply


@pytest.fixture(scope="module", params=["memory", "redis"])
def cluster(request):
    c = Cluster(request.param, LIMITS)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def gw():
    c = Cluster("memory", LIMITS)
    yield c.a
    c.stop()


# -- each publication on its own ----------------------------------------------------------------


def _nested(depth: int) -> str:
    """An object nested ``depth`` levels deep, as text."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def test_each_publication_is_checked_alone_and_answered_in_order(cluster):
    user = fresh_user()
    c = subscriber(cluster.b, user)
    u = json.dumps(user)

    def item(data: str | None, channel: str = "trades", user: str | None = u, extra: str = "") -> str:
        fields = [f'"channel":"{channel}"'] + ([f'"user":{user}'] if user else []) \
            + ([f'"data":{data}'] if data is not None else [])
        return "{" + ",".join(fields) + extra + "}"

    items = [
        (item('{"n":1}'), "ok"),
        (item("[1]"), "invalid_message"),  # not an object
        (item("{}", channel="nope"), "unknown_channel"),
        (item("{}", channel="market-data"), "not_publishable"),
        (item("{}", user=None), "invalid_message"),  # no user
        (item(None), "invalid_message"),  # no data
        (item('{"n":1e999}'), "invalid_message"),  # not finite
        (item('{"s":"\\ud800"}'), "invalid_message"),  # not UTF-8
        (item('{"p":"' + "x" * DATA_BYTES + '"}'), "too_large"),
        (item('{"n":2}', extra=',"id":5'), "invalid_message"),  # id not a string
        ('"a string"', "invalid_message"),
        # 32 levels counting the publication itself: as POST /api/publish takes it; 33: refused.
        (item(_nested(MAX_DEPTH - 1)), "ok"),
        (item(_nested(MAX_DEPTH)), "invalid_message"),
        (item('{"n":3}'), "ok"),
    ]
    answer = results(cluster.a, '{"publications":[' + ",".join(text for text, _ in items) + "]}")
    assert codes(answer) == [expected for _, expected in items]
    assert all(r["message"] for r in answer if "error" in r)
    accepted = [r for r in answer if "offset" in r]
    assert [r["offset"] for r in accepted] == list(range(accepted[0]["offset"], accepted[0]["offset"] + 3))
    got = received(c, 3)
    assert [(m["seq"], m["epoch"]) for m in got] == [(r["offset"], r["epoch"]) for r in accepted]
    assert got[0]["data"] == {"n": 1} and got[2]["data"] == {"n": 3}
    nothing_more(c)
    # Every item valid: the body is decoded in one pass, and answered the same way.
    answer = results(cluster.a, [{"channel": "trades", "user": user, "data": {"n": i}} for i in range(4, 7)])
    assert [m["data"] for m in received(c, 3)] == [{"n": 4}, {"n": 5}, {"n": 6}]
    assert [r["offset"] for r in answer] == list(range(accepted[-1]["offset"] + 1, accepted[-1]["offset"] + 4))
    nothing_more(c)
    c.close()


def test_a_batch_for_many_channels_keeps_each_channels_order(cluster):
    users = [fresh_user(), fresh_user()]
    clients = [subscriber(cluster.b, user, ("trades", "signals")) for user in users]
    items = [{"channel": ("trades", "signals")[i % 2], "user": users[i % 3 % 2], "data": {"i": i}} for i in range(30)]
    answer = results(cluster.a, items)
    assert codes(answer) == ["ok"] * 30
    for user, c in zip(users, clients, strict=True):
        mine = [(item, r) for item, r in zip(items, answer, strict=True) if item["user"] == user]
        got = received(c, len(mine))
        for channel in ("trades", "signals"):
            sent = [(r["offset"], item["data"]) for item, r in mine if item["channel"] == channel]
            assert [(m["seq"], m["data"]) for m in got if m["channel"] == channel] == sent
            assert [o for o, _ in sent] == list(range(sent[0][0], sent[0][0] + len(sent)))
        nothing_more(c)
        c.close()


# -- idempotency keys ----------------------------------------------------------------------------


def test_a_retried_batch_publishes_nothing_twice(cluster):
    alice, bob = fresh_user("alice"), fresh_user("bob")
    ca, cb = subscriber(cluster.b, alice), subscriber(cluster.b, bob, ("trades", "positions"))
    items = [{"channel": "trades", "user": alice, "data": {"i": 0}, "id": "t-0"},
             {"channel": "trades", "user": bob, "data": {"i": 1}, "id": "t-0"},  # same id, another channel
             {"channel": "positions", "user": bob, "data": {"i": 2}, "id": "t-0"},
             {"channel": "trades", "user": alice, "data": {"i": 3}, "id": "t-1"},
             {"channel": "trades", "user": alice, "data": {"i": 4}, "id": "t-1"}]  # a duplicate within the batch
    first = results(cluster.a, items)
    assert codes(first) == ["ok"] * 5
    assert [r.get("duplicate", False) for r in first] == [False, False, False, False, True]
    assert first[4]["offset"] == first[3]["offset"]
    # The retry (to the other node with Redis): the same offsets, nothing published.
    retry = results(cluster.b, items)
    assert [(r["offset"], r["epoch"]) for r in retry] == [(r["offset"], r["epoch"]) for r in first]
    assert all(r["duplicate"] is True for r in retry)
    # A retry with more: only the new one is published.
    more = results(cluster.a, [*items, {"channel": "trades", "user": alice, "data": {"i": 5}, "id": "t-2"}])
    assert [r.get("duplicate", False) for r in more] == [True] * 5 + [False]
    assert more[5]["offset"] == first[3]["offset"] + 1
    # POST /api/publish shares the keys.
    status, single = post(cluster.b, "/api/publish", {"channel": "trades", "user": alice, "data": {"i": 9},
                                                      "id": "t-2"})
    assert status == 202 and single["duplicate"] is True and single["offset"] == more[5]["offset"]
    status, single = post(cluster.a, "/api/publish", {"channel": "trades", "user": alice, "data": {"i": 6},
                                                      "id": "t-3"})
    assert status == 202 and "duplicate" not in single
    status, again = post(cluster.b, "/api/publish", {"channel": "trades", "user": alice, "data": {"i": 6},
                                                     "id": "t-3"})
    assert status == 202 and again["duplicate"] is True and again["offset"] == single["offset"]
    # Each publication reached its subscriber exactly once.
    assert [m["data"]["i"] for m in received(ca, 4)] == [0, 3, 5, 6]
    assert sorted(m["data"]["i"] for m in received(cb, 2)) == [1, 2]
    nothing_more(ca), nothing_more(cb)
    ca.close(), cb.close()


def test_the_same_batch_on_two_nodes_at_once_is_published_once(cluster):
    user = fresh_user()
    c = subscriber(cluster.b, user)
    items = [{"channel": "trades", "user": user, "data": {"i": i}, "id": f"race-{i}"} for i in range(BATCH_MAX)]
    answers: dict[str, list[dict[str, Any]]] = {}
    barrier = threading.Barrier(2)

    def send(name: str, node: GatewayProcess) -> None:
        barrier.wait()
        answers[name] = results(node, items)

    threads = [threading.Thread(target=send, args=(name, node)) for name, node in (("a", cluster.a), ("b", cluster.b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    a, b = answers["a"], answers["b"]
    assert [r["offset"] for r in a] == [r["offset"] for r in b]
    assert all(r.get("duplicate", False) != s.get("duplicate", False) for r, s in zip(a, b, strict=True))
    got = received(c, BATCH_MAX)
    assert [m["data"]["i"] for m in got] == list(range(BATCH_MAX))
    nothing_more(c)
    c.close()


@pytest.mark.unit
def test_the_memory_broker_remembers_ids_within_the_window_and_the_history():
    now = [1000.0]
    broker = MemoryBroker(history_size=5, history_ttl=60, clock=lambda: now[0])
    delivered: list[int] = []
    broker.on_publication = lambda pub: delivered.append(pub.offset)

    def publish(*ids: str) -> list[Stored | BrokerUnavailable]:
        return broker.publish_many([Outgoing("trades#w", {"id": i}, int(now[0] * 1000), None, i) for i in ids],
                                   id_window=3)

    first = publish("a", "b", "c")
    assert [r.publication.offset for r in first if isinstance(r, Stored)] == [1, 2, 3]
    again = publish("a", "b", "c")
    assert all(isinstance(r, Stored) and r.duplicate for r in again) and delivered == [1, 2, 3]
    publish("d")  # the fourth id: "a" falls out of the window of 3
    assert [(r.duplicate, r.publication.offset) for r in publish("a", "d") if isinstance(r, Stored)] == [
        (False, 5), (True, 4)]
    now[0] += 61  # past the history's time: a new epoch, no id remembered
    fresh = publish("d")[0]
    assert isinstance(fresh, Stored) and not fresh.duplicate and fresh.publication.offset == 1
    assert fresh.publication.epoch != stored(first[0]).publication.epoch
    now[0] += 30
    publish("e")
    now[0] += 31  # "d" is older than the history's time, "e" is not
    assert [r.duplicate for r in publish("d", "e") if isinstance(r, Stored)] == [False, True]


@pytest.mark.unit
def test_the_memory_broker_forgets_channels_whose_history_expired():
    now = [1000.0]
    broker = MemoryBroker(history_ttl=10, clock=lambda: now[0])
    for i in range(100):
        broker.publish(f"trades#u{i}", {"i": i}, int(now[0] * 1000))
    assert broker.stats()["channels"] == 100
    now[0] += 11
    broker.publish("trades#other", {}, int(now[0] * 1000))
    assert broker.stats()["channels"] == 1


# -- scopes ----------------------------------------------------------------------------------------


def test_a_service_token_publishes_only_to_the_channels_its_claims_name(gw):
    user = fresh_user()
    c = subscriber(gw, user, ("trades", "signals"))
    scoped = gw.token("signal-engine", role="service", channels=["signals", "nope", "market-data"])
    items = [{"channel": "trades", "user": user, "data": {"n": 1}},
             {"channel": "signals", "user": user, "data": {"n": 2}}]
    answer = results(gw, items, key=scoped)
    assert codes(answer) == ["forbidden", "ok"]
    assert "trades" in answer[0]["message"]
    status, body = post(gw, "/api/publish", items[0], key=scoped)
    assert (status, body["error"]) == (403, "forbidden")
    status, _ = post(gw, "/api/publish", items[1], key=scoped)
    assert status == 202
    # Without the claim: every publishable channel, as before; so for the service key.
    unscoped = gw.token("bot-engine", role="service")
    assert codes(results(gw, items, key=unscoped)) == ["ok", "ok"]
    assert codes(results(gw, items)) == ["ok", "ok"]
    # A claim that cannot be read as a list of channels allows none.
    for claim in ("signals", [1], {"signals": True}, []):
        broken = gw.token("odd", role="service", channels=claim)
        assert codes(results(gw, items, key=broken)) == ["forbidden", "forbidden"], claim
    # Not a service credential at all.
    for key in (gw.token(user), "wrong-key", None):
        status, body = batch(gw, items, key=key)
        assert (status, body["error"]) == (401, "unauthorized")
    got = received(c, 6)
    assert [m["data"]["n"] for m in got if m["channel"] == "trades"] == [1, 1]
    assert [m["data"]["n"] for m in got if m["channel"] == "signals"] == [2, 2, 2, 2]
    nothing_more(c)
    c.close()


# -- limits ----------------------------------------------------------------------------------------


def test_limits_are_answered_with_their_codes_and_publish_nothing(gw):
    user = fresh_user()
    c = subscriber(gw, user)
    item = {"channel": "trades", "user": user, "data": {"n": 1}}
    status, body = batch(gw, [item] * (BATCH_MAX + 1))
    assert (status, body["error"]) == (400, "too_many_publications")
    assert str(BATCH_MAX) in body["message"]
    padded = [{**item, "data": {"p": "x" * 1000}}] * (BODY_BYTES // 1000)  # over the body limit
    status, body = batch(gw, padded)
    assert (status, body["error"]) == (413, "too_large")
    status, body = post(gw, "/api/publish", {**item, "data": {"p": "x" * BODY_BYTES}})
    assert (status, body["error"]) == (413, "too_large")
    # One publication's data: the item is refused, the others are not.
    near = DATA_BYTES - len('{"p":""}')
    answer = results(gw, [{**item, "data": {"p": "x" * near}}, {**item, "data": {"p": "x" * (near + 1)}},
                          {**item, "data": {"p": "é" * (near // 2 + 1)}}])  # counted in UTF-8 bytes
    assert codes(answer) == ["ok", "too_large", "too_large"]
    assert answer[1]["message"] == f"data is {DATA_BYTES + 1} bytes as JSON: at most {DATA_BYTES}"
    status, body = post(gw, "/api/publish", {**item, "data": {"p": "x" * (near + 1)}})
    assert (status, body["error"]) == (413, "too_large")
    # Bodies that are not a batch.
    for text, error in (("nope", "invalid_json"), ("[1]", "invalid_message"),
                        ('{"publications":{}}', "invalid_message"), ('{"items":[]}', "invalid_message"),
                        ('{"publications":[],"x":1e999}', "invalid_message"), ("", "invalid_message")):
        status, body = batch(gw, text)
        assert (status, body["error"]) == (400, error), text
    assert results(gw, []) == []
    got = received(c, 1)
    assert got[0]["data"] == {"p": "x" * near}
    nothing_more(c)
    c.close()


# -- Redis outages ---------------------------------------------------------------------------------


def test_a_batch_during_a_redis_outage_acknowledges_nothing_it_did_not_store():
    cluster = Cluster("redis", LIMITS)
    try:
        user = fresh_user()
        c = subscriber(cluster.b, user)
        items = [{"channel": "trades", "user": user, "data": {"i": i}, "id": f"o-{i}"} for i in range(10)]
        assert codes(results(cluster.a, items[:2])) == ["ok", "ok"]
        assert [m["data"]["i"] for m in received(c, 2)] == [0, 1]
        assert cluster.redis is not None
        cluster.redis.stop()
        answer = results(cluster.a, items)
        assert codes(answer) == ["broker_unavailable"] * 10
        assert all("nothing was published" in r["message"] for r in answer)
        cluster.redis.start()  # empty: a new history
        deadline = time.monotonic() + 15
        while True:
            answer = results(cluster.a, items)
            if codes(answer) == ["ok"] * 10:
                break
            assert set(codes(answer)) == {"broker_unavailable"}, answer
            assert time.monotonic() < deadline, "publishing was still refused"
            time.sleep(0.05)
        assert not any(r.get("duplicate") for r in answer)  # nothing of the refused batch had been stored
        got: list[dict[str, Any]] = []
        while len(got) < 10:  # after the resync (Redis came back empty), the retried batch only
            message = c.recv_until(lambda m: m["type"] in ("data", "resync"), 15)
            if message["type"] == "data":
                got.append(message)
        assert [m["data"]["i"] for m in got] == list(range(10))
        assert [m["seq"] for m in got] == [r["offset"] for r in answer]
        nothing_more(c)
        c.close()
    finally:
        cluster.stop()


def test_a_batch_cut_by_a_frozen_redis_says_what_may_be_stored_and_a_retry_completes_it():
    """Three script calls; Redis freezes after the first: stored, maybe stored, not tried. A retry
    with the same ids publishes exactly what was missing, whatever the frozen call did."""
    from brokers.redis_broker import CHUNK_ITEMS, RedisBroker

    server = RedisServer().start()
    broker = RedisBroker(server.url, history_size=1000, socket_timeout=1.0)
    assert server.proc is not None
    try:
        items = [Outgoing("trades#frozen", {"i": i}, int(time.time() * 1000), None, f"f-{i}")
                 for i in range(2 * CHUNK_ITEMS + 10)]
        script, calls = broker._publish, []

        def freezing(**kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                server.proc.send_signal(signal.SIGSTOP)  # this call is sent, and not answered
            return script(**kwargs)

        broker._publish = freezing
        try:
            first = broker.publish_many(items, id_window=1000)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        done = [stored(r) for r in first[:CHUNK_ITEMS]]
        assert not any(r.duplicate for r in done)
        assert [r.publication.offset for r in done] == list(range(1, CHUNK_ITEMS + 1))
        maybe, untried = first[CHUNK_ITEMS:2 * CHUNK_ITEMS], first[2 * CHUNK_ITEMS:]
        assert all(isinstance(r, BrokerUnavailable) and r.maybe_stored for r in maybe)
        assert all(isinstance(r, BrokerUnavailable) and not r.maybe_stored for r in untried)
        broker._publish = script
        retry = [stored(r) for r in broker.publish_many(items, id_window=1000)]
        offsets = [r.publication.offset for r in retry]
        assert offsets == list(range(1, len(items) + 1))  # each once, in order, whatever the frozen call did
        assert [r.duplicate for r in retry[:CHUNK_ITEMS]] == [True] * CHUNK_ITEMS
        assert [r.duplicate for r in retry[2 * CHUNK_ITEMS:]] == [False] * 10
        entries = broker.redis.xrange("ws:stream:trades#frozen")
        assert [json.loads(fields[b"d"])["i"] for _, fields in entries] == list(range(len(items)))
    finally:
        server.proc.send_signal(signal.SIGCONT)
        broker.close()
        server.cleanup()


# -- arbitrary batches: nothing acknowledged that is not received -----------------------------------


# Values as test_input_values builds them (some no JSON peer can receive), as objects and as anything else.
OBJECTS = SAMPLES.map(lambda s: s if s.text.startswith("{") else
                      Sample('{"v":' + s.text + "}", {"v": s.value}, s.bad, s.depth + 1))
NOT_OBJECTS = SAMPLES.map(lambda s: Sample("[" + s.text + "]", [s.value], s.bad, s.depth + 1)
                          if s.text.startswith("{") else s)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


# Objects every JSON peer can receive (most publications of a service are).
_GOOD = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                               st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
GOOD_OBJECTS = st.dictionaries(st.text(max_size=5), _GOOD, max_size=4).map(
    lambda v: Sample(json.dumps(v, ensure_ascii=False), v, False, _depth(v)))


def _item(fields: dict[str, str]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


@st.composite
def publications(draw: Any, user: str) -> tuple[str, Any]:
    """One item of a batch as text, and what the gateway must answer: ("ok", channel, value, id) or ("error", code)."""
    kind = draw(st.sampled_from(["good"] * 6 + ["data", "channel", "user", "id", "size", "shape"]))
    channel = draw(st.sampled_from(["trades", "trades", *PRIVATE]))
    sample: Sample = draw(st.one_of(GOOD_OBJECTS, GOOD_OBJECTS, GOOD_OBJECTS, OBJECTS))
    pid = draw(st.one_of(st.none(), st.sampled_from(["a", "b"]), st.text(min_size=1, max_size=6)))
    fields = {"channel": json.dumps(channel), "user": json.dumps(user), "data": sample.text}
    if pid is not None:
        fields["id"] = json.dumps(pid)
    undeliverable = sample.bad or sample.depth + 1 > MAX_DEPTH
    if kind == "data":  # data that is not an object (some of it undeliverable too)
        other: Sample = draw(NOT_OBJECTS)
        fields["data"] = other.text
        return _item(fields), ("error", "invalid_message")
    if kind == "shape":
        return draw(st.sampled_from(["[]", "1", "null", '"x"'])), ("error", "invalid_message")
    if undeliverable:  # refused by the decoder before anything else is looked at
        return _item(fields), ("error", "invalid_message")
    if kind == "channel":
        fields["channel"] = json.dumps(draw(st.sampled_from(["nope", "market-data", "bot-commands", "Trades"])))
        code = "unknown_channel" if json.loads(fields["channel"]) in ("nope", "Trades") else "not_publishable"
        return _item(fields), ("error", code)
    if kind == "user":
        bad = draw(st.sampled_from([None, "", "u" * 129, 7]))
        if bad is None:
            del fields["user"]
        else:
            fields["user"] = json.dumps(bad)
        return _item(fields), ("error", "invalid_message")
    if kind == "id":
        fields["id"] = json.dumps(draw(st.sampled_from(["", "i" * 129, 3, ["a"]])))
        return _item(fields), ("error", "invalid_message")
    if kind == "size":
        pad = draw(st.integers(DATA_BYTES - 12, DATA_BYTES + 4))
        value = {"pad": "x" * pad}
        fields["data"] = json.dumps(value)
        if len(dumps(value).encode()) > DATA_BYTES:
            return _item(fields), ("error", "too_large")
        return _item(fields), ("ok", channel, value, pid)
    if len(dumps(sample.value).encode()) > DATA_BYTES:
        return _item(fields), ("error", "too_large")
    return _item(fields), ("ok", channel, sample.value, pid)


@st.composite
def batches(draw: Any) -> tuple[str, list[tuple[str, Any]]]:
    user = fresh_user("h")
    return user, draw(st.lists(publications(user), max_size=12))


def _send_and_check(c: Client, node: GatewayProcess, body: str, items: list[tuple[str, Any]],
                    known: dict[tuple[str, str], tuple[int, str]]) -> None:
    """Send the batch; every answer as the model says; every new publication received once, as sent.

    ``known``: (channel, id) → (offset, epoch) of the ids published so far (this user's channels).
    """
    answer = results(node, body)
    assert len(answer) == len(items)
    new: list[tuple[str, Any, dict[str, Any]]] = []
    for i, ((text, outcome), got) in enumerate(zip(items, answer, strict=True)):
        if outcome[0] == "error":
            assert got.get("error") == outcome[1] and got["message"], (i, text, got)
            continue
        _, channel, value, pid = outcome
        if pid is not None and (channel, pid) in known:
            assert got.get("duplicate") is True and (got["offset"], got["epoch"]) == known[(channel, pid)], \
                (i, text, got)
            continue
        assert "offset" in got and "duplicate" not in got, (i, text, got)
        if pid is not None:
            known[(channel, pid)] = (got["offset"], got["epoch"])
        new.append((channel, value, got))
    messages = received(c, len(new))
    for channel in PRIVATE:
        sent = [(got["offset"], got["epoch"], value) for ch, value, got in new if ch == channel]
        arrived = [(m["seq"], m["epoch"], m["data"]) for m in messages if m["channel"] == channel]
        assert [(o, e) for o, e, _ in arrived] == [(o, e) for o, e, _ in sent]
        assert all(_same_value(a[2], s[2]) for a, s in zip(arrived, sent, strict=True))


def _same_value(got: Any, sent: Any) -> bool:
    return got == sent and json.dumps(got) == json.dumps(sent)  # 1 and 1.0, True and 1 differ


@given(case=batches())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
def test_arbitrary_batches_never_acknowledge_what_the_subscriber_does_not_receive(cluster, case):
    """Mixed batches, each sent twice (the second time to the other node with Redis): every item answered
    as the model says, every publication answered with an offset received exactly once, as sent, at that
    offset; nothing else received. On the retry, an item with an id is a duplicate (the same offset), an
    item without one is a new publication."""
    user, items = case
    c = subscriber(cluster.b, user, PRIVATE)
    try:
        body = '{"publications":[' + ",".join(text for text, _ in items) + "]}"
        known: dict[tuple[str, str], tuple[int, str]] = {}
        _send_and_check(c, cluster.a, body, items, known)
        _send_and_check(c, cluster.b, body, items, known)
        nothing_more(c)
    finally:
        c.close()


# -- the documentation's batch example, and the encoder the size is measured with -------------------


def test_the_documented_batch_example_is_what_the_gateway_answers():
    section = (ROOT / "docs" / "protocol.md").read_text().split("## Publishing (platform services)", 1)[1]
    section = section.split("\n## ", 1)[0]
    spans = re.findall(r"`(\{[^`]*\})`", section.replace("\n", " "))
    request = json.loads(next(s for s in spans if s.startswith('{"publications":[{')))
    documented = json.loads(next(s for s in spans if s.startswith('{"results":[{')))["results"]
    with GatewayProcess({"SERVICE_API_KEY": SERVICE_KEY}) as g:
        answer = results(g, request["publications"])
    assert len(answer) == len(documented) == len(request["publications"])
    for real, doc in zip(answer, documented, strict=True):
        assert real.keys() == doc.keys()
        if "error" in doc:
            assert real == doc


@pytest.mark.unit
@given(sample=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(),
                                     st.floats(allow_nan=False, allow_infinity=False)),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=20))
@settings(max_examples=300, deadline=None)
def test_the_size_is_measured_on_the_text_subscribers_get(sample):
    assert _encode(sample) == dumps(sample)
