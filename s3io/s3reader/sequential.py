"""SequentialS3Reader: the whole object in one buffer, fetched as parallel ranged GETs."""
from __future__ import annotations

import logging
import threading
import zlib
from typing import Callable, List, Optional, Tuple

from .._checks import check_bucket_key, writable_view
from .._exceptions import S3Exception, S3IncompleteRead
from .._memory import allocate, finish_bytes
from .s3reader import _ObjectReader, _check_read_size, _seek_target

__all__ = ["SequentialS3Reader"]

log = logging.getLogger(__name__)

_DEFAULT_PART_SIZE = 8 * 1024 * 1024


class _Download:
    """One object fetched part by part into one preallocated buffer.

    Parts ``1..n`` run on the client's thread pool (bounded by its size); part 0
    is read by the first caller that needs it, in its own thread.  ``prefix`` is
    the length of the contiguous run of finished bytes from offset 0: a read of
    ``[a, b)`` waits until ``prefix >= b``, so bytes are served as soon as the
    prefix they need has arrived.
    """

    def __init__(self, handle, size: int, part_size: int, first_stream=None, target: Optional[memoryview] = None) -> None:
        self.size = size
        if target is None:
            self.owner, self.view = allocate(size)
        else:  # straight into the caller's memory (a whole-object readinto)
            self.owner, self.view = None, target[:size]
        self.parts: List[Tuple[int, int]] = [(s, min(s + part_size, size)) for s in range(0, size, part_size)]
        self._handle = handle
        self._first_stream = first_stream
        self._done = [False] * len(self.parts)
        self._next = 0  # first unfinished part
        self.prefix = 0 if self.parts else size
        self._cond = threading.Condition(threading.Lock())  # never re-entered: a plain lock is cheaper
        self._error: Optional[BaseException] = None
        self._cancelled = False
        self._futures = []
        # Full-object CRC32 check: finished ranges are folded in, in order, as the prefix grows.
        self._expected_crc = getattr(first_stream, "full_object_crc32", None)
        self._verified = False
        self._bad_checksum: Optional[BaseException] = None
        self._crc = 0
        self._crc_done = 0  # bytes folded into _crc
        self._crc_pending: List[Tuple[int, int]] = []
        self._crc_lock = threading.Lock() if self._expected_crc is not None else None
        if len(self.parts) > 1:
            pool = handle.executor()
            self._futures = [pool.submit(self._fetch_part, i) for i in range(1, len(self.parts))]

    def _fetch_part(self, index: int) -> None:
        if self._cancelled:
            return
        start, end = self.parts[index]
        try:
            if index == 0 and self._first_stream is not None:
                stream, self._first_stream = self._first_stream, None
                try:
                    got = stream.readinto(self.view[start:end])
                finally:
                    stream.close()
                if got != end - start:
                    raise S3IncompleteRead(
                        f"s3://{self._handle.bucket}/{self._handle.key}: first part ended at {got} of {end} bytes",
                        bucket=self._handle.bucket,
                        key=self._handle.key,
                    )
            else:
                self._handle.fetch_into(start, self.view[start:end])
        except BaseException as exc:
            with self._cond:
                if self._error is None:
                    self._error = exc
                self._cancelled = True
                self._cond.notify_all()
            return
        with self._cond:
            self._done[index] = True
            before = self.prefix
            while self._next < len(self.parts) and self._done[self._next]:
                self.prefix = self.parts[self._next][1]
                self._next += 1
            if self._expected_crc is not None and self.prefix > before:
                self._crc_pending.append((before, self.prefix))
            self._cond.notify_all()
        if self._expected_crc is not None:
            self._fold_crc()

    def _fold_crc(self) -> None:
        # Ranges were queued in prefix order under _cond; folding them in that
        # order under _crc_lock keeps the running CRC right (zlib drops the GIL).
        with self._crc_lock:
            while True:
                with self._cond:
                    if not self._crc_pending:
                        return
                    start, end = self._crc_pending.pop(0)
                self._crc = zlib.crc32(self.view[start:end], self._crc)
                self._crc_done = end

    def _verify(self) -> None:
        """Compare the CRC32 of the whole buffer with the server's full-object CRC32."""
        self._fold_crc()
        if self._crc_done == self.size and self._crc != self._expected_crc:
            error = S3Exception(
                f"s3://{self._handle.bucket}/{self._handle.key}: full-object CRC32 mismatch "
                f"(server {self._expected_crc:08x}, received bytes {self._crc:08x})",
                code="ChecksumMismatch",
                bucket=self._handle.bucket,
                key=self._handle.key,
            )
            self._bad_checksum = error
        self._verified = True

    def wait_for(self, end: int) -> None:
        """Block until bytes ``[0, end)`` are in the buffer; raise the first part's error.

        Reaching the end also checks the full-object CRC32 when the server sent one.
        """
        if self.prefix < end:
            if self.parts and not self._done[0] and self._error is None:
                self._fetch_part(0)  # in the caller's thread: it needs it first
            with self._cond:
                while self.prefix < end and self._error is None:
                    self._cond.wait()
                if self.prefix < end:
                    raise self._error
        if self._expected_crc is not None and end == self.size and not self._verified:
            self._verify()
        if self._bad_checksum is not None:
            raise self._bad_checksum

    def cancel(self, wait: bool = False) -> None:
        """Stop the parts not started; with ``wait``, also wait for the running ones.

        Waiting matters when the buffer is the caller's memory: no thread may
        write into it after the call that was given it has returned.
        """
        with self._cond:
            self._cancelled = True
        for future in self._futures:
            future.cancel()
        stream, self._first_stream = self._first_stream, None
        if stream is not None:
            stream.close()
        if wait:
            for future in self._futures:
                if not future.cancelled():
                    try:
                        future.result()
                    except BaseException:  # recorded as self._error
                        pass


