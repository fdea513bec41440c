"""Outbox: the bounded per-connection queue and single writer, on a socketpair whose peer the test controls."""

from __future__ import annotations

import gevent
from gevent import socket

from transport.outbox import Outbox


def _pair(buffer: int = 4096) -> tuple[socket.socket, socket.socket]:
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return server, client


def _read_all(client: socket.socket, until: bytes) -> bytes:
    got = b""
    with gevent.Timeout(5):
        while until not in got:
            got += client.recv(65536)
    return got


def test_what_is_pushed_arrives_in_order_in_few_writes():
    server, client = _pair(1 << 20)
    outbox = Outbox(server, max_bytes=1 << 20, write_timeout=1)
    for i in range(100):
        assert outbox.push(f"<{i}>".encode())
    assert _read_all(client, b"<99>") == b"".join(f"<{i}>".encode() for i in range(100))
    assert outbox.queued_bytes == 0 and outbox.bytes_written == len(b"".join(f"<{i}>".encode() for i in range(100)))


def test_a_full_queue_refuses_and_reports_the_slow_consumer_once():
    server, _client = _pair()  # the client never reads
    overflows = []
    outbox = Outbox(server, max_bytes=64 * 1024, write_timeout=5, on_overflow=lambda: overflows.append(1))
    frame = b"x" * 4096
    accepted = 0
    while outbox.push(frame):
        accepted += 1
        gevent.sleep(0)  # let the flush run: the socket takes what it can
        assert accepted < 1000
    assert not outbox.push(frame)
    assert overflows == [1] and outbox.overflowed and outbox.dropped == 2
    assert outbox.queued_bytes <= 64 * 1024
    outbox.push_control(b"ping")  # control frames skip the byte limit
    assert outbox.queued_bytes > 0


def test_a_write_blocked_past_the_timeout_is_a_slow_consumer():
    server, _client = _pair()
    slow = gevent.event.Event()
    outbox = Outbox(server, max_bytes=1 << 20, write_timeout=0.05, on_overflow=slow.set)
    for _ in range(64):
        outbox.push(b"y" * 4096)  # more than the two socket buffers hold
    assert slow.wait(5)
    assert outbox.overflowed


def test_close_discarding_pending_frames_counts_them_and_sends_the_close_frame_alone():
    server, client = _pair()
    outbox = Outbox(server, max_bytes=4 << 20, write_timeout=5)
    for _ in range(200):  # 800 KiB: the writer holds one batch (at most 256 KiB), the rest waits
        outbox.push(b"z" * 4096)
    gevent.sleep(0.01)
    outbox.close(4001, "slow consumer", discard_pending=True)
    assert outbox.dropped >= 100 and outbox.queued_bytes == 0
    assert not outbox.push(b"late")
    got = _read_all(client, b"slow consumer")
    assert got.endswith(b"\x88\x0f\x0f\xa1slow consumer")  # close frame: 4001 + reason
    assert outbox.closed.wait(5)
