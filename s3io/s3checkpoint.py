"""S3Checkpoint: readers and writers of single objects for ``torch.save`` / ``torch.load``."""
from __future__ import annotations

from typing import Optional

from ._client import S3Client
from ._config import S3ClientConfig
from ._s3dataset_common import parse_object_uri
from .s3reader import S3Reader
from .s3writer import S3Writer

__all__ = ["S3Checkpoint"]


class S3Checkpoint:
    """A checkpoint manager for S3.

    To read a checkpoint from S3, create an :class:`~s3io.S3Reader` with
    :meth:`reader`; to save one, an :class:`~s3io.S3Writer` with :meth:`writer`.
    Both are ``io.BufferedIOBase`` objects, so they can be passed to
    ``torch.load`` and ``torch.save``::

        checkpoint = S3Checkpoint(region="us-east-1")
        with checkpoint.writer("s3://bucket/ckpt/epoch-1.pt") as writer:
            torch.save(model.state_dict(), writer)
        with checkpoint.reader("s3://bucket/ckpt/epoch-1.pt") as reader:
            model.load_state_dict(torch.load(reader))

    Parameters
    ----------
    region : str
        AWS region of the bucket.
    endpoint : str, optional
        S3 endpoint URL.
    s3client_config : S3ClientConfig, optional
    """

    def __init__(self, region: str, endpoint: Optional[str] = None, s3client_config: Optional[S3ClientConfig] = None) -> None:
        self.region = region
        self.endpoint = endpoint
        self._client = S3Client(region, endpoint=endpoint, user_agent="md/checkpoint", s3client_config=s3client_config)

    def reader(self, s3_uri: str) -> S3Reader:
        """Creates an S3Reader from a given s3_uri (``s3://bucket/key``).

        Returns
        -------
        S3Reader
            A read-only binary stream of the object's contents (the default, sequential reader).

        Raises
        ------
        ValueError
            ``s3_uri`` is not ``s3://bucket/key`` (the message names it).
        S3Exception
            When read: an error accessing S3 (``S3ObjectNotFound``, ...).
        """
        bucket, key = parse_object_uri(s3_uri)
        return self._client.get_object(bucket, key)

    def writer(self, s3_uri: str) -> S3Writer:
        """Creates an S3Writer from a given s3_uri (``s3://bucket/key``).

        Returns
        -------
        S3Writer
            A write-only binary stream; the object appears in S3 when it is closed.

        Raises
        ------
        ValueError
            ``s3_uri`` is not ``s3://bucket/key`` (the message names it).
        S3Exception
            When written or closed: an error accessing S3.
        """
        bucket, key = parse_object_uri(s3_uri)
        return self._client.put_object(bucket, key)
