"""Unit tests for the DCP pieces that need no server: prefix strategies, the
torch.save fast path and the load (planning, scheduling, torch consumption),
driven by fake handles over local files."""
import ctypes
import io
import os
import threading
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._extension import ExtensionRegistry, StreamTransformExtension
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageReaderTransforms
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, ReadItem
from torch.futures import Future

from s3io.dcp import (
    BinaryPrefixStrategy,
    DefaultPrefixStrategy,
    HexPrefixStrategy,
    NumericPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3PrefixStrategyBase,
)
from s3io._core import ItemRange, ItemViewBuffer
from s3io._exceptions import S3ObjectChanged
from s3io._pin import VersionPin
from s3io.dcp import _load_schedule, _load_torch
from s3io.dcp._load_plan import LoadFile, LoadSettings, plan_segments
from s3io.dcp._load_schedule import load_files
from s3io.dcp._load_torch import load_into_planner, stored_items_by_file
from s3io.dcp._torch_save import load_tensor_view, probe_layout

from conftest import require_peer

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


# -- prefix strategies ---------------------------------------------------------


def test_default_prefix():
    assert [DefaultPrefixStrategy()(r) for r in range(3)] == ["__0_", "__1_", "__2_"]


def test_binary_prefix_reversed_and_padded():
    strategy = BinaryPrefixStrategy(prefix_count=5)
    assert [strategy(r) for r in range(6)] == [
        "0000000000/__0_",
        "1000000000/__1_",
        "0100000000/__2_",
        "1100000000/__3_",
        "0010000000/__4_",
        "0000000000/__5_",
    ]


def test_hex_prefix_with_epoch_grows_past_min_length():
    strategy = HexPrefixStrategy(epoch_num=3, min_prefix_length=2, prefix_count=300)
    assert strategy(0) == "000/epoch_3/__0_"
    assert strategy(17) == "110/epoch_3/__17_"
    assert strategy(299) == "b21/epoch_3/__299_"
    assert strategy(300) == "000/epoch_3/__300_"


def test_hex_prefix_defaults_to_one_prefix_without_process_group():
    assert [HexPrefixStrategy()(r) for r in range(2)] == ["0000000000/__0_", "0000000000/__1_"]


def test_round_robin_prefix():
    strategy = RoundRobinPrefixStrategy(["a", "b/c"], epoch_num=0)
    assert [strategy(r) for r in range(3)] == ["a/epoch_0/__0_", "b/c/epoch_0/__1_", "a/epoch_0/__2_"]
    assert RoundRobinPrefixStrategy(["x"])(4) == "x/__4_"


@pytest.mark.parametrize(
    "make",
    [
        lambda: BinaryPrefixStrategy(min_prefix_length=0),
        lambda: HexPrefixStrategy(epoch_num="1"),
        lambda: HexPrefixStrategy(prefix_count=0),
        lambda: BinaryPrefixStrategy(prefix_count=2.0),
        lambda: RoundRobinPrefixStrategy([]),
    ],
)
def test_prefix_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_prefix_base_is_abstract_and_callable():
    with pytest.raises(TypeError):
        S3PrefixStrategyBase()

    class Fixed(S3PrefixStrategyBase):
        def generate_prefix(self, rank):
            return f"p{rank}/"

    assert Fixed()(3) == "p3/"
    assert issubclass(NumericPrefixStrategy, S3PrefixStrategyBase)


def test_prefixes_match_s3torchconnector():
    ref = require_peer("s3torchconnector.dcp.s3_prefix_strategy")
    cases = [
        (DefaultPrefixStrategy(), ref.DefaultPrefixStrategy()),
        (BinaryPrefixStrategy(epoch_num=2, prefix_count=9), ref.BinaryPrefixStrategy(epoch_num=2, prefix_count=9)),
        (HexPrefixStrategy(min_prefix_length=1, prefix_count=40), ref.HexPrefixStrategy(min_prefix_length=1, prefix_count=40)),
        (RoundRobinPrefixStrategy(["p", "q"], epoch_num=7), ref.RoundRobinPrefixStrategy(["p", "q"], epoch_num=7)),
    ]
    for ours, theirs in cases:
        assert [ours(r) for r in range(50)] == [theirs(r) for r in range(50)]


