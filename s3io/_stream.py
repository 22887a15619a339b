"""GetObjectStream: one byte range of one object, read from the socket into the caller's memory.

The stream is handed a narrow ``send_get(bucket, key, range_header, if_match)``
(the transport's GET) and a :class:`~s3io._pin.VersionPin`, never the client.
Bytes are counted: a body that ends early is resumed from the last byte
received with ``If-Match`` (never zero-padded); a response from another
version of the object, or a 412, raises :class:`S3ObjectChanged`.
"""
from __future__ import annotations

import base64
import http.client
import logging
import re
from typing import Callable, Optional

from ._checks import writable_view
from ._exceptions import S3Exception, S3IncompleteRead, S3InvalidRange, S3ObjectChanged
from ._memory import allocate, finish_bytes
from ._pin import VersionPin, response_version
from ._retry import TRANSIENT_ERRORS, RetryPolicy

__all__ = ["GetObjectStream", "DEFAULT_CHUNK_SIZE", "SendGet", "fetch_into"]

log = logging.getLogger(__name__)

# Iteration yields chunks of this size: big enough that per-chunk Python work is
# noise next to moving the bytes, small enough that the first chunk comes soon.
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

SendGet = Callable  # send_get(bucket, key, range_header, if_match) -> GetResponse or None (416)


