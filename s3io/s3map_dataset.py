"""S3MapDataset: a map-style dataset of S3 objects; a batch's objects are fetched concurrently."""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence

import torch.utils.data

from ._client import S3Client
from ._config import S3ClientConfig
from ._prefetch import DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_OBJECTS, FetchAhead
from ._s3bucket_key_data import S3BucketKeyData
from ._s3dataset_common import S3DatasetBase, identity
from .s3reader import S3Reader

__all__ = ["S3MapDataset"]


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
