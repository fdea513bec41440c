"""Rows broken at the frame level: masking, UTF-8, binary, sizes, fragments, deadlines, pings."""

from __future__ import annotations

import os
import threading
import time

from tests.abuse.fleet import MAIN_ENV, MIB, RawWS, Row
from tests.harness import masked_frame

TEXT, BINARY, CONTINUATION, PING = 0x1, 0x2, 0x0, 0x9
LIMIT = 65536  # WS_MAX_MESSAGE_SIZE, the default
DEADLINE = int(MAIN_ENV["WS_MESSAGE_DEADLINE"]) / 1000


def _opened(gw, user: str) -> RawWS:
    ws = RawWS.open(gw, user)
    ws.hello()
    return ws


def test_unmasked_frame_is_closed_1002(main_gw, fleet):
    with Row(fleet, "unmasked frame") as row:
        ws = _opened(main_gw, "unmasked")
        started = time.monotonic()
        ws.send(masked_frame(TEXT, b'{"type":"ping"}', mask=False))
        closed = ws.expect_close(5, started)
        assert (closed.code, closed.reason) == (1002, "client frame not masked")
        ws.close()
        row.report(f"closed {closed.code} '{closed.reason}' after {closed.after * 1000:.1f} ms")


def test_invalid_utf8_is_closed_1007_whole_or_split_and_binary_1003(main_gw, fleet):
    cases = {
        "invalid UTF-8 in one frame": [masked_frame(TEXT, b'{"type":"ping","data":"\xff\xfe"}')],
        "invalid UTF-8 split across fragments": [masked_frame(TEXT, b'{"type":"ping","data":"\xe2\x82', fin=False)
                                                 + masked_frame(CONTINUATION, b'\x28"}')],
        "an overlong encoding": [masked_frame(TEXT, b'{"type":"ping","data":"\xc0\xaf"}')],
        "an encoded surrogate": [masked_frame(TEXT, b'{"type":"ping","data":"\xed\xa0\x80"}')],
    }
    with Row(fleet, "invalid UTF-8 / binary") as row:
        for name, frames in cases.items():
            ws = _opened(main_gw, "utf8")
            started = time.monotonic()
            for frame in frames:
                ws.send(frame)
            closed = ws.expect_close(5, started)
            assert (closed.code, closed.reason) == (1007, "text message is not valid utf-8"), (name, closed)
            row.report(f"{name}: closed 1007 after {closed.after * 1000:.1f} ms")
            ws.close()
        ws = _opened(main_gw, "binary")
        started = time.monotonic()
        ws.send(masked_frame(BINARY, b'{"type":"ping"}'))
        closed = ws.expect_close(5, started)
        assert (closed.code, closed.reason) == (1003, "binary frames are not accepted")
        row.report(f"binary frame: closed 1003 after {closed.after * 1000:.1f} ms")
        ws.close()


def test_frame_headers_claiming_huge_payloads_are_closed_1009_from_the_header(main_gw, fleet):
    claims = {"1 MiB": MIB, "2^63-1 bytes": 2**63 - 1}
    per_claim, streaming = 30, 10
    with Row(fleet, "huge frame headers") as row:
        results: dict[str, list] = {name: [] for name in claims}
        clients = [(name, _opened(main_gw, f"huge{name[0]}{i}")) for name in claims for i in range(per_claim)]
        started = time.monotonic()
        for name, ws in clients:
            ws.send(bytes((0x81, 0x80 | 127)) + claims[name].to_bytes(8, "big") + os.urandom(4))
        for name, ws in clients:
            closed = ws.expect_close(5, started)
            results[name].append(closed)
            ws.close()
        for name, closes in results.items():
            assert {(c.code, c.reason) for c in closes} == {
                (1009, f"frame of {claims[name]} bytes exceeds the limit of {LIMIT}")}, name
            row.report(f"{per_claim} clients announcing {name}: all closed 1009 from the header within "
                       f"{max(c.after for c in closes) * 1000:.0f} ms of the first header sent")
        # Clients that really send their 1 MiB: the gateway stops reading at the header.
        outcomes = []
        for i in range(streaming):
            ws = _opened(main_gw, f"hugestream{i}")
            payload = os.urandom(MIB)
            t = time.monotonic()
            try:
                ws.send(masked_frame(TEXT, payload))
            except OSError:
                pass  # the gateway closed while the client was still writing
            closed = ws.expect_close(5, t)
            outcomes.append(closed.code if closed.code is not None else 1006)
            ws.close()
        assert set(outcomes) <= {1009, 1006}, outcomes
        row.report(f"{streaming} clients writing a 1 MiB frame: {outcomes.count(1009)} saw 1009, "
                   f"{outcomes.count(1006)} saw the connection end while still writing (1006)")


