"""Turn one DCP item saved by ``torch.save`` into a tensor without copying its payload.

torch's ``FileSystemWriter`` stores every tensor item as a complete
``torch.save`` archive: an uncompressed zip holding ``data.pkl`` (a small
pickle naming dtype, shape, strides and storage keys) and ``data/<key>``
records with the raw storage bytes.  ``torch.load`` on a stream copies each
storage into freshly allocated memory and then the loader copies again into
the destination tensor; it also costs ~200 microseconds per item.

:func:`load_tensor_view` reads the zip directory itself, unpickles
``data.pkl`` with torch's own ``weights_only`` unpickler (so exactly the same
objects are allowed as with ``torch.load(..., weights_only=True)``) and builds
the tensor over the fetched bytes, leaving one copy: into the destination.
Anything unexpected (compression, zip comment, big-endian archive, a torch
release that changed the private helpers) returns ``None`` and the caller
falls back to ``torch.load``.
"""
from __future__ import annotations

import io
import logging
import struct
import sys
from typing import Dict, Optional, Tuple

import torch

log = logging.getLogger(__name__)

_EOCD = struct.Struct("<IHHHHIIH")  # end of central directory, 22 bytes
_EOCD64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes
_EOCD64 = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_U32_MAX = 0xFFFFFFFF

try:  # private torch helpers; without them every item takes the torch.load path
    from torch import _weights_only_unpickler as _wo_unpickler
    from torch._utils import _element_size
    from torch.serialization import _maybe_decode_ascii

    _HAVE_HELPERS = True
except ImportError:  # pragma: no cover - depends on the torch release
    _HAVE_HELPERS = False


class _NotTorchSave(Exception):
    """The bytes are not a plain torch.save archive this module understands."""


