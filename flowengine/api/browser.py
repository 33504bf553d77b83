"""What a web browser may do here.

The engine listens on 127.0.0.1, and a web page in the user's browser can reach that too. The
browser sends such a page's requests with `Sec-Fetch-Site: cross-site` and the page's `Origin`:
those are refused on every route that changes something, so a page cannot start runs (whose
tasks run commands) or cancel them. (JSON bodies must also say `application/json`, which a page
cannot send cross-origin without a CORS preflight that the engine does not grant: http.read_json.)

Presigned URLs are the exception: they carry their own authority (the signature), and uploading
from a web page straight to a PutURL is what they are for. `/store/...` and `/api/v1/hook/...`
answer CORS preflights and let any origin read their answers (never with credentials).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Scope

from flowengine.api.http import base_url, header
from flowengine.errors import Error

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGNED_PREFIXES = ("/store/", "/api/v1/hook/")  # the routes whose URLs are presigned
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def is_presigned(path: str) -> bool:
    return path.startswith(SIGNED_PREFIXES)


def presigned_cors(app: ASGIApp) -> ASGIApp:
    """`app` answering CORS for presigned URLs: any origin, no cookies, ETag readable (S3's usual rules)."""
    return CORSMiddleware(
        app,
        allow_origins=["*"],
        allow_methods=["GET", "HEAD", "PUT", "POST"],
        allow_headers=["*"],  # the signed headers a WaitingURL lists (Content-Type, If-None-Match) and any other
        expose_headers=["ETag"],
        max_age=3600,
    )


def origin_of(url: str) -> str:
    """scheme://host[:port] as a browser writes an Origin: lower case, without the scheme's default port."""
    parts = urlsplit(url.lower())
    return f"{parts.scheme}://{parts.netloc.removesuffix(_DEFAULT_PORTS.get(parts.scheme, ''))}"


def refuse_cross_site(scope: Scope, public_url: str) -> None:
    """Raise 403 for a browser's cross-site request that would change something."""
    if scope["method"] in SAFE_METHODS or is_presigned(scope["path"]):
        return
    site = header(scope, b"sec-fetch-site")
    if site in ("cross-site", "same-site"):
        raise Error("forbidden", "cross_site_request",
                    f"a browser request from another site (Sec-Fetch-Site: {site}) may not change anything here",
                    "header.Sec-Fetch-Site")  # fmt: skip
    origin = header(scope, b"origin")
    if origin is None:
        return
    own = {origin_of(base_url(scope))}
    if public_url:
        own.add(origin_of(public_url))
    if origin_of(origin) not in own:
        raise Error("forbidden", "cross_site_request",
                    f"a browser request from origin {origin!r} may not change anything here (this engine is "
                    f"{' or '.join(sorted(own))})", "header.Origin")  # fmt: skip
