"""What S3MapDataset and S3IterableDataset share: URIs, the objects of a dataset, the client, the knobs.

The objects of a dataset come from a callable ``get_dataset_objects(client)``
(as in the reference): :func:`get_objects_from_uris` for ``from_objects``,
:func:`get_objects_from_prefix` for ``from_prefix``, which lists one page at
a time.  Bad URIs are rejected when the dataset is built, naming the URI.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, Union

from ._client import S3Client
from ._config import S3ClientConfig
from ._prefetch import check_prefetch_knobs
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
]


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

    Pickles (for DataLoader workers under spawn) without a live connection:
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
        self._get_dataset_objects = get_dataset_objects
        self._transform = transform
        self._region = region
        self._endpoint = endpoint
        self._s3client_config = s3client_config
        self._client: Optional[S3Client] = None
        self._reader_constructor = reader_constructor or S3ReaderConstructor.default()
        self._prefetch_objects = prefetch_objects
        self._prefetch_bytes = prefetch_bytes

    @staticmethod
    def _objects_of(object_uris: Union[str, Iterable[str]]) -> Callable:
        """``get_dataset_objects`` for ``from_objects`` (the URIs checked now)."""
        return partial(_objects_from_pairs, _object_pairs(object_uris))

    @staticmethod
    def _objects_under(s3_uri: str) -> Callable:
        """``get_dataset_objects`` for ``from_prefix`` (the URI checked now)."""
        parse_s3_uri(s3_uri)
        return partial(get_objects_from_prefix, s3_uri)

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
