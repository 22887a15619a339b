"""s3io's SigV4 signer gives botocore's signature for the same request (no server)."""
import datetime

import botocore.auth
import botocore.config
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from s3io._routes import query_string
from s3io._sigv4 import Signer, canonical_path

NOW = datetime.datetime(2026, 11, 30, 23, 59, 58, tzinfo=datetime.timezone.utc)
KEYS = ["plain/key.bin", "ünï/cødé ✓/空", "with space", "plus+sign=eq", "100%", "a/../b", "q?x=1#frag", "tilde~star*paren()"]


def _botocore_authorization(credentials, method, url, headers):
    request = AWSRequest(method=method, url=url, headers=dict(headers))
    request.context["client_config"] = botocore.config.Config(s3={"payload_signing_enabled": False})
    botocore.auth.S3SigV4Auth(credentials, "s3", "eu-west-1").add_auth(request)
    return request.headers["Authorization"], request.headers.get("X-Amz-Security-Token")


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [None, "session-token/with+odd=chars"])
def test_signature_matches_botocore(monkeypatch, key, token):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    signer = Signer(credentials, "eu-west-1", clock=NOW.timestamp)
    path = "/bucket/" + canonical_path(key)
    query = query_string({"partNumber": "3", "uploadId": "up/load+id=="})
    for method, extra, q in (
        ("GET", {"range": "bytes=0-4095", "if-match": '"0123abcd"', "x-amz-request-payer": "requester"}, ""),
        ("HEAD", {}, ""),
        ("PUT", {"x-amz-storage-class": "STANDARD_IA"}, ""),
        ("PUT", {}, query),
    ):
        ours = signer.sign(method, "s3.eu-west-1.amazonaws.com", path, dict(extra), q)
        url = "https://s3.eu-west-1.amazonaws.com" + path + ("?" + q if q else "")
        theirs, their_token = _botocore_authorization(credentials, method, url, extra)
        assert ours["authorization"] == theirs
        assert ours.get("x-amz-security-token") == their_token
        assert ours["x-amz-date"] == "20261130T235958Z" and ours["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


def test_signing_key_is_derived_once_per_day_and_secret():
    calls = []

    class Counting(Credentials):
        def get_frozen_credentials(self):
            calls.append(1)
            return super().get_frozen_credentials()

    clock = [NOW.timestamp()]
    signer = Signer(Counting("AK", "secret"), "us-east-1", clock=lambda: clock[0])
    signer.sign("GET", "h", "/b/k", {})
    first = signer._key
    signer.sign("GET", "h", "/b/k", {})
    assert signer._key is first  # same day, same secret: reused
    clock[0] += 86400
    signer.sign("GET", "h", "/b/k", {})
    assert signer._key is not first and len(calls) == 3  # credentials asked on every request


def test_canonical_path_encodes_every_reserved_byte_once():
    assert canonical_path("a b/c+d=e%/ü~") == "a%20b/c%2Bd%3De%25/%C3%BC~"
    assert canonical_path("a/../b") == "a/../b"  # never normalised
