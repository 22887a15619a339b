"""The reference's ``_s3client`` module path: users import ``S3Client`` and ``S3ClientConfig`` from here."""
from ._client import S3Client
from ._config import S3ClientConfig

__all__ = ["S3Client", "S3ClientConfig"]
