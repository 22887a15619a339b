"""safetensors: a Hugging Face checkpoint loaded from S3, s3io vs Run:ai Model Streamer vs safetensors from local disk.

Workload: ~512 MiB (``--quick``: ~32 MiB) in 4 shards
``model-0000k-of-00004.safetensors`` plus ``model.safetensors.index.json``,
written by ``safetensors.torch.save_file``: tensors of 4 KiB to 16 MiB
(``--quick``: to 2 MiB; log-uniform, so most are small and most bytes are
in the large ones), mostly bf16, with fp32, fp16, int64, uint8 and bool.
Measured in one run, interleaved (medians, min-max), every result owning
its memory:

* ``s3io.safetensors.load`` of the directory (default ``max_inflight_bytes``);
* Run:ai Model Streamer 0.17 (``runai_model_streamer.SafetensorsStreamer``,
  vLLM's ``--load-format runai_streamer``) over the 4 shard URIs on the same
  server (``AWS_ENDPOINT_URL``, ``RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0``),
  ``owned=False``, each tensor cloned: a tensor of its own, as s3io's (with
  ``owned=True`` each tensor would be a view keeping a whole ring buffer alive);
* ``safetensors.torch.load_file`` of a local copy of each shard (page cache
  warm), each tensor cloned (``load_file`` may map the file).

Then the peak RSS growth of one more load by each, in a fresh process (spawn): in this one the
allocator keeps memory the earlier loads freed, which would hide most of it.

Targets (issue 11): s3io's throughput >= 3x Run:ai's; s3io's peak RSS during
a load <= the tensors' size + ``max_inflight_bytes``; the time against the
local-disk load is reported.  The server is the embedded rclone (ETag hashing
off), as in the dcp suite.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import statistics
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

from s3io.bench._harness import Check, Row, SuiteResult, interleave
from s3io.bench._memory import peak_rss_growth_in_child

KiB = 1024
MiB = 1024 * KiB
SHARDS = 4
MIN_TENSOR_BYTES = 4 * KiB
S3IO, RUNAI, LOCAL = "s3io", "Run:ai Model Streamer 0.17", "safetensors load_file (local disk)"
# dtype name -> weight: a model's weights are mostly bf16; norms fp32; a few buffers of other dtypes.
_DTYPE_WEIGHTS = (("bfloat16", 8), ("float32", 3), ("float16", 2), ("int64", 1), ("uint8", 1), ("bool", 1))


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the workload: its name, dtype name (``"bfloat16"``) and shape."""

    name: str
    dtype: str
    shape: Tuple[int, ...]


def _itemsize(dtype: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4, "int64": 8, "uint8": 1, "bool": 1}[dtype]


def spec_nbytes(spec: TensorSpec) -> int:
    """Bytes of one tensor."""
    return math.prod(spec.shape) * _itemsize(spec.dtype)


