"""Consuming a parallel load into torch's ``LoadPlanner``: deserialize, copy, commit.

:func:`stored_items_by_file` groups a load plan's ``ReadItem`` s by file and
stored item (several ``ReadItem`` s may read one stored item, e.g. when
resharding).  ``S3StorageReader`` computes it once per plan and shares it:
its ranges go to ``DCPOptimizedConstructor`` and its items to
:func:`load_into_planner`, which runs ``_load_plan`` and ``_load_schedule``
with a :class:`TorchConsumer`:

- a buffered item is rebuilt as a tensor over the fetched bytes (see
  ``_torch_save``), copied into its destination by the core's ``copy_into``
  (``torch.Tensor.copy_`` when dtype, shape or layout differ) and committed;
  byte items go to ``planner.load_bytes``;
- an item of at least :data:`DIRECT_MIN_BYTES` whose destination is a plain
  contiguous CPU tensor of the saved dtype and shape is fetched straight into
  the destination's memory: no buffer, no copy.
"""
from __future__ import annotations

import ctypes
import io
from operator import attrgetter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .._core import ItemRange, ItemViewBuffer, copy_into
from ._load_plan import LoadFile, LoadSettings
from ._load_schedule import LoadStats, ReadItemBytes, load_files
from ._torch_save import load_tensor_view, probe_layout

__all__ = [
    "DIRECT_MIN_BYTES",
    "TorchConsumer",
    "TorchItem",
    "copy_tensor",
    "is_plain",
    "load_into_planner",
    "stored_items_by_file",
    "tensor_bytes",
]

# Tensor items at least this large are fetched straight into their destination
# when it matches.  Finding the payload takes two extra GETs (first and last
# 4 KiB, ~2.6 ms of client CPU); the copy it saves runs at ~5 GB/s, so it pays
# off from ~13 MiB (measured on the 2-core bench machine).
DIRECT_MIN_BYTES = 16 * 1024 * 1024
_PROBE_HEAD = 4096  # data.pkl and the local headers before the payload
_PROBE_TAIL = 4096  # the zip directory
THREAD_NAME_PREFIX = "s3io-dcp-load"  # the fetch threads (and the probes of direct items)
_ZIP_MAGIC = b"PK\x03\x04"
_range_start = attrgetter("range.start")


class TorchItem:
    """One stored item of a load plan: a byte range of a file and the ``ReadItem`` s that read it.

    Attributes
    ----------
    range : ItemRange
        Its bytes in the file.
    info : torch's ``_StorageInfo``
    requests : list of ReadItem
    direct : bool
        To be fetched straight into its destination (set by :meth:`TorchConsumer.mark_direct`).
    target : torch.Tensor or None
        The destination of a single-request item, once resolved (resolved only once).
    """

    # A plain class with slots: a plan of 10k items builds 10k of these.
    __slots__ = ("range", "info", "requests", "direct", "target")

    def __init__(self, range: ItemRange, info: Any, requests: Optional[List[Any]] = None) -> None:
        self.range = range
        self.info = info
        self.requests = [] if requests is None else requests
        self.direct = False
        self.target: Optional[torch.Tensor] = None

    def __repr__(self) -> str:
        return f"TorchItem({self.range!r}, {len(self.requests)} requests, direct={self.direct})"


def stored_items_by_file(plan_items: Sequence[Any], storage_data: Dict[Any, Any]) -> Dict[str, List[TorchItem]]:
    """Group ``plan_items`` by file (relative path) and stored item; each file's items by offset."""
    by_file: Dict[str, Dict[Tuple[int, int], TorchItem]] = {}
    for request in plan_items:
        info = storage_data[request.storage_index]
        items = by_file.setdefault(info.relative_path, {})
        key = (info.offset, info.length)  # not the offset alone: an empty item may share it
        item = items.get(key)
        if item is None:
            items[key] = TorchItem(ItemRange(info.offset, info.offset + info.length), info, [request])
        else:
            item.requests.append(request)
    return {path: sorted(items.values(), key=_range_start) for path, items in by_file.items()}


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory; the tensor must outlive the view.

    Shared with the other consumers of the load pipeline (``s3io.safetensors``,
    the Hugging Face reader): a destination handed to ``locate_direct``.
    """
    nbytes = tensor.numel() * tensor.element_size()
    return memoryview((ctypes.c_char * nbytes).from_address(tensor.data_ptr())).cast("B")


def is_plain(tensor: torch.Tensor) -> bool:
    """A contiguous, real-valued CPU tensor whose bytes are exactly its values."""
    return (
        type(tensor) is torch.Tensor
        and tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and not tensor.dtype.is_complex
        and not tensor.is_conj()
        and not tensor.is_neg()
    )


def copy_tensor(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target.copy_(source)``, as one core ``copy_into`` when both are plain tensors of one dtype and shape.

    torch's CPU copy splits large copies over its intra-op threads; on a busy
    machine (the fetch threads, the server) those threads wait on each other
    and a 1 GiB load spends seconds in ``copy_``.  The core's copy is one
    memmove that lets go of the GIL from 1 MiB and needs no other thread.
    """
    if target.dtype == source.dtype and target.shape == source.shape and is_plain(target) and is_plain(source):
        if target.numel():
            copy_into(tensor_bytes(target), tensor_bytes(source))
        return
    target.copy_(source)


def _item_file(view: memoryview):
    """A file-like over an item's bytes: the core's ``ItemViewBuffer`` (no copy).

    A legacy (pre-zip) ``torch.save`` archive gets an ``io.BytesIO`` copy:
    torch unpickles it straight from the file, which needs ``readline``.
    """
    if bytes(view[:4]) != _ZIP_MAGIC:
        return io.BytesIO(view)
    buffer = ItemViewBuffer()
    buffer.append(view)
    return buffer


