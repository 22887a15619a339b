"""What S3MapDataset and S3IterableDataset share: URIs, the objects of a dataset, the client, the knobs.

The objects of a dataset come from a callable ``get_dataset_objects(client)``
(as in the reference): :func:`get_objects_from_uris` for ``from_objects``,
:func:`get_objects_from_prefix` for ``from_prefix``, which lists one page at
a time.  Bad URIs are rejected when the dataset is built, naming the URI.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, Union

from ._boto import preload_models
from ._client import S3Client
from ._config import S3ClientConfig
from ._prefetch import DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_OBJECTS, check_prefetch_knobs
from ._s3bucket_key_data import S3BucketKeyData
from ._uri import parse_s3_uri
from .s3reader import S3Reader, S3ReaderConstructor

__all__ = [
    "identity",
    "parse_s3_uri",
    "parse_object_uri",
    "get_objects_from_uris",
    "get_objects_from_prefix",
    "shard",
    "S3DatasetBase",
]

log = logging.getLogger(__name__)


def identity(obj: S3Reader) -> S3Reader:
    """The default transform: the reader itself."""
    return obj


def parse_object_uri(uri: str) -> Tuple[str, str]:
    """Bucket and key of the object ``s3://bucket/key``.

    Raises
    ------
    ValueError
        ``uri`` is not an ``s3://`` URI, or names no bucket or no key.
    TypeError
        ``uri`` is not a str.
    """
    bucket, key = parse_s3_uri(uri)
    if not key:
        raise ValueError(f"Object key must be non-empty in {uri!r}")
    return bucket, key


def _object_pairs(object_uris: Union[str, Iterable[str]]) -> Tuple[Tuple[str, str], ...]:
    """Every URI parsed, once: a bad one fails now, and an iterator given is read only once."""
    if isinstance(object_uris, str):
        object_uris = [object_uris]
    return tuple(parse_object_uri(uri) for uri in object_uris)


def _objects_from_pairs(pairs: Tuple[Tuple[str, str], ...], client: S3Client) -> Iterator[S3BucketKeyData]:
    return (S3BucketKeyData(bucket, key) for bucket, key in pairs)


def get_objects_from_uris(object_uris: Union[str, Iterable[str]], client: S3Client) -> Iterator[S3BucketKeyData]:
    """The objects named by ``object_uris`` (one URI or an iterable of them), in order."""
    return _objects_from_pairs(_object_pairs(object_uris), client)


def get_objects_from_prefix(s3_uri: str, client: S3Client) -> Iterator[S3BucketKeyData]:
    """Every object under the prefix ``s3://bucket/prefix``, in listing (key) order.

    Lazy: pages of up to 1,000 keys are listed as the iteration reaches
    them, so a prefix of millions of keys is never held at once.
    """
    bucket, prefix = parse_s3_uri(s3_uri)
    for page in client.list_objects(bucket, prefix):
        for info in page.object_info:
            yield S3BucketKeyData(bucket, info.key, info)


def shard(objects: Iterable[Any], index: int, count: int) -> Iterator[Any]:
    """The items of ``objects`` whose position modulo ``count`` is ``index``."""
    return (obj for position, obj in enumerate(objects) if position % count == index)


class S3DatasetBase:
    """The state both datasets keep: where the objects are, the client, the transform and the knobs.

    ``from_objects`` and ``from_prefix`` are defined here, once (the
    iterable dataset's add ``enable_sharding``).  Pickles (for DataLoader workers under spawn) without a live connection:
    the client is rebuilt in each process on first use.
    """

    _dataset_kind = ""  # "map" or "iterable": in the User-Agent, as the reference sends it

    def __init__(
        self,
        region: str,
        get_dataset_objects: Callable[[S3Client], Iterable[S3BucketKeyData]],
        endpoint: Optional[str],
        transform: Callable[[S3Reader], Any],
        s3client_config: Optional[S3ClientConfig],
        reader_constructor: Optional[Callable],
        prefetch_objects: int,
        prefetch_bytes: int,
    ) -> None:
        if not callable(transform):
            raise TypeError(f"transform must be callable, not {type(transform).__name__}")
        check_prefetch_knobs(prefetch_objects, prefetch_bytes)
        # Before a DataLoader forks its workers: each then builds its client in ~40 ms, not 150-400 ms.
        preload_models()
        self._get_dataset_objects = get_dataset_objects
        self._transform = transform
        self._region = region
        self._endpoint = endpoint
        self._s3client_config = s3client_config
        self._client: Optional[S3Client] = None
        self._reader_constructor = reader_constructor or S3ReaderConstructor.default()
        self._prefetch_objects = prefetch_objects
        self._prefetch_bytes = prefetch_bytes

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
    ):
        """Returns an instance of the dataset using the S3 URI(s) provided.

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
            Objects fetched ahead of the transform, per process (each
            DataLoader worker): by an iterable dataset's iteration, and within
            a batch by a map dataset's ``__getitems__``.  0 to 1024; 0: each
            object is fetched when the transform reads it.
        prefetch_bytes : int, default 128 MiB
            Most bytes fetched ahead and not yet handed to the transform, per
            process (1 MiB to 1 TiB).  An object whose size is unknown (named
            by URI) counts ``part_size`` bytes, or twice the largest object
            seen so far, until its first answer tells its size.

        Returns
        -------
        S3MapDataset or S3IterableDataset

        Raises
        ------
        ValueError
            A URI is not ``s3://bucket/key`` (the message names it), or a knob is out of range.
        S3Exception
            When an object is read: an error accessing S3 (``S3ObjectNotFound``, ...).
        """
        log.info("Building %s from_objects", cls.__name__)
        return cls(
            region, partial(_objects_from_pairs, _object_pairs(object_uris)), endpoint, transform=transform,
            s3client_config=s3client_config, reader_constructor=reader_constructor,
            prefetch_objects=prefetch_objects, prefetch_bytes=prefetch_bytes,
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
    ):
        """Returns an instance of the dataset using the S3 URI provided.

        Parameters
        ----------
        s3_uri : str
            ``s3://bucket/prefix``: every object whose key starts with the
            prefix, in listing (key) order.  A map dataset lists on first
            access and keeps the list; an iterable one lists page by page
            during each iteration.
        region, endpoint, transform, s3client_config, reader_constructor, prefetch_objects, prefetch_bytes
            As in :meth:`from_objects`.

        Returns
        -------
        S3MapDataset or S3IterableDataset

        Raises
        ------
        ValueError
            ``s3_uri`` is not an ``s3://`` URI with a bucket (the message names it), or a knob is out of range.
        S3Exception
            When listing: an error accessing S3 (``S3BucketNotFound``, ...).
        """
        log.info("Building %s from_prefix %r", cls.__name__, s3_uri)
        parse_s3_uri(s3_uri)  # a bad URI fails now
        return cls(
            region, partial(get_objects_from_prefix, s3_uri), endpoint, transform=transform,
            s3client_config=s3client_config, reader_constructor=reader_constructor,
            prefetch_objects=prefetch_objects, prefetch_bytes=prefetch_bytes,
        )

    @property
    def region(self) -> str:
        """The region given."""
        return self._region

    @property
    def endpoint(self) -> Optional[str]:
        """The endpoint given (None: the client's default)."""
        return self._endpoint

    @property
    def prefetch_objects(self) -> int:
        """Objects fetched ahead of the transform (per DataLoader worker)."""
        return self._prefetch_objects

    @property
    def prefetch_bytes(self) -> int:
        """Most bytes fetched ahead of the transform and not yet handed to it (per worker)."""
        return self._prefetch_bytes

    @property
    def _prefetching(self) -> bool:
        # Readers other than the sequential one (range-based, DCP) read parts of an object on
        # demand: fetching whole objects ahead would defeat them, so they are built as the reference does.
        reader_type = S3ReaderConstructor.get_reader_type_string(self._reader_constructor)
        return self._prefetch_objects > 0 and reader_type == "sequential"

    def _get_client(self) -> S3Client:
        if self._client is None:
            reader_type = S3ReaderConstructor.get_reader_type_string(self._reader_constructor)
            self._client = S3Client(
                self._region,
                endpoint=self._endpoint,
                user_agent=f"md/dataset#{self._dataset_kind} md/reader_type#{reader_type}",
                s3client_config=self._s3client_config,
            )
        return self._client

    def _get_reader(self, obj: S3BucketKeyData) -> S3Reader:
        return self._get_client().get_object(
            obj.bucket, obj.key, object_info=obj.object_info, reader_constructor=self._reader_constructor
        )

    def _get_transformed_object(self, obj: S3BucketKeyData) -> Any:
        return self._transform(self._get_reader(obj))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = None  # each process builds its own, on first use
        return state
