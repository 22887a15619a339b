"""A reader for torch.distributed.checkpoint loads that fetches only the planned items.

``S3StorageReader.prepare_local_plan`` tells :class:`DCPOptimizedConstructor`
which byte ranges of each ``.distcp`` file the load will read.  The reader
coalesces nearby ranges into :class:`RangeGroup` s (one ranged GET each), and
keeps one item at a time in an :class:`ItemViewBuffer` made of the stream's
own chunks (no copy into a growing buffer).

Unlike s3torchconnector 1.5.0's reader, a failed read or a bad seek leaves
this one usable (position and item unchanged; the next read opens a fresh
stream), a read-only destination gets ``TypeError`` and any operation after
:meth:`close` raises ``ValueError``.
"""
from __future__ import annotations

import bisect
import logging
import os
from collections import defaultdict
from io import SEEK_CUR, SEEK_END, SEEK_SET
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Union

from .._checks import check_bucket_key, writable_view
from .._core import ItemRange, ItemViewBuffer, coalesce_ranges
from .s3reader import S3Reader, _ObjectReader

if TYPE_CHECKING:  # pragma: no cover
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import ReadItem

__all__ = ["DCPOptimizedS3Reader", "DCPOptimizedConstructor", "DEFAULT_MAX_GAP_SIZE"]

log = logging.getLogger(__name__)

# Ranges closer than this share one GET: skipping 32 MiB of gap over an open
# connection costs less than the first-byte latency of a new request.
DEFAULT_MAX_GAP_SIZE = 32 * 1024 * 1024

_SEQUENTIAL_ONLY = "DCPOptimizedS3Reader only supports sequentially accessing provided ranges: "
_FALLBACK_GUIDANCE = (
    "\nFor unsupported or non-DCP access patterns, use the generic reader: "
    "S3StorageReader(region, path, reader_constructor=S3ReaderConstructor.default())"
)


def _check_max_gap_size(max_gap_size) -> Union[int, float]:
    if isinstance(max_gap_size, bool) or not isinstance(max_gap_size, (int, float)):
        raise TypeError(f"max_gap_size must be int or float, not {type(max_gap_size).__name__}")
    if not max_gap_size >= 0:  # also rejects NaN
        raise ValueError(f"max_gap_size must be a non-negative number, not {max_gap_size!r}")
    return max_gap_size


