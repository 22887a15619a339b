"""RangedS3Reader: ranged GETs on demand, over the core's RangeBuffer."""
from __future__ import annotations

from typing import Callable, Optional

from .._checks import check_bucket_key, writable_view
from .._exceptions import S3IncompleteRead
from .._core import RangeBuffer
from .._memory import allocate, finish_bytes
from .s3reader import _ObjectReader, _check_read_size

__all__ = ["RangedS3Reader"]

# Reads at least this long go through readinto() on a fresh bytes object; smaller
# ones use RangeBuffer.read, which fills its bytes result in place when buffered.
_DIRECT_READ_MIN = 64 * 1024


class RangedS3Reader(_ObjectReader):
    """Range-based S3 reader implementation with adaptive buffering.

    Each read fetches only the bytes it needs with a ranged GET.  The buffering
    policy is the core's :class:`~s3io._core.RangeBuffer`: reads smaller than
    ``buffer_size`` load ``buffer_size`` bytes into an internal buffer and are
    served from it; larger reads bypass the buffer and go from the socket
    straight into the caller's memory; a read that starts inside the buffer and
    runs past it reuses the buffered part.  All GETs of one reader carry
    ``If-Match`` with the ETag from HEAD (or the listing).

    Parameters
    ----------
    bucket, key : str
        The object.
    get_object_info : callable
        Returns the object's metadata; its ``size`` bounds the reads.
    get_stream : callable
        ``get_stream(start, end)`` returns a stream of bytes ``[start, end)``.
    buffer_size : int, optional
        Internal buffer size in bytes; None: 8 MiB; 0 disables buffering.
    """

    def __init__(
        self,
        bucket: str,
        key: str,
        get_object_info: Callable,
        get_stream: Callable,
        buffer_size: Optional[int] = None,
    ) -> None:
        check_bucket_key(bucket, key)
        if buffer_size is not None and (
            isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 0
        ):
            raise ValueError(f"buffer_size must be a non-negative int or None, not {buffer_size!r}")
        self._bucket = bucket
        self._key = key
        self._get_object_info = get_object_info
        self._get_stream = get_stream
        self._buffer_size = buffer_size
        fetch_into = getattr(get_stream, "fetch_into", None)
        self._fetch_direct = fetch_into if callable(fetch_into) else None
        self._range_buffer: Optional[RangeBuffer] = None  # made on first use (needs the size)
        self._closed = False

    # -- byte source -----------------------------------------------------------------

    def _buffer(self) -> RangeBuffer:
        self._check_open()
        if self._range_buffer is None:
            size = self._get_object_info().size
            self._range_buffer = RangeBuffer(size, self._fetch_into, self._buffer_size)
        return self._range_buffer

    def _fetch_into(self, start: int, end: int, dest) -> None:
        """RangeBuffer's byte source: one ranged GET straight into ``dest``."""
        if self._fetch_direct is not None:
            self._fetch_direct(start, dest)
            return
        view = memoryview(dest)
        offset = 0
        stream = self._get_stream(start, end)
        try:
            for chunk in stream:
                n = len(chunk)
                if offset + n > len(view):
                    raise ValueError(f"s3://{self._bucket}/{self._key}: stream sent more than bytes {start}-{end}")
                view[offset : offset + n] = chunk
                offset += n
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if offset != len(view):
            raise S3IncompleteRead(
                f"s3://{self._bucket}/{self._key}: stream ended at byte {start + offset} of {start}-{end}",
                bucket=self._bucket,
                key=self._key,
            )

    # -- file API ------------------------------------------------------------------

    def read(self, size: Optional[int] = None) -> bytes:
        """Read up to ``size`` bytes from the current position (None or negative: to the end).

        Raises
        ------
        S3Exception
            An error occurred accessing S3.
        ValueError
            The reader is closed.
        """
        self._check_open()
        size = _check_read_size(size)
        if size == 0:
            return b""  # no I/O, not even the HEAD
        buffer = self._buffer()
        remaining = buffer.size - buffer.tell()
        count = remaining if size < 0 else min(size, remaining)
        if count < _DIRECT_READ_MIN:
            return buffer.read(count)
        # Large reads: the socket fills the bytes object that is returned (no staging copy).
        owner, view = allocate(count)
        n = buffer.readinto(view)
        return finish_bytes(owner, view, 0, n)

    def readinto(self, buf) -> int:
        """Read up to ``len(buf)`` bytes into the writable ``buf``; return the count, 0 at the end."""
        self._check_open()
        view = writable_view(buf)
        if len(view) == 0:
            return 0
        return self._buffer().readinto(view)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """Change the position to ``offset`` relative to ``whence`` (SEEK_SET, SEEK_CUR, SEEK_END).

        No I/O beyond learning the size (HEAD, once).  Past the end clamps to
        the size; a negative target raises ``ValueError``, position unchanged.
        """
        self._check_open()
        if (
            self._range_buffer is None
            and whence == 0
            and type(offset) is int
            and offset == 0
        ):
            return 0  # rewinding an unopened reader needs no size
        return self._buffer().seek(offset, whence)

    def tell(self) -> int:
        """The current position."""
        self._check_open()
        if self._range_buffer is None:
            return 0
        return self._range_buffer.tell()

    def close(self) -> None:
        """Free the buffer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        buffer, self._range_buffer = self._range_buffer, None
        if buffer is not None:
            buffer.close()

    def __repr__(self) -> str:
        return f"RangedS3Reader(bucket={self._bucket!r}, key={self._key!r}, buffer_size={self._buffer_size!r})"
