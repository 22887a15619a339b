"""S3HuggingFaceStorageReader: torch's ``HuggingFaceStorageReader`` loading safetensors files from S3."""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Union

import torch
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.futures import Future

from .._config import S3ClientConfig
from .._handle import ObjectHandle
from .._uri import parse_s3_uri
from ..safetensors._files import SafetensorsFile, open_files
from ..safetensors._format import SafetensorsError
from ._filesystem import S3FileSystem
from ._hf_layout import SafetensorsStorageInfo, saved_offsets
from ._hf_load import HFConsumer, group_pieces
from ._load_plan import DEFAULT_MAX_INFLIGHT_BYTES, LoadFile, LoadSettings
from ._load_schedule import load_files
from ._safetensors_settings import check_inflight_bytes, load_settings

__all__ = ["S3HuggingFaceStorageReader"]

log = logging.getLogger(__name__)

THREAD_NAME_PREFIX = "s3io-hf-load"


class S3HuggingFaceStorageReader(FileSystemReader):
    """Loads a Hugging Face safetensors checkpoint from S3 with ``dcp.load``: torch's ``HuggingFaceStorageReader`` on S3.

    ``path`` is a directory of ``*.safetensors`` files: the shards its
    ``model.safetensors.index.json`` names, else every ``*.safetensors``
    object directly in it (files written by torch's or s3io's Hugging Face
    writer, by ``safetensors.torch.save_file``, or downloaded from the Hub).
    ``read_metadata`` reads each file's header (one ranged GET, in
    parallel); ``read_data`` fetches only the byte ranges of this rank's
    items, DTensor shards included, with concurrent ranged GETs across all
    files into a bounded ring of buffers, and tensors of at least 1 MiB whose
    destination is a contiguous CPU tensor of the stored dtype straight into
    it.  Every GET of a file is pinned to the version whose header was read.

    dtypes follow torch's reader: the metadata has each tensor's stored
    dtype, and a destination of another dtype receives ``copy_`` of the
    stored values (converted).  Files with ``DCP_SHARDING_INFO`` (saved with
    ``save_distributed=True``) give one chunk per file.

    Parameters
    ----------
    region : str
        AWS region of the bucket.
    path : str or os.PathLike
        ``s3://bucket/prefix`` of the checkpoint directory.
    s3client_config : S3ClientConfig, optional
        Client settings (``endpoint_url`` for S3-compatible stores).
    max_inflight_bytes : int, optional
        Keyword-only.  Memory for fetched bytes not yet copied into their
        destinations (default 128 MiB, one buffer reused for the whole load),
        from 4 MiB up to the machine's memory.  Tensors fetched straight into
        their destination need none.
    max_concurrency : int, optional
        Keyword-only.  Concurrent ranged GETs (default: the client's
        ``max_concurrency``, at most 4 per CPU and 16).

    Raises
    ------
    ValueError, TypeError
        A bad ``path``, ``max_inflight_bytes`` or ``max_concurrency``.

    Notes
    -----
    A shard along a later dimension (``Shard(1)``) is fetched as one range
    per contiguous run when the gaps between runs are wider than 256 KiB,
    else as the range from its first byte to its last.
    """

    def __init__(
        self,
        region: str,
        path: Union[str, os.PathLike],
        s3client_config: Optional[S3ClientConfig] = None,
        *,
        max_inflight_bytes: Optional[int] = None,
        max_concurrency: Optional[int] = None,
    ) -> None:
        inflight = check_inflight_bytes(DEFAULT_MAX_INFLIGHT_BYTES if max_inflight_bytes is None else max_inflight_bytes)
        super().__init__(path)
        self.fs: S3FileSystem = S3FileSystem(region, s3client_config=s3client_config)  # type: ignore[assignment]
        self.path = self.fs.init_path(path)
        self._settings = load_settings(self.fs.client.s3client_config, inflight, max_concurrency)
        # The files read_metadata opened: their handles are pinned to the headers' versions.
        self._handles: Dict[str, ObjectHandle] = {}

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        """True for ``s3://`` URIs."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)

    def reset(self, checkpoint_id: Union[str, os.PathLike, None] = None) -> None:
        """Forget the files of the previous load; point at ``checkpoint_id`` if given."""
        super().reset(checkpoint_id)
        self._handles = {}

    @property
    def load_settings(self) -> LoadSettings:
        """How :meth:`read_data` uses the network and memory."""
        return self._settings

    def _directory(self) -> str:
        return self.fs.concat_path(self.path, "")

    def read_metadata(self) -> Metadata:
        """Read every file's header and build the checkpoint's metadata, as torch's reader does.

        Raises
        ------
        SafetensorsError
            A malformed file, index or ``DCP_SHARDING_INFO``; one chunk of a tensor in two files.
        S3ObjectNotFound, S3BucketNotFound, S3Exception
            No safetensors at ``path``, a shard the index names is missing, or a request failed.
        """
        files = open_files(self.fs.client, self._directory(), self._settings.max_concurrency)
        self._handles = {file.name: file.handle for file in files}
        state_dict_metadata: Dict[str, TensorStorageMetadata] = {}
        storage_data: Dict[MetadataIndex, SafetensorsStorageInfo] = {}
        chunk_files: Dict[MetadataIndex, str] = {}
        for file in files:
            self._add_file(file, state_dict_metadata, storage_data, chunk_files)
        metadata = Metadata(state_dict_metadata=state_dict_metadata, storage_data=storage_data)  # type: ignore[arg-type]
        metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    @staticmethod
    def _add_file(file: SafetensorsFile, state_dict_metadata, storage_data, chunk_files) -> None:
        offsets = saved_offsets(file.header)
        for name, info in file.header.tensors.items():
            offset = offsets[name]
            index = MetadataIndex(fqn=name, offset=offset)
            other = chunk_files.setdefault(index, file.uri)
            if other != file.uri:
                raise SafetensorsError(
                    f"tensor {name!r} at offsets {offset} is stored in both {other} and {file.uri}"
                )
            storage_data[index] = SafetensorsStorageInfo(file.name, info.start, info.nbytes, torch.Size(info.shape),
                                                         info.dtype)
            chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=torch.Size(info.shape))
            entry = state_dict_metadata.get(name)
            extent = torch.Size(o + n for o, n in zip(offset, info.shape))
            if entry is None:
                state_dict_metadata[name] = TensorStorageMetadata(
                    properties=TensorProperties(dtype=info.dtype), size=extent, chunks=[chunk]
                )
            else:
                if len(entry.size) != len(extent):
                    raise SafetensorsError(
                        f"{file.uri}: tensor {name!r} has {len(extent)} dimensions here and {len(entry.size)} elsewhere"
                    )
                entry.chunks.append(chunk)
                entry.size = torch.Size(max(a, b) for a, b in zip(entry.size, extent))

    def _handle(self, relative_path: str) -> ObjectHandle:
        handle = self._handles.get(relative_path)
        if handle is None:  # metadata from elsewhere: pin at the first response
            bucket, key = parse_s3_uri(self.fs.concat_path(self.path, relative_path))
            handle = self._handles[relative_path] = self.fs.client.object_handle(bucket, key)
        return handle

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        """Load this rank's items into the planner's state dict (see the class docstring)."""
        settings = self._settings
        by_file = group_pieces(plan.items, self.storage_data, int(settings.max_gap_size))
        files = [LoadFile(self._handle(path), items) for path, items in by_file.items()]
        consumer = HFConsumer(planner)
        for file in files:
            for item in file.items:
                consumer.mark_direct(item)
        stats = load_files(files, consumer, settings, thread_name_prefix=THREAD_NAME_PREFIX)
        log.debug("loaded %d files of %s: %d items straight into their destination, at most %d bytes buffered",
                  len(files), self.path, stats.direct_items, stats.peak_inflight_bytes)
        future: Future = Future()
        future.set_result(None)
        return future