class DCPOptimizedS3Reader(_ObjectReader):
    """S3 reader optimized for PyTorch Distributed Checkpoint (DCP) loading.

    Fetches only the injected item ranges (plus gaps up to ``max_gap_size``
    between ranges of one group) and serves them one item at a time.

    Parameters
    ----------
    bucket, key : str
        The object.
    item_ranges : list of ItemRange
        Byte ranges of the items the load will read, sorted by start and not
        overlapping (``S3StorageReader.prepare_local_plan`` provides them).
    get_object_info : callable
        Returns the object's ``ObjectInfo``/``HeadObjectResult`` (unused for reads).
    get_stream : callable
        ``get_stream(start, end)`` returns an iterable of bytes-like chunks of
        ``[start, end)``, pinned to one object version.
    max_gap_size : int or float, default 32 MiB
        Ranges separated by at most this many bytes share one GET.

    Notes
    -----
    Access is sequential across items: a read may fall in the current item
    (anywhere: torch.load seeks back and forth inside it) or in a later one;
    going back to an earlier item raises ``ValueError``.
    """

    def __init__(
        self,
        bucket: str,
        key: str,
        item_ranges: List[ItemRange],
        get_object_info: Callable,
        get_stream: Callable,
        max_gap_size: Union[int, float] = DEFAULT_MAX_GAP_SIZE,
    ) -> None:
        check_bucket_key(bucket, key)
        if not item_ranges:
            raise ValueError("item_ranges must be a non-empty List[ItemRange] object")
        self._max_gap_size = _check_max_gap_size(max_gap_size)
        self._bucket = bucket
        self._key = key
        self._get_object_info = get_object_info
        self._get_stream = get_stream

        groups = coalesce_ranges(item_ranges, max_gap_size)  # validates; drops empty ranges
        if not groups:
            raise ValueError("No non-empty ranges to read (all ranges were length 0)")
        self._items: List[ItemRange] = []  # non-empty items, in order
        self._item_group: List[int] = []  # index of each item's group
        for group_index, group in enumerate(groups):
            for item in group.item_ranges:
                self._items.append(item)
                self._item_group.append(group_index)
        self._groups = groups
        self._starts = [item.start for item in self._items]  # for bisect

        self._position = 0
        self._item_index = -1  # item held in _buffer; -1 before the first read
        self._buffer: Optional[ItemViewBuffer] = None
        # The open stream: an iterator over one group's chunks, the object
        # offset of its next byte, and an unconsumed tail of the last chunk.
        self._stream = None
        self._stream_group = -1
        self._stream_position = 0
        self._leftover: Optional[memoryview] = None
        self._closed = False

    # -- properties -----------------------------------------------------------

    # -- item lookup ----------------------------------------------------------

    def _find_item(self, start: int, end: int) -> int:
        """Index of the item holding [start, end); the current one or a later one."""
        current = self._item_index
        if current >= 0:
            item = self._items[current]
            if item.start <= start and end <= item.end:
                return current
        index = bisect.bisect_right(self._starts, start) - 1
        if index >= 0:
            item = self._items[index]
            if item.start <= start and end <= item.end:
                if index < current:
                    prev = self._items[current]
                    raise ValueError(
                        f"{_SEQUENTIAL_ONLY}Range {start}-{end} is in item {item.start}-{item.end}, "
                        f"before the current item {prev.start}-{prev.end}.{_FALLBACK_GUIDANCE}"
                    )
                return index
        where = "" if current < 0 else f" (current item {self._items[current].start}-{self._items[current].end})"
        raise ValueError(
            f"{_SEQUENTIAL_ONLY}Range {start}-{end} is not contained in any item{where}.{_FALLBACK_GUIDANCE}"
        )

    # -- fetching -------------------------------------------------------------

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._stream_group = -1
        self._leftover = None
        close = getattr(stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # closing a broken stream must not hide the real error
                log.debug("closing stream of s3://%s/%s failed", self._bucket, self._key, exc_info=True)

    def _next_chunk(self, item: ItemRange) -> memoryview:
        try:
            chunk = next(self._stream)
        except StopIteration:
            raise ValueError(
                f"s3://{self._bucket}/{self._key}: stream ended at byte {self._stream_position} "
                f"before the end of item {item.start}-{item.end} (object truncated?)"
            ) from None
        view = memoryview(chunk)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        return view

    def _load_item(self, index: int) -> ItemViewBuffer:
        """Collect item ``index`` into a fresh view buffer, reusing the group's stream."""
        item = self._items[index]
        group_index = self._item_group[index]
        if (
            self._stream is None
            or self._stream_group != group_index
            or self._stream_position > item.start
        ):
            self._drop_stream()
            group = self._groups[group_index]
            # Start at this item, not the group's start: after a failure or a
            # forward skip there is no point fetching bytes nobody will read.
            self._stream = iter(self._get_stream(item.start, group.end))
            self._stream_group = group_index
            self._stream_position = item.start

        buffer = ItemViewBuffer()
        position = self._stream_position
        leftover = self._leftover
        need = item.end - item.start
        while need:
            if leftover is None:
                leftover = self._next_chunk(item)
            chunk_end = position + len(leftover)
            if chunk_end <= item.start:  # all gap
                position, leftover = chunk_end, None
                continue
            skip = max(item.start - position, 0)
            take = min(len(leftover) - skip, need)
            buffer.append(leftover[skip : skip + take])
            need -= take
            position += skip + take
            rest = leftover[skip + take :]
            leftover = rest if len(rest) else None
        self._stream_position = position
        self._leftover = leftover
        return buffer

    def _buffer_for(self, index: int) -> ItemViewBuffer:
        if index != self._item_index or self._buffer is None:
            try:
                buffer = self._load_item(index)
            except BaseException:
                # The stream is now at an unknown point: forget it so a retry
                # opens a fresh one.  Position and current item are unchanged.
                self._drop_stream()
                raise
            self._buffer = buffer
            self._item_index = index
        return self._buffer

    # -- file API -------------------------------------------------------------

    def read(self, size: Optional[int] = None) -> bytes:
        """Read up to ``size`` bytes from the current position.

        Parameters
        ----------
        size : int
            Number of bytes; the range must lie inside one planned item.

        Returns
        -------
        bytes

        Raises
        ------
        TypeError
            If ``size`` is not an int.
        ValueError
            If ``size`` is None or negative (whole-file reads are not
            supported), the range is outside the planned items or goes back to
            an earlier item, or the reader is closed.
        S3Exception
            An error occurred accessing S3.
        """
        self._check_open()
        if size is None:
            raise ValueError(f"Size cannot be None; full read not supported.{_FALLBACK_GUIDANCE}")
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"argument should be integer or None, not {type(size).__name__!r}")
        if size < 0:
            raise ValueError(f"Size cannot be negative; full read not supported.{_FALLBACK_GUIDANCE}")
        if size == 0:
            return b""
        index = self._find_item(self._position, self._position + size)
        buffer = self._buffer_for(index)
        buffer.seek(self._position - self._items[index].start)
        data = buffer.read(size)
        self._position += len(data)
        return data

    def readinto(self, buf) -> int:
        """Read up to ``len(buf)`` bytes into the writable bytes-like ``buf``.

        Returns
        -------
        int
            Number of bytes read.

        Raises
        ------
        TypeError
            If ``buf`` is not a writable bytes-like object.
        ValueError
            If the range is outside the planned items or the reader is closed.
        S3Exception
            An error occurred accessing S3.
        """
        self._check_open()
        view = writable_view(buf)
        size = view.nbytes
        if size == 0:
            return 0
        index = self._find_item(self._position, self._position + size)
        buffer = self._buffer_for(index)
        buffer.seek(self._position - self._items[index].start)
        n = buffer.readinto(view)
        self._position += n
        return n

    def seek(self, offset: int, whence: int = SEEK_SET, /) -> int:
        """Move the position; no I/O happens until the next read.

        Parameters
        ----------
        offset : int
        whence : int
            ``SEEK_SET`` (default) or ``SEEK_CUR``.

        Returns
        -------
        int
            The new position.

        Raises
        ------
        TypeError
            If ``offset`` is not an int.
        ValueError
            If ``whence`` is not SEEK_SET/SEEK_CUR, the target is negative
            (position unchanged), or the reader is closed.
        """
        self._check_open()
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"integer argument expected, got {type(offset).__name__!r}")
        if whence == SEEK_SET:
            target = offset
        elif whence == SEEK_CUR:
            target = self._position + offset
        elif whence == SEEK_END:
            raise ValueError("whence must be SEEK_CUR or SEEK_SET integers; SEEK_END is not supported")
        else:
            raise ValueError(f"whence must be SEEK_CUR or SEEK_SET integers, not {whence!r}")
        if target < 0:
            raise ValueError(f"negative seek value {target}")
        self._position = target
        return target

    def tell(self) -> int:
        """Current absolute position in the object."""
        self._check_open()
        return self._position

    def close(self) -> None:
        """Drop the stream and the item buffer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._drop_stream()
        self._buffer = None


class DCPOptimizedConstructor:
    """Reader constructor that creates :class:`DCPOptimizedS3Reader` s from injected ranges.

    ``S3StorageReader.prepare_local_plan`` injects each file's ranges (with
    :meth:`set_item_ranges`, or :meth:`set_item_ranges_by_file` from a plan);
    afterwards calling the constructor for a ``.distcp`` key returns a
    ``DCPOptimizedS3Reader`` over that file's ranges, and for ``.metadata`` a
    ``SequentialS3Reader``.  ``S3StorageReader`` itself uses the ranges and
    ``max_gap_size`` for its parallel load pipeline.

    Parameters
    ----------
    max_gap_size : int or float, default 32 MiB
        Ranges separated by at most this many bytes share one GET.
        ``float("inf")`` coalesces everything, 0 only touching ranges.
    """

    def __init__(self, max_gap_size: Union[int, float] = DEFAULT_MAX_GAP_SIZE) -> None:
        self._max_gap_size = _check_max_gap_size(max_gap_size)
        self._item_ranges_by_file: Dict[str, List[ItemRange]] = {}

    @property
    def max_gap_size(self) -> Union[int, float]:
        """Largest gap between two ranges that still share one GET."""
        return self._max_gap_size

    def set_item_ranges_by_file(
        self,
        plan_items: "List[ReadItem]",
        storage_data: "Dict[MetadataIndex, _StorageInfo]",
        base_path: Union[str, os.PathLike],
    ) -> None:
        """Record each file's item ranges from a load plan (replacing earlier ones).

        Parameters
        ----------
        plan_items : list of ReadItem
            The plan's items, sorted by offset.
        storage_data : dict
            ``MetadataIndex -> _StorageInfo`` from the checkpoint metadata.
        base_path : str or os.PathLike
            The checkpoint's ``s3://`` path.
        """
        by_file: Dict[str, List[ItemRange]] = defaultdict(list)
        if plan_items and not storage_data:
            raise ValueError("storage_data must not be empty; required to map ReadItems to file ranges.")
        base = os.fspath(base_path)
        seen = set()
        for read_item in plan_items:
            info = storage_data[read_item.storage_index]
            uri = _join(base, info.relative_path)
            # Several ReadItems (e.g. resharding) may read the same stored item; an empty item
            # may share its offset with the next one, so both offset and length tell them apart.
            if (uri, info.offset, info.length) in seen:
                continue
            seen.add((uri, info.offset, info.length))
            by_file[uri].append(ItemRange(info.offset, info.offset + info.length))
        self.set_item_ranges(by_file)

    def set_item_ranges(self, item_ranges_by_file: Dict[str, List[ItemRange]]) -> None:
        """Record each file's item ranges, computed by the caller (replacing earlier ones).

        Parameters
        ----------
        item_ranges_by_file : dict
            ``s3://bucket/key`` -> the :class:`ItemRange` s the load will read
            from it.  The lists are kept (not copied) and sorted by start in place.
        """
        for ranges in item_ranges_by_file.values():
            ranges.sort(key=lambda r: r.start)
        self._item_ranges_by_file = item_ranges_by_file

    def __call__(self, bucket: str, key: str, get_object_info: Callable, get_stream: Callable) -> S3Reader:
        """Create the reader for one object (see the class docstring)."""
        if key.endswith(".metadata"):
            from .sequential import SequentialS3Reader

            return SequentialS3Reader(bucket, key, get_object_info, get_stream)
        uri = f"s3://{bucket}/{key}"
        ranges = self._item_ranges_by_file.get(uri)
        if ranges:
            return DCPOptimizedS3Reader(
                bucket,
                key,
                item_ranges=ranges,
                get_object_info=get_object_info,
                get_stream=get_stream,
                max_gap_size=self._max_gap_size,
            )
        raise ValueError(
            f"No ranges found for {uri}. Make sure range injection is used in "
            f"'S3StorageReader.prepare_local_plan'.{_FALLBACK_GUIDANCE}"
        )

    def __repr__(self) -> str:
        return f"DCPOptimizedConstructor(max_gap_size={self._max_gap_size!r})"


def _join(base: str, relative: str) -> str:
    return base + relative if base.endswith("/") else f"{base}/{relative}"
