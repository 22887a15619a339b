"""Readers: file-like objects over one S3 object.

``S3ReaderConstructor`` makes constructors for ``S3Client.get_object``:
``sequential()`` (default), ``range_based(buffer_size)`` and ``dcp_optimized(max_gap_size)``.
"""
from .._core import ItemRange
from .s3reader import S3Reader
from .sequential import SequentialS3Reader
from .ranged import RangedS3Reader
from .dcp_optimized import DCPOptimizedS3Reader, DCPOptimizedConstructor
from .constructor import S3ReaderConstructor

__all__ = [
    "S3Reader",
    "S3ReaderConstructor",
    "SequentialS3Reader",
    "RangedS3Reader",
    "DCPOptimizedS3Reader",
    "DCPOptimizedConstructor",
    "ItemRange",
]
