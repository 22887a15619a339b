"""S3Writer: a write-only file that becomes one S3 object when closed."""
from __future__ import annotations

import io
import logging
import threading
from typing import List, Optional

from ._checks import check_bucket_key
from ._memory import allocate, finish_bytes
from ._multipart import MultipartUpload
from ._transport import Transport

__all__ = ["S3Writer"]

log = logging.getLogger(__name__)

_CLOSED = "I/O operation on closed file."
_MAX_PARTS_IN_FLIGHT = 8  # with 8 MiB parts: at most ~72 MiB held per writer
_MIN_PART = 5 * 1024 * 1024  # S3's smallest part (all but the last)
_MAX_PART = 5 * 1024 * 1024 * 1024


class _PartBuffer:
    """One part's bytes, filled in place and handed out as ``bytes`` without a copy when full."""

    __slots__ = ("_owner", "_view", "filled")

    def __init__(self, size: int) -> None:
        self._owner, self._view = allocate(size)  # fresh memory: no memset, no copy at to_bytes()
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.filled == len(self._view)

    def add(self, data: memoryview) -> int:
        """Copy as much of ``data`` as fits; return how much."""
        take = min(len(data), len(self._view) - self.filled)
        self._view[self.filled : self.filled + take] = data[:take]
        self.filled += take
        return take

    def to_bytes(self) -> bytes:
        return finish_bytes(self._owner, self._view, 0, self.filled)


