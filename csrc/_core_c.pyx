# cython: binding=False, auto_pickle=False
"""Compiled twin of the s3io core: range coalescing, the ranged read buffer, the item view buffer, buffer copies.

Built as ``s3io._core_c`` from this file and the four files it includes; one
module, so the pieces share C-level helpers.  ``s3io/_core_py.py`` is the
pure-Python twin with the same names, signatures and error messages (built by
:mod:`s3io._core_errors`).  Import through :mod:`s3io._core`.

Pattern throughout: check arguments and acquire buffers in the Python-visible
methods, then do the byte work in ``noexcept nogil`` helpers over raw pointers.
Copies use memmove, not memcpy: a destination may alias a segment (a bytearray
appended and then read into), and glibc's memmove is as fast.
``binding=False`` keeps methods as plain C method descriptors, about 20 ns per
call cheaper than cyfunctions, which matters for 4 KiB ``readinto`` calls.
"""

cimport cython
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_IsContiguous, PyBuffer_Release
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Clear, PyErr_ExceptionMatches
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_GetSlice
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.memoryview cimport PyMemoryView_FromObject, PyMemoryView_GET_BUFFER
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject, PyTypeObject
from libc.math cimport floor, isnan
from libc.stdint cimport INT64_MAX, int64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memmove

import gc

from s3io import _core_errors as errors

cdef extern from "Python.h":
    # Declared without Cython's error check so a failure can be turned into the
    # shared TypeError without a try/except on the hot path.
    int _get_buffer "PyObject_GetBuffer" (object obj, Py_buffer *view, int flags)
    bytearray _new_bytearray "PyByteArray_FromStringAndSize" (const char *data, Py_ssize_t size)
    PyTypeObject *_type_of "Py_TYPE" (PyObject *obj)

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "ItemRange",
    "ItemViewBuffer",
    "RangeBuffer",
    "RangeGroup",
    "coalesce_ranges",
    "copy_into",
]

DEFAULT_BUFFER_SIZE = 8 * 1024 * 1024  # RangedS3Reader's documented default: 8 MiB

# Copies at least this long run without the GIL.  Releasing and re-taking the
# GIL costs about as much as copying a few KiB, so small copies keep it.
cdef Py_ssize_t NOGIL_COPY_MIN = 1024 * 1024


cdef int64_t _as_int64(str what, object value) except? -1:
    """``value`` (anything with ``__index__``) as a signed 64-bit integer."""
    cdef int overflow = 0
    cdef long long result
    if not PyLong_CheckExact(value):
        try:
            value = PyNumber_Index(value)
        except TypeError:
            raise errors.not_integer(what, value) from None
    result = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow:
        raise errors.out_of_range(what, value)
    return result


cdef int64_t _read_size(object size) except? -2:
    """Normalise a ``read()`` size: -1 means "to the end", big sizes are clamped."""
    cdef int overflow = 0
    cdef long long result
    if size is None:
        return -1
    if not PyLong_CheckExact(size):
        try:
            size = PyNumber_Index(size)
        except TypeError:
            raise errors.not_integer("read size", size) from None
    result = PyLong_AsLongLongAndOverflow(size, &overflow)
    if overflow > 0:
        return INT64_MAX
    if overflow < 0 or result < 0:
        return -1
    return result


cdef int _acquire_destination(object buf, Py_buffer *view, str what="readinto()") except -1:
    """Acquire ``buf`` as a writable C-contiguous buffer or raise the shared TypeError."""
    if _get_buffer(buf, view, PyBUF_WRITABLE) == 0:
        return 0
    if (PyErr_ExceptionMatches(BufferError) or PyErr_ExceptionMatches(TypeError)
            or PyErr_ExceptionMatches(ValueError)):
        PyErr_Clear()
        raise errors.readinto_destination(buf, what)
    return -1  # anything else (MemoryError, ...) propagates unchanged: it is still set


cdef inline void _copy_bytes(unsigned char *dest, const unsigned char *src, Py_ssize_t n) noexcept nogil:
    memmove(dest, src, <size_t>n)


cdef object _byte_view(object obj):
    """A one-dimensional unsigned-byte memoryview of the C-contiguous ``obj``."""
    view = PyMemoryView_FromObject(obj)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


include "coalesce.pxi"
include "range_buffer.pxi"
include "view_buffer.pxi"
include "copy.pxi"
