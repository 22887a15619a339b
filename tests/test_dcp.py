"""torch.distributed.checkpoint on S3 over HTTP, on both loopback servers."""
import ctypes
import pickle
import re
import threading
import time

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException

from _torch_read_path import TorchReadPath
from s3io import S3ClientConfig
from s3io._exceptions import S3Exception, S3ObjectChanged, S3ObjectNotFound
from s3io.dcp import (
    BinaryPrefixStrategy,
    DefaultPrefixStrategy,
    HexPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3FileSystem,
    S3StorageReader,
    S3StorageWriter,
    StorageMetadata,
)
from s3io.dcp import _load_torch
from s3io.s3reader import S3ReaderConstructor

from _upload_faults import FailingUpload, on_put
from conftest import require_peer

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]


# -- helpers --------------------------------------------------------------------------


def _config(server):
    return S3ClientConfig(endpoint_url=server.endpoint_url)


def _writer(server, path, **kwargs):
    return S3StorageWriter(server.region, path, s3client_config=_config(server), **kwargs)


def _reader(server, path, **kwargs):
    return S3StorageReader(server.region, path, s3client_config=_config(server), **kwargs)


@pytest.fixture(autouse=True)
def _direct_from_1mib(monkeypatch):
    """Let the 1.2 MB "big" test tensor go straight into its destination (default: from 16 MiB)."""
    monkeypatch.setattr(_load_torch, "DIRECT_MIN_BYTES", 1 << 20)


