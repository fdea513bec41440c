"""ChannelActor with a broker, in-process: gaps in live delivery are filled from history."""

from __future__ import annotations

import json
import time

import gevent
from gevent import socket

from actors.channel import ChannelActor
from actors.messages import Deliver, Join, Leave
from brokers.memory import MemoryBroker
from transport.outbox import Outbox


def _frames(sock: socket.socket, n: int) -> list[dict]:
    out, buf = [], b""
    sock.settimeout(2)
    while len(out) < n:
        buf += sock.recv(65536)
        while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
            length = buf[1] & 0x7F
            assert length < 126
            out.append(json.loads(buf[2:2 + length]))
            buf = buf[2 + length:]
    return out


def test_live_gap_is_filled_from_history_in_order():
    broker = MemoryBroker()
    channel = ChannelActor.start("trades#u", "trades", on_idle=lambda *a: None, on_count=lambda *a: None,
                                 broker=broker)
    dropped = {2, 3}
    broker.on_publication = lambda pub: None if pub.offset in dropped else channel.tell(Deliver(pub))
    server, client = socket.socketpair()
    outbox = Outbox(server, max_bytes=1 << 20, write_timeout=1)
    channel.ask(Join("s1", outbox), timeout=1)  # joined before the publications
    for i in range(1, 5):
        broker.publish("trades#u", {"i": i}, int(time.time() * 1000))
    channel.ask(Leave("nobody"), timeout=1)  # every Deliver told before this is handled
    frames = _frames(client, 4)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4]
    assert [f["data"]["i"] for f in frames] == [1, 2, 3, 4]
    channel.stop()


def test_gap_beyond_history_tells_subscribers_to_resync():
    broker = MemoryBroker(history_size=1)
    channel = ChannelActor.start("trades#v", "trades", on_idle=lambda *a: None, on_count=lambda *a: None,
                                 broker=broker)
    broker.on_publication = lambda pub: None if pub.offset in (2, 3) else channel.tell(Deliver(pub))
    server, client = socket.socketpair()
    channel.ask(Join("s1", Outbox(server, max_bytes=1 << 20, write_timeout=1)), timeout=1)
    for i in range(1, 5):
        broker.publish("trades#v", {"i": i}, int(time.time() * 1000))
    channel.ask(Leave("nobody"), timeout=1)  # every Deliver told before this is handled
    broker.publish("trades#v", {"i": 5}, int(time.time() * 1000))
    first, resync, after = _frames(client, 3)
    assert first["seq"] == 1
    # The state as of offset 4 must be refetched; live delivery goes on after it.
    assert resync["type"] == "resync" and resync["channel"] == "trades" and resync["offset"] == 4
    assert after["seq"] == 5
    channel.stop()


def test_resync_after_the_history_expired_gives_the_position_before_the_next_message():
    now = [1000.0]
    broker = MemoryBroker(history_ttl=10, clock=lambda: now[0])
    channel = ChannelActor.start("trades#w", "trades", on_idle=lambda *a: None, on_count=lambda *a: None,
                                 broker=broker)
    broker.on_publication = lambda pub: channel.tell(Deliver(pub))
    server, client = socket.socketpair()
    channel.ask(Join("s1", Outbox(server, max_bytes=1 << 20, write_timeout=1)), timeout=1)
    broker.publish("trades#w", {"i": 1}, int(now[0] * 1000))
    now[0] += 11  # past history_ttl: the history is gone, the next publication starts a new epoch
    broker.publish("trades#w", {"i": 2}, int(now[0] * 1000))
    first, resync, after = _frames(client, 3)
    assert (first["seq"], after["data"]) == (1, {"i": 2})
    assert resync["type"] == "resync" and resync["epoch"] == after["epoch"] != first["epoch"]
    # A client continuing from the position given keeps the next message: it is that position + 1.
    assert after["seq"] == resync["offset"] + 1 == 1
    channel.stop()


def test_a_client_behind_gets_the_newest_latest_value_and_every_event():
    """While a client's socket is full, a newer ticker replaces the one waiting; trades all stay."""
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    outbox = Outbox(server, max_bytes=1 << 20, write_timeout=5)
    filler = b"\x81\x7e\x10\x00" + b"x" * 4096  # a 4 KiB text frame: more than the socket buffers hold
    for _ in range(64):
        assert outbox.push(filler)
    gevent.sleep(0.05)  # the flush found the socket full: the writer now waits for the client
    for i in range(5):
        assert outbox.push_latest(f'{{"ticker":{i}}}'.encode(), "ticker#BTC")
        assert outbox.push(f'{{"trade":{i}}}'.encode())
    assert outbox.conflated == 4  # four older tickers replaced while waiting
    received = b""
    client.setblocking(False)
    deadline = time.monotonic() + 5
    while b'{"ticker":4}' not in received and time.monotonic() < deadline:
        try:
            received += client.recv(65536)
        except BlockingIOError:
            gevent.sleep(0.005)
    tail = received.replace(filler, b"")
    assert tail == b'{"trade":0}{"trade":1}{"trade":2}{"trade":3}{"trade":4}{"ticker":4}'
