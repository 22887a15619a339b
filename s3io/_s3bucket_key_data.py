"""S3BucketKeyData: one object of a dataset (the reference's module path and name)."""
from __future__ import annotations

from typing import NamedTuple, Optional

from ._metadata import ObjectInfo

__all__ = ["S3BucketKeyData"]


class S3BucketKeyData(NamedTuple):
    """Read-only information about an object stored in S3.

    Attributes
    ----------
    bucket, key : str
    object_info : ObjectInfo, optional
        From the listing of a prefix (size and ETag: saves a request and pins
        the version); None for objects named by URI.
    """

    bucket: str
    key: str
    object_info: Optional[ObjectInfo] = None
