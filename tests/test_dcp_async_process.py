"""Process-based ``dcp.async_save`` over S3 with two ranks (gloo over loopback TCP).

torch's ``AsyncCheckpointerType.PROCESS`` pickles the storage writer to a
checkpoint process of each rank, which runs the save in a process group of its
own.  Here it replaces a checkpoint that a blocking save wrote: the
coordinator's checkpoint process must read the previous ``.metadata``, switch,
and delete the previous files, and both ranks load the new state dict exactly.
"""
import multiprocessing.resource_tracker
import os
import time
import warnings

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

from s3io import S3ClientConfig
from s3io.dcp import HexPrefixStrategy, S3StorageReader, S3StorageWriter
from s3io.testing import free_port

WORLD = 2


def _rank_state(rank, version):
    return {
        "replicated": torch.arange(1000, dtype=torch.float32) * version,
        f"rank{rank}.weight": torch.full((300,), float(rank + version)).to(torch.bfloat16),
        f"rank{rank}.meta": {"rank": rank, "version": version},
        "step": version,
    }


def _blank(sd):
    return {
        k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else ({kk: None for kk in v} if isinstance(v, dict) else 0))
        for k, v in sd.items()
    }


def _assert_same(expected, got):
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def _worker(rank, port, endpoint, path):
    warnings.filterwarnings("ignore")
    # The checkpoint process's own process group meets at MASTER_ADDR (default: this host's FQDN).
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        config = S3ClientConfig(endpoint_url=endpoint)

        def writer():
            return S3StorageWriter("us-east-1", path, s3client_config=config, prefix_strategy=HexPrefixStrategy(), thread_count=2)

        dcp.save(_rank_state(rank, 1), storage_writer=writer())
        new = _rank_state(rank, 2)
        future = dcp.async_save(new, storage_writer=writer(), async_checkpointer_type=AsyncCheckpointerType.PROCESS)
        future.result(timeout=300)
        dist.barrier()
        out = _blank(new)
        dcp.load(out, storage_reader=S3StorageReader("us-east-1", path, s3client_config=config))
        _assert_same(new, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Returning ends the rank: multiprocessing then stops its daemonic checkpoint process.


def _descendants():
    return {p.pid: " ".join(p.cmdline()) for p in psutil.Process().children(recursive=True) if p.is_running()}


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_process_based_async_save_over_a_checkpoint(rclone_server, tmp_path, monkeypatch):
    bucket = rclone_server.make_bucket()
    path = f"s3://{bucket}/async"
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the ranks' and checkpoint processes' temporary files
    # The first spawn starts this process's resource tracker, which lives as long as pytest: start it now.
    multiprocessing.resource_tracker.ensure_running()
    before = _descendants()
    context = mp.spawn(_worker, args=(free_port(), rclone_server.endpoint_url, path), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 300
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "ranks did not finish in 300 s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()

    # Nothing is left running or on disk.
    deadline = time.monotonic() + 10
    while set(_descendants()) - set(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: cmd for pid, cmd in _descendants().items() if pid not in before}
    assert not left, f"processes left behind: {left}"
    assert not list(temp.iterdir()), f"temporary files left behind: {list(temp.iterdir())}"

    # Only the async save's files remain (the blocking save's were deleted after the switch),
    # under the hex strategy's prefixes for world size 2, and both ranks' entries load at once.
    client = rclone_server.boto3_client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="async/")["Contents"])
    assert keys[0] == "async/.metadata" and len(keys) == 5, keys
    assert [k.split("/")[1] for k in keys[1:]] == ["0000000000"] * 2 + ["1000000000"] * 2, keys
    tokens = {k.rsplit("_", 2)[1] for k in keys[1:]}
    assert len(tokens) == 1, keys  # one save
    expected = {**_rank_state(0, 2), **_rank_state(1, 2)}
    out = _blank(expected)
    config = S3ClientConfig(endpoint_url=rclone_server.endpoint_url)
    dcp.load(out, storage_reader=S3StorageReader(rclone_server.region, path, s3client_config=config))
    _assert_same(expected, out)
