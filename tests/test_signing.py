"""The embedded store's URL signatures: HMAC-SHA256 exactly, and checked as S3 checks them."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from flowengine.stores.signing import SignatureError, Signer


@pytest.mark.parametrize("secret_size", [0, 1, 32, 63, 64, 65, 200])
def test_mac_is_hmac_sha256(secret_size):
    secret = os.urandom(secret_size)
    for message in (b"", b"PUT\nstore/default/k\n1700000000\n", os.urandom(1000)):
        assert Signer(secret).mac(message) == hmac.new(secret, message, hashlib.sha256).hexdigest()


def test_a_signed_query_verifies_and_any_change_is_refused():
    signer = Signer(b"s" * 32)
    query = dict(
        p.split("=", 1) for p in signer.query("PUT", "store/default/k", 2000, {"Content-Type": "a/b"}).split("&")
    )
    assert signer.verify("PUT", "store/default/k", query, {"content-type": "a/b"}, now=1000) == {"content-type": "a/b"}
    refusals = [
        ("GET", "store/default/k", query, {"content-type": "a/b"}, 1000),  # another method
        ("PUT", "store/default/other", query, {"content-type": "a/b"}, 1000),  # another object
        ("PUT", "store/default/k", query, {"content-type": "c/d"}, 1000),  # another signed header value
        ("PUT", "store/default/k", query, {}, 1000),  # a signed header left out
        ("PUT", "store/default/k", {**query, "X-Expires": "3000"}, {"content-type": "a/b"}, 1000),  # extended
        ("PUT", "store/default/k", query, {"content-type": "a/b"}, 2001),  # expired
    ]
    for method, resource, q, headers, now in refusals:
        with pytest.raises(SignatureError):
            signer.verify(method, resource, q, headers, now)
    with pytest.raises(SignatureError):
        Signer(b"t" * 32).verify("PUT", "store/default/k", query, {"content-type": "a/b"}, 1000)  # another secret
