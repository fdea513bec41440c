"""The HTTP side of the one port: health, probes, stats, version, metrics, publishing.

``/ws`` upgrades never reach Flask (``transport/handler.py`` takes them);
a plain GET of ``/ws`` gets 426 here.

Publishing (docs/protocol.md, "Publishing"): ``POST /api/publish`` takes
one publication, ``POST /api/publish/batch`` up to ``PUBLISH_BATCH_MAX``,
each checked on its own and answered in order. Both go through
:meth:`Broker.publish_many`, which also honours idempotency keys (``id``).
A service token's ``channels`` claim limits the channels it may publish to.
"""

from __future__ import annotations

import hmac
import json
import platform
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import RequestEntityTooLarge

from brokers.broker import BrokerUnavailable, Outgoing, Stored
from gateway.admin_api import blueprint as admin_blueprint
from gateway.dashboard import blueprint as dashboard_blueprint
from market.bybit import COMPILED
from protocol.auth import AuthError, Principal
from protocol.channels import PRIVATE_CHANNELS, Channel, private_key
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import decode_json, dumps

__all__ = ["PUBLISHABLE", "VERSION", "create_app", "publish_scope"]

VERSION = "0.1.0"

# Channels services may publish to through the API; the others are fed by the
# gateway itself (market data, time, health) or by clients (bot commands).
PUBLISHABLE = PRIVATE_CHANNELS
_CHANNELS = {channel.value: channel for channel in Channel}
MAX_USER = 128  # characters of a publication's user
MAX_PUBLICATION_ID = 128  # characters of an idempotency key
OTHER_BODY_BYTES = 256 * 1024  # request bodies of every other route
# protocol.messages.dumps's encoding (the text subscribers get), without building an encoder per call:
# measuring every publication of a batch is on the publishing path (tests/test_publish_api.py keeps them equal).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def publish_scope(principal: Principal) -> frozenset[Channel] | None:
    """The channels a service credential may publish to; None: every publishable one.

    A service token's ``channels`` claim lists them (``["bot-status", "trades"]``);
    without the claim (and for ``SERVICE_API_KEY``) it may publish to all of them.
    A claim that is not a list of strings allows none: a token that cannot be
    read as narrow is not taken as broad. Names that are not publishable
    channels are ignored.
    """
    if "channels" not in principal.claims:
        return None
    claim = principal.claims["channels"]
    if not isinstance(claim, list) or not all(isinstance(name, str) for name in claim):
        return frozenset()
    return frozenset(_CHANNELS[name] for name in claim if name in _CHANNELS) & PUBLISHABLE


@dataclass(frozen=True, slots=True)
class _Refused:
    """A publication refused before the broker: the HTTP status when it is the whole answer."""

    status: int
    error: str
    message: str

    def item(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message}


class _TooMany(Exception):
    pass


def _publication(obj: Any, scope: frozenset[Channel] | None, ts: int, data_limit: int, *,
                 objects_only: bool) -> Outgoing | _Refused:
    """One publication checked: what the broker takes, or why it is refused (nothing published)."""
    if not isinstance(obj, dict):
        return _Refused(400, "invalid_message", "a publication must be a JSON object")
    name = obj.get("channel")
    channel = _CHANNELS.get(name) if isinstance(name, str) else None
    if channel is None:
        return _Refused(400, "unknown_channel", f"unknown channel {str(name)[:40]!r}")
    if channel not in PUBLISHABLE:
        return _Refused(400, "not_publishable", f"{channel.value} is fed by the gateway itself")
    if scope is not None and channel not in scope:
        return _Refused(403, "forbidden", f"this credential may not publish to {channel.value} "
                        "(its token's channels claim does not name it)")
    user = obj.get("user")
    if not isinstance(user, str) or not user or len(user) > MAX_USER:
        return _Refused(400, "invalid_message", f"{channel.value} is private: user is required "
                        f"(a string of 1 to {MAX_USER} characters)")
    data = obj.get("data")
    if data is None:
        return _Refused(400, "invalid_message", "data is required")
    if objects_only and not isinstance(data, dict):
        return _Refused(400, "invalid_message", "data must be a JSON object")
    pid = obj.get("id")
    if pid is not None and (not isinstance(pid, str) or not pid or len(pid) > MAX_PUBLICATION_ID):
        return _Refused(400, "invalid_message", f"id must be a string of 1 to {MAX_PUBLICATION_ID} characters")
    text = _encode(data)
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > data_limit:
        return _Refused(413, "too_large", f"data is {size} bytes as JSON: at most {data_limit}")
    return Outgoing(private_key(channel, user), data, ts, text, pid)


