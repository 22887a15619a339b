"""S3IterableDataset: an iterable-style dataset of S3 objects, fetched ahead of the transform."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, Union

import torch
import torch.utils.data

from ._client import S3Client
from ._config import S3ClientConfig
from ._prefetch import DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_OBJECTS, FetchAhead
from ._s3bucket_key_data import S3BucketKeyData
from ._s3dataset_common import S3DatasetBase, identity, shard
from .s3reader import S3Reader

__all__ = ["S3IterableDataset"]


class S3IterableDataset(S3DatasetBase, torch.utils.data.IterableDataset):
    """An IterableStyle dataset created from S3 objects.

    To create an instance of S3IterableDataset, use the ``from_prefix`` or
    ``from_objects`` methods.  Each item is ``transform(reader)``, where
    ``reader`` is a file-like :class:`~s3io.S3Reader` with ``bucket`` and
    ``key``.

    With the default (sequential) reader, objects are fetched ahead: up to
    ``prefetch_objects`` objects per process (each DataLoader worker) are in
    flight while the transform works, and no more than ``prefetch_bytes``
    bytes of objects not yet handed to it; items come out in order.  Every
    GET holds a slot of the client's adaptive concurrency limit, so fetching
    ahead backs off when the store answers 503 SlowDown.  A prefix is listed
    page by page as the iteration reaches it.  The transform gets the reader
    at once and each read waits only for the bytes it needs; an object whose
    GET failed raises (``S3ObjectNotFound``, ...) from the transform's read,
    at that object's place, and iteration can go on with the next one.
    Range-based and DCP readers are built when their turn comes, as in
    s3torchconnector.

    With ``enable_sharding``, the objects are split across
    ``torch.distributed`` ranks (read when the dataset is built) and then
    across DataLoader workers, by position modulo their count; without it,
    every worker yields every object.

    The dataset pickles (DataLoader workers under spawn) and works under
    fork, with persistent workers and across epochs: each iteration lists
    the prefix again.
    """

    _dataset_kind = "iterable"

    def __init__(
        self,
        region: str,
        get_dataset_objects: Callable[[S3Client], Iterable[S3BucketKeyData]],
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        enable_sharding: bool = False,
        reader_constructor: Optional[Callable] = None,
        *,
        prefetch_objects: int = DEFAULT_PREFETCH_OBJECTS,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    ) -> None:
        super().__init__(
            region, get_dataset_objects, endpoint, transform, s3client_config, reader_constructor,
            prefetch_objects, prefetch_bytes,
        )
        self._enable_sharding = enable_sharding
        self._rank = 0
        self._world_size = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._rank = torch.distributed.get_rank()
            self._world_size = torch.distributed.get_world_size()

    @classmethod
    def from_objects(
        cls,
        object_uris: Union[str, Iterable[str]],
        *,
        region: str,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        enable_sharding: bool = False,
        reader_constructor: Optional[Callable] = None,
        prefetch_objects: int = DEFAULT_PREFETCH_OBJECTS,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    ) -> "S3IterableDataset":
        """Returns an instance of S3IterableDataset using the S3 URI(s) provided.

        The parameters are those of :meth:`S3MapDataset.from_objects
        <s3io._s3dataset_common.S3DatasetBase.from_objects>`, and:

        enable_sharding : bool, default False
            Split the objects across ranks, then DataLoader workers; if False
            every worker yields every object.
        """
        dataset = super().from_objects(
            object_uris, region=region, endpoint=endpoint, transform=transform, s3client_config=s3client_config,
            reader_constructor=reader_constructor, prefetch_objects=prefetch_objects, prefetch_bytes=prefetch_bytes,
        )
        dataset._enable_sharding = enable_sharding
        return dataset

    @classmethod
    def from_prefix(
        cls,
        s3_uri: str,
        *,
        region: str,
        endpoint: Optional[str] = None,
        transform: Callable[[S3Reader], Any] = identity,
        s3client_config: Optional[S3ClientConfig] = None,
        enable_sharding: bool = False,
        reader_constructor: Optional[Callable] = None,
        prefetch_objects: int = DEFAULT_PREFETCH_OBJECTS,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    ) -> "S3IterableDataset":
        """Returns an instance of S3IterableDataset using the S3 URI provided.

        The prefix is listed page by page during each iteration.  The
        parameters are those of :meth:`S3MapDataset.from_prefix
        <s3io._s3dataset_common.S3DatasetBase.from_prefix>`, and
        ``enable_sharding`` as in :meth:`from_objects`.
        """
        dataset = super().from_prefix(
            s3_uri, region=region, endpoint=endpoint, transform=transform, s3client_config=s3client_config,
            reader_constructor=reader_constructor, prefetch_objects=prefetch_objects, prefetch_bytes=prefetch_bytes,
        )
        dataset._enable_sharding = enable_sharding
        return dataset

    def _shard_objects(self) -> Iterator[S3BucketKeyData]:
        """This process's objects: all, or its shard (rank first, then DataLoader worker)."""
        objects = self._get_dataset_objects(self._get_client())
        worker_id, num_workers = 0, 1
        if self._enable_sharding:
            worker_info = torch.utils.data.get_worker_info()
            if worker_info is not None:
                worker_id, num_workers = worker_info.id, worker_info.num_workers
        if not self._enable_sharding or (self._world_size == 1 and num_workers == 1):
            return iter(objects)
        return shard(shard(objects, self._rank, self._world_size), worker_id, num_workers)

    def __iter__(self) -> Iterator[Any]:
        objects = self._shard_objects()
        if not self._prefetching:
            return map(self._get_transformed_object, objects)
        ahead = FetchAhead(self._get_client(), objects, max_objects=self._prefetch_objects, max_bytes=self._prefetch_bytes)
        return map(self._transform, ahead)