class _SpiedHandle:
    """An ObjectHandle whose ``fetch_into`` calls are recorded; everything else is the handle's."""

    def __init__(self, handle, fetches, after_fetch):
        self._handle, self._fetches, self._after_fetch = handle, fetches, after_fetch

    def fetch_into(self, start, dest):
        version = self._handle.fetch_into(start, dest)
        address = ctypes.addressof(ctypes.c_char.from_buffer(dest)) if len(dest) else None
        self._fetches.append((self._handle.key, len(dest), address))
        if self._after_fetch is not None:
            self._after_fetch(self._handle.bucket, self._handle.key)
        return version

    def __call__(self, *args, **kwargs):
        return self._handle(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _spy_on_fetches(monkeypatch, client, after_fetch=None):
    """Record ``(key, size, destination address)`` of every ``fetch_into`` through ``client``'s handles."""
    fetches = []
    real = client.object_handle

    def object_handle(bucket, key, **kwargs):
        return _SpiedHandle(real(bucket, key, **kwargs), fetches, after_fetch)

    monkeypatch.setattr(client, "object_handle", object_handle)  # clients are shared: undone after the test
    return fetches


def _fetched_into(fetches, tensor):
    """Bytes that GETs wrote straight into ``tensor``'s memory."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    return sum(size for _, size, address in fetches if address is not None and start <= address < end)


def _state_dict():
    gen = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "f32": torch.randn(1000, generator=gen),
        "bf16": torch.randn(300, 7, generator=gen).to(torch.bfloat16),
        "f16": torch.randn(50, generator=gen).half(),
        "i64": torch.arange(100),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "zero_d": torch.tensor(2.5),
        "empty": torch.empty(0),
        "view": base[:, 1:4].t(),
        "nested": {"n": 7, "l": [1, 2.5, "ü"], "s": "héllo wörld ✓", "t": torch.ones(3), "d": {"x": None}},
        "big": torch.randn(300_000, generator=gen),  # > 1 MiB: fetched straight into its destination
    }


def _blank(sd):
    out = {}
    for key, value in sd.items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.full_like(value, 3) if value.dtype != torch.bool else torch.zeros_like(value)
        elif isinstance(value, dict):
            out[key] = _blank(value)
        else:
            out[key] = None
    return out


def _assert_same(expected, got):
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype, key
            assert got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key
        elif isinstance(value, dict):
            _assert_same(value, got[key])
        else:
            assert got[key] == value, key


def _keys(server, bucket, prefix=""):
    client = server.boto3_client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _data_files(server, bucket, prefix):
    return [k for k in _keys(server, bucket, prefix) if k.endswith(".distcp")]


def _save_token(data_file, prefix):
    """The token of one save in ``{prefix}{token}_{n}.distcp`` (prefix: the strategy's part)."""
    match = re.fullmatch(re.escape(prefix) + r"([0-9a-f]{16})_\d+\.distcp", data_file)
    assert match, f"{data_file!r} is not {prefix}<save token>_<n>.distcp"
    return match.group(1)


def _failure(excinfo):
    exc = excinfo.value
    return exc.failures[0][0] if isinstance(exc, CheckpointException) else exc


# -- round trips ------------------------------------------------------------------------

CONSTRUCTORS = {
    "default": lambda: None,
    "dcp_optimized(0)": lambda: S3ReaderConstructor.dcp_optimized(0),
    "dcp_optimized(inf)": lambda: S3ReaderConstructor.dcp_optimized(float("inf")),
    "sequential": lambda: S3ReaderConstructor.sequential(),
    "range_based": lambda: S3ReaderConstructor.range_based(),
    "range_based(0)": lambda: S3ReaderConstructor.range_based(buffer_size=0),
}


@pytest.fixture
def saved(s3_server, bucket):
    sd = _state_dict()
    path = f"s3://{bucket}/ckpt"
    dcp.save(sd, storage_writer=_writer(s3_server, path, thread_count=2))
    return s3_server, bucket, path, sd


@pytest.mark.parametrize("constructor", list(CONSTRUCTORS))
def test_round_trip(saved, constructor, monkeypatch):
    server, bucket, path, sd = saved
    out = _blank(sd)
    reader = _reader(server, path, reader_constructor=CONSTRUCTORS[constructor]())
    fetches = _spy_on_fetches(monkeypatch, reader.fs.client)
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)
    if constructor.startswith(("default", "dcp_optimized")):
        assert _fetched_into(fetches, out["big"]) == out["big"].nbytes  # the load pipeline: straight in
    else:
        assert _fetched_into(fetches, out["big"]) == 0  # torch's per-file path: torch.load, then a copy


def test_round_trip_buffered_only(saved, monkeypatch):
    server, bucket, path, sd = saved
    monkeypatch.setattr(_load_torch, "DIRECT_MIN_BYTES", 1 << 62)
    out = _blank(sd)
    reader = _reader(server, path)
    fetches = _spy_on_fetches(monkeypatch, reader.fs.client)
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)
    assert fetches and _fetched_into(fetches, out["big"]) == 0


def test_dcp_optimized_reader_through_torch_read_path(saved):
    # torch's per-file loop drives DCPOptimizedS3Reader via create_stream, on the ranges
    # that prepare_local_plan injected.
    server, bucket, path, sd = saved
    reader = TorchReadPath(server.region, path, s3client_config=_config(server))
    out = _blank(sd)
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)


@pytest.mark.parametrize("constructor", ["default", "sequential"])
def test_partial_load(saved, constructor):
    server, bucket, path, sd = saved
    out = {"bf16": torch.zeros(300, 7, dtype=torch.bfloat16), "nested": {"s": ""}}
    dcp.load(out, storage_reader=_reader(server, path, reader_constructor=CONSTRUCTORS[constructor]()))
    assert torch.equal(out["bf16"], sd["bf16"])
    assert out["nested"]["s"] == sd["nested"]["s"]


def test_partial_load_fetches_only_needed_bytes(saved, monkeypatch):
    server, bucket, path, sd = saved
    reader = _reader(server, path)
    fetches = _spy_on_fetches(monkeypatch, reader.fs.client)
    out = {"f16": torch.zeros(50).half()}
    dcp.load(out, storage_reader=reader)
    assert torch.equal(out["f16"], sd["f16"])
    fetched = [size for _, size, _ in fetches]
    assert 0 < sum(fetched) < 8192, fetched  # one ~1.5 KB item, not the 1.2 MB file


