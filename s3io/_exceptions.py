"""Exceptions raised by the s3io client layer.

Every error that comes from S3 (or from talking to it) is an :class:`S3Exception`
carrying the HTTP status, the S3 error code, the bucket, the key and the request
id when they are known.  Subclasses let callers tell common cases apart by type
(decided from status and code, never from message text).  All of them pickle, so
they cross process boundaries (DataLoader workers, ``torch.multiprocessing``).
"""
from __future__ import annotations

from typing import Optional

__all__ = [
    "S3Exception",
    "S3ObjectNotFound",
    "S3BucketNotFound",
    "S3AccessDenied",
    "S3ObjectChanged",
    "S3IncompleteRead",
    "S3InvalidRange",
]


class S3Exception(Exception):
    """An error accessing S3.

    Parameters
    ----------
    message : str
        What went wrong, naming the object (``s3://bucket/key``) when known.
    status : int, optional
        HTTP status of the failed response (None if there was no response).
    code : str, optional
        S3 error code, e.g. ``"NoSuchKey"`` or ``"SlowDown"``.
    bucket, key : str, optional
        The object the request was about.
    request_id : str, optional
        The ``x-amz-request-id`` of the failed response, for support tickets.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        bucket: Optional[str] = None,
        key: Optional[str] = None,
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.bucket = bucket
        self.key = key
        self.request_id = request_id

    def __reduce__(self):
        # Exception's default pickling passes only ``args``: keep the attributes too.
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


def _rebuild(cls, args, state):
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class S3ObjectNotFound(S3Exception):
    """The key does not exist in the bucket (HTTP 404, ``NoSuchKey``)."""


class S3BucketNotFound(S3Exception):
    """The bucket does not exist (HTTP 404, ``NoSuchBucket``)."""


class S3AccessDenied(S3Exception):
    """The credentials may not do this (HTTP 403)."""


class S3ObjectChanged(S3Exception):
    """The object was overwritten while it was being read (HTTP 412 on ``If-Match``, or a new ETag)."""


class S3IncompleteRead(S3Exception):
    """The body stayed shorter than announced after every retry."""


class S3InvalidRange(S3Exception):
    """A byte range that the object does not hold was asked for (e.g. past its end)."""