class S3Writer(io.BufferedIOBase):
    """A write-only, file-like representation of a single object stored in S3.

    Made by :meth:`s3io.S3Client.put_object`.  Below ``part_size`` the object
    is sent as one PUT at :meth:`close`; above, as a multipart upload whose
    parts are uploaded in parallel while writing continues, with a fixed
    number of parts in flight (bounded memory).  The object becomes visible
    only when :meth:`close` returns.  An exception inside ``with`` aborts the
    upload: no object and no orphaned parts are left behind.

    Parameters
    ----------
    transport : Transport
        The client's transport (``S3Client.transport``).
    bucket, key : str
    storage_class : str, optional
        e.g. ``"STANDARD_IA"``.
    part_size : int, optional
        Default: the client's ``part_size``.
    max_parts_in_flight : int, optional
        Parts being uploaded at once (each holds ``part_size`` bytes).
    """

    def __init__(
        self,
        transport: Transport,
        bucket: str,
        key: str,
        *,
        storage_class: Optional[str] = None,
        part_size: Optional[int] = None,
        max_parts_in_flight: Optional[int] = None,
    ) -> None:
        check_bucket_key(bucket, key)
        if part_size is not None and (
            isinstance(part_size, bool) or not isinstance(part_size, int) or not _MIN_PART <= part_size <= _MAX_PART
        ):
            raise ValueError(f"part_size must be an int between 5 MiB and 5 GiB, not {part_size!r}")
        if max_parts_in_flight is not None and (
            isinstance(max_parts_in_flight, bool) or not isinstance(max_parts_in_flight, int) or max_parts_in_flight < 1
        ):
            raise ValueError(f"max_parts_in_flight must be a positive int, not {max_parts_in_flight!r}")
        config = transport.config
        self._transport = transport
        self.bucket = bucket
        self.key = key
        self._storage_class = storage_class or None
        self._part_size = part_size or config.part_size
        limit = max_parts_in_flight or max(2, min(config.max_concurrency, _MAX_PARTS_IN_FLIGHT))
        self._slots = threading.BoundedSemaphore(limit)
        self._buffer: Optional[_PartBuffer] = None  # the part being filled (made on first write)
        self._position = 0
        self._upload: Optional[MultipartUpload] = None  # once the first part is full
        self._next_part = 1
        self._futures: List = []
        self._error: Optional[BaseException] = None
        self._closed = False
        self._lock = threading.RLock()

    # -- io API --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closed (or aborted)."""
        return self._closed

    def readable(self) -> bool:
        """False."""
        return False

    def seekable(self) -> bool:
        """False."""
        return False

    def writable(self) -> bool:
        """True until closed."""
        return not self._closed

    def tell(self) -> int:
        """Bytes written so far."""
        return self._position

    def flush(self) -> None:
        """No-op: parts are sent as they fill, the rest at close."""

    def write(self, data) -> int:
        """Write a bytes-like object (bytes, bytearray, memoryview, numpy/tensor memory).

        The bytes are copied before returning, so the caller may reuse ``data``.

        Returns
        -------
        int
            ``len(data)`` in bytes.

        Raises
        ------
        ValueError
            The writer is closed.
        S3Exception
            A part upload failed.
        """
        with self._lock:
            if self._closed:
                raise ValueError(_CLOSED)
            if self._error is not None:
                self._fail()
            try:
                view = memoryview(data)
            except TypeError:
                raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None
            if not view.c_contiguous:
                view = memoryview(view.tobytes())
            if view.ndim != 1 or view.format != "B":
                view = view.cast("B")
            total = len(view)
            offset = 0
            part_size = self._part_size
            try:
                while offset < total:
                    if self._buffer is None:
                        self._buffer = _PartBuffer(part_size)
                    offset += self._buffer.add(view[offset:])
                    if self._buffer.full:
                        part, self._buffer = self._buffer, None
                        self._submit_part(part.to_bytes())
            except BaseException as exc:
                if self._error is None:
                    self._error = exc
                self._fail()
            self._position += total
            return total

    def _fail(self) -> None:
        """A part upload failed: abort the upload, close, and raise the failure."""
        self._closed = True
        self._buffer = None
        self._abort()
        raise self._error

    def close(self) -> None:
        """Send what is left and complete the upload. Safe to call twice.

        Raises
        ------
        S3Exception
            The upload failed (it is aborted: no object, no orphaned parts).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._upload is None:
                    part, self._buffer = self._buffer, None
                    body = b"" if part is None else part.to_bytes()
                    with self._transport.limit:  # writers run in parallel (DCP saves): they adapt to throttling
                        self._transport.put_object(self.bucket, self.key, body, storage_class=self._storage_class)
                    return
                if self._buffer is not None and self._buffer.filled:
                    part, self._buffer = self._buffer, None
                    self._submit_part(part.to_bytes())
                self._buffer = None
                self._wait_for_parts()
                if self._error is not None:
                    raise self._error
                with self._transport.limit:
                    self._upload.complete()
                self._upload = None
            except BaseException:
                self._abort()
                raise

    def __enter__(self) -> "S3Writer":
        if self._closed:
            raise ValueError(_CLOSED)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        log.info("s3://%s/%s: upload discarded after %s: %s", self.bucket, self.key, exc_type.__name__, exc)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._buffer = None
                self._abort()

    def __del__(self) -> None:
        # io.IOBase would close() here and publish a half-written object: discard instead.
        try:
            if not self._closed:
                self._closed = True
                self._buffer = None
                if self._upload is not None:
                    log.warning("s3://%s/%s: S3Writer garbage-collected unclosed; upload discarded", self.bucket, self.key)
                    self._abort()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"S3Writer(s3://{self.bucket}/{self.key}, written={self._position}, closed={self._closed})"

    # -- multipart -----------------------------------------------------------------

    def _submit_part(self, part: bytes) -> None:
        if self._upload is None:
            with self._transport.limit:
                self._upload = MultipartUpload.start(self._transport, self.bucket, self.key, storage_class=self._storage_class)
        self._slots.acquire()  # bounded memory: wait while the limit of parts is in flight
        if self._error is not None:
            self._slots.release()
            raise self._error
        number = self._next_part
        self._next_part += 1
        try:
            future = self._transport.executor().submit(self._upload_part, number, part)
        except BaseException:
            self._slots.release()
            raise
        self._futures.append(future)

    def _upload_part(self, number: int, part: bytes) -> None:
        try:
            with self._transport.limit:  # parts run in parallel: they adapt to throttling
                self._upload.upload_part(number, part)
        except BaseException as exc:
            if self._error is None:
                self._error = exc
        finally:
            self._slots.release()

    def _wait_for_parts(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            try:
                future.result()
            except BaseException:  # recorded in self._error by the task
                pass

    def _abort(self) -> None:
        """Abort the multipart upload (after in-flight parts finish, so none survives it)."""
        self._wait_for_parts()
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.abort()
