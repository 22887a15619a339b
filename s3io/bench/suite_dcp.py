"""dcp: torch.distributed.checkpoint save and load, s3io vs s3torchconnector 1.5.0 vs torch on local disk.

A ~1 GiB state dict (``--quick``: ~64 MiB) of ~500 tensors, bf16 and fp32:
40 large ones of 8-32 MiB and the rest 4 KiB-1 MiB, saved with 4 writer
threads (4 ``.distcp`` files).  Measured in one run, interleaved (medians,
min-max):

* full load and a 30% partial load (a random 30% of the tensors) into a
  preallocated state dict, by s3io's ``S3StorageReader`` (default
  ``dcp_optimized`` reader, i.e. the parallel load pipeline), by
  s3torchconnector 1.5.0's ``S3StorageReader`` (its default ``dcp_optimized``
  reader) on the same server, and by torch's ``FileSystemReader`` on a local
  copy (page cache warm);
* save by s3io's ``S3StorageWriter`` and by torch's ``FileSystemWriter`` to
  local disk (both ``thread_count=4``; torch with ``sync_files=False``, as S3
  has no fsync);
* peak RSS growth during one more full load by each reader (destination
  already allocated).

The server is the embedded rclone (ETag hashing off: with hashing on, rclone
reads the whole file to hash it for every ranged GET).  Without ETags the load
pipeline cannot send If-Match, so version pinning is off on this server; on
S3 and on rclone with hashing on every GET of a file is pinned to one ETag.

Targets (issue 3): full and partial load <= 0.6x s3torchconnector's time;
full load <= 2.5x the local-disk reader's; peak RSS during the load <= state
dict size + 256 MiB.
"""
from __future__ import annotations

import os
import random
import shutil
import statistics
import warnings

from s3io.bench._harness import Check, PeakRSS, Row, SuiteResult, interleave

KiB = 1024
MiB = 1024 * KiB
THREADS = 4

S3IO, S3TC, LOCAL = "s3io", "s3torchconnector 1.5.0", "torch FileSystemReader (local disk)"
LOCAL_WRITER = "torch FileSystemWriter (local disk)"


