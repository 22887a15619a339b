"""S3MapDataset and S3IterableDataset end to end, on moto's server and ``rclone serve s3``.

What a user of s3torchconnector's datasets relies on (listing order, readers
with ``bucket`` and ``key``, sharding, DataLoader workers under fork and
spawn, persistent workers), and what s3io adds: objects fetched ahead of the
transform, in order, capped in bytes, backing off when the store throttles.
"""
import functools
import hashlib
import io
import os
import pickle
import time

import pytest
import torch
import torch.utils.data

import s3io._client as client_module
from conftest import _remove_bucket as remove_bucket  # the bucket fixture's own clean-up
from s3io import S3ClientConfig, S3Exception, S3IterableDataset, S3MapDataset, S3ObjectNotFound, S3BucketNotFound
from s3io import S3ReaderConstructor
from s3io.testing.faultproxy import FaultProxy

KIB, MIB = 1024, 1024 * 1024
BAD_URIS = ["http://x/y", "s3://", "s3:///k", ""]


def read_all(reader):
    """A picklable transform: the key and the object's bytes."""
    return reader.key, reader.read()


def key_and_digest(reader):
    """A picklable transform: the key, a digest of the bytes, and the DataLoader worker that read it."""
    info = torch.utils.data.get_worker_info()
    return reader.key, hashlib.sha256(reader.read()).hexdigest(), None if info is None else info.id


@pytest.fixture(scope="module")
def bucket(s3_server):
    """One bucket per server for this module (each test has its own prefix): buckets are slow to make and empty."""
    name = s3_server.make_bucket()
    yield name
    remove_bucket(s3_server, name)


@functools.lru_cache(maxsize=None)
def _boto3_client(s3_server):
    return s3_server.boto3_client()


def _put(s3_server, bucket, objects):
    client = _boto3_client(s3_server)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return objects


def _objects(prefix, count, size=3000):
    # Uploaded in reverse: the listing, not the upload, decides the order.
    return {f"{prefix}obj-{i:03d}": os.urandom(size + i) for i in reversed(range(count))}


def _config(endpoint):
    return S3ClientConfig(endpoint_url=endpoint)


def _digests(objects):
    return sorted((key, hashlib.sha256(body).hexdigest()) for key, body in objects.items())


# -- what every item is ---------------------------------------------------------------------


def test_both_datasets_list_in_key_order_and_hand_out_readers_with_bucket_and_key(s3_server, bucket):
    objects = _put(s3_server, bucket, _objects("d/", 20))
    _put(s3_server, bucket, {"other/x": b"not under the prefix"})
    config = _config(s3_server.endpoint_url)
    uri = f"s3://{bucket}/d/"
    keys = sorted(objects)

    for prefetch_objects in (16, 0):  # 0: each object fetched when its turn comes, as in s3torchconnector
        iterable = S3IterableDataset.from_prefix(uri, region=s3_server.region, s3client_config=config,
                                                 prefetch_objects=prefetch_objects)
        readers = list(iterable)
        assert [(r.bucket, r.key) for r in readers] == [(bucket, k) for k in keys]
        assert [r.read() for r in readers] == [objects[k] for k in keys]

    mapped = S3MapDataset.from_prefix(uri, region=s3_server.region, s3client_config=config, transform=read_all)
    assert len(mapped) == 20
    assert mapped[3] == (keys[3], objects[keys[3]]) and mapped[-1] == (keys[-1], objects[keys[-1]])
    assert mapped.__getitems__([5, 0, 5, 19]) == [(keys[i], objects[keys[i]]) for i in (5, 0, 5, 19)]
    reader = S3MapDataset.from_prefix(uri, region=s3_server.region, s3client_config=config)[7]
    assert (reader.bucket, reader.key) == (bucket, keys[7]) and reader.read() == objects[keys[7]]
    with pytest.raises(IndexError):
        mapped[20]

    uris = [f"s3://{bucket}/{k}" for k in reversed(keys)]  # from_objects keeps the order given
    assert list(S3IterableDataset.from_objects(uris, region=s3_server.region, s3client_config=config,
                                               transform=read_all)) == [(k, objects[k]) for k in reversed(keys)]
    single = S3MapDataset.from_objects(uris[0], region=s3_server.region, s3client_config=config, transform=read_all)
    assert len(single) == 1 and single[0] == (keys[-1], objects[keys[-1]])


