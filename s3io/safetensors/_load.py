"""Loading safetensors files from S3 into tensors of their own: plan, fetch, hand over.

The load reuses the DCP load pipeline (``s3io.dcp._load_plan`` and
``_load_schedule``).  After the headers (``_files``), every tensor of every
file is an item whose byte range the header gives:

- a tensor of at least :data:`DIRECT_MIN_BYTES` is fetched straight into a
  ``torch.empty`` of its dtype and shape (a safetensors tensor is exactly its
  raw bytes): no buffer, no copy;
- smaller tensors of one file are coalesced into segments of a bounded ring
  of buffers (gaps up to ``MAX_GAP_SIZE``, 256 KiB), fetched with parallel ranged
  GETs, and copied into their tensors by the core's ``copy_into``.

Every tensor handed out owns its memory: none is a view of a buffer that is
reused.  :func:`load_tensors` collects them; :func:`stream_tensors` yields
each as it lands, from a loader thread, with the memory in flight bounded.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .._client import S3Client
from .._config import S3ClientConfig
from .._core import ItemRange, copy_into
from ..dcp._filesystem import shared_client
from ..dcp._load_plan import LoadFile, LoadSettings
from ..dcp._load_schedule import ReadItemBytes, load_files
from ..dcp._load_torch import tensor_bytes
from ..dcp._safetensors_settings import DIRECT_MIN_BYTES, check_inflight_bytes, load_settings
from ._files import SafetensorsFile, open_files
from ._format import SafetensorsError, TensorInfo

__all__ = ["TensorConsumer", "TensorItem", "load_tensors", "stream_tensors"]

_STREAM_THREAD_NAME = "s3io-safetensors-stream"
THREAD_NAME_PREFIX = "s3io-safetensors-load"
_USER_AGENT = "s3io-safetensors"
_HANDOFF_DEPTH = 2  # tensors waiting for the caller of stream(): each is in flight too


class TensorItem:
    """One tensor of a file, as an item of the load pipeline.

    Attributes
    ----------
    range : ItemRange
        Its bytes in the file.
    direct : bool
        Fetched straight into its own tensor.
    info : TensorInfo
    tensor : torch.Tensor or None
        A direct item's tensor, from :meth:`TensorConsumer.locate_direct` to its commit.
    """

    __slots__ = ("range", "direct", "info", "tensor")

    def __init__(self, info: TensorInfo) -> None:
        self.range = ItemRange(info.start, info.end)
        self.direct = info.nbytes >= DIRECT_MIN_BYTES
        self.info = info
        self.tensor: Optional[torch.Tensor] = None


class TensorConsumer:
    """Turns the items of a load into owned tensors and hands each to ``deliver(name, tensor)`` (calling thread)."""

    def __init__(self, deliver: Callable[[str, torch.Tensor], None]) -> None:
        self._deliver = deliver

    def locate_direct(self, item: TensorItem, read: ReadItemBytes) -> Tuple[int, memoryview]:
        """Fetch thread: allocate the tensor; all of the item's bytes go into it."""
        info = item.info
        item.tensor = torch.empty(info.shape, dtype=info.dtype)
        return 0, tensor_bytes(item.tensor)

    def commit_direct(self, item: TensorItem) -> None:
        """The tensor is filled: hand it over."""
        tensor, item.tensor = item.tensor, None
        self._deliver(item.info.name, tensor)

    def consume(self, item: TensorItem, view: memoryview) -> None:
        """Copy a buffered tensor's bytes into a tensor of its own and hand it over."""
        info = item.info
        tensor = torch.empty(info.shape, dtype=info.dtype)
        if info.nbytes:
            copy_into(tensor_bytes(tensor), view)
        self._deliver(info.name, tensor)


