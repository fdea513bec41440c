"""Revoked tokens and users: what the handshake, ``refresh`` and open connections are checked against. Pure.

A revocation names one token (its ``jti``) or one user. A user revocation
covers every token of that user issued at or before it (``iat`` in whole
seconds; a token without ``iat`` is covered): the user signs in again for
a new token. Either kind holds until ``until`` (epoch seconds), or for
good; a revocation past its ``until`` is forgotten (the tokens it covered
have normally expired by then: set ``until`` past their ``exp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.auth import Principal

__all__ = ["RevocationList", "Revoked"]


@dataclass(frozen=True, slots=True)
class Revoked:
    id: str
    kind: str  # "token" or "user"
    jti: str | None
    user_id: str | None
    revoked_at: float  # epoch seconds
    until: float | None = None  # epoch seconds; None: for good

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def covers(self, principal: Principal, now: float) -> bool:
        if not self.active(now):
            return False
        if self.kind == "token":
            return principal.jti is not None and principal.jti == self.jti
        return principal.user_id == self.user_id and principal.issued_at <= math.floor(self.revoked_at)


class RevocationList:
    def __init__(self) -> None:
        self._tokens: dict[str, Revoked] = {}
        self._users: dict[str, Revoked] = {}  # the latest revocation of each user

    def __len__(self) -> int:
        return len(self._tokens) + len(self._users)

    def add(self, rev: Revoked) -> bool:
        """Take ``rev``; False when it was known already (a second delivery)."""
        if rev.kind == "token" and rev.jti is not None:
            if rev.jti in self._tokens and self._tokens[rev.jti].id == rev.id:
                return False
            self._tokens[rev.jti] = rev
            return True
        if rev.kind == "user" and rev.user_id is not None:
            known = self._users.get(rev.user_id)
            if known is not None and (known.id == rev.id or known.revoked_at > rev.revoked_at):
                return False
            self._users[rev.user_id] = rev
            return True
        return False

    def covering(self, principal: Principal, now: float) -> Revoked | None:
        if principal.jti is not None:
            rev = self._tokens.get(principal.jti)
            if rev is not None and rev.covers(principal, now):
                return rev
        rev = self._users.get(principal.user_id)
        return rev if rev is not None and rev.covers(principal, now) else None

    def prune(self, now: float) -> None:
        for table in (self._tokens, self._users):
            for key in [k for k, rev in table.items() if not rev.active(now)]:
                del table[key]