def test_odd_keys_empty_and_multipart_objects_round_trip(s3_server, bucket):
    odd = {
        "odd/a b c.bin": os.urandom(1000),
        "odd/ünïcødé/ß.bin": os.urandom(2000),
        "odd/plus+and=equals&amp.bin": os.urandom(3000),
        "odd/empty": b"",
        "odd/z-big": os.urandom(11 * MIB + 17),  # three 5 MiB parts
    }
    _put(s3_server, bucket, odd)
    config = S3ClientConfig(endpoint_url=s3_server.endpoint_url, part_size=5 * MIB)
    expected = sorted(odd.items())
    # With a 1 MiB cap the big object's GETs are cut to fit and the rest waits for its turn.
    listed = S3IterableDataset.from_prefix(f"s3://{bucket}/odd/", region=s3_server.region, s3client_config=config,
                                           transform=read_all, prefetch_bytes=MIB)
    assert list(listed) == expected
    named = S3IterableDataset.from_objects([f"s3://{bucket}/{k}" for k, _ in expected], region=s3_server.region,
                                           s3client_config=config, transform=read_all, prefetch_bytes=MIB)
    assert list(named) == expected
    mapped = S3MapDataset.from_prefix(f"s3://{bucket}/odd/", region=s3_server.region, s3client_config=config, transform=read_all)
    assert mapped.__getitems__(list(range(len(expected)))) == expected


def test_a_prefetched_reader_is_a_file(s3_server, bucket):
    data = os.urandom(200 * KIB)
    _put(s3_server, bucket, {"f/k": data})
    (reader,) = S3IterableDataset.from_prefix(f"s3://{bucket}/f/", region=s3_server.region,
                                              s3client_config=_config(s3_server.endpoint_url))
    assert reader.read(10) == data[:10] and reader.tell() == 10
    assert reader.seek(-5, io.SEEK_END) == len(data) - 5 and reader.read() == data[-5:]
    assert reader.read() == b"" and reader.seek(10 * len(data)) == len(data)
    reader.seek(100)
    buf = bytearray(1000)
    assert reader.readinto(buf) == 1000 and buf == data[100:1100]
    reader.seek(0)
    assert reader.read() == data and reader.readable() and reader.seekable() and not reader.writable()
    reader.close()
    with pytest.raises(ValueError):
        reader.read()
    # torch.load straight from a prefetched reader
    tensor = torch.arange(1000)
    body = io.BytesIO()
    torch.save({"t": tensor}, body)
    _put(s3_server, bucket, {"f/t.pt": body.getvalue()})
    loaded = S3MapDataset.from_objects(f"s3://{bucket}/f/t.pt", region=s3_server.region,
                                       s3client_config=_config(s3_server.endpoint_url), transform=torch.load)
    assert torch.equal(loaded.__getitems__([0])[0]["t"], tensor)


# -- bad input and failures -------------------------------------------------------------------


@pytest.mark.parametrize("uri", BAD_URIS)
@pytest.mark.parametrize("dataset", [S3MapDataset, S3IterableDataset])
def test_bad_uris_raise_value_error_naming_the_uri(dataset, uri):
    with pytest.raises(ValueError) as info:
        dataset.from_prefix(uri, region="us-east-1")
    assert repr(uri) in str(info.value)
    with pytest.raises(ValueError) as info:
        dataset.from_objects(["s3://bucket/fine", uri], region="us-east-1")
    assert repr(uri) in str(info.value)
    with pytest.raises(ValueError, match="'s3://bucket/'"):
        dataset.from_objects("s3://bucket/", region="us-east-1")  # a bucket, not an object


