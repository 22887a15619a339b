"""Unit tests for the DCP pieces that need no server: prefix strategies, the
torch.save fast path and the load pipeline (driven by a local-file fetch)."""
import io
import os
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.futures import Future

from s3io.dcp import (
    BinaryPrefixStrategy,
    DefaultPrefixStrategy,
    HexPrefixStrategy,
    NumericPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3PrefixStrategyBase,
)
from s3io.dcp import _load_pipeline
from s3io.dcp._load_pipeline import LoadPipeline, StoredItem, load
from s3io.dcp._torch_save import load_tensor_view, probe_layout

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
    ref = pytest.importorskip("s3torchconnector.dcp.s3_prefix_strategy")
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


class _LocalFiles:
    """fetch_into over a local directory, with counters and optional faults."""

    def __init__(self, root):
        self.root = root
        self.calls = []
        self.lock = threading.Lock()
        self.fail_at = None  # (key, start) -> exception to raise
        self.etag_for = lambda key, start: "etag-1"

    def fetch_into(self, bucket, key, start, dest, *, etag=None):
        with self.lock:
            self.calls.append((key, start, len(dest), etag))
        if self.fail_at is not None and self.fail_at[0] == key and self.fail_at[1] <= start:
            raise self.fail_at[2]
        with open(os.path.join(self.root, key), "rb") as f:
            f.seek(start)
            n = f.readinto(dest)
        if n != len(dest):
            raise EOFError(f"{key}: wanted {len(dest)} bytes at {start}, got {n}")
        return self.etag_for(key, start)


class _PipelineReader(FileSystemReader):
    """torch's FileSystemReader with read_data replaced by the s3io pipeline."""

    def __init__(self, path, files, direct=True, **pipeline_args):
        super().__init__(path)
        self.files = files
        self.direct = direct
        self.pipeline_args = pipeline_args
        self.pipeline = None

    def read_data(self, plan, planner):
        by_file = {}
        for request in plan.items:
            info = self.storage_data[request.storage_index]
            items = by_file.setdefault(info.relative_path, {})
            stored = items.setdefault(info.offset, StoredItem(info.offset, info.offset + info.length, info))
            stored.requests.append(request)
        self.pipeline = LoadPipeline(self.files.fetch_into, **self.pipeline_args)
        files = [("b", k, list(v.values())) for k, v in by_file.items()]
        load(self.pipeline, files, planner, self.transforms, direct=self.direct, direct_min_bytes=1 << 20)
        future = Future()
        future.set_result(None)
        return future


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
        {"direct": False},
    ],
    ids=["defaults", "small-cap", "tiny-parts", "one-group", "no-direct"],
)
def test_pipeline_round_trip(saved_checkpoint, args):
    path, sd = saved_checkpoint
    files = _LocalFiles(str(path))
    out = _blank(sd)
    reader = _PipelineReader(str(path), files, **args)
    dcp.load(out, storage_reader=reader)
    _assert_same(sd, out)
    assert reader.pipeline.direct_items == (0 if args.get("direct") is False else 1)  # "big"


def test_pipeline_direct_declines_mismatched_destinations(saved_checkpoint):
    path, sd = saved_checkpoint
    files = _LocalFiles(str(path))
    # A non-contiguous destination and a dtype change both need the buffered path.
    out = {"big": torch.zeros(300_000, 2)[:, 0]}
    reader = _PipelineReader(str(path), files)
    dcp.load(out, storage_reader=reader)
    assert reader.pipeline.direct_items == 0
    assert torch.equal(out["big"], sd["big"])
    out = {"big": torch.zeros(300_000, dtype=torch.float64)}
    reader = _PipelineReader(str(path), files)
    dcp.load(out, storage_reader=reader)
    assert reader.pipeline.direct_items == 0
    assert torch.equal(out["big"], sd["big"].double())


