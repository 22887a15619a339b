"""Two ranks (gloo over loopback TCP, torch.multiprocessing spawn) save and load on S3."""
import re
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from _ranks import spawn_ranks
from s3io import S3ClientConfig
from s3io.dcp import HexPrefixStrategy, S3StorageReader, S3StorageWriter
from s3io.testing.servers import free_port

WORLD = 2


def _rank_state(rank):
    return {
        "replicated": torch.arange(1000, dtype=torch.float32),
        f"rank{rank}.weight": torch.full((300,), float(rank + 1)).to(torch.bfloat16),
        f"rank{rank}.meta": {"rank": rank, "name": f"rank-{rank}"},
        "step": 42,
    }


def _blank(sd):
    return {
        k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else ({kk: None for kk in v} if isinstance(v, dict) else 0))
        for k, v in sd.items()
    }


def _worker(rank, port, endpoint, region, path):
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        config = S3ClientConfig(endpoint_url=endpoint)
        sd = _rank_state(rank)
        dcp.save(sd, storage_writer=S3StorageWriter(region, path, s3client_config=config, prefix_strategy=HexPrefixStrategy(), thread_count=2))
        out = _blank(sd)
        dcp.load(out, storage_reader=S3StorageReader(region, path, s3client_config=config))
        assert torch.equal(out["replicated"], sd["replicated"])
        assert torch.equal(out[f"rank{rank}.weight"], sd[f"rank{rank}.weight"])
        assert out[f"rank{rank}.meta"] == sd[f"rank{rank}.meta"]
        assert out["step"] == 42
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_two_ranks_save_and_load(rclone_server):
    bucket = rclone_server.make_bucket()
    path = f"s3://{bucket}/multi"
    spawn_ranks(_worker, (free_port(), rclone_server.endpoint_url, rclone_server.region, path), WORLD)

    client = rclone_server.boto3_client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="multi/")["Contents"])
    # Hex prefixes over world size 2: rank 0 -> "0000000000/", rank 1 -> "1000000000/"; one token per save.
    tokens = {re.search(r"__\d_([0-9a-f]{16})_\d\.distcp$", key).group(1) for key in keys if key.endswith(".distcp")}
    assert len(tokens) == 1
    (token,) = tokens
    assert [key.replace(f"_{token}_", "_") for key in keys] == [
        "multi/.metadata",
        "multi/0000000000/__0_0.distcp",
        "multi/0000000000/__0_1.distcp",
        "multi/1000000000/__1_0.distcp",
        "multi/1000000000/__1_1.distcp",
    ]

    # The two-rank checkpoint loads in one process, every rank's entries at once.
    config = S3ClientConfig(endpoint_url=rclone_server.endpoint_url)
    expected = {**_rank_state(0), **_rank_state(1)}
    out = _blank(expected)
    dcp.load(out, storage_reader=S3StorageReader(rclone_server.region, path, s3client_config=config))
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(out[key], value), key
        else:
            assert out[key] == value, key
