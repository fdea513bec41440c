"""The one logging setup: formats, redaction, and which tracebacks are kept."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.logs import configure_logging, redact
from supervision import ExpectedFailure

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)

FAKE_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXBsYWNlaG9sZGVy"


@pytest.fixture
def capture():
    stream = io.StringIO()
    yield stream
    configure_logging(level="WARNING")


def test_text_format_carries_fields(capture):
    configure_logging("text", stream=capture)
    logging.getLogger("t").warning("child failed", extra={"fields": {"child_id": "x", "msg": "two words"}})
    line = capture.getvalue().strip()
    assert line.endswith('WARNING t child failed child_id=x msg="two words"')


def test_text_format_leaves_out_empty_fields_and_json_keeps_them(capture):
    fields = {"event": "restart_scheduled", "phase": None, "exc_type": None, "delay_s": 0.25, "note": ""}
    configure_logging("text", stream=capture)
    logging.getLogger("t").info("child restarted", extra={"fields": fields})
    assert capture.getvalue().strip().endswith("INFO t child restarted event=restart_scheduled delay_s=0.25")
    capture.seek(0), capture.truncate()
    configure_logging("json", stream=capture)
    logging.getLogger("t").info("child restarted", extra={"fields": fields})
    record = json.loads(capture.getvalue())
    assert record["phase"] is None and record["exc_type"] is None and record["delay_s"] == 0.25


def test_a_password_in_a_url_is_redacted(capture):
    configure_logging("text", stream=capture)
    logging.getLogger("t").error("redis unreachable at %s", "redis://:placeholder-pw@10.0.0.5:6379/0")
    assert capture.getvalue().strip().endswith("redis unreachable at redis://:[redacted]@10.0.0.5:6379/0")


def test_json_format_is_one_object_per_line(capture):
    configure_logging("json", stream=capture)
    logging.getLogger("t").info("hello", extra={"fields": {"n": 3}})
    record = json.loads(capture.getvalue())
    assert record["msg"] == "hello" and record["n"] == 3 and record["level"] == "INFO"


@pytest.mark.parametrize("text", [
    f"GET /ws?token={FAKE_TOKEN} HTTP/1.1",
    f"GET /ws?x=1&token={FAKE_TOKEN}",
    f"Sec-WebSocket-Protocol: trading.v1, bearer.{FAKE_TOKEN}",
    f"token was {FAKE_TOKEN}",
])
def test_tokens_never_reach_a_line(capture, text):
    configure_logging("text", stream=capture)
    logging.getLogger("geventwebsocket.handler").warning(text)
    logging.getLogger("any").warning("%s", text)
    out = capture.getvalue()
    assert FAKE_TOKEN not in out and FAKE_TOKEN.split(".")[2] not in out
    assert "?token=" not in redact(f"/ws?token={FAKE_TOKEN}").replace("?token=[redacted]", "")


def test_pykka_traceback_of_an_expected_failure_is_left_out(capture):
    configure_logging("text", stream=capture)
    pykka_log = logging.getLogger("pykka")
    for exc in (ExpectedFailure("exchange closed"), ValueError("a real bug")):
        try:
            raise exc
        except (ExpectedFailure, ValueError):
            pykka_log.error("Unhandled exception in X", exc_info=True)
    out = capture.getvalue()
    assert "a real bug" in out and "exchange closed" not in out