def test_small_inflight_cap_and_concurrency(saved):
    server, bucket, path, sd = saved
    out = _blank(sd)
    dcp.load(out, storage_reader=_reader(server, path, max_inflight_bytes=64 * 1024, max_concurrency=2))
    _assert_same(sd, out)


@pytest.mark.parametrize("thread_count", [1, 3])
def test_thread_count_writes_that_many_files(s3_server, bucket, thread_count):
    sd = _state_dict()
    path = f"s3://{bucket}/tc{thread_count}"
    dcp.save(sd, storage_writer=_writer(s3_server, path, thread_count=thread_count))
    data_files = [k for k in _keys(s3_server, bucket, f"tc{thread_count}/") if k.endswith(".distcp")]
    assert len(data_files) == thread_count
    assert f"tc{thread_count}/.metadata" in _keys(s3_server, bucket)
    out = _blank(sd)
    dcp.load(out, storage_reader=_reader(s3_server, path))
    _assert_same(sd, out)


@pytest.mark.parametrize(
    "strategy, prefix",
    [
        (DefaultPrefixStrategy(), "__0_"),
        (BinaryPrefixStrategy(), "0000000000/__0_"),
        (HexPrefixStrategy(epoch_num=4, min_prefix_length=3), "000/epoch_4/__0_"),
        (RoundRobinPrefixStrategy(["hot", "cold"], epoch_num=1), "hot/epoch_1/__0_"),
    ],
    ids=["default", "binary", "hex", "round-robin"],
)
def test_prefix_strategies(s3_server, bucket, strategy, prefix):
    # The strategy's part of each name is as in torch and s3torchconnector; a token
    # unique to the save follows it, and a save over the path removes the previous files.
    path = f"s3://{bucket}/p"
    tokens = []
    for version in (1, 2):
        sd = {"a": torch.arange(10) * version, "b": torch.ones(4) * version}
        dcp.save(sd, storage_writer=_writer(s3_server, path, prefix_strategy=strategy, thread_count=2))
        files = _data_files(s3_server, bucket, "p/")
        token = _save_token(files[0], f"p/{prefix}")
        assert files == [f"p/{prefix}{token}_0.distcp", f"p/{prefix}{token}_1.distcp"]
        tokens.append(token)
        out = {"a": torch.zeros(10, dtype=torch.int64), "b": torch.zeros(4)}
        dcp.load(out, storage_reader=_reader(s3_server, path))
        _assert_same(sd, out)
    assert tokens[0] != tokens[1]


def test_overwrite_existing_checkpoint(s3_server, bucket):
    path = f"s3://{bucket}/ow"
    dcp.save({"a": torch.zeros(100), "b": torch.arange(5)}, storage_writer=_writer(s3_server, path))
    second = {"a": torch.ones(100), "b": torch.arange(5) * 2}
    first_files = _data_files(s3_server, bucket, "ow/")
    dcp.save(second, storage_writer=_writer(s3_server, path))
    out = {"a": torch.empty(100), "b": torch.empty(5, dtype=torch.int64)}
    dcp.load(out, storage_reader=_reader(s3_server, path))
    _assert_same(second, out)
    keys = _keys(s3_server, bucket, "ow/")
    second_files = _data_files(s3_server, bucket, "ow/")
    assert len(second_files) == 1 and second_files != first_files  # the first save's file is deleted
    assert keys == sorted(["ow/.metadata"] + second_files)  # no .metadata.tmp


def test_overwrite_false_keeps_existing_checkpoint(s3_server, bucket):
    path = f"s3://{bucket}/keep"
    first = {"a": torch.arange(5)}
    dcp.save(first, storage_writer=_writer(s3_server, path, overwrite=False))
    with pytest.raises(CheckpointException) as excinfo:
        dcp.save({"a": torch.arange(5) * 9}, storage_writer=_writer(s3_server, path, overwrite=False))
    assert "already exists" in str(_failure(excinfo))
    out = {"a": torch.zeros(5, dtype=torch.int64)}
    dcp.load(out, storage_reader=_reader(s3_server, path))
    _assert_same(first, out)


