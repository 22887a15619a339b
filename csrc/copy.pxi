# Copy between two raw buffers: copy_into.  Included by _core_c.pyx.


cdef int _acquire_source(object src, Py_buffer *view) except -1:
    """Acquire ``src`` as a C-contiguous buffer or raise the shared TypeError."""
    if _get_buffer(src, view, PyBUF_C_CONTIGUOUS) == 0:
        return 0
    if (PyErr_ExceptionMatches(BufferError) or PyErr_ExceptionMatches(TypeError)
            or PyErr_ExceptionMatches(ValueError)):
        PyErr_Clear()
        raise errors.unusable_segment(src, "copy_into() source")
    return -1  # anything else (MemoryError, ...) propagates unchanged: it is still set


def copy_into(dest, src):
    """Copy all the bytes of ``src`` to the start of ``dest``.

    Parameters
    ----------
    dest : writable bytes-like
        C-contiguous, at least ``len(src)`` bytes long (bytes, not items).
    src : bytes-like
        C-contiguous; may overlap ``dest`` (the copy is a memmove).

    Returns
    -------
    int
        The number of bytes copied.

    Raises
    ------
    TypeError
        ``dest`` is not a writable C-contiguous buffer, or ``src`` not a C-contiguous one.
    ValueError
        ``dest`` is shorter than ``src``; nothing is copied.

    Notes
    -----
    Copies of 1 MiB and more run without the GIL: both buffers stay acquired
    for the whole call, so neither exporter can resize or free its memory.
    """
    cdef Py_buffer target
    cdef Py_buffer source
    cdef Py_ssize_t n
    _acquire_destination(dest, &target, "copy_into()")
    try:
        _acquire_source(src, &source)
        try:
            n = source.len
            if n > target.len:
                raise errors.short_destination("copy_into()", target.len, n)
            if n < NOGIL_COPY_MIN:
                _copy_bytes(<unsigned char *>target.buf, <const unsigned char *>source.buf, n)
            else:
                with nogil:
                    _copy_bytes(<unsigned char *>target.buf, <const unsigned char *>source.buf, n)
            return n
        finally:
            PyBuffer_Release(&source)
    finally:
        PyBuffer_Release(&target)
