"""Pure-Python twin of the s3io core: range coalescing, the ranged read buffer, the item view buffer, buffer copies.

This module is the readable reference and the test oracle for the compiled twin
``s3io._core_c`` (built from ``csrc/``).  Both have the same names, signatures and
error messages (the messages live in :mod:`s3io._core_errors`).  Import the core
through :mod:`s3io._core`, which picks the compiled twin unless
``S3IO_NO_EXTENSIONS=1`` is set.
"""

import bisect
import math
import operator

from s3io import _core_errors as errors
from s3io._checks import writable_view

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
_INT64_MAX = errors.INT64_MAX
_INT64_MIN = -errors.INT64_MAX - 1
SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2


def _as_int64(what, value):
    """``value`` as an int (via ``__index__``) inside the signed 64-bit range."""
    if type(value) is not int:
        try:
            value = operator.index(value)
        except TypeError:
            raise errors.not_integer(what, value) from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise errors.out_of_range(what, value)
    return value


def _read_size(size):
    """Normalise a ``read()`` size: -1 means "to the end", big sizes are clamped."""
    if size is None:
        return -1
    if type(size) is not int:
        try:
            size = operator.index(size)
        except TypeError:
            raise errors.not_integer("read size", size) from None
    if size < 0:
        return -1
    return min(size, _INT64_MAX)


# --------------------------------------------------------------------------------------------
# Range coalescing


class ItemRange:
    """Byte range ``[start, end)`` of one item (one tensor) inside an object.

    Parameters
    ----------
    start : int
        First byte of the item.
    end : int
        One past the last byte of the item.

    Notes
    -----
    Validation (``0 <= start <= end``, order, overlap) happens in
    :func:`coalesce_ranges`, so an invalid range can be built and reported there.
    """

    __slots__ = ("start", "end")

    def __init__(self, start, end):
        self.start = _as_int64("range start", start)
        self.end = _as_int64("range end", end)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.start == other.start and self.end == other.end

    __hash__ = None  # mutable, like the reference dataclass

    def __repr__(self):
        return f"ItemRange(start={self.start}, end={self.end})"

    def __reduce__(self):
        return (ItemRange, (self.start, self.end))


class RangeGroup:
    """Nearby item ranges served by one ranged GET.

    Parameters
    ----------
    start : int
        First byte of the group (the first item's start).
    end : int
        One past the last byte of the group (the last item's end).
    item_ranges : list
        The input range objects of the group, in order (not copies).
    """

    __slots__ = ("start", "end", "item_ranges")

    def __init__(self, start, end, item_ranges):
        self.start = _as_int64("range start", start)
        self.end = _as_int64("range end", end)
        self.item_ranges = item_ranges

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return (self.start, self.end, self.item_ranges) == (other.start, other.end, other.item_ranges)

    __hash__ = None

    def __repr__(self):
        return f"RangeGroup(start={self.start}, end={self.end}, item_ranges={self.item_ranges!r})"

    def __reduce__(self):
        return (RangeGroup, (self.start, self.end, self.item_ranges))


def _max_gap(value):
    """Validate ``max_gap_size``; return it as an int or ``math.inf``."""
    if isinstance(value, float):
        if math.isnan(value) or value < 0:
            raise errors.invalid_max_gap_size(value)
        return math.inf if math.isinf(value) else math.floor(value)
    try:
        gap = operator.index(value)
    except TypeError:
        raise errors.invalid_max_gap_size(value) from None
    if gap < 0:
        raise errors.invalid_max_gap_size(value)
    return gap


def _bounds(item):
    """``(start, end)`` of an ItemRange, an object with ``.start``/``.end``, or a pair."""
    if type(item) is ItemRange:
        return item.start, item.end
    if isinstance(item, tuple):
        if len(item) != 2:
            raise errors.not_a_range(item)
        start, end = item
    else:
        try:
            start, end = item.start, item.end
        except AttributeError:
            raise errors.not_a_range(item) from None
    return _as_int64("range start", start), _as_int64("range end", end)