class TorchConsumer:
    """Deserializes items and commits them to a torch ``LoadPlanner`` (an ``ItemConsumer``).

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

    def mark_direct(self, item: TorchItem) -> None:
        """Calling thread, before the load: may this item's payload go straight to its destination?

        Yes when it has at least :data:`DIRECT_MIN_BYTES` and one request
        reads the whole stored tensor (no narrowing, no transforms) into a
        plain tensor.  The destination is resolved here, once; the probe later
        checks that the saved dtype and shape match it exactly.
        """
        item.target = None
        item.direct = False
        if item.range.end - item.range.start < DIRECT_MIN_BYTES:
            return
        if len(item.requests) != 1 or getattr(item.info, "transform_descriptors", None):
            return
        request = item.requests[0]
        if request.type == self._byte_io or any(request.storage_offsets):
            return
        target = self._resolve(item, request)
        item.direct = (
            is_plain(target)
            and tuple(request.lengths) == tuple(target.shape)
            and 0 < target.numel() * target.element_size() <= item.range.end - item.range.start
        )

    def locate_direct(self, item: TorchItem, read: ReadItemBytes) -> Optional[Tuple[int, memoryview]]:
        """Fetch thread: the payload's offset and the destination's memory, if the saved tensor is exactly it.

        Reads the item's first and last bytes for the ``torch.save`` layout
        (:func:`~s3io.dcp._torch_save.probe_layout`); no planner calls.
        """
        length = item.range.end - item.range.start
        head = read(0, min(_PROBE_HEAD, length))
        tail_size = min(_PROBE_TAIL, length)
        tail = read(length - tail_size, tail_size)
        layout = probe_layout(length, head, tail)
        target = item.target
        if layout is None or not layout.nbytes or target.dtype != layout.dtype or target.shape != layout.shape:
            return None
        if target.numel() * target.element_size() != layout.nbytes:
            return None
        return layout.offset, tensor_bytes(target)  # item.target keeps the tensor alive

    def commit_direct(self, item: TorchItem) -> None:
        """The payload is in place: commit the destination."""
        target, item.target = item.target, None
        self._planner.commit_tensor(item.requests[0], target)

    # -- buffered items -------------------------------------------------------

    def _resolve(self, item: TorchItem, request) -> torch.Tensor:
        if item.target is None or len(item.requests) != 1:
            target = self._planner.resolve_tensor(request).detach()
            if len(item.requests) == 1:
                item.target = target
            return target
        return item.target

    def _transformed(self, item: TorchItem, request, view: memoryview):
        """The item's bytes through the stream transforms it was saved with (e.g. compression)."""
        descriptors = item.info.transform_descriptors
        if self._transforms is None:
            raise ValueError(f"{item.info.relative_path}: stream transforms {descriptors} need torch >= 2.6")
        raw = ItemViewBuffer()
        raw.append(view)
        return self._transforms.transform_load_stream(request, descriptors, raw)

    def _tensor(self, item: TorchItem, request, view: memoryview) -> torch.Tensor:
        """The saved tensor: over the fetched bytes when possible, else from ``torch.load``."""
        if not getattr(item.info, "transform_descriptors", None):
            tensor = load_tensor_view(view)
            if tensor is not None:
                return tensor
            stream = _item_file(view)
        else:
            stream = self._transformed(item, request, view)
            if not stream.seekable():
                stream = io.BytesIO(stream.read(-1))
        return torch.load(stream, map_location="cpu", weights_only=True)

    def _bytes(self, item: TorchItem, request, view: memoryview) -> io.BytesIO:
        # load_bytes gets an io.BytesIO, as from torch's reader: the planner API
        # promises one (getvalue, readline) and may keep it after the call,
        # while ``view`` is reused.  Byte items are small: the copy is cheap.
        if not getattr(item.info, "transform_descriptors", None):
            return io.BytesIO(view)
        return io.BytesIO(self._transformed(item, request, view).read(-1))

    def consume(self, item: TorchItem, view: memoryview) -> None:
        """Deserialize one buffered item and commit it for every request that reads it."""
        tensor = None
        for request in item.requests:
            if request.type == self._byte_io:
                self._planner.load_bytes(request, self._bytes(item, request, view))
                continue
            if tensor is None:
                tensor = self._tensor(item, request, view)
            source = self._narrow(tensor, request.storage_offsets, request.lengths)
            target = self._resolve(item, request)
            if target.size() != source.size():
                raise AssertionError(f"req {request.storage_index} mismatch sizes {target.size()} vs {source.size()}")
            copy_tensor(target, source)
            item.target = None
            self._planner.commit_tensor(request, target)


def load_into_planner(files: Sequence[LoadFile], planner, transforms, settings: LoadSettings) -> LoadStats:
    """Load ``files`` (their items from :func:`stored_items_by_file`) into ``planner``.

    Parameters
    ----------
    files : list of LoadFile
        A pinned handle per file and its :class:`TorchItem` s.
    planner : LoadPlanner
    transforms : torch's ``_StorageReaderTransforms`` or None
    settings : LoadSettings

    Returns
    -------
    LoadStats
    """
    consumer = TorchConsumer(planner, transforms)
    for file in files:
        for item in file.items:
            consumer.mark_direct(item)
    return load_files(files, consumer, settings, thread_name_prefix=THREAD_NAME_PREFIX)
