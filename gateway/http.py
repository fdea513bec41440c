"""The HTTP side of the one port: health, probes, stats, version, metrics, publishing.

``/ws`` upgrades never reach Flask (``transport/handler.py`` takes them);
a plain GET of ``/ws`` gets 426 here.
"""

from __future__ import annotations

import hmac
import platform
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from brokers.broker import BrokerUnavailable
from gateway.dashboard import blueprint as dashboard_blueprint
from protocol.auth import AuthError, Principal
from protocol.channels import PRIVATE_CHANNELS, Channel, private_key
from protocol.errors import ProtocolError
from protocol.messages import decode_json

__all__ = ["VERSION", "create_app"]

VERSION = "0.1.0"

# Channels services may publish to through the API; the others are fed by the
# gateway itself (market data, time, health) or by clients (bot commands).
PUBLISHABLE = PRIVATE_CHANNELS


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
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024
    settings = gateway.settings
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
                        "python": platform.python_version()})

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

    @app.post("/api/publish")
    def publish() -> Response:
        if _service_principal() is None:
            gateway.metrics.auth_failures.labels("service").inc()
            return _error(401, "unauthorized", "publishing needs a service token or the service API key")
        try:
            body = decode_json(request.get_data(cache=False) or b"null")
        except ProtocolError as exc:
            # Refused before anything is published: never a 202 for data no subscriber could receive.
            return _error(400, exc.code.value, exc.message)
        if not isinstance(body, dict):
            return _error(400, "invalid_message", "body must be a JSON object")
        name, user, data = body.get("channel"), body.get("user"), body.get("data")
        try:
            if not isinstance(name, str):
                raise ValueError(name)  # not a channel name, as Channel() would say
            channel = Channel(name)
        except ValueError:
            return _error(400, "unknown_channel", f"unknown channel {str(name)[:40]!r}")
        if channel not in PUBLISHABLE:
            return _error(400, "not_publishable", f"{channel.value} is fed by the gateway itself")
        if not isinstance(user, str) or not user or len(user) > 128:
            return _error(400, "invalid_message", f"{channel.value} is private: user is required")
        if data is None:
            return _error(400, "invalid_message", "data is required")
        key = private_key(channel, user)
        try:
            pub = gateway.hub.publish_shared(key, data, int(time.time() * 1000))
        except BrokerUnavailable as exc:
            # Refused, never accepted and then lost; and never "nothing was published" when that is not known.
            if exc.maybe_stored:
                return _error(503, "broker_timeout", "the message broker did not answer in time: the publication "
                              "may have been stored, and is then delivered; check the channel before publishing "
                              "it again")
            return _error(503, "broker_unavailable", "the message broker is unavailable; nothing was published")
        gateway.metrics.publications.labels(channel.value).inc()
        return _json({"published": True, "channel": channel.value, "offset": pub.offset, "epoch": pub.epoch}, 202)

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