def coalesce_ranges(ranges, max_gap_size):
    """Group sorted, non-overlapping byte ranges whose gaps are at most ``max_gap_size``.

    Parameters
    ----------
    ranges : iterable
        :class:`ItemRange` objects, objects with integer ``start``/``end``
        attributes, or ``(start, end)`` tuples, sorted by start.
        Zero-length ranges are dropped.
    max_gap_size : int or float
        Largest gap ``next.start - prev.end`` inside one group; ``0`` merges only
        touching ranges, ``float("inf")`` makes one group.

    Returns
    -------
    list of RangeGroup
        Each group's ``item_ranges`` holds the input objects, in input order.

    Raises
    ------
    ValueError
        ``Invalid range: 10-4`` (negative start or end before start),
        ``Unsorted ranges: 50-60 and 10-20``, ``Overlapping ranges: 0-10 and 5-15``,
        or a negative / NaN ``max_gap_size``.
    TypeError
        ``max_gap_size`` is not a number, or an element is not a range.
    """
    max_gap = _max_gap(max_gap_size)
    groups = []
    items = None  # items of the group being built
    group_start = prev_start = prev_end = 0
    for item in ranges:
        start, end = _bounds(item)
        if start < 0 or start > end:
            raise errors.invalid_range(start, end)
        if start == end:
            continue
        if items is None:
            items = [item]
            group_start = start
        else:
            if start < prev_end:
                if start < prev_start:
                    raise errors.unsorted_ranges(prev_start, prev_end, start, end)
                raise errors.overlapping_ranges(prev_start, prev_end, start, end)
            if start - prev_end <= max_gap:
                items.append(item)
            else:
                groups.append(RangeGroup(group_start, prev_end, items))
                items = [item]
                group_start = start
        prev_start, prev_end = start, end
    if items is not None:
        groups.append(RangeGroup(group_start, prev_end, items))
    return groups


# --------------------------------------------------------------------------------------------
# Ranged read buffer


class RangeBuffer:
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

    __slots__ = ("_size", "_fetch_into", "_buffer_size", "_buffer", "_buf_start", "_buf_end",
                 "_pos", "_closed", "_busy")

    def __init__(self, size, fetch_into, buffer_size=None):
        if type(size) is not int or not 0 <= size <= _INT64_MAX:
            size = _non_negative(size, errors.invalid_object_size)
        if not callable(fetch_into):
            raise errors.not_callable("fetch_into", fetch_into)
        if buffer_size is None:
            buffer_size = DEFAULT_BUFFER_SIZE
        else:
            buffer_size = _non_negative(buffer_size, errors.invalid_buffer_size)
        self._size = size
        self._fetch_into = fetch_into
        self._buffer_size = buffer_size
        self._buffer = None  # bytearray, allocated by the first load
        self._buf_start = 0  # object offset of the buffer's first valid byte
        self._buf_end = 0  # object offset one past the buffer's last valid byte
        self._pos = 0
        self._closed = False
        self._busy = False  # a fetch is running: refuse re-entrant calls

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

    def _check(self):
        if self._closed:
            raise errors.closed_file()
        if self._busy:
            raise errors.busy("RangeBuffer")

    def _fetch(self, start, end, dest):
        self._busy = True
        try:
            self._fetch_into(start, end, dest)
        finally:
            self._busy = False

    def _load_buffer(self, start):
        end = min(start + self._buffer_size, self._size)
        if self._buffer is None:
            self._buffer = bytearray(min(self._buffer_size, self._size))
        # Invalidate first: a failing fetch must not leave half-loaded bytes marked valid.
        self._buf_start = self._buf_end = 0
        self._fetch(start, end, memoryview(self._buffer)[: end - start])
        self._buf_start, self._buf_end = start, end

    def _read_range(self, dest, start, end):
        """Fill ``dest`` (unsigned bytes, ``len == end - start``) with ``[start, end)``."""
        done = 0
        if self._buf_start <= start < self._buf_end <= end:  # forward overlap
            done = self._buf_end - start
            offset = start - self._buf_start
            dest[:done] = self._buffer[offset : offset + done]
            start = self._buf_end
        remaining = end - start
        if remaining == 0:
            return
        if self._buffer_size == 0 or remaining >= self._buffer_size:
            self._fetch(start, end, dest[done:])
            return
        if not (self._buf_start <= start and end <= self._buf_end):
            self._load_buffer(start)
        offset = start - self._buf_start
        dest[done:] = self._buffer[offset : offset + remaining]

    def read(self, size=-1):
        """Read up to ``size`` bytes (None or negative: to the end); b"" at EOF."""
        self._check()
        size = _read_size(size)
        start = self._pos
        end = self._size if size < 0 else min(start + size, self._size)
        if start >= end:
            return b""
        out = bytearray(end - start)
        self._read_range(memoryview(out), start, end)
        self._pos = end
        return bytes(out)

    def readinto(self, buf):
        """Read up to ``len(buf)`` bytes into the writable buffer ``buf``; 0 at EOF."""
        self._check()
        dest = writable_view(buf)
        start = self._pos
        end = min(start + len(dest), self._size)
        if start >= end:
            return 0
        self._read_range(dest[: end - start], start, end)
        self._pos = end
        return end - start

    def seek(self, offset, whence=SEEK_SET):
        """Move the position; past the end clamps to ``size``; returns the new position."""
        self._check()
        offset = _as_int64("seek offset", offset)
        whence = _as_int64("whence", whence)
        if whence == SEEK_SET:
            target = offset
        elif whence == SEEK_CUR:
            target = self._pos + offset
        elif whence == SEEK_END:
            target = self._size + offset
        else:
            raise errors.invalid_whence(whence)
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
        self._buf_start = self._buf_end = 0