@pytest.mark.parametrize("dataset", [S3MapDataset, S3IterableDataset])
def test_knobs_are_checked_and_errors_name_the_bad_value(dataset):
    good = dataset.from_objects("s3://b/k", region="us-east-1", prefetch_objects=0, prefetch_bytes=MIB)
    assert (good.prefetch_objects, good.prefetch_bytes) == (0, MIB)
    default = dataset.from_objects("s3://b/k", region="us-east-1")
    assert (default.prefetch_objects, default.prefetch_bytes) == (16, 128 * MIB)
    for kwargs, error, text in [
        (dict(prefetch_objects=-1), ValueError, "prefetch_objects must be between 0 and 1024, not -1"),
        (dict(prefetch_objects=1025), ValueError, "not 1025"),
        (dict(prefetch_objects=2.0), TypeError, "prefetch_objects must be an int, not float"),
        (dict(prefetch_bytes=MIB - 1), ValueError, f"prefetch_bytes must be between 1 MiB (1048576) and 1 TiB ({1 << 40}), not {MIB - 1}"),
        (dict(prefetch_bytes=True), TypeError, "prefetch_bytes must be an int, not bool"),
        (dict(transform="read"), TypeError, "transform must be callable, not str"),
    ]:
        with pytest.raises(error) as info:
            dataset.from_objects("s3://b/k", region="us-east-1", **kwargs)
        assert text in str(info.value)


def test_missing_objects_and_buckets_raise_the_matching_exception_naming_the_uri(s3_server, bucket):
    config = _config(s3_server.endpoint_url)
    region = s3_server.region
    for dataset in (
        S3IterableDataset.from_objects(f"s3://{bucket}/nope", region=region, s3client_config=config, transform=read_all),
        S3IterableDataset.from_objects(f"s3://{bucket}/nope", region=region, s3client_config=config, transform=read_all,
                                       prefetch_objects=0),
    ):
        with pytest.raises(S3ObjectNotFound, match=f"s3://{bucket}/nope"):
            list(dataset)
    missing_bucket = f"s3io-missing-{os.urandom(4).hex()}"
    with pytest.raises(S3BucketNotFound, match=f"s3://{missing_bucket}/x"):
        list(S3IterableDataset.from_objects(f"s3://{missing_bucket}/x", region=region, s3client_config=config, transform=read_all))
    with pytest.raises(S3BucketNotFound, match=f"s3://{missing_bucket}"):
        list(S3IterableDataset.from_prefix(f"s3://{missing_bucket}/p/", region=region, s3client_config=config))
    with pytest.raises(S3BucketNotFound, match=f"s3://{missing_bucket}"):
        len(S3MapDataset.from_prefix(f"s3://{missing_bucket}/p/", region=region, s3client_config=config))
    mapped = S3MapDataset.from_objects([f"s3://{bucket}/nope"], region=region, s3client_config=config, transform=read_all)
    with pytest.raises(S3ObjectNotFound, match=f"s3://{bucket}/nope"):
        mapped.__getitems__([0])
    with pytest.raises(S3ObjectNotFound, match=f"s3://{bucket}/nope"):
        mapped[0]


def test_a_failed_object_raises_at_its_place_and_the_others_still_arrive(s3_server, bucket):
    objects = _put(s3_server, bucket, _objects("e/", 6))
    keys = sorted(objects)
    uris = [f"s3://{bucket}/{k}" for k in keys]
    uris.insert(2, f"s3://{bucket}/e/missing")
    dataset = S3IterableDataset.from_objects(uris, region=s3_server.region, s3client_config=_config(s3_server.endpoint_url),
                                             transform=read_all)
    it = iter(dataset)
    assert next(it) == (keys[0], objects[keys[0]])
    time.sleep(0.3)  # the missing object's GET has failed by now, in the background
    assert next(it) == (keys[1], objects[keys[1]])
    with pytest.raises(S3ObjectNotFound, match="e/missing"):
        next(it)
    assert list(it) == [(k, objects[k]) for k in keys[2:]]


