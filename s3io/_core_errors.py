"""Exceptions raised by both twins of the core (``s3io._core_c`` and ``s3io._core_py``).

Every builder returns an exception instance; the caller raises it.  Keeping the
messages here is what makes the two twins raise byte-identical errors, which the
test suite checks.  Messages name the offending value.
"""

__all__ = [
    "busy",
    "closed_file",
    "invalid_buffer_size",
    "invalid_max_gap_size",
    "invalid_object_size",
    "invalid_range",
    "invalid_whence",
    "negative_seek",
    "not_callable",
    "not_integer",
    "overlapping_ranges",
    "not_a_range",
    "out_of_range",
    "readinto_destination",
    "short_destination",
    "unsorted_ranges",
    "unusable_segment",
]

# Ranges and positions are kept in signed 64-bit integers by the compiled twin;
# the pure twin enforces the same limit so both accept exactly the same input.
INT64_MAX = 2**63 - 1


def _type_name(value):
    return type(value).__name__


def invalid_range(start, end):
    """A range with a negative start or an end before its start."""
    return ValueError(f"Invalid range: {start}-{end}")


def unsorted_ranges(prev_start, prev_end, start, end):
    """A range that starts before the range preceding it."""
    return ValueError(f"Unsorted ranges: {prev_start}-{prev_end} and {start}-{end}")


def overlapping_ranges(prev_start, prev_end, start, end):
    """A range that starts inside the range preceding it."""
    return ValueError(f"Overlapping ranges: {prev_start}-{prev_end} and {start}-{end}")


def not_integer(what, value):
    """``what`` should have been an integer (anything with ``__index__``)."""
    return TypeError(f"{what} must be an integer, not {_type_name(value)}")


def invalid_max_gap_size(value):
    """``max_gap_size`` negative, NaN or not a number."""
    message = f"max_gap_size must be a non-negative number, not {value!r}"
    if isinstance(value, (int, float)) or hasattr(type(value), "__index__"):
        return ValueError(message)
    return TypeError(message)


def invalid_object_size(value):
    """RangeBuffer ``size`` negative or not an integer."""
    message = f"size must be a non-negative integer, not {value!r}"
    if isinstance(value, int):
        return ValueError(message)
    return TypeError(message)


def invalid_buffer_size(value):
    """RangeBuffer ``buffer_size`` negative or not an integer."""
    message = f"buffer_size must be None or a non-negative integer, not {value!r}"
    if isinstance(value, int):
        return ValueError(message)
    return TypeError(message)


def not_a_range(obj):
    """An element of ``ranges`` that has neither ``.start``/``.end`` nor is a pair."""
    return TypeError(
        "ranges must hold ItemRange objects, objects with integer .start and .end, "
        f"or (start, end) tuples, not {_type_name(obj)}"
    )


def out_of_range(what, value):
    """An integer outside the signed 64-bit range the core works in."""
    return OverflowError(f"{what} out of range: {value}")


def not_callable(name, value):
    return TypeError(f"{name} must be callable, not {_type_name(value)}")


def closed_file():
    """Any operation on a closed buffer (same message as the io module)."""
    return ValueError("I/O operation on closed file.")


def negative_seek(target):
    return ValueError(f"negative seek value {target}")


def invalid_whence(whence):
    """An integer whence other than 0, 1 or 2 (same message as io.BytesIO)."""
    return ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")


def busy(cls_name):
    """A call while another call on the same object is still running.

    The compiled twin copies without the GIL and the fetch callback may release
    it too; refusing overlapping calls keeps raw pointers valid.
    """
    return RuntimeError(f"{cls_name} is already in use by another call (concurrent or re-entrant use)")


def readinto_destination(obj, what="readinto()"):
    """Explain why ``obj`` cannot be the destination of ``what`` (a ``readinto()``-like call)."""
    name = _type_name(obj)
    try:
        view = memoryview(obj)
    except TypeError:
        return TypeError(f"{what} needs a writable bytes-like object, not {name}")
    if view.readonly:
        return TypeError(f"{what} needs a writable bytes-like object, not {name}")
    return TypeError(f"{what} needs a C-contiguous writable buffer, not a non-contiguous {name}")


def unusable_segment(obj, what="segment"):
    """``what`` (an ``ItemViewBuffer`` segment, a copy source) is not a C-contiguous buffer."""
    name = _type_name(obj)
    try:
        memoryview(obj)
    except TypeError:
        return TypeError(f"{what} must be a bytes-like object, not {name}")
    return TypeError(f"{what} must be a C-contiguous bytes-like object, not a non-contiguous {name}")


def short_destination(what, dest_len, src_len):
    """A copy whose destination cannot hold the whole source (nothing is copied)."""
    return ValueError(f"{what} destination is {dest_len} bytes, shorter than the {src_len} source bytes")
