"""JWT verification: pinned algorithms, required claims, reasons without tokens."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import ConfigError, Settings
from protocol.auth import Authenticator, AuthError, mint_token

SECRET = "s" * 40


def test_valid_token():
    auth = Authenticator(SECRET, signing_key=SECRET)
    principal = auth.verify(auth.mint("alice", ttl=60, role="service", bots=["b1"]))
    assert principal.user_id == "alice" and principal.is_service and principal.bots == frozenset({"b1"})


@pytest.mark.parametrize(("make", "reason"), [
    (lambda now: None, "missing"),
    (lambda now: "x.y", "malformed"),
    (lambda now: jwt.encode({"sub": "a", "exp": now + 60}, "t" * 40, algorithm="HS256"), "bad_signature"),
    (lambda now: jwt.encode({"sub": "a", "exp": now - 30}, SECRET, algorithm="HS256"), "expired"),
    (lambda now: jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"), "bad_claims"),
    (lambda now: jwt.encode({"exp": now + 60}, SECRET, algorithm="HS256"), "bad_claims"),
    (lambda now: jwt.encode({"sub": 5, "exp": now + 60}, SECRET, algorithm="HS256"), "bad_claims"),
    (lambda now: jwt.encode({"sub": "a", "exp": "tomorrow"}, SECRET, algorithm="HS256"), "malformed"),
    (lambda now: jwt.encode({"sub": "a", "exp": now + 60}, None, algorithm="none"), "bad_signature"),
    (lambda now: jwt.encode({"sub": "a", "exp": now + 60}, SECRET, algorithm="HS512"), "bad_signature"),
])
def test_rejections(make, reason):
    with pytest.raises(AuthError) as info:
        Authenticator(SECRET).verify(make(int(time.time())))
    assert info.value.reason == reason


def test_leeway_boundary():
    auth = Authenticator(SECRET, leeway=10)
    now = int(time.time())
    auth.verify(jwt.encode({"sub": "a", "exp": now - 5}, SECRET, algorithm="HS256"))
    with pytest.raises(AuthError):
        auth.verify(jwt.encode({"sub": "a", "exp": now - 15}, SECRET, algorithm="HS256"))


def test_audience_and_issuer_when_configured():
    auth = Authenticator(SECRET, audience="ws", issuer="auth", signing_key=SECRET)
    auth.verify(auth.mint("a"))
    for claims in ({"aud": "other", "iss": "auth"}, {"aud": "ws", "iss": "other"}, {}):
        with pytest.raises(AuthError) as info:
            auth.verify(mint_token(SECRET, "a", **claims))
        assert info.value.reason == "bad_claims"


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_algorithms_and_no_key_confusion(algorithm):
    private = rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    auth = Authenticator(pem, (algorithm,))
    auth.verify(mint_token(private, "alice", algorithm=algorithm))
    # HS256 "signed" with the public key as secret: the classic confusion attack.
    forged = jwt.api_jws.PyJWS().encode(
        b'{"sub":"alice","exp":%d}' % (time.time() + 60), b"k", algorithm="HS256")
    with pytest.raises(AuthError):
        auth.verify(forged)


def test_settings_refuse_to_start_without_a_key_unless_demo():
    with pytest.raises(ConfigError, match="JWT_SECRET is not set"):
        Settings.from_env({})
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({"JWT_SECRET": "short"})
    demo = Settings.from_env({"DEMO_MODE": "true"})
    assert demo.demo_mode and demo.authenticator.signing_key
    settings = Settings.from_env({"JWT_SECRET": SECRET, "WS_PORT": "4000", "WS_HEARTBEAT_INTERVAL": "15000"})
    assert settings.port == 4000 and settings.heartbeat_interval == 15 and settings.silence_timeout == 30
    assert Settings.from_env({"JWT_SECRET": SECRET, "PORT": "5000", "WS_PORT": "4000"}).port == 5000
