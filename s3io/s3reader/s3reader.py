"""S3Reader: the abstract read-only file over one S3 object."""
from __future__ import annotations

import io
from abc import ABC, abstractmethod
from io import SEEK_SET
from typing import Optional

__all__ = ["S3Reader"]


class S3Reader(ABC, io.BufferedIOBase):
    """An abstract base class for read-only, file-like representation of a single object stored in S3.

    Concrete readers (:class:`SequentialS3Reader`, :class:`RangedS3Reader`,
    :class:`DCPOptimizedS3Reader`) are made by :class:`S3ReaderConstructor`
    constructors, which :class:`s3io.S3Client` completes with the remaining
    arguments (``bucket``, ``key``, ``get_object_info``, ``get_stream``).
    Readers are not thread-safe: use one per thread.
    """

    @property
    @abstractmethod
    def bucket(self) -> str:
        """The object's bucket."""

    @property
    @abstractmethod
    def key(self) -> str:
        """The object's key."""

    @abstractmethod
    def read(self, size: Optional[int] = None) -> bytes:
        """Read and return up to ``size`` bytes (None or negative: to EOF); ``b""`` at EOF."""

    @abstractmethod
    def seek(self, offset: int, whence: int = SEEK_SET, /) -> int:
        """Change the position (SEEK_SET, SEEK_CUR, SEEK_END); return the new position."""

    @abstractmethod
    def tell(self) -> int:
        """Return the current position."""

    @abstractmethod
    def readinto(self, buf) -> int:
        """Read up to ``len(buf)`` bytes into the writable ``buf``; return the count, 0 at EOF."""

    def read1(self, size: Optional[int] = -1) -> bytes:
        """Same as :meth:`read` (there is no raw layer underneath)."""
        return self.read(size)

    def readinto1(self, buf) -> int:
        """Same as :meth:`readinto`."""
        return self.readinto(buf)

    def seekable(self) -> bool:
        """Return whether the object supports seek operations (True)."""
        return True

    def readable(self) -> bool:
        """Return whether the object was opened for reading (True)."""
        return True

    def writable(self) -> bool:
        """Return whether the object was opened for writing (False)."""
        return False



class _ObjectReader(S3Reader):
    """What s3io's readers share: the object's name and the closed state.

    Subclasses set ``_bucket``, ``_key`` and ``_closed`` in ``__init__`` and
    call :meth:`_check_open` before touching their buffers.
    """

    _bucket: str
    _key: str
    _closed: bool

    @property
    def bucket(self) -> str:
        """The object's bucket."""
        return self._bucket

    @property
    def key(self) -> str:
        """The object's key."""
        return self._key

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise _closed_error()

    def readable(self) -> bool:
        """True (ValueError once closed)."""
        self._check_open()
        return True

    def seekable(self) -> bool:
        """True (ValueError once closed)."""
        self._check_open()
        return True

# Argument checks shared by s3io's readers (same messages as io.BytesIO where it has one).

_CLOSED = "I/O operation on closed file."


def _closed_error() -> ValueError:
    return ValueError(_CLOSED)


def _check_read_size(size) -> int:
    """-1 for "to EOF" (None or negative), else the size."""
    if size is None:
        return -1
    if isinstance(size, bool) or not isinstance(size, int):
        try:
            size = size.__index__()
        except AttributeError:
            raise TypeError(f"argument should be integer or None, not '{type(size).__name__}'") from None
    return -1 if size < 0 else size


def _seek_target(offset, whence, position: int, get_size) -> int:
    """The absolute target of a seek (not yet clamped); ``get_size()`` only for SEEK_END."""
    if isinstance(offset, bool) or not isinstance(offset, int):
        try:
            offset = offset.__index__()
        except AttributeError:
            raise TypeError(f"integer argument expected, got '{type(offset).__name__}'") from None
    if isinstance(whence, bool) or not isinstance(whence, int):
        raise TypeError(f"integer argument expected for whence, got '{type(whence).__name__}'")
    if whence == io.SEEK_SET:
        target = offset
    elif whence == io.SEEK_CUR:
        target = position + offset
    elif whence == io.SEEK_END:
        target = get_size() + offset
    else:
        raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
    if target < 0:
        raise ValueError(f"negative seek value {target}")
    return target
