"""S3HuggingFaceStorageWriter: torch's ``HuggingFaceStorageWriter`` writing safetensors files to S3."""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .._config import S3ClientConfig
from ..safetensors._format import SafetensorsError, build_header, dtype_name
from ._filesystem import S3FileSystem
from ._hf_layout import INDEX_NAME, SafetensorsStorageInfo, data_file_name, index_json, sharding_metadata
from ._load_torch import tensor_bytes

__all__ = ["S3HuggingFaceStorageWriter"]

logger = logging.getLogger(__name__)

_MAPPING_KEY = "fqn_to_index_mapping"
_SHARD_KEY = "shard_index"


class _Abandoned(Exception):
    """Another file of the save failed: this one is discarded unwritten."""


class S3HuggingFaceStorageWriter(FileSystemWriter):
    """Saves a state dict of tensors to S3 as Hugging Face safetensors with ``dcp.save``: torch's ``HuggingFaceStorageWriter`` on S3.

    The files are ``model-00001-of-0000N.safetensors`` (the file of each
    tensor from ``fqn_to_index_mapping``, else one file), plus
    ``model.safetensors.index.json`` naming each tensor's file, written last;
    they load with ``safetensors.torch.load_file`` after download, with
    :class:`S3HuggingFaceStorageReader`, and with :func:`s3io.safetensors.load`.
    Each file is streamed to S3 as it is built (header, then each tensor's
    bytes), never held whole in memory.

    Parameters
    ----------
    region : str
        AWS region of the bucket.
    path : str
        ``s3://bucket/prefix`` of the checkpoint directory.
    fqn_to_index_mapping : dict of str to int, optional
        The file (1 to N) of each tensor.  None: every tensor in one file.
    thread_count : int, default 1
        Files written in parallel (each file is a parallel multipart upload already).
    s3client_config : S3ClientConfig, optional
        Client settings (``endpoint_url`` for S3-compatible stores).
    save_distributed : bool, default False
        Keyword-only.  Every rank writes its own shards
        (``shard-0000R-model-...``, R the rank + 1, with each shard's offsets in
        the file's ``DCP_SHARDING_INFO``) and no index is written, as torch
        does.  False expects the whole state dict on one rank (rank-0
        checkpointing), as torch's writer does.
    enable_consolidation : bool, default False
        Keyword-only.  Not supported on S3: raises ``ValueError`` if True.

    Raises
    ------
    ValueError
        ``fqn_to_index_mapping`` has an index below 1, ``thread_count`` is not
        positive, or ``enable_consolidation`` is set.

    Notes
    -----
    A failed save raises one error (the first, whichever thread it came
    from) and leaves no half-written object: a file appears only once all of
    it is uploaded, and the files not yet complete are discarded.  Files
    completed before the failure stay, and the index is written only after
    every rank's files are complete.  Hugging Face file names are fixed, so
    a save over an existing checkpoint replaces its files one by one: load
    it only after the save returned.  Non-tensor values (``"step": 3``)
    cannot be stored in safetensors: the save fails before writing anything.
    """

    def __init__(
        self,
        region: str,
        path: str,
        fqn_to_index_mapping: Optional[Dict[str, int]] = None,
        thread_count: int = 1,
        s3client_config: Optional[S3ClientConfig] = None,
        *,
        save_distributed: bool = False,
        enable_consolidation: bool = False,
    ) -> None:
        if enable_consolidation:
            raise ValueError(
                "enable_consolidation is not supported on S3: save with save_distributed=True and consolidate a"
                " downloaded copy with torch.distributed.checkpoint's consolidate_safetensors_files, or save a full"
                " state dict from one rank"
            )
        if isinstance(thread_count, bool) or not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be a positive int, not {thread_count!r}")
        if fqn_to_index_mapping is not None:
            bad = {fqn: n for fqn, n in fqn_to_index_mapping.items()
                   if isinstance(n, bool) or not isinstance(n, int) or n < 1}
            if bad:
                raise ValueError(f"fqn_to_index_mapping must map to file indices from 1, not {bad}")
        super().__init__(path=path, sync_files=False, thread_count=thread_count)
        self.fs = S3FileSystem(region, s3client_config=s3client_config)  # type: ignore[assignment]
        self.path = self.fs.init_path(path)
        self.sync_files = False
        self.fqn_to_index_mapping = fqn_to_index_mapping
        self.save_distributed = save_distributed

    @property
    def metadata_path(self) -> str:
        """The index file's name."""
        return INDEX_NAME

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        """True for ``s3://`` URIs."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Check that every item can be saved (before anything is written).

        Raises
        ------
        SafetensorsError
            An item is not a tensor, or has a dtype safetensors cannot store.
        ValueError
            ``fqn_to_index_mapping`` has no file for a tensor.
        """
        for item in plan.items:
            fqn = item.index.fqn
            if item.type == WriteItemType.BYTE_IO or item.tensor_data is None:
                raise SafetensorsError(f"{fqn!r} is not a tensor: safetensors stores tensors only")
            dtype_name(item.tensor_data.properties.dtype, f"tensor {fqn!r}")
            if self.fqn_to_index_mapping is not None and fqn not in self.fqn_to_index_mapping:
                raise ValueError(f"fqn_to_index_mapping has no file for tensor {fqn!r}")
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        """Give each rank's plan the file mapping, and its shard index when saving distributed."""
        new_plans = []
        for shard_index, plan in enumerate(plans, start=1):
            storage_data: Dict[str, Any] = {}
            if self.fqn_to_index_mapping is not None:
                storage_data[_MAPPING_KEY] = self.fqn_to_index_mapping
            if self.save_distributed:
                storage_data[_SHARD_KEY] = shard_index
            new_plans.append(dataclasses.replace(plan, storage_data=storage_data))
        return new_plans

    def _files(self, plan: SavePlan) -> List[Tuple[str, List[WriteItem]]]:
        mapping = plan.storage_data.get(_MAPPING_KEY) if isinstance(plan.storage_data, dict) else None
        shard_index = plan.storage_data.get(_SHARD_KEY) if isinstance(plan.storage_data, dict) else None
        highest = max(mapping.values()) if mapping else 1
        by_index: Dict[int, List[WriteItem]] = {}
        for item in plan.items:
            by_index.setdefault(mapping[item.index.fqn] if mapping else 1, []).append(item)
        return [(data_file_name(index, highest, shard_index), items) for index, items in sorted(by_index.items())]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        """Write this rank's files (``thread_count`` at a time); raise the first error of any of them."""
        files = self._files(plan)
        failed = threading.Event()
        errors: List[BaseException] = []
        lock = threading.Lock()

        def write(file_name: str, items: List[WriteItem]) -> List[WriteResult]:
            try:
                return self._write_file(planner, file_name, items, failed)
            except _Abandoned:
                raise
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                failed.set()
                raise

        results: List[WriteResult] = []
        if self.thread_count == 1 or len(files) <= 1:
            for file_name, items in files:
                results += write(file_name, items)
        else:
            with ThreadPoolExecutor(min(self.thread_count, len(files)), thread_name_prefix="s3io-hf-save") as pool:
                futures = [pool.submit(write, file_name, items) for file_name, items in files]
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    future.cancel()  # those not started: the save has failed
            if errors:
                raise errors[0]
            for future in futures:
                results += future.result()
        future_results: Future = Future()
        future_results.set_result(results)
        return future_results

    def _write_file(self, planner: SavePlanner, file_name: str, items: List[WriteItem],
                    failed: threading.Event) -> List[WriteResult]:
        """Stream one safetensors file: the header, then each tensor's bytes in the header's order."""
        by_fqn = {item.index.fqn: item for item in items}
        chunks = [item.tensor_data.chunk for item in items]
        header, layout = build_header(
            [(item.index.fqn, item.tensor_data.properties.dtype, chunk.sizes) for item, chunk in zip(items, chunks)],
            sharding_metadata((item.index.fqn, chunk.offsets) for item, chunk in zip(items, chunks)),
        )
        uri = self.fs.concat_path(self.path, file_name)
        results = []
        with self.fs.create_stream(uri, "wb") as stream:  # an error inside discards the upload
            stream.write(header)
            for fqn, start, end in layout:
                if failed.is_set():
                    raise _Abandoned()
                item = by_fqn[fqn]
                tensor = _stored_tensor(planner.resolve_data(item), item, uri)
                if end > start:
                    stream.write(tensor_bytes(tensor))
                info = SafetensorsStorageInfo(file_name, start, end - start, tensor.shape, tensor.dtype)
                results.append(WriteResult(index=item.index, size_in_bytes=end - start, storage_data=info))
                del tensor
        return results

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        """Write ``model.safetensors.index.json`` (one PUT) once every rank's files are complete.

        With ``save_distributed`` no index is written (as torch: each
        tensor's chunks are in several files).
        """
        if self.save_distributed:
            logger.info("%s: saved distributed, without an index", self.path)
            return
        weight_map = {}
        total_size = 0
        for rank_results in results:
            for result in rank_results:
                weight_map[result.index.fqn] = result.storage_data.relative_path
                total_size += result.storage_data.length
        with self.fs.create_stream(self.fs.concat_path(self.path, INDEX_NAME), "wb") as stream:
            stream.write(index_json(weight_map, total_size))


def _stored_tensor(data: Any, item: WriteItem, uri: str) -> torch.Tensor:
    """``data`` as a contiguous CPU tensor whose bytes are its values, checked against the header's entry."""
    fqn = item.index.fqn
    if not isinstance(data, torch.Tensor):
        raise SafetensorsError(f"{uri}: {fqn!r} resolved to a {type(data).__name__}, not a tensor")
    tensor = data.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.resolve_conj().resolve_neg().contiguous()
    expected = (item.tensor_data.properties.dtype, torch.Size(item.tensor_data.chunk.sizes))
    if (tensor.dtype, tensor.shape) != expected:
        raise SafetensorsError(
            f"{uri}: tensor {fqn!r} is {tensor.dtype} {list(tensor.shape)}, but was planned as"
            f" {expected[0]} {list(expected[1])}"
        )
    return tensor
