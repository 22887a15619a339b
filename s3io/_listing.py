"""Listing: ListObjectsV2 page by page, as the reference's ``ListObjectStream``."""
from __future__ import annotations

from typing import Optional

from ._checks import check_bucket_key
from ._metadata import ListObjectResult, ObjectInfo
from ._pin import normalize_etag
from ._boto import epoch_seconds
from ._transport import Transport

__all__ = ["ListObjectStream"]

_MAX_KEYS_LIMIT = 1000  # S3 returns at most this many keys per page


class ListObjectStream:
    """The pages of a listing, fetched one at a time as they are iterated.

    Made by :meth:`s3io.S3Client.list_objects`.  Each page is a
    :class:`~s3io.ListObjectResult`; a prefix of millions of keys is never held
    in memory at once.

    Attributes
    ----------
    bucket, prefix, delimiter : str
    max_keys : int
        Keys per page (at most 1000).
    continuation_token : str or None
        Where the next page starts (None before the first page).
    complete : bool
        True once the last page was returned.
    """

    def __init__(self, transport: Transport, bucket: str, prefix: str = "", delimiter: str = "", max_keys: int = 1000) -> None:
        check_bucket_key(bucket, need_key=False)
        for name, value in (("prefix", prefix), ("delimiter", delimiter)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or not 1 <= max_keys <= _MAX_KEYS_LIMIT:
            raise ValueError(f"max_keys must be an int between 1 and {_MAX_KEYS_LIMIT}, not {max_keys!r}")
        self._transport = transport
        self.bucket = bucket
        self.prefix = prefix
        self.delimiter = delimiter
        self.max_keys = max_keys
        self.continuation_token: Optional[str] = None
        self.complete = False

    def __iter__(self) -> "ListObjectStream":
        return self

    def __next__(self) -> ListObjectResult:
        if self.complete:
            raise StopIteration
        kwargs = dict(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=self.max_keys)
        if self.delimiter:
            kwargs["Delimiter"] = self.delimiter
        if self.continuation_token:
            kwargs["ContinuationToken"] = self.continuation_token
        page = self._transport.call("list_objects_v2", self.bucket, self.prefix or None, **kwargs)
        token = page.get("NextContinuationToken")
        # A truncated page without a token would list the same page forever.
        self.complete = not (page.get("IsTruncated") and token)
        self.continuation_token = token
        return ListObjectResult(
            object_info=[
                ObjectInfo(
                    key=item["Key"],
                    etag=normalize_etag(item.get("ETag")) or "",
                    size=int(item.get("Size") or 0),
                    last_modified=epoch_seconds(item.get("LastModified")),
                    storage_class=item.get("StorageClass"),
                )
                for item in page.get("Contents") or ()
            ],
            common_prefixes=[p["Prefix"] for p in page.get("CommonPrefixes") or () if "Prefix" in p],
        )

    def __repr__(self) -> str:
        return f"ListObjectStream(s3://{self.bucket}/{self.prefix}, delimiter={self.delimiter!r}, complete={self.complete})"