# -- torch.save fast path -----------------------------------------------------------


def _saved(obj) -> memoryview:
    stream = io.BytesIO()
    torch.save(obj, stream)
    return memoryview(bytearray(stream.getvalue()))


_BASE = torch.arange(24, dtype=torch.float32).reshape(4, 6)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(1000),
        torch.randn(33, 7).to(torch.bfloat16),
        torch.randn(5).half(),
        torch.arange(10, dtype=torch.int64),
        torch.arange(256, dtype=torch.uint8),
        torch.tensor([True, False]),
        torch.tensor(2.5),
        torch.empty(0),
        _BASE[:, 1:4].t(),  # non-contiguous view: the whole storage is saved
    ],
    ids=["f32", "bf16", "f16", "i64", "u8", "bool", "0d", "empty", "view"],
)
def test_load_tensor_view_matches_torch_load(tensor):
    view = _saved(tensor)
    fast = load_tensor_view(view)
    ref = torch.load(io.BytesIO(view), weights_only=True)
    assert fast is not None
    assert fast.dtype == ref.dtype and fast.shape == ref.shape and fast.stride() == ref.stride()
    assert torch.equal(fast, ref)


def test_load_tensor_view_shares_memory():
    view = _saved(torch.zeros(4))
    tensor = load_tensor_view(view)
    tensor[1] = 7.0
    assert torch.equal(load_tensor_view(view), torch.tensor([0.0, 7.0, 0.0, 0.0]))


@pytest.mark.parametrize("payload", [b"", b"not a zip at all", bytes(100)], ids=["empty", "text", "zeros"])
def test_load_tensor_view_declines_non_torch_bytes(payload):
    assert load_tensor_view(memoryview(bytearray(payload))) is None


def test_load_tensor_view_declines_non_tensor_and_truncated():
    assert load_tensor_view(_saved({"a": torch.ones(2)})) is None
    whole = _saved(torch.ones(100))
    assert load_tensor_view(whole[:-30]) is None


@pytest.mark.parametrize(
    "tensor",
    [torch.randn(5000), torch.randn(70, 300).to(torch.bfloat16), torch.arange(3000, dtype=torch.int64), torch.tensor(1.5)],
    ids=["f32", "bf16-2d", "i64", "0d"],
)
def test_probe_layout_from_head_and_tail(tensor):
    whole = _saved(tensor)
    layout = probe_layout(len(whole), whole[:4096], whole[-4096:])
    assert layout is not None
    assert layout.dtype == tensor.dtype and layout.shape == tensor.shape
    assert layout.nbytes == tensor.numel() * tensor.element_size()
    payload = bytes(whole[layout.offset : layout.offset + layout.nbytes])
    assert payload == tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_probe_layout_declines():
    view = _saved(_BASE[:, 1:4].t())  # a view: the payload is the whole storage
    assert probe_layout(len(view), view[:4096], view[-4096:]) is None
    whole = _saved(torch.randn(5000))
    assert probe_layout(len(whole), whole[:40], whole[-4096:]) is None  # head too short for data.pkl
    assert probe_layout(len(whole), whole[:4096], whole[-10:]) is None  # no directory
    assert probe_layout(len(whole) + 1, whole[:4096], whole[-4096:]) is None  # wrong length
    assert probe_layout(100, memoryview(bytes(100)), memoryview(bytes(100))) is None


# -- the load pipeline over local files ---------------------------------------------


class _LocalHandle:
    """A fake ``ObjectHandle`` over a local file: ``fetch_into`` pinned by a real ``VersionPin``."""

    def __init__(self, client, bucket, key):
        self.client = client
        self.key = key
        self.pin = VersionPin(bucket, key)

    def fetch_into(self, start, dest):
        client = self.client
        with client.lock:
            client.calls.append((self.key, start, len(dest), threading.current_thread().name, _address(dest)))
        if client.fail_at is not None and client.fail_at[0] == self.key and client.fail_at[1] <= start:
            raise client.fail_at[2]
        with open(os.path.join(client.root, self.key), "rb") as f:
            f.seek(start)
            n = f.readinto(dest)
        if n != len(dest):
            raise EOFError(f"{self.key}: wanted {len(dest)} bytes at {start}, got {n}")
        self.pin.check(client.version_for(self.key, start))
        return self.pin.version


