"""The safetensors format: parsing and checking a header, and building one.

A safetensors file is an 8-byte little-endian header length ``N``, ``N``
bytes of JSON, then the data section.  The JSON maps each tensor's name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data
section) and may hold ``"__metadata__"``, a map of strings.  Each tensor is
its raw little-endian bytes, C order, nothing else: so a tensor can be
fetched straight into the memory of an allocated ``torch.Tensor``.

Nothing here does I/O; every error names the file and, where there is one,
the tensor.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "DTYPES",
    "HEADER_LENGTH_SIZE",
    "MAX_HEADER_SIZE",
    "METADATA_KEY",
    "SafetensorsError",
    "SafetensorsHeader",
    "TensorInfo",
    "build_header",
    "dtype_name",
    "header_length",
    "parse_header",
]

HEADER_LENGTH_SIZE = 8
# safetensors refuses headers above 100 MB (``HeaderTooLarge``); so do we, before allocating one.
MAX_HEADER_SIZE = 100_000_000
METADATA_KEY = "__metadata__"
# The header is padded with spaces to a multiple of this, so that every tensor
# of the sorted data section starts at an offset its dtype can be read from.
_HEADER_ALIGNMENT = 8


def _dtypes() -> Dict[str, torch.dtype]:
    # The names and dtypes safetensors.torch reads; the float8 and unsigned
    # ones only where this torch has them.
    table = {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "I16": torch.int16,
        "I32": torch.int32,
        "I64": torch.int64,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "F64": torch.float64,
        "C64": torch.complex64,
    }
    optional = {
        "U16": "uint16",
        "U32": "uint32",
        "U64": "uint64",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2": "float8_e5m2",
        "F8_E5M2FNUZ": "float8_e5m2fnuz",
    }
    for name, attribute in optional.items():
        dtype = getattr(torch, attribute, None)
        if isinstance(dtype, torch.dtype):
            table[name] = dtype
    return table


DTYPES: Dict[str, torch.dtype] = _dtypes()
_NAMES: Dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file (or its index) is malformed; the message names the file and the tensor."""


