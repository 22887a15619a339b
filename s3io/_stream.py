"""GetObjectStream: one byte range of one object, read from the socket into the caller's memory.

The fast path: botocore's ``StreamingBody`` wraps a urllib3 ``HTTPResponse``
(``body._raw_stream``) whose ``_fp`` is an ``http.client.HTTPResponse``.  Its
``readinto`` goes from the socket straight into the destination (large reads
bypass the socket file's buffer), so a ranged GET costs no intermediate copy.
When those attributes are missing (another HTTP layer, a test double), the
stream falls back to ``StreamingBody.read`` plus one copy.

Bytes are counted: a body that ends early is resumed from the last byte received
with ``If-Match`` (never zero-padded); an ETag that changes between responses, or
a 412, raises :class:`S3ObjectChanged`.
"""
from __future__ import annotations

import base64
import ctypes
import http.client
import logging
import random
import re
import sys
import time
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import botocore.exceptions
import urllib3.exceptions

from ._exceptions import S3Exception, S3IncompleteRead, S3ObjectChanged

if TYPE_CHECKING:  # pragma: no cover
    from ._client import S3Client

__all__ = ["GetObjectStream", "DEFAULT_CHUNK_SIZE", "allocate", "finish_bytes", "normalize_etag"]

log = logging.getLogger(__name__)

# Iteration yields chunks of this size: big enough that per-chunk Python work is
# noise next to moving the bytes, small enough that the first chunk comes soon.
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
_BACKOFF_BASE = 0.05  # seconds; full jitter over base * 2**attempt
_BACKOFF_CAP = 5.0
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONTENT_RANGE_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)")

# Errors while reading a body that a fresh ranged GET may cure.
_TRANSIENT_BODY_ERRORS = (
    OSError,  # ConnectionResetError, socket timeouts
    http.client.HTTPException,  # IncompleteRead
    urllib3.exceptions.HTTPError,  # ProtocolError, ReadTimeoutError
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ConnectionError,
)


# Stores that send no ETag (e.g. rclone with --etag-hash '') still send Last-Modified and
# the object size: pin those instead, so an overwrite a second or more after the first
# response (or one that changes the size) is still caught.  Never sent as If-Match.
_FALLBACK_VERSION = "s3io-version:"


def normalize_etag(etag: Optional[str]) -> Optional[str]:
    """The ETag in its quoted header form (listings of some servers drop the quotes); None if empty."""
    if not etag:
        return None
    etag = etag.strip()
    if etag in ('""', 'W/""'):  # rclone without hashing: a quoted empty ETag pins nothing
        return None
    if etag.startswith('"') or etag.startswith('W/"') or etag.startswith(_FALLBACK_VERSION):
        return etag
    return f'"{etag}"'


def is_etag(version: Optional[str]) -> bool:
    """True for a real ETag (one that If-Match can carry), False for a fallback version or None."""
    return bool(version) and not version.startswith(_FALLBACK_VERSION)


def _response_version(response, size: Optional[int]) -> Optional[str]:
    """What pins this object version: its ETag, else Last-Modified and size, else None."""
    etag = normalize_etag(response.get("ETag"))
    if etag is not None:
        return etag
    last_modified = response.get("LastModified")
    if last_modified is None:
        return None
    stamp = last_modified.isoformat() if hasattr(last_modified, "isoformat") else str(last_modified)
    return f"{_FALLBACK_VERSION}last-modified={stamp};size={size}"


# --------------------------------------------------------------------------------------------
# Fresh, writable memory that can become an immutable ``bytes`` without a copy.

_CPYTHON = sys.implementation.name == "cpython"
if _CPYTHON:
    _bytes_from_size = ctypes.pythonapi.PyBytes_FromStringAndSize
    _bytes_from_size.restype = ctypes.py_object
    _bytes_from_size.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    _BYTES_DATA_OFFSET = bytes.__basicsize__ - 1  # ob_sval; basicsize counts the trailing NUL
_FRESH_BYTES_MIN = 2  # CPython shares the 0- and 1-byte objects: never write into those