def test_storage_metadata_stamped_per_rank(s3_server, bucket):
    from torch.distributed.checkpoint.planner import SavePlan

    writer = S3StorageWriter(s3_server.region, f"s3://{bucket}/x", s3client_config=_config(s3_server),
                             prefix_strategy=RoundRobinPrefixStrategy(["p", "q"]))
    tokens = set()
    for _ in range(2):
        plans = writer.prepare_global_plan([SavePlan([]), SavePlan([]), SavePlan([])])
        token = plans[0].storage_data.prefix[len("p/__0_"):-1]
        assert [p.storage_data for p in plans] == [
            StorageMetadata(f"p/__0_{token}_"), StorageMetadata(f"q/__1_{token}_"), StorageMetadata(f"p/__2_{token}_")
        ]
        tokens.add(token)
    assert len(tokens) == 2  # a new token for every save, also with the same writer
    assert writer.sync_files is False
    with pytest.warns(UserWarning, match="sync_files"):
        assert S3StorageWriter(s3_server.region, "s3://b/x", sync_files=True).sync_files is False


# -- interop -----------------------------------------------------------------------------


# s3torchconnector's CRT uploads fail against rclone: its cases run on moto only.
ON_MOTO = pytest.mark.parametrize("s3_server", ["moto"], indirect=True)


def _download(server, bucket, prefix, directory):
    client = server.boto3_client()
    for key in _keys(server, bucket, prefix):
        target = directory / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))


def _upload(server, bucket, directory, prefix):
    client = server.boto3_client()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.upload_file(str(file), bucket, prefix + file.relative_to(directory).as_posix())


STRATEGIES = {"default": DefaultPrefixStrategy, "hex": lambda: HexPrefixStrategy(epoch_num=2, min_prefix_length=3)}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_downloaded_checkpoint_loads_with_torch(s3_server, bucket, tmp_path, strategy):
    # Saved twice (the second save replaces the first's files), downloaded, loaded by torch.
    path = f"s3://{bucket}/ckpt"
    sd = _state_dict()
    dcp.save(_blank(sd), storage_writer=_writer(s3_server, path, prefix_strategy=STRATEGIES[strategy](), thread_count=2))
    dcp.save(sd, storage_writer=_writer(s3_server, path, prefix_strategy=STRATEGIES[strategy](), thread_count=2))
    _download(s3_server, bucket, "ckpt/", tmp_path)
    out = _blank(sd)
    dcp.load(out, storage_reader=FileSystemReader(str(tmp_path)))
    _assert_same(sd, out)


@pytest.mark.parametrize("constructor", ["default", "sequential"])
def test_torch_checkpoint_uploaded_loads(s3_server, bucket, tmp_path, constructor):
    sd = _state_dict()
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path), thread_count=3))
    _upload(s3_server, bucket, tmp_path, "up/")
    out = _blank(sd)
    reader = _reader(s3_server, f"s3://{bucket}/up", reader_constructor=CONSTRUCTORS[constructor]())
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)


def _s3tc(server):
    """s3torchconnector 1.5.0's client config and client for this server (its DCP classes take no endpoint)."""
    require_peer("s3torchconnector")
    from s3torchconnector import S3ClientConfig as RefConfig
    from s3torchconnector._s3client import S3Client as RefClient

    config = RefConfig(force_path_style=True)
    return config, RefClient(server.region, endpoint=server.endpoint_url, s3client_config=config)


