"""The parallel, bounded-memory load behind ``S3StorageReader.read_data``.

torch's ``FileSystemReader`` (and s3torchconnector) read one file and one item
at a time and deserialize on the same thread, so the network idles while
``torch.load`` runs and vice versa.  Here:

1. All of this rank's read items are grouped per stored item (several
   ``ReadItem`` s may read one stored item) and per file, sorted by offset.
2. Large items (>= ``DIRECT_MIN_BYTES``) are probed: their first and last
   4 KiB give the ``torch.save`` layout.  When the saved tensor is exactly the
   destination (same dtype and shape, contiguous, CPU), its payload is later
   fetched straight into the destination tensor: no buffer, no copy.
3. The other items of each file are coalesced with the core's
   ``coalesce_ranges`` (``max_gap_size`` from the reader constructor), cut at
   item boundaries into *segments* of at most a quarter of the in-flight cap
   (one buffer each), and segments into *parts* of at most ``part_size``
   bytes (one ranged GET each, written by ``fetch_into`` straight into the
   buffer).
4. Segments are admitted in file/offset order while their buffers fit in one
   ring of ``max_inflight_bytes`` (a segment larger than the ring gets a
   buffer of its own).  Their parts run on a pool of ``max_concurrency``
   threads, across all files at once.
5. The calling thread waits only for the parts under the next item,
   deserializes it (a zero-copy view for ``torch.save`` items, see
   ``_torch_save``), copies it into the destination (``resolve_tensor`` /
   ``commit_tensor``; ``load_bytes`` for byte items) and frees the segment's
   ring space as soon as its last item is committed.

Every GET of one file is pinned to the ETag of the first response (If-Match),
and every response's ETag is compared, so a file overwritten during the load
raises instead of mixing two versions.
"""
from __future__ import annotations

import ctypes
import io
import logging
import mmap
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .._core import coalesce_ranges
from ._torch_save import load_tensor_view

log = logging.getLogger(__name__)

DEFAULT_MAX_INFLIGHT_BYTES = 128 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 8
# Items at least this large are probed (first and last 4 KiB) to find their
# payload, which is then fetched straight into the destination tensor.  The
# probe is two extra GETs (~2.6 ms of client CPU); the copy it saves runs at
# ~5 GB/s, so it pays off from ~13 MiB (measured on the 2-core bench machine).
DIRECT_MIN_BYTES = 16 * 1024 * 1024
_PROBE_HEAD = 4096  # data.pkl and the local headers before the payload
_PROBE_TAIL = 4096  # the zip directory
# Buffers at least this large come from an anonymous mmap: the kernel zero-fills
# pages as they are written (no up-front memset) and unmapping returns the memory
# to the OS at once.
_MMAP_THRESHOLD = 1024 * 1024

FetchInto = Callable[..., Any]  # fetch_into(bucket, key, start, dest, *, etag=None) -> etag


@dataclass
class StoredItem:
    """One stored item (a byte range of a file) and the ReadItems that need it."""

    start: int
    end: int
    info: Any  # torch _StorageInfo
    requests: List[Any] = field(default_factory=list)
    target: Any = None  # destination tensor, once resolved (resolve only once)
    direct_candidate: bool = False  # large, and its destination could take the payload as is
    direct: Optional[memoryview] = None  # destination memory, once the probe accepted it


@dataclass
class _Part:
    start: int  # object offset
    end: int
    future: Optional[Future] = None


@dataclass
class _Segment:
    bucket: str
    key: str
    start: int
    end: int
    items: List[StoredItem]
    view: Optional[memoryview] = None
    parts: List[_Part] = field(default_factory=list)
    direct: bool = False  # probed, then fetched into the destination tensor (no ring space)
    probe: Optional[Future] = None  # True once the payload parts are submitted, False if declined

    @property
    def size(self) -> int:
        return self.end - self.start


