"""What the proxy knows of one client request: its S3 operation kind, for matching faults."""
from __future__ import annotations

from typing import Dict, Optional
from urllib.parse import parse_qsl, unquote, urlsplit


class Request:
    """What a fault's ``when`` predicate sees of one client request.

    Attributes
    ----------
    method : str
        ``GET``, ``PUT``, ...
    target : str
        The request target exactly as sent (``/bucket/key?partNumber=1&uploadId=x``).
    path : str
        Percent-decoded path, without the query.
    query : dict
        Query parameters (a key without ``=`` maps to ``""``).
    headers : dict
        Header names lower-cased; repeated headers joined with ``", "``.
    bucket, key : str
        From a path-style path (``key`` is ``""`` for bucket requests).
    kind : str
        The S3 operation: ``GetObject``, ``HeadObject``, ``PutObject``,
        ``UploadPart``, ``UploadPartCopy``, ``CopyObject``,
        ``CreateMultipartUpload``, ``CompleteMultipartUpload``,
        ``AbortMultipartUpload``, ``ListObjectsV2``, ``ListObjects``,
        ``ListMultipartUploads``, ``ListParts``, ``DeleteObject``,
        ``DeleteObjects``, ``HeadBucket``, ``CreateBucket``, ``DeleteBucket``,
        ``ListBuckets``, or ``Other``.
    body_length : int or None
        Request body length from ``Content-Length`` (0 without a body), None
        for a chunked body.
    """

    __slots__ = ("method", "target", "path", "query", "headers", "bucket", "key", "kind", "body_length")

    def __init__(self, method: str, target: str, headers: Dict[str, str], body_length: Optional[int]) -> None:
        self.method = method
        self.target = target
        raw_path, _, raw_query = target.partition("?")
        if raw_path.startswith(("http://", "https://")):  # absolute-form target
            raw_path = urlsplit(raw_path).path or "/"
        self.path = unquote(raw_path)
        self.query = dict(parse_qsl(raw_query, keep_blank_values=True))
        self.headers = headers
        self.body_length = body_length
        self.bucket, _, self.key = self.path.lstrip("/").partition("/")
        self.kind = _classify(self)

    @property
    def range(self) -> Optional[str]:
        """The ``Range`` header, or None."""
        return self.headers.get("range")

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """A request header by case-insensitive name."""
        return self.headers.get(name.lower(), default)

    def __repr__(self) -> str:
        return "<Request %s %s (%s)>" % (self.method, self.target, self.kind)


def _classify(req: Request) -> str:
    """The S3 operation a path-style request is (``Other`` if unknown)."""
    m, q, bucket, key = req.method, req.query, req.bucket, req.key
    copy = "x-amz-copy-source" in req.headers
    if not bucket:
        return "ListBuckets" if m == "GET" else "Other"
    if key:
        if m == "GET":
            if "uploadId" in q:
                return "ListParts"
            return "Other" if _subresource(q) else "GetObject"
        if m == "HEAD":
            return "HeadObject"
        if m == "PUT":
            if "partNumber" in q and "uploadId" in q:
                return "UploadPartCopy" if copy else "UploadPart"
            if _subresource(q):
                return "Other"
            return "CopyObject" if copy else "PutObject"
        if m == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
            return "Other"
        if m == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        return "Other"
    if m == "GET":
        if "uploads" in q:
            return "ListMultipartUploads"
        if q.get("list-type") == "2":
            return "ListObjectsV2"
        return "Other" if _subresource(q) else "ListObjects"
    if m == "HEAD":
        return "HeadBucket"
    if m == "PUT":
        return "Other" if _subresource(q) else "CreateBucket"
    if m == "POST" and "delete" in q:
        return "DeleteObjects"
    if m == "DELETE":
        return "Other" if _subresource(q) else "DeleteBucket"
    return "Other"


# Query parameters that turn a request on a bucket or key into another operation.
_SUBRESOURCES = frozenset(
    """accelerate acl analytics attributes cors delete encryption intelligent-tiering inventory legal-hold
    lifecycle location logging metrics notification object-lock ownershipControls policy policyStatus
    publicAccessBlock replication requestPayment restore retention select tagging torrent uploads
    versioning versions website""".split()
)


def _subresource(query: Dict[str, str]) -> bool:
    return not _SUBRESOURCES.isdisjoint(query)


def is_get_object(req: Request) -> bool:
    """True for a GetObject (ranged or not)."""
    return req.kind == "GetObject"


def is_ranged_get(req: Request) -> bool:
    """True for a GetObject with a ``Range`` header."""
    return req.kind == "GetObject" and req.range is not None


def is_upload_part(req: Request) -> bool:
    """True for an UploadPart (PUT with ``partNumber`` and ``uploadId``, not a copy)."""
    return req.kind == "UploadPart"


def is_copy_object(req: Request) -> bool:
    """True for a CopyObject or UploadPartCopy (PUT with ``x-amz-copy-source``)."""
    return req.kind in ("CopyObject", "UploadPartCopy")


def is_put_object(req: Request) -> bool:
    """True for a single-request PutObject."""
    return req.kind == "PutObject"