class SequentialS3Reader(_ObjectReader):
    """Sequential S3 reader implementation.

    Keeps the whole object in one buffer, for sequential reads and repeated
    access; best for full-object reads.  When the size is known (listing or
    the first response), the object is fetched as parallel ranged GETs of
    ``part_size`` (bounded by the client's ``max_concurrency``) straight into
    one preallocated buffer, and each read returns as soon as the bytes it
    needs have arrived.  All GETs carry ``If-Match`` with the first ETag seen.

    Parameters
    ----------
    bucket, key : str
        The object.
    get_object_info : callable
        Returns the object's metadata (``size``, ``etag``).
    get_stream : callable
        ``get_stream(start=None, end=None)`` returns a stream of the object's bytes.
    part_size : int, optional
        Size of the ranged GETs; default the client's ``part_size`` (8 MiB).
    """

    def __init__(
        self,
        bucket: str,
        key: str,
        get_object_info: Callable,
        get_stream: Callable,
        *,
        part_size: Optional[int] = None,
    ) -> None:
        check_bucket_key(bucket, key)
        if part_size is not None and (isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < 1):
            raise ValueError(f"part_size must be a positive int, not {part_size!r}")
        self._bucket = bucket
        self._key = key
        self._get_object_info = get_object_info
        self._get_stream = get_stream
        self._part_size = part_size or getattr(get_stream, "part_size", None) or _DEFAULT_PART_SIZE
        self._fast = callable(getattr(get_stream, "fetch_into", None)) and callable(getattr(get_stream, "executor", None))
        self._download: Optional[_Download] = None
        # Generic path (a plain get_stream callable): chunks appended to a bytearray.
        self._stream = None
        self._buffer: Optional[bytearray] = None
        self._exhausted = False
        self._size: Optional[int] = None
        self._position = 0
        self._closed = False

    # -- fetching ------------------------------------------------------------------

    def prefetch(self) -> None:
        """Start fetching the object from S3.

        Raises
        ------
        S3Exception
            An error occurred accessing S3.
        """
        self._check_open()
        if self._fast:
            if self._download is None:
                self._start_download()
        elif self._stream is None:
            self._stream = iter(self._get_stream())
            self._buffer = bytearray()

    def _start_download(self, dest: Optional[memoryview] = None) -> Optional[_Download]:
        """Start the download into a new buffer; or, if ``dest`` holds the whole object, into ``dest``.

        Returns the download into ``dest`` (not kept by the reader), else None.
        """
        handle = self._get_stream
        size = getattr(handle, "known_size", None)
        first = None
        if size is None:
            # The first part's response tells the size (and pins the ETag) without a HEAD.
            first = handle(0, self._part_size)
            first.open()
            size = first.object_size
            if size is None:  # no Content-Range and no length: fall back to HEAD
                size = self._get_object_info().size
            if first.exhausted or size == 0:
                first.close()
                first = None
        self._size = size
        if dest is not None and 0 < size <= len(dest):
            return _Download(handle, size, self._part_size, first, target=dest)
        self._download = _Download(handle, size, self._part_size, first)
        return None

    def _ensure(self, end: Optional[int]) -> int:
        """Make bytes ``[0, end)`` (None: everything) available; return the object size or the buffered length."""
        self.prefetch()
        if self._fast:
            download = self._download
            target = download.size if end is None else min(end, download.size)
            download.wait_for(target)
            return download.size
        buffer = self._buffer
        while not self._exhausted and (end is None or len(buffer) < end):
            try:
                chunk = next(self._stream)
            except StopIteration:
                self._exhausted = True
                self._size = len(buffer)
                break
            buffer += chunk
        return len(buffer)

    def _object_size(self) -> int:
        if self._size is None:
            if self._fast:
                self.prefetch()
            else:
                self._size = self._get_object_info().size
        return self._size

    # -- file API ------------------------------------------------------------------

    def read(self, size: Optional[int] = None) -> bytes:
        """Read up to ``size`` bytes from the object and return them.

        If ``size`` is zero or positive, read that many bytes, or until the end
        of the object.  If ``size`` is None or negative, read to the end.

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
            return b""
        start = self._position
        if self._size is not None and start >= self._size:
            return b""
        available = self._ensure(None if size < 0 else start + size)
        end = available if size < 0 else min(start + size, available)
        if start >= end:
            return b""
        self._position = end
        if self._fast:
            return finish_bytes(self._download.owner, self._download.view, start, end)
        return bytes(memoryview(self._buffer)[start:end])

    def readinto(self, buf) -> int:
        """Read up to ``len(buf)`` bytes into the pre-allocated, writable bytes-like ``buf``.

        Returns
        -------
        int
            The number of bytes read; 0 at the end of the object.
        """
        self._check_open()
        view = writable_view(buf)
        if len(view) == 0:
            return 0
        start = self._position
        if self._size is not None and start >= self._size:
            return 0
        if self._fast and self._download is None and start == 0:
            # A readinto that holds the whole object: the parts go straight into
            # the caller's memory and nothing is cached (a later read refetches).
            direct = self._start_download(dest=view)
            if direct is not None:
                try:
                    direct.wait_for(direct.size)
                except BaseException:
                    direct.cancel(wait=True)
                    raise
                self._position = direct.size
                return direct.size
        available = self._ensure(start + len(view))
        end = min(start + len(view), available)
        if start >= end:
            return 0
        source = self._download.view if self._fast else memoryview(self._buffer)
        view[: end - start] = source[start:end]
        self._position = end
        return end - start

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """Change the position to ``offset`` relative to ``whence`` (SEEK_SET, SEEK_CUR, SEEK_END).

        A target past the end stays at the end; a negative target raises
        ``ValueError`` and leaves the position unchanged.

        Returns
        -------
        int
            The new position.
        """
        self._check_open()
        target = _seek_target(offset, whence, self._position, self._object_size)
        if target > 0 and self._size is None:
            if self._fast:
                self.prefetch()
            else:
                self._ensure(target)
        if self._size is not None:
            target = min(target, self._size)
        self._position = target
        return target

    def tell(self) -> int:
        """The current position."""
        self._check_open()
        return self._position

    def close(self) -> None:
        """Stop fetching and free the buffer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        download, self._download = self._download, None
        if download is not None:
            download.cancel()
        stream, self._stream = self._stream, None
        if stream is not None and callable(getattr(stream, "close", None)):
            try:
                stream.close()
            except Exception:
                log.debug("closing the stream of s3://%s/%s failed", self._bucket, self._key, exc_info=True)
        self._buffer = None

    def __repr__(self) -> str:
        return f"SequentialS3Reader(bucket={self._bucket!r}, key={self._key!r})"
