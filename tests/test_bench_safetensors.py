"""The safetensors bench suite's setup and helpers, on a tiny checkpoint: nothing is timed here."""
import os

import pytest
import torch

from conftest import _remove_bucket, require_peer
from s3io.bench import suite_safetensors as suite
from s3io.bench._suites import available_suites, suite_doc

KiB, MiB = 1024, 1024 * 1024


def test_suite_is_listed():
    assert "safetensors" in available_suites()
    assert suite_doc("safetensors").startswith("safetensors: a Hugging Face checkpoint loaded from S3")


@pytest.mark.parametrize("total, largest", [(512 * MiB, 16 * MiB), (32 * MiB, 2 * MiB)])
def test_workload_shape(total, largest):
    shards = suite.workload(total, largest)
    specs = [spec for shard in shards for spec in shard]
    sizes = [suite.spec_nbytes(spec) for spec in specs]
    assert len(shards) == suite.SHARDS and all(shards)
    assert total <= sum(sizes) <= total + largest
    assert min(sizes) >= suite.MIN_TENSOR_BYTES and max(sizes) <= largest
    assert max(sizes) > largest // 2 and sorted(sizes)[len(sizes) // 2] < largest // 8  # mixed sizes
    assert {spec.dtype for spec in specs} == {"bfloat16", "float32", "float16", "int64", "uint8", "bool"}
    assert len({spec.name for spec in specs}) == len(specs)
    per_shard = [sum(suite.spec_nbytes(s) for s in shard) for shard in shards]
    assert max(per_shard) <= total / suite.SHARDS + largest
    assert suite.workload(total, largest) == shards  # seeded


def test_runai_environment_is_restored(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://before")
    monkeypatch.delenv("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", raising=False)
    with suite.runai_environment("http://127.0.0.1:1"):
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
        assert os.environ["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] == "0"
    assert os.environ["AWS_ENDPOINT_URL"] == "http://before"
    assert "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING" not in os.environ


def test_every_loader_reads_a_tiny_checkpoint(rclone_server, tmp_path, monkeypatch):
    """The three loaders of the suite, once each, on a ~1 MiB checkpoint on the bench's kind of server."""
    require_peer("safetensors.torch")
    require_peer("runai_model_streamer")
    specs = suite.workload(1 * MiB, 256 * KiB)
    shards = suite.materialize(specs)
    expected = {name: tensor for shard in shards for name, tensor in shard.items()}
    paths = suite.write_checkpoint(shards, str(tmp_path / "local"))
    assert [os.path.basename(p) for p in paths] == ["model-%05d-of-00004.safetensors" % k for k in range(1, 5)]
    bucket = rclone_server.make_bucket()
    try:
        _load_every_way(rclone_server, bucket, tmp_path, paths, expected, monkeypatch)
    finally:
        _remove_bucket(rclone_server, bucket)


def _load_every_way(rclone_server, bucket, tmp_path, paths, expected, monkeypatch):
    suite.upload_directory(rclone_server.boto3_client(), bucket, str(tmp_path / "local"), "run/safetensors")
    uris = ["s3://%s/run/safetensors/%s" % (bucket, os.path.basename(p)) for p in paths]
    for name, value in rclone_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # as the bench context leaves it: Run:ai gets AWS_ENDPOINT_URL
    got = suite.load_s3io("s3://%s/run/safetensors/" % bucket, rclone_server.endpoint_url)
    suite.check_same(expected, got, suite.S3IO)
    with suite.runai_environment(rclone_server.endpoint_url):
        suite.check_same(expected, suite.load_runai(uris), suite.RUNAI)
    local = suite.load_local(paths)
    suite.check_same(expected, local, suite.LOCAL)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in local.values())
    wrong = dict(expected)
    wrong[next(iter(wrong))] = torch.zeros(1)
    with pytest.raises(AssertionError, match="loaded .* wrong"):
        suite.check_same(wrong, got, "s3io")
