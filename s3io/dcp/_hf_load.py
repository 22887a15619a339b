"""Consuming a parallel load of safetensors files into torch's ``LoadPlanner``.

Each ``ReadItem`` reads a block of one stored tensor (``storage_offsets``,
``lengths``): all of it, or a DTensor's shard.  Its bytes in the file are
found from the stored shape (:func:`read_pieces`):

- a block whose later dimensions are whole (a shard along dim 0, or the
  whole tensor) is one contiguous byte range;
- a block cut in later dimensions (a shard along dim 1) is one range per
  run of contiguous bytes when the gaps between runs are wider than the
  load's ``max_gap_size``, else the one range from its first byte to its
  last (the gaps would be fetched anyway).

Pieces of one file that overlap (two requests reading the same bytes) share
an item.  A buffered piece becomes a strided tensor over the fetched bytes
and is copied into its destination (``copy_tensor``: the core's copy, or
``Tensor.copy_`` to convert the dtype, as torch's ``HuggingFaceStorageReader``
does).  A single-piece item of at least ``DIRECT_MIN_BYTES`` whose
destination is a plain contiguous CPU tensor of the stored dtype and of the
block's shape is fetched straight into the destination's memory.
"""
from __future__ import annotations

import itertools
import math
from operator import attrgetter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .._core import ItemRange
from ._hf_layout import SafetensorsStorageInfo
from ._load_schedule import ReadItemBytes
from ._load_torch import copy_tensor, is_plain, tensor_bytes
from ._safetensors_settings import DIRECT_MIN_BYTES

__all__ = ["HFConsumer", "HFItem", "Piece", "file_items", "read_pieces"]


class _Request:
    """One ``ReadItem``, its destination once resolved, and how many of its pieces are still to come."""

    __slots__ = ("request", "info", "target", "remaining")

    def __init__(self, request: Any, info: SafetensorsStorageInfo) -> None:
        self.request = request
        self.info = info
        self.target: Optional[torch.Tensor] = None
        self.remaining = 0


class Piece:
    """Bytes ``[start, end)`` of a file that fill ``target[index]`` of one request.

    Over those bytes, the source is ``as_strided(shape, strides)`` of the stored dtype.
    """

    __slots__ = ("owner", "index", "start", "end", "shape", "strides")

    def __init__(self, owner: _Request, index: Tuple[int, ...], start: int, end: int,
                 shape: Tuple[int, ...], strides: Tuple[int, ...]) -> None:
        self.owner = owner
        self.index = index
        self.start = start
        self.end = end
        self.shape = shape
        self.strides = strides


def _strides(shape: Sequence[int]) -> Tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def read_pieces(request: Any, info: SafetensorsStorageInfo, max_gap_size: int) -> List[Piece]:
    """The byte ranges of ``info``'s file that ``request`` needs (see the module docstring)."""
    owner = _Request(request, info)
    shape = tuple(info.shape)
    offsets = tuple(request.storage_offsets)
    lengths = tuple(request.lengths)
    itemsize = info.dtype.itemsize
    strides = _strides(shape)
    if math.prod(lengths) == 0:
        pieces = [Piece(owner, (), info.offset, info.offset, lengths, strides)]
    else:
        # Dimensions after ``cut`` are whole: a block with the outer indices fixed is contiguous.
        cut = 0
        for dim in range(len(shape) - 1, -1, -1):
            if offsets[dim] != 0 or lengths[dim] != shape[dim]:
                cut = dim
                break
        first = sum(o * s for o, s in zip(offsets, strides))
        last = sum((o + n - 1) * s for o, n, s in zip(offsets, lengths, strides))
        run = lengths[cut] * strides[cut] if shape else 1
        gap = (strides[cut - 1] - run) * itemsize if cut else 0
        if cut == 0 or gap <= max_gap_size:
            start = info.offset + first * itemsize
            pieces = [Piece(owner, (), start, info.offset + (last + 1) * itemsize, lengths, strides)]
        else:
            pieces = []
            for index in itertools.product(*(range(n) for n in lengths[:cut])):
                element = sum((o + i) * s for o, i, s in zip(offsets, index, strides)) + offsets[cut] * strides[cut]
                start = info.offset + element * itemsize
                pieces.append(Piece(owner, index, start, start + run * itemsize, lengths[cut:], strides[cut:]))
    owner.remaining = len(pieces)
    return pieces


