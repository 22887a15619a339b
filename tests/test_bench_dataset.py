"""The dataset benchmark's parts (``python -m s3io.bench dataset``), without timing anything."""
import multiprocessing
import pickle
import time

import pytest

from conftest import require_peer
from s3io.bench import suite_dataset as suite
from s3io.bench._harness import available_suites

MiB = 1024 * 1024


def test_the_suite_is_listed_and_its_workload_is_what_the_issue_asks():
    assert "dataset" in available_suites()
    sizes = suite.object_sizes(1000)
    assert sizes == suite.object_sizes(1000) and len(sizes) == 1000
    assert min(sizes) >= 50 * 1024 and max(sizes) <= 150 * 1024 and len(set(sizes)) > 900
    row = suite.objects_per_second("case", "impl", 100, [0.5, 1.0, 2.0])
    assert (row.value, row.lo, row.hi, row.unit) == (100.0, 50.0, 200.0, "objects/s")
    assert suite.sum_batch([1, 2, 3]) == 6
    with pytest.raises(ValueError, match="no iterable dataset for boto3"):
        suite.make_dataset(suite.BOTO3, suite.ITERABLE, "b", ["k"], "http://127.0.0.1:1", "us-east-1")


def _hold_memory(nbytes, seconds):
    time.sleep(0.2)  # sampled before it grows
    block = bytearray(nbytes)  # zero-filled: every page touched
    time.sleep(seconds)
    return len(block)


def test_worker_peak_rss_sees_the_children_started_inside_the_block():
    require_peer("psutil")
    context = multiprocessing.get_context("fork")
    before = context.Process(target=time.sleep, args=(2,))
    before.start()  # a child from before the block (a server) is not counted
    try:
        with suite.WorkerPeakRSS() as peak:
            child = context.Process(target=_hold_memory, args=(48 * MiB, 0.5))
            child.start()
            child.join()
        assert peak.children == 1
        assert 40 * MiB <= peak.growth_bytes <= 80 * MiB, peak.growth_bytes
        assert peak.peak_bytes >= peak.growth_bytes
    finally:
        before.kill()
        before.join()


def test_every_implementation_reads_every_byte_in_both_modes(rclone_server):
    bucket = rclone_server.make_bucket()
    sizes = suite.object_sizes(10, seed=1)
    keys = ["ds/obj-%02d" % i for i in range(len(sizes))]
    client = rclone_server.boto3_client()
    for key, size in zip(keys, sizes):
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * size)
    impls = [suite.S3IO, suite.BOTO3]
    if require_peer("s3torchconnector"):
        impls.append(suite.S3TC)
    for impl in impls:
        for mode in (suite.ITERABLE, suite.MAP):
            if impl == suite.BOTO3 and mode == suite.ITERABLE:
                continue
            # In this process (no workers): the loaders' parts, not their speed.
            suite.epoch(impl, mode, bucket, keys, rclone_server.endpoint_url, rclone_server.region, sum(sizes), workers=0)()
    with pytest.raises(AssertionError, match="bytes, expected"):  # a short epoch is an error, never a figure
        suite.epoch(suite.S3IO, suite.MAP, bucket, keys, rclone_server.endpoint_url, rclone_server.region, 1, workers=0)()
    dataset = suite.Boto3MapDataset(bucket, keys, rclone_server.endpoint_url, rclone_server.region)
    assert dataset[0] == sizes[0]
    copy = pickle.loads(pickle.dumps(dataset))  # for DataLoader workers: no client crosses
    assert copy._client is None and copy[1] == sizes[1]
