"""Two ranks (gloo, torch.multiprocessing spawn) times two DataLoader workers read one sharded S3IterableDataset."""
import json
import os
import warnings

import torch.distributed as dist
import torch.utils.data

from _ranks import spawn_ranks
from s3io import S3ClientConfig, S3IterableDataset
from s3io.testing.servers import free_port

WORLD, WORKERS = 2, 2


def key_and_worker(reader):
    reader.read()
    return reader.key, torch.utils.data.get_worker_info().id


def _rank(rank, port, endpoint, region, uri, out_dir):
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        # The rank and world size are read here, when the dataset is built (as s3torchconnector does).
        dataset = S3IterableDataset.from_prefix(uri, region=region, s3client_config=S3ClientConfig(endpoint_url=endpoint),
                                                transform=key_and_worker, enable_sharding=True)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=WORKERS, collate_fn=tuple,
                                             multiprocessing_context="fork")
        with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as f:
            json.dump([list(item) for item in loader], f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_times_two_workers_each_read_their_shard_once(rclone_server, tmp_path):
    # Spawned ranks import torch afresh (seconds each): one server; sharding itself is checked on both
    # servers with DataLoader workers in tests/test_datasets.py.
    s3_server = rclone_server
    bucket = s3_server.make_bucket()
    keys = [f"shard/obj-{i:02d}" for i in range(23)]  # not a multiple of 4: shards of 6, 6, 6 and 5
    client = s3_server.boto3_client()
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    spawn_ranks(_rank, (free_port(), s3_server.endpoint_url, s3_server.region, f"s3://{bucket}/shard/", str(tmp_path)), WORLD)
    seen = []
    for rank in range(WORLD):
        with open(tmp_path / f"rank-{rank}.json") as f:
            items = json.load(f)
        rank_keys = keys[rank::WORLD]  # first across ranks, by listing position modulo the world size
        for worker in range(WORKERS):
            assert sorted(k for k, w in items if w == worker) == rank_keys[worker::WORKERS]
        seen.extend(k for k, _ in items)
    assert sorted(seen) == keys  # every object once, across all ranks and workers
