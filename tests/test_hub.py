"""The hub without sockets: sessions, the per-user limit, channels and the counts /ws/stats shows.

Channel actors run for real (gevent, in this process); a test waits for one
by asking it something harmless after what it told it (its inbox is in
order), never by sleeping.
"""

from __future__ import annotations

import socket

import pytest

from actors.directory import Session
from actors.messages import Leave
from brokers.memory import MemoryBroker
from gateway.hub import ConnectionLimitExceeded, Hub
from metrics.definitions import build
from protocol.auth import Principal
from protocol.channels import ChannelKey
from transport.outbox import Outbox


@pytest.fixture
def hub() -> Hub:
    return Hub(build(), max_connections_per_user=2, broker=MemoryBroker())


def _outbox() -> Outbox:
    server, _client = socket.socketpair()
    return Outbox(server, max_bytes=1 << 20, write_timeout=1)


def _open(hub: Hub, user: str, role: str = "user") -> Session:
    return hub.open_session(Principal(user, 2_000_000_000.0, role=role), _outbox(), 0.0)


def _settled(hub: Hub, key: str) -> None:
    """Everything told to the channel before this has been handled."""
    hub.channel(ChannelKey(key)).ask(Leave("nobody"), timeout=2)


def test_the_per_user_limit_holds_and_services_are_not_counted(hub):
    a, _ = _open(hub, "ann"), _open(hub, "ann")
    with pytest.raises(ConnectionLimitExceeded):
        _open(hub, "ann")
    for _ in range(3):
        _open(hub, "engine", role="service")
    hub.close_session(a)
    hub.close_session(a)  # idempotent
    _open(hub, "ann")  # the freed place
    assert hub.stats()["connectionsByUser"] == {"ann": 2, "engine": 3}
    assert hub.metrics.registry.get_sample_value("ws_users") == 2


def test_stats_count_connections_and_subscriptions_per_channel(hub):
    one, two = _open(hub, "ann"), _open(hub, "bob")
    keys = [ChannelKey(f"market-data.bybit.spot.{s}.ticker") for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    for session in (one, two):
        for key in keys:
            hub.join(session, key)
    hub.join(one, ChannelKey("trades#ann"))
    for key in [*keys, "trades#ann"]:
        _settled(hub, key)
    stats = hub.stats()
    assert stats["connectionsByChannel"] == {"market-data": 2, "trades": 1}
    assert stats["subscriptionsByChannel"] == {"market-data": 6, "trades": 1}
    hub.close_session(one)
    for key in [*keys, "trades#ann"]:
        _settled(hub, key)
    assert hub.stats()["connectionsByChannel"] == {"market-data": 1}


def test_service_receivers_are_the_local_subscribers_without_redis(hub):
    key = ChannelKey("bot-commands")
    assert hub.service_receivers(key) == 0
    engine = _open(hub, "engine", role="service")
    hub.join(engine, key)
    _settled(hub, key)
    assert hub.service_receivers(key) == 1
