# Ranged read buffer: the RangedS3Reader buffering policy.  Included by _core_c.pyx.


cdef class RangeBuffer:
    """The RangedS3Reader buffering policy over a byte source, with its own position.

    Parameters
    ----------
    size : int
        Object size in bytes.
    fetch_into : callable
        ``fetch_into(start, end, dest)`` fills the writable memoryview ``dest``
        (``len(dest) == end - start``) with bytes ``[start, end)`` of the object,
        or raises.
    buffer_size : int or None
        Read-ahead buffer size; None means :data:`DEFAULT_BUFFER_SIZE` (8 MiB),
        0 disables buffering.

    Notes
    -----
    For a read of ``[start, end)``: if it starts inside the buffer and runs past
    its end, the buffered part is copied first.  The remainder goes straight
    into the caller's memory in one fetch if buffering is off or it is at least
    ``buffer_size`` long; otherwise, unless it lies inside the buffer, the buffer
    is loaded with ``[start, min(start + buffer_size, size))`` and copied from.
    The buffer is allocated on first use and never larger than the object.
    A failed fetch leaves the buffer empty and the position unchanged.
    """

    cdef int64_t _size  # object size
    cdef object _fetch_into  # fetch_into(start, end, dest)
    cdef int64_t _buffer_size  # 0: buffering disabled
    cdef bytearray _buffer  # owns the buffer bytes; never resized; None until the first load
    cdef int64_t _buf_start  # object offset of the buffer's first valid byte
    cdef int64_t _buf_end  # object offset one past the buffer's last valid byte
    cdef int64_t _pos  # read position, 0 <= _pos <= _size
    cdef bint _closed
    cdef bint _busy  # a fetch or a nogil copy is running: refuse calls that could free memory

    def __init__(self, size, fetch_into, buffer_size=None):
        cdef int64_t object_size = _non_negative(size, errors.invalid_object_size)
        if not callable(fetch_into):
            raise errors.not_callable("fetch_into", fetch_into)
        if buffer_size is None:
            self._buffer_size = DEFAULT_BUFFER_SIZE
        else:
            self._buffer_size = _non_negative(buffer_size, errors.invalid_buffer_size)
        self._size = object_size
        self._fetch_into = fetch_into
        self._buffer = None
        self._buf_start = 0
        self._buf_end = 0
        self._pos = 0
        self._closed = False
        self._busy = False

    @property
    def size(self):
        """Object size in bytes."""
        return self._size

    @property
    def buffer_size(self):
        """Read-ahead buffer size in bytes (0: buffering disabled)."""
        return self._buffer_size

    @property
    def closed(self):
        """True after :meth:`close`."""
        return self._closed

    cdef int _check(self) except -1:
        if self._closed:
            raise errors.closed_file()
        if self._busy:
            raise errors.busy("RangeBuffer")
        return 0

    cdef int _fetch(self, int64_t start, int64_t end, object dest) except -1:
        self._busy = True
        try:
            self._fetch_into(start, end, dest)
        finally:
            self._busy = False
        return 0

    cdef int _load_buffer(self, int64_t start) except -1:
        cdef int64_t end = min(start + self._buffer_size, self._size)
        if self._buffer is None:
            self._buffer = bytearray(min(self._buffer_size, self._size))
        # Invalidate first: a failing fetch must not leave half-loaded bytes marked valid.
        self._buf_start = 0
        self._buf_end = 0
        self._fetch(start, end, memoryview(self._buffer)[: end - start])
        self._buf_start = start
        self._buf_end = end
        return 0

    cdef int _copy_from_buffer(self, unsigned char *dest, int64_t start, Py_ssize_t n) except -1:
        """Copy ``n`` buffered bytes from object offset ``start`` to ``dest``."""
        cdef const unsigned char *src = (
            <const unsigned char *>PyByteArray_AS_STRING(self._buffer) + (start - self._buf_start))
        if n < NOGIL_COPY_MIN:
            _copy_bytes(dest, src, n)
            return 0
        # Safe without the GIL: _busy stops close() freeing the buffer, and the
        # caller holds the destination buffer for the whole call.
        self._busy = True
        with nogil:
            _copy_bytes(dest, src, n)
        self._busy = False
        return 0

    cdef bint _bypasses_buffer(self, int64_t start, int64_t end) noexcept:
        """Whether reading ``[start, end)`` fetches straight into the caller's memory."""
        if self._buf_start <= start < self._buf_end <= end:
            start = self._buf_end
        return end > start and (self._buffer_size == 0 or end - start >= self._buffer_size)

    cdef int _read_range(self, unsigned char *dest, object owner, int64_t start, int64_t end) except -1:
        """Fill ``dest`` (``end - start`` bytes of ``owner``'s memory) with ``[start, end)``."""
        cdef Py_ssize_t done = 0
        cdef int64_t remaining
        if self._buf_start <= start < self._buf_end <= end:  # forward overlap
            done = <Py_ssize_t>(self._buf_end - start)
            self._copy_from_buffer(dest, start, done)
            start = self._buf_end
        remaining = end - start
        if remaining == 0:
            return 0
        if self._buffer_size == 0 or remaining >= self._buffer_size:
            self._fetch(start, end, _byte_view(owner)[done : done + remaining])
            return 0
        if not (self._buf_start <= start and end <= self._buf_end):
            self._load_buffer(start)
        self._copy_from_buffer(dest + done, start, <Py_ssize_t>remaining)
        return 0

    def read(self, size=-1):
        """Read up to ``size`` bytes (None or negative: to the end); b"" at EOF."""
        cdef int64_t start, end, count
        cdef bytearray staging
        cdef bytes out
        self._check()
        count = _read_size(size)
        start = self._pos
        end = self._size if count < 0 or count >= self._size - start else start + count
        if start >= end:
            return b""
        if self._bypasses_buffer(start, end):
            # fetch_into needs a writable object to fill; bytes are immutable once shared.
            staging = _new_bytearray(NULL, <Py_ssize_t>(end - start))
            self._read_range(<unsigned char *>PyByteArray_AS_STRING(staging), staging, start, end)
            out = bytes(staging)
        else:
            # The bytes object is not shared until returned, so it may be filled in place.
            out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(end - start))
            self._read_range(<unsigned char *>PyBytes_AS_STRING(out), None, start, end)
        self._pos = end
        return out

    @cython.always_allow_keywords(False)
    def readinto(self, buf):
        """Read up to ``len(buf)`` bytes into the writable buffer ``buf``; 0 at EOF."""
        cdef Py_buffer dest
        cdef int64_t start, end
        self._check()
        _acquire_destination(buf, &dest)
        try:
            start = self._pos
            end = self._size if dest.len >= self._size - start else start + dest.len
            if start >= end:
                return 0
            self._read_range(<unsigned char *>dest.buf, buf, start, end)
            self._pos = end
            return end - start
        finally:
            PyBuffer_Release(&dest)

    def seek(self, offset, whence=0):
        """Move the position; past the end clamps to ``size``; returns the new position."""
        cdef int64_t delta, base, target
        cdef int64_t mode
        self._check()
        delta = _as_int64("seek offset", offset)
        mode = _as_int64("whence", whence)
        if mode == 0:
            target = delta
        elif mode == 1 or mode == 2:
            base = self._pos if mode == 1 else self._size
            # base >= 0, so only a positive delta can overflow; it clamps to size anyway.
            target = INT64_MAX if delta > INT64_MAX - base else base + delta
        else:
            raise errors.invalid_whence(mode)
        if target < 0:
            raise errors.negative_seek(target)
        self._pos = min(target, self._size)
        return self._pos

    def tell(self):
        """Current position."""
        if self._closed:
            raise errors.closed_file()
        return self._pos

    def close(self):
        """Free the buffer; later operations raise ValueError."""
        if self._busy:
            raise errors.busy("RangeBuffer")
        self._closed = True
        self._buffer = None
        self._buf_start = 0
        self._buf_end = 0


cdef int64_t _non_negative(object value, object error) except? -1:
    """A non-negative int64 from ``value`` or ``error(value)``."""
    cdef int overflow = 0
    cdef long long result
    if not PyLong_CheckExact(value):
        try:
            value = PyNumber_Index(value)
        except TypeError:
            raise error(value) from None
    result = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow < 0 or (overflow == 0 and result < 0):
        raise error(value)
    if overflow > 0:
        raise errors.out_of_range("size", value)
    return result
