"""What S3 says about objects: HEAD results and listing pages (the reference's field names)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

__all__ = ["HeadObjectResult", "ObjectInfo", "ListObjectResult"]


@dataclass(frozen=True)
class HeadObjectResult:
    """An object's metadata from HEAD.

    Attributes
    ----------
    etag : str
        The ETag as S3 sends it (with its quotes); ``""`` from stores that send none.
    size : int
        Size in bytes.
    last_modified : int
        Seconds since the epoch.
    storage_class : str or None
    """

    etag: str
    size: int
    last_modified: int
    storage_class: Optional[str] = None


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing.

    Attributes
    ----------
    key : str
    etag : str
    size : int
    last_modified : int
        Seconds since the epoch.
    storage_class : str or None
    """

    key: str
    etag: str
    size: int
    last_modified: int
    storage_class: Optional[str] = None


@dataclass(frozen=True)
class ListObjectResult:
    """One page of a listing.

    Attributes
    ----------
    object_info : list of ObjectInfo
        The objects of this page, in key order.
    common_prefixes : list of str
        With a delimiter: the "directories" of this page.
    """

    object_info: List[ObjectInfo] = field(default_factory=list)
    common_prefixes: List[str] = field(default_factory=list)