def _unavailable(exc: BrokerUnavailable) -> _Refused:
    # Never "nothing was published" when that is not known.
    if exc.maybe_stored:
        return _Refused(503, "broker_timeout", "the message broker did not answer in time: the publication "
                        "may have been stored, and is then delivered; publish it again only with the same "
                        "id, or check the channel first")
    return _Refused(503, "broker_unavailable", "the message broker is unavailable; nothing was published")


# -- a batch's publications, each on its own ---------------------------------------------

# Only to find where each publication's text is: values are not kept, so nothing is refused here.
_SPANS = json.JSONDecoder(parse_float=lambda text: 0, parse_int=lambda text: 0, parse_constant=lambda text: 0)
_WS = re.compile(r"[ \t\n\r]*")
_ENVELOPE = 'the body must be a JSON object {"publications": [...]}'


def _batch_items(raw: bytes, limit: int) -> list[Any]:
    """The publications of a batch body, each a value or the ProtocolError that refuses it alone.

    Raises ProtocolError when the body itself is refused (not JSON, not the
    envelope) and _TooMany above ``limit`` publications. The body is decoded
    whole with the one decoder; when a value in it could not be delivered as
    sent, each publication is decoded again on its own (with the same
    decoder, so each is judged exactly as ``POST /api/publish`` would judge
    it), and only those holding such a value are refused.
    """
    try:
        body = decode_json(raw or b"null")
    except ProtocolError as exc:
        if exc.code is not ErrorCode.INVALID_MESSAGE:
            raise
        return _one_by_one(raw, limit, exc)
    items = body.get("publications") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, _ENVELOPE)
    if len(items) > limit:
        raise _TooMany(len(items))
    return items


def _one_by_one(raw: bytes, limit: int, refusal: ProtocolError) -> list[Any]:
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        found = _spans(text)
    except (ValueError, RecursionError):
        found = None
    if found is None:
        raise refusal  # not the envelope: the body's own refusal stands
    (start, end), spans = found
    if len(spans) > limit:
        raise _TooMany(len(spans))
    decode_json(text[:start] + "[]" + text[end:])  # the body's own fields are judged as before
    items: list[Any] = []
    for first, last in spans:
        try:
            items.append(decode_json(text[first:last]))
        except ProtocolError as exc:
            items.append(exc)
    return items


def _spans(text: str) -> tuple[tuple[int, int], list[tuple[int, int]]] | None:
    """Where the ``publications`` array is in an envelope, and each of its items; None: not an envelope."""

    def skip(pos: int) -> int:
        match = _WS.match(text, pos)
        assert match is not None  # the pattern matches the empty string
        return match.end()

    array: tuple[int, int] | None = None
    spans: list[tuple[int, int]] = []
    pos = skip(0)
    if not text.startswith("{", pos):
        return None
    pos = skip(pos + 1)
    while not text.startswith("}", pos):
        if not text.startswith('"', pos):
            return None
        key, pos = _SPANS.raw_decode(text, pos)
        pos = skip(pos)
        if not text.startswith(":", pos):
            return None
        pos = skip(pos + 1)
        if key == "publications" and text.startswith("[", pos):
            start, spans = pos, []
            pos = skip(pos + 1)
            while not text.startswith("]", pos):
                _, stop = _SPANS.raw_decode(text, pos)
                spans.append((pos, stop))
                pos = skip(stop)
                if text.startswith(",", pos):
                    pos = skip(pos + 1)
                elif not text.startswith("]", pos):
                    return None
            pos += 1
            array = (start, pos)
        else:
            _, pos = _SPANS.raw_decode(text, pos)
        pos = skip(pos)
        if text.startswith(",", pos):
            pos = skip(pos + 1)
            if text.startswith("}", pos):
                return None
        elif not text.startswith("}", pos):
            return None
    if array is None or skip(pos + 1) != len(text):
        return None
    return array, spans