def dtype_name(dtype: torch.dtype, where: str) -> str:
    """The safetensors name of ``dtype`` (``torch.bfloat16`` -> ``"BF16"``).

    Raises
    ------
    SafetensorsError
        safetensors has no name for ``dtype``; ``where`` says whose it is.
    """
    try:
        return _NAMES[dtype]
    except KeyError:
        known = ", ".join(str(d).replace("torch.", "") for d in _NAMES)
        raise SafetensorsError(f"{where}: dtype {dtype} cannot be stored in safetensors (it stores {known})") from None


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in its file, and what it is.

    Attributes
    ----------
    name : str
    dtype : torch.dtype
    shape : tuple of int
    start, end : int
        Its bytes in the file (header included): ``[start, end)``.
    """

    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of its data in bytes."""
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header of one safetensors file.

    Attributes
    ----------
    uri : str
        The file (``s3://bucket/key``), for messages.
    size : int
        The file's size in bytes.
    data_start : int
        Offset of the data section: 8 + the header's length.
    tensors : dict of str to TensorInfo
        By offset in the file.
    metadata : dict of str to str, or None
        The header's ``__metadata__``.
    """

    uri: str
    size: int
    data_start: int
    tensors: Dict[str, TensorInfo]
    metadata: Optional[Dict[str, str]]


def header_length(uri: str, size: int, prefix: bytes) -> int:
    """The JSON header's length from the first 8 bytes of a file of ``size`` bytes.

    Raises
    ------
    SafetensorsError
        The file is shorter than 8 bytes, or the header would run past its end
        or above :data:`MAX_HEADER_SIZE`.
    """
    if size < HEADER_LENGTH_SIZE or len(prefix) < HEADER_LENGTH_SIZE:
        raise SafetensorsError(
            f"{uri}: truncated: the file is {size} bytes, shorter than the {HEADER_LENGTH_SIZE}-byte header length"
        )
    (length,) = struct.unpack("<Q", bytes(prefix[:HEADER_LENGTH_SIZE]))
    if length > MAX_HEADER_SIZE:
        raise SafetensorsError(f"{uri}: header length {length} is above safetensors' limit of {MAX_HEADER_SIZE} bytes")
    if HEADER_LENGTH_SIZE + length > size:
        raise SafetensorsError(
            f"{uri}: header length {length} runs past the end of the file ({size} bytes): truncated or not safetensors"
        )
    return length


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice")
        result[key] = value
    return result


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(uri: str, name: str, entry: Any, data_start: int) -> TensorInfo:
    where = f"{uri}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: its entry is a {type(entry).__name__}, not an object")
    dtype_text = entry.get("dtype")
    dtype = DTYPES.get(dtype_text) if isinstance(dtype_text, str) else None
    if dtype is None:
        raise SafetensorsError(f"{where}: unknown dtype {dtype_text!r} (known: {', '.join(sorted(DTYPES))})")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        raise SafetensorsError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)):
        raise SafetensorsError(f"{where}: data_offsets {offsets!r} is not a pair of integers")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise SafetensorsError(f"{where}: data_offsets {begin}-{end} are not a byte range")
    needed = math.prod(shape) * dtype.itemsize
    if end - begin != needed:
        raise SafetensorsError(
            f"{where}: data_offsets {begin}-{end} hold {end - begin} bytes, but shape {shape} of {dtype_text} takes {needed}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def parse_header(uri: str, size: int, data: bytes) -> SafetensorsHeader:
    """Parse and check a whole header: the 8-byte length and the JSON after it.

    Parameters
    ----------
    uri : str
        The file, for messages.
    size : int
        The file's size: every tensor must end inside it.
    data : bytes-like
        The file's first ``8 + N`` bytes.

    Returns
    -------
    SafetensorsHeader

    Raises
    ------
    SafetensorsError
        Naming the file, and the tensor where one is at fault: a truncated
        file, a header length beyond the file, JSON that is not a
        safetensors header (or has a key twice), an unknown dtype, a shape
        that does not match its byte count, offsets that overlap or run past
        the end of the file, ``__metadata__`` that is not a map of strings.
    """
    length = header_length(uri, size, data)
    data_start = HEADER_LENGTH_SIZE + length
    text = bytes(data[HEADER_LENGTH_SIZE:data_start])
    try:
        parsed = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsError(f"{uri}: the header is not safetensors JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise SafetensorsError(f"{uri}: the header is a JSON {type(parsed).__name__}, not an object")
    metadata = parsed.pop(METADATA_KEY, None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise SafetensorsError(f"{uri}: {METADATA_KEY} is not a map of strings to strings")
    infos = sorted((_tensor_info(uri, name, entry, data_start) for name, entry in parsed.items()),
                   key=lambda info: (info.start, info.end))
    previous: Optional[TensorInfo] = None
    for info in infos:
        if info.end > size:
            raise SafetensorsError(
                f"{uri}: tensor {info.name!r} (bytes {info.start}-{info.end}) runs past the end of the file"
                f" ({size} bytes): truncated"
            )
        if previous is not None and info.start < previous.end:
            raise SafetensorsError(
                f"{uri}: tensors {previous.name!r} (bytes {previous.start}-{previous.end}) and {info.name!r}"
                f" (bytes {info.start}-{info.end}) overlap"
            )
        if info.end > info.start:  # empty tensors may sit anywhere
            previous = info
    return SafetensorsHeader(uri, size, data_start, {info.name: info for info in infos}, metadata)


def build_header(tensors: Iterable[Tuple[str, torch.dtype, Sequence[int]]],
                 metadata: Optional[Dict[str, str]] = None) -> Tuple[bytes, List[Tuple[str, int, int]]]:
    """The first bytes of a safetensors file holding ``tensors``, and where each one's data goes.

    Tensors are laid out as safetensors lays them out: by decreasing element
    size, then by name, after a header padded with spaces to 8 bytes, so
    every tensor is aligned for its dtype.

    Parameters
    ----------
    tensors : iterable of (name, dtype, shape)
    metadata : dict of str to str, optional
        Stored as ``__metadata__``.

    Returns
    -------
    header : bytes
        The 8-byte length and the JSON (write it first).
    layout : list of (name, start, end)
        Each tensor's bytes in the file, in the order to write them.

    Raises
    ------
    SafetensorsError
        A dtype safetensors cannot store, a name given twice, or the reserved name ``__metadata__``.
    """
    entries = []
    seen = set()
    for name, dtype, shape in tensors:
        if name == METADATA_KEY or name in seen:
            raise SafetensorsError(f"tensor name {name!r} is {'reserved' if name == METADATA_KEY else 'given twice'}")
        seen.add(name)
        entries.append((name, dtype_name(dtype, f"tensor {name!r}"), [int(n) for n in shape], dtype.itemsize))
    entries.sort(key=lambda entry: (-entry[3], entry[0]))
    header: Dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    spans = []
    for name, dtype_text, shape, itemsize in entries:
        nbytes = math.prod(shape) * itemsize
        header[name] = {"dtype": dtype_text, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        spans.append((name, offset, offset + nbytes))
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(HEADER_LENGTH_SIZE + len(text)) % _HEADER_ALIGNMENT)
    data_start = HEADER_LENGTH_SIZE + len(text)
    layout = [(name, data_start + begin, data_start + end) for name, begin, end in spans]
    return struct.pack("<Q", len(text)) + text, layout
