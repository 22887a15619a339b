"""S3FileSystem: torch's ``FileSystemBase`` over S3, and the client the DCP classes of one process share."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Generator, Optional, Union

from torch.distributed.checkpoint.filesystem import FileSystemBase

from .._client import S3Client
from .._config import S3ClientConfig
from .._exceptions import S3Exception, S3ObjectNotFound
from .._uri import parse_s3_uri

__all__ = ["S3FileSystem", "StorageMetadata", "shared_client"]

logger = logging.getLogger(__name__)

_DELETE_ATTEMPTS = 3


def _path_str(path: Union[str, os.PathLike]) -> str:
    return path if isinstance(path, str) else os.fspath(path)


class S3FileSystem(FileSystemBase):
    """S3-based implementation of PyTorch's ``FileSystemBase`` for distributed checkpointing.

    Parameters
    ----------
    region : str
        AWS region of the bucket.
    s3_client : S3Client, optional
        Client to use; created from ``region`` and ``s3client_config`` if None.
    s3client_config : S3ClientConfig, optional
        Client settings, including ``endpoint_url`` for S3-compatible stores
        (``AWS_ENDPOINT_URL_S3`` works too).
    reader_constructor : callable, optional
        Reader constructor for :meth:`create_stream` in ``"rb"`` mode, e.g.
        ``S3ReaderConstructor.sequential()``. Defaults to the sequential reader.
    """

    def __init__(
        self,
        region: str,
        s3_client: Optional[S3Client] = None,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor=None,
    ) -> None:
        self._path: Union[str, os.PathLike] = ""
        self._region = region
        self._s3client_config = s3client_config
        self._reader_constructor = reader_constructor
        self._own_client = s3_client is None
        self._client = s3_client if s3_client is not None else self._make_client()

    def _make_client(self) -> S3Client:
        return shared_client(self._region, self._s3client_config, _user_agent(self._reader_constructor))

    # A writer is pickled for async/process-based saves: a client we created
    # is recreated on the other side rather than pickled.
    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        if self._own_client:
            state["_client"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._client is None:
            self._client = self._make_client()

    @property
    def client(self) -> S3Client:
        """The S3Client used for all requests."""
        return self._client

    @contextmanager
    def create_stream(self, path: Union[str, os.PathLike], mode: str) -> Generator[io.IOBase, None, None]:
        """Open an object for reading or writing.

        Parameters
        ----------
        path : str or os.PathLike
            ``s3://bucket/key``.
        mode : str
            ``"rb"`` (an S3Reader from the reader constructor) or ``"wb"`` (an
            S3Writer; the object appears only when the block exits without error).

        Yields
        ------
        io.BufferedIOBase

        Raises
        ------
        ValueError
            If ``mode`` is not ``"rb"`` or ``"wb"``.
        """
        if mode not in ("rb", "wb"):
            raise ValueError(f"Invalid mode={mode!r} argument: create_stream only supports rb (read mode) & wb (write mode)")
        bucket, key = parse_s3_uri(_path_str(path))
        if mode == "wb":
            with self._client.put_object(bucket, key) as stream:
                yield stream
        else:
            stream = self._client.get_object(bucket, key, reader_constructor=self._reader_constructor)
            try:
                yield stream
            finally:
                stream.close()

    def concat_path(self, path: Union[str, os.PathLike], suffix: str) -> str:
        """Return ``path/suffix``."""
        base = _path_str(path)
        return base + suffix if base.endswith("/") else f"{base}/{suffix}"

    def init_path(self, path: Union[str, os.PathLike]) -> Union[str, os.PathLike]:
        """Check that ``path`` is an ``s3://bucket[/prefix]`` URI and return it (nothing to create on S3).

        Raises
        ------
        ValueError
            If ``path`` is not an ``s3://`` URI with a bucket name.
        """
        # Checked here, not at the first request: torch calls init_path from the
        # storage classes' constructors and from reset(checkpoint_id).
        parse_s3_uri(_path_str(path))
        self._path = path
        return path

    def rename(self, old_path: Union[str, os.PathLike], new_path: Union[str, os.PathLike]) -> None:
        """Copy ``old_path`` to ``new_path``, then delete ``old_path`` (retried).

        Raises
        ------
        ValueError
            If the paths are in different buckets.
        S3Exception
            If the copy or the delete fails.
        """
        old_bucket, old_key = parse_s3_uri(_path_str(old_path))
        new_bucket, new_key = parse_s3_uri(_path_str(new_path))
        if old_bucket != new_bucket:
            raise ValueError(
                "Source and destination buckets cannot be different (rename does not support cross-buckets operations)"
            )
        self._client.copy_object(old_bucket, old_key, new_bucket, new_key)
        self._delete_with_retry(old_bucket, old_key)

    def _delete_with_retry(self, bucket: str, key: str) -> None:
        for attempt in range(1, _DELETE_ATTEMPTS + 1):
            try:
                self._client.delete_object(bucket, key)
                return
            except S3ObjectNotFound:
                return
            except S3Exception:
                if attempt == _DELETE_ATTEMPTS:
                    logger.error("deleting s3://%s/%s failed %d times", bucket, key, attempt)
                    raise
                delay = random.uniform(0, min(5.0, 0.5 * 2**attempt))
                logger.warning("deleting s3://%s/%s failed; retrying in %.2fs", bucket, key, delay)
                time.sleep(delay)

    def mkdir(self, path: Union[str, os.PathLike]) -> None:
        """No-op: S3 has no directories."""

    def exists(self, path: Union[str, os.PathLike]) -> bool:
        """True if the object exists; False only if S3 says it is not found."""
        bucket, key = parse_s3_uri(_path_str(path))
        try:
            self._client.head_object(bucket, key)
        except S3ObjectNotFound:
            return False
        except S3Exception as exc:
            if getattr(exc, "status", None) == 404 and type(exc) is S3Exception:
                return False  # HEAD has no body, so a 404 carries no NoSuchKey code
            raise
        return True

    def rm_file(self, path: Union[str, os.PathLike]) -> None:
        """Delete the object (deleting a missing object is not an error)."""
        bucket, key = parse_s3_uri(_path_str(path))
        try:
            self._client.delete_object(bucket, key)
        except S3ObjectNotFound:
            pass

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        """True if ``checkpoint_id`` is an ``s3://bucket/...`` URI."""
        if isinstance(checkpoint_id, Path):
            return False  # a Path cannot hold "s3://" (it collapses the "//")
        try:
            text = _path_str(checkpoint_id)
        except TypeError:
            return False
        if not isinstance(text, str) or not text.startswith("s3://"):
            return False
        try:
            parse_s3_uri(text)
        except ValueError:
            return False
        return True


