"""torch.distributed.checkpoint storage on S3 (the module path of s3torchconnector's classes).

The checkpoint layout is torch's own (``.metadata`` plus one ``.distcp`` file
per rank and writer thread, items stored with ``torch.save``), so a
checkpoint copied between S3 and a local directory loads with either torch's
``FileSystemReader`` or :class:`S3StorageReader`, and with s3torchconnector.
Each class lives in its own module; this one keeps the import path
``s3torchconnector.dcp.s3_file_system`` users know.
"""
from ._filesystem import S3FileSystem, StorageMetadata
from ._storage_reader import S3StorageReader
from ._storage_writer import S3StorageWriter

__all__ = ["S3FileSystem", "StorageMetadata", "S3StorageWriter", "S3StorageReader"]
