import datetime as dt
from urllib.parse import parse_qs, urlsplit

import pytest
from minio import Minio

from flowengine.stores import sigv4

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_NOW = dt.datetime(2013, 5, 24, tzinfo=dt.UTC)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, strict_parsing=True).items()}


def put_url(**overrides: object) -> str:
    args: dict = {
        "method": "PUT",
        "url_base": "http://127.0.0.1:9000",
        "bucket": "flows",
        "key": "in/photo.png",
        "region": "us-east-1",
        "access_key": "testkey",
        "secret_key": "testsecret123",
        "expires_in": 900,
        "now": 1_700_000_000.0,
        "signed_headers": {"Content-Length": "5", "If-None-Match": "*", "Content-Type": "image/png"},
    }
    args.update(overrides)
    return sigv4.presign(**args)


def test_aws_documented_example() -> None:
    # "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", GET test.txt.
    url = sigv4.presign(
        "GET",
        "https://s3.amazonaws.com",
        "examplebucket",
        "test.txt",
        "us-east-1",
        AWS_KEY,
        AWS_SECRET,
        86400,
        AWS_NOW,
        {},
        virtual_host=True,
    )
    assert url == (
        "https://examplebucket.s3.amazonaws.com/test.txt"
        "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )


def test_matches_minio_presigner_for_host_only_signing() -> None:
    # minio's own presigner is an independent implementation of the same path-style algorithm.
    client = Minio("127.0.0.1:9000", "testkey", "testsecret123", secure=False, region="us-east-1")
    when = dt.datetime(2024, 2, 29, 12, 34, 56, tzinfo=dt.UTC)
    key = "runs/a b/ü+~x.txt"
    theirs = client.presigned_get_object("flows", key, expires=dt.timedelta(seconds=600), request_date=when)
    ours = sigv4.presign(
        "GET", "http://127.0.0.1:9000", "flows", key, "us-east-1", "testkey", "testsecret123", 600, when
    )
    assert urlsplit(ours).path == urlsplit(theirs).path
    assert query(ours) == query(theirs)


def test_extra_headers_are_lowercased_sorted_and_signed() -> None:
    q = query(put_url())
    assert q["X-Amz-SignedHeaders"] == "content-length;content-type;host;if-none-match"
    assert q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert q["X-Amz-Credential"] == "testkey/20231114/us-east-1/s3/aws4_request"
    assert q["X-Amz-Date"] == "20231114T221320Z"
    assert q["X-Amz-Expires"] == "900"
    assert len(q["X-Amz-Signature"]) == 64


def test_signature_depends_on_every_signed_value() -> None:
    base = query(put_url())["X-Amz-Signature"]
    variants = [
        {"signed_headers": {"Content-Length": "6", "If-None-Match": "*", "Content-Type": "image/png"}},
        {"signed_headers": {"Content-Length": "5", "Content-Type": "image/png"}},
        {"method": "GET"},
        {"key": "in/photo2.png"},
        {"bucket": "other"},
        {"url_base": "http://127.0.0.1:9001"},
        {"region": "eu-west-1"},
        {"secret_key": "other"},
        {"expires_in": 901},
        {"now": 1_700_000_001.0},
    ]
    assert all(query(put_url(**v))["X-Amz-Signature"] != base for v in variants)


def test_header_name_case_and_value_spacing_do_not_matter() -> None:
    plain = put_url(signed_headers={"content-type": "image/png"})
    shouted = put_url(signed_headers={"CONTENT-TYPE": "  image/png "})
    assert plain == shouted


def test_epoch_and_datetime_give_the_same_url() -> None:
    when = dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
    other_zone = when.astimezone(dt.timezone(dt.timedelta(hours=5)))
    assert put_url(now=when) == put_url(now=other_zone) == put_url(now=1_700_000_000.0)
    assert put_url(now=1_700_000_000.9) == put_url()  # X-Amz-Date has whole seconds


def test_key_is_uri_encoded_per_segment() -> None:
    url = put_url(key="a b/ü+~x=y&z.txt", signed_headers={})
    assert urlsplit(url).path == "/flows/a%20b/%C3%BC%2B~x%3Dy%26z.txt"


def test_default_port_is_dropped_from_host() -> None:
    assert put_url(url_base="https://S3.example.com:443").startswith("https://s3.example.com/flows/")
    assert put_url(url_base="http://s3.example.com:80").startswith("http://s3.example.com/flows/")
    assert put_url(url_base="https://s3.example.com:8443").startswith("https://s3.example.com:8443/flows/")
    assert put_url(url_base="http://[::1]:9000/").startswith("http://[::1]:9000/flows/")


@pytest.mark.parametrize(
    "overrides",
    [
        {"expires_in": 0},
        {"expires_in": 604801},
        {"expires_in": 1.5},
        {"now": dt.datetime(2024, 1, 1)},  # naive
        {"signed_headers": {"Host": "evil.example"}},
        {"signed_headers": {"Content-Type": "a", "content-type": "b"}},
        {"url_base": "ftp://127.0.0.1"},
        {"url_base": "http://127.0.0.1:9000/prefix"},
        {"url_base": "127.0.0.1:9000"},
    ],
)
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValueError):
        put_url(**overrides)


def test_longest_allowed_expiry() -> None:
    assert query(put_url(expires_in=604800))["X-Amz-Expires"] == "604800"