class TransformFailed(Exception):
    pass


def test_an_exception_in_the_transform_propagates_unchanged_and_iteration_goes_on(s3_server, bucket):
    objects = _put(s3_server, bucket, _objects("t/", 5))
    keys = sorted(objects)
    raised = TransformFailed("bad item")

    def transform(reader):
        if reader.key == keys[1]:
            raise raised
        return reader.read()

    config = _config(s3_server.endpoint_url)
    it = iter(S3IterableDataset.from_prefix(f"s3://{bucket}/t/", region=s3_server.region, s3client_config=config, transform=transform))
    assert next(it) == objects[keys[0]]
    with pytest.raises(TransformFailed) as info:
        next(it)
    assert info.value is raised
    assert list(it) == [objects[k] for k in keys[2:]]
    mapped = S3MapDataset.from_prefix(f"s3://{bucket}/t/", region=s3_server.region, s3client_config=config, transform=transform)
    with pytest.raises(TransformFailed) as info:
        mapped.__getitems__([0, 1, 2])
    assert info.value is raised


# -- listing, pickling, sharding in one process --------------------------------------------------------


def test_an_iterable_dataset_lists_a_prefix_page_by_page(s3_server, bucket, monkeypatch):
    objects = _put(s3_server, bucket, _objects("l/", 10))
    pages = []
    real_list_objects = client_module.S3Client.list_objects

    def two_keys_a_page(self, bucket, prefix="", delimiter="", max_keys=1000):
        for page in real_list_objects(self, bucket, prefix, delimiter, max_keys=2):
            pages.append(page)
            yield page

    monkeypatch.setattr(client_module.S3Client, "list_objects", two_keys_a_page)
    seen = []

    def transform(reader):
        seen.append((reader.key, len(pages)))
        return reader.read()

    dataset = S3IterableDataset.from_prefix(f"s3://{bucket}/l/", region=s3_server.region, prefetch_objects=2,
                                            s3client_config=_config(s3_server.endpoint_url), transform=transform)
    assert list(dataset) == [objects[k] for k in sorted(objects)]
    assert len(pages) == 5
    # Each page is listed only when the window of two objects ahead reaches it.
    assert [listed for _, listed in seen] == [2, 2, 3, 3, 4, 4, 5, 5, 5, 5]


def test_datasets_pickle_with_their_listing(s3_server, bucket):
    objects = _put(s3_server, bucket, _objects("s/", 9))
    keys = sorted(objects)
    config = _config(s3_server.endpoint_url)
    mapped = S3MapDataset.from_prefix(f"s3://{bucket}/s/", region=s3_server.region, s3client_config=config, transform=read_all)
    assert len(mapped) == 9  # listed before pickling: the copy keeps the listing
    copy = pickle.loads(pickle.dumps(mapped))
    assert len(copy) == 9 and copy.__getitems__([8, 0]) == [(keys[8], objects[keys[8]]), (keys[0], objects[keys[0]])]

    dataset = S3IterableDataset.from_prefix(f"s3://{bucket}/s/", region=s3_server.region, s3client_config=config,
                                            transform=read_all, enable_sharding=True)
    list(dataset)  # a client was made: pickling leaves it behind
    copy = pickle.loads(pickle.dumps(dataset))
    assert list(copy) == [(k, objects[k]) for k in keys]


# -- ahead of the transform: latency, the byte cap, throttling ------------------------------------------


