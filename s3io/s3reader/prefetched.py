"""PrefetchedS3Reader: a file-like view of an object whose bytes are fetched, or arriving, in the background."""
from __future__ import annotations

from io import SEEK_SET
from typing import Optional

from .._checks import check_bucket_key, writable_view
from .._memory import finish_bytes
from .s3reader import _ObjectReader, _check_read_size, _seek_target

__all__ = ["PrefetchedS3Reader"]


class PrefetchedS3Reader(_ObjectReader):
    """The reader a dataset's transform gets for an object fetched ahead of its turn.

    ``S3IterableDataset`` and ``S3MapDataset.__getitems__`` start fetching
    objects before the transform asks for them; the transform gets this
    reader at once, and each read waits only for the bytes it needs.  A GET
    that failed raises (an :class:`~s3io.S3Exception`) from the read that
    needs its bytes.  ``read()`` of the whole object returns the fetched
    memory itself, without a copy.

    Parameters
    ----------
    bucket, key : str
        The object.
    fetch
        Its download: ``wait_size()`` (the size, once known), ``wait_for(end)``
        (bytes ``[0, end)`` arrived), ``buffer()`` (``(owner, view)`` of the
        memory) and ``cancel()``; an :class:`s3io._prefetch.ObjectFetch`.
    """

    def __init__(self, bucket: str, key: str, fetch) -> None:
        check_bucket_key(bucket, key)
        self._bucket = bucket
        self._key = key
        self._fetch = fetch
        self._position = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"PrefetchedS3Reader(bucket={self._bucket!r}, key={self._key!r})"

    def close(self) -> None:
        """Stop the GETs not started and let the memory go. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        fetch, self._fetch = self._fetch, None
        fetch.cancel()

    def tell(self) -> int:
        """The current position."""
        self._check_open()
        return self._position

    def _end_of_read(self, size: int) -> int:
        """Where a read of ``size`` bytes (-1: to the end) from the position stops."""
        if size == 0:
            return self._position
        total = self._fetch.wait_size()
        return total if size < 0 else min(total, self._position + size)

    def read(self, size: Optional[int] = None) -> bytes:
        """Read up to ``size`` bytes (None or negative: to the end); ``b""`` at the end.

        Raises
        ------
        S3Exception
            Fetching the bytes needed failed.
        ValueError
            The reader is closed.
        """
        self._check_open()
        start = self._position
        end = self._end_of_read(_check_read_size(size))
        if end <= start:
            return b""
        self._fetch.wait_for(end)
        self._position = end
        owner, view = self._fetch.buffer()
        return finish_bytes(owner, view, start, end)

    def readinto(self, buf) -> int:
        """Read up to ``len(buf)`` bytes into the writable bytes-like ``buf``; return the count, 0 at the end."""
        self._check_open()
        dest = writable_view(buf)
        start = self._position
        end = self._end_of_read(len(dest))
        if end <= start:
            return 0
        self._fetch.wait_for(end)
        dest[: end - start] = self._fetch.buffer()[1][start:end]
        self._position = end
        return end - start

    def seek(self, offset: int, whence: int = SEEK_SET, /) -> int:
        """Change the position (SEEK_SET, SEEK_CUR, SEEK_END); a target past the end stays at the end.

        Returns
        -------
        int
            The new position.
        """
        self._check_open()
        target = _seek_target(offset, whence, self._position, self._fetch.wait_size)
        if target > 0:
            target = min(target, self._fetch.wait_size())
        self._position = target
        return target
