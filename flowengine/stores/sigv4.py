"""AWS Signature Version 4 presigned URLs (query-string auth) for S3, with arbitrary signed headers.

The minio client's presigner signs only `host`. A presigned upload must also pin `Content-Length`,
`Content-Type` and `If-None-Match: *`, so that whoever holds the URL cannot upload more, or
something else, or overwrite: S3 rejects a request whose signed headers are missing or differ.

Pure: no clock, no network. The caller passes the signing time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES = 7 * 24 * 3600  # S3 refuses longer-lived presigned URLs
_DEFAULT_PORTS = {"http": 80, "https": 443}


def presign(
    method: str,
    url_base: str,
    bucket: str,
    key: str,
    region: str,
    access_key: str,
    secret_key: str,
    expires_in: int,
    now: dt.datetime | float,
    signed_headers: dict[str, str] | None = None,
    *,
    virtual_host: bool = False,
    service: str = "s3",
    query: dict[str, str] | None = None,
) -> str:
    """Return the full presigned URL for `method` on `bucket`/`key`.

    `url_base` is `scheme://host[:port]`. Path style (`/bucket/key`) by default; with
    `virtual_host` the bucket becomes the first label of the host and the path is `/key`.
    The request must then carry every header in `signed_headers` with exactly these values.
    `query` is signed too: an UploadPart URL's `partNumber` and `uploadId`.
    """
    if not 1 <= expires_in <= MAX_EXPIRES or int(expires_in) != expires_in:
        raise ValueError(f"expires_in must be a whole number of seconds in 1..{MAX_EXPIRES}, got {expires_in}")
    scheme, host = _split_base(url_base)
    if virtual_host:
        host, path = f"{bucket}.{host}", "/" + _uri_encode(key, keep_slash=True)
    else:
        path = f"/{_uri_encode(bucket, keep_slash=False)}/{_uri_encode(key, keep_slash=True)}"

    headers = {"host": host}
    for name, value in (signed_headers or {}).items():
        lower = name.strip().lower()
        if lower in headers:
            raise ValueError(f"header {name!r} given twice (or it is 'host', which is always signed)")
        # Canonical form: trimmed, inner runs of spaces collapsed to one (as S3 does before comparing).
        headers[lower] = " ".join(value.split())
    names = sorted(headers)
    header_list = ";".join(names)

    stamp = _amz_date(now)
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    query = {
        **(query or {}),
        "X-Amz-Algorithm": ALGORITHM,
        "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(int(expires_in)),
        "X-Amz-SignedHeaders": header_list,
    }
    canonical_query = "&".join(
        f"{_uri_encode(k, keep_slash=False)}={_uri_encode(v, keep_slash=False)}" for k, v in sorted(query.items())
    )
    canonical_request = "\n".join(
        [
            method.upper(),
            path,
            canonical_query,
            *(f"{name}:{headers[name]}" for name in names),
            "",  # the canonical headers block ends with a newline of its own
            header_list,
            UNSIGNED_PAYLOAD,
        ]
    )
    string_to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    signing_key = ("AWS4" + secret_key).encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{scheme}://{host}{path}?{canonical_query}&X-Amz-Signature={signature}"


def _split_base(url_base: str) -> tuple[str, str]:
    """(scheme, host[:port]) with a default port dropped: clients omit it from Host, and Host is signed."""
    parts = urlsplit(url_base)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError(f"url_base must be scheme://host[:port], got {url_base!r}")
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    if parts.port == _DEFAULT_PORTS[parts.scheme]:
        host = host.rsplit(":", 1)[0]
    return parts.scheme, host


def _uri_encode(text: str, *, keep_slash: bool) -> str:
    # S3's UriEncode: every byte except A-Z a-z 0-9 - . _ ~ as %XX (upper case); '/' kept only in paths.
    return quote(text, safe="/" if keep_slash else "")


def _amz_date(now: dt.datetime | float) -> str:
    if isinstance(now, dt.datetime):
        if now.tzinfo is None:
            # A naive datetime is local time to Python and UTC to S3: refuse to guess.
            raise ValueError("now must be timezone-aware")
        moment = now.astimezone(dt.UTC)
    else:
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
    return moment.strftime("%Y%m%dT%H%M%SZ")
