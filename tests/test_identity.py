"""API keys and session tokens, as values."""

from __future__ import annotations

import jwt
import pytest

from flowengine.identity.keys import PREFIXES, key_hash, key_prefix, kind_of, new_key
from flowengine.identity.tokens import InvalidToken, issue, verify

SECRET = b"s" * 32


@pytest.mark.parametrize("kind", ["integration", "device", "agent"])
def test_keys_carry_their_kind_and_enough_randomness(kind):
    keys = {new_key(kind) for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert key.startswith(PREFIXES[kind]) and kind_of(key) == kind and len(key) == 3 + 43
        assert key_prefix(key) == key[:11] and len(key_hash(key)) == 64 and key_hash(key) != key_hash(key + "x")


def test_a_jwt_is_not_a_key():
    assert kind_of(issue(SECRET, "u1", "a@example.com", 1000, 60)) is None


def test_token_round_trip_and_expiry():
    token = issue(SECRET, "u1", "a@example.com", now=1000, ttl=60)
    claims = verify(SECRET, token, now=1059)
    assert (claims.sub, claims.email, claims.exp) == ("u1", "a@example.com", 1060)
    with pytest.raises(InvalidToken, match="expired"):
        verify(SECRET, token, now=1060)


@pytest.mark.parametrize(
    "token",
    [
        issue(b"another secret, long enough for HS256", "u1", "a@example.com", 1000, 60),  # not ours
        issue(SECRET, "u1", "a@example.com", 1000, 60)[:-2] + "xx",  # tampered signature
        jwt.encode({"sub": "u1", "exp": 2000, "iat": 1000, "iss": "someone"}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "u1", "exp": 2000, "iat": 1000, "iss": "flowengine"}, SECRET * 2, algorithm="HS512"),
        jwt.encode({"exp": 2000, "iat": 1000, "iss": "flowengine"}, SECRET, algorithm="HS256"),  # no user
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.",  # alg none
        "not a token",
    ],
)
def test_tokens_that_are_refused(token):
    with pytest.raises(InvalidToken):
        verify(SECRET, token, now=1001)
