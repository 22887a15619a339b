"""S3HuggingFaceStorageReader / Writer: dcp.load and dcp.save of Hugging Face safetensors on S3.

Single-process cases run on both loopback servers; the two-rank DTensor load
(gloo over loopback TCP, torch.multiprocessing spawn) runs on rclone through
a FaultProxy that counts the bytes each GET returned.
"""
import ctypes
import json
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from _ranks import spawn_ranks
from _upload_faults import FailingUpload, InjectedUploadFailure, on_put
from conftest import _remove_bucket, require_peer
from s3io import S3ClientConfig, S3ObjectNotFound
from s3io import safetensors as st
from s3io._handle import ObjectHandle
from s3io.dcp import S3HuggingFaceStorageReader, S3HuggingFaceStorageWriter
from s3io.safetensors import SafetensorsError
from s3io.testing.faultproxy import FaultProxy
from s3io.testing.servers import free_port

pytestmark = [pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

MiB = 1024 * 1024
MAPPING = {"embed": 1, "norm": 1, "layer.w": 2, "layer.b": 2, "flags": 3, "step_scale": 3, "empty": 3}


@pytest.fixture(scope="module")
def bucket(s3_server):
    """One bucket per server for this module; each test writes under a path of its own."""
    name = s3_server.make_bucket()
    yield name
    _remove_bucket(s3_server, name)


def _config(server):
    return S3ClientConfig(endpoint_url=server.endpoint_url)


def _writer(server, path, *args, **kwargs):
    return S3HuggingFaceStorageWriter(server.region, path, *args, s3client_config=_config(server), **kwargs)


def _reader(server, path, **kwargs):
    return S3HuggingFaceStorageReader(server.region, path, s3client_config=_config(server), **kwargs)


def _state():
    gen = torch.Generator().manual_seed(21)
    return {
        "embed": torch.randn(1024, 512, generator=gen).to(torch.bfloat16),  # 1 MiB: straight into its destination
        "norm": torch.randn(512, generator=gen),
        "layer.w": torch.randn(600, 700, generator=gen).to(torch.float16),
        "layer.b": torch.randint(-5, 5, (700,), generator=gen),
        "flags": torch.randint(0, 2, (33,), generator=gen).bool(),
        "step_scale": torch.tensor(0.5),
        "empty": torch.empty(0, 8, dtype=torch.uint8),
    }


def _zeros(state):
    return {name: torch.zeros_like(tensor) for name, tensor in state.items()}


def _keys(server, bucket, prefix):
    listing = server.boto3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def _download(server, bucket, prefix, directory):
    client = server.boto3_client()
    for key in _keys(server, bucket, prefix):
        client.download_file(bucket, key, os.path.join(directory, key.rsplit("/", 1)[1]))


def _spy_fetches(monkeypatch):
    """Record (key, bytes, destination address) of every ranged fill of the load."""
    fetches = []
    real = ObjectHandle.fetch_into

    def fetch_into(self, start, dest):
        version = real(self, start, dest)
        address = ctypes.addressof(ctypes.c_char.from_buffer(dest)) if len(dest) else None
        fetches.append((self.key, len(dest), address))
        return version

    monkeypatch.setattr(ObjectHandle, "fetch_into", fetch_into)
    return fetches


def test_save_and_load_round_trip(s3_server, bucket, monkeypatch):
    state = _state()
    path = f"s3://{bucket}/round"
    dcp.save(state, storage_writer=_writer(s3_server, path, MAPPING, thread_count=2))
    assert _keys(s3_server, bucket, "round/") == [
        "round/model-00001-of-00003.safetensors",
        "round/model-00002-of-00003.safetensors",
        "round/model-00003-of-00003.safetensors",
        "round/model.safetensors.index.json",
    ]
    index = json.loads(s3_server.boto3_client().get_object(Bucket=bucket, Key="round/model.safetensors.index.json")["Body"].read())
    assert index["weight_map"] == {name: f"model-{n:05d}-of-00003.safetensors" for name, n in MAPPING.items()}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())

    fetches = _spy_fetches(monkeypatch)
    out = _zeros(state)
    dcp.load(out, storage_reader=_reader(s3_server, path))
    for name, tensor in state.items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor), name
    # The 1 MiB tensor went straight into its destination's memory.
    assert (("round/model-00001-of-00003.safetensors", MiB, out["embed"].data_ptr())) in fetches
    # s3io.safetensors reads the same directory through its index.
    loaded = st.load(f"{path}/", endpoint=s3_server.endpoint_url)
    assert set(loaded) == set(state) and all(torch.equal(loaded[n], state[n]) for n in state)


