"""S3MapDataset: a map-style dataset of S3 objects; a batch's objects are fetched concurrently."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, List, Optional, Sequence, Union

import torch.utils.data

from ._client import S3Client
from ._config import S3ClientConfig
from ._prefetch import DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_OBJECTS, FetchAhead
from ._s3bucket_key_data import S3BucketKeyData
from ._s3dataset_common import S3DatasetBase, identity
from .s3reader import S3Reader

__all__ = ["S3MapDataset"]

log = logging.getLogger(__name__)


class S3MapDataset(S3DatasetBase, torch.utils.data.Dataset):
    """A Map-Style dataset created from S3 objects.

    To create an instance of S3MapDataset, use the ``from_prefix`` or
    ``from_objects`` methods.  The objects are listed on first access
    (``len``, an item), in listing order, and kept.  ``dataset[i]`` is
    ``transform(reader)`` for object ``i``, where ``reader`` is a file-like
    :class:`~s3io.S3Reader` with ``bucket`` and ``key``.

    :meth:`__getitems__` (which a DataLoader with a batch size calls) fetches
    a batch's objects concurrently, up to ``prefetch_objects`` at once and
    ``prefetch_bytes`` bytes ahead of the transform, each GET holding a slot
    of the client's adaptive concurrency limit; the transform runs on each
    in order, in the calling process.

    The dataset pickles (DataLoader workers under spawn, with the listing
    made so far) and works under fork and with persistent workers.
    """

    _dataset_kind = "map"

    def __init__(
        self,
        region: str,
        get_dataset_objects: Callable[[S3Client], Iterable[S3BucketKeyData]],
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[Callable] = None,
        *,
        prefetch_objects: int = DEFAULT_PREFETCH_OBJECTS,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    ) -> None:
        super().__init__(
            region, get_dataset_objects, endpoint, transform, s3client_config, reader_constructor,
            prefetch_objects, prefetch_bytes,
        )
        self._bucket_key_pairs: Optional[List[S3BucketKeyData]] = None

    @property
    def _dataset_bucket_key_pairs(self) -> List[S3BucketKeyData]:
        if self._bucket_key_pairs is None:
            self._bucket_key_pairs = list(self._get_dataset_objects(self._get_client()))
        return self._bucket_key_pairs

    @classmethod
    def from_objects(
        cls,
        object_uris: Union[str, Iterable[str]],
        *,
        region: str,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[Callable] = None,
        prefetch_objects: int = DEFAULT_PREFETCH_OBJECTS,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    ) -> "S3MapDataset":
        """Returns an instance of S3MapDataset using the S3 URI(s) provided.

        Parameters
        ----------
        object_uris : str or iterable of str
            S3 URI(s) of the objects, ``s3://bucket/key``; read once, now.
        region : str
            AWS region of the bucket(s).
        endpoint : str, optional
            S3 endpoint URL.
        transform : callable, default identity
            Turns each :class:`~s3io.S3Reader` into an item.
        s3client_config : S3ClientConfig, optional
        reader_constructor : callable, optional
            From :class:`~s3io.S3ReaderConstructor` (default sequential).
        prefetch_objects : int, default 16
            Objects of a batch fetched at once by :meth:`__getitems__` (0 to
            1024; 0: one after the other, when the transform reads each).
        prefetch_bytes : int, default 128 MiB
            Most bytes of a batch fetched ahead of the transform (1 MiB to 1 TiB).

        Returns
        -------
        S3MapDataset

        Raises
        ------
        ValueError
            A URI is not ``s3://bucket/key`` (the message names it), or a knob is out of range.
        S3Exception
            When an item is read: an error accessing S3.
        """
        log.info("Building %s from_objects", cls.__name__)
        return cls(
            region, cls._objects_of(object_uris), endpoint, transform=transform, s3client_config=s3client_config,
            reader_constructor=reader_constructor, prefetch_objects=prefetch_objects, prefetch_bytes=prefetch_bytes,
        )

    @classmethod
    def from_prefix(
        cls,
        s3_uri: str,
        *,
        region: str,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[Callable] = None,
        prefetch_objects: int = DEFAULT_PREFETCH_OBJECTS,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    ) -> "S3MapDataset":
        """Returns an instance of S3MapDataset using the S3 URI provided.

        Parameters
        ----------
        s3_uri : str
            ``s3://bucket/prefix``: every object whose key starts with the
            prefix, in listing (key) order, listed on first access.
        region, endpoint, transform, s3client_config, reader_constructor, prefetch_objects, prefetch_bytes
            As in :meth:`from_objects`.

        Returns
        -------
        S3MapDataset

        Raises
        ------
        ValueError
            ``s3_uri`` is not an ``s3://`` URI with a bucket (the message names it).
        S3Exception
            On first access: an error listing the prefix (``S3BucketNotFound``, ...).
        """
        log.info("Building %s from_prefix %r", cls.__name__, s3_uri)
        return cls(
            region, cls._objects_under(s3_uri), endpoint, transform=transform, s3client_config=s3client_config,
            reader_constructor=reader_constructor, prefetch_objects=prefetch_objects, prefetch_bytes=prefetch_bytes,
        )

    def _get_object(self, i: int) -> S3Reader:
        return self._get_reader(self._dataset_bucket_key_pairs[i])

    def __getitem__(self, i: int) -> Any:
        return self._transform(self._get_object(i))

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """The items at ``indices``, their objects fetched concurrently (a DataLoader calls this per batch).

        Raises
        ------
        IndexError
            An index is out of range (before any request).
        S3Exception
            Fetching an object failed; the batch's other GETs are cancelled.
        """
        objects = [self._dataset_bucket_key_pairs[i] for i in indices]
        if not self._prefetching:
            return [self._get_transformed_object(obj) for obj in objects]
        ahead = FetchAhead(self._get_client(), iter(objects), max_objects=self._prefetch_objects, max_bytes=self._prefetch_bytes)
        try:
            return [self._transform(reader) for reader in ahead]
        finally:
            ahead.close()

    def __len__(self) -> int:
        return len(self._dataset_bucket_key_pairs)