@ON_MOTO
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_s3io_checkpoint_loads_with_s3torchconnector(s3_server, bucket, strategy):
    config, client = _s3tc(s3_server)
    from s3torchconnector.dcp import S3StorageReader as RefReader

    path = f"s3://{bucket}/ckpt"
    sd = _state_dict()
    dcp.save(_blank(sd), storage_writer=_writer(s3_server, path, prefix_strategy=STRATEGIES[strategy](), thread_count=2))
    dcp.save(sd, storage_writer=_writer(s3_server, path, prefix_strategy=STRATEGIES[strategy](), thread_count=2))
    reader = RefReader(s3_server.region, path, s3client_config=config)
    reader.fs._client = client
    out = _blank(sd)
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)


def _s3torchconnector_save(server, bucket, path, sd):
    config, client = _s3tc(server)
    from s3torchconnector.dcp import S3StorageWriter as RefWriter

    writer = RefWriter(server.region, path, s3client_config=config, thread_count=2)
    writer.fs._client = client
    dcp.save(sd, storage_writer=writer)


@ON_MOTO
def test_s3torchconnector_checkpoint_loads_with_s3io(s3_server, bucket):
    sd = _state_dict()
    path = f"s3://{bucket}/ref"
    _s3torchconnector_save(s3_server, bucket, path, sd)
    out = _blank(sd)
    dcp.load(out, storage_reader=_reader(s3_server, path))
    _assert_same(sd, out)


def _assert_overwrite_keeps_previous_until_switch(server, bucket, prefix, previous, monkeypatch):
    """Overwrite the checkpoint at ``prefix`` with s3io: loadable as ``previous`` until the switch, then the new one."""
    path = f"s3://{bucket}/{prefix.rstrip('/')}"
    previous_files = _data_files(server, bucket, prefix)
    new = {key: (value + 1 if isinstance(value, torch.Tensor) and value.dtype != torch.bool else value)
           for key, value in previous.items()}
    with monkeypatch.context() as patch:
        writer = _writer(server, path, thread_count=2)
        on_put(patch, writer.fs.client, "/.metadata", FailingUpload)  # the switch fails
        with pytest.raises(CheckpointException, match="injected upload failure"):
            dcp.save(new, storage_writer=writer)
    assert set(previous_files) < set(_data_files(server, bucket, prefix))  # the new data files are there ...
    out = _blank(previous)
    dcp.load(out, storage_reader=_reader(server, path))
    _assert_same(previous, out)  # ... and the previous checkpoint still loads
    dcp.save(new, storage_writer=_writer(server, path, thread_count=2))
    out = _blank(previous)
    dcp.load(out, storage_reader=_reader(server, path))
    _assert_same(new, out)
    assert not set(previous_files) & set(_data_files(server, bucket, prefix))  # deleted after the switch


def test_overwriting_a_torch_checkpoint_keeps_it_until_the_switch(s3_server, bucket, tmp_path, monkeypatch):
    sd = _state_dict()
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path), thread_count=2))
    _upload(s3_server, bucket, tmp_path, "fs/")
    assert "fs/__0_0.distcp" in _data_files(s3_server, bucket, "fs/")  # torch's own names
    _assert_overwrite_keeps_previous_until_switch(s3_server, bucket, "fs/", sd, monkeypatch)


@ON_MOTO
def test_overwriting_an_s3torchconnector_checkpoint_keeps_it_until_the_switch(s3_server, bucket, monkeypatch):
    sd = _state_dict()
    _s3torchconnector_save(s3_server, bucket, f"s3://{bucket}/ref", sd)
    assert "ref/__0_0.distcp" in _data_files(s3_server, bucket, "ref/")
    _assert_overwrite_keeps_previous_until_switch(s3_server, bucket, "ref/", sd, monkeypatch)


# -- endpoint, pickling, async -------------------------------------------------------------


