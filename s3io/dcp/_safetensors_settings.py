"""How a load of safetensors files uses the network and memory.

Shared by :func:`s3io.safetensors.load` / ``stream`` and
:class:`~s3io.dcp.S3HuggingFaceStorageReader`; it lives beside the load
pipeline so that ``s3io.dcp`` needs nothing from ``s3io.safetensors`` but
the format and the file lookup (which need nothing from ``s3io.dcp``).
"""
from __future__ import annotations

import os
from typing import Optional

from .._config import S3ClientConfig
from ._load_plan import LoadSettings

__all__ = [
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DIRECT_MIN_BYTES",
    "MAX_GAP_SIZE",
    "MIN_INFLIGHT_BYTES",
    "check_inflight_bytes",
    "load_settings",
]

_MIB = 1024 * 1024

DEFAULT_MAX_INFLIGHT_BYTES = 256 * _MIB
# Below this a load cannot keep a few 1 MiB GETs in flight.
MIN_INFLIGHT_BYTES = 4 * _MIB
# From here a tensor gets GETs of its own, straight into its memory: no copy
# (~0.2 ms per MiB), for one more request (~0.3 ms of client CPU).  No probe is
# needed: the header says where its bytes lie.
DIRECT_MIN_BYTES = _MIB
# Smaller than DIRECT_MIN_BYTES, so a coalesced segment never spans the bytes
# of a tensor fetched on its own; a partial DCP load skips wider gaps.
MAX_GAP_SIZE = _MIB // 4
_MIN_PART_SIZE = 16 * _MIB  # fewer, larger GETs, as the DCP reader's


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_inflight_bytes(value: object) -> int:
    """``max_inflight_bytes`` if it is an int from :data:`MIN_INFLIGHT_BYTES` up to the machine's memory.

    Raises
    ------
    TypeError, ValueError
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_inflight_bytes must be an int (bytes), not {type(value).__name__}")
    limit = _physical_memory()
    if value < MIN_INFLIGHT_BYTES or (limit is not None and value > limit):
        upper = f"this machine's memory ({limit} bytes)" if limit is not None else "the machine's memory"
        raise ValueError(f"max_inflight_bytes must be from {MIN_INFLIGHT_BYTES} (4 MiB) up to {upper}, not {value}")
    return value


def load_settings(config: S3ClientConfig, max_inflight_bytes: int, max_concurrency: Optional[int] = None, *,
                  max_direct_ahead_bytes: Optional[int] = None) -> LoadSettings:
    """How a safetensors load uses the network and memory.

    Parts of at least 16 MiB (each GET costs client CPU), but at most a
    quarter of the ring, so that several segments fit in it; concurrency
    from ``max_concurrency``, else the client's, at most 4 per CPU and 16
    (more threads only contend for the GIL with the one that hands over).
    """
    if max_concurrency is None:
        max_concurrency = min(config.max_concurrency or 8, 4 * (os.cpu_count() or 1), 16)
    elif isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be a positive int, not {max_concurrency!r}")
    part_size = max(_MIB, min(max(config.part_size, _MIN_PART_SIZE), max_inflight_bytes // 4))
    return LoadSettings(
        max_gap_size=MAX_GAP_SIZE,
        max_inflight_bytes=max_inflight_bytes,
        part_size=part_size,
        max_concurrency=max_concurrency,
        max_direct_ahead_bytes=max_direct_ahead_bytes,
    )
