"""Which data files a checkpoint's ``.metadata`` references, and removing the others.

A checkpoint on S3 is a ``.metadata`` object plus the ``.distcp`` data files
it references by their path relative to the checkpoint.  :class:`S3StorageWriter`
names each save's data files uniquely and writes ``.metadata`` last, so a
save over an existing checkpoint leaves the previous one loadable until the
new ``.metadata`` replaces it; afterwards it deletes the files only the
previous checkpoint referenced.  A save killed before its switch leaves data
files nothing references: :func:`delete_orphaned_files` removes them.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import importlib
import io
import logging
import pickle
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import FrozenSet, Iterable, List, Optional, Set, Tuple, Union

from .._client import S3Client
from .._config import S3ClientConfig
from .._exceptions import S3Exception, S3ObjectNotFound
from .._uri import parse_s3_uri

__all__ = ["delete_orphaned_files"]

logger = logging.getLogger(__name__)

DATA_FILE_SUFFIX = ".distcp"
# ".metadata" (one for all ranks) or "__3.metadata" (rank-local, use_collectives=False).
_METADATA_NAME = re.compile(r"(__\d+)?\.metadata")
# What torch's FileSystemWriter (and s3torchconnector) write before renaming them to the above.
_METADATA_TMP_NAME = re.compile(r"(__\d+)?\.metadata\.tmp")
_DELETE_CONCURRENCY = 8
DEFAULT_ORPHAN_AGE = datetime.timedelta(days=1)


class UnreadableMetadata(ValueError):
    """A ``.metadata`` object exists but does not unpickle as a checkpoint's metadata."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles what torch writes to ``.metadata`` and nothing else.

    A save reads the previous ``.metadata`` to find the files to delete after
    its switch: that must not run code a stranger put in the bucket.  Allowed:
    torch.distributed.checkpoint's dataclasses and enums, dtypes, layouts,
    ``torch.Size``, path objects (torch's own writer stores the checkpoint id
    as a ``Path``), ``OrderedDict``.  The module name is checked before it is imported.
    """

    _EXACT = {
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "Path"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._EXACT:
            return super().find_class(module, name)
        if module == "torch":
            import torch

            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                return value
        elif module.startswith("torch.distributed.checkpoint.") and "." not in name:
            value = getattr(importlib.import_module(module), name, None)
            if isinstance(value, type) and (dataclasses.is_dataclass(value) or issubclass(value, enum.Enum)):
                return value
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's .metadata")


def referenced_files(data: bytes) -> FrozenSet[str]:
    """The data files (paths relative to the checkpoint) that a ``.metadata`` object's bytes reference.

    Raises
    ------
    UnreadableMetadata
        If ``data`` is not the pickle of a torch DCP ``Metadata``.
    """
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
        storage = metadata.storage_data
        return frozenset(info.relative_path for info in storage.values())
    except Exception as exc:  # unpickling raises anything from EOFError to TypeError
        raise UnreadableMetadata(f"not a torch.distributed.checkpoint .metadata: {type(exc).__name__}: {exc}") from exc


def read_referenced_files(client: S3Client, bucket: str, key: str) -> Optional[FrozenSet[str]]:
    """The data files the ``.metadata`` at ``s3://bucket/key`` references; None if there is no such object.

    Raises
    ------
    UnreadableMetadata
        If the object is not a checkpoint's ``.metadata``.
    S3Exception
        If it cannot be read (other than not found).
    """
    try:
        with client.get_object(bucket, key) as reader:
            data = reader.read()
    except S3ObjectNotFound:
        return None
    try:
        return referenced_files(data)
    except UnreadableMetadata as exc:
        raise UnreadableMetadata(f"s3://{bucket}/{key} is {exc}") from exc.__cause__


def delete_keys(client: S3Client, bucket: str, keys: Iterable[str]) -> List[Tuple[str, S3Exception]]:
    """Delete ``keys`` (a few at a time); return the ``(key, error)`` of those that failed."""
    keys = list(keys)
    failed: List[Tuple[str, S3Exception]] = []

    def delete(key: str) -> None:
        try:
            client.delete_object(bucket, key)
        except S3ObjectNotFound:
            pass
        except S3Exception as exc:
            failed.append((key, exc))

    if len(keys) == 1:
        delete(keys[0])
    elif keys:
        with ThreadPoolExecutor(min(_DELETE_CONCURRENCY, len(keys)), thread_name_prefix="s3io-dcp-delete") as pool:
            list(pool.map(delete, keys))
    return failed


def _seconds(older_than: Union[float, int, datetime.timedelta]) -> float:
    if isinstance(older_than, datetime.timedelta):
        seconds = older_than.total_seconds()
    elif isinstance(older_than, (int, float)) and not isinstance(older_than, bool):
        seconds = float(older_than)
    else:
        raise TypeError(f"older_than must be a datetime.timedelta or a number of seconds, not {type(older_than).__name__}")
    if not seconds >= 0:
        raise ValueError(f"older_than must not be negative, not {older_than!r}")
    return seconds


def delete_orphaned_files(
    region: str,
    path: str,
    *,
    older_than: Union[float, datetime.timedelta] = DEFAULT_ORPHAN_AGE,
    dry_run: bool = False,
    s3client_config: Optional[S3ClientConfig] = None,
) -> List[str]:
    """Delete the data files under a checkpoint path that its ``.metadata`` does not reference.

    A save killed before it wrote ``.metadata`` (SIGKILL, node loss, a failed
    upload) leaves its data files behind: the checkpoint at ``path`` is still
    the previous one and loads, but those files take storage.  This lists
    ``path``, reads its ``.metadata`` (and any rank-local ``__N.metadata``) and
    deletes every ``.distcp`` file under ``path`` none of them references, plus
    ``.metadata.tmp`` objects torch's own writer leaves when killed.

    Parameters
    ----------
    region : str
        AWS region of the bucket.
    path : str
        ``s3://bucket/prefix`` of the checkpoint (the path given to ``S3StorageWriter``).
    older_than : float or datetime.timedelta, default 1 day
        Only files last modified at least this long ago (seconds, or a
        timedelta) are deleted.  This protects a save in progress, whose
        files are not referenced yet: make it longer than your longest save.
    dry_run : bool, default False
        Delete nothing; return what would be deleted.
    s3client_config : S3ClientConfig, optional
        Client settings (``endpoint_url`` for S3-compatible stores).

    Returns
    -------
    list of str
        The ``s3://`` URIs deleted (with ``dry_run``, that would be deleted), sorted.

    Raises
    ------
    ValueError
        If ``path`` is not an ``s3://`` URI, ``older_than`` is negative, or a
        ``.metadata`` at ``path`` is not a checkpoint's metadata (then nothing
        is deleted).
    TypeError
        If ``older_than`` is neither a number nor a timedelta.
    S3Exception
        If listing, reading or deleting fails (files deleted before stay deleted).

    Notes
    -----
    Checkpoints nested under ``path`` (a folder with its own ``.metadata``)
    are left alone, and so is any object that is not a ``.distcp`` file.
    Run it when no save to ``path`` is in progress, or keep ``older_than``
    above the longest a save takes.  Multipart uploads of killed saves are
    not listed here: a bucket lifecycle rule ``AbortIncompleteMultipartUpload``
    removes them.

    Examples
    --------
    >>> from s3io.dcp import delete_orphaned_files                             # doctest: +SKIP
    >>> delete_orphaned_files("us-east-1", "s3://bucket/ckpt", dry_run=True)    # doctest: +SKIP
    ['s3://bucket/ckpt/__0_9c1e4f0a2b7d5e83_0.distcp']
    """
    from ._filesystem import S3FileSystem

    min_age = _seconds(older_than)
    bucket, prefix = parse_s3_uri(path)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    client = S3FileSystem(region, s3client_config=s3client_config).client
    # List first, read .metadata second: a save that switches in between has its
    # files referenced by what we read, so they are kept.
    objects = [obj for page in client.list_objects(bucket, prefix) for obj in page.object_info]
    referenced: Set[str] = set()
    nested: List[str] = []
    for obj in objects:
        relative = obj.key[len(prefix):]
        folder, _, name = relative.rpartition("/")
        if _METADATA_NAME.fullmatch(name):
            if folder:
                nested.append(folder + "/")
            else:
                referenced |= read_referenced_files(client, bucket, obj.key) or frozenset()
    now = time.time()
    orphans = []
    for obj in objects:
        relative = obj.key[len(prefix):]
        folder, _, name = relative.rpartition("/")
        if relative in referenced or any(relative.startswith(n) for n in nested):
            continue
        if not (name.endswith(DATA_FILE_SUFFIX) or (not folder and _METADATA_TMP_NAME.fullmatch(name))):
            continue
        if now - obj.last_modified >= min_age:
            orphans.append(obj.key)
    orphans.sort()
    uris = [f"s3://{bucket}/{key}" for key in orphans]
    if dry_run:
        for uri in uris:
            logger.info("would delete orphaned %s", uri)
        return uris
    failed = delete_keys(client, bucket, orphans)
    if failed:
        key, error = failed[0]
        raise error
    for uri in uris:
        logger.info("deleted orphaned %s", uri)
    return uris