@pytest.mark.parametrize("source", ["prefix", "objects"])
def test_objects_are_fetched_ahead_so_latency_overlaps(s3_server, bucket, source):
    count, latency = 32, 0.1
    objects = _put(s3_server, bucket, _objects("lat/", count, size=20 * KIB))
    keys = sorted(objects)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.set_latency(latency)
        config = _config(proxy.endpoint_url)
        options = dict(region=s3_server.region, s3client_config=config, transform=read_all)
        if source == "prefix":
            dataset = S3IterableDataset.from_prefix(f"s3://{bucket}/lat/", **options)
            mapped = S3MapDataset.from_prefix(f"s3://{bucket}/lat/", **options)
        else:
            dataset = S3IterableDataset.from_objects([f"s3://{bucket}/{k}" for k in keys], **options)
            mapped = S3MapDataset.from_objects([f"s3://{bucket}/{k}" for k in keys], **options)
        # Overlap is shown by what the proxy saw in flight, not by a clock (the machine is shared and noisy):
        # one object after the other would never have more than one GET in flight.
        # The first epoch also finds out how many requests the store takes at once (slow start from two).
        for _ in range(2):
            assert list(dataset) == [(k, objects[k]) for k in keys]
        assert proxy.peak_in_flight >= 8 and proxy.count("GetObject") == 2 * count
        len(mapped)  # listed (or not) before the counts restart
        proxy.reset_stats()
        assert mapped.__getitems__(list(reversed(range(count)))) == [(k, objects[k]) for k in reversed(keys)]
        assert proxy.peak_in_flight >= 8 and proxy.count("GetObject") == count  # a batch's objects fetched together


@pytest.mark.parametrize("source", ["prefix", "objects"])
def test_bytes_fetched_ahead_never_exceed_the_cap(s3_server, bucket, source):
    cap, size = MIB, 300 * KIB
    objects = _put(s3_server, bucket, _objects("cap/", 10, size=size))
    keys = sorted(objects)
    ahead = []
    with FaultProxy(s3_server.endpoint_url) as proxy:

        def transform(reader):
            time.sleep(0.03)  # a slow consumer: the GETs ahead have been answered by now
            position = keys.index(reader.key)
            fetched = {}
            for entry in proxy.log:
                key = entry.path.split("/", 2)[-1]
                if entry.kind == "GetObject" and keys.index(key) > position:
                    fetched[key] = fetched.get(key, 0) + entry.response_bytes
            ahead.append(sum(fetched.values()))
            return reader.read()

        config = _config(proxy.endpoint_url)
        if source == "prefix":
            dataset = S3IterableDataset.from_prefix(f"s3://{bucket}/cap/", region=s3_server.region, s3client_config=config,
                                                    transform=transform, prefetch_bytes=cap)
        else:
            dataset = S3IterableDataset.from_objects([f"s3://{bucket}/{k}" for k in keys], region=s3_server.region,
                                                     s3client_config=config, transform=transform, prefetch_bytes=cap)
        assert list(dataset) == [objects[k] for k in keys]
    assert max(ahead) <= cap, ahead
    assert max(ahead) >= 2 * size, ahead  # it did fetch ahead, as far as the cap allows


def test_an_epoch_through_a_throttling_store_is_exact_with_few_rejections(s3_server, bucket):
    objects = _put(s3_server, bucket, _objects("thr/", 40, size=30 * KIB))
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.set_throttle(2)
        dataset = S3IterableDataset.from_prefix(f"s3://{bucket}/thr/", region=s3_server.region,
                                                s3client_config=_config(proxy.endpoint_url), transform=read_all)
        assert list(dataset) == sorted(objects.items())
        # Slow start from two requests meets the limit once or twice; then the GETs stay under it.
        assert proxy.requests_rejected <= 3, (proxy.requests_forwarded, proxy.requests_rejected)


# -- DataLoader workers ---------------------------------------------------------------------------------


