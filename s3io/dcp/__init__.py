"""torch.distributed.checkpoint on S3.

Examples
--------
>>> import torch.distributed.checkpoint as dcp                        # doctest: +SKIP
>>> from s3io.dcp import S3HuggingFaceStorageReader, S3StorageReader, S3StorageWriter, delete_orphaned_files
>>> dcp.save(state_dict, storage_writer=S3StorageWriter("us-east-1", "s3://bucket/ckpt"))
>>> dcp.load(state_dict, storage_reader=S3StorageReader("us-east-1", "s3://bucket/ckpt"))
>>> delete_orphaned_files("us-east-1", "s3://bucket/ckpt")  # data files left by killed saves
>>> # Hugging Face safetensors directories (model-0000k-of-0000n.safetensors + index json):
>>> dcp.load(state_dict, storage_reader=S3HuggingFaceStorageReader("us-east-1", "s3://bucket/hf-model"))
"""
from ._checkpoint_files import delete_orphaned_files
from ._hf_reader import S3HuggingFaceStorageReader
from ._hf_writer import S3HuggingFaceStorageWriter
from .s3_file_system import S3FileSystem, S3StorageReader, S3StorageWriter, StorageMetadata
from .s3_prefix_strategy import (
    BinaryPrefixStrategy,
    DefaultPrefixStrategy,
    HexPrefixStrategy,
    NumericPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3PrefixStrategyBase,
)

__all__ = [
    "S3FileSystem",
    "S3StorageReader",
    "S3StorageWriter",
    "S3HuggingFaceStorageReader",
    "S3HuggingFaceStorageWriter",
    "StorageMetadata",
    "S3PrefixStrategyBase",
    "DefaultPrefixStrategy",
    "NumericPrefixStrategy",
    "BinaryPrefixStrategy",
    "HexPrefixStrategy",
    "RoundRobinPrefixStrategy",
    "delete_orphaned_files",
]