class GetObjectStream:
    """The bytes ``[start, end)`` of one object, from one or more ranged GETs.

    Made by :meth:`s3io.S3Client.get_stream`; lazy (no request until the first
    read).  Iterating yields fresh ``bytes`` chunks (never reused: callers may
    keep views of them); :meth:`readinto` fills the caller's memory straight
    from the socket.

    Parameters
    ----------
    send_get : callable
        ``send_get(bucket, key, range_header, if_match)``: one GET, returning a
        ``GetResponse`` or None when the range is not satisfiable (416).
    bucket, key : str
        The object.
    start : int, optional
        First byte (default 0).
    end : int, optional
        One past the last byte (default: the object's end).
    pin : VersionPin, optional
        The version every response must come from; shared by the streams of
        one reader.  Without it, the first response's version is pinned for
        this stream's resumed requests.
    retry : RetryPolicy, optional
        The client's policy: attempts without progress, backoff and budget
        before a cut body is resumed (default: 10 attempts, a budget of its own).
    chunk_size : int, optional
        Size of the chunks iteration yields.
    """

    def __init__(
        self,
        send_get: SendGet,
        bucket: str,
        key: str,
        start: Optional[int] = None,
        end: Optional[int] = None,
        *,
        pin: Optional[VersionPin] = None,
        retry: Optional[RetryPolicy] = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        for name, value in (("start", start), ("end", end)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
            if value < 0:
                raise ValueError(f"{name} must be non-negative, not {value}")
        if start is not None and end is not None and start > end:
            raise ValueError(f"range {start}-{end} is invalid: end before start")
        self.bucket = bucket
        self.key = key
        self._send_get = send_get
        self._retry = retry if retry is not None else RetryPolicy(10)
        self._ranged = start is not None or end is not None
        self._start = start or 0
        self._end = end  # as asked (exclusive)
        self._pos = self._start  # object offset of the next byte to hand out
        self._stop = end  # where this stream ends: min(end, object size) once known
        if end is not None and end <= self._start:
            self._stop = self._start
        self._pin = pin if pin is not None else VersionPin(bucket, key)
        self._object_size: Optional[int] = None
        self._crc32: Optional[int] = None  # full-object CRC32 announced by the server
        self._chunk_size = max(1, int(chunk_size))
        self._body = None  # the open response's body
        self._responses = 0
        self._failures = 0  # consecutive failures without progress
        self._done = self._stop is not None and self._pos >= self._stop
        self._closed = False

    # -- public -----------------------------------------------------------------

    @property
    def etag(self) -> Optional[str]:
        """The pinned version: the object's ETag (after the first response, or as given).

        From a store that sends no ETag, a token built from ``Last-Modified``
        and the size (``s3io-version:...``), which is compared but never sent.
        """
        return self._pin.version

    @property
    def object_size(self) -> Optional[int]:
        """The whole object's size in bytes, once a response told it."""
        return self._object_size

    @property
    def start(self) -> int:
        """First byte of the range."""
        return self._start

    @property
    def end(self) -> Optional[int]:
        """One past the last byte this stream yields (None until known when no end was given)."""
        return self._stop

    @property
    def full_object_crc32(self) -> Optional[int]:
        """The whole object's CRC32 if a response announced one (not a composite of parts), else None."""
        return self._crc32

    @property
    def exhausted(self) -> bool:
        """True once every byte of the range has been handed out."""
        return self._done

    def open(self) -> None:
        """Send the first request now (if not sent yet), so that :attr:`etag` and :attr:`object_size` are known."""
        self._check_open()
        if self._body is None and not self._done and self._responses == 0:
            self._open()

    def tell(self) -> int:
        """Object offset of the next byte."""
        return self._pos

    def __iter__(self) -> "GetObjectStream":
        return self

    def __next__(self) -> bytes:
        self._check_open()
        if self._done:
            raise StopIteration
        size = self._chunk_size
        if self._stop is not None:
            size = min(size, self._stop - self._pos)
        owner, view = allocate(size)
        n = self._readinto(view)
        if n == 0:
            raise StopIteration
        return finish_bytes(owner, view, 0, n)

    def readinto(self, buf) -> int:
        """Fill ``buf`` with the next bytes; fewer than ``len(buf)`` only at the end; 0 at the end.

        Raises
        ------
        S3Exception
            After ``max_attempts`` failures without progress, or when the object changed.
        """
        self._check_open()
        return self._readinto(writable_view(buf))

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all the rest when negative)."""
        self._check_open()
        if size is None or size < 0:
            return b"".join(iter(self))
        out = bytearray(size)
        n = self._readinto(memoryview(out))
        del out[n:]
        return bytes(out)

    def close(self) -> None:
        """Drop the connection if a body is half read. Safe to call twice."""
        self._closed = True
        self._drop_body(complete=False)

    def __enter__(self) -> "GetObjectStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop_body(complete=False)
        except Exception:
            pass

    def __repr__(self) -> str:
        end = "" if self._stop is None else self._stop
        return f"GetObjectStream(s3://{self.bucket}/{self.key}, bytes {self._start}-{end}, at {self._pos})"

    # -- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed stream.")

    def _drop_body(self, complete: bool) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close(complete)

    def _finish(self) -> None:
        self._done = True
        self._drop_body(complete=True)

    def _readinto(self, view: memoryview) -> int:
        total = 0
        want_total = len(view)
        while total < want_total and not self._done:
            if self._body is None:
                self._open()
                if self._done:
                    break
            want = want_total - total
            if self._stop is not None:
                want = min(want, self._stop - self._pos)
            try:
                n = self._body.readinto(view[total : total + want])
            except TRANSIENT_ERRORS as exc:
                self._drop_body(complete=False)
                self._failed(exc)
                continue
            if n == 0:
                if self._stop is None:  # length unknown (chunked): the body's end is the end
                    self._finish()
                    break
                self._drop_body(complete=False)
                self._failed(None)
                continue
            self._pos += n
            total += n
            self._failures = 0
            if self._stop is not None and self._pos >= self._stop:
                self._finish()
        return total

    def _failed(self, exc: Optional[BaseException]) -> None:
        """Count a failure without progress; back off under the retry policy, or give up."""
        self._failures += 1
        if isinstance(exc, http.client.IncompleteRead):
            exc = None  # the connection closed before the announced length: the body ended early
        what = "body ended early" if exc is None else f"{type(exc).__name__}: {exc}"
        where = f"s3://{self.bucket}/{self.key} at byte {self._pos}"
        if not self._retry.may_resume(self._failures):
            message = f"{where}: {what}; gave up after {self._failures} attempts"
            if exc is None:
                raise S3IncompleteRead(message, bucket=self.bucket, key=self.key)
            raise S3Exception(message, bucket=self.bucket, key=self.key) from exc
        log.info("%s: %s; resumed (attempt %d of %d)", where, what, self._failures + 1, self._retry.max_attempts)

    def _range_header(self) -> Optional[str]:
        if not self._ranged and self._pos == 0:
            return None  # plain GET: also right for empty objects (no 416)
        last = "" if self._stop is None else str(self._stop - 1)
        return f"bytes={self._pos}-{last}"

    def _open(self) -> None:
        """Send the GET for ``[pos, stop)`` and check the response headers."""
        range_header = self._range_header()
        first = self._responses == 0
        response = self._send_get(self.bucket, self.key, range_header, self._pin.if_match)
        if response is None:  # 416: nothing at or after pos
            self._responses += 1
            if self._pos == 0 and first:
                self._object_size = 0
            self._stop = self._pos
            self._done = True
            return
        self._responses += 1
        body = response.body
        try:
            self._check_response(response, range_header)
        except BaseException:
            body.close(complete=False)
            raise
        self._body = body
        if self._stop is not None and self._pos >= self._stop:
            self._finish()

    def _check_response(self, response, range_header: Optional[str]) -> None:
        headers = response.headers
        content_range = headers.get("content-range")
        first_byte = 0
        size: Optional[int] = None
        match = _CONTENT_RANGE.match(content_range or "")
        if match is not None:
            first_byte = int(match.group(1))
            if match.group(3) != "*":
                size = int(match.group(3))
        elif response.status == 206:
            raise S3Exception(
                f"s3://{self.bucket}/{self.key}: 206 response without a usable Content-Range "
                f"({content_range!r}) for {range_header}",
                status=206,
                bucket=self.bucket,
                key=self.key,
            )
        else:
            length = headers.get("content-length")  # the whole object (a server may ignore Range)
            size = int(length) if length is not None else None
        self._crc32 = _full_object_crc32(headers)
        self._pin.check(response_version(headers, size))
        if size is not None:
            if self._object_size is not None and size != self._object_size:
                raise S3ObjectChanged(
                    f"s3://{self.bucket}/{self.key} changed while being read: size {self._object_size} then {size}",
                    code="SizeChanged",
                    bucket=self.bucket,
                    key=self.key,
                )
            self._object_size = size
            stop = size if self._end is None else min(self._end, size)
            self._stop = stop if self._stop is None else min(self._stop, stop)
        if first_byte != self._pos:
            if first_byte > self._pos:
                raise S3Exception(
                    f"s3://{self.bucket}/{self.key}: asked for {range_header}, got {content_range}",
                    bucket=self.bucket,
                    key=self.key,
                )
            # The server ignored the Range header: skip to pos (rare; costs the skipped bytes).
            self._skip(response.body, self._pos - first_byte)

    def _skip(self, body, count: int) -> None:
        scratch = memoryview(bytearray(min(count, 1 << 20)))
        while count:
            n = body.readinto(scratch[: min(count, len(scratch))])
            if n == 0:
                raise S3IncompleteRead(
                    f"s3://{self.bucket}/{self.key}: body ended while skipping to byte {self._pos}",
                    bucket=self.bucket,
                    key=self.key,
                )
            count -= n


def _full_object_crc32(headers) -> Optional[int]:
    """A full-object CRC32 from the response headers (rclone sends it even on ranged GETs)."""
    value = headers.get("x-amz-checksum-crc32")
    if not value or "-" in value or headers.get("x-amz-checksum-type") == "COMPOSITE":
        return None  # composite checksums ("...-3") cover parts, not the object's bytes
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


def fetch_into(
    send_get: SendGet, bucket: str, key: str, start: int, dest, *, pin: VersionPin, retry: Optional[RetryPolicy] = None
) -> str:
    """Fill all of the writable ``dest`` with bytes ``[start, start + len(dest))`` of one version.

    One ranged GET read from the socket straight into ``dest``, resumed from
    the last byte received if the body ends early.  Returns the pinned
    version ("" if the store sends none).

    ``bucket`` and ``key`` are checked by the callers (the client, a handle).

    Raises
    ------
    S3InvalidRange
        The object ends before ``start + len(dest)``.
    S3ObjectChanged
        The object is not the version ``pin`` holds.
    """
    if isinstance(start, bool) or not isinstance(start, int):
        raise TypeError(f"start must be an int, not {type(start).__name__}")
    if start < 0:
        raise ValueError(f"start must be non-negative, not {start}")
    view = writable_view(dest, "fetch_into()")
    size = len(view)
    if size == 0:
        return pin.version or ""
    stream = GetObjectStream(send_get, bucket, key, start, start + size, pin=pin, retry=retry)
    try:
        got = stream._readinto(view)  # view is checked already
    finally:
        stream.close()
    if got != size:
        raise S3InvalidRange(
            f"s3://{bucket}/{key} is {stream.object_size} bytes: cannot read bytes {start}-{start + size}",
            status=416,
            code="InvalidRange",
            bucket=bucket,
            key=key,
        )
    return stream.etag or ""