def _zip64_extra(extra: memoryview, usize: int, csize: int, offset: int) -> Tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = pos + 4
        if tag == 0x0001:
            values = []
            for _ in range(size // 8):
                values.append(struct.unpack_from("<Q", extra, body)[0])
                body += 8
            values.reverse()
            if usize == _U32_MAX:
                usize = values.pop()
            if csize == _U32_MAX:
                csize = values.pop()
            if offset == _U32_MAX:
                offset = values.pop()
            return usize, csize, offset
        pos = body + size
    raise _NotTorchSave("zip64 sizes without a zip64 extra field")


class _Windows:
    """Bytes of one archive of ``length`` bytes, of which only some windows are at hand.

    ``windows`` maps an archive offset to the bytes that start there.  Reading
    anything outside them raises ``_NotTorchSave`` (the caller then falls back).
    """

    def __init__(self, length: int, windows: Dict[int, memoryview]) -> None:
        self.length = length
        self._windows = sorted(windows.items())

    def get(self, offset: int, size: int) -> memoryview:
        if offset < 0 or size < 0 or offset + size > self.length:
            raise _NotTorchSave(f"bytes {offset}-{offset + size} are outside the archive")
        for start, view in self._windows:
            if start <= offset and offset + size <= start + len(view):
                return view[offset - start : offset - start + size]
        raise _NotTorchSave(f"bytes {offset}-{offset + size} were not fetched")

    def unpack(self, fmt: struct.Struct, offset: int) -> tuple:
        return fmt.unpack(self.get(offset, fmt.size))


def _records(data: _Windows) -> Dict[str, Tuple[int, int]]:
    """Map record name (without the archive directory) to (payload start, size)."""
    n = data.length
    if n < _EOCD.size:
        raise _NotTorchSave("too short for a zip archive")
    eocd = n - _EOCD.size
    sig, _, _, _, count, cd_size, cd_offset, comment_len = data.unpack(_EOCD, eocd)
    if sig != 0x06054B50 or comment_len:
        raise _NotTorchSave("no end-of-central-directory record at the end")
    if count == 0xFFFF or cd_offset == _U32_MAX or cd_size == _U32_MAX:
        lsig, _, eocd64, _ = data.unpack(_EOCD64_LOCATOR, eocd - _EOCD64_LOCATOR.size)
        if lsig != 0x07064B50:
            raise _NotTorchSave("bad zip64 locator")
        (sig64, _, _, _, _, _, _, count, cd_size, cd_offset) = data.unpack(_EOCD64, eocd64)
        if sig64 != 0x06064B50:
            raise _NotTorchSave("bad zip64 end-of-central-directory record")
    records: Dict[str, Tuple[int, int]] = {}
    pos = cd_offset
    for _ in range(count):
        (sig, _, _, flags, method, _, _, _, csize, usize, name_len, extra_len, comment_len, _, _, _, offset) = (
            data.unpack(_CENTRAL, pos)
        )
        if sig != 0x02014B50:
            raise _NotTorchSave("bad central directory entry")
        name = bytes(data.get(pos + 46, name_len)).decode("utf-8")
        if _U32_MAX in (usize, csize, offset):
            extra = data.get(pos + 46 + name_len, extra_len)
            usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
        pos += 46 + name_len + extra_len + comment_len
        if method != 0 or csize != usize or flags & 0x1:
            raise _NotTorchSave(f"record {name} is compressed or encrypted")
        # Local and central extra fields differ (torch pads the local one to
        # align the payload), so the payload start comes from the local header.
        lsig, _, _, _, _, _, _, _, _, lname_len, lextra_len = data.unpack(_LOCAL, offset)
        if lsig != 0x04034B50:
            raise _NotTorchSave("bad local header")
        start = offset + _LOCAL.size + lname_len + lextra_len
        if start + usize > n:
            raise _NotTorchSave(f"record {name} runs past the end")
        # torch names records "<archive>/<name>"; the archive directory varies.
        short = name.split("/", 1)[1] if "/" in name else name
        records[short] = (start, usize)
    return records


def _unpickle(data: _Windows, records: Dict[str, Tuple[int, int]], make_storage):
    """Unpickle ``data.pkl``; ``make_storage(dtype, nbytes, start)`` builds each storage."""
    if "data.pkl" not in records:
        raise _NotTorchSave("no data.pkl record")
    order = records.get("byteorder")
    if order is not None and bytes(data.get(*order)) != b"little":
        raise _NotTorchSave("big-endian archive")
    storages: Dict[str, torch.storage.TypedStorage] = {}

    def persistent_load(saved_id):
        if not isinstance(saved_id, tuple) or len(saved_id) != 5:
            raise _NotTorchSave(f"unexpected persistent id {saved_id!r}")
        typename, storage_type, key, _location, numel = saved_id
        if _maybe_decode_ascii(typename) != "storage":
            raise _NotTorchSave(f"unexpected persistent id {saved_id!r}")
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        key = _maybe_decode_ascii(key)
        if key in storages:
            return storages[key]
        nbytes = numel * _element_size(dtype)
        record = records.get(f"data/{key}")
        if record is None or record[1] != nbytes:
            raise _NotTorchSave(f"storage record data/{key} missing or of the wrong size")
        typed = torch.storage.TypedStorage(wrap_storage=make_storage(nbytes, record[0]), dtype=dtype, _internal=True)
        storages[key] = typed
        return typed

    unpickler = _wo_unpickler.Unpickler(io.BytesIO(data.get(*records["data.pkl"])), encoding="utf-8")
    unpickler.persistent_load = persistent_load
    result = unpickler.load()
    if type(result) is not torch.Tensor:
        raise _NotTorchSave(f"archive holds a {type(result).__name__}, not a tensor")
    return result


class PayloadLayout:
    """Where a contiguous tensor's bytes sit inside a ``torch.save`` archive.

    Attributes
    ----------
    offset : int
        Start of the payload, relative to the archive.
    nbytes : int
    dtype : torch.dtype
    shape : torch.Size
    """

    __slots__ = ("offset", "nbytes", "dtype", "shape")

    def __init__(self, offset: int, nbytes: int, dtype: torch.dtype, shape: torch.Size) -> None:
        self.offset, self.nbytes, self.dtype, self.shape = offset, nbytes, dtype, shape

    def __repr__(self) -> str:
        return f"PayloadLayout(offset={self.offset}, nbytes={self.nbytes}, dtype={self.dtype}, shape={tuple(self.shape)})"


def probe_layout(length: int, head: memoryview, tail: memoryview) -> Optional[PayloadLayout]:
    """Find the payload of a one-tensor ``torch.save`` archive from its first and last bytes.

    Parameters
    ----------
    length : int
        Size of the whole archive.
    head, tail : memoryview
        Its first ``len(head)`` and last ``len(tail)`` bytes (``data.pkl``
        and the local headers are near the start, the zip directory at the end).

    Returns
    -------
    PayloadLayout or None
        None unless the archive holds exactly one plain tensor that is
        contiguous and covers its whole storage, i.e. the payload bytes are
        exactly the tensor's bytes in order.
    """
    if not _HAVE_HELPERS or sys.byteorder != "little":
        return None
    try:
        data = _Windows(length, {0: head, length - len(tail): tail})
        records = _records(data)
        starts = []

        def meta_storage(nbytes, start):
            starts.append(start)
            return torch.UntypedStorage(nbytes, device="meta")

        tensor = _unpickle(data, records, meta_storage)
    except _NotTorchSave as exc:
        log.debug("no direct layout (%s)", exc)
        return None
    except Exception:
        log.debug("probing a torch.save layout failed", exc_info=True)
        return None
    nbytes = tensor.numel() * tensor.element_size()
    if (
        len(starts) != 1
        or tensor.storage_offset() != 0
        or not tensor.is_contiguous()
        or tensor.untyped_storage().nbytes() != nbytes
        or tensor.dtype.is_complex
        or tensor.is_conj()
        or tensor.is_neg()
    ):
        return None
    return PayloadLayout(starts[0], nbytes, tensor.dtype, tensor.shape)


def load_tensor_view(view: memoryview) -> Optional[torch.Tensor]:
    """Rebuild the tensor that ``torch.save`` wrote into ``view``, sharing its memory.

    Parameters
    ----------
    view : memoryview
        A writable, 1-D unsigned-byte view of one whole item.  The returned
        tensor keeps the underlying buffer alive; writing to it writes there.

    Returns
    -------
    torch.Tensor or None
        The tensor (CPU), or None when the bytes are not a plain
        little-endian ``torch.save`` archive of one tensor (use ``torch.load``).
    """
    if not _HAVE_HELPERS or sys.byteorder != "little":
        return None

    def view_storage(nbytes, start):
        if not nbytes:
            return torch.UntypedStorage(0)
        return torch.frombuffer(view, dtype=torch.uint8, count=nbytes, offset=start).untyped_storage()

    try:
        data = _Windows(len(view), {0: view})
        return _unpickle(data, _records(data), view_storage)
    except _NotTorchSave as exc:
        log.debug("item is not a plain torch.save archive (%s); using torch.load", exc)
        return None
    except Exception:
        # Unknown layout or a private torch API that changed: torch.load will
        # either handle it or raise the error a user of torch would see.
        log.debug("fast torch.save parse failed; using torch.load", exc_info=True)
        return None