def test_ten_thousand_tiny_continuations_are_closed_1009_past_the_limit(main_gw, fleet):
    with Row(fleet, "10,000 continuations") as row:
        ws = _opened(main_gw, "confetti")
        piece = b" " * 8
        frames = [masked_frame(TEXT, b'{"type":"ping","data":"', fin=False)]
        frames += [masked_frame(CONTINUATION, piece, fin=False) for _ in range(10_000)]
        started = time.monotonic()
        try:
            ws.send(b"".join(frames))
        except OSError:
            pass
        closed = ws.expect_close(5, started)
        assert (closed.code, closed.reason) == (1009, f"message exceeds the limit of {LIMIT} bytes")
        ws.close()
        row.report(f"10,000 continuations of 8 bytes (80 KB in all): closed 1009 after {closed.after * 1000:.0f} ms, "
                   f"at the fragment that passed {LIMIT} bytes (about the {LIMIT // 8:,}th)")

        # Empty continuations never grow the message: the deadline ends them.
        ws = _opened(main_gw, "confetti0")
        started = time.monotonic()
        ws.send(masked_frame(TEXT, b"{", fin=False) + masked_frame(CONTINUATION, b"", fin=False) * 100_000)
        closed = ws.expect_close(DEADLINE + 5, started)
        assert (closed.code, closed.reason) == (1008, f"message not finished within {DEADLINE:g} s")
        ws.close()
        row.report(f"100,000 empty continuations, never finished: closed 1008 after {closed.after:.2f} s "
                   f"(WS_MESSAGE_DEADLINE {DEADLINE:g} s)")


def test_a_message_left_unfinished_is_closed_1008_at_the_deadline(main_gw, fleet):
    partials = {
        "a first fragment": masked_frame(TEXT, b'{"type":"pi', fin=False),
        "half a frame": masked_frame(TEXT, b'{"type":"ping"}' + b" " * 100)[:20],
        "a frame header only": bytes((0x81, 0x80 | 126)) + (1000).to_bytes(2, "big"),
    }
    with Row(fleet, "unfinished message") as row:
        clients = []
        for name, data in partials.items():
            ws = _opened(main_gw, "unfinished")
            clients.append((name, ws, time.monotonic()))
            ws.send(data)
        for name, ws, started in clients:
            closed = ws.expect_close(DEADLINE + 5, started)
            assert (closed.code, closed.reason) == (1008, f"message not finished within {DEADLINE:g} s"), name
            row.report(f"{name}: closed 1008 after {closed.after:.2f} s (WS_MESSAGE_DEADLINE {DEADLINE:g} s, "
                       "sweep 0.1 s)")
            ws.close()


def test_a_ping_flood_is_closed_1008(main_gw, fleet):
    with Row(fleet, "ping flood") as row:
        ws = _opened(main_gw, "pinger")
        result = {}
        reader = threading.Thread(target=lambda: result.update(closed=ws.expect_close(10)), daemon=True)
        reader.start()
        started, sent = time.monotonic(), 0
        while reader.is_alive() and time.monotonic() - started < 5:
            target = int((time.monotonic() - started) * 1000)  # 1,000 pings a second
            try:
                while sent < target:
                    ws.send(masked_frame(PING, b"p%d" % sent))
                    sent += 1
            except OSError:
                break
            time.sleep(0.005)
        reader.join(10)
        closed = result["closed"]
        assert (closed.code, closed.reason) == (1008, "ping flood: more than 5 pings a second")
        pongs = closed.frames[0xA]
        assert 0 < pongs <= 21
        ws.close()
        row.report(f"1,000 pings/s: closed 1008 after {time.monotonic() - started:.3f} s and {sent} pings "
                   f"({pongs} answered: the burst)")


def test_an_oversized_ping_is_closed_1002(main_gw, fleet):
    with Row(fleet, "126-byte ping") as row:
        ws = _opened(main_gw, "bigping")
        started = time.monotonic()
        ws.send(masked_frame(PING, b"x" * 126))
        closed = ws.expect_close(5, started)
        assert closed.code == 1002 and closed.frames[0xA] == 0, closed
        ws.close()
        row.report(f"closed 1002 '{closed.reason}' after {closed.after * 1000:.1f} ms, not answered")
