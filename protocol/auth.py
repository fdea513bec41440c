"""JWT authentication: the token's ``sub`` is the user; algorithms are pinned.

HS256 with ``JWT_SECRET`` by default; RS256 or ES256 with a public key
(``JWT_PUBLIC_KEY``, PEM text or a path) as an option. ``exp`` and ``sub``
are required (PyJWT accepts a token without ``exp`` unless told otherwise),
``aud``/``iss`` are checked when configured, with a small leeway. Every
PyJWT failure is caught as ``jwt.PyJWTError`` (``InvalidKeyError`` is not an
``InvalidTokenError``) and reduced to a reason from a fixed set, which is
what metrics and logs carry — never the token.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.types import Options

__all__ = ["AuthError", "Authenticator", "Principal", "mint_token"]

AUTH_FAILURE_REASONS = ("missing", "malformed", "expired", "bad_signature", "bad_claims", "revoked")
SERVICE_ROLE = "service"
ADMIN_ROLE = "admin"


class AuthError(Exception):
    """``reason`` is one of AUTH_FAILURE_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    expires_at: float
    role: str = "user"
    bots: frozenset[str] | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False)
    jti: str | None = None  # the token's id: what POST /api/admin/revoke names
    issued_at: float = 0.0  # iat; 0 without one (a user revocation covers such a token)

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN_ROLE


@dataclass(frozen=True)
class Authenticator:
    verify_key: Any
    algorithms: tuple[str, ...] = ("HS256",)
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 10.0
    signing_key: Any = None

    def verify(self, token: str | None, *, now: float | None = None) -> Principal:
        if not token:
            raise AuthError("missing", "a token is required (?token= or the bearer subprotocol)")
        if token.count(".") != 2 or len(token) > 8192:
            raise AuthError("malformed", "the token is not a JWT")
        options: Options = {"require": ["exp", "sub"]}
        try:
            claims = jwt.decode(
                token, self.verify_key, algorithms=list(self.algorithms), audience=self.audience,
                issuer=self.issuer, leeway=self.leeway, options=options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "the token has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "the token signature is not valid") from None
        except jwt.DecodeError:
            raise AuthError("malformed", "the token cannot be decoded") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("bad_signature", "the token uses an algorithm this server does not accept") from None
        except jwt.PyJWTError as exc:
            raise AuthError("bad_claims", f"the token's claims are not valid ({type(exc).__name__})") from None
        if now is not None and claims["exp"] + self.leeway < now:
            raise AuthError("expired", "the token has expired")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError("bad_claims", "the token's sub must be a non-empty string")
        bots = claims.get("bots")
        jti, iat = claims.get("jti"), claims.get("iat")
        return Principal(
            user_id=sub,
            expires_at=float(claims["exp"]),
            role=claims.get("role", "user") if isinstance(claims.get("role"), str) else "user",
            bots=frozenset(b for b in bots if isinstance(b, str)) if isinstance(bots, list) else None,
            claims=claims,
            jti=jti if isinstance(jti, str) and jti else None,
            issued_at=float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else 0.0,
        )

    def mint(self, user: str, *, ttl: float = 3600.0, role: str | None = None, **claims: Any) -> str:
        if self.signing_key is None:
            raise RuntimeError("this server has no signing key (only a public key)")
        return mint_token(self.signing_key, user, algorithm=self.algorithms[0], ttl=ttl, role=role,
                          audience=self.audience, issuer=self.issuer, **claims)


def mint_token(key: Any, user: str, *, algorithm: str = "HS256", ttl: float = 3600.0, role: str | None = None,
               audience: str | None = None, issuer: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": user, "iat": now, "exp": now + int(ttl), "jti": secrets.token_hex(8),
                               **claims}
    if role:
        payload["role"] = role
    if audience:
        payload["aud"] = audience
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, key, algorithm=algorithm)


def demo_secret() -> str:
    return secrets.token_urlsafe(48)
