"""s3io.safetensors: the format, loading and streaming safetensors files from S3, bad input.

Format checks run without a server; loads run on both loopback servers.
Interop cases build files with ``safetensors.torch`` (``require_peer``).
"""
import json
import struct
import subprocess
import sys
import threading

import pytest
import torch

from conftest import _remove_bucket, require_peer
from s3io import S3BucketNotFound, S3Exception, S3ObjectNotFound
from s3io import safetensors as st
from s3io._core import ItemRange
from s3io.dcp._load_plan import LoadFile, LoadSettings
from s3io.dcp._load_schedule import load_files
from s3io.safetensors import SafetensorsError
from s3io.safetensors._format import MAX_HEADER_SIZE, build_header, parse_header

KiB, MiB = 1024, 1024 * 1024


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(s3_server):
    """One bucket per server for this module; each test uses keys of its own (a bucket per test costs ~1.5 s)."""
    name = s3_server.make_bucket()
    yield name
    _remove_bucket(s3_server, name)


def _raw_file(header, data=b"", length=None):
    """A file from a header dict and data bytes (no checks: for bad input)."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _file(tensors, metadata=None):
    """A safetensors file of ``tensors`` (name -> contiguous CPU tensor), built by s3io's header code."""
    header, layout = build_header([(name, t.dtype, t.shape) for name, t in tensors.items()], metadata)
    body = b"".join(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                    if tensors[name].numel() else b"" for name, _, _ in layout)
    return header + body


_BOTO3_CLIENTS = {}


def _put(server, bucket, key, data):
    # One boto3 client per server: building one takes ~0.2 s.
    client = _BOTO3_CLIENTS.get(server.endpoint_url)
    if client is None:
        client = _BOTO3_CLIENTS[server.endpoint_url] = server.boto3_client()
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def _kwargs(server, **extra):
    return dict(endpoint=server.endpoint_url, **extra)


def _sample():
    gen = torch.Generator().manual_seed(3)
    return {
        "bf16": torch.randn(17, 5, generator=gen).to(torch.bfloat16),
        "fp16": torch.randn(33, generator=gen).to(torch.float16),
        "fp32": torch.randn(4, 4, 4, generator=gen),
        "int8": torch.randint(-100, 100, (50,), generator=gen).to(torch.int8),
        "int64": torch.randint(-(2**40), 2**40, (9,), generator=gen),
        "uint8": torch.randint(0, 255, (3, 7), generator=gen).to(torch.uint8),
        "bool": torch.randint(0, 2, (11,), generator=gen).bool(),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "big": torch.randn(3 * MiB // 4, generator=gen),  # 3 MiB: fetched straight into its tensor
        "big_bf16": torch.randn(1536, 1024, generator=gen).to(torch.bfloat16),  # 3 MiB
    }


def _assert_same(got, expected):
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def _assert_owned(tensors):
    """Each tensor has storage of its own: none is a view into a shared (or reused) buffer."""
    pointers = set()
    for name, tensor in tensors.items():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
        if tensor.numel():
            assert tensor.data_ptr() not in pointers, name
            pointers.add(tensor.data_ptr())


# -- the format, without a server -----------------------------------------------------------


def test_build_and_parse_header_round_trip():
    tensors = _sample()
    data = _file(tensors, {"format": "pt", "note": "x"})
    header = parse_header("s3://b/k", len(data), data)
    assert header.metadata == {"format": "pt", "note": "x"}
    assert set(header.tensors) == set(tensors)
    assert header.data_start % 8 == 0
    for name, info in header.tensors.items():
        assert info.dtype == tensors[name].dtype and info.shape == tuple(tensors[name].shape)
        assert info.nbytes == tensors[name].numel() * tensors[name].element_size()
        assert info.start % tensors[name].element_size() == 0  # aligned for its dtype


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}, "tensor 'w': unknown dtype 'F7'"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "tensor 'w': data_offsets 0-4 hold 4 bytes, but shape [2] of F32 takes 8"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "tensor 'w': shape [-1] is not a list of non-negative"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "tensor 'w': data_offsets 4-0 are not a byte range"),
        ({"dtype": "F32", "shape": [1]}, "tensor 'w': data_offsets None is not a pair"),
        ([1, 2], "tensor 'w': its entry is a list"),
    ],
)
def test_bad_tensor_entries_name_file_and_tensor(entry, message):
    data = _raw_file({"w": entry}, b"\0" * 8)
    with pytest.raises(SafetensorsError, match="^s3://b/f.safetensors: " + message.replace("[", r"\[").replace("]", r"\]")):
        parse_header("s3://b/f.safetensors", len(data), data)


