"""Scheduling a planned load: parallel ranged GETs into a bounded ring, items handed over in order.

:func:`run_load` takes the segments from ``_load_plan`` and an
:class:`ItemConsumer`:

1. Segments are admitted in order while their buffers fit in one ring of
   ``max_inflight_bytes`` (a segment larger than the ring gets a buffer of its
   own; the segment about to be consumed is always admitted).  Their parts are
   fetched by a pool of ``max_concurrency`` threads, across all files at once,
   each GET written by the file's ``handle.fetch_into`` straight into the buffer.
2. A direct item takes no ring space (with ``max_direct_ahead_bytes`` set,
   direct items are admitted while their bytes fit under it): on a fetch thread, the consumer's
   :meth:`ItemConsumer.locate_direct` says where its destination's bytes lie
   in the item (it may read a few bytes of the item to find out) and hands over
   the destination memory; the parts are then fetched into it.  If it
   declines, the item is fetched into a buffer of its own and consumed.
3. The calling thread waits only for the parts under the next item, hands
   its bytes to :meth:`ItemConsumer.consume` (or calls
   :meth:`ItemConsumer.commit_direct`), and frees a segment's ring space as
   soon as its last item is consumed.

Version pinning is the handles' job (``s3io._handle``): a file overwritten
during the load raises ``S3ObjectChanged`` from its ``fetch_into``.
"""
from __future__ import annotations

import mmap
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

from ._load_plan import LoadFile, LoadSettings, Segment, cut_parts, plan_segments

__all__ = ["BufferRing", "ItemConsumer", "LoadStats", "load_files", "run_load"]

# Buffers at least this large come from an anonymous mmap: the kernel zero-fills
# pages as they are written (no up-front memset) and unmapping returns the memory
# to the OS at once.
_MMAP_THRESHOLD = 1024 * 1024

ReadItemBytes = Callable[[int, int], memoryview]  # read(offset in the item, size) -> its bytes


class ItemConsumer(Protocol):
    """What a load hands its items to (see the module docstring)."""

    def consume(self, item: Any, view: memoryview) -> None:
        """Calling thread, items in order: ``view`` holds the item's bytes.

        ``view`` is valid only during the call (its memory is reused for later
        segments): nothing built over it may outlive the call.
        """

    def locate_direct(self, item: Any, read: ReadItemBytes) -> Optional[Tuple[int, memoryview]]:
        """Fetch thread, for items with ``direct`` set: where to fetch the item into.

        Returns ``(offset, dest)``: item bytes ``[offset, offset + len(dest))``
        go straight into the writable ``dest``; or None to receive the item
        through :meth:`consume` instead.  ``read(offset, size)`` fetches some
        of the item's bytes (e.g. a header) to decide.
        """

    def commit_direct(self, item: Any) -> None:
        """Calling thread, in order: the destination that :meth:`locate_direct` gave is filled."""


@dataclass
class LoadStats:
    """What one load did.

    Attributes
    ----------
    direct_items : int
        Items fetched straight into the destination their consumer supplied.
    peak_inflight_bytes : int
        Most bytes held in buffers at once.
    """

    direct_items: int = 0
    peak_inflight_bytes: int = 0


def _allocate(size: int):
    if size >= _MMAP_THRESHOLD:
        return mmap.mmap(-1, size)
    return bytearray(size)


