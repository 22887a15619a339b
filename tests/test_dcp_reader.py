"""DCPOptimizedS3Reader and DCPOptimizedConstructor over fake streams (no server)."""
import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3io._core import ItemRange
from s3io.s3reader.dcp_optimized import DEFAULT_MAX_GAP_SIZE, DCPOptimizedConstructor, DCPOptimizedS3Reader

DATA = bytes(random.Random(7).getrandbits(8) for _ in range(10_000))


class FakeObject:
    """get_stream over DATA: yields fresh bytes chunks; counts streams; can fail."""

    def __init__(self, data=DATA, chunk_size=1000):
        self.data = data
        self.chunk_size = chunk_size
        self.streams = []  # (start, end) of each stream opened
        self.fail_after_chunks = None  # raise after this many more chunks (once)

    def get_stream(self, start=None, end=None):
        start = 0 if start is None else start
        end = len(self.data) if end is None else end
        self.streams.append((start, end))
        return self._chunks(start, end)

    def _chunks(self, start, end):
        for offset in range(start, end, self.chunk_size):
            if self.fail_after_chunks is not None:
                if self.fail_after_chunks == 0:
                    self.fail_after_chunks = None
                    raise ConnectionResetError("injected stream failure")
                self.fail_after_chunks -= 1
            yield bytes(self.data[offset : min(offset + self.chunk_size, end)])

    def reader(self, ranges, max_gap_size=DEFAULT_MAX_GAP_SIZE):
        items = [ItemRange(s, e) for s, e in ranges]
        return DCPOptimizedS3Reader("bucket", "ckpt/__0_0.distcp", items, lambda: None, self.get_stream, max_gap_size)


RANGES = [(100, 600), (600, 2500), (4000, 4100), (9000, 10_000)]


def _read_items(reader, ranges):
    out = []
    for start, end in ranges:
        reader.seek(start)
        out.append(reader.read(end - start))
    return out


@pytest.mark.parametrize("chunk_size", [1, 7, 1000, 100_000])
def test_reads_each_item(chunk_size):
    obj = FakeObject(chunk_size=chunk_size)
    reader = obj.reader(RANGES)
    assert _read_items(reader, RANGES) == [DATA[s:e] for s, e in RANGES]


@pytest.mark.parametrize(
    "max_gap_size, streams",
    [
        (DEFAULT_MAX_GAP_SIZE, [(100, 10_000)]),
        (float("inf"), [(100, 10_000)]),
        (1500, [(100, 4100), (9000, 10_000)]),
        (0, [(100, 2500), (4000, 4100), (9000, 10_000)]),
    ],
)
def test_coalescing_decides_streams(max_gap_size, streams):
    obj = FakeObject()
    _read_items(obj.reader(RANGES, max_gap_size), RANGES)
    assert obj.streams == streams


def test_torch_style_access_inside_item():
    obj = FakeObject(chunk_size=333)
    reader = obj.reader(RANGES)
    reader.seek(600)
    assert reader.read(4) == DATA[600:604]
    reader.seek(2400)
    buf = bytearray(100)
    assert reader.readinto(buf) == 100 and bytes(buf) == DATA[2400:2500]
    reader.seek(-1000, io.SEEK_CUR)
    assert reader.tell() == 1500
    assert reader.read(10) == DATA[1500:1510]
    assert len(obj.streams) == 1


def test_skipping_an_item_is_allowed_going_back_is_not():
    obj = FakeObject()
    reader = obj.reader(RANGES)
    reader.seek(4000)
    assert reader.read(100) == DATA[4000:4100]
    reader.seek(100)
    with pytest.raises(ValueError, match="before the current item"):
        reader.read(10)
    reader.seek(9000)
    assert reader.read(1000) == DATA[9000:10_000]