def _load_files(files: Sequence[SafetensorsFile]) -> List[LoadFile]:
    """One LoadFile per file, every tensor an item; a name in two files is an error."""
    seen: Dict[str, str] = {}
    load = []
    for file in files:
        for name in file.header.tensors:
            other = seen.setdefault(name, file.uri)
            if other != file.uri:
                raise SafetensorsError(f"tensor {name!r} is in both {other} and {file.uri}: load them separately")
        load.append(LoadFile(file.handle, [TensorItem(info) for info in file.header.tensors.values()]))
    return load


def _client(region: Optional[str], endpoint: Optional[str], s3client_config: Optional[S3ClientConfig]) -> S3Client:
    """The process's shared client for these settings: building one costs ~0.1-0.5 s at its first request."""
    if s3client_config is not None and not isinstance(s3client_config, S3ClientConfig):
        raise TypeError(f"s3client_config must be an S3ClientConfig, not {type(s3client_config).__name__}")
    config = s3client_config or S3ClientConfig()
    if endpoint is not None:
        config = dataclasses.replace(config, endpoint_url=endpoint)
    return shared_client(region, config, _USER_AGENT)


def load_tensors(uri: Union[str, Sequence[str]], *, region: Optional[str], endpoint: Optional[str],
                 s3client_config: Optional[S3ClientConfig], max_inflight_bytes: int,
                 max_concurrency: Optional[int]) -> Dict[str, torch.Tensor]:
    """:func:`s3io.safetensors.load` (arguments checked here)."""
    cap = check_inflight_bytes(max_inflight_bytes)
    client = _client(region, endpoint, s3client_config)
    settings = load_settings(client.s3client_config, cap, max_concurrency)
    files = _load_files(open_files(client, uri, settings.max_concurrency))
    result: Dict[str, torch.Tensor] = {}
    load_files(files, TensorConsumer(result.__setitem__), settings, thread_name_prefix=THREAD_NAME_PREFIX)
    return result


class _Closed(Exception):
    """The caller closed the stream: the loader thread stops."""


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def stream_tensors(uri: Union[str, Sequence[str]], *, region: Optional[str], endpoint: Optional[str],
                   s3client_config: Optional[S3ClientConfig], max_inflight_bytes: int,
                   max_concurrency: Optional[int]) -> Iterator[Tuple[str, torch.Tensor]]:
    """:func:`s3io.safetensors.stream`: arguments checked now, requests sent from the first ``next()``."""
    cap = check_inflight_bytes(max_inflight_bytes)
    client = _client(region, endpoint, s3client_config)
    # Half of the cap for the ring of small tensors, half for large ones fetched
    # ahead into their own memory: what is fetched and not yet handed over stays under the cap.
    settings = load_settings(client.s3client_config, cap // 2, max_concurrency,
                             max_direct_ahead_bytes=cap - cap // 2)
    return _stream(client, uri, settings)


def _stream(client: S3Client, uri: Union[str, Sequence[str]], settings: LoadSettings) -> Iterator[Tuple[str, torch.Tensor]]:
    files = _load_files(open_files(client, uri, settings.max_concurrency))
    handoff: queue.Queue = queue.Queue(maxsize=_HANDOFF_DEPTH)
    closed = threading.Event()

    def deliver(name: str, tensor: torch.Tensor) -> None:
        if closed.is_set():
            raise _Closed()
        handoff.put((name, tensor))

    def run() -> None:
        try:
            load_files(files, TensorConsumer(deliver), settings, thread_name_prefix=THREAD_NAME_PREFIX)
        except _Closed:
            return
        except BaseException as exc:  # handed to the caller's thread, raised there
            handoff.put(_Failed(exc))
            return
        handoff.put(_DONE)

    loader = threading.Thread(target=run, name=_STREAM_THREAD_NAME, daemon=True)
    loader.start()
    try:
        while True:
            entry = handoff.get()
            if entry is _DONE:
                return
            if isinstance(entry, _Failed):
                raise entry.error
            yield entry
    finally:
        # Closed early (or failed): stop the loader; it may be blocked handing over a tensor.
        closed.set()
        while loader.is_alive():
            try:
                handoff.get(timeout=0.05)
            except queue.Empty:
                pass
        loader.join()
