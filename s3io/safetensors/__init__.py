"""Hugging Face safetensors checkpoints on S3, loaded without downloading the files first.

A safetensors file stores each tensor as one contiguous range of raw bytes
after a JSON header, so each tensor can be fetched with ranged GETs straight
into the memory of its own ``torch.Tensor``.  :func:`load` and :func:`stream`
read the 8-byte length and the JSON header of every file first (in
parallel, every request of a file pinned to one version), check them, and
only then fetch the tensors: large ones straight into their tensors, small
ones coalesced into shared GETs and copied out, all with parallel ranged
GETs and a cap on the memory in flight.  The ``safetensors`` package is not
needed.

Examples
--------
>>> from s3io import safetensors                                                  # doctest: +SKIP
>>> state = safetensors.load("s3://bucket/llama/", region="us-east-1")            # index json or every shard
>>> for name, tensor in safetensors.stream("s3://bucket/llama/model-00001-of-00004.safetensors"):
...     model.get_parameter(name).data.copy_(tensor)
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

from .._config import S3ClientConfig
from ..dcp._safetensors_settings import DEFAULT_MAX_INFLIGHT_BYTES, MIN_INFLIGHT_BYTES
from ._files import INDEX_NAME
from ._format import SafetensorsError
from ._load import load_tensors, stream_tensors

__all__ = ["DEFAULT_MAX_INFLIGHT_BYTES", "INDEX_NAME", "MIN_INFLIGHT_BYTES", "SafetensorsError", "load", "stream"]


def load(
    uri: Union[str, Sequence[str]],
    *,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    max_concurrency: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Load every tensor of one or more safetensors files on S3.

    Parameters
    ----------
    uri : str or list of str
        ``s3://bucket/path/model.safetensors``; a list of such URIs; or a
        directory ``s3://bucket/path/`` (ending in ``/``): the shards its
        ``model.safetensors.index.json`` (or its only ``*.safetensors.index.json``)
        names, else every ``*.safetensors`` object directly in it.
    region : str, optional
        AWS region (default: boto3's chain, then ``us-east-1``).
    endpoint : str, optional
        S3 endpoint URL (default: ``s3client_config.endpoint_url``, then
        ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).
    s3client_config : S3ClientConfig, optional
    max_inflight_bytes : int, default 256 MiB
        Memory for fetched bytes not yet in their tensors: one buffer, reused,
        for the tensors under 1 MiB (larger ones are fetched straight into
        their own memory and need none).  From 4 MiB up to the machine's memory.
    max_concurrency : int, optional
        Ranged GETs in flight (default: the client's ``max_concurrency``, at
        most 4 per CPU and 16).

    Returns
    -------
    dict of str to torch.Tensor
        CPU tensors of the stored dtypes and shapes, each owning its memory,
        file by file, by offset.

    Raises
    ------
    SafetensorsError
        A malformed file or index (a ``ValueError``), naming the file and the
        tensor: a truncated file, a header length beyond the file, offsets
        that overlap or run past the end, an unknown dtype; a tensor name in
        two files.  Nothing is fetched past the headers then.
    S3ObjectNotFound, S3BucketNotFound, S3Exception
        A file (or a shard its index names) or the bucket does not exist,
        or a request failed; ``S3ObjectChanged`` if a file was overwritten
        during the load.
    ValueError, TypeError
        A bad ``uri``, ``max_inflight_bytes`` or ``max_concurrency``.
    """
    return load_tensors(uri, region=region, endpoint=endpoint, s3client_config=s3client_config,
                        max_inflight_bytes=max_inflight_bytes, max_concurrency=max_concurrency)


def stream(
    uri: Union[str, Sequence[str]],
    *,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    max_concurrency: Optional[int] = None,
) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the files, each as soon as its bytes have landed.

    Same arguments, tensors and errors as :func:`load`; the order is file
    by file, by offset.  Requests start at the first ``next()``.  At most
    ``max_inflight_bytes`` are fetched ahead of the tensor being handed
    over (half of it a reused buffer for the tensors under 1 MiB, half for
    larger tensors fetched straight into their own memory; a single larger
    tensor is fetched alone), plus the two tensors waiting for the caller.
    Each yielded tensor owns its memory: keep it, or drop it to free it.
    Closing the iterator early (``break``, ``close()``) stops the requests.
    """
    return stream_tensors(uri, region=region, endpoint=endpoint, s3client_config=s3client_config,
                          max_inflight_bytes=max_inflight_bytes, max_concurrency=max_concurrency)
