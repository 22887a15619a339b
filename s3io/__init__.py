"""s3io: fast, safe S3 readers, writers and torch.distributed.checkpoint storage.

The API follows s3torchconnector 1.5.0, so switching is one import line::

    from s3io import S3Client, S3ClientConfig, S3ReaderConstructor

    client = S3Client("us-east-1")
    with client.put_object("bucket", "key") as writer:
        writer.write(b"hello")
    reader = client.get_object("bucket", "key")
    assert reader.read() == b"hello"
    for page in client.list_objects("bucket", prefix="k"):
        print([info.key for info in page.object_info])

Datasets (``S3MapDataset``, ``S3IterableDataset``) import torch when first
named, so ``import s3io`` stays light; ``S3Checkpoint`` serves torch.save and
torch.load; Lightning's checkpoint IO is ``s3io.lightning`` (the ``lightning``
extra).
"""
from ._client import S3Client
from ._config import S3ClientConfig
from ._exceptions import (
    S3AccessDenied,
    S3BucketNotFound,
    S3Exception,
    S3IncompleteRead,
    S3InvalidRange,
    S3ObjectChanged,
    S3ObjectNotFound,
)
from ._handle import ObjectHandle
from ._listing import ListObjectStream
from ._metadata import HeadObjectResult, ListObjectResult, ObjectInfo
from ._stream import GetObjectStream
from ._uri import parse_s3_uri
from .s3checkpoint import S3Checkpoint
from .s3reader import S3Reader, S3ReaderConstructor
from .s3writer import S3Writer

__version__ = "0.1.0"

__all__ = [
    "S3IterableDataset",
    "S3MapDataset",
    "S3Checkpoint",
    "S3Client",
    "S3ClientConfig",
    "S3Reader",
    "S3ReaderConstructor",
    "S3Writer",
    "S3Exception",
    "S3ObjectNotFound",
    "S3BucketNotFound",
    "S3AccessDenied",
    "S3ObjectChanged",
    "S3IncompleteRead",
    "S3InvalidRange",
    "HeadObjectResult",
    "ObjectInfo",
    "ListObjectResult",
    "ListObjectStream",
    "ObjectHandle",
    "GetObjectStream",
    "parse_s3_uri",
    "__version__",
]

# The datasets subclass torch's: imported on first use (torch takes seconds to import).
_LAZY = {"S3MapDataset": ".s3map_dataset", "S3IterableDataset": ".s3iterable_dataset"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