def test_endpoint_from_environment(s3_server, bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    path = f"s3://{bucket}/env"
    sd = {"a": torch.arange(7)}
    dcp.save(sd, storage_writer=S3StorageWriter(s3_server.region, path))
    out = {"a": torch.zeros(7, dtype=torch.int64)}
    dcp.load(out, storage_reader=S3StorageReader(s3_server.region, path))
    _assert_same(sd, out)


def test_writer_and_reader_pickle(s3_server, bucket):
    path = f"s3://{bucket}/pk"
    writer = pickle.loads(pickle.dumps(_writer(s3_server, path, thread_count=2)))
    sd = {"a": torch.arange(7), "b": torch.ones(2, 2)}
    dcp.save(sd, storage_writer=writer)
    reader = pickle.loads(pickle.dumps(_reader(s3_server, path)))
    out = {"a": torch.zeros(7, dtype=torch.int64), "b": torch.zeros(2, 2)}
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)


def test_async_save(s3_server, bucket):
    path = f"s3://{bucket}/async"
    sd = _state_dict()
    future = dcp.async_save(sd, storage_writer=_writer(s3_server, path, thread_count=2))
    future.result(timeout=60)
    out = _blank(sd)
    dcp.load(out, storage_reader=_reader(s3_server, path))
    _assert_same(sd, out)


# -- failures --------------------------------------------------------------------------------


# An exception escaping a writer thread would be printed to stderr: it fails the test instead.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("failing_thread", ["main", "worker"])
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over-existing"])
def test_failed_save_keeps_the_previous_checkpoint(s3_server, bucket, failing_thread, existing, monkeypatch):
    path = f"s3://{bucket}/fail"
    sd = _state_dict()
    boto = s3_server.boto3_client()
    if existing:
        dcp.save(sd, storage_writer=_writer(s3_server, path, thread_count=3))
        metadata = boto.get_object(Bucket=bucket, Key="fail/.metadata")["Body"].read()
    writer = _writer(s3_server, path, thread_count=3)
    client = writer.fs.client
    real_put = client.put_object

    def put_object(bkt, key, *args, **kwargs):
        stream = real_put(bkt, key, *args, **kwargs)
        in_main = threading.current_thread() is threading.main_thread()
        if key.endswith(".distcp") and in_main and failing_thread == "worker":
            time.sleep(0.2)  # let torch's extra writer threads take the other files
        if key.endswith(".distcp") and in_main == (failing_thread == "main"):
            return FailingUpload(stream, 100)
        return stream

    monkeypatch.setattr(client, "put_object", put_object)  # clients are shared: undo afterwards
    with pytest.raises(CheckpointException) as excinfo:
        dcp.save(_blank(sd), storage_writer=writer)
    assert "injected upload failure" in str(_failure(excinfo))
    keys = _keys(s3_server, bucket, "fail/")
    assert not [k for k in keys if k.endswith(".tmp")]
    if not existing:
        assert "fail/.metadata" not in keys
        return
    assert boto.get_object(Bucket=bucket, Key="fail/.metadata")["Body"].read() == metadata
    out = _blank(sd)
    dcp.load(out, storage_reader=_reader(s3_server, path))
    _assert_same(sd, out)


def test_file_overwritten_during_load_is_detected(saved, monkeypatch):
    # Every GET of a file after the first carries If-Match: overwriting the
    # file between two GETs must fail the load, never mix two versions.
    server, bucket, path, sd = saved
    reader = _reader(server, path, max_concurrency=1)
    boto = server.boto3_client()
    overwritten = set()

    def overwrite_once(bkt, key):
        if key not in overwritten:
            overwritten.add(key)
            body = boto.get_object(Bucket=bkt, Key=key)["Body"].read()
            boto.put_object(Bucket=bkt, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))

    _spy_on_fetches(monkeypatch, reader.fs.client, after_fetch=overwrite_once)
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=reader)
    assert isinstance(_failure(excinfo), S3ObjectChanged)


def test_missing_metadata_is_a_clear_error(s3_server, bucket):
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load({"a": torch.zeros(1)}, storage_reader=_reader(s3_server, f"s3://{bucket}/nothing-here"))
    # torch wraps it (after also trying rank-local metadata); the message names the key.
    message = str(_failure(excinfo))
    assert "nothing-here/.metadata" in message
    assert "NoSuchKey" in message


