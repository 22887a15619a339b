"""The layout of a Hugging Face checkpoint that torch's HF storage reads and writes.

- Data files ``model-00001-of-00004.safetensors`` (file indices from 1), or
  ``shard-00002-model-00001-of-00004.safetensors`` when every rank saves its
  own shards (``save_distributed``; the shard index is the rank + 1).
- ``model.safetensors.index.json``: ``{"metadata": {"total_size": N},
  "weight_map": {fqn: file name}}``.
- Each file's ``__metadata__`` holds ``DCP_SHARDING_INFO``, a JSON map of
  fqn to ``{"saved_offsets": [...]}`` (where the stored chunk starts in the
  whole tensor), ``DCP_VERSION`` and ``format``.  A file without it holds
  whole tensors.

These are torch 2.13's names (``torch.distributed.checkpoint._hf_utils``),
written out here so that s3io does not import a private torch module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..safetensors._files import INDEX_NAME, SUFFIX
from ..safetensors._format import SafetensorsError, SafetensorsHeader

__all__ = [
    "INDEX_NAME",
    "SafetensorsStorageInfo",
    "data_file_name",
    "index_json",
    "saved_offsets",
    "sharding_metadata",
]

SHARDING_INFO_KEY = "DCP_SHARDING_INFO"
SAVED_OFFSETS_KEY = "saved_offsets"
VERSION_KEY = "DCP_VERSION"
VERSION = "1.0"
FORMAT_KEY = "format"
FORMAT = "pt"


@dataclass(frozen=True)
class SafetensorsStorageInfo:
    """Where one stored tensor (or chunk) lies: a DCP ``storage_data`` value.

    Attributes
    ----------
    relative_path : str
        The file, relative to the checkpoint directory.
    offset, length : int
        Its bytes in the file.
    shape : torch.Size
        The stored shape.
    dtype : torch.dtype
        The stored dtype.
    """

    relative_path: str
    offset: int
    length: int
    shape: torch.Size
    dtype: torch.dtype


def data_file_name(index: int, highest_index: int, shard_index: Optional[int] = None) -> str:
    """``model-00001-of-00004.safetensors``, or ``shard-00002-model-...`` for one rank's shards."""
    name = f"model-{index:05d}-of-{highest_index:05d}{SUFFIX}"
    return name if shard_index is None else f"shard-{shard_index:05d}-{name}"


def sharding_metadata(offsets: Iterable[Tuple[str, Sequence[int]]]) -> Dict[str, str]:
    """A data file's ``__metadata__``: each tensor's saved offsets, as torch's writer stores them."""
    info = {fqn: {SAVED_OFFSETS_KEY: [int(n) for n in offset]} for fqn, offset in offsets}
    return {SHARDING_INFO_KEY: json.dumps(info), VERSION_KEY: VERSION, FORMAT_KEY: FORMAT}


def saved_offsets(header: SafetensorsHeader) -> Dict[str, List[int]]:
    """Where each tensor of a file starts in its whole tensor: zeros unless ``DCP_SHARDING_INFO`` says otherwise.

    Raises
    ------
    SafetensorsError
        ``DCP_SHARDING_INFO`` is not JSON, or has no offsets of the right rank for a tensor.
    """
    text = (header.metadata or {}).get(SHARDING_INFO_KEY)
    if text is None:
        return {name: [0] * len(info.shape) for name, info in header.tensors.items()}
    try:
        sharding = json.loads(text)
    except ValueError as exc:
        raise SafetensorsError(f"{header.uri}: {SHARDING_INFO_KEY} is not JSON: {exc}") from None
    result = {}
    for name, info in header.tensors.items():
        entry = sharding.get(name) if isinstance(sharding, dict) else None
        offsets = entry.get(SAVED_OFFSETS_KEY) if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == len(info.shape)
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in offsets)):
            raise SafetensorsError(
                f"{header.uri}: tensor {name!r}: {SHARDING_INFO_KEY} has no {SAVED_OFFSETS_KEY} for its"
                f" {len(info.shape)} dimensions (found {offsets!r})"
            )
        result[name] = offsets
    return result


def index_json(weight_map: Dict[str, str], total_size: int) -> bytes:
    """The bytes of ``model.safetensors.index.json``, as torch's writer formats it."""
    document = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    return json.dumps(document, indent=2).encode("utf-8")