def _state_dict(quick: bool):
    import torch

    rng = random.Random(1234)
    gen = torch.Generator().manual_seed(1234)
    scale = 16 if quick else 1
    sd = {}
    sizes = [rng.randint(8 * MiB, 32 * MiB) // scale for _ in range(40)]
    sizes += [rng.randint(4 * KiB, 1 * MiB) // scale for _ in range(460)]
    rng.shuffle(sizes)
    for i, nbytes in enumerate(sizes):
        dtype = torch.bfloat16 if i % 2 else torch.float32
        numel = max(1, nbytes // (2 if dtype is torch.bfloat16 else 4))
        layer = f"layers.{i // 8}.{['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.up', 'mlp.down', 'norm', 'emb'][i % 8]}"
        sd[layer + ".weight"] = torch.randn(numel, generator=gen).to(dtype)
    return sd


def _nbytes(sd) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


def _blank(sd):
    import torch

    return {k: torch.zeros_like(v) for k, v in sd.items()}


def _s3tc_reader(region, path, endpoint):
    """s3torchconnector's S3StorageReader pointed at ``endpoint`` (its S3StorageReader takes no endpoint)."""
    from s3torchconnector import S3ClientConfig as RefConfig
    from s3torchconnector._s3client import S3Client as RefClient
    from s3torchconnector.dcp import S3StorageReader as RefReader

    config = RefConfig(force_path_style=True)
    reader = RefReader(region, path, s3client_config=config)
    reader.fs._client = RefClient(region, endpoint=endpoint, s3client_config=config)
    return reader


def run(ctx):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

    from s3io import S3ClientConfig
    from s3io.dcp import S3StorageReader, S3StorageWriter

    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    warnings.filterwarnings("ignore", message="Detected an existing checkpoint")
    result = SuiteResult()
    server = ctx.server()
    bucket = ctx.bucket()
    region = server.region
    config = S3ClientConfig(endpoint_url=server.endpoint_url, force_path_style=True)
    base = f"s3://{bucket}/{ctx.run_id}/dcp"

    ctx.progress("building the state dict")
    sd = _state_dict(ctx.quick)
    total = _nbytes(sd)
    keys = sorted(sd)
    partial_keys = sorted(random.Random(99).sample(keys, k=int(len(keys) * 0.3)))
    partial_bytes = sum(sd[k].numel() * sd[k].element_size() for k in partial_keys)
    result.notes.append(
        f"state dict: {len(sd)} tensors, {total / MiB:.0f} MiB (bf16+fp32); partial load: "
        f"{len(partial_keys)} tensors, {partial_bytes / MiB:.0f} MiB"
    )

    local_dir = os.path.join(ctx.tmpdir, "dcp-local")
    save_paths = {S3IO: f"{base}/save", LOCAL_WRITER: os.path.join(ctx.tmpdir, "dcp-local-save")}

    def save_s3io():
        dcp.save(sd, storage_writer=S3StorageWriter(region, save_paths[S3IO], s3client_config=config, thread_count=THREADS))

    def save_local():
        dcp.save(sd, storage_writer=FileSystemWriter(save_paths[LOCAL_WRITER], thread_count=THREADS, sync_files=False))

    # The checkpoint the loads read: saved once by s3io, the local copy by torch.
    ctx.progress("saving the checkpoint to load")
    ckpt = f"{base}/ckpt"
    dcp.save(sd, storage_writer=S3StorageWriter(region, ckpt, s3client_config=config, thread_count=THREADS))
    dcp.save(sd, storage_writer=FileSystemWriter(local_dir, thread_count=THREADS, sync_files=False))

    times = interleave(ctx, {S3IO: save_s3io, LOCAL_WRITER: save_local}, label="save")
    for impl, runs in times.items():
        result.rows.append(Row.throughput("save (GB/s)", impl, total, runs))
        result.rows.append(Row.from_times("save time", impl, runs))
    shutil.rmtree(save_paths[LOCAL_WRITER], ignore_errors=True)

    full = {impl: _blank(sd) for impl in (S3IO, S3TC, LOCAL)}
    part = {impl: {k: full[impl][k] for k in partial_keys} for impl in full}

    def load(impl, dest):
        if impl == S3IO:
            reader = S3StorageReader(region, ckpt, s3client_config=config)
        elif impl == S3TC:
            reader = _s3tc_reader(region, ckpt, server.endpoint_url)
        else:
            reader = FileSystemReader(local_dir)
        dcp.load(dest, storage_reader=reader)

    impls_full = {impl: (lambda impl=impl: load(impl, full[impl])) for impl in full}
    impls_part = {impl: (lambda impl=impl: load(impl, part[impl])) for impl in part}
    medians = {}
    for case, impls, nbytes in (("full load", impls_full, total), ("30% partial load", impls_part, partial_bytes)):
        times = interleave(ctx, impls, warmup=1, label=case)
        for impl, runs in times.items():
            result.rows.append(Row.throughput(f"{case} (GB/s)", impl, nbytes, runs))
            result.rows.append(Row.from_times(f"{case} time", impl, runs))
            medians[(case, impl)] = statistics.median(runs)
    for impl in full:
        for k in keys:
            if not full[impl][k].equal(sd[k]):
                raise AssertionError(f"{impl} loaded {k} wrong")

    for impl in (S3IO, S3TC, LOCAL):
        dest = full[impl]
        with PeakRSS() as rss:
            load(impl, dest)
        result.rows.append(Row("peak RSS growth, full load", impl, rss.growth_bytes / MiB, "MiB"))
        if impl == S3IO:
            growth = rss.growth_bytes

    full_ratio = medians[("full load", S3IO)] / medians[("full load", S3TC)]
    part_ratio = medians[("30% partial load", S3IO)] / medians[("30% partial load", S3TC)]
    local_ratio = medians[("full load", S3IO)] / medians[("full load", LOCAL)]
    result.checks.append(Check.at_most("full load time vs s3torchconnector", round(full_ratio, 3), 0.6))
    result.checks.append(Check.at_most("partial load time vs s3torchconnector", round(part_ratio, 3), 0.6))
    result.checks.append(Check.at_most("full load time vs local-disk FileSystemReader", round(local_ratio, 3), 2.5))
    result.checks.append(
        Check.at_most(
            "peak RSS during load (state dict + growth)",
            round((total + growth) / MiB),
            round((total + 256 * MiB) / MiB),
            " MiB",
        )
    )
    result.notes.append(
        "peak RSS growth is measured around one extra full load with the destination state dict "
        "already allocated, so the state dict itself is not in the growth"
    )
    return result