def _loader_results(loader, epochs=1):
    out = []
    for _ in range(epochs):
        epoch = []
        for batch in loader:
            epoch.extend(batch if isinstance(batch, list) else [batch])
        out.append(epoch)
    return out


def test_dataloader_workers_under_fork_with_persistent_workers_across_epochs(s3_server, bucket):
    objects = _put(s3_server, bucket, _objects("dl/", 14))
    expected = _digests(objects)
    config = _config(s3_server.endpoint_url)
    uri = f"s3://{bucket}/dl/"

    sharded = S3IterableDataset.from_prefix(uri, region=s3_server.region, s3client_config=config, transform=key_and_digest,
                                            enable_sharding=True)
    loader = torch.utils.data.DataLoader(sharded, batch_size=None, num_workers=2, multiprocessing_context="fork",
                                         collate_fn=tuple)
    (epoch,) = _loader_results(loader)
    assert sorted((k, d) for k, d, _ in epoch) == expected  # each object once
    assert sorted(k for k, _, worker in epoch if worker == 1) == sorted(objects)[1::2]  # by position modulo 2

    unsharded = S3IterableDataset.from_prefix(uri, region=s3_server.region, s3client_config=config, transform=key_and_digest)
    loader = torch.utils.data.DataLoader(unsharded, batch_size=None, num_workers=2, multiprocessing_context="fork",
                                         collate_fn=tuple)
    (epoch,) = _loader_results(loader)
    assert sorted((k, d) for k, d, _ in epoch) == sorted(expected * 2)  # every worker yields everything

    mapped = S3MapDataset.from_prefix(uri, region=s3_server.region, s3client_config=config, transform=key_and_digest)
    loader = torch.utils.data.DataLoader(mapped, batch_size=4, shuffle=True, num_workers=2, collate_fn=list,
                                         multiprocessing_context="fork", persistent_workers=True)
    for epoch in _loader_results(loader, epochs=2):
        assert sorted((k, d) for k, d, _ in epoch) == expected


def test_dataloader_workers_under_spawn_with_persistent_workers_across_epochs(rclone_server):
    # Spawned workers import torch afresh (seconds each): one loader, on one server; both datasets'
    # pickling is checked on both servers above.
    bucket = rclone_server.make_bucket()
    objects = _put(rclone_server, bucket, _objects("sp/", 10))
    dataset = S3IterableDataset.from_prefix(f"s3://{bucket}/sp/", region=rclone_server.region, transform=key_and_digest,
                                            s3client_config=_config(rclone_server.endpoint_url), enable_sharding=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="spawn",
                                         persistent_workers=True, collate_fn=tuple)
    for epoch in _loader_results(loader, epochs=2):
        assert sorted((k, d) for k, d, _ in epoch) == _digests(objects)
        assert {worker for _, _, worker in epoch} == {0, 1}


def test_a_non_sequential_reader_is_built_when_its_turn_comes(s3_server, bucket):
    objects = _put(s3_server, bucket, _objects("r/", 3))
    config = _config(s3_server.endpoint_url)
    constructor = S3ReaderConstructor.range_based()
    readers = list(S3IterableDataset.from_prefix(f"s3://{bucket}/r/", region=s3_server.region, s3client_config=config,
                                                 reader_constructor=constructor))
    assert [type(r).__name__ for r in readers] == ["RangedS3Reader"] * 3
    assert [r.read() for r in readers] == [objects[k] for k in sorted(objects)]
    mapped = S3MapDataset.from_prefix(f"s3://{bucket}/r/", region=s3_server.region, s3client_config=config,
                                      reader_constructor=constructor, transform=read_all)
    assert mapped.__getitems__([2, 1]) == [(k, objects[k]) for k in sorted(objects)[2:0:-1]]
    with pytest.raises(S3Exception):
        S3MapDataset.from_objects(f"s3://{bucket}/r/none", region=s3_server.region, s3client_config=config,
                                  reader_constructor=constructor)[0].read()