def workload(total_bytes: int, max_tensor_bytes: int, shards: int = SHARDS, seed: int = 11) -> List[List[TensorSpec]]:
    """The tensors of each shard: sizes log-uniform from 4 KiB to ``max_tensor_bytes``, until ``total_bytes``.

    Shards are filled in order to about ``total_bytes / shards`` each, as
    Hugging Face shards a model by size.  Nothing is allocated.
    """
    rng = random.Random(seed)
    names, weights = zip(*_DTYPE_WEIGHTS)
    tensors: List[TensorSpec] = []
    total = 0
    while total < total_bytes:
        dtype = rng.choices(names, weights)[0]
        nbytes = int(math.exp(rng.uniform(math.log(MIN_TENSOR_BYTES), math.log(max_tensor_bytes))))
        numel = max(1, min(nbytes, total_bytes - total + MIN_TENSOR_BYTES) // _itemsize(dtype))
        if numel >= 4096:
            numel -= numel % 256
        shape = (numel // 256, 256) if numel >= 4096 else (numel,)  # 2-D from 4096 elements, rows of 256
        tensors.append(TensorSpec(f"model.layers.{len(tensors) // 8}.w{len(tensors) % 8}.{dtype}", dtype, shape))
        total += spec_nbytes(tensors[-1])
    per_shard = total / shards
    result: List[List[TensorSpec]] = [[] for _ in range(shards)]
    filled = 0
    for spec in tensors:
        result[min(shards - 1, int(filled // per_shard))].append(spec)
        filled += spec_nbytes(spec)
    return result


def materialize(shards: Sequence[Sequence[TensorSpec]], seed: int = 5):
    """The tensors of ``shards`` (one dict per shard), from a seeded generator."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for shard in shards:
        tensors = {}
        for spec in shard:
            dtype = getattr(torch, spec.dtype)
            if dtype.is_floating_point:
                tensors[spec.name] = torch.randn(spec.shape, generator=gen).to(dtype)
            elif dtype is torch.bool:
                tensors[spec.name] = torch.randint(0, 2, spec.shape, generator=gen).bool()
            else:
                tensors[spec.name] = torch.randint(0, 100, spec.shape, generator=gen).to(dtype)
        out.append(tensors)
    return out


def write_checkpoint(shard_tensors, directory: str) -> List[str]:
    """Save the shards with ``safetensors.torch.save_file`` and an index json; the shard paths."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    paths, weight_map, total = [], {}, 0
    for k, tensors in enumerate(shard_tensors, start=1):
        name = "model-%05d-of-%05d.safetensors" % (k, len(shard_tensors))
        save_file(tensors, os.path.join(directory, name), metadata={"format": "pt"})
        paths.append(os.path.join(directory, name))
        for tensor_name, tensor in tensors.items():
            weight_map[tensor_name] = name
            total += tensor.numel() * tensor.element_size()
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return paths


def upload_directory(boto_client, bucket: str, directory: str, prefix: str) -> None:
    """Upload every file of ``directory`` under ``prefix/``."""
    for name in sorted(os.listdir(directory)):
        boto_client.upload_file(os.path.join(directory, name), bucket, "%s/%s" % (prefix, name))


@contextlib.contextmanager
def runai_environment(endpoint_url: str) -> Iterator[None]:
    """Point Run:ai's S3 client at ``endpoint_url`` (path-style) for the block; the environment is restored after."""
    settings = {"AWS_ENDPOINT_URL": endpoint_url, "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_s3io(uri: str, endpoint_url: str):
    """All tensors by ``s3io.safetensors.load``."""
    from s3io import safetensors

    return safetensors.load(uri, endpoint=endpoint_url)


def load_runai(uris: Sequence[str]):
    """All tensors by Run:ai's streamer, each cloned (call inside :func:`runai_environment`)."""
    from runai_model_streamer import SafetensorsStreamer

    with SafetensorsStreamer() as streamer:
        streamer.stream_files(list(uris), owned=False)
        return {name: tensor.clone() for name, tensor in streamer.get_tensors()}


def load_local(paths: Sequence[str]):
    """All tensors by ``safetensors.torch.load_file`` from local files, each cloned."""
    from safetensors.torch import load_file

    out = {}
    for path in paths:
        out.update({name: tensor.clone() for name, tensor in load_file(path).items()})
    return out


def check_same(expected: Dict, got: Dict, impl: str) -> None:
    """Raise unless ``got`` holds exactly ``expected``'s tensors (names, dtypes, values)."""
    if set(got) != set(expected):
        raise AssertionError("%s loaded %d tensors, expected %d" % (impl, len(got), len(expected)))
    for name, tensor in expected.items():
        other = got[name]
        if other.dtype != tensor.dtype or not other.equal(tensor):
            raise AssertionError("%s loaded %s wrong" % (impl, name))


def run(ctx) -> SuiteResult:
    """Run the safetensors suite (see the module docstring)."""
    from s3io.safetensors import DEFAULT_MAX_INFLIGHT_BYTES

    result = SuiteResult()
    server = ctx.server()
    bucket = ctx.bucket()
    prefix = "%s/safetensors" % ctx.run_id
    total_bytes, max_tensor = (32 * MiB, 2 * MiB) if ctx.quick else (512 * MiB, 16 * MiB)

    ctx.progress("building and saving the checkpoint")
    specs = workload(total_bytes, max_tensor)
    shard_tensors = materialize(specs)
    expected = {name: tensor for shard in shard_tensors for name, tensor in shard.items()}
    nbytes = sum(t.numel() * t.element_size() for t in expected.values())
    local_dir = os.path.join(ctx.tmpdir, "safetensors-local")
    paths = write_checkpoint(shard_tensors, local_dir)
    del shard_tensors
    upload_directory(server.boto3_client(), bucket, local_dir, prefix)
    uris = ["s3://%s/%s/%s" % (bucket, prefix, os.path.basename(path)) for path in paths]
    directory = "s3://%s/%s/" % (bucket, prefix)
    sizes = sorted(spec_nbytes(spec) for shard in specs for spec in shard)
    result.notes.append(
        "checkpoint: %d tensors in %d shards, %.0f MiB; tensor sizes %d B to %.1f MiB (median %.0f KiB)"
        % (len(sizes), len(specs), nbytes / MiB, sizes[0], sizes[-1] / MiB, statistics.median(sizes) / KiB)
    )

    # impl: (loader, its arguments, modules imported before a fresh process's RSS baseline)
    loaders = {
        S3IO: (load_s3io, (directory, server.endpoint_url), ("s3io.safetensors", "boto3")),
        RUNAI: (load_runai, (uris,), ("runai_model_streamer",)),
        LOCAL: (load_local, (paths,), ("safetensors.torch",)),
    }
    latest: Dict[str, Dict] = {}

    def timed(impl: str):
        fn, args, _ = loaders[impl]

        def one_run() -> None:
            latest.pop(impl, None)  # the previous result is freed before the next load
            latest[impl] = fn(*args)

        return one_run

    with runai_environment(server.endpoint_url):
        times = interleave(ctx, {impl: timed(impl) for impl in loaders}, warmup=1, label="load")
        for impl in loaders:
            check_same(expected, latest.pop(impl), impl)
        growth = {}
        for impl, (fn, args, preload) in loaders.items():
            ctx.progress("%s: peak RSS of one load in a fresh process" % impl)
            growth[impl] = peak_rss_growth_in_child(fn, *args, preload=("torch",) + preload)
            result.rows.append(Row("peak RSS growth, load", impl, round(growth[impl] / MiB), "MiB"))

    medians = {impl: statistics.median(runs) for impl, runs in times.items()}
    for impl, runs in times.items():
        result.rows.append(Row.throughput("load (GB/s)", impl, nbytes, runs))
        result.rows.append(Row.from_times("load time", impl, runs))
    result.checks.append(Check.at_least("s3io throughput / Run:ai's", round(medians[RUNAI] / medians[S3IO], 2), 3.0))
    result.checks.append(Check.at_most(
        "s3io peak RSS during load (growth)", round(growth[S3IO] / MiB),
        round((nbytes + DEFAULT_MAX_INFLIGHT_BYTES) / MiB), " MiB"))
    result.checks.append(Check("s3io load time / local-disk load_file (x)", round(medians[S3IO] / medians[LOCAL], 2),
                               "report", True))
    result.notes.append("peak RSS growth includes the loaded tensors (%.0f MiB): the target is their size + "
                        "s3io's max_inflight_bytes (%d MiB)" % (nbytes / MiB, DEFAULT_MAX_INFLIGHT_BYTES // MiB))
    return result