@pytest.mark.parametrize("constructor", ["default", "sequential"])
def test_missing_data_file_is_a_clear_error(saved, constructor):
    server, bucket, path, sd = saved
    missing = _data_files(server, bucket, "ckpt/")[0]
    server.boto3_client().delete_object(Bucket=bucket, Key=missing)
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=_reader(server, path, reader_constructor=CONSTRUCTORS[constructor]()))
    error = _failure(excinfo)
    assert isinstance(error, S3ObjectNotFound)
    assert missing.split("/")[-1] in str(error)


def test_truncated_data_file_is_a_clear_error(saved):
    server, bucket, path, sd = saved
    client = server.boto3_client()
    sizes = {k: client.head_object(Bucket=bucket, Key=k)["ContentLength"] for k in _keys(server, bucket, "ckpt/")}
    key = max((k for k in sizes if k.endswith(".distcp")), key=sizes.get)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=_reader(server, path))
    error = _failure(excinfo)
    assert isinstance(error, S3Exception)
    assert key.split("/")[-1] in str(error)


# -- S3FileSystem ---------------------------------------------------------------------------------


@pytest.fixture
def fs(s3_server):
    return S3FileSystem(s3_server.region, s3client_config=_config(s3_server))


@pytest.mark.parametrize("name", ["plain", "with space", "plus+sign", "per%25cent", "ünï/cødé ✓"])
def test_rename_odd_keys(fs, bucket, name):
    src = f"s3://{bucket}/dir/{name}.tmp"
    dst = f"s3://{bucket}/dir/{name}"
    with fs.create_stream(src, "wb") as stream:
        stream.write(b"payload")
    fs.rename(src, dst)
    assert not fs.exists(src)
    assert fs.exists(dst)
    with fs.create_stream(dst, "rb") as stream:
        assert stream.read() == b"payload"


def test_file_system_operations(fs, bucket):
    path = fs.concat_path(f"s3://{bucket}/root", "obj")
    assert path == f"s3://{bucket}/root/obj"
    assert fs.concat_path(f"s3://{bucket}/root/", "obj") == path
    assert fs.init_path(f"s3://{bucket}/root") == f"s3://{bucket}/root"
    fs.mkdir(f"s3://{bucket}/root")
    assert not fs.exists(path)
    with fs.create_stream(path, "wb") as stream:
        stream.write(b"x" * 10)
    assert fs.exists(path)
    fs.rm_file(path)
    assert not fs.exists(path)
    fs.rm_file(path)  # missing: fine
    for mode in ("r", "w", "ab", "r+b"):
        with pytest.raises(ValueError, match="rb"):
            with fs.create_stream(path, mode):
                pass
    with pytest.raises(ValueError, match="buckets"):
        fs.rename(f"s3://{bucket}/a", "s3://other-bucket/a")


def test_exists_raises_for_other_errors(rclone_server, monkeypatch):
    bucket = rclone_server.make_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    fs = S3FileSystem(rclone_server.region, s3client_config=_config(rclone_server))
    with pytest.raises(S3Exception) as excinfo:
        fs.exists(f"s3://{bucket}/key")
    assert excinfo.value.status == 403


def test_reader_rejects_bad_pipeline_settings():
    for bad in ({"max_inflight_bytes": 0}, {"max_concurrency": -1}, {"max_concurrency": 2.5}):
        with pytest.raises(ValueError):
            S3StorageReader("us-east-1", "s3://bucket/ckpt", **bad)


def test_validate_checkpoint_id():
    assert S3FileSystem.validate_checkpoint_id("s3://bucket/ckpt")
    assert S3StorageWriter.validate_checkpoint_id("s3://bucket/ckpt")
    assert S3StorageReader.validate_checkpoint_id("s3://bucket")
    for bad in ("/local/dir", "file:///x", "s3://", "bucket/key"):
        assert not S3FileSystem.validate_checkpoint_id(bad)