def allocate(size: int) -> Tuple[object, memoryview]:
    """Return ``(owner, view)``: ``size`` bytes of fresh memory and a writable view of it.

    On CPython ``owner`` is a brand-new, not yet initialised ``bytes`` object
    that nothing else references, so filling it through ``view`` is
    unobservable, and :func:`finish_bytes` can hand it out as the result of a
    ``read()`` with no copy.  Large allocations come from ``mmap`` inside
    malloc, so there is no up-front memset either.  Elsewhere ``owner`` is a
    ``bytearray``.  ``view`` keeps ``owner`` alive.
    """
    if _CPYTHON and size >= _FRESH_BYTES_MIN:
        owner = _bytes_from_size(None, size)
        array = (ctypes.c_char * size).from_address(id(owner) + _BYTES_DATA_OFFSET)
        array._owner = owner  # the view -> array -> bytes chain keeps the memory alive
        return owner, memoryview(array).cast("B")
    owner = bytearray(size)
    return owner, memoryview(owner)


def finish_bytes(owner, view: memoryview, start: int, end: int) -> bytes:
    """``bytes`` of ``[start, end)`` of an :func:`allocate` d buffer; the owner itself when whole."""
    if start == 0 and end == len(view) and type(owner) is bytes:
        return owner
    return bytes(view[start:end])


# --------------------------------------------------------------------------------------------


class _Body:
    """One HTTP response body: ``readinto`` from the socket, and connection hand-back."""

    __slots__ = ("_body", "_raw", "_fp")

    def __init__(self, streaming_body) -> None:
        self._body = streaming_body
        raw = getattr(streaming_body, "_raw_stream", None)
        fp = getattr(raw, "_fp", None)
        # Only when urllib3 has buffered nothing and decodes nothing may we read
        # around it (botocore asks for decode_content=False).
        decoded = getattr(raw, "_decoded_buffer", None)
        if (
            fp is not None
            and callable(getattr(fp, "readinto", None))
            and getattr(raw, "_decoder", None) is None
            and (decoded is None or len(decoded) == 0)
        ):
            self._raw, self._fp = raw, fp
        else:
            self._raw, self._fp = None, None

    def readinto(self, view: memoryview) -> int:
        if self._fp is not None:
            return self._fp.readinto(view)
        data = self._body.read(len(view))
        n = len(data)
        view[:n] = data
        return n

    def close(self, complete: bool) -> None:
        """Give the connection back to the pool if the body was read to its end, else drop it."""
        raw = self._raw
        try:
            if raw is not None:
                if complete and self._fp.isclosed():
                    raw.release_conn()  # what urllib3 does itself once a body is consumed
                else:
                    raw.close()  # unread bytes on the wire: the connection is unusable
                    raw.release_conn()
            else:
                self._body.close()
        except Exception:  # closing must never mask the real outcome
            log.debug("closing a response body failed", exc_info=True)