class _LocalClient:
    """``S3Client.object_handle`` over a local directory, with counters and optional faults."""

    def __init__(self, root):
        self.root = root
        self.calls = []  # (key, start, size, thread name, destination address) of every fetch_into
        self.handles = []  # keys, one per object_handle call
        self.lock = threading.Lock()
        self.fail_at = None  # (key, start, exception): raise for fetches of key from start on
        self.version_for = lambda key, start: '"etag-1"'

    def object_handle(self, bucket, key):
        self.handles.append(key)
        return _LocalHandle(self, bucket, key)


def _address(view):
    """The address of a writable buffer's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) if len(view) else None


class _PipelineReader(FileSystemReader):
    """torch's FileSystemReader with read_data replaced by the s3io load (as S3StorageReader runs it)."""

    def __init__(self, path, client, **settings):
        super().__init__(path)
        self.client = client
        self.settings = LoadSettings(**settings)
        self.stats = None

    def read_data(self, plan, planner):
        by_file = stored_items_by_file(plan.items, self.storage_data)
        files = [LoadFile(self.client.object_handle("b", path), items) for path, items in by_file.items()]
        self.stats = load_into_planner(files, planner, self.transforms, self.settings)
        future = Future()
        future.set_result(None)
        return future


@pytest.fixture
def direct_from_1mib(monkeypatch):
    """Let the 1.2 MB "big" tensor of the test state dict go straight into its destination."""
    monkeypatch.setattr(_load_torch, "DIRECT_MIN_BYTES", 1 << 20)


def _failure(excinfo):
    """The exception rank 0 raised inside a failed dcp.load/save."""
    return excinfo.value.failures[0][0] if isinstance(excinfo.value, CheckpointException) else excinfo.value


def _state_dict():
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "f32": torch.randn(1000),
        "bf16": torch.randn(300, 7).to(torch.bfloat16),
        "f16": torch.randn(50).half(),
        "i64": torch.arange(100),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "zero_d": torch.tensor(2.5),
        "empty": torch.empty(0),
        "view": base[:, 1:4].t(),
        "nested": {"a": 1, "l": [1, 2, "ü"], "s": "héllo", "t": torch.ones(3)},
        "big": torch.randn(300_000),
    }


def _blank(sd):
    out = {}
    for key, value in sd.items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.zeros_like(value)
        elif isinstance(value, dict):
            out[key] = _blank(value)
        else:
            out[key] = None
    return out


def _assert_same(expected, got):
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype, key
            assert torch.equal(got[key], value), key
        elif isinstance(value, dict):
            _assert_same(value, got[key])
        else:
            assert got[key] == value, key


