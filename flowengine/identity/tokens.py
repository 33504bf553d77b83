"""User session tokens: JWTs signed with HS256 (PyJWT), carrying the user's id and email.

Which teams the user belongs to is not in the token: the engine's records say, at each request,
so a removal from a team takes effect at once.
"""

from __future__ import annotations

import jwt
import msgspec

ISSUER = "flowengine"
ALGORITHM = "HS256"


class Claims(msgspec.Struct, frozen=True):
    sub: str  # the user's id
    email: str
    iat: int
    exp: int


class InvalidToken(Exception):
    pass


def issue(secret: bytes, user_id: str, email: str, now: float, ttl: float) -> str:
    claims = {"sub": user_id, "email": email, "iat": int(now), "exp": int(now + ttl), "iss": ISSUER}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: bytes, token: str, now: float) -> Claims:
    """The token's claims, if it is one of ours, untampered and unexpired; else InvalidToken."""
    try:
        # PyJWT checks exp against the system clock; the engine's clock is the one that counts.
        raw = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER, options={
            "require": ["sub", "exp", "iat", "iss"], "verify_exp": False,
        })  # fmt: skip
        claims = msgspec.convert(raw, Claims)
    except (jwt.PyJWTError, msgspec.ValidationError) as exc:
        raise InvalidToken(str(exc)) from None
    if claims.exp <= now:
        raise InvalidToken("the token has expired")
    return claims