def test_bad_headers():
    def parse(data, size=None):
        return parse_header("s3://b/f", len(data) if size is None else size, data)

    with pytest.raises(SafetensorsError, match="s3://b/f: truncated: the file is 5 bytes"):
        parse(b"\1\0\0\0\0")
    with pytest.raises(SafetensorsError, match="header length 999 runs past the end of the file"):
        parse(_raw_file({}, length=999))
    with pytest.raises(SafetensorsError, match="above safetensors' limit"):
        parse(struct.pack("<Q", MAX_HEADER_SIZE + 1), size=2**40)
    with pytest.raises(SafetensorsError, match="not safetensors JSON"):
        parse(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(SafetensorsError, match="key 'a' appears twice"):
        entry = b'{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
        text = b'{"a":' + entry + b',"a":' + entry + b"}"
        parse(struct.pack("<Q", len(text)) + text + b"\0")
    with pytest.raises(SafetensorsError, match="JSON list, not an object"):
        parse(_raw_file([]))
    with pytest.raises(SafetensorsError, match="__metadata__ is not a map of strings"):
        parse(_raw_file({"__metadata__": {"step": 3}}))
    entry = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}
    with pytest.raises(SafetensorsError, match=r"tensors 'a' \(bytes \d+-\d+\) and 'b' \(bytes \d+-\d+\) overlap"):
        parse(_raw_file({"a": entry, "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"\0" * 4))
    with pytest.raises(SafetensorsError, match=r"tensor 'a' \(bytes \d+-\d+\) runs past the end of the file \(\d+ bytes\): truncated"):
        parse(_raw_file({"a": entry}, b"\0" * 3))


def test_build_header_refuses_what_safetensors_cannot_hold():
    with pytest.raises(SafetensorsError, match="tensor 'c': dtype torch.complex128 cannot be stored"):
        build_header([("c", torch.complex128, [1])])
    with pytest.raises(SafetensorsError, match="'a' is given twice"):
        build_header([("a", torch.float32, [1]), ("a", torch.float32, [1])])
    with pytest.raises(SafetensorsError, match="'__metadata__' is reserved"):
        build_header([("__metadata__", torch.float32, [1])])


def test_max_inflight_bytes_is_checked():
    with pytest.raises(ValueError, match="from 4194304 \\(4 MiB\\) up to"):
        st.load("s3://b/x.safetensors", max_inflight_bytes=1024)
    with pytest.raises(ValueError, match="up to this machine's memory"):
        st.stream("s3://b/x.safetensors", max_inflight_bytes=2**62)
    with pytest.raises(TypeError, match="must be an int"):
        st.load("s3://b/x.safetensors", max_inflight_bytes=1.5e9)
    with pytest.raises(ValueError, match="max_concurrency must be a positive int"):
        st.load("s3://b/x.safetensors", max_concurrency=0)


class _MemoryHandle:
    """A LoadFile handle over bytes in memory."""

    def __init__(self, data):
        self.data = data

    def fetch_into(self, start, dest):
        dest[:] = self.data[start : start + len(dest)]
        return ""


class _Item:
    def __init__(self, start, end):
        self.range, self.direct = ItemRange(start, end), True


def test_direct_items_fetched_ahead_stay_under_the_cap():
    """With max_direct_ahead_bytes, destinations allocated and not yet committed never pass the cap."""
    sizes = [MiB] * 12 + [3 * MiB] + [MiB] * 4
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    items = [_Item(start, start + size) for start, size in zip(starts, sizes)]
    data = bytes(range(256)) * (sum(sizes) // 256)
    lock = threading.Lock()
    state = {"live": 0, "peak": 0, "committed": []}

    class Consumer:
        def locate_direct(self, item, read):
            size = item.range.end - item.range.start
            with lock:
                state["live"] += size
                state["peak"] = max(state["peak"], state["live"])
            item.dest = bytearray(size)
            return 0, memoryview(item.dest)

        def commit_direct(self, item):
            assert bytes(item.dest) == data[item.range.start : item.range.end]
            with lock:
                state["live"] -= item.range.end - item.range.start
            state["committed"].append(item)

    settings = LoadSettings(max_inflight_bytes=4 * MiB, part_size=MiB, max_concurrency=4, max_direct_ahead_bytes=2 * MiB)
    load_files([LoadFile(_MemoryHandle(data), items)], Consumer(), settings, thread_name_prefix="test-direct-cap")
    assert state["committed"] == items
    assert state["peak"] == 3 * MiB  # the 3 MiB item alone: the next to consume is always admitted
    unbounded = LoadSettings(max_inflight_bytes=4 * MiB, part_size=MiB, max_concurrency=4)
    state.update(live=0, peak=0, committed=[])
    load_files([LoadFile(_MemoryHandle(data), items)], Consumer(), unbounded, thread_name_prefix="test-direct-cap")
    assert state["peak"] > 3 * MiB


# -- loads on both servers -------------------------------------------------------------------


def test_load_every_dtype_empty_and_scalar(s3_server, bucket):
    save = require_peer("safetensors.torch").save
    tensors = _sample()
    uri = _put(s3_server, bucket, "one/model.safetensors", save(tensors, metadata={"format": "pt", "epoch": "3"}))
    got = st.load(uri, **_kwargs(s3_server))
    _assert_same(got, tensors)
    _assert_owned(got)
    assert [name for name, _ in st.stream(uri, **_kwargs(s3_server))] == list(got)


def test_load_interop_with_safetensors_save_file(s3_server, bucket, tmp_path):
    storage = require_peer("safetensors.torch")
    tensors = _sample()
    path = tmp_path / "model.safetensors"
    storage.save_file(tensors, str(path), metadata={"format": "pt"})
    uri = _put(s3_server, bucket, "interop/model.safetensors", path.read_bytes())
    _assert_same(st.load(uri, **_kwargs(s3_server)), storage.load_file(str(path)))


def test_directory_with_index_list_and_glob(s3_server, bucket):
    first = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2 * MiB // 4)}
    second = {"c": torch.tensor([True, False]), "d": torch.zeros(0, dtype=torch.int8)}
    stray = {"old": torch.ones(3)}  # not in the index: not loaded
    _put(s3_server, bucket, "d/model-00001-of-00002.safetensors", _file(first))
    _put(s3_server, bucket, "d/model-00002-of-00002.safetensors", _file(second, {"format": "pt"}))
    _put(s3_server, bucket, "d/stray.safetensors", _file(stray))
    _put(s3_server, bucket, "d/sub/deeper.safetensors", _file(stray))
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                                            "c": "model-00002-of-00002.safetensors", "d": "model-00002-of-00002.safetensors"}}
    _put(s3_server, bucket, "d/model.safetensors.index.json", json.dumps(index).encode())
    _assert_same(st.load(f"s3://{bucket}/d/", **_kwargs(s3_server)), {**first, **second})
    # A list of files; a directory without an index: every *.safetensors directly in it.
    uris = [f"s3://{bucket}/d/model-00002-of-00002.safetensors", f"s3://{bucket}/d/stray.safetensors"]
    _assert_same(st.load(uris, **_kwargs(s3_server)), {**second, **stray})
    _put(s3_server, bucket, "g/x.safetensors", _file(first))
    _put(s3_server, bucket, "g/y.safetensors", _file(second))
    _put(s3_server, bucket, "g/notes.txt", b"not a tensor file")
    _assert_same(dict(st.stream(f"s3://{bucket}/g/", **_kwargs(s3_server))), {**first, **second})


def test_stream_in_bounded_memory_yields_owned_tensors(s3_server, bucket):
    """A 4 MiB cap over 12 MiB of tensors: the ring is reused, yet every tensor kept stays right."""
    gen = torch.Generator().manual_seed(9)
    tensors = {f"small.{i:03d}": torch.randn(1000 + i, generator=gen) for i in range(600)}  # ~2.5 MiB, buffered
    tensors.update({f"large.{i}": torch.randn(MiB // 4 * (i + 1), generator=gen) for i in range(3)})  # 6 MiB, direct
    uri = _put(s3_server, bucket, "s/model.safetensors", _file(tensors))
    kept = {}
    for name, tensor in st.stream(uri, **_kwargs(s3_server, max_inflight_bytes=4 * MiB, max_concurrency=3)):
        kept[name] = tensor
    _assert_same(kept, tensors)
    _assert_owned(kept)


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("s3io-safetensors")]


def test_stream_closed_early_stops_its_threads(s3_server, bucket):
    tensors = {f"t{i}": torch.full((MiB // 4,), float(i)) for i in range(8)}
    uri = _put(s3_server, bucket, "c/model.safetensors", _file(tensors))
    iterator = st.stream(uri, **_kwargs(s3_server, max_inflight_bytes=4 * MiB))
    assert not _loader_threads()  # nothing runs before the first next()
    name, tensor = next(iterator)
    assert torch.equal(tensor, tensors[name])
    iterator.close()
    assert not _loader_threads()


def test_stream_raises_a_failure_in_the_callers_thread(s3_server, bucket, monkeypatch):
    from s3io._handle import ObjectHandle

    tensors = {f"t{i}": torch.full((MiB // 2,), float(i)) for i in range(4)}
    uri = _put(s3_server, bucket, "f/model.safetensors", _file(tensors))
    real = ObjectHandle.fetch_into
    calls = []

    def failing(self, start, dest):
        calls.append(start)
        if len(calls) == 3:
            raise S3Exception("injected failure", bucket=self.bucket, key=self.key)
        return real(self, start, dest)

    monkeypatch.setattr(ObjectHandle, "fetch_into", failing)
    got = []
    with pytest.raises(S3Exception, match="injected failure"):
        for item in st.stream(uri, **_kwargs(s3_server, max_concurrency=1)):
            got.append(item)
    assert len(got) == 2
    assert not _loader_threads()
    calls.clear()
    with pytest.raises(S3Exception, match="injected failure"):
        st.load(uri, **_kwargs(s3_server, max_concurrency=1))


# -- bad input on both servers -------------------------------------------------------------------


def _no_tensor_yielded(uri, server):
    iterator = st.stream(uri, **_kwargs(server))
    with pytest.raises(Exception) as first:
        next(iterator)
    return first.value


def test_truncated_file(s3_server, bucket):
    data = _file({"a": torch.ones(10), "b": torch.ones(100)})
    uri = _put(s3_server, bucket, "t/cut.safetensors", data[:-7])
    with pytest.raises(SafetensorsError, match=rf"^{uri}: tensor 'b' \(bytes \d+-\d+\) runs past the end of the file .*truncated"):
        st.load(uri, **_kwargs(s3_server))
    assert isinstance(_no_tensor_yielded(uri, s3_server), SafetensorsError)
    short = _put(s3_server, bucket, "t/short.safetensors", data[:5])
    with pytest.raises(SafetensorsError, match=rf"^{short}: truncated: the file is 5 bytes"):
        st.load(short, **_kwargs(s3_server))
    empty = _put(s3_server, bucket, "t/empty.safetensors", b"")
    with pytest.raises(SafetensorsError, match=rf"^{empty}: truncated: the file is 0 bytes"):
        st.load(empty, **_kwargs(s3_server))


def test_header_length_beyond_the_file(s3_server, bucket):
    data = _file({"a": torch.ones(10)})
    bad = struct.pack("<Q", len(data)) + data[8:]
    uri = _put(s3_server, bucket, "h/model.safetensors", bad)
    with pytest.raises(SafetensorsError, match=rf"^{uri}: header length {len(data)} runs past the end of the file"):
        st.load(uri, **_kwargs(s3_server))


def test_long_header_takes_a_second_request(s3_server, bucket):
    tensors = {f"tensor.with.a.long.name.{i:05d}": torch.tensor([i], dtype=torch.int32) for i in range(1500)}
    data = _file(tensors)
    assert struct.unpack("<Q", data[:8])[0] > 64 * KiB  # longer than the first GET
    uri = _put(s3_server, bucket, "long/model.safetensors", data)
    _assert_same(st.load(uri, **_kwargs(s3_server)), tensors)


def test_overlapping_offsets_and_offsets_past_the_end(s3_server, bucket):
    overlap = _raw_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16)
    uri = _put(s3_server, bucket, "o/overlap.safetensors", overlap)
    with pytest.raises(SafetensorsError, match=rf"^{uri}: tensors 'a' .* and 'b' .* overlap"):
        st.load(uri, **_kwargs(s3_server))
    past = _raw_file({"a": {"dtype": "I64", "shape": [4], "data_offsets": [0, 32]}}, b"\0" * 16)
    uri = _put(s3_server, bucket, "o/past.safetensors", past)
    with pytest.raises(SafetensorsError, match=rf"^{uri}: tensor 'a' .* runs past the end of the file"):
        st.load(uri, **_kwargs(s3_server))


def test_unknown_dtype(s3_server, bucket):
    data = _raw_file({"w": {"dtype": "F4_X", "shape": [2], "data_offsets": [0, 1]}}, b"\0")
    uri = _put(s3_server, bucket, "u/model.safetensors", data)
    with pytest.raises(SafetensorsError, match=rf"^{uri}: tensor 'w': unknown dtype 'F4_X'"):
        st.load(uri, **_kwargs(s3_server))


def test_index_problems(s3_server, bucket):
    _put(s3_server, bucket, "i/model-00001-of-00002.safetensors", _file({"a": torch.ones(2)}))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    index_uri = _put(s3_server, bucket, "i/model.safetensors.index.json", json.dumps(index).encode())
    with pytest.raises(S3ObjectNotFound, match=rf"^{index_uri} names shard 'model-00002-of-00002.safetensors' \(tensors 'b'\)"
                                               rf", but s3://{bucket}/i/model-00002-of-00002.safetensors does not exist"):
        st.load(f"s3://{bucket}/i/", **_kwargs(s3_server))
    index["weight_map"]["b"] = "model-00001-of-00002.safetensors"
    _put(s3_server, bucket, "i/model.safetensors.index.json", json.dumps(index).encode())
    with pytest.raises(SafetensorsError, match=rf"^{index_uri} puts tensor 'b' in .*00001-of-00002.safetensors, which has no tensor"):
        st.load(f"s3://{bucket}/i/", **_kwargs(s3_server))
    _put(s3_server, bucket, "i/model.safetensors.index.json", b"{not json")
    with pytest.raises(SafetensorsError, match=rf"^{index_uri}: not a JSON index"):
        st.load(f"s3://{bucket}/i/", **_kwargs(s3_server))


def test_a_name_in_two_files(s3_server, bucket):
    first = _put(s3_server, bucket, "n/1.safetensors", _file({"a": torch.ones(2)}))
    second = _put(s3_server, bucket, "n/2.safetensors", _file({"a": torch.zeros(2)}))
    with pytest.raises(SafetensorsError, match=f"tensor 'a' is in both {first} and {second}"):
        st.load(f"s3://{bucket}/n/", **_kwargs(s3_server))


def test_missing_object_bucket_or_files(s3_server, bucket):
    with pytest.raises(S3ObjectNotFound) as missing:
        st.load(f"s3://{bucket}/nothing-here.safetensors", **_kwargs(s3_server))
    assert missing.value.key == "nothing-here.safetensors"
    assert isinstance(_no_tensor_yielded(f"s3://{bucket}/nothing-here.safetensors", s3_server), S3ObjectNotFound)
    with pytest.raises(S3BucketNotFound):
        st.load("s3://s3io-no-such-bucket-b7f2/model.safetensors", **_kwargs(s3_server))
    with pytest.raises(S3BucketNotFound):
        st.load("s3://s3io-no-such-bucket-b7f2/dir/", **_kwargs(s3_server))
    with pytest.raises(S3ObjectNotFound, match=f"s3://{bucket}/empty/ holds no"):
        st.load(f"s3://{bucket}/empty/", **_kwargs(s3_server))
    with pytest.raises(ValueError, match="the list is empty"):
        st.load([], **_kwargs(s3_server))
    with pytest.raises(ValueError, match="is in the list twice"):
        st.load([f"s3://{bucket}/a.safetensors", f"s3://{bucket}/a.safetensors"], **_kwargs(s3_server))
    with pytest.raises(ValueError, match="is a directory: pass it alone"):
        st.load([f"s3://{bucket}/dir/"], **_kwargs(s3_server))


# -- without the peers ------------------------------------------------------------------------

_BLOCKED_IMPORTS = r'''
import sys

class Blocker:
    """Pretend safetensors and Run:ai are not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("safetensors", "runai_model_streamer", "runai_model_streamer_s3"):
            raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
import s3io, s3io.dcp, s3io.safetensors
from s3io.dcp import S3HuggingFaceStorageReader, S3HuggingFaceStorageWriter
from s3io.safetensors._format import build_header, parse_header
import torch
header, _ = build_header([("w", torch.float32, [2])])
data = header + bytes(8)
assert list(parse_header("s3://b/k", len(data), data).tensors) == ["w"]
assert not [m for m in sys.modules if m.split(".")[0] in ("safetensors", "runai_model_streamer")]
print("imported without the peers")
'''


def test_import_without_safetensors_or_runai(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(_BLOCKED_IMPORTS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "imported without the peers" in done.stdout