def _fetched_into(client, tensor):
    """Bytes that GETs wrote straight into ``tensor``'s memory."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    return sum(size for _, _, size, _, address in client.calls if address is not None and start <= address < end)


@pytest.fixture
def saved_checkpoint(tmp_path):
    sd = _state_dict()
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path), thread_count=2))
    return tmp_path, sd


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"max_inflight_bytes": 64 * 1024, "part_size": 3000, "max_concurrency": 3},
        {"max_gap_size": 0, "part_size": 999, "max_concurrency": 1, "max_inflight_bytes": 1},
        {"max_gap_size": float("inf")},
    ],
    ids=["defaults", "small-cap", "tiny-parts", "one-group"],
)
def test_pipeline_round_trip(saved_checkpoint, direct_from_1mib, args):
    path, sd = saved_checkpoint
    client = _LocalClient(str(path))
    out = _blank(sd)
    reader = _PipelineReader(str(path), client, **args)
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)
    assert reader.stats.direct_items == 1  # "big"
    assert _fetched_into(client, out["big"]) == out["big"].nbytes  # its payload, straight into the tensor


def test_pipeline_below_direct_min_bytes_is_buffered(saved_checkpoint):
    path, sd = saved_checkpoint
    client = _LocalClient(str(path))
    out = _blank(sd)
    reader = _PipelineReader(str(path), client)
    dcp.load(out, storage_reader=reader)  # "big" is 1.2 MB, under the default 16 MiB
    _assert_same(sd, out)
    assert reader.stats.direct_items == 0
    assert _fetched_into(client, out["big"]) == 0


def test_pipeline_direct_declines_mismatched_destinations(saved_checkpoint, direct_from_1mib):
    path, sd = saved_checkpoint
    client = _LocalClient(str(path))
    # A non-contiguous destination and a dtype change both need the buffered path.
    out = {"big": torch.zeros(300_000, 2)[:, 0]}
    reader = _PipelineReader(str(path), client)
    dcp.load(out, storage_reader=reader)
    assert reader.stats.direct_items == 0
    assert torch.equal(out["big"], sd["big"])
    out = {"big": torch.zeros(300_000, dtype=torch.float64)}
    reader = _PipelineReader(str(path), client)
    dcp.load(out, storage_reader=reader)
    assert reader.stats.direct_items == 0
    assert torch.equal(out["big"], sd["big"].double())


def test_pipeline_partial_load_fetches_only_needed_bytes(saved_checkpoint):
    path, sd = saved_checkpoint
    client = _LocalClient(str(path))
    out = {"f16": torch.zeros(50).half()}
    dcp.load(out, storage_reader=_PipelineReader(str(path), client, max_gap_size=0))
    assert torch.equal(out["f16"], sd["f16"])
    fetched = sum(size for _, _, size, _, _ in client.calls)
    assert fetched < 4096, fetched  # one small item, not the 1.2 MB "big" tensor


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_pipeline_memory_in_flight_is_capped(saved_checkpoint, monkeypatch, direct):
    path, sd = saved_checkpoint
    client = _LocalClient(str(path))
    cap = 256 * 1024
    live = [0]
    peak = [0]

    class Tracked(bytearray):
        def __del__(self):
            live[0] -= len(self)

    def tracked_allocate(size):
        buffer = Tracked(size)
        live[0] += size
        peak[0] = max(peak[0], live[0])
        return buffer

    monkeypatch.setattr(_load_schedule, "_allocate", tracked_allocate)
    if direct:
        monkeypatch.setattr(_load_torch, "DIRECT_MIN_BYTES", 1 << 20)
    out = _blank(sd)
    reader = _PipelineReader(str(path), client, max_inflight_bytes=cap, part_size=16384)
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)
    big_item = sd["big"].nbytes + 4096  # torch.save header and directory
    if direct:
        # "big" (larger than the cap) goes straight into its destination: only the ring.
        assert reader.stats.direct_items == 1
        assert peak[0] == cap
        assert reader.stats.peak_inflight_bytes <= cap
    else:
        # One ring of `cap` bytes, plus a buffer of its own for "big".
        assert reader.stats.direct_items == 0
        assert cap < peak[0] <= cap + big_item, peak[0]
        assert reader.stats.peak_inflight_bytes <= cap + big_item
    assert live[0] == 0  # every buffer freed


def test_pipeline_reads_each_file_through_one_handle_on_named_threads(saved_checkpoint, direct_from_1mib):
    path, sd = saved_checkpoint
    client = _LocalClient(str(path))
    dcp.load(_blank(sd), storage_reader=_PipelineReader(str(path), client, part_size=4096, max_concurrency=3))
    files = sorted(p for p in os.listdir(path) if p.endswith(".distcp"))
    assert sorted(client.handles) == files  # one pinned handle per file, every GET through it
    assert {key for key, *_ in client.calls} == set(files)
    # GETs and the probes of direct items run on the load's pool, which ends with the load.
    assert {name.rsplit("_", 1)[0] for *_, name, _ in client.calls} == {_load_torch.THREAD_NAME_PREFIX}
    assert not [t for t in threading.enumerate() if t.name.startswith(_load_torch.THREAD_NAME_PREFIX)]


def test_pipeline_object_changed_midway(saved_checkpoint, direct_from_1mib):
    path, sd = saved_checkpoint
    client = _LocalClient(str(path))
    client.version_for = lambda key, start: '"etag-1"' if start < 100_000 else '"etag-2"'
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=_PipelineReader(str(path), client, part_size=4096))
    error = _failure(excinfo)
    assert isinstance(error, S3ObjectChanged)  # raised by the handle's pin, not by the pipeline
    assert '"etag-1" then "etag-2"' in str(error)


def test_pipeline_fetch_error_propagates_and_stops(saved_checkpoint):
    path, sd = saved_checkpoint
    client = _LocalClient(str(path))
    first_file = sorted(p for p in os.listdir(path) if p.endswith(".distcp"))[0]
    client.fail_at = (first_file, 0, ConnectionResetError("injected"))
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=_PipelineReader(str(path), client))
    assert isinstance(_failure(excinfo), ConnectionResetError)
    assert not [t for t in threading.enumerate() if t.name.startswith(_load_torch.THREAD_NAME_PREFIX)]


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_pipeline_truncated_file_raises(saved_checkpoint, monkeypatch, direct):
    path, sd = saved_checkpoint
    if direct:
        monkeypatch.setattr(_load_torch, "DIRECT_MIN_BYTES", 1 << 20)
    client = _LocalClient(str(path))
    biggest = max((p for p in os.listdir(path) if p.endswith(".distcp")), key=lambda p: os.path.getsize(path / p))
    with open(path / biggest, "r+b") as f:
        f.truncate(os.path.getsize(path / biggest) // 2)
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=_PipelineReader(str(path), client))
    assert isinstance(_failure(excinfo), EOFError)


class _XorExtension(StreamTransformExtension):
    """A stream transform (like torch's ZStandard) that flips every byte; read through ``input.read``."""

    @staticmethod
    def registry_name():
        return "test-xor"

    @staticmethod
    def from_descriptor(version):
        return _XorExtension()

    def get_descriptor(self):
        return "test-xor"

    def transform_to(self, output):
        class Writer(io.RawIOBase):
            def writable(self):
                return True

            def write(self, data):
                return output.write(bytes(b ^ 0xFF for b in bytes(data)))

        return Writer()

    def transform_from(self, input):
        class Reader(io.RawIOBase):
            def readable(self):
                return True

            def readinto(self, b):
                data = input.read(len(b))
                b[: len(data)] = bytes(x ^ 0xFF for x in data)
                return len(data)

        return io.BufferedReader(Reader())


def test_pipeline_stream_transforms(tmp_path):
    sd = {"t": torch.randn(50), "i": torch.arange(7), "meta": {"s": "héllo", "n": 3}}
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path), _extensions=[_XorExtension()]))
    out = {"t": torch.zeros(50), "i": torch.zeros(7, dtype=torch.int64), "meta": {"s": None, "n": None}}
    reader = _PipelineReader(str(tmp_path), _LocalClient(str(tmp_path)))
    reader.transforms = _StorageReaderTransforms(ExtensionRegistry())
    reader.transforms.extension_registry.register(_XorExtension)
    dcp.load(out, storage_reader=reader)
    assert torch.equal(out["t"], sd["t"]) and torch.equal(out["i"], sd["i"])
    assert out["meta"] == sd["meta"]


