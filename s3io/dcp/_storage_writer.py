"""S3StorageWriter: torch's ``FileSystemWriter`` writing a checkpoint to S3."""
from __future__ import annotations

import dataclasses
import os
import warnings
from contextlib import contextmanager
from typing import List, Optional, Union

from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.futures import Future

from .._config import S3ClientConfig
from ._filesystem import S3FileSystem, StorageMetadata
from .s3_prefix_strategy import DefaultPrefixStrategy, S3PrefixStrategyBase

__all__ = ["S3StorageWriter"]

class _ErrorRecordingFileSystem:
    """Forwards to an S3FileSystem and records exceptions raised while writing a file.

    torch runs the extra writer threads without collecting their exceptions;
    this lets :meth:`S3StorageWriter.write_data` see them and fail the save.
    """

    def __init__(self, fs: S3FileSystem, errors: List[BaseException]) -> None:
        self._fs = fs
        self._errors = errors

    def __getattr__(self, name: str):
        return getattr(self._fs, name)

    @contextmanager
    def create_stream(self, path, mode):
        try:
            with self._fs.create_stream(path, mode) as stream:
                yield stream
        except BaseException as exc:
            self._errors.append(exc)
            raise


class S3StorageWriter(FileSystemWriter):
    """S3 implementation of PyTorch's ``FileSystemWriter`` for distributed checkpoints.

    Parameters
    ----------
    region : str
        AWS region of the bucket.
    path : str
        ``s3://bucket/prefix`` to write the checkpoint under.
    s3client_config : S3ClientConfig, optional
        Client settings (``endpoint_url`` for S3-compatible stores).
    prefix_strategy : S3PrefixStrategyBase, optional
        Names each rank's files; defaults to ``DefaultPrefixStrategy`` (``__{rank}_``).
    thread_count : int, default 1
        Files written in parallel per rank (each thread writes its own file).
    **kwargs
        Passed to torch's ``FileSystemWriter`` (``sync_files`` is ignored:
        syncing does not apply to S3 and torch would fall back to ``os.sync()``).

    Notes
    -----
    ``.metadata`` is written by ``finish()`` only after every rank's data
    succeeded; a failed upload in any writer thread fails the save.
    """

    def __init__(
        self,
        region: str,
        path: str,
        s3client_config: Optional[S3ClientConfig] = None,
        prefix_strategy: Optional[S3PrefixStrategyBase] = None,
        thread_count: int = 1,
        **kwargs,
    ) -> None:
        if kwargs.pop("sync_files", False):
            warnings.warn("S3StorageWriter ignores sync_files=True: S3 objects need no fsync", stacklevel=2)
        super().__init__(path=path, sync_files=False, thread_count=thread_count, **kwargs)
        self.fs = S3FileSystem(region, s3client_config=s3client_config)  # type: ignore[assignment]
        self.path = self.fs.init_path(path)
        self.prefix_strategy = prefix_strategy or DefaultPrefixStrategy()
        self.sync_files = False

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        """Stamp each rank's plan with ``StorageMetadata(prefix_strategy(rank))``.

        Runs on the coordinator before any rank writes data.  When the path
        already holds a checkpoint, its ``.metadata`` is deleted here: the
        new data files may overwrite the old ones, and if this save fails
        half-way an old ``.metadata`` would describe files that no longer hold
        what it says.  ``finish()`` writes the new one after all data succeeded.
        """
        metadata_path = self._get_metadata_path()
        if self.fs.exists(metadata_path):
            self.fs.rm_file(metadata_path)
        return [
            dataclasses.replace(plan, storage_data=StorageMetadata(self.prefix_strategy(rank)))
            for rank, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        """Write this rank's files; raise if any writer thread failed."""
        errors: List[BaseException] = []
        fs = self.fs
        self.sync_files = False
        self.fs = _ErrorRecordingFileSystem(fs, errors)  # type: ignore[assignment]
        try:
            future = super().write_data(plan, planner)
        finally:
            self.fs = fs
        if errors:
            raise errors[0]
        results = future.value()
        if len(results) != len(plan.items):
            raise RuntimeError(
                f"checkpoint write to {self.path} incomplete: {len(results)} of {len(plan.items)} items written"
            )
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        """True for ``s3://`` URIs."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)