_CLIENTS: "OrderedDict[tuple, S3Client]" = OrderedDict()
_CLIENTS_LOCK = threading.Lock()
_CLIENT_CACHE_SIZE = 8
# What the client's credential and endpoint look-up reads from the environment:
# a change there must give a new client.
_CLIENT_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


def shared_client(region: str, config: Optional[S3ClientConfig], user_agent: str) -> S3Client:
    """An S3Client shared by the readers and writers of one process (and by ``s3io.safetensors``).

    Building the boto3 client behind an S3Client takes ~75 ms; every
    ``dcp.save``/``dcp.load`` creates a new storage writer/reader, so without
    sharing each checkpoint operation would pay it again (and open new
    connections).  S3Client is thread-safe and re-creates its connections
    after a fork.
    """
    env = tuple(hashlib.sha256(os.environ.get(name, "").encode()).hexdigest() for name in _CLIENT_ENV)
    key = (region, config, user_agent, env)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = S3Client(region, s3client_config=config, user_agent=user_agent)
            _CLIENTS[key] = client
            while len(_CLIENTS) > _CLIENT_CACHE_SIZE:
                _CLIENTS.popitem(last=False)
        else:
            _CLIENTS.move_to_end(key)
        return client


def _user_agent(reader_constructor) -> str:
    import torch

    name = type(reader_constructor).__name__ if reader_constructor is not None else "default"
    return f"s3io-dcp torch/{torch.__version__} md/reader_type#{name}"


@dataclass
class StorageMetadata:
    """Metadata for S3 storage prefix: the key prefix of one rank's files."""

    prefix: str