def test_pipeline_partial_load_fetches_only_needed_bytes(saved_checkpoint):
    path, sd = saved_checkpoint
    files = _LocalFiles(str(path))
    out = {"f16": torch.zeros(50).half()}
    dcp.load(out, storage_reader=_PipelineReader(str(path), files, max_gap_size=0))
    assert torch.equal(out["f16"], sd["f16"])
    fetched = sum(n for _, _, n, _ in files.calls)
    assert fetched < 4096, fetched  # one small item, not the 1.2 MB "big" tensor


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_pipeline_memory_in_flight_is_capped(saved_checkpoint, direct):
    path, sd = saved_checkpoint
    files = _LocalFiles(str(path))
    cap = 256 * 1024
    live = [0]
    peak = [0]
    original = _load_pipeline._allocate

    class Tracked(bytearray):
        def __del__(self):
            live[0] -= len(self)

    def tracked_allocate(size):
        buffer = Tracked(size)
        live[0] += size
        peak[0] = max(peak[0], live[0])
        return buffer

    _load_pipeline._allocate = tracked_allocate
    try:
        out = _blank(sd)
        reader = _PipelineReader(str(path), files, direct=direct, max_inflight_bytes=cap, part_size=16384)
        dcp.load(out, storage_reader=reader)
    finally:
        _load_pipeline._allocate = original
    _assert_same(sd, out)
    big_item = sd["big"].nbytes + 4096  # torch.save header and directory
    if direct:
        # "big" (larger than the cap) goes straight into its destination: only the ring.
        assert reader.pipeline.direct_items == 1
        assert peak[0] == cap
        assert reader.pipeline.peak_inflight_bytes <= cap
    else:
        # One ring of `cap` bytes, plus a buffer of its own for "big".
        assert reader.pipeline.direct_items == 0
        assert cap < peak[0] <= cap + big_item, peak[0]
        assert reader.pipeline.peak_inflight_bytes <= cap + big_item
    assert live[0] == 0  # every buffer freed


def test_pipeline_pins_etag_after_first_response(saved_checkpoint):
    path, sd = saved_checkpoint
    files = _LocalFiles(str(path))
    dcp.load(_blank(sd), storage_reader=_PipelineReader(str(path), files, part_size=4096, max_concurrency=1))
    etags = [etag for _, _, _, etag in files.calls]
    per_file_first = {}
    for key, start, _, etag in files.calls:
        per_file_first.setdefault(key, etag)
    assert all(first is None for first in per_file_first.values())
    assert etags.count("etag-1") == len(etags) - len(per_file_first)


def test_pipeline_object_changed_midway(saved_checkpoint):
    path, sd = saved_checkpoint
    files = _LocalFiles(str(path))
    files.etag_for = lambda key, start: "etag-1" if start < 100_000 else "etag-2"
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=_PipelineReader(str(path), files, part_size=4096))
    assert "changed during the load" in str(_failure(excinfo))


def test_pipeline_fetch_error_propagates_and_stops(saved_checkpoint):
    path, sd = saved_checkpoint
    files = _LocalFiles(str(path))
    first_file = sorted(p for p in os.listdir(path) if p.endswith(".distcp"))[0]
    files.fail_at = (first_file, 0, ConnectionResetError("injected"))
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=_PipelineReader(str(path), files))
    assert isinstance(_failure(excinfo), ConnectionResetError)


def test_pipeline_truncated_file_raises(saved_checkpoint):
    path, sd = saved_checkpoint
    files = _LocalFiles(str(path))
    biggest = max((p for p in os.listdir(path) if p.endswith(".distcp")), key=lambda p: os.path.getsize(path / p))
    with open(path / biggest, "r+b") as f:
        f.truncate(os.path.getsize(path / biggest) // 2)
    with pytest.raises(CheckpointException) as excinfo:
        dcp.load(_blank(sd), storage_reader=_PipelineReader(str(path), files))
    assert isinstance(_failure(excinfo), EOFError)


def test_pipeline_rejects_bad_settings():
    for bad in ({"max_inflight_bytes": 0}, {"part_size": 0}, {"max_concurrency": 0}):
        with pytest.raises(ValueError):
            LoadPipeline(lambda *a, **k: "", **bad)


def test_plan_segments_cuts_groups_at_item_boundaries():
    pipeline = LoadPipeline(lambda *a, **k: "", max_gap_size=100, max_inflight_bytes=4 * 1000, part_size=10)
    items = [StoredItem(i * 1000, i * 1000 + 900, None) for i in range(10)]
    segments = pipeline.plan_segments([("b", "k", items)])
    assert [s.items for s in segments] == [[items[i]] for i in range(10)]  # segment size 1000 < 1900
    pipeline = LoadPipeline(lambda *a, **k: "", max_gap_size=100, max_inflight_bytes=4 * 4000, part_size=10)
    segments = pipeline.plan_segments([("b", "k", items)])
    assert [(s.start, s.end) for s in segments] == [(0, 3900), (4000, 7900), (8000, 9900)]
    pipeline = LoadPipeline(lambda *a, **k: "", max_gap_size=99, max_inflight_bytes=10**9, part_size=10)
    assert len(pipeline.plan_segments([("b", "k", items)])) == 10


def test_ring_allocates_in_order_and_wraps():
    ring = _load_pipeline._Ring(100)
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
    ring = _load_pipeline._Ring(capacity)
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