def _allocate(size: int):
    if size >= _MMAP_THRESHOLD:
        return mmap.mmap(-1, size)
    return bytearray(size)


class _Ring:
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
        self._live.popleft()
        if not self._live:
            self._head = 0

    def close(self) -> None:
        self._live.clear()
        self._head = 0
        self._buffer = None


class _ObjectChanged(Exception):
    pass


class LoadPipeline:
    """Fetch and commit one rank's load plan (see the module docstring).

    Parameters
    ----------
    fetch_into : callable
        ``fetch_into(bucket, key, start, dest, *, etag=None) -> str`` fills all
        of the writable ``dest`` with bytes ``[start, start + len(dest))`` of
        the object (If-Match ``etag`` when given) and returns the ETag.
    max_gap_size : int or float
        Passed to ``coalesce_ranges``.
    max_inflight_bytes : int
        Cap on fetched-but-not-consumed bytes.
    part_size : int
        Largest single ranged GET.
    max_concurrency : int
        Number of fetch threads.
    object_changed : callable, optional
        ``object_changed(bucket, key, expected, got)`` returns the exception to
        raise when two responses for one file carry different ETags.
    """

    def __init__(
        self,
        fetch_into: FetchInto,
        *,
        max_gap_size=32 * 1024 * 1024,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        object_changed: Optional[Callable[[str, str, str, str], BaseException]] = None,
    ) -> None:
        if max_inflight_bytes < 1:
            raise ValueError(f"max_inflight_bytes must be positive, not {max_inflight_bytes!r}")
        if part_size < 1:
            raise ValueError(f"part_size must be positive, not {part_size!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be positive, not {max_concurrency!r}")
        self._fetch_into = fetch_into
        self._max_gap_size = max_gap_size
        self._max_inflight = max_inflight_bytes
        self._part_size = part_size
        self._max_concurrency = max_concurrency
        # A segment is the unit of memory release: a quarter of the cap keeps
        # several segments in flight, so freeing one lets the next start.
        self._segment_size = max(part_size, max_inflight_bytes // 4)
        self._object_changed = object_changed
        self._etags: Dict[Tuple[str, str], str] = {}
        self._etag_lock = threading.Lock()
        self.direct_items = 0  # items fetched straight into their destination (last load)
        self.peak_inflight_bytes = 0  # most ring bytes admitted at once (last load)

    # -- planning -------------------------------------------------------------

    def plan_segments(self, files: Sequence[Tuple[str, str, List[StoredItem]]]) -> List[_Segment]:
        """Coalesce and cut each file's stored items into segments, in order."""
        segments: List[_Segment] = []
        for bucket, key, items in files:
            items = sorted(items, key=lambda it: it.start)
            file_segments: List[_Segment] = []
            for it in items:
                if it.direct_candidate:
                    file_segments.append(_Segment(bucket, key, it.start, it.end, [it], direct=True))
            items = [it for it in items if not it.direct_candidate]
            nonempty = [it for it in items if it.end > it.start]
            empty = [it for it in items if it.end <= it.start]
            if empty:
                # Zero-length items (e.g. empty byte blobs) need no bytes.
                file_segments.append(_Segment(bucket, key, 0, 0, empty))
            if nonempty:
                groups = coalesce_ranges([(it.start, it.end) for it in nonempty], self._max_gap_size)
                index = 0
                for group in groups:
                    count = len(group.item_ranges)
                    current: List[StoredItem] = []
                    for stored in nonempty[index : index + count]:
                        if current and stored.end - current[0].start > self._segment_size:
                            file_segments.append(_Segment(bucket, key, current[0].start, current[-1].end, current))
                            current = []
                        current.append(stored)
                    file_segments.append(_Segment(bucket, key, current[0].start, current[-1].end, current))
                    index += count
            file_segments.sort(key=lambda seg: seg.start)
            segments.extend(file_segments)
        return segments

    def _probe_and_fetch(self, pool: ThreadPoolExecutor, segment: _Segment, accept) -> bool:
        """Worker: find the payload of a direct candidate, then queue its parts into the destination.

        Fetches the item's first and last bytes, reads the ``torch.save``
        layout (``probe_layout``) and asks ``accept(item, layout)`` for the
        destination memory.  Returns False (declined) if either fails.
        """
        from ._torch_save import probe_layout

        stored = segment.items[0]
        length = stored.end - stored.start
        head = bytearray(min(_PROBE_HEAD, length))
        tail = bytearray(min(_PROBE_TAIL, length))
        self._fetch_part(segment.bucket, segment.key, stored.start, memoryview(head))
        self._fetch_part(segment.bucket, segment.key, stored.end - len(tail), memoryview(tail))
        layout = probe_layout(length, memoryview(head), memoryview(tail))
        dest = accept(stored, layout) if layout is not None and layout.nbytes else None
        if dest is None:
            return False
        stored.direct = dest
        start = stored.start + layout.offset
        parts = []
        for offset in range(start, start + layout.nbytes, self._part_size):
            end = min(offset + self._part_size, start + layout.nbytes)
            part = _Part(offset, end)
            view = dest[offset - start : end - start]
            part.future = pool.submit(self._fetch_part, segment.bucket, segment.key, offset, view)
            parts.append(part)
        segment.parts = parts  # complete before this task's future resolves
        return True

    def _fetch_part(self, bucket: str, key: str, start: int, dest: memoryview) -> None:
        name = (bucket, key)
        etag = self._etags.get(name)
        got = self._fetch_into(bucket, key, start, dest, etag=etag or None)
        if not got:
            return
        with self._etag_lock:
            known = self._etags.setdefault(name, got)
        if known != got:
            if self._object_changed is not None:
                raise self._object_changed(bucket, key, known, got)
            raise _ObjectChanged(f"s3://{bucket}/{key} changed during the load: ETag {known} then {got}")

    def _admit(self, pool: ThreadPoolExecutor, segment: _Segment, view: memoryview) -> None:
        segment.view = view
        offset = segment.start
        while offset < segment.end:
            end = min(offset + self._part_size, segment.end)
            part = _Part(offset, end)
            dest = view[offset - segment.start : end - segment.start]
            part.future = pool.submit(self._fetch_part, segment.bucket, segment.key, offset, dest)
            segment.parts.append(part)
            offset = end

    # -- running --------------------------------------------------------------

    def run(
        self,
        segments: List[_Segment],
        consume: Callable[[StoredItem, memoryview], None],
        accept_direct: Optional[Callable[[StoredItem, Any], Optional[memoryview]]] = None,
        commit_direct: Optional[Callable[[StoredItem], None]] = None,
    ) -> None:
        """Fetch ``segments`` and call ``consume(item, view)`` for each item, in order.

        ``consume`` runs on the calling thread; ``view`` is valid only during
        the call (its memory is reused for later segments).  Direct candidates
        are probed on a worker; ``accept_direct(item, layout)`` (worker thread,
        no planner calls) returns the destination memory or None, and accepted
        items get ``commit_direct(item)`` (calling thread) instead of ``consume``.
        Declined candidates are fetched into a buffer of their own and consumed.
        """
        if not segments:
            return
        pool = ThreadPoolExecutor(max_workers=self._max_concurrency, thread_name_prefix="s3io-dcp-load")
        ring = _Ring(self._max_inflight)
        in_ring: deque = deque()  # admitted segments that hold ring memory, oldest first
        admitted = 0
        self.peak_inflight_bytes = 0
        self.direct_items = 0
        inflight = 0
        try:
            for index, segment in enumerate(segments):
                # Admit ahead, in order, while the ring has room; the segment
                # about to be consumed is always admitted.  Direct candidates
                # take no ring space: their probe is queued (it queues the parts).
                while admitted < len(segments):
                    candidate = segments[admitted]
                    if candidate.direct:
                        candidate.probe = pool.submit(self._probe_and_fetch, pool, candidate, accept_direct)
                        admitted += 1
                        continue
                    if candidate.size == 0:
                        view = memoryview(b"")
                    else:
                        view = ring.allocate(candidate.size)
                        if view is None:
                            if admitted > index:
                                break
                            # Larger than the whole ring: a buffer of its own.
                            view = memoryview(_allocate(candidate.size))
                        else:
                            in_ring.append(candidate)
                    self._admit(pool, candidate, view)
                    inflight += candidate.size
                    self.peak_inflight_bytes = max(self.peak_inflight_bytes, inflight)
                    admitted += 1
                if segment.direct:
                    stored = segment.items[0]
                    if segment.probe.result():
                        for part in segment.parts:
                            part.future.result()
                        self.direct_items += 1
                        commit_direct(stored)
                        segment.parts = []
                        continue
                    # Declined (layout or destination do not match): a buffer of its own.
                    self._admit(pool, segment, memoryview(_allocate(segment.size)))
                parts = segment.parts
                waited = 0
                for stored in segment.items:
                    # Wait only for the parts under this item.
                    while waited < len(parts) and parts[waited].start < stored.end:
                        parts[waited].future.result()
                        waited += 1
                    if stored.end > stored.start:
                        view = segment.view[stored.start - segment.start : stored.end - segment.start]
                    else:
                        view = memoryview(b"")
                    consume(stored, view)
                    del view
                for part in parts[waited:]:
                    part.future.result()
                if not segment.direct:
                    inflight -= segment.size
                segment.parts = []
                segment.view = None
                if in_ring and in_ring[0] is segment:
                    in_ring.popleft()
                    ring.free_oldest()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for segment in segments:
                segment.parts = []
                segment.view = None
            ring.close()


def _copy(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target.copy_(source)``, as one memmove when both are plain contiguous CPU tensors.

    torch's CPU copy splits large copies over its intra-op threads; on a busy
    machine (the fetch threads, the server) those threads wait on each other
    and a 1 GiB load spends seconds in copy_.  memmove through ctypes runs
    with the GIL released and needs no other thread.
    """
    if (
        target.dtype == source.dtype
        and target.device.type == "cpu"
        and source.device.type == "cpu"
        and target.shape == source.shape
        and not target.dtype.is_complex
        and target.is_contiguous()
        and source.is_contiguous()
        and type(target) is torch.Tensor
        and type(source) is torch.Tensor
    ):
        nbytes = target.numel() * target.element_size()
        if nbytes:
            ctypes.memmove(target.data_ptr(), source.data_ptr(), nbytes)
        return
    target.copy_(source)


class TorchConsumer:
    """Deserializes items and commits them to a torch ``LoadPlanner`` (calling thread only).

    Parameters
    ----------
    planner : LoadPlanner
    transforms : torch's ``_StorageReaderTransforms`` or None
    """

    def __init__(self, planner, transforms) -> None:
        from torch.distributed._shard._utils import narrow_tensor_by_index
        from torch.distributed.checkpoint.planner import LoadItemType

        self._planner = planner
        self._transforms = transforms
        self._narrow = narrow_tensor_by_index
        self._byte_io = LoadItemType.BYTE_IO

    # -- direct fetches -------------------------------------------------------

    def prepare_direct(self, stored: StoredItem) -> bool:
        """Calling thread, before the load: may this item's payload go straight to its destination?

        Yes when one request reads the whole stored tensor (no narrowing, no
        transforms) into a plain, contiguous, real-valued CPU tensor.  The
        destination is resolved here, once; the probe later checks that the
        saved dtype and shape match it exactly.
        """
        if len(stored.requests) != 1 or getattr(stored.info, "transform_descriptors", None):
            return False
        request = stored.requests[0]
        if request.type == self._byte_io or any(request.storage_offsets):
            return False
        target = self._resolve(stored, request)
        return (
            type(target) is torch.Tensor
            and target.device.type == "cpu"
            and target.is_contiguous()
            and not target.dtype.is_complex
            and not target.is_conj()
            and not target.is_neg()
            and tuple(request.lengths) == tuple(target.shape)
            and 0 < target.numel() * target.element_size() <= stored.end - stored.start
        )

    @staticmethod
    def accept_direct(stored: StoredItem, layout) -> Optional[memoryview]:
        """Worker thread: the destination's memory if the saved tensor is exactly it, else None."""
        target = stored.target
        if target.dtype != layout.dtype or target.shape != layout.shape:
            return None
        if target.numel() * target.element_size() != layout.nbytes:
            return None
        # A view of the tensor's memory; stored.target keeps the tensor alive.
        memory = (ctypes.c_char * layout.nbytes).from_address(target.data_ptr())
        return memoryview(memory).cast("B")

    def commit_direct(self, stored: StoredItem) -> None:
        """The payload is in place: commit the destination."""
        target = stored.target
        stored.direct = None
        stored.target = None
        self._planner.commit_tensor(stored.requests[0], target)

    # -- buffered items -------------------------------------------------------

    def _resolve(self, stored: StoredItem, request):
        if stored.target is None or len(stored.requests) != 1:
            target = self._planner.resolve_tensor(request).detach()
            if len(stored.requests) == 1:
                stored.target = target
            return target
        return stored.target

    def _stream(self, stored: StoredItem, request, view: memoryview):
        descriptors = getattr(stored.info, "transform_descriptors", None)
        if not descriptors:
            return io.BytesIO(view)
        if self._transforms is None:
            raise ValueError(f"{stored.info.relative_path}: stream transforms {descriptors} need torch >= 2.6")
        return self._transforms.transform_load_stream(request, descriptors, io.BytesIO(view))

    def __call__(self, stored: StoredItem, view: memoryview) -> None:
        """Deserialize one buffered item and commit it for every request that reads it."""
        tensor = None
        plain = not getattr(stored.info, "transform_descriptors", None)
        for request in stored.requests:
            if request.type == self._byte_io:
                data = io.BytesIO(view) if plain else io.BytesIO(self._stream(stored, request, view).read(-1))
                data.seek(0)
                self._planner.load_bytes(request, data)
                continue
            if tensor is None:
                if plain:
                    tensor = load_tensor_view(view)
                if tensor is None:
                    stream = self._stream(stored, request, view)
                    if not stream.seekable():
                        stream = io.BytesIO(stream.read(-1))
                    tensor = torch.load(stream, map_location="cpu", weights_only=True)
            source = self._narrow(tensor, request.storage_offsets, request.lengths)
            target = self._resolve(stored, request)
            if target.size() != source.size():
                raise AssertionError(f"req {request.storage_index} mismatch sizes {target.size()} vs {source.size()}")
            _copy(target, source)
            stored.target = None
            self._planner.commit_tensor(request, target)


def torch_consumer(planner, transforms) -> TorchConsumer:
    """The consumer that deserializes items and commits them to ``planner``."""
    return TorchConsumer(planner, transforms)


def load(
    pipeline: LoadPipeline,
    files,
    planner,
    transforms,
    *,
    direct: bool = True,
    direct_min_bytes: int = DIRECT_MIN_BYTES,
) -> None:
    """Run ``pipeline`` over ``files`` (bucket, key, stored items) into ``planner``.

    Items of at least ``direct_min_bytes`` are candidates for fetching
    straight into their destination (``direct=False``: never).
    """
    consumer = TorchConsumer(planner, transforms)
    if direct:
        for _bucket, _key, items in files:
            for stored in items:
                if stored.end - stored.start >= direct_min_bytes:
                    stored.direct_candidate = consumer.prepare_direct(stored)
    segments = pipeline.plan_segments(files)
    pipeline.run(segments, consumer, consumer.accept_direct, consumer.commit_direct)