def _consumer_for(request_type, destination):
    """A TorchConsumer over a planner stub that resolves ``destination`` and records commits."""
    planner = types.SimpleNamespace(committed=[], loaded=[])
    planner.resolve_tensor = lambda request: destination
    planner.commit_tensor = lambda request, tensor: planner.committed.append(tensor)
    planner.load_bytes = lambda request, value: planner.loaded.append(value.read())
    index = MetadataIndex("x")
    shape = destination.shape if destination is not None else torch.Size([])
    request = ReadItem(request_type, index, torch.Size([0] * len(shape)), index, torch.Size([0] * len(shape)), shape)
    return _load_torch.TorchConsumer(planner, None), planner, request


@pytest.mark.parametrize("zip_archive", [True, False], ids=["zip", "legacy"])
def test_consumer_falls_back_to_torch_load(monkeypatch, zip_archive):
    # Without the fast path (a torch release whose private helpers changed) items go
    # through torch.load: over the core's ItemViewBuffer for zip archives (no copy),
    # over an io.BytesIO copy for legacy ones (their unpickler needs readline).
    monkeypatch.setattr(_load_torch, "load_tensor_view", lambda view: None)
    streams = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, **kwargs: streams.append(type(f)) or real_load(f, **kwargs))
    saved = torch.arange(24, dtype=torch.float32).reshape(4, 6)[:, 1:4].t()
    stream = io.BytesIO()
    torch.save(saved, stream, _use_new_zipfile_serialization=zip_archive)
    view = memoryview(bytearray(stream.getvalue()))
    destination = torch.zeros(3, 4)
    consumer, planner, request = _consumer_for(LoadItemType.TENSOR, destination)
    item = _load_torch.TorchItem(ItemRange(0, len(view)), types.SimpleNamespace(transform_descriptors=None), [request])
    consumer.consume(item, view)
    assert [t.data_ptr() for t in planner.committed] == [destination.data_ptr()]
    assert torch.equal(destination, saved)
    assert streams == [ItemViewBuffer if zip_archive else io.BytesIO]


