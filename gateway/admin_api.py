"""The admin and audit routes: revoke, disconnect, list revocations, query commands.

Credentials: ``Authorization: Bearer <ADMIN_API_KEY>`` or a token whose
``role`` is ``admin``; none is 401, another valid credential 403. Bodies go
through the one input decoder (``protocol.messages.decode_json``); every
refusal is a JSON ``{"error", "message"}`` with the status in the table of
docs/operations.md ("Admin API").
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, request

from audit.writer import AuditUnavailable
from gateway.admin import AdminError
from protocol.auth import AuthError
from protocol.errors import ProtocolError
from protocol.messages import decode_json, dumps

__all__ = ["blueprint"]

MAX_ID = 128
MAX_REASON = 256


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status=status, mimetype="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message}, status)


def _text(value: Any, name: str, limit: int = MAX_ID) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise AdminError(400, "invalid_request", f"{name} must be a string of 1 to {limit} characters")
    return value


def _epoch_ms(value: Any, name: str) -> float | None:
    """An epoch-milliseconds integer or an ISO 8601 time with its offset, as epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**14:
        return value / 1000
    if isinstance(value, str):
        if re.fullmatch(r"[0-9]{1,14}", value):
            return int(value) / 1000
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed.timestamp()
    raise AdminError(400, "invalid_request", f"{name} must be epoch milliseconds or an ISO 8601 time with "
                     "its offset (2026-12-03T12:00:00Z)")


def blueprint(gateway: Any) -> Blueprint:
    bp = Blueprint("admin", __name__)
    settings = gateway.settings

    def actor() -> str:
        """Who is asking: the admin key, or an admin token's subject. AdminError otherwise."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise AdminError(401, "unauthorized", "admin routes need ADMIN_API_KEY or an admin token "
                             "(Authorization: Bearer …)")
        credential = header[len("Bearer "):].strip()
        key = settings.admin_api_key
        if key and hmac.compare_digest(credential.encode(), key.encode()):
            return "admin-api-key"
        try:
            principal = settings.authenticator.verify(credential)
            gateway.admin.check(principal)
        except AuthError:
            raise AdminError(401, "unauthorized", "the credential is not valid") from None
        if not principal.is_admin:
            raise AdminError(403, "forbidden", "this credential is not an admin's")
        return f"user:{principal.user_id}"

    def body() -> dict[str, Any]:
        try:
            value = decode_json(request.get_data(cache=False) or b"null")
        except ProtocolError as exc:
            raise AdminError(400, exc.code.value, exc.message) from None
        if not isinstance(value, dict):
            raise AdminError(400, "invalid_request", "the body must be a JSON object")
        return value

    @bp.errorhandler(AdminError)
    def refused(exc: AdminError) -> Response:
        if exc.status in (401, 403):
            gateway.metrics.auth_failures.labels("admin").inc()
        return _error(exc.status, exc.code, exc.message)

    @bp.post("/api/admin/revoke")
    def revoke() -> Response:
        who = actor()
        req = body()
        jti, user = req.get("jti"), req.get("userId")
        if (jti is None) == (user is None):
            raise AdminError(400, "invalid_request", "name exactly one of jti (one token) or userId (every token "
                             "of the user issued until now)")
        reason = req.get("reason")
        if reason is not None:
            reason = _text(reason, "reason", MAX_REASON)
        result = gateway.admin.revoke(
            who, jti=_text(jti, "jti") if jti is not None else None,
            user=_text(user, "userId") if user is not None else None,
            until=_epoch_ms(req.get("until"), "until"), reason=reason)
        return _json(result)

    @bp.post("/api/admin/disconnect")
    def disconnect() -> Response:
        who = actor()
        return _json(gateway.admin.disconnect(who, _text(body().get("userId"), "userId")))

    @bp.get("/api/admin/revocations")
    def revocations() -> Response:
        actor()
        return _json({"revocations": gateway.admin.active()})

    @bp.get("/api/audit/commands")
    def commands() -> Response:
        actor()
        audit = gateway.audit
        if audit is None:
            raise AdminError(404, "no_audit_trail", "this gateway keeps no audit trail (DATABASE_URL=none)")
        args = request.args
        limit_text = args.get("limit", "100")
        if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= 1000:
            raise AdminError(400, "invalid_request", "limit must be an integer from 1 to 1000")
        user, bot = args.get("user") or None, args.get("bot") or None
        for value, name in ((user, "user"), (bot, "bot")):
            if value is not None:
                _text(value, name)
        try:
            rows = audit.query_commands(user=user, bot=bot, since=_epoch_ms(args.get("since"), "since"),
                                        until=_epoch_ms(args.get("until"), "until"), limit=int(limit_text))
        except AuditUnavailable as exc:
            raise AdminError(503, "database_unavailable", f"the audit database cannot answer now: {exc}") from None
        return _json({"commands": rows})

    return bp
