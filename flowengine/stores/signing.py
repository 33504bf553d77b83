"""HMAC-signed URLs for what the engine serves itself (embedded-store objects, webhook wells).

The signature covers the method, the resource, the expiry and the values of the signed headers.
A request missing a signed header, or carrying another value, fails the check just as S3 does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

_BLOCK = 64  # SHA-256's block size in bytes
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP token (RFC 9110)


class SignatureError(Exception):
    """Why a presigned request is refused (HTTP 403)."""


class Signer:
    def __init__(self, secret: bytes) -> None:
        # HMAC-SHA256 as RFC 2104 defines it, from two SHA-256 states keyed once and copied per
        # signature: a third of the cost of copying an hmac.HMAC, and every run document signs URLs.
        key = (hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret).ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def mac(self, message: bytes) -> str:
        """HMAC-SHA256 of `message` under the secret, in hex."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def _mac(self, method: str, resource: str, expires: int, headers: Mapping[str, str]) -> str:
        names = sorted(headers)
        lines = [method, resource, str(expires), ";".join(names), *(f"{n}:{headers[n]}" for n in names)]
        return self.mac("\n".join(lines).encode())

    def query(self, method: str, resource: str, expires: float, headers: Mapping[str, str]) -> str:
        """The query string that authorizes `method` on `resource` until `expires` (epoch seconds)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        expiry = int(expires)
        signature = self._mac(method, resource, expiry, lowered)
        # Header names are tokens (no characters to escape); ';' is kept as is, as S3 does.
        return f"X-Expires={expiry}&X-SignedHeaders={';'.join(sorted(lowered))}&X-Signature={signature}"

    def verify(
        self, method: str, resource: str, query: Mapping[str, str], headers: Mapping[str, str], now: float
    ) -> dict[str, str]:
        """Check a presigned request; return the signed headers (lower-case names) it carried."""
        try:
            expires = int(query["X-Expires"])
            signature = query["X-Signature"]
        except (KeyError, ValueError):
            raise SignatureError("the URL is not presigned: X-Expires and X-Signature are required") from None
        names = [n for n in query.get("X-SignedHeaders", "").split(";") if n]
        if not all(_HEADER_NAME.fullmatch(n) for n in names):
            raise SignatureError("X-SignedHeaders must list header names, separated by ';'")
        missing = [n for n in names if n not in headers]
        if missing:
            raise SignatureError(f"signed header(s) missing from the request: {', '.join(missing)}")
        signed = {n: headers[n] for n in names}
        # Bytes: compare_digest refuses str with non-ASCII characters, which a client may send.
        expected = self._mac(method, resource, expires, signed).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            raise SignatureError("signature does not match (a tampered URL, or a signed header with another value)")
        if now > expires:
            raise SignatureError("the URL has expired")
        return signed


# What a signature covers, besides method, expiry and headers: one resource name per kind of URL.


def local_resource(store: str, key: str) -> str:
    """An embedded-store object."""
    return f"store/{store}/{key}"


def local_part_resource(store: str, key: str, upload_id: str, number: int) -> str:
    """One part of a multipart upload to an embedded-store object."""
    return f"{local_resource(store, key)}?partNumber={number}&uploadId={upload_id}"


def hook_resource(run_id: str, edge: str) -> str:
    """A webhook well of a run."""
    return f"hook/{run_id}/{edge}"