def test_files_load_with_safetensors_and_torch_after_download(s3_server, bucket, tmp_path):
    storage = require_peer("safetensors.torch")
    from safetensors import safe_open
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    state = _state()
    dcp.save(state, storage_writer=_writer(s3_server, f"s3://{bucket}/interop", MAPPING))
    _download(s3_server, bucket, "interop/", str(tmp_path))
    loaded = {}
    for name in sorted(os.listdir(tmp_path)):
        if name.endswith(".safetensors"):
            loaded.update(storage.load_file(str(tmp_path / name)))
            with safe_open(str(tmp_path / name), framework="pt") as f:
                metadata, keys = f.metadata(), set(f.keys())
            assert metadata["format"] == "pt" and metadata["DCP_VERSION"] == "1.0"
            assert set(json.loads(metadata["DCP_SHARDING_INFO"])) == keys
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    out = _zeros(state)
    dcp.load(out, storage_reader=HuggingFaceStorageReader(str(tmp_path)))
    assert all(torch.equal(out[n], state[n]) for n in state)


def test_load_files_written_by_safetensors(s3_server, bucket, tmp_path):
    storage = require_peer("safetensors.torch")
    state = _state()
    first = {k: state[k] for k in ("embed", "norm", "layer.w")}
    second = {k: v for k, v in state.items() if k not in first}
    storage.save_file(first, str(tmp_path / "a.safetensors"), metadata={"producer": "someone else"})
    storage.save_file(second, str(tmp_path / "b.safetensors"))
    client = s3_server.boto3_client()
    for name in ("a.safetensors", "b.safetensors"):
        client.upload_file(str(tmp_path / name), bucket, f"foreign/{name}")
    out = _zeros(state)
    dcp.load(out, storage_reader=_reader(s3_server, f"s3://{bucket}/foreign"))
    assert all(torch.equal(out[n], state[n]) for n in state)


def test_partial_load_fetches_only_its_tensors(s3_server, bucket, monkeypatch):
    state = _state()
    path = f"s3://{bucket}/partial"
    dcp.save(state, storage_writer=_writer(s3_server, path, MAPPING))
    fetches = _spy_fetches(monkeypatch)
    out = {"norm": torch.zeros(512), "layer.b": torch.zeros(700, dtype=torch.int64)}
    dcp.load(out, storage_reader=_reader(s3_server, path))
    assert torch.equal(out["norm"], state["norm"]) and torch.equal(out["layer.b"], state["layer.b"])
    fetched = sum(size for _, size, _ in fetches)
    assert fetched == 512 * 4 + 700 * 8  # the two tensors' bytes, nothing of the others (headers aside)
    assert {key for key, _, _ in fetches} == {"partial/model-00001-of-00003.safetensors",
                                              "partial/model-00002-of-00003.safetensors"}


def test_dtype_follows_the_destination_like_torch(s3_server, bucket):
    state = _state()
    path = f"s3://{bucket}/dtypes"
    dcp.save(state, storage_writer=_writer(s3_server, path))
    assert _keys(s3_server, bucket, "dtypes/") == ["dtypes/model-00001-of-00001.safetensors",
                                                  "dtypes/model.safetensors.index.json"]
    out = _zeros(state)
    out["embed"] = torch.zeros(1024, 512, dtype=torch.float32)  # stored bf16
    out["layer.w"] = torch.zeros(600, 700, dtype=torch.float64)  # stored fp16
    out["norm"] = torch.zeros(1024)[::2]  # not contiguous
    dcp.load(out, storage_reader=_reader(s3_server, path))
    assert out["embed"].dtype == torch.float32 and torch.equal(out["embed"], state["embed"].float())
    assert torch.equal(out["layer.w"], state["layer.w"].double())
    assert torch.equal(out["norm"], state["norm"])


def test_save_distributed_one_rank_and_load(s3_server, bucket):
    state = _state()
    path = f"s3://{bucket}/distributed"
    dcp.save(state, storage_writer=_writer(s3_server, path, save_distributed=True))
    assert _keys(s3_server, bucket, "distributed/") == ["distributed/shard-00001-model-00001-of-00001.safetensors"]
    out = _zeros(state)
    dcp.load(out, storage_reader=_reader(s3_server, path))
    assert all(torch.equal(out[n], state[n]) for n in state)


def test_failed_save_raises_one_error_and_leaves_no_half_written_object(s3_server, bucket, monkeypatch):
    state = _state()
    path = f"s3://{bucket}/failed"
    writer = _writer(s3_server, path, MAPPING, thread_count=3)
    on_put(monkeypatch, writer.fs.client, "00002-of-00003.safetensors", lambda stream: FailingUpload(stream, limit=4096))
    with pytest.raises(CheckpointException) as failure:
        dcp.save(state, storage_writer=writer)
    errors = [error for error, _ in failure.value.failures.values()]
    assert len(errors) == 1 and isinstance(errors[0], InjectedUploadFailure)
    keys = _keys(s3_server, bucket, "failed/")
    assert "failed/model-00002-of-00003.safetensors" not in keys
    assert "failed/model.safetensors.index.json" not in keys


