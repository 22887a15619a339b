"""Fresh, writable memory that can become an immutable ``bytes`` without a copy.

A whole-object ``read()`` and a writer's full part both fill memory in place
and then hand it out as ``bytes``; on CPython that memory is a brand-new
``bytes`` object nothing else has seen, so no copy is ever made.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Tuple

__all__ = ["allocate", "finish_bytes"]


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