class BufferRing:
    """First-in first-out allocator over one buffer of ``capacity`` bytes.

    Segments are consumed in the order they are admitted, so their buffers
    can be carved from a ring: allocate at the head, free at the tail.  One
    buffer reused for the whole load means no page faults, zeroing or unmaps
    per segment after the first lap (those cost ~0.6 s per GiB on a 2-core
    machine), and the resident memory of in-flight data never exceeds it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buffer = None  # allocated on first use: small loads touch little of it
        self._live: deque = deque()  # (start, end) of live allocations, oldest first
        self._head = 0  # next free byte after the newest allocation

    def allocate(self, size: int) -> Optional[memoryview]:
        """A view of ``size`` free bytes, or None if the ring has no room now."""
        if size > self.capacity:
            return None
        if not self._live:
            start = 0
        else:
            tail = self._live[0][0]
            if self._head > tail:
                # Free space: [head, capacity) and then [0, tail).
                if self._head + size <= self.capacity:
                    start = self._head
                elif size <= tail:
                    start = 0
                else:
                    return None
            else:  # wrapped: free space is [head, tail)
                if self._head + size <= tail:
                    start = self._head
                else:
                    return None
        if self._buffer is None:
            self._buffer = _allocate(self.capacity)
        self._live.append((start, start + size))
        self._head = start + size
        return memoryview(self._buffer)[start : start + size]

    def free_oldest(self) -> None:
        """Free the oldest live allocation."""
        self._live.popleft()
        if not self._live:
            self._head = 0

    def close(self) -> None:
        """Drop the buffer (views handed out keep their memory alive)."""
        self._live.clear()
        self._head = 0
        self._buffer = None


@dataclass(eq=False)
class _Fetch:
    """One admitted segment: its buffer and its GETs in flight."""

    segment: Segment
    view: Optional[memoryview] = None  # the buffer; None for a direct item
    parts: List[Tuple[int, Future]] = field(default_factory=list)  # (object start, GET), in order
    probe: Optional[Future] = None  # direct item: True once its parts are queued, False if declined
    in_ring: bool = False


class _Run:
    """The state of one :func:`run_load` (calling thread, except :meth:`_fetch_direct`)."""

    def __init__(self, segments: Sequence[Segment], consumer: ItemConsumer, settings: LoadSettings,
                 pool: ThreadPoolExecutor) -> None:
        self.segments = segments
        self.consumer = consumer
        self.part_size = settings.part_size
        self.pool = pool
        self.ring = BufferRing(settings.max_inflight_bytes)
        self.fetches: deque = deque()  # admitted, not yet consumed, in order
        self.in_ring: deque = deque()  # admitted fetches that hold ring memory, oldest first
        self.admitted = 0
        self.inflight = 0
        self.max_direct_ahead = settings.max_direct_ahead_bytes
        self.direct_ahead = 0  # bytes of direct items admitted and not yet released
        self.stats = LoadStats()

    def run(self) -> LoadStats:
        for _ in self.segments:
            self._admit_ahead()
            fetch = self.fetches.popleft()
            if not (fetch.segment.direct and self._commit_direct(fetch)):
                self._consume(fetch)
            self._release(fetch)
        return self.stats

    def close(self) -> None:
        self.fetches.clear()
        self.in_ring.clear()
        self.ring.close()

    # -- admission --------------------------------------------------------------

    def _admit_ahead(self) -> None:
        """Admit segments in order while the ring has room; the next one to consume always."""
        while self.admitted < len(self.segments):
            segment = self.segments[self.admitted]
            fetch = _Fetch(segment)
            if segment.direct:
                if self.max_direct_ahead is not None and self.fetches and \
                        self.direct_ahead + segment.size > self.max_direct_ahead:
                    return
                self.direct_ahead += segment.size
                fetch.probe = self.pool.submit(self._fetch_direct, fetch)
            elif not self._take_buffer(fetch, needed_now=not self.fetches):
                return
            self.fetches.append(fetch)
            self.admitted += 1

    def _take_buffer(self, fetch: _Fetch, needed_now: bool) -> bool:
        """Give ``fetch`` a buffer and queue its parts; False if it must wait for ring space."""
        size = fetch.segment.size
        if size == 0:
            fetch.view = memoryview(b"")
        else:
            fetch.view = self.ring.allocate(size)
            if fetch.view is not None:
                fetch.in_ring = True
                self.in_ring.append(fetch)
            elif needed_now:
                fetch.view = memoryview(_allocate(size))  # larger than the whole ring: a buffer of its own
            else:
                return False
        self.inflight += size
        self.stats.peak_inflight_bytes = max(self.stats.peak_inflight_bytes, self.inflight)
        self._queue_parts(fetch, fetch.segment.parts, fetch.view, fetch.segment.start)
        return True

    def _queue_parts(self, fetch: _Fetch, parts: List[Tuple[int, int]], dest: memoryview, dest_start: int) -> None:
        """Queue a GET per part into ``dest``, whose first byte is object offset ``dest_start``."""
        fetch_into = fetch.segment.handle.fetch_into
        fetch.parts = [
            (start, self.pool.submit(fetch_into, start, dest[start - dest_start : end - dest_start]))
            for start, end in parts
        ]

    def _fetch_direct(self, fetch: _Fetch) -> bool:
        """Fetch thread: ask the consumer for the destination, then queue the parts into it."""
        segment = fetch.segment
        item = segment.items[0]
        handle = segment.handle

        def read(offset: int, size: int) -> memoryview:
            if offset < 0 or size < 0 or offset + size > segment.size:
                raise ValueError(f"bytes {offset}-{offset + size} are outside the item {segment.start}-{segment.end}")
            buffer = bytearray(size)
            handle.fetch_into(segment.start + offset, buffer)
            return memoryview(buffer)

        located = self.consumer.locate_direct(item, read)
        if located is None:
            return False
        offset, dest = located
        if offset < 0 or offset + len(dest) > segment.size:
            raise ValueError(
                f"locate_direct placed {len(dest)} bytes at {offset}, outside the item {segment.start}-{segment.end}"
            )
        start = segment.start + offset
        self._queue_parts(fetch, cut_parts(start, start + len(dest), self.part_size), dest, start)
        return True  # fetch.parts is complete before this future resolves

    # -- consumption --------------------------------------------------------------

    def _commit_direct(self, fetch: _Fetch) -> bool:
        """Wait for a direct item and commit it; False if its consumer declined it."""
        if not fetch.probe.result():
            # A buffer of its own: ring space is promised to the segments admitted after it.
            segment = fetch.segment
            fetch.view = memoryview(_allocate(segment.size))
            self.inflight += segment.size
            self.stats.peak_inflight_bytes = max(self.stats.peak_inflight_bytes, self.inflight)
            self._queue_parts(fetch, cut_parts(segment.start, segment.end, self.part_size), fetch.view, segment.start)
            return False
        for _, future in fetch.parts:
            future.result()
        self.stats.direct_items += 1
        self.consumer.commit_direct(fetch.segment.items[0])
        return True

    def _consume(self, fetch: _Fetch) -> None:
        """Hand each item of a buffered segment to the consumer, waiting only for the parts under it."""
        segment, parts = fetch.segment, fetch.parts
        waited = 0
        for item in segment.items:
            start, end = item.range.start, item.range.end
            while waited < len(parts) and parts[waited][0] < end:
                parts[waited][1].result()
                waited += 1
            view = fetch.view[start - segment.start : end - segment.start] if end > start else memoryview(b"")
            self.consumer.consume(item, view)
            del view

    def _release(self, fetch: _Fetch) -> None:
        if fetch.segment.direct:
            self.direct_ahead -= fetch.segment.size
        if fetch.view is not None:
            self.inflight -= fetch.segment.size
        fetch.view = None
        fetch.parts = []
        if fetch.in_ring:
            # Consumption follows admission order, so this is the ring's oldest allocation.
            self.in_ring.popleft()
            self.ring.free_oldest()


def run_load(segments: Sequence[Segment], consumer: ItemConsumer, settings: LoadSettings, *,
             thread_name_prefix: str) -> LoadStats:
    """Fetch ``segments`` and hand their items to ``consumer`` in order (see the module docstring).

    Parameters
    ----------
    segments : list of Segment
        From :func:`~s3io.dcp._load_plan.plan_segments`.
    consumer : ItemConsumer
    settings : LoadSettings
    thread_name_prefix : str
        Names the fetch threads (they end with the call).

    Returns
    -------
    LoadStats

    Raises
    ------
    Exception
        The first error of a GET or of the consumer; the GETs still queued are
        cancelled and the running ones waited for.
    """
    if not segments:
        return LoadStats()
    pool = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix=thread_name_prefix)
    run = _Run(segments, consumer, settings, pool)
    try:
        return run.run()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        run.close()


def load_files(files: Sequence[LoadFile], consumer: ItemConsumer, settings: LoadSettings, *,
               thread_name_prefix: str) -> LoadStats:
    """Plan and run the load of ``files``: the entry point for a consumer.

    Each file's items need ``range`` (an ``ItemRange``) and ``direct`` (bool);
    see ``_load_plan``.  ``consumer`` gets every item once, file by file, by
    offset, on the calling thread.
    """
    return run_load(plan_segments(files, settings), consumer, settings, thread_name_prefix=thread_name_prefix)