def test_what_cannot_be_saved_fails_before_writing(s3_server, bucket):
    path = f"s3://{bucket}/refused"
    with pytest.raises(CheckpointException, match="'step' is not a tensor: safetensors stores tensors only"):
        dcp.save({"w": torch.ones(3), "step": 7}, storage_writer=_writer(s3_server, path))
    with pytest.raises(CheckpointException, match="fqn_to_index_mapping has no file for tensor 'b'"):
        dcp.save({"a": torch.ones(3), "b": torch.ones(2)}, storage_writer=_writer(s3_server, path, {"a": 1}))
    with pytest.raises(CheckpointException, match="tensor 'c': dtype torch.complex128 cannot be stored"):
        dcp.save({"c": torch.ones(2, dtype=torch.complex128)}, storage_writer=_writer(s3_server, path))
    assert _keys(s3_server, bucket, "refused/") == []
    with pytest.raises(ValueError, match="enable_consolidation is not supported on S3"):
        _writer(s3_server, path, enable_consolidation=True)
    with pytest.raises(ValueError, match="file indices from 1"):
        _writer(s3_server, path, {"a": 0})


def test_bad_checkpoint_fails_before_filling_anything(s3_server, bucket):
    state = _state()
    path = f"s3://{bucket}/bad"
    dcp.save(state, storage_writer=_writer(s3_server, path, MAPPING))
    client = s3_server.boto3_client()
    third = client.get_object(Bucket=bucket, Key="bad/model-00003-of-00003.safetensors")["Body"].read()
    client.delete_object(Bucket=bucket, Key="bad/model-00003-of-00003.safetensors")
    out = _zeros(state)
    with pytest.raises(CheckpointException, match=r"names shard 'model-00003-of-00003.safetensors' .* does not exist"):
        dcp.load(out, storage_reader=_reader(s3_server, path))
    assert all(not tensor.any() for tensor in out.values())
    with pytest.raises(S3ObjectNotFound):  # torch keeps only the message; the reader raises the type
        _reader(s3_server, path).read_metadata()
    client.put_object(Bucket=bucket, Key="bad/model-00003-of-00003.safetensors", Body=third)
    first = client.get_object(Bucket=bucket, Key="bad/model-00001-of-00003.safetensors")["Body"].read()
    client.put_object(Bucket=bucket, Key="bad/model-00001-of-00003.safetensors", Body=first[:-100])
    with pytest.raises(CheckpointException, match=r"model-00001-of-00003.safetensors: tensor '\w+' .* runs past the end"):
        dcp.load(out, storage_reader=_reader(s3_server, path))
    assert all(not tensor.any() for tensor in out.values())
    with pytest.raises(SafetensorsError, match="truncated"):
        _reader(s3_server, path).read_metadata()
    with pytest.raises(CheckpointException, match="holds no"):
        dcp.load(out, storage_reader=_reader(s3_server, f"s3://{bucket}/no-such-checkpoint"))


# -- two ranks, DTensor shards ---------------------------------------------------------------

WORLD = 2


def _sharded_full():
    gen = torch.Generator().manual_seed(5)
    return {
        "rows": torch.randn(1024, 1024, generator=gen),  # 4 MiB, Shard(0): a contiguous half per rank
        "cols": torch.randn(4, 262144, generator=gen),  # 4 MiB, Shard(1): rows of 1 MiB, a 512 KiB run per rank
        "uneven": torch.randn(7, 3, generator=gen).to(torch.bfloat16),  # Shard(0) of 7 rows: 4 and 3
        "bias": torch.randn(1000, generator=gen),  # replicated: both ranks read it
    }


def _rank_worker(rank, port, endpoint, region, path):
    warnings.filterwarnings("ignore")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        full = _sharded_full()
        placements = {"rows": Shard(0), "cols": Shard(1), "uneven": Shard(0), "bias": Replicate()}
        out = {name: distribute_tensor(torch.zeros_like(full[name]), mesh, [placements[name]]) for name in full}
        dcp.load(out, storage_reader=S3HuggingFaceStorageReader(region, path, s3client_config=S3ClientConfig(endpoint_url=endpoint)))
        for name, tensor in out.items():
            assert torch.equal(tensor.full_tensor(), full[name]), name
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_load_their_dtensor_shards(rclone_server):
    bucket = rclone_server.make_bucket()
    try:
        path = f"s3://{bucket}/sharded"
        full = _sharded_full()
        mapping = {"rows": 1, "uneven": 1, "cols": 2, "bias": 2}
        dcp.save(full, storage_writer=_writer(rclone_server, path, mapping), no_dist=True)
        data_bytes = sum(t.numel() * t.element_size() for t in full.values())
        with FaultProxy(rclone_server.endpoint_url) as proxy:
            spawn_ranks(_rank_worker, (free_port(), proxy.endpoint_url, rclone_server.region, path), WORLD, timeout=120)
            fetched = sum(entry.response_bytes for entry in proxy.log if entry.method == "GET")
        # Each rank read each file's first 64 KiB (the header) and its own shards; the replicated
        # bias twice.  Reading every tensor whole on both ranks would be twice the data.
        headers = WORLD * 2 * 64 * 1024
        assert fetched <= data_bytes + headers + 1000 * 4 + 16 * 1024, (fetched, data_bytes)
    finally:
        _remove_bucket(rclone_server, bucket)