@pytest.mark.parametrize("start, size", [(0, 10), (2490, 20), (3000, 1), (10_000, 1)])
def test_read_outside_items_raises(start, size):
    reader = FakeObject().reader(RANGES)
    reader.seek(start)
    with pytest.raises(ValueError, match="sequentially"):
        reader.read(size)
    assert reader.tell() == start


def test_failed_read_leaves_reader_usable():
    obj = FakeObject(chunk_size=100)
    reader = obj.reader(RANGES)
    reader.seek(100)
    assert reader.read(500) == DATA[100:600]
    obj.fail_after_chunks = 3
    with pytest.raises(ConnectionResetError):
        reader.read(1900)
    assert reader.tell() == 600
    assert reader.read(1900) == DATA[600:2500]  # a fresh stream from the item's start
    assert obj.streams[-1] == (600, 10_000)
    reader.seek(9000)
    assert reader.read(1000) == DATA[9000:]


def test_bad_seek_leaves_position():
    reader = FakeObject().reader(RANGES)
    reader.seek(150)
    with pytest.raises(ValueError, match="negative seek value -50"):
        reader.seek(-200, io.SEEK_CUR)
    assert reader.tell() == 150
    with pytest.raises(ValueError):
        reader.seek(0, io.SEEK_END)
    with pytest.raises(ValueError):
        reader.seek(0, 7)
    with pytest.raises(TypeError):
        reader.seek(1.5)
    assert reader.tell() == 150
    assert reader.read(10) == DATA[150:160]


def test_read_arguments():
    reader = FakeObject().reader(RANGES)
    reader.seek(100)
    with pytest.raises(ValueError, match="full read"):
        reader.read()
    with pytest.raises(ValueError, match="full read"):
        reader.read(-1)
    with pytest.raises(TypeError):
        reader.read("4")
    assert reader.read(0) == b""
    with pytest.raises(TypeError, match="writable"):
        reader.readinto(b"abcd")
    with pytest.raises(TypeError, match="writable"):
        reader.readinto(memoryview(bytearray(4)).toreadonly())
    assert reader.tell() == 100
    assert reader.readinto(bytearray(0)) == 0


def test_readinto_other_formats():
    import array

    reader = FakeObject().reader(RANGES)
    reader.seek(100)
    dest = array.array("i", [0] * 25)  # 100 bytes, itemsize 4
    assert reader.readinto(dest) == 100
    assert dest.tobytes() == DATA[100:200]


def test_closed_reader_raises():
    obj = FakeObject()
    reader = obj.reader(RANGES)
    reader.seek(100)
    reader.read(10)
    reader.close()
    reader.close()
    assert reader.closed
    for call in (lambda: reader.read(1), lambda: reader.readinto(bytearray(1)), lambda: reader.seek(0), reader.tell):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_truncated_object_raises_clear_error():
    obj = FakeObject(data=DATA[:9500])
    reader = obj.reader(RANGES)
    reader.seek(9000)
    with pytest.raises(ValueError, match="truncated"):
        reader.read(1000)


@pytest.mark.parametrize(
    "ranges, error",
    [
        ([], "non-empty"),
        ([(10, 4)], "Invalid range: 10-4"),
        ([(50, 60), (10, 20)], "Unsorted ranges: 50-60 and 10-20"),
        ([(0, 10), (5, 15)], "Overlapping ranges: 0-10 and 5-15"),
        ([(5, 5)], "No non-empty ranges"),
    ],
)
def test_bad_ranges(ranges, error):
    with pytest.raises(ValueError, match=error):
        FakeObject().reader(ranges)


