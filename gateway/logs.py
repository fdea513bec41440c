"""The one logging setup: readable text by default, JSON lines with ``LOG_FORMAT=json``.

Every handler carries :class:`RedactingFilter`, so no token, ``?token=``
query string or bearer subprotocol reaches a log line, whoever logs it
(our code, pywsgi, gevent-websocket, pykka).

Structured fields: pass ``extra={"fields": {...}}``; the text format prints
them as ``key=value`` pairs after the message, the JSON format as keys.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

__all__ = ["RedactingFilter", "configure_logging", "redact"]

_SECRET_PATTERNS = (
    # ?token=... / &token=... in a URL or request line
    (re.compile(r"([?&](?:token|access_token|jwt)=)[^&\s\"']+", re.IGNORECASE), r"\1[redacted]"),
    # bearer.<token> subprotocol values and Authorization headers
    (re.compile(r"(bearer[.\s]+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1[redacted]"),
    # anything shaped like a JWT: three base64url segments, the first starting eyJ
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    # the password in a URL: redis://:secret@host, rediss://user:secret@host
    (re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE), r"\1[redacted]@"),
)


def redact(text: str) -> str:
    """Remove tokens from ``text``."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (arguments merged) without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class TextFormatter(logging.Formatter):
    # With WORKERS > 1 every worker logs to the same stream: its lines say which it is.
    def __init__(self, worker: int | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s"
                         if worker is None else f"%(asctime)s %(levelname)s worker-{worker} %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            # Empty fields are left out: a supervisor line says what happened, not what did not.
            shown = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None and v != "")
            if shown:
                text += " " + shown
        return redact(text)


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            payload["worker"] = self.worker
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(payload, default=str))


class ExpectedFailureFilter(logging.Filter):
    """Drops pykka's traceback for an :class:`supervision.ExpectedFailure`:
    the supervisor's decision line already says what failed and what happens next."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not any(cls.__name__ == "ExpectedFailure" for cls in type(exc).__mro__)


def configure_logging(log_format: str = "text", level: str = "INFO", *, worker: int | None = None,
                      stream: Any = None) -> None:
    """Install the root handler: ``log_format`` text or json, at ``level`` (from the settings).

    The process calls it twice: with the defaults before the settings are
    read (so a bad setting is reported), then with what they say.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter(worker) if log_format == "json" else TextFormatter(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pykka logs tracebacks at ERROR (kept) and "Stopping all actors" at DEBUG.
    logging.getLogger("pykka").setLevel(logging.WARNING)
    pykka_logger = logging.getLogger("pykka")
    if not any(isinstance(f, ExpectedFailureFilter) for f in pykka_logger.filters):
        pykka_logger.addFilter(ExpectedFailureFilter())
    # gevent-websocket logs rejected handshakes, query string included, at INFO.
    logging.getLogger("geventwebsocket.handler").setLevel(logging.WARNING)