def test_copy_tensor_matches_copy_():
    source = torch.randn(300, 7).to(torch.bfloat16)
    for target in (torch.zeros(300, 7, dtype=torch.bfloat16), torch.zeros(300, 7), torch.zeros(7, 300).t()):
        _load_torch.copy_tensor(target, source)
        assert torch.equal(target, source.to(target.dtype))
    _load_torch.copy_tensor(torch.empty(0), torch.empty(0))


# -- planning and scheduling without torch: the interface a second consumer uses -----------------


class _Item:
    """A load item as the planner sees it: a range and whether it goes straight into a destination."""

    def __init__(self, start, end, direct=False):
        self.range = ItemRange(start, end)
        self.direct = direct


class _BytesHandle:
    """A fake handle over ``data``; GETs at or after ``gate_from`` wait for ``gate``."""

    def __init__(self, data, gate_from=None):
        self.data = data
        self.gate_from = gate_from
        self.gate = threading.Event()
        self.gets = []

    def fetch_into(self, start, dest):
        self.gets.append((start, len(dest)))
        if self.gate_from is not None and start >= self.gate_from:
            assert self.gate.wait(10), "an earlier item was not consumed while this GET waited"
        dest[:] = self.data[start : start + len(dest)]
        return '"v1"'


class _RecordingConsumer:
    """Buffered items: their bytes; direct items: a bytearray of the payload after a 4-byte header."""

    def __init__(self, on_consume=None):
        self.seen = []  # (start, bytes, how), in the order handed over
        self.destinations = {}
        self.on_consume = on_consume

    def consume(self, item, view):
        self.seen.append((item.range.start, bytes(view), "buffered"))
        if self.on_consume:
            self.on_consume(item)

    def locate_direct(self, item, read):
        header = bytes(read(0, 4))
        if header == b"skip":
            return None
        dest = self.destinations[item.range.start] = bytearray(item.range.end - item.range.start - 4)
        return 4, memoryview(dest)

    def commit_direct(self, item):
        self.seen.append((item.range.start, bytes(self.destinations.pop(item.range.start)), "direct"))


def test_load_files_hands_items_over_in_order_buffered_or_direct():
    data = bytes(range(256)) * 40
    data = b"head" + data[4:3000] + b"skip" + data[3004:]
    items = [_Item(5000, 5100), _Item(0, 3000, direct=True), _Item(3000, 4000, direct=True), _Item(4000, 4000),
             _Item(4000, 4500), _Item(7000, 10240)]
    handle = _BytesHandle(data)
    consumer = _RecordingConsumer()
    settings = LoadSettings(max_gap_size=100, max_inflight_bytes=2048, part_size=512, max_concurrency=3)
    stats = load_files([LoadFile(handle, items)], consumer, settings, thread_name_prefix="test-load")
    assert stats.direct_items == 1  # the second direct item declined ("skip"): consumed from a buffer
    assert consumer.seen == [
        (0, data[4:3000], "direct"),
        (4000, b"", "buffered"),  # empty items need no bytes: they come at offset 0
        (3000, data[3000:4000], "buffered"),
        (4000, data[4000:4500], "buffered"),
        (5000, data[5000:5100], "buffered"),
        (7000, data[7000:10240], "buffered"),
    ]
    assert max(size for _, size in handle.gets) <= 512
    assert stats.peak_inflight_bytes <= 2048 + 3240 + 1000  # the ring, plus "too big" and "declined" buffers


