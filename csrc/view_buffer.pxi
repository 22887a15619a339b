# Item view buffer: an item's bytes as memoryview segments.  Included by _core_c.pyx.


cdef struct _Segment:
    const unsigned char *data  # borrowed from the memoryview at the same index of _views
    Py_ssize_t length  # bytes, > 0
    Py_ssize_t offset  # item offset of data[0]


cdef inline Py_ssize_t _find_segment(const _Segment *segments, Py_ssize_t count,
                                     Py_ssize_t pos) noexcept nogil:
    """Index of the segment holding ``pos`` (binary search; 0 <= pos < item size)."""
    cdef Py_ssize_t low = 0, high = count - 1, middle
    while low < high:
        middle = (low + high + 1) >> 1
        if segments[middle].offset <= pos:
            low = middle
        else:
            high = middle - 1
    return low


cdef Py_ssize_t _copy_segments(const _Segment *segments, Py_ssize_t index, Py_ssize_t pos,
                               unsigned char *dest, Py_ssize_t n) noexcept nogil:
    """Copy ``n`` bytes from item offset ``pos`` (inside segment ``index``) to ``dest``.

    The caller guarantees ``pos + n`` <= item size.  Returns the index of the
    segment the copy ended in.
    """
    cdef Py_ssize_t done = 0, offset, chunk
    while True:
        offset = pos + done - segments[index].offset
        chunk = segments[index].length - offset
        if chunk > n - done:
            chunk = n - done
        memmove(dest + done, segments[index].data + offset, <size_t>chunk)
        done += chunk
        if done == n:
            return index
        index += 1


cdef class ItemViewBuffer:
    """An item's bytes as a list of memoryview segments, read like ``io.BytesIO``.

    Appending keeps a reference to the segment (no copy).  Reads find the
    segment holding the position by binary search and copy across segment
    boundaries.  ``seek`` follows ``io.BytesIO``: past the end is allowed, a
    negative absolute target is a ValueError, relative targets below 0 clamp to 0.
    """

    cdef list _views  # memoryviews that keep each segment's memory exported and alive
    cdef _Segment *_segments  # C mirror of _views, read by the copy loop without the GIL
    cdef Py_ssize_t _count  # segments in use
    cdef Py_ssize_t _capacity  # segments allocated
    cdef Py_ssize_t _size  # total bytes
    cdef Py_ssize_t _pos  # read position; may be past _size
    cdef Py_ssize_t _hint  # segment the last read ended in: sequential reads skip the search
    cdef bint _closed
    cdef bint _busy  # a nogil copy is running: refuse calls that could free segments

    def __cinit__(self):
        self._views = []
        self._segments = NULL
        self._count = 0
        self._capacity = 0
        self._size = 0
        self._pos = 0
        self._hint = 0
        self._closed = False
        self._busy = False

    def __dealloc__(self):
        free(self._segments)

    cdef int _check(self) except -1:
        if self._closed:
            raise errors.closed_file()
        if self._busy:
            raise errors.busy("ItemViewBuffer")
        return 0

    def append(self, segment):
        """Append a C-contiguous bytes-like ``segment`` by reference; empty ones are ignored."""
        cdef Py_buffer *buffer
        cdef _Segment *grown
        cdef Py_ssize_t capacity
        self._check()
        try:
            view = PyMemoryView_FromObject(segment)
        except TypeError:
            raise errors.unusable_segment(segment) from None
        buffer = PyMemoryView_GET_BUFFER(view)
        if not PyBuffer_IsContiguous(buffer, b'C'):
            raise errors.unusable_segment(segment)
        if buffer.len == 0:
            return
        if self._count == self._capacity:
            capacity = self._capacity * 2 if self._capacity else 8
            grown = <_Segment *>realloc(self._segments, capacity * sizeof(_Segment))
            if grown is NULL:
                raise MemoryError()
            self._segments = grown
            self._capacity = capacity
        # The memoryview holds the exporter's buffer for as long as it is in _views,
        # so the pointer stays valid (a bytearray cannot even be resized meanwhile).
        self._views.append(view)
        self._segments[self._count].data = <const unsigned char *>buffer.buf
        self._segments[self._count].length = buffer.len
        self._segments[self._count].offset = self._size
        self._count += 1
        self._size += buffer.len

    def __len__(self):
        return self._size

    @property
    def size(self):
        """Total bytes appended."""
        return self._size

    @property
    def closed(self):
        """True after :meth:`close`."""
        return self._closed

    cdef void _copy_out(self, unsigned char *dest, Py_ssize_t n):
        """Copy ``n`` bytes (0 < n <= size - pos) from the position to ``dest``; advance."""
        cdef Py_ssize_t pos = self._pos
        cdef Py_ssize_t index = self._hint
        cdef const _Segment *segments = self._segments
        if not (segments[index].offset <= pos < segments[index].offset + segments[index].length):
            index = _find_segment(segments, self._count, pos)
        if n < NOGIL_COPY_MIN:
            index = _copy_segments(segments, index, pos, dest, n)
        else:
            # Safe without the GIL: _busy stops append()/close() touching the
            # segment array, and the caller holds dest for the whole call.
            self._busy = True
            with nogil:
                index = _copy_segments(segments, index, pos, dest, n)
            self._busy = False
        self._hint = index
        self._pos = pos + n

    @cython.always_allow_keywords(False)
    def readinto(self, buf):
        """Read up to ``len(buf)`` bytes into the writable buffer ``buf``; 0 at the end."""
        cdef Py_buffer dest
        cdef Py_ssize_t n
        self._check()
        _acquire_destination(buf, &dest)
        try:
            n = self._size - self._pos
            if n > dest.len:
                n = dest.len
            if n <= 0:
                return 0
            self._copy_out(<unsigned char *>dest.buf, n)
            return n
        finally:
            PyBuffer_Release(&dest)

    def read(self, size=-1):
        """Read up to ``size`` bytes (None or negative: to the end)."""
        cdef int64_t count
        cdef Py_ssize_t n
        cdef bytes out
        self._check()
        count = _read_size(size)
        n = self._size - self._pos
        if n <= 0:
            return b""
        if 0 <= count < n:
            n = <Py_ssize_t>count
        if n == 0:
            return b""
        # Not shared until returned, so the bytes object may be filled in place.
        out = PyBytes_FromStringAndSize(NULL, n)
        self._copy_out(<unsigned char *>PyBytes_AS_STRING(out), n)
        return out

    def seek(self, offset, whence=0):
        """Move the position (``io.BytesIO`` semantics); returns the new position."""
        cdef int64_t delta, mode, base, target
        if self._closed:
            raise errors.closed_file()
        delta = _as_int64("seek offset", offset)
        mode = _as_int64("whence", whence)
        if mode == 0:
            if delta < 0:
                raise errors.negative_seek(delta)
            target = delta
        elif mode == 1 or mode == 2:
            base = self._pos if mode == 1 else self._size
            if delta > 0 and base > INT64_MAX - delta:
                raise errors.out_of_range("seek position", <object>base + <object>delta)
            target = base + delta
            if target < 0:
                target = 0
        else:
            raise errors.invalid_whence(mode)
        self._pos = <Py_ssize_t>target
        return target

    def tell(self):
        """Current position."""
        if self._closed:
            raise errors.closed_file()
        return self._pos

    def close(self):
        """Drop the segments; later operations raise ValueError."""
        if self._busy:
            raise errors.busy("ItemViewBuffer")
        self._closed = True
        self._count = 0
        self._hint = 0
        self._views = []