class GetObjectStream:
    """The bytes ``[start, end)`` of one object, from one or more ranged GETs.

    Made by :meth:`s3io.S3Client.get_stream`; lazy (no request until the first
    read).  Iterating yields fresh ``bytes`` chunks (never reused: callers may
    keep views of them); :meth:`readinto` fills the caller's memory straight
    from the socket.

    Parameters
    ----------
    client : S3Client
        Sends the requests.
    bucket, key : str
        The object.
    start : int, optional
        First byte (default 0).
    end : int, optional
        One past the last byte (default: the object's end).
    etag : str, optional
        Pin this version: every request sends ``If-Match``.  Without it, the
        first response's ETag is pinned for the resumed requests.
    chunk_size : int, optional
        Size of the chunks iteration yields.
    pin : callable, optional
        ``pin(etag) -> etag``: shares the pinned ETag with other streams of the
        same reader (returns the ETag pinned first).
    """

    def __init__(
        self,
        client: "S3Client",
        bucket: str,
        key: str,
        start: Optional[int] = None,
        end: Optional[int] = None,
        *,
        etag: Optional[str] = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        pin: Optional[Callable[[str], str]] = None,
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
        self._client = client
        self._ranged = start is not None or end is not None
        self._start = start or 0
        self._end = end  # as asked (exclusive)
        self._pos = self._start  # object offset of the next byte to hand out
        self._stop = end  # where this stream ends: min(end, object size) once known
        if end is not None and end <= self._start:
            self._stop = self._start
        self._etag = normalize_etag(etag)
        self._pin = pin
        self._object_size: Optional[int] = None
        self._crc32: Optional[int] = None  # full-object CRC32 announced by the server
        self._chunk_size = max(1, int(chunk_size))
        self._body: Optional[_Body] = None
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
        return self._etag

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
        view = memoryview(buf)
        if view.readonly:
            raise TypeError(f"readinto() needs a writable bytes-like object, not {type(buf).__name__}")
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        return self._readinto(view)

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
            except _TRANSIENT_BODY_ERRORS as exc:
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
        """Count a failure without progress; back off, or give up after max_attempts."""
        self._failures += 1
        attempts = self._client.s3client_config.max_attempts
        what = "body ended early" if exc is None else f"{type(exc).__name__}: {exc}"
        where = f"s3://{self.bucket}/{self.key} at byte {self._pos}"
        if self._failures >= attempts:
            message = f"{where}: {what}; gave up after {self._failures} attempts"
            if exc is None:
                raise S3IncompleteRead(message, bucket=self.bucket, key=self.key)
            raise S3Exception(message, bucket=self.bucket, key=self.key) from exc
        delay = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (self._failures - 1)))
        log.info("%s: %s; resuming in %.3f s (attempt %d of %d)", where, what, delay, self._failures + 1, attempts)
        time.sleep(delay)

    def _range_header(self) -> Optional[str]:
        if not self._ranged and self._pos == 0:
            return None  # plain GET: also right for empty objects (no 416)
        last = "" if self._stop is None else str(self._stop - 1)
        return f"bytes={self._pos}-{last}"

    def _open(self) -> None:
        """Send the GET for ``[pos, stop)`` and check the response headers."""
        range_header = self._range_header()
        first = self._responses == 0
        response = self._client._get_object_response(self.bucket, self.key, range_header, self._etag)
        if response is None:  # 416: nothing at or after pos
            self._responses += 1
            if self._pos == 0 and first:
                self._object_size = 0
            self._stop = self._pos
            self._done = True
            return
        self._responses += 1
        body = _Body(response["Body"])
        try:
            self._check_response(response, range_header)
        except BaseException:
            body.close(complete=False)
            raise
        self._body = body
        if self._stop is not None and self._pos >= self._stop:
            self._finish()

    def _check_response(self, response, range_header: Optional[str]) -> None:
        length = response.get("ContentLength")
        content_range = response.get("ContentRange")
        first_byte = 0
        size: Optional[int] = None
        match = _CONTENT_RANGE.match(content_range or "")
        if match is not None:
            first_byte = int(match.group(1))
            if match.group(3) != "*":
                size = int(match.group(3))
        elif response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 206:
            raise S3Exception(
                f"s3://{self.bucket}/{self.key}: 206 response without a usable Content-Range "
                f"({content_range!r}) for {range_header}",
                status=206,
                bucket=self.bucket,
                key=self.key,
            )
        else:
            size = length  # the whole object (a server may ignore Range)
        self._crc32 = _full_object_crc32(response)
        etag = _response_version(response, size)
        if etag is not None:
            if self._pin is not None:
                pinned = self._pin(etag)
                if self._etag is None:
                    self._etag = pinned
            if self._etag is None:
                self._etag = etag
            if etag != self._etag:
                raise S3ObjectChanged(
                    f"s3://{self.bucket}/{self.key} changed while being read: "
                    f"{'ETag' if is_etag(etag) else 'version'} {self._etag} then {etag}",
                    status=200,
                    code="ETagChanged",
                    bucket=self.bucket,
                    key=self.key,
                )
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
            self._skip(response["Body"], self._pos - first_byte)

    def _skip(self, body, count: int) -> None:
        scratch = memoryview(bytearray(min(count, 1 << 20)))
        tmp = _Body(body)
        while count:
            n = tmp.readinto(scratch[: min(count, len(scratch))])
            if n == 0:
                raise S3IncompleteRead(
                    f"s3://{self.bucket}/{self.key}: body ended while skipping to byte {self._pos}",
                    bucket=self.bucket,
                    key=self.key,
                )
            count -= n


def _full_object_crc32(response) -> Optional[int]:
    """A full-object CRC32 from the response headers (rclone sends it even on ranged GETs)."""
    value = response.get("ChecksumCRC32")
    if not value or "-" in value or response.get("ChecksumType") == "COMPOSITE":
        return None  # composite checksums ("...-3") cover parts, not the object's bytes
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None