def test_load_files_consumes_early_items_while_later_ones_are_fetched():
    data = bytes(range(256)) * 64
    handle = _BytesHandle(data, gate_from=8192)  # GETs of the second half wait until an item is consumed
    items = [_Item(offset, offset + 1024) for offset in range(0, len(data), 1024)]
    consumer = _RecordingConsumer(on_consume=lambda item: handle.gate.set())
    settings = LoadSettings(max_gap_size=0, max_inflight_bytes=4096, part_size=1024, max_concurrency=4)
    load_files([LoadFile(handle, items)], consumer, settings, thread_name_prefix="test-load")
    assert [start for start, _, _ in consumer.seen] == [item.range.start for item in items]
    assert b"".join(chunk for _, chunk, _ in consumer.seen) == data


def test_load_settings_reject_bad_values():
    for bad in ({"max_inflight_bytes": 0}, {"part_size": 0}, {"max_concurrency": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LoadSettings(**bad)


def test_plan_segments_cuts_groups_at_item_boundaries():
    items = [_Item(i * 1000, i * 1000 + 900) for i in range(10)]
    files = [LoadFile("handle", items)]
    segments = plan_segments(files, LoadSettings(max_gap_size=100, max_inflight_bytes=4 * 1000, part_size=10))
    assert [s.items for s in segments] == [[items[i]] for i in range(10)]  # segment size 1000 < 1900
    segments = plan_segments(files, LoadSettings(max_gap_size=100, max_inflight_bytes=4 * 4000, part_size=10))
    assert [(s.start, s.end) for s in segments] == [(0, 3900), (4000, 7900), (8000, 9900)]
    assert segments[0].parts == [(start, start + 10) for start in range(0, 3900, 10)]
    segments = plan_segments(files, LoadSettings(max_gap_size=99, max_inflight_bytes=10**9, part_size=10**6))
    assert len(segments) == 10 and all(s.parts == [(s.start, s.end)] for s in segments)


def test_plan_segments_rejects_overlapping_items():
    with pytest.raises(ValueError, match="Overlapping ranges: 0-10 and 5-15"):
        plan_segments([LoadFile("handle", [_Item(5, 15), _Item(0, 10)])], LoadSettings())


def test_ring_allocates_in_order_and_wraps():
    ring = _load_schedule.BufferRing(100)
    a = ring.allocate(40)
    b = ring.allocate(40)
    assert len(a) == 40 and len(b) == 40
    assert ring.allocate(30) is None  # only 20 left at the end, nothing free at the start
    ring.free_oldest()  # a
    c = ring.allocate(30)  # wraps to the start
    assert c is not None
    c[:] = b"c" * 30
    b[:] = b"b" * 40
    assert bytes(c) == b"c" * 30  # no overlap with b
    assert ring.allocate(11) is None  # [30, 40) is the only gap: 10 bytes
    assert len(ring.allocate(10)) == 10
    ring.free_oldest()  # b
    ring.free_oldest()  # c
    ring.free_oldest()  # the 10 bytes
    assert len(ring.allocate(100)) == 100  # empty again: the whole ring
    assert ring.allocate(1) is None
    ring.free_oldest()
    assert ring.allocate(101) is None  # never larger than the ring


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 64),
    ops=st.lists(st.one_of(st.integers(0, 70), st.none()), max_size=60),  # size: allocate; None: free oldest
)
def test_ring_never_hands_out_overlapping_memory(capacity, ops):
    ring = _load_schedule.BufferRing(capacity)
    live = []  # (view, fill byte), oldest first
    for step, op in enumerate(ops):
        if op is None:
            if live:
                live.pop(0)
                ring.free_oldest()
            continue
        if op == 0:
            continue  # the pipeline never asks the ring for 0 bytes
        view = ring.allocate(op)
        if view is None:
            # Refused only if larger than the ring, or while other allocations are live.
            assert op > capacity or live
            continue
        assert len(view) == op
        fill = step % 251 + 1
        view[:] = bytes([fill]) * op
        live.append((view, fill))
        for other, other_fill in live:
            assert bytes(other) == bytes([other_fill]) * len(other)  # nobody else wrote over it
    if not live:
        assert ring.allocate(capacity) is not None  # empty ring: the whole capacity