def _json(body: Any, status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message}, status)


def create_app(gateway: Any, *, health_checks: list[Callable[[], tuple[str, bool | None, Any]]] | None = None,
               stats_sections: list[Callable[[], tuple[str, Any]]] | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.register_blueprint(dashboard_blueprint)
    app.register_blueprint(admin_blueprint(gateway))
    app.config["MAX_CONTENT_LENGTH"] = OTHER_BODY_BYTES
    settings = gateway.settings
    # A retried batch must find every id it published: at least the history, at least a whole batch.
    id_window = max(settings.history_size, settings.publish_batch_max)
    health_checks = health_checks if health_checks is not None else []
    stats_sections = stats_sections if stats_sections is not None else []
    started = time.time()

    @app.get("/health")
    def health() -> Response:
        components: dict[str, Any] = {"server": {"ok": not gateway.draining,
                                                 "state": "draining" if gateway.draining else "serving"}}
        ok = not gateway.draining
        degraded = False
        for check in health_checks:
            name, healthy, detail = check()
            if healthy is None:  # informational: degrades, never fails, the node
                healthy = bool(detail.get("connected", True)) if isinstance(detail, dict) else True
                degraded = degraded or not healthy
            else:
                ok = ok and healthy
            components[name] = {"ok": healthy, **(detail if isinstance(detail, dict) else {"detail": detail})}
        status = ("degraded" if degraded else "ok") if ok else "unavailable"
        body = {"status": status, "uptime": round(time.time() - started, 3),
                "connections": len(gateway.hub.sessions), "components": components}
        return _json(body, 200 if ok else 503)

    @app.get("/livez")
    def livez() -> Response:
        """Liveness for an orchestrator: 503 only when a restart is what helps (docs/operations.md)."""
        alive, detail = gateway.liveness()
        return _json(detail, 200 if alive else 503)

    @app.get("/readyz")
    def readyz() -> Response:
        """Readiness: this node takes new clients. Not the exchange, not Redis (docs/operations.md)."""
        alive, detail = gateway.liveness()
        body: dict[str, Any]
        if gateway.draining:
            body, ok = {"status": "draining", "reason": "shutting down: new connections are refused"}, False
        elif not alive:
            body, ok = {"status": "not_ready", "reason": detail["reason"]}, False
        else:
            body, ok = {"status": "ready"}, True
        body["connections"] = len(gateway.hub.sessions)
        return _json(body, 200 if ok else 503)

    @app.get("/ws/stats")
    def stats() -> Response:
        """The platform's stats. User ids (``connectionsByUser``) only with a service credential."""
        body = gateway.hub.stats()
        if _service_principal() is None:
            del body["connectionsByUser"]
            body["users"] = len(gateway.hub.by_user)
        for section in stats_sections:
            name, value = section()
            body[name] = value
        return jsonify(body)

    @app.get("/api/version")
    def version() -> Response:
        return jsonify({"name": "trading-ws-gateway", "version": VERSION, "protocol": "trading.v1",
                        "python": platform.python_version(),
                        # the compiled path for Bybit's common frames (market/_bybit_fast.pyx): false
                        # where it was not built (no C compiler at install)
                        "compiled": {"bybitFrames": COMPILED}})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/ws")
    def ws_without_upgrade() -> Response:
        response = _error(426, "upgrade_required", "connect with a WebSocket client")
        response.headers["Upgrade"] = "websocket"
        response.headers["Sec-WebSocket-Version"] = "13"
        return response

    def _service_principal() -> Principal | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        credential = header[len("Bearer "):].strip()
        key = settings.service_api_key
        if key and hmac.compare_digest(credential.encode(), key.encode()):
            return Principal(user_id="service", expires_at=float("inf"), role="service")
        try:
            principal = settings.authenticator.verify(credential)
        except AuthError:
            return None
        return principal if principal.is_service else None

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        limit = request.max_content_length
        return _error(413, "too_large", f"the request body is larger than {limit} bytes")

    def _publishes(results: list[Stored | BrokerUnavailable]) -> None:
        counts = Counter(r.publication.key.split("#", 1)[0] for r in results
                         if isinstance(r, Stored) and not r.duplicate)
        for name, count in counts.items():
            gateway.metrics.publications.labels(name).inc(count)

    @app.post("/api/publish")
    def publish() -> Response:
        principal = _service_principal()
        if principal is None:
            gateway.metrics.auth_failures.labels("service").inc()
            return _error(401, "unauthorized", "publishing needs a service token or the service API key")
        request.max_content_length = settings.publish_body_bytes
        try:
            body = decode_json(request.get_data(cache=False) or b"null")
        except ProtocolError as exc:
            # Refused before anything is published: never a 202 for data no subscriber could receive.
            return _error(400, exc.code.value, exc.message)
        if not isinstance(body, dict):
            return _error(400, "invalid_message", "body must be a JSON object")
        checked = _publication(body, publish_scope(principal), int(time.time() * 1000),
                               settings.publish_data_bytes, objects_only=False)
        if isinstance(checked, _Refused):
            return _error(checked.status, checked.error, checked.message)
        result = gateway.hub.publish_many([checked], id_window=id_window)[0]
        if isinstance(result, BrokerUnavailable):
            # Refused, never accepted and then lost.
            refused = _unavailable(result)
            return _error(refused.status, refused.error, refused.message)
        _publishes([result])
        answer = {"published": True, "channel": body["channel"], "offset": result.publication.offset,
                  "epoch": result.publication.epoch}
        if result.duplicate:
            answer["duplicate"] = True
        return _json(answer, 202)

    @app.post("/api/publish/batch")
    def publish_batch() -> Response:
        principal = _service_principal()
        if principal is None:
            gateway.metrics.auth_failures.labels("service").inc()
            return _error(401, "unauthorized", "publishing needs a service token or the service API key")
        request.max_content_length = settings.publish_body_bytes
        try:
            items = _batch_items(request.get_data(cache=False), settings.publish_batch_max)
        except ProtocolError as exc:
            return _error(400, exc.code.value, exc.message)
        except _TooMany as exc:
            return _error(400, "too_many_publications",
                          f"{exc.args[0]} publications: at most {settings.publish_batch_max} in one batch")
        scope = publish_scope(principal)
        ts = int(time.time() * 1000)
        answers: list[dict[str, Any]] = [{}] * len(items)
        checked: list[Outgoing] = []
        where: list[int] = []
        for i, item in enumerate(items):
            outgoing = _Refused(400, item.code.value, item.message) if isinstance(item, ProtocolError) \
                else _publication(item, scope, ts, settings.publish_data_bytes, objects_only=True)
            if isinstance(outgoing, _Refused):
                answers[i] = outgoing.item()
            else:
                checked.append(outgoing)
                where.append(i)
        results = gateway.hub.publish_many(checked, id_window=id_window) if checked else []
        for i, result in zip(where, results, strict=True):
            if isinstance(result, BrokerUnavailable):
                answers[i] = _unavailable(result).item()
            elif result.duplicate:
                answers[i] = {"duplicate": True, "epoch": result.publication.epoch,
                              "offset": result.publication.offset}
            else:
                answers[i] = {"epoch": result.publication.epoch, "offset": result.publication.offset}
        _publishes(results)
        return Response(dumps({"results": answers}), status=200, mimetype="application/json")

    @app.post("/api/demo/token")
    def demo_token() -> Response:
        if not settings.demo_mode:
            return _error(404, "not_found", "demo tokens exist only in DEMO_MODE")
        try:
            body = decode_json(request.get_data(cache=False) or b"{}")
        except ProtocolError as exc:
            return _error(400, exc.code.value, exc.message)
        user = body.get("user", "demo") if isinstance(body, dict) else None
        if not isinstance(user, str) or not user or len(user) > 64:
            return _error(400, "invalid_message", "user must be a short string")
        token = settings.authenticator.mint(user, ttl=3600)
        return jsonify({"token": token, "user": user, "expiresIn": 3600})

    return app