def _non_negative(value, error):
    if type(value) is not int:
        try:
            value = operator.index(value)
        except TypeError:
            raise error(value) from None
    if value < 0:
        raise error(value)
    if value > _INT64_MAX:
        raise errors.out_of_range("size", value)
    return value


# --------------------------------------------------------------------------------------------
# Item view buffer


class ItemViewBuffer:
    """An item's bytes as a list of memoryview segments, read like ``io.BytesIO``.

    Appending keeps a reference to the segment (no copy).  Reads find the
    segment holding the position by binary search and copy across segment
    boundaries.  ``seek`` follows ``io.BytesIO``: past the end is allowed, a
    negative absolute target is a ValueError, relative targets below 0 clamp to 0.
    """

    __slots__ = ("_segments", "_offsets", "_size", "_pos", "_closed")

    def __init__(self):
        self._segments = []  # unsigned-byte memoryviews, never empty
        self._offsets = []  # item offset of each segment's first byte
        self._size = 0
        self._pos = 0
        self._closed = False

    def append(self, segment):
        """Append a C-contiguous bytes-like ``segment`` by reference; empty ones are ignored."""
        if self._closed:
            raise errors.closed_file()
        try:
            view = memoryview(segment)
        except TypeError:
            raise errors.unusable_segment(segment) from None
        if not view.c_contiguous:
            raise errors.unusable_segment(segment)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        if len(view) == 0:
            return
        self._segments.append(view)
        self._offsets.append(self._size)
        self._size += len(view)

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

    def _copy_into(self, dest):
        """Copy from the position into ``dest`` (unsigned bytes); return the count."""
        pos = self._pos
        n = min(len(dest), self._size - pos)
        if n <= 0:
            return 0
        # Local references: a close() from another thread mid-copy must not pull
        # the segments out from under the loop (the compiled twin refuses it).
        segments, offsets = self._segments, self._offsets
        index = bisect.bisect_right(offsets, pos) - 1
        done = 0
        while done < n:
            segment = segments[index]
            offset = pos + done - offsets[index]
            count = min(len(segment) - offset, n - done)
            dest[done : done + count] = segment[offset : offset + count]
            done += count
            index += 1
        self._pos = pos + n
        return n

    def readinto(self, buf):
        """Read up to ``len(buf)`` bytes into the writable buffer ``buf``; 0 at the end."""
        if self._closed:
            raise errors.closed_file()
        return self._copy_into(writable_view(buf))

    def read(self, size=-1):
        """Read up to ``size`` bytes (None or negative: to the end)."""
        if self._closed:
            raise errors.closed_file()
        size = _read_size(size)
        available = max(self._size - self._pos, 0)
        n = available if size < 0 else min(size, available)
        if n == 0:
            return b""
        out = bytearray(n)
        self._copy_into(memoryview(out))
        return bytes(out)

    def seek(self, offset, whence=SEEK_SET):
        """Move the position (``io.BytesIO`` semantics); returns the new position."""
        if self._closed:
            raise errors.closed_file()
        offset = _as_int64("seek offset", offset)
        whence = _as_int64("whence", whence)
        if whence == SEEK_SET:
            if offset < 0:
                raise errors.negative_seek(offset)
            target = offset
        elif whence == SEEK_CUR:
            target = max(self._pos + offset, 0)
        elif whence == SEEK_END:
            target = max(self._size + offset, 0)
        else:
            raise errors.invalid_whence(whence)
        if target > _INT64_MAX:
            raise errors.out_of_range("seek position", target)
        self._pos = target
        return target

    def tell(self):
        """Current position."""
        if self._closed:
            raise errors.closed_file()
        return self._pos

    def close(self):
        """Drop the segments; later operations raise ValueError."""
        self._closed = True
        self._segments = []
        self._offsets = []


# --------------------------------------------------------------------------------------------
# Copies between buffers


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
    """
    target = writable_view(dest, "copy_into()")
    try:
        source = memoryview(src)
    except TypeError:
        raise errors.unusable_segment(src, "copy_into() source") from None
    if not source.c_contiguous:
        raise errors.unusable_segment(src, "copy_into() source")
    n = source.nbytes
    if n > len(target):
        raise errors.short_destination("copy_into()", len(target), n)
    if n:
        target[:n] = source.cast("B") if source.ndim != 1 or source.format != "B" else source
    return n
