"""Admin actions: revoke a token or a user, disconnect a user, on every node.

``revoke`` is answered only once the revocation is stored in the audit
database (it survives a restart); then it applies here and goes out on the
broker's control key, and every node closes the matching connections with
4501 within the broker's delivery time (milliseconds with Redis) and
refuses the token at the handshake (401 ``token_revoked``) and in
``refresh``. Nodes load the active revocations from the database at start
and again whenever the broker comes back (a revocation sent during an
outage is not missed with a shared PostgreSQL). ``disconnect`` closes a
user's connections with 4004 (they may reconnect) and stores nothing but
its audit record.

Without a database (``DATABASE_URL=none``) revocations live in memory and
in the broadcast only: documented in docs/operations.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pykka

from actors.messages import CloseConnection
from audit.records import AdminAction, Revocation
from audit.writer import AuditLog, AuditUnavailable
from brokers.broker import BrokerUnavailable
from gateway.hub import Hub
from metrics.definitions import Metrics, labelled
from protocol.auth import AuthError, Principal
from protocol.channels import CONTROL_KEY
from protocol.close_codes import CLOSE_CODES, CloseCode
from protocol.revocations import RevocationList, Revoked

__all__ = ["Admin", "AdminError"]

log = logging.getLogger("gateway.admin")


class AdminError(Exception):
    """An admin request that cannot be done: ``status`` and ``code`` for the HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _revoked(rev: Revocation) -> Revoked:
    return Revoked(rev.id, rev.kind, rev.jti, rev.user_id, rev.revoked_at, rev.until)


class Admin:
    def __init__(self, hub: Hub, metrics: Metrics, audit: AuditLog | None, *, node: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.metrics = metrics
        self.audit = audit
        self.node = node
        self.clock = clock
        self.revocations = RevocationList()
        hub.on_control = self._control
        hub.on_broker_back.append(self.load)

    # -- checks ---------------------------------------------------------------------

    def check(self, principal: Principal) -> None:
        """Raise AuthError("revoked") when a revocation covers ``principal``."""
        rev = self.revocations.covering(principal, self.clock())
        if rev is not None:
            raise AuthError("revoked", "this token was revoked" if rev.kind == "token"
                            else "this user's tokens issued until then were revoked")

    def verify(self, verify: Callable[[str], Principal]) -> Callable[[str], Principal]:
        """``verify``, refusing revoked tokens too (for ``refresh``)."""
        def checked(token: str) -> Principal:
            principal = verify(token)
            self.check(principal)
            return principal
        return checked

    def load(self) -> None:
        """Take the active revocations from the database (at start, and when the broker is back)."""
        if self.audit is None:
            return
        try:
            revocations = self.audit.active_revocations(self.clock())
        except AuditUnavailable as exc:
            log.warning("cannot load revocations from the audit database now: %s", exc)
            return
        for rev in revocations:
            self._apply(_revoked(rev))

    # -- actions ----------------------------------------------------------------------

    def revoke(self, actor: str, *, jti: str | None = None, user: str | None = None, until: float | None = None,
               reason: str | None = None) -> dict[str, Any]:
        now = self.clock()
        if until is not None and until <= now:
            raise AdminError(400, "invalid_request", "until is in the past")
        kind = "token" if jti is not None else "user"
        rev = Revocation(uuid.uuid4().hex, kind, jti, user if jti is None else None, now, until, actor, reason)
        if self.audit is not None:
            try:
                self.audit.store_revocation(rev)
            except AuditUnavailable as exc:
                raise AdminError(503, "database_unavailable", f"the revocation could not be stored ({exc}); "
                                 "nothing was revoked: try again") from None
        closed = self._apply(_revoked(rev)) or 0
        self._broadcast({"kind": "revoke", "revocation": _revocation_json(rev)})
        self._record(actor, f"revoke_{kind}", {"jti": jti} if jti is not None else {"userId": user,
                                                                                    "until": until})
        return {"revocation": _revocation_json(rev), "closedHere": closed}

    def disconnect(self, actor: str, user: str) -> dict[str, Any]:
        closed = self._close(lambda p: p.user_id == user and not p.is_service, CloseCode.DISCONNECTED)
        self._broadcast({"kind": "disconnect", "userId": user, "node": self.node})
        self._record(actor, "disconnect", {"userId": user})
        return {"userId": user, "closedHere": closed}

    def active(self) -> list[dict[str, Any]]:
        if self.audit is None:
            return []
        try:
            return [_revocation_json(rev) for rev in self.audit.active_revocations(self.clock())]
        except AuditUnavailable as exc:
            raise AdminError(503, "database_unavailable", str(exc)) from None

    # -- every node ---------------------------------------------------------------------

    def _control(self, data: Any) -> None:
        """An admin action from any node (this one's too: the broker delivers to all)."""
        if not isinstance(data, dict):
            return
        if data.get("kind") == "revoke" and isinstance(data.get("revocation"), dict):
            rev = _revocation_from_json(data["revocation"])
            if self._apply(_revoked(rev)) is not None and self.audit is not None:
                # Kept here too (this node's SQLite; with PostgreSQL the same row, written once).
                self.audit.revocation_seen(rev)
        elif data.get("kind") == "disconnect" and data.get("node") != self.node:
            user = data.get("userId")
            self._close(lambda p: p.user_id == user and not p.is_service, CloseCode.DISCONNECTED)

    def _apply(self, rev: Revoked) -> int | None:
        """Take ``rev`` and close what it covers here: the connections closed, None if it was known."""
        if not self.revocations.add(rev):
            return None
        now = self.clock()
        self.revocations.prune(now)
        return self._close(lambda p: rev.covers(p, now), CloseCode.TOKEN_REVOKED)

    def _close(self, matches: Callable[[Principal], bool], code: CloseCode) -> int:
        closed = 0
        for session in list(self.hub.sessions.values()):
            if session.actor is not None and matches(session.principal):
                try:
                    session.actor.tell(CloseConnection(int(code), CLOSE_CODES[code].reason))
                    closed += 1
                except pykka.ActorDeadError:  # its connection is ending anyway
                    pass
        return closed

    def _broadcast(self, data: dict[str, Any]) -> None:
        try:
            self.hub.broker.publish(CONTROL_KEY, data, int(self.clock() * 1000))
        except BrokerUnavailable as exc:
            # Applied here and stored: other nodes load it when the broker is back.
            log.warning("admin action applied on this node only for now (broker unavailable: %s)", exc)

    def _record(self, actor: str, action: str, target: dict[str, Any]) -> None:
        labelled(self.metrics.admin_actions, action).inc()
        log.info("admin action %s by %s", action, actor, extra={"fields": {"target": target}})
        if self.audit is not None:
            self.audit.admin_action(AdminAction(uuid.uuid4().hex, self.clock(), actor, action, target, self.node))


def _revocation_json(rev: Revocation) -> dict[str, Any]:
    return {"id": rev.id, "kind": rev.kind, "jti": rev.jti, "userId": rev.user_id,
            "revokedAt": int(rev.revoked_at * 1000), "until": None if rev.until is None else int(rev.until * 1000),
            "actor": rev.actor, "reason": rev.reason}


def _revocation_from_json(obj: dict[str, Any]) -> Revocation:
    until = obj.get("until")
    return Revocation(str(obj["id"]), str(obj["kind"]), obj.get("jti"), obj.get("userId"),
                      obj["revokedAt"] / 1000, None if until is None else until / 1000, str(obj.get("actor")),
                      obj.get("reason"))
