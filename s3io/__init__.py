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
from .s3reader import S3Reader, S3ReaderConstructor
from .s3writer import S3Writer

__version__ = "0.1.0"

__all__ = [
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