def test_bad_constructor_arguments():
    get = FakeObject().get_stream
    with pytest.raises(ValueError):
        DCPOptimizedS3Reader("", "k", [ItemRange(0, 1)], None, get)
    with pytest.raises(ValueError):
        DCPOptimizedS3Reader("b", "", [ItemRange(0, 1)], None, get)
    with pytest.raises(ValueError):
        DCPOptimizedS3Reader("b", "k", [ItemRange(0, 1)], None, get, max_gap_size=-1)
    with pytest.raises(TypeError):
        DCPOptimizedS3Reader("b", "k", [ItemRange(0, 1)], None, get, max_gap_size="1")
    with pytest.raises(ValueError):
        DCPOptimizedConstructor(max_gap_size=float("nan"))


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(0, len(DATA)), min_size=2, max_size=12, unique=True),
    keep=st.lists(st.booleans(), min_size=12, max_size=12),
    chunk_size=st.integers(1, 3000),
    max_gap_size=st.sampled_from([0, 1, 500, float("inf")]),
)
def test_any_items_any_chunks(cuts, keep, chunk_size, max_gap_size):
    cuts.sort()
    ranges = [(a, b) for (a, b), k in zip(zip(cuts, cuts[1:]), keep) if k and b > a]
    if not ranges:
        return
    obj = FakeObject(chunk_size=chunk_size)
    reader = obj.reader(ranges, max_gap_size)
    for start, end in ranges:
        reader.seek(start)
        half = (end - start) // 2
        assert reader.read(half) == DATA[start : start + half]
        buf = bytearray(end - start - half)
        assert reader.readinto(buf) == len(buf)
        assert bytes(buf) == DATA[start + half : end]


class _Info:
    def __init__(self, path, offset, length):
        self.relative_path, self.offset, self.length = path, offset, length


class _Req:
    def __init__(self, index):
        self.storage_index = index


def test_constructor_uses_injected_ranges():
    constructor = DCPOptimizedConstructor(max_gap_size=0)
    storage = {"a": _Info("__0_0.distcp", 0, 10), "b": _Info("__0_0.distcp", 10, 5), "c": _Info("__1_0.distcp", 3, 4)}
    constructor.set_item_ranges_by_file([_Req("a"), _Req("b"), _Req("c"), _Req("a")], storage, "s3://bkt/ckpt")
    obj = FakeObject()
    reader = constructor("bkt", "ckpt/__0_0.distcp", lambda: None, obj.get_stream)
    assert isinstance(reader, DCPOptimizedS3Reader)
    reader.seek(10)
    assert reader.read(5) == DATA[10:15]
    with pytest.raises(ValueError, match="No ranges found"):
        constructor("bkt", "ckpt/other.distcp", lambda: None, obj.get_stream)
    assert constructor.max_gap_size == 0
    assert "max_gap_size=0" in repr(constructor)


def test_an_empty_item_at_the_offset_of_the_next_keeps_both_ranges():
    constructor = DCPOptimizedConstructor(max_gap_size=0)
    storage = {"empty": _Info("__0_0.distcp", 10, 0), "next": _Info("__0_0.distcp", 10, 6)}
    constructor.set_item_ranges_by_file([_Req("empty"), _Req("next")], storage, "s3://bkt/ckpt")
    reader = constructor("bkt", "ckpt/__0_0.distcp", lambda: None, FakeObject().get_stream)
    reader.seek(10)
    assert reader.read(6) == DATA[10:16]  # the non-empty item is still planned


def test_constructor_takes_ranges_computed_elsewhere():
    # S3StorageReader groups a plan once and injects the ranges it also loads from.
    constructor = DCPOptimizedConstructor(max_gap_size=0)
    ranges = [ItemRange(600, 2500), ItemRange(100, 600)]
    constructor.set_item_ranges({"s3://bkt/ckpt/__0_0.distcp": ranges})
    assert ranges == [ItemRange(100, 600), ItemRange(600, 2500)]  # sorted in place, the same objects
    obj = FakeObject()
    reader = constructor("bkt", "ckpt/__0_0.distcp", lambda: None, obj.get_stream)
    assert _read_items(reader, [(100, 600), (600, 2500)]) == [DATA[100:600], DATA[600:2500]]
    assert obj.streams == [(100, 2500)]
    with pytest.raises(ValueError, match="No ranges found"):
        constructor("bkt", "ckpt/__1_0.distcp", lambda: None, obj.get_stream)
