# Range coalescing: ItemRange, RangeGroup, coalesce_ranges.  Included by _core_c.pyx.


cdef class ItemRange:
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
    The attributes are C integers so coalescing reads them without Python calls.
    """

    cdef readonly int64_t start  # first byte
    cdef readonly int64_t end  # one past the last byte

    def __init__(self, start, end):
        self.start = _as_int64("range start", start)
        self.end = _as_int64("range end", end)

    def __eq__(self, other):
        if type(other) is not ItemRange:
            return NotImplemented
        return self.start == (<ItemRange>other).start and self.end == (<ItemRange>other).end

    def __repr__(self):
        return f"ItemRange(start={self.start}, end={self.end})"

    def __reduce__(self):
        return (ItemRange, (self.start, self.end))


cdef class RangeGroup:
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

    cdef readonly int64_t start  # first item's start
    cdef readonly int64_t end  # last item's end
    cdef public object item_ranges  # list of the input range objects

    def __init__(self, start, end, item_ranges):
        self.start = _as_int64("range start", start)
        self.end = _as_int64("range end", end)
        self.item_ranges = item_ranges

    def __eq__(self, other):
        if type(other) is not RangeGroup:
            return NotImplemented
        cdef RangeGroup group = <RangeGroup>other
        return self.start == group.start and self.end == group.end and self.item_ranges == group.item_ranges

    def __repr__(self):
        return f"RangeGroup(start={self.start}, end={self.end}, item_ranges={self.item_ranges!r})"

    def __reduce__(self):
        return (RangeGroup, (self.start, self.end, self.item_ranges))


# Coalescing this many ranges pauses the cyclic GC (see coalesce_ranges).
cdef Py_ssize_t GC_PAUSE_MIN_RANGES = 4096
_gc_isenabled = gc.isenabled
_gc_disable = gc.disable
_gc_enable = gc.enable


cdef extern from *:
    void __builtin_prefetch(const void *address) nogil

# How many ranges ahead coalescing prefetches the range objects.  The objects
# of a big list are scattered over the heap; without prefetching each one costs
# a full memory latency (measured: 1M scattered ranges 2x slower; 8-32 all do).
cdef Py_ssize_t PREFETCH_AHEAD = 16


cdef int _parse_max_gap(object value, bint *unlimited, int64_t *max_gap) except -1:
    """Validate ``max_gap_size``; set ``unlimited`` or the integer gap limit."""
    cdef double limit
    cdef int overflow = 0
    cdef long long gap
    unlimited[0] = False
    if isinstance(value, float):
        limit = value
        if isnan(limit) or limit < 0:
            raise errors.invalid_max_gap_size(value)
        if limit >= 9223372036854775808.0:  # 2**63: no gap between int64 offsets exceeds it
            unlimited[0] = True
        else:
            max_gap[0] = <int64_t>floor(limit)  # gaps are integers: gap <= 1.5 iff gap <= 1
        return 0
    try:
        index = PyNumber_Index(value)
    except TypeError:
        raise errors.invalid_max_gap_size(value) from None
    gap = PyLong_AsLongLongAndOverflow(index, &overflow)
    if overflow < 0 or (overflow == 0 and gap < 0):
        raise errors.invalid_max_gap_size(value)
    if overflow > 0:
        unlimited[0] = True
    else:
        max_gap[0] = gap
    return 0


cdef int _generic_bounds(object item, int64_t *start, int64_t *end) except -1:
    """Bounds of a range that is not an ItemRange: ``.start``/``.end`` or a pair."""
    if isinstance(item, tuple):
        if len(item) != 2:
            raise errors.not_a_range(item)
        first, last = item
    else:
        try:
            first, last = item.start, item.end
        except AttributeError:
            raise errors.not_a_range(item) from None
    start[0] = _as_int64("range start", first)
    end[0] = _as_int64("range end", last)
    return 0


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
    cdef bint unlimited = False
    cdef int64_t max_gap = 0
    cdef list items
    cdef list kept = None  # non-empty ranges; built only once an empty range shows up
    cdef list groups = []
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t count = 0  # non-empty ranges so far (their index in kept, or in items while kept is None)
    cdef Py_ssize_t group_first = 0  # that index for the first range of the open group
    cdef int64_t start, end, prev_start = 0, prev_end = 0, group_start = 0
    cdef PyObject *entry
    cdef object item
    cdef bint gc_paused

    _parse_max_gap(max_gap_size, &unlimited, &max_gap)
    items = ranges if type(ranges) is list else list(ranges)
    # Thousands of new lists holding up to millions of references would start
    # cyclic GC passes that visit every one of them (3-8x the work of building
    # them).  The new objects cannot form cycles yet, so pause the collector.
    gc_paused = PyList_GET_SIZE(items) >= GC_PAUSE_MIN_RANGES and _gc_isenabled()
    if gc_paused:
        _gc_disable()
    try:
        # The bound is re-read every pass: a .start property may mutate the list.
        while i < PyList_GET_SIZE(items):
            entry = PyList_GET_ITEM(items, i)  # borrowed: no refcount write per range
            if i + PREFETCH_AHEAD < PyList_GET_SIZE(items):
                __builtin_prefetch(PyList_GET_ITEM(items, i + PREFETCH_AHEAD))
            i += 1
            if _type_of(entry) is <PyTypeObject *>ItemRange:
                # Nothing below runs Python code before the fields are read.
                start = (<ItemRange>entry).start
                end = (<ItemRange>entry).end
            else:
                item = <object>entry  # a strong reference: .start may run arbitrary code
                _generic_bounds(item, &start, &end)
            if start < 0 or start > end:
                raise errors.invalid_range(start, end)
            if start == end:
                if kept is None:
                    kept = PyList_GetSlice(items, 0, i - 1)  # all non-empty so far
                continue
            if kept is not None:
                kept.append(<object>entry)
            if count == 0:
                group_start = start
            else:
                if start < prev_end:
                    if start < prev_start:
                        raise errors.unsorted_ranges(prev_start, prev_end, start, end)
                    raise errors.overlapping_ranges(prev_start, prev_end, start, end)
                if not (unlimited or start - prev_end <= max_gap):
                    # Close the group now, while its ranges are still in the CPU cache.
                    groups.append(_new_group(items if kept is None else kept, group_first, count,
                                             group_start, prev_end))
                    group_first = count
                    group_start = start
            prev_start = start
            prev_end = end
            count += 1
        if count:
            groups.append(_new_group(items if kept is None else kept, group_first, count, group_start, prev_end))
        return groups
    finally:
        if gc_paused:
            _gc_enable()


cdef RangeGroup _new_group(list source, Py_ssize_t first, Py_ssize_t stop, int64_t start, int64_t end):
    """A RangeGroup of ``source[first:stop]`` (a new list of the same objects)."""
    cdef RangeGroup group = RangeGroup.__new__(RangeGroup)
    group.start = start
    group.end = end
    group.item_ranges = PyList_GetSlice(source, first, stop)
    return group
