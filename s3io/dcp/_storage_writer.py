"""S3StorageWriter: torch's ``FileSystemWriter`` writing a checkpoint to S3."""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import pickle
import queue
import threading
import uuid
import warnings
from typing import FrozenSet, List, Optional, Union

import torch.distributed.checkpoint.filesystem as torch_filesystem
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .._config import S3ClientConfig
from .._uri import parse_s3_uri
from ._checkpoint_files import UnreadableMetadata, delete_keys, read_referenced_files
from ._filesystem import S3FileSystem, StorageMetadata
from .s3_prefix_strategy import DefaultPrefixStrategy, S3PrefixStrategyBase

__all__ = ["S3StorageWriter"]

logger = logging.getLogger(__name__)

_write_files_from_queue = torch_filesystem._write_files_from_queue
# Arguments of torch's file-writing loop differ between torch releases: pass the ones it takes.
_WRITE_FILES_PARAMETERS = frozenset(inspect.signature(_write_files_from_queue).parameters)
# 64 random bits: the chance that two saves to one path draw the same name is nil.
_SAVE_TOKEN_HEX_DIGITS = 16


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
    A save over an existing checkpoint never leaves ``path`` without a
    loadable one.  Each save names its data files
    ``{prefix_strategy(rank)}{token}_{n}.distcp``, with a token drawn for that
    save, so they never replace the files of the checkpoint being
    overwritten.  ``finish()`` writes ``.metadata`` with a single PUT, only
    after every rank's data succeeded: that PUT is the switch, and a reader
    sees either the previous ``.metadata`` or the new one.  After the switch
    the coordinator deletes the data files only the previous checkpoint
    referenced.  A save killed before its switch leaves the previous checkpoint
    loadable and its own data files unreferenced:
    :func:`s3io.dcp.delete_orphaned_files` removes them.  One save at a time per path.
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
        self._is_coordinator = False
        # Data files of the checkpoint this save replaces: deleted after the switch.
        self._previous_files: FrozenSet[str] = frozenset()

    def set_up_storage_writer(self, is_coordinator: bool, *args, **kwargs) -> None:
        """Note the rank, and whether this rank writes ``.metadata`` (the coordinator)."""
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        self._is_coordinator = is_coordinator

    def _writes_own_metadata(self) -> bool:
        # use_collectives=False: every rank writes its own __{rank}.metadata.
        return not getattr(self, "use_collectives", True) and getattr(self, "rank", None) is not None

    def _switch_path(self) -> Union[str, os.PathLike]:
        """The ``.metadata`` this writer's ``finish()`` writes."""
        return self._get_metadata_path(self.rank if self._writes_own_metadata() else None)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Read the ``.metadata`` this save will replace, on the rank that writes it (one GET).

        torch sends a HEAD from every rank to find out whether a checkpoint
        exists; here only the coordinator looks, and reads it: it needs the
        previous checkpoint's file list to delete those files after the switch.

        Raises
        ------
        RuntimeError
            If a checkpoint exists at the path and ``overwrite`` is False
            (every rank's save fails with it).
        """
        self._previous_files = frozenset()
        if self._is_coordinator or self._writes_own_metadata():
            bucket, key = parse_s3_uri(os.fspath(self._switch_path()))
            try:
                files = read_referenced_files(self.fs.client, bucket, key)
            except UnreadableMetadata as exc:
                logger.warning("%s; its data files are not deleted after this save (see delete_orphaned_files)", exc)
                files = frozenset()
            if files is not None and not getattr(self, "overwrite", True):
                raise RuntimeError(f"Checkpoint already exists and {self.overwrite=}.")
            self._previous_files = files or frozenset()
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        """Stamp each rank's plan with ``StorageMetadata(prefix_strategy(rank) + token + "_")``.

        Runs on the coordinator before any rank writes data.  The token is new
        for every save, so no data file of this save has the name of a file
        the checkpoint at the path (or a killed save) holds.
        """
        token = uuid.uuid4().hex[:_SAVE_TOKEN_HEX_DIGITS]
        ranks = [self.rank] if self._writes_own_metadata() else range(len(plans))
        return [
            dataclasses.replace(plan, storage_data=StorageMetadata(f"{self.prefix_strategy(rank)}{token}_"))
            for rank, plan in zip(ranks, plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        """Write this rank's files; raise the first error of any writer thread."""
        self.sync_files = False
        future = super().write_data(plan, planner)
        results = future.value()
        if len(results) != len(plan.items):
            raise RuntimeError(
                f"checkpoint write to {self.path} incomplete: {len(results)} of {len(plan.items)} items written"
            )
        return future

    def _write_data(self, planner: SavePlanner, file_queue: queue.Queue) -> Future:
        # torch's version starts thread_count - 1 threads that die with an
        # unhandled exception (printed to stderr, lost to the save) and does not
        # wait for them when the calling thread's file fails.  Here every
        # thread's error is kept, the remaining files are dropped from the queue
        # at the first error, all threads are joined, then the first error raised.
        result_queue: queue.Queue = queue.Queue()
        errors: List[BaseException] = []
        arguments = dict(
            create_stream=self.fs.create_stream,
            file_queue=file_queue,
            result_queue=result_queue,
            planner=planner,
            transforms=getattr(self, "transforms", None),
            inflight_threshhold=self.per_thread_copy_ahead,
            use_fsync=False,
            thread_count=self.thread_count,
            serialization_format=getattr(self, "serialization_format", None),
        )
        arguments = {name: value for name, value in arguments.items() if name in _WRITE_FILES_PARAMETERS}

        def write_files() -> None:
            try:
                _write_files_from_queue(**arguments)
            except BaseException as exc:
                errors.append(exc)
                _drain(file_queue)

        threads = [
            threading.Thread(target=write_files, name=f"s3io-dcp-save-{n}")
            for n in range(1, self.thread_count)
        ]
        for thread in threads:
            thread.start()
        write_files()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        results: List[WriteResult] = []
        while not result_queue.empty():
            results += result_queue.get_nowait()
        future: Future = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        """Write ``.metadata`` with one PUT (the switch), then delete the files only the previous checkpoint used.

        Unlike torch's ``finish`` (write ``.metadata.tmp``, delete
        ``.metadata``, rename), there is no moment without a ``.metadata``.
        A failure to delete an old file is logged, not raised: the new
        checkpoint is complete, and :func:`s3io.dcp.delete_orphaned_files`
        removes what is left.
        """
        version = getattr(torch_filesystem, "CURRENT_DCP_VERSION", None)
        if version is not None:
            metadata.version = version
        metadata.storage_data = {result.index: result.storage_data for rank in results for result in rank}
        metadata.storage_meta = self.storage_meta()
        with self.fs.create_stream(self._switch_path(), "wb") as stream:
            pickle.dump(metadata, stream)
        previous, self._previous_files = self._previous_files, frozenset()
        stale = sorted(previous - {info.relative_path for info in metadata.storage_data.values()})
        if not stale:
            return
        bucket, _ = parse_s3_uri(os.fspath(self.path))
        keys = [parse_s3_uri(self.fs.concat_path(self.path, name))[1] for name in stale]
        for key, error in delete_keys(self.fs.client, bucket, keys):
            logger.warning(
                "the checkpoint at %s is saved, but its previous data file s3://%s/%s was not deleted (%s);"
                " s3io.dcp.delete_orphaned_files removes it",
                self.path,
                bucket,
                key,
                error,
            )

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        """True for ``s3://`` URIs."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)


def _drain(file_queue: queue.Queue) -> None:
    """Drop the files no thread has taken yet: the save has failed."""
    try:
        while True:
            file_queue.get_nowait()
    except queue.Empty:
        pass
