"""Version pinning: every response of one read must come from one version of the object.

A reader (and each file of a DCP load) pins the version it sees first: its
ETag, sent as ``If-Match`` on every later request and compared on every
response, because some stores (rclone) ignore ``If-Match``.  Stores that send
no ETag (rclone with ``--etag-hash ''``) still send ``Last-Modified`` and the
size: those are pinned instead, so an overwrite a second or more after the
first response, or one that changes the size, is still caught.  Such a
fallback version is compared but never sent.
"""
from __future__ import annotations

import threading
from typing import Optional

from ._exceptions import S3ObjectChanged

__all__ = ["VersionPin", "is_etag", "normalize_etag", "response_version"]

_FALLBACK = "s3io-version:"


def normalize_etag(etag: Optional[str]) -> Optional[str]:
    """The ETag in its quoted header form (listings of some servers drop the quotes); None if empty."""
    if not etag:
        return None
    etag = etag.strip()
    if etag in ('""', 'W/""'):  # rclone without hashing: a quoted empty ETag pins nothing
        return None
    if etag.startswith('"') or etag.startswith('W/"') or etag.startswith(_FALLBACK):
        return etag
    return f'"{etag}"'


def is_etag(version: Optional[str]) -> bool:
    """True for a real ETag (one that If-Match can carry), False for a fallback version or None."""
    return bool(version) and not version.startswith(_FALLBACK)


def response_version(headers, size: Optional[int]) -> Optional[str]:
    """What pins the version a response came from: its ETag, else Last-Modified and size, else None.

    ``headers`` maps lower-case header names (``headers.get("etag")``).
    """
    normalized = normalize_etag(headers.get("etag"))
    if normalized is not None:
        return normalized
    last_modified = headers.get("last-modified")
    if not last_modified:
        return None
    return f"{_FALLBACK}last-modified={last_modified};size={size}"


class VersionPin:
    """The one version of ``s3://bucket/key`` that a reader or a load may see (thread-safe).

    Parameters
    ----------
    bucket, key : str
    version : str, optional
        Known already (from a listing or HEAD); otherwise the first
        :meth:`check` pins it.
    """

    __slots__ = ("bucket", "key", "_version", "_lock")

    def __init__(self, bucket: str, key: str, version: Optional[str] = None) -> None:
        self.bucket = bucket
        self.key = key
        self._version = normalize_etag(version)
        self._lock = threading.Lock()

    @property
    def version(self) -> Optional[str]:
        """The pinned ETag or fallback version; None until a response was seen."""
        return self._version

    @property
    def if_match(self) -> Optional[str]:
        """The ETag to send as ``If-Match`` (None: nothing pinned, or a fallback version)."""
        version = self._version
        return version if is_etag(version) else None

    def check(self, seen: Optional[str]) -> None:
        """Pin ``seen`` if nothing is pinned yet; raise if it differs from the pinned version.

        Raises
        ------
        S3ObjectChanged
            ``seen`` is another version than the one pinned.
        """
        if seen is None or seen == self._version:
            return
        with self._lock:
            if self._version is None:
                self._version = seen
                return
            pinned = self._version
        if seen != pinned:
            what = "ETag" if is_etag(seen) else "version"
            raise S3ObjectChanged(
                f"s3://{self.bucket}/{self.key} changed while being read: {what} {pinned} then {seen}",
                status=200,
                code="ETagChanged",
                bucket=self.bucket,
                key=self.key,
            )

    def __repr__(self) -> str:
        return f"VersionPin(s3://{self.bucket}/{self.key}, {self._version!r})"
