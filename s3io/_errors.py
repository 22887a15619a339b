"""Error translation: what S3 (or the wire) said, as an :class:`S3Exception` subclass.

The subclass is chosen by HTTP status and S3 error code, never by message
text.  Messages name the operation and the object (``s3://bucket/key``) and end
with the request id, for support tickets; they never carry credentials.
"""
from __future__ import annotations

import http.client
from typing import Optional

import botocore.exceptions
import urllib3.exceptions

from ._exceptions import (
    S3AccessDenied,
    S3BucketNotFound,
    S3Exception,
    S3InvalidRange,
    S3ObjectChanged,
    S3ObjectNotFound,
)

__all__ = ["REQUEST_ERRORS", "s3_error", "translate", "where"]

_BY_CODE = {"NoSuchKey": S3ObjectNotFound, "NoSuchBucket": S3BucketNotFound}
_ACCESS_CODES = ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch")

# What a request can raise: botocore's errors, and raw urllib3 / socket errors that escape
# botocore while it reads an error response's body.
REQUEST_ERRORS = (
    botocore.exceptions.ClientError,
    botocore.exceptions.BotoCoreError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


def where(bucket: Optional[str], key: Optional[str]) -> str:
    """``s3://bucket/key``, ``s3://bucket`` or ``S3``: what a message names."""
    if bucket and key:
        return f"s3://{bucket}/{key}"
    return f"s3://{bucket}" if bucket else "S3"


def s3_error(
    operation: str,
    bucket: Optional[str],
    key: Optional[str],
    *,
    status: Optional[int],
    code: Optional[str],
    detail: str = "",
    request_id: Optional[str] = None,
) -> S3Exception:
    """The exception for an error response ``status``/``code`` to ``operation``."""
    cls = _BY_CODE.get(code)
    if cls is None:
        if status == 403 or code in _ACCESS_CODES:
            cls = S3AccessDenied
        elif status == 412 or code == "PreconditionFailed":
            cls = S3ObjectChanged
        elif status == 416 or code == "InvalidRange":
            cls = S3InvalidRange
        elif status == 404 and code in (None, "404", "NotFound") and key:
            cls = S3ObjectNotFound  # HEAD has no body: the client may refine to S3BucketNotFound
        else:
            cls = S3Exception
    message = f"{operation} {where(bucket, key)} failed: {code or 'error'} (HTTP {status})"
    if cls is S3ObjectChanged:
        message += ": the object was overwritten since the read started"
    elif detail:
        message += f": {detail}"
    if request_id:
        message += f" [request id {request_id}]"
    return cls(message, status=status, code=code, bucket=bucket, key=key, request_id=request_id)


def _from_client_error(exc: botocore.exceptions.ClientError, operation: str, bucket, key) -> S3Exception:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    return s3_error(
        operation,
        bucket,
        key,
        status=meta.get("HTTPStatusCode"),
        code=error.get("Code") or None,
        detail=error.get("Message") or "",
        request_id=meta.get("RequestId") or (meta.get("HTTPHeaders") or {}).get("x-amz-request-id"),
    )


def translate(exc: BaseException, operation: str, bucket: Optional[str], key: Optional[str]) -> BaseException:
    """``exc`` as an :class:`S3Exception` if it came from a request; anything else unchanged."""
    if isinstance(exc, S3Exception):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        return _from_client_error(exc, operation, bucket, key)
    if isinstance(exc, REQUEST_ERRORS):
        # botocore and urllib3 messages name endpoints and files, never secrets.
        detail = str(exc) if isinstance(exc, botocore.exceptions.BotoCoreError) else f"{type(exc).__name__}: {exc}"
        return S3Exception(f"{operation} {where(bucket, key)} failed: {detail}", bucket=bucket, key=key)
    return exc
