"""S3ReaderConstructor: factories of reader constructors for S3Client.get_object."""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Union

from .dcp_optimized import DEFAULT_MAX_GAP_SIZE, DCPOptimizedConstructor
from .ranged import RangedS3Reader
from .sequential import SequentialS3Reader

__all__ = ["S3ReaderConstructor", "DCPOptimizedConstructor"]


class S3ReaderConstructor:
    """Constructor for creating ``partial(S3Reader)`` instances.

    The returned constructors are completed by :class:`s3io.S3Client` with
    ``bucket``, ``key``, ``get_object_info`` and ``get_stream``.  They pickle.

    - :meth:`sequential`: buffers the whole object; best for full reads and
      repeated access.
    - :meth:`range_based`: fetches the byte ranges read; for sparse partial
      reads of large objects.
    - :meth:`dcp_optimized`: for ``torch.distributed.checkpoint`` loads.
    """

    @staticmethod
    def sequential() -> Callable:
        """Creates a constructor for sequential (generic) readers.

        Returns
        -------
        callable
            Partial constructor for :class:`SequentialS3Reader`.

        Examples
        --------
        >>> reader_constructor = S3ReaderConstructor.sequential()
        """
        return partial(SequentialS3Reader)

    @staticmethod
    def range_based(buffer_size: Optional[int] = None) -> Callable:
        """Creates a constructor for range-based readers.

        Parameters
        ----------
        buffer_size : int, optional
            Internal buffer size in bytes.  None: 8 MiB.  0 disables buffering.
            Reads smaller than the buffer load ``buffer_size`` bytes into it;
            larger reads go straight into the caller's memory; forward-overlapping
            reads reuse the buffered part.

        Returns
        -------
        callable
            Partial constructor for :class:`RangedS3Reader`.

        Examples
        --------
        >>> reader_constructor = S3ReaderConstructor.range_based(buffer_size=16 * 1024 * 1024)
        """
        if buffer_size is not None and (
            isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 0
        ):
            raise ValueError(f"buffer_size must be a non-negative int or None, not {buffer_size!r}")
        return partial(RangedS3Reader, buffer_size=buffer_size)

    @staticmethod
    def dcp_optimized(max_gap_size: Union[int, float] = DEFAULT_MAX_GAP_SIZE) -> DCPOptimizedConstructor:
        """Creates a constructor for DCP-optimized readers for faster checkpoint loading.

        Parameters
        ----------
        max_gap_size : int or float, default 32 MiB
            Largest gap between two needed ranges that still share one GET;
            ``float("inf")`` coalesces everything, 0 only touching ranges.

        Returns
        -------
        DCPOptimizedConstructor
            Use with ``s3io.dcp.S3StorageReader``, whose ``prepare_local_plan``
            injects the ranges.
        """
        return DCPOptimizedConstructor(max_gap_size)

    @staticmethod
    def default() -> Callable:
        """Creates the default generic reader constructor (sequential)."""
        return S3ReaderConstructor.sequential()

    @staticmethod
    def get_reader_type_string(constructor: Optional[Callable]) -> str:
        """Returns ``"sequential"``, ``"range_based"``, ``"dcp_optimized"`` or ``"unknown"``."""
        if constructor is None:
            return S3ReaderConstructor.get_reader_type_string(S3ReaderConstructor.default())
        if isinstance(constructor, DCPOptimizedConstructor):
            return "dcp_optimized"
        if not isinstance(constructor, partial):
            return "unknown"
        if constructor.func is RangedS3Reader:
            return "range_based"
        if constructor.func is SequentialS3Reader:
            return "sequential"
        return "unknown"
