"""AWS Signature Version 4 for the S3 requests s3io sends itself.

botocore signs every request through its event system and re-derives the
signing key each time.  Here the canonical request is built directly from the
few headers an S3 GET, HEAD or PUT carries, and the signing key is derived once
per secret key, day and region.  Payloads are never hashed
(``UNSIGNED-PAYLOAD``, as s3io's botocore client is configured too).

Credentials come from botocore's provider chain, asked on every request, so
refreshable credentials (assumed roles, web identity, instance profiles) are
renewed by botocore when they near expiry.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import quote

__all__ = ["Signer", "UNSIGNED_PAYLOAD", "canonical_path"]

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_ALGORITHM = "AWS4-HMAC-SHA256"


def canonical_path(path: str) -> str:
    """``path`` URI-encoded the way S3 signs it: every byte but ``A-Za-z0-9-._~/`` percent-encoded, once.

    S3 keys are never normalised (``a/../b`` stays three segments), so the
    same string is both the request target and the signed path.
    """
    return quote(path.encode("utf-8"), safe="/~")


class Signer:
    """Signs S3 requests for one region with the credentials of a botocore session.

    Parameters
    ----------
    credentials : botocore.credentials.Credentials
        Asked for its frozen values on every request (refreshable ones renew themselves).
    region : str
        The signing region.
    clock : callable, default time.time
        Seconds since the epoch, for ``x-amz-date``.
    """

    def __init__(self, credentials, region: str, clock: Callable[[], float] = time.time) -> None:
        self._credentials = credentials
        self.region = region
        self._clock = clock
        self._stamp = (None, "")  # (second, x-amz-date of that second): swapped atomically
        self._key: Tuple[Optional[tuple], bytes] = (None, b"")  # ((secret, day), key): swapped atomically
        self._lock = threading.Lock()

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached_for, key = self._key
        if cached_for == (secret, day):
            return key
        with self._lock:
            k_date = hmac.new(("AWS4" + secret).encode("utf-8"), day.encode(), hashlib.sha256).digest()
            k_region = hmac.new(k_date, self.region.encode(), hashlib.sha256).digest()
            k_service = hmac.new(k_region, b"s3", hashlib.sha256).digest()
            key = hmac.new(k_service, b"aws4_request", hashlib.sha256).digest()
            self._key = ((secret, day), key)
        return key

    def sign(self, method: str, host: str, path: str, headers: Dict[str, str], query: str = "") -> Dict[str, str]:
        """Add ``x-amz-date``, ``x-amz-content-sha256``, the session token and ``Authorization`` to ``headers``.

        Parameters
        ----------
        method : str
        host : str
            The ``Host`` header value (``host`` or ``host:port``).
        path : str
            The request path, already encoded with :func:`canonical_path`.
        headers : dict
            Lower-case header names; all of them are signed.  Updated in place
            and returned.
        query : str
            The canonical query string (``""`` for none).
        """
        frozen = self._credentials.get_frozen_credentials()
        now = int(self._clock())
        stamp = self._stamp
        if stamp[0] != now:  # formatting the date costs more than the rest of the string work
            stamp = self._stamp = (now, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
        amz_date = stamp[1]
        day = amz_date[:8]
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = UNSIGNED_PAYLOAD
        if frozen.token:
            headers["x-amz-security-token"] = frozen.token
        headers["host"] = host
        names = sorted(headers)
        signed_headers = ";".join(names)
        canonical = "%s\n%s\n%s\n%s\n\n%s\n%s" % (
            method,
            path,
            query,
            "\n".join([name + ":" + headers[name] for name in names]),
            signed_headers,
            UNSIGNED_PAYLOAD,
        )
        scope = "%s/%s/s3/aws4_request" % (day, self.region)
        string_to_sign = "%s\n%s\n%s\n%s" % (
            _ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        )
        signature = hmac.digest(self._signing_key(frozen.secret_key, day), string_to_sign.encode("utf-8"), "sha256")
        del headers["host"]  # the connection sends its own Host header
        headers["authorization"] = "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
            _ALGORITHM, frozen.access_key, scope, signed_headers, signature.hex()
        )
        return headers

    def __repr__(self) -> str:
        return f"Signer(region={self.region!r})"
