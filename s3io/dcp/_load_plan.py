"""Planning a parallel load: which bytes of which files, in which buffers, with which GETs.

The load is described by :class:`LoadFile` s: a pinned handle on one object
and the items to read from it.  An item is any object with

- ``range``: an :class:`~s3io._core.ItemRange`, its bytes in the file;
- ``direct``: True when its consumer will supply a destination to fetch it
  into (no buffer), False to receive a view of its bytes.

:func:`plan_segments` turns them into :class:`Segment` s, in the order the
consumer will see the items: per file, by offset.  Nearby buffered items are
coalesced with the core's ``coalesce_ranges`` (``max_gap_size``), and the
groups are cut at item boundaries into segments of at most
:attr:`LoadSettings.segment_size` bytes (one buffer each, the unit of memory
release), and each segment into parts of at most ``part_size`` bytes (one
ranged GET each).  A direct item is a segment of its own; its parts are cut
once its consumer has said where its destination's bytes lie.

Nothing here knows about torch; ``_load_schedule`` runs the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, List, Optional, Sequence, Tuple, Union

from .._core import coalesce_ranges

__all__ = ["LoadFile", "LoadSettings", "Segment", "cut_parts", "plan_segments"]

DEFAULT_MAX_GAP_SIZE = 32 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_BYTES = 128 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 8


@dataclass(frozen=True)
class LoadSettings:
    """How a load may use the network and memory.

    Parameters
    ----------
    max_gap_size : int or float
        Items of one file separated by at most this many bytes share a segment
        (passed to ``coalesce_ranges``).
    max_inflight_bytes : int
        Cap on fetched-but-not-consumed bytes: the size of the ring of buffers.
    part_size : int
        Largest single ranged GET.
    max_concurrency : int
        Ranged GETs in flight (fetch threads).
    max_direct_ahead_bytes : int, optional
        Cap on the bytes of direct items fetched ahead of the consumer
        (admitted, not yet committed); the next item to consume is always
        admitted.  None (default): no cap, right when the destinations exist
        before the load (a DCP state dict).  Set it when ``locate_direct``
        allocates each destination and the consumer hands it on (a stream),
        so that memory stays bounded.

    Raises
    ------
    ValueError
        If ``max_inflight_bytes``, ``part_size``, ``max_concurrency`` or
        ``max_direct_ahead_bytes`` is not positive.
    """

    max_gap_size: Union[int, float] = DEFAULT_MAX_GAP_SIZE
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    part_size: int = DEFAULT_PART_SIZE
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_direct_ahead_bytes: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("max_inflight_bytes", "part_size", "max_concurrency", "max_direct_ahead_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, not {value!r}")

    @property
    def segment_size(self) -> int:
        """Largest buffer of coalesced items (unless one item is larger).

        A quarter of the cap keeps several segments in flight, so freeing the
        oldest lets the next one start.
        """
        return max(self.part_size, self.max_inflight_bytes // 4)


@dataclass(frozen=True)
class LoadFile:
    """One object of a load: a handle pinned to one version, and the items to read from it.

    ``handle.fetch_into(start, dest)`` fills the writable ``dest`` with bytes
    ``[start, start + len(dest))`` of that version, or raises
    (``S3ObjectChanged`` if the object was overwritten).
    """

    handle: Any
    items: Sequence[Any]


@dataclass(eq=False)
class Segment:
    """Consecutive items of one file, fetched into one buffer (or, direct, into the consumer's memory).

    Attributes
    ----------
    handle
        The file's handle.
    start, end : int
        Object offsets of the segment's bytes (the first item's start, the last one's end).
    items : list
        The items, by offset.
    direct : bool
        One item, fetched into the destination its consumer supplies.
    parts : list of (int, int)
        Object ranges of the ranged GETs that fill a buffered segment, in order.
    """

    handle: Any
    start: int
    end: int
    items: List[Any]
    direct: bool = False
    parts: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes of the segment's buffer."""
        return self.end - self.start


def cut_parts(start: int, end: int, part_size: int) -> List[Tuple[int, int]]:
    """``[start, end)`` as consecutive ranges of at most ``part_size`` bytes."""
    return [(offset, min(offset + part_size, end)) for offset in range(start, end, part_size)]


_range_start = attrgetter("range.start")


def _coalesced_segments(handle, items: List[Any], settings: LoadSettings) -> List[Segment]:
    """Segments of the non-empty buffered ``items`` (sorted): coalesced, then cut at item boundaries."""
    ranges = [item.range for item in items]  # ItemRange objects: the core's fast path
    limit = settings.segment_size
    segments = []
    first = 0  # index of the first item of the open segment
    for group in coalesce_ranges(ranges, settings.max_gap_size):
        stop = first + len(group.item_ranges)  # the group holds items[first:stop], in order
        start = group.start
        for index in range(first + 1, stop):
            if ranges[index].end - start > limit:
                segments.append(Segment(handle, start, ranges[index - 1].end, items[first:index]))
                first, start = index, ranges[index].start
        segments.append(Segment(handle, start, group.end, items[first:stop]))
        first = stop
    return segments


def _file_segments(file: LoadFile, settings: LoadSettings) -> List[Segment]:
    segments, buffered, empty = [], [], []
    for item in sorted(file.items, key=_range_start):
        item_range = item.range
        if item.direct:
            segments.append(Segment(file.handle, item_range.start, item_range.end, [item], direct=True))
        elif item_range.end > item_range.start:
            buffered.append(item)
        else:
            empty.append(item)
    if empty:
        # Zero-length items (e.g. empty byte blobs) need no bytes.
        segments.append(Segment(file.handle, 0, 0, empty))
    if buffered:
        for segment in _coalesced_segments(file.handle, buffered, settings):
            segment.parts = cut_parts(segment.start, segment.end, settings.part_size)
            segments.append(segment)
    segments.sort(key=lambda segment: segment.start)
    return segments


def plan_segments(files: Sequence[LoadFile], settings: LoadSettings) -> List[Segment]:
    """The segments of a load, in the order their items are consumed (file by file, by offset).

    Raises
    ------
    ValueError
        Two items of one file overlap (from ``coalesce_ranges``).
    """
    segments: List[Segment] = []
    for file in files:
        segments.extend(_file_segments(file, settings))
    return segments