class HFItem:
    """Bytes of one file that one or more pieces read.

    Attributes
    ----------
    range : ItemRange
    pieces : list of Piece
    direct : bool
        Fetched straight into the destination of its one piece.
    """

    __slots__ = ("range", "pieces", "direct")

    def __init__(self, start: int, end: int, pieces: List[Piece]) -> None:
        self.range = ItemRange(start, end)
        self.pieces = pieces
        self.direct = False


def file_items(pieces: List[Piece]) -> List[HFItem]:
    """The items of one file's pieces: overlapping pieces share one (the load's items must not overlap)."""
    items: List[HFItem] = []
    current: Optional[HFItem] = None
    for piece in sorted(pieces, key=attrgetter("start", "end")):
        if current is not None and piece.start < current.range.end and piece.end > piece.start:
            current.pieces.append(piece)
            if piece.end > current.range.end:
                current.range = ItemRange(current.range.start, piece.end)
            continue
        current = HFItem(piece.start, piece.end, [piece])
        items.append(current)
    return items


class HFConsumer:
    """Copies pieces into their destinations and commits each request once all its pieces are in."""

    def __init__(self, planner) -> None:
        self._planner = planner

    def _target(self, owner: _Request) -> torch.Tensor:
        if owner.target is None:
            target = self._planner.resolve_tensor(owner.request).detach()
            if tuple(target.size()) != tuple(owner.request.lengths):
                raise AssertionError(
                    f"req {owner.request.storage_index} mismatch sizes {target.size()} vs {torch.Size(owner.request.lengths)}"
                )
            owner.target = target
        return owner.target

    def _done(self, owner: _Request) -> None:
        owner.remaining -= 1
        if owner.remaining == 0:
            target, owner.target = owner.target, None
            self._planner.commit_tensor(owner.request, target)

    def mark_direct(self, item: HFItem) -> None:
        """Calling thread, before the load: may this item be fetched straight into its destination?"""
        if len(item.pieces) != 1 or item.range.end - item.range.start < DIRECT_MIN_BYTES:
            return
        piece = item.pieces[0]
        owner = piece.owner
        target = self._target(owner)
        item.direct = (
            is_plain(target)
            and target.dtype == owner.info.dtype
            and target.numel() * target.element_size() == piece.end - piece.start
        )

    def locate_direct(self, item: HFItem, read: ReadItemBytes) -> Tuple[int, memoryview]:
        """Fetch thread: the destination's memory takes all of the item's bytes."""
        return 0, tensor_bytes(item.pieces[0].owner.target)  # the owner keeps the tensor alive

    def commit_direct(self, item: HFItem) -> None:
        """The destination is filled: commit it."""
        self._done(item.pieces[0].owner)

    def consume(self, item: HFItem, view: memoryview) -> None:
        """Copy each piece's block from the fetched bytes into its destination."""
        start = item.range.start
        for piece in item.pieces:
            owner = piece.owner
            dtype = owner.info.dtype
            if piece.end > piece.start:
                raw = torch.frombuffer(view[piece.start - start : piece.end - start], dtype=dtype)
                source = raw.as_strided(piece.shape, piece.strides)
            else:
                source = torch.empty(piece.shape, dtype=dtype)
            target = self._target(owner)
            copy_tensor(target[piece.index] if piece.index else target, source)
            del source
            self._done(owner)


def group_pieces(plan_items: Sequence[Any], storage_data: Dict[Any, SafetensorsStorageInfo],
                 max_gap_size: int) -> Dict[str, List[HFItem]]:
    """The items of a load plan, by file (relative path)."""
    by_file: Dict[str, List[Piece]] = {}
    for request in plan_items:
        info = storage_data[request.storage_index]
        by_file.setdefault(info.relative_path, []).extend(read_pieces(request, info, max_gap_size))
    return {path: file_items(pieces) for path, pieces in by_file.items()}
