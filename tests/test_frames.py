"""RFC 6455 framing without sockets: bytes in, values out."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import masked_frame
from transport.frames import (
    FrameError,
    FrameHeader,
    FrameReader,
    Opcode,
    encode_close,
    encode_frame,
    parse_close,
    parse_header,
    unmask,
)

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_is_the_rfc_xor(payload, mask):
    assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 70000])
def test_encode_frame_length_forms(n):
    frame = encode_frame(Opcode.TEXT, b"x" * n)
    assert frame[0] == 0x81
    if n < 126:
        assert frame[1] == n and len(frame) == 2 + n
    elif n < 65536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == n
    else:
        assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == n


def test_parse_header_of_a_masked_client_frame():
    frame = masked_frame(0x1, b"hello")
    header = parse_header(frame, max_size=1024)
    assert isinstance(header, FrameHeader)
    assert (header.fin, header.opcode, header.length, header.header_size) == (True, Opcode.TEXT, 5, 6)
    assert unmask(frame[6:], header.mask) == b"hello"


def test_parse_header_asks_for_more_bytes():
    frame = masked_frame(0x2, b"y" * 300)
    assert parse_header(frame[:1], max_size=1024) == 2
    assert parse_header(frame[:2], max_size=1024) == 4
    assert parse_header(frame[:4], max_size=1024) == 8


@pytest.mark.parametrize(("data", "code", "reason"), [
    (bytes((0x81, 0x05)) + b"hello", 1002, "client frame not masked"),
    (bytes((0xC1, 0x80)) + os.urandom(4), 1002, "reserved bits set without an extension"),
    (bytes((0x83, 0x80)) + os.urandom(4), 1002, "unknown opcode 3"),
    (bytes((0x09, 0x80)) + os.urandom(4), 1002, "fragmented control frame"),
    (bytes((0x89, 0xFE, 0x00, 0x7E)) + os.urandom(4), 1002, "control frame payload over 125 bytes"),
    (bytes((0x81, 0xFF)) + (1 << 62).to_bytes(8, "big"), 1009,
     f"frame of {1 << 62} bytes exceeds the limit of 1024"),
])
def test_bad_frames_name_their_close_code(data, code, reason):
    with pytest.raises(FrameError) as info:
        parse_header(data, max_size=1024)
    assert (info.value.code, info.value.reason) == (code, reason)


def test_close_frames_carry_the_code_and_a_utf8_reason_within_125_bytes():
    frame = encode_close(4001, "slow consumer")
    assert frame[:2] == bytes((0x88, 15)) and frame[2:4] == (4001).to_bytes(2, "big")
    long = encode_close(1000, "é" * 100)
    assert long[1] <= 125
    long[4:].decode("utf-8")
    assert encode_close(None) == b"\x88\x00"


@pytest.mark.parametrize(("payload", "expected"), [
    (b"", (None, "")),
    ((1000).to_bytes(2, "big") + b"bye", (1000, "bye")),
    ((4999).to_bytes(2, "big"), (4999, "")),
])
def test_parse_close(payload, expected):
    assert parse_close(payload) == expected


@pytest.mark.parametrize(("payload", "code"), [
    (b"\x03", 1002),
    ((999).to_bytes(2, "big"), 1002),
    ((1005).to_bytes(2, "big"), 1002),
    ((5000).to_bytes(2, "big"), 1002),
    ((1000).to_bytes(2, "big") + b"\xff", 1007),
])
def test_parse_close_rejects(payload, code):
    with pytest.raises(FrameError) as info:
        parse_close(payload)
    assert info.value.code == code


# -- FrameReader: bytes in any pieces, messages out -----------------------------------------


def _messages(chunks: list[bytes], max_size: int = 1 << 20) -> list[tuple[int, object]]:
    reader = FrameReader(max_size)
    out: list[tuple[int, object]] = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    return out


@given(st.lists(st.text(max_size=300), min_size=1, max_size=6), st.integers(min_value=1, max_value=64))
def test_frame_reader_gives_the_same_messages_however_the_bytes_are_cut(texts, step):
    stream = b""
    for text in texts:
        raw = text.encode("utf-8")
        if len(raw) > 2:  # also as a fragmented message: TEXT + CONTINUATION
            half = len(raw) // 2
            stream += masked_frame(0x1, raw[:half], fin=False) + masked_frame(0x9, b"p")
            stream += masked_frame(0x0, raw[half:])
        else:
            stream += masked_frame(0x1, raw)
    whole = _messages([stream])
    pieces = _messages([stream[i : i + step] for i in range(0, len(stream), step)])
    assert whole == pieces
    assert [v for op, v in whole if op == Opcode.TEXT] == texts
    assert [v for op, v in whole if op == Opcode.PING] == [b"p"] * sum(len(t.encode()) > 2 for t in texts)


def test_frame_reader_yields_what_came_before_a_bad_frame_then_raises():
    reader = FrameReader(1024)
    events = reader.feed(masked_frame(0x1, b"ok") + masked_frame(0x0, b"orphan"))
    assert next(events) == (Opcode.TEXT, "ok")
    with pytest.raises(FrameError) as err:
        next(events)
    assert err.value.code == 1002 and "continuation" in err.value.reason


@pytest.mark.parametrize(("chunks", "code"), [
    ([masked_frame(0x1, b"\xff")], 1007),                                    # invalid UTF-8, whole message
    ([masked_frame(0x1, b"\xce\xba\xe1", fin=False), masked_frame(0x0, b"\xff")], 1007),  # across fragments
    ([masked_frame(0x1, b"a" * 600, fin=False), masked_frame(0x0, b"b" * 600)], 1009),   # message over the limit
    ([masked_frame(0x1, b"a", fin=False), masked_frame(0x1, b"b")], 1002),  # new message inside a fragmented one
    ([masked_frame(0x8, b"\x03\xe8\xff")], 1007),                            # close reason not UTF-8
])
def test_frame_reader_errors_carry_their_close_code(chunks, code):
    with pytest.raises(FrameError) as err:
        _messages(chunks, max_size=1024)
    assert err.value.code == code


def test_frame_reader_close_and_binary():
    out = _messages([masked_frame(0x2, b"\x00\x01", fin=False), masked_frame(0x0, b"\x02"),
                     masked_frame(0x8, b"\x03\xe8bye")])
    assert out == [(Opcode.BINARY, b"\x00\x01\x02"), (Opcode.CLOSE, (1000, "bye"))]


# --- after a refused frame: reading on to the peer's close --------------------------------------------


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


def _close_after_refusal(chunks: list[bytes], max_size: int) -> tuple[int, tuple[int | None, str] | None, bool]:
    """Feed ``chunks`` as a connection does: the first FrameError stops the reader, the rest goes to
    find_close. (refused code, the close found, whether it was found only with the last chunk)."""
    reader, refused, found, at = FrameReader(max_size), None, None, -1
    for i, chunk in enumerate(chunks):
        if refused is None:
            try:
                list(reader.feed(chunk))
                continue
            except FrameError as exc:
                refused = exc.code
                reader.stopped()
                chunk = b""
        if found is None and reader.in_step:
            found = reader.find_close(chunk)
            at = i
    assert refused is not None
    return refused, found, at == len(chunks) - 1


@given(st.integers(101, 5000), st.lists(st.binary(max_size=300), max_size=4), st.integers(1000, 1015),
       st.lists(st.integers(0, 10_000), max_size=12))
def test_after_an_oversized_frame_the_peers_close_is_found_however_the_bytes_are_cut(size, more, code, cuts):
    # The client's oversized frame (its length refused from the header), frames it had already sent
    # after it, then its answer to our close: found exactly when its last byte has arrived.
    code = 1000 if code in (1004, 1005, 1006, 1015) else code
    wire = masked_frame(0x2, b"x" * size) + b"".join(masked_frame(0x1, m) for m in more)
    close = masked_frame(0x8, code.to_bytes(2, "big") + b"bye")
    refused, found, last = _close_after_refusal(_cut(wire + close, cuts), max_size=100)
    assert refused == 1009 and found == (code, "bye") and last


def test_after_a_frame_refused_whole_the_peers_close_is_found():
    # Invalid UTF-8 (1007): the frame was read whole, the reader knows where the next one starts.
    refused, found, _ = _close_after_refusal([masked_frame(0x1, b"\xff") + masked_frame(0x8, b"\x03\xf1")],
                                             max_size=1024)
    assert (refused, found) == (1007, (1009, ""))


def test_after_garbage_the_reader_is_out_of_step_and_finds_nothing():
    reader = FrameReader(1024)
    with pytest.raises(FrameError):
        list(reader.feed(b"\x81\x05hello"))  # not masked: 1002, nothing to stay in step with
    reader.stopped()
    assert not reader.in_step
