"""Which safetensors objects a URI names, and their checked headers.

:func:`open_files` takes what a user passes (one ``s3://.../x.safetensors``,
a list of them, or a directory prefix ending in ``/``), finds the objects (a
directory: the shards its ``*.safetensors.index.json`` names, else every
``*.safetensors`` directly in it), and reads each file's header in parallel:
one ranged GET of the first :data:`HEADER_PROBE_SIZE` bytes (the 8-byte length,
the JSON, and the file's size from the response), a second one only for a
longer header.  Every request of one file goes through one handle pinned to
one version: the data fetched later comes from the file whose header was read.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .._client import S3Client
from .._exceptions import S3ObjectNotFound
from .._handle import ObjectHandle
from .._metadata import ObjectInfo
from .._uri import parse_s3_uri
from ._format import HEADER_LENGTH_SIZE, SafetensorsError, SafetensorsHeader, header_length, parse_header

__all__ = ["HEADER_PROBE_SIZE", "INDEX_NAME", "SUFFIX", "SafetensorsFile", "open_files"]

SUFFIX = ".safetensors"
INDEX_NAME = "model.safetensors.index.json"
_INDEX_SUFFIX = ".safetensors.index.json"
# The first GET of a file: headers of large models' shards are 10-100 KiB; a
# longer one costs a second GET.
HEADER_PROBE_SIZE = 64 * 1024
_THREAD_NAME_PREFIX = "s3io-safetensors-header"


@dataclass(frozen=True)
class SafetensorsFile:
    """One safetensors object of a load.

    Attributes
    ----------
    name : str
        Its key relative to the directory loaded, or its ``s3://`` URI when
        files were named one by one.
    handle : ObjectHandle
        Pinned to the version whose header was read.
    header : SafetensorsHeader
    """

    name: str
    handle: ObjectHandle
    header: SafetensorsHeader

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return self.header.uri


@dataclass
class _Located:
    name: str
    bucket: str
    key: str
    info: Optional[ObjectInfo]


@dataclass(frozen=True)
class _Index:
    uri: str
    weight_map: Dict[str, str]  # tensor -> file name, relative to the directory


def _uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _read_index(client: S3Client, bucket: str, key: str) -> _Index:
    uri = _uri(bucket, key)
    with client.get_object(bucket, key) as reader:
        data = reader.read()
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise SafetensorsError(f"{uri}: not a JSON index: {exc}") from None
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in weight_map.items()
    ):
        raise SafetensorsError(f"{uri}: the index has no weight_map of tensor names to file names")
    return _Index(uri, weight_map)


def _pick_index(bucket: str, prefix: str, keys: Sequence[str]) -> Optional[str]:
    indexes = sorted(key for key in keys if key.endswith(_INDEX_SUFFIX))
    if prefix + INDEX_NAME in indexes:
        return prefix + INDEX_NAME
    if len(indexes) > 1:
        names = ", ".join(key[len(prefix):] for key in indexes)
        raise SafetensorsError(
            f"{_uri(bucket, prefix)} holds several indexes ({names}) and no {INDEX_NAME}: pass the files to load as a list"
        )
    return indexes[0] if indexes else None


def _locate_directory(client: S3Client, bucket: str, prefix: str) -> Tuple[List[_Located], Optional[_Index]]:
    objects = {
        info.key: info
        for page in client.list_objects(bucket, prefix, delimiter="/")
        for info in page.object_info
    }
    index_key = _pick_index(bucket, prefix, list(objects))
    if index_key is None:
        located = [_Located(key[len(prefix):], bucket, key, info)
                   for key, info in sorted(objects.items()) if key.endswith(SUFFIX)]
        if not located:
            raise S3ObjectNotFound(
                f"{_uri(bucket, prefix)} holds no *{SUFFIX} objects and no {INDEX_NAME}",
                status=404, code="NoSuchKey", bucket=bucket, key=prefix,
            )
        return located, None
    index = _read_index(client, bucket, index_key)
    tensors_by_file: Dict[str, List[str]] = {}
    for tensor, name in index.weight_map.items():
        tensors_by_file.setdefault(name, []).append(tensor)
    located = []
    for name in sorted(tensors_by_file):
        key = prefix + name
        info = objects.get(key)
        if info is None:  # not a direct child (a name with a "/"), or missing
            try:
                head = client.head_object(bucket, key)
            except S3ObjectNotFound as exc:
                tensors = tensors_by_file[name]
                raise S3ObjectNotFound(
                    f"{index.uri} names shard {name!r} (tensors {', '.join(repr(t) for t in tensors[:3])}"
                    f"{', ...' if len(tensors) > 3 else ''}), but {_uri(bucket, key)} does not exist",
                    status=404, code="NoSuchKey", bucket=bucket, key=key, request_id=exc.request_id,
                ) from None
            info = ObjectInfo(key, head.etag, head.size, head.last_modified, head.storage_class)
        located.append(_Located(name, bucket, key, info))
    return located, index


def _locate(client: S3Client, uri: Union[str, Sequence[str]]) -> Tuple[List[_Located], Optional[_Index]]:
    if isinstance(uri, str) and uri.endswith("/"):
        bucket, prefix = parse_s3_uri(uri)
        return _locate_directory(client, bucket, prefix)
    uris = [uri] if isinstance(uri, str) else list(uri)
    if not uris:
        raise ValueError("no safetensors files to load: the list is empty")
    located = []
    for position, one in enumerate(uris):
        if not isinstance(one, str):
            raise TypeError(f"a safetensors file is an s3:// URI (str), not {type(one).__name__}")
        if one in uris[:position]:
            raise ValueError(f"{one!r} is in the list twice")
        bucket, key = parse_s3_uri(one)
        if not key or key.endswith("/"):
            raise ValueError(f"{one!r} is a directory: pass it alone, ending in '/'")
        located.append(_Located(one, bucket, key, None))
    return located, None


def read_header(handle: ObjectHandle, uri: str) -> SafetensorsHeader:
    """Read and check the header of the safetensors object behind ``handle``.

    Raises
    ------
    SafetensorsError
        The file is not a well-formed safetensors file (see ``parse_header``).
    S3Exception
        The object cannot be read (``S3ObjectNotFound``, ``S3BucketNotFound``, ...).
    """
    known = handle.known_size
    probe = bytearray(HEADER_PROBE_SIZE if known is None else min(known, HEADER_PROBE_SIZE))
    with handle(0, len(probe)) as stream:
        got = stream.readinto(probe) if probe else 0
        size = stream.object_size
    if size is None:
        size = known if known is not None else handle.object_info().size
    length = header_length(uri, size, probe[:got])
    end = HEADER_LENGTH_SIZE + length
    if end <= got:
        return parse_header(uri, size, memoryview(probe)[:end])
    data = bytearray(end)
    data[:got] = probe[:got]
    handle.fetch_into(got, memoryview(data)[got:])
    return parse_header(uri, size, data)


def _check_index(index: _Index, files: Sequence[SafetensorsFile]) -> None:
    by_name = {file.name: file for file in files}
    for tensor, name in index.weight_map.items():
        file = by_name[name]
        if tensor not in file.header.tensors:
            raise SafetensorsError(f"{index.uri} puts tensor {tensor!r} in {file.uri}, which has no tensor of that name")


def open_files(client: S3Client, uri: Union[str, Sequence[str]], max_concurrency: int) -> List[SafetensorsFile]:
    """The safetensors files ``uri`` names, with checked headers, in a stable order.

    Parameters
    ----------
    client : S3Client
    uri : str or list of str
        ``s3://bucket/x.safetensors``, a list of such URIs, or a directory
        ``s3://bucket/prefix/`` (ending in ``/``): the shards its
        ``model.safetensors.index.json`` (or its only ``*.safetensors.index.json``)
        names, else every ``*.safetensors`` object directly in it, by key.
    max_concurrency : int
        Headers read at once.

    Returns
    -------
    list of SafetensorsFile

    Raises
    ------
    SafetensorsError
        A malformed file or index; an index that puts a tensor in a file
        that does not hold it.
    S3ObjectNotFound
        A file, or a shard the index names, does not exist; a directory holds no safetensors.
    S3Exception
        Other failures to list or read (``S3BucketNotFound``, ``S3AccessDenied``, ...).
    ValueError, TypeError
        ``uri`` is not an ``s3://`` URI, or a list of them.
    """
    located, index = _locate(client, uri)
    handles = [client.object_handle(item.bucket, item.key, object_info=item.info) for item in located]

    def read(position: int) -> SafetensorsFile:
        item = located[position]
        return SafetensorsFile(item.name, handles[position], read_header(handles[position], _uri(item.bucket, item.key)))

    if len(located) == 1:
        files = [read(0)]
    else:
        with ThreadPoolExecutor(min(max_concurrency, len(located)), thread_name_prefix=_THREAD_NAME_PREFIX) as pool:
            futures = [pool.submit(read, position) for position in range(len(located))]
            try:
                files = [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    if index is not None:
        _check_index(index, files)
    return files
