"""S3StorageReader: torch's ``FileSystemReader`` loading a checkpoint from S3."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Union

from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.futures import Future

from .._config import S3ClientConfig
from .._uri import parse_s3_uri
from ..s3reader.dcp_optimized import DCPOptimizedConstructor
from ._filesystem import S3FileSystem
from ._load_plan import DEFAULT_MAX_INFLIGHT_BYTES, LoadFile, LoadSettings
from ._load_torch import TorchItem, load_into_planner, stored_items_by_file

__all__ = ["S3StorageReader"]

log = logging.getLogger(__name__)

_MIN_LOAD_PART_SIZE = 16 * 1024 * 1024
# The pipeline skips gaps wider than this even when max_gap_size allows more:
# with parallel ranged GETs a new request costs less than streaming a few MiB
# of unneeded bytes (30% partial load of the bench: 4 MiB 0.73 s, 32 MiB 1.05 s).
_MAX_LOAD_GAP_SIZE = 4 * 1024 * 1024


class S3StorageReader(FileSystemReader):
    """S3 implementation of PyTorch's ``FileSystemReader`` with configurable reader strategies.

    With the default reader constructor (``S3ReaderConstructor.dcp_optimized()``)
    :meth:`read_data` runs s3io's load pipeline: all of this rank's items are
    coalesced per file (gaps up to ``min(max_gap_size, 4 MiB)``: a new ranged
    GET is cheaper than more unneeded bytes) and fetched with concurrent ranged
    GETs across all files while earlier items are deserialized and committed,
    with the memory in flight capped; large tensors whose saved layout matches
    their destination are fetched straight into it (from 16 MiB: see
    ``s3io.dcp._load_torch.DIRECT_MIN_BYTES``).  Other constructors
    (``sequential()``, ``range_based()``) read file by file through
    :meth:`S3FileSystem.create_stream`, like torch.

    Parameters
    ----------
    region : str
        AWS region of the bucket.
    path : str or os.PathLike
        ``s3://bucket/prefix`` of the checkpoint.
    s3client_config : S3ClientConfig, optional
        Client settings (``endpoint_url`` for S3-compatible stores).
    reader_constructor : optional
        Defaults to ``S3ReaderConstructor.dcp_optimized()``.
    max_inflight_bytes : int, optional
        Keyword-only. Memory for fetched bytes not yet committed (default
        128 MiB, one buffer reused for the whole load).  Tensors whose saved
        layout matches their destination are fetched straight into it and
        need none; a single item larger than the cap gets a buffer of its own.
    max_concurrency : int, optional
        Keyword-only. Concurrent ranged GETs (default: the client's
        ``max_concurrency``, at most 4 per CPU and 16).

    Raises
    ------
    ValueError
        If ``max_inflight_bytes`` or ``max_concurrency`` is not positive.
    """

    def __init__(
        self,
        region: str,
        path: Union[str, os.PathLike],
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor=None,
        *,
        max_inflight_bytes: Optional[int] = None,
        max_concurrency: Optional[int] = None,
    ) -> None:
        for name, value in (("max_inflight_bytes", max_inflight_bytes), ("max_concurrency", max_concurrency)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        super().__init__(path)
        self._reader_constructor = reader_constructor if reader_constructor is not None else DCPOptimizedConstructor()
        self.fs: S3FileSystem = S3FileSystem(  # type: ignore[assignment]
            region, s3client_config=s3client_config, reader_constructor=self._reader_constructor
        )
        self.path = self.fs.init_path(path)
        self.sync_files = False
        self._max_inflight_bytes = DEFAULT_MAX_INFLIGHT_BYTES if max_inflight_bytes is None else max_inflight_bytes
        self._max_concurrency = max_concurrency
        # The stored items of the plan prepare_local_plan saw (its ReadItems, items per file).
        self._planned: Optional[tuple] = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        """True for ``s3://`` URIs."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """Sort the plan's items by storage offset and inject each file's item ranges.

        Both are required by ``DCPOptimizedS3Reader``.  With
        ``DCPOptimizedConstructor`` the stored items are grouped here, once:
        their ranges go to the constructor and the items to :meth:`read_data`.
        """
        plan.items.sort(key=lambda item: self.storage_data[item.storage_index].offset)
        if isinstance(self._reader_constructor, DCPOptimizedConstructor):
            by_file = stored_items_by_file(plan.items, self.storage_data)
            self._planned = (plan.items, by_file)
            self._reader_constructor.set_item_ranges(
                {self._uri(path): [item.range for item in items] for path, items in by_file.items()}
            )
        else:
            setter = getattr(self._reader_constructor, "set_item_ranges_by_file", None)
            if setter is not None:
                setter(plan.items, self.storage_data, self.path)
        return plan

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        """Load this rank's items into the planner's state dict."""
        if not isinstance(self._reader_constructor, DCPOptimizedConstructor):
            return super().read_data(plan, planner)
        client = self.fs.client
        files = [
            LoadFile(client.object_handle(*parse_s3_uri(self._uri(path))), items)
            for path, items in self._stored_items(plan).items()
        ]
        self._planned = None  # the items hold destinations while loading: keep them no longer
        stats = load_into_planner(files, planner, getattr(self, "transforms", None), self._load_settings())
        log.debug("loaded %d files of %s: %d items straight into their destination, at most %d bytes buffered",
                  len(files), self.path, stats.direct_items, stats.peak_inflight_bytes)
        future: Future = Future()
        future.set_result(None)
        return future

    def _uri(self, relative_path: str) -> str:
        return self.fs.concat_path(self.path, relative_path)

    def _stored_items(self, plan: LoadPlan) -> Dict[str, List[TorchItem]]:
        """The items prepare_local_plan grouped, unless the global plan changed this rank's plan."""
        if self._planned is not None:
            items, by_file = self._planned
            if items is plan.items or items == plan.items:
                return by_file
        return stored_items_by_file(plan.items, self.storage_data)

    def _load_settings(self) -> LoadSettings:
        constructor: DCPOptimizedConstructor = self._reader_constructor  # type: ignore[assignment]
        config = self.fs.client.s3client_config
        # More fetch threads than ~4 per core only add GIL contention with the
        # thread that deserializes (measured: 2 cores, 13 threads starve it).
        concurrency = self._max_concurrency or min(config.max_concurrency or 8, 4 * (os.cpu_count() or 1), 16)
        return LoadSettings(
            max_gap_size=min(constructor.max_gap_size, _MAX_LOAD_GAP_SIZE),
            max_inflight_bytes=self._max_inflight_bytes,
            # Fewer, larger GETs: each costs ~1.3 ms of client CPU on top of the bytes.
            part_size=max(config.part_size, _MIN_LOAD_PART_SIZE),
            max_concurrency=concurrency,
        )
