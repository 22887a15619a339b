"""ObjectHandle: one version of one object, as a reader (or a load) sees it."""
from __future__ import annotations

from concurrent.futures import Executor
from typing import Optional, Union

from ._metadata import HeadObjectResult, ObjectInfo
from ._pin import VersionPin
from ._stream import DEFAULT_CHUNK_SIZE, GetObjectStream, fetch_into
from ._transport import Transport

__all__ = ["ObjectHandle"]


class ObjectHandle:
    """Streams and ranged fills of ``s3://bucket/key``, all pinned to one version.

    Made by :meth:`s3io.S3Client.object_handle`, and handed to reader
    constructors as ``get_stream``.  Calling it returns a
    :class:`~s3io.GetObjectStream` of ``[start, end)``; :meth:`fetch_into`
    fills caller memory with one ranged GET.  Every request carries
    ``If-Match`` with the version seen first (from ``object_info``, HEAD or
    the first response), and every response is checked against it.
    Thread-safe.
    """

    def __init__(
        self, transport: Transport, bucket: str, key: str, object_info: Optional[Union[ObjectInfo, HeadObjectResult]] = None
    ) -> None:
        self._transport = transport
        self.bucket = bucket
        self.key = key
        self._info = object_info
        self._pin = VersionPin(bucket, key, getattr(object_info, "etag", None) if object_info is not None else None)

    @property
    def part_size(self) -> int:
        """Size of the ranged GETs of a whole-object read."""
        return self._transport.config.part_size

    @property
    def max_concurrency(self) -> int:
        """Requests in flight for one reader."""
        return self._transport.config.max_concurrency

    @property
    def etag(self) -> Optional[str]:
        """The pinned version, if any yet."""
        return self._pin.version

    @property
    def known_size(self) -> Optional[int]:
        """The size from ``object_info`` (no request), else None."""
        return None if self._info is None else self._info.size

    def executor(self) -> Executor:
        """The client's pool for parallel part requests."""
        return self._transport.executor()

    def object_info(self) -> Union[ObjectInfo, HeadObjectResult]:
        """``object_info`` if given, else a HEAD (which pins the version)."""
        if self._info is None:
            info = self._transport.head_object(self.bucket, self.key)
            if info.etag:
                self._pin.check(info.etag)
            self._info = info
        return self._info

    def __call__(self, start: Optional[int] = None, end: Optional[int] = None, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> GetObjectStream:
        """A lazy stream of bytes ``[start, end)`` of this version."""
        return GetObjectStream(
            self._transport.get_object, self.bucket, self.key, start, end,
            pin=self._pin, retry=self._transport.retry, chunk_size=chunk_size,
        )

    def fetch_into(self, start: int, dest) -> str:
        """Fill ``dest`` with bytes ``[start, start + len(dest))`` of this version; return the version.

        Holds a slot of the client's adaptive concurrency limit while it runs:
        parallel paths call this from their workers.
        """
        with self._transport.limit:
            return fetch_into(
                self._transport.get_object, self.bucket, self.key, start, dest,
                pin=self._pin, retry=self._transport.retry,
            )

    def __repr__(self) -> str:
        return f"ObjectHandle(s3://{self.bucket}/{self.key}, etag={self._pin.version!r})"
