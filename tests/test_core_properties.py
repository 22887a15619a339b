"""Property tests of the core: both twins against each other, io.BytesIO and a model of the fetch policy."""
import importlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s3io._core_py

from conftest import NO_EXTENSIONS
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])




def _twins():
    if NO_EXTENSIONS:
        pytest.skip("S3IO_NO_EXTENSIONS=1: pure-Python build")
    return importlib.import_module("s3io._core_c"), s3io._core_py


def _outcome(call):
    """The value of ``call()``, or the type and message of what it raised."""
    try:
        return ("ok", call())
    except Exception as exc:  # compared, not swallowed
        return ("raised", type(exc), str(exc))


# --------------------------------------------------------------------------------------------
# coalesce_ranges

gap_sizes = st.one_of(st.integers(0, 40), st.just(float("inf")), st.floats(0, 40, allow_nan=False))
layouts = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 12)), max_size=40)  # (gap, length)


def _layout_ranges(core, first, layout):
    ranges, position = [], first
    for gap, length in layout:
        ranges.append(core.ItemRange(position + gap, position + gap + length))
        position += gap + length
    return ranges


@SETTINGS
@given(first=st.integers(0, 2**40), layout=layouts, max_gap=gap_sizes)
def test_coalesce_groups_cover_ranges_in_order(core, first, layout, max_gap):
    ranges = _layout_ranges(core, first, layout)
    groups = core.coalesce_ranges(ranges, max_gap)
    flattened = [item for group in groups for item in group.item_ranges]
    non_empty = [r for r in ranges if r.end > r.start]
    assert len(flattened) == len(non_empty)
    assert all(a is b for a, b in zip(flattened, non_empty))
    for group in groups:
        items = group.item_ranges
        assert (group.start, group.end) == (items[0].start, items[-1].end)
        assert all(b.start - a.end <= max_gap for a, b in zip(items, items[1:]))
    assert all(b.start - a.end > max_gap for a, b in zip(groups, groups[1:]))


def _bounds(item):
    return item if isinstance(item, tuple) else (item.start, item.end)


def _coalesce_outcome(core, ranges, max_gap):
    outcome = _outcome(lambda: core.coalesce_ranges(ranges, max_gap))
    if outcome[0] == "ok":
        return ("ok", [(g.start, g.end, [_bounds(r) for r in g.item_ranges]) for g in outcome[1]])
    return outcome


@SETTINGS
@given(pairs=st.lists(st.tuples(st.integers(-3, 60), st.integers(-3, 60)), max_size=12),
       max_gap=st.one_of(gap_sizes, st.integers(-2, -1), st.just(float("nan"))))
def test_coalesce_twins_agree_on_any_input(pairs, max_gap):
    outcomes = set()
    for core in _twins():
        outcomes.add(repr(_coalesce_outcome(core, [core.ItemRange(s, e) for s, e in pairs], max_gap)))
        outcomes.add(repr(_coalesce_outcome(core, pairs, max_gap)))  # tuples: the same answer
    assert len(outcomes) == 1, outcomes


# --------------------------------------------------------------------------------------------
# ItemViewBuffer against io.BytesIO

segment_lists = st.lists(st.binary(max_size=24), max_size=8)


def _ops(total):
    position = st.integers(-total - 3, total + 3)
    return st.lists(st.one_of(
        st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-2, total + 3))),
        st.tuples(st.just("readinto"), st.integers(0, total + 3)),
        st.tuples(st.just("seek"), position, st.sampled_from([0, 1, 2])),
        st.tuples(st.just("tell")),
    ), max_size=25)


def _apply(target, op):
    name = op[0]
    if name == "read":
        return _outcome(lambda: target.read(op[1]))
    if name == "readinto":
        dest = bytearray(b"\xaa" * op[1])
        outcome = _outcome(lambda: target.readinto(dest))
        return outcome + (bytes(dest),)
    if name == "seek":
        return _outcome(lambda: target.seek(op[1], op[2]))
    return _outcome(target.tell)


@SETTINGS
@given(data=st.data(), segments=segment_lists)
def test_item_view_buffer_matches_bytesio(core, data, segments):
    total = sum(map(len, segments))
    # Positions at, just before and just after every segment edge.
    edges, offset = [], 0
    for segment in segments:
        offset += len(segment)
        edges += [max(offset - 1, 0), offset, offset + 1]
    ops = data.draw(_ops(total))
    for seek in data.draw(st.lists(st.tuples(st.just("seek"), st.sampled_from(edges or [0]), st.just(0)),
                                   max_size=6)):
        ops.insert(data.draw(st.integers(0, len(ops))), seek)

    buffer = core.ItemViewBuffer()
    for segment in segments:
        buffer.append(data.draw(st.sampled_from([bytes, bytearray, memoryview]))(segment))
    reference = io.BytesIO(b"".join(segments))
    assert len(buffer) == total
    for op in ops:
        assert _apply(buffer, op) == _apply(reference, op), op


# --------------------------------------------------------------------------------------------
# RangeBuffer against io.BytesIO and a model of the documented fetch policy


class FetchModel:
    """The RangedS3Reader policy written as plainly as possible: which fetches a read issues."""

    def __init__(self, size, buffer_size):
        self.size, self.buffer_size = size, buffer_size
        self.buf = (0, 0)
        self.fetches = []
        self.loaded = False  # whether the last read loaded the buffer

    def read(self, start, end):
        self.loaded = False
        buf_start, buf_end = self.buf
        if buf_start <= start < buf_end <= end:
            start = buf_end
        if end == start:
            return
        if self.buffer_size == 0 or end - start >= self.buffer_size:
            self.fetches.append((start, end))
        elif not (buf_start <= start and end <= buf_end):
            load = (start, min(start + self.buffer_size, self.size))
            self.fetches.append(load)
            self.buf = load
            self.loaded = True


class FlakySource:
    def __init__(self, data):
        self.data = data
        self.fetches = []
        self.fail = False

    def __call__(self, start, end, dest):
        self.fetches.append((start, end))
        if self.fail:
            dest[:] = b"\xee" * (end - start)  # scribble, then fail
            raise ConnectionError("injected")
        dest[:] = self.data[start:end]


range_ops = st.lists(st.one_of(
    st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-1, 80)), st.booleans()),
    st.tuples(st.just("readinto"), st.integers(0, 80), st.booleans()),
    st.tuples(st.just("seek"), st.integers(-90, 90), st.sampled_from([0, 1, 2])),
), max_size=25)


@SETTINGS
@given(data=st.binary(max_size=70), buffer_size=st.sampled_from([None, 0, 1, 7, 16, 64]), ops=range_ops)
def test_range_buffer_matches_bytesio_and_fetch_model(core, data, buffer_size, ops):
    size = len(data)
    source = FlakySource(data)
    reader = core.RangeBuffer(size, source, buffer_size)
    model = FetchModel(size, core.DEFAULT_BUFFER_SIZE if buffer_size is None else buffer_size)
    position = 0
    for op in ops:
        if op[0] == "seek":
            _, offset, whence = op
            target = offset + (0, position, size)[whence]
            outcome = _outcome(lambda: reader.seek(offset, whence))
            if target < 0:
                assert outcome == ("raised", ValueError, f"negative seek value {target}")
            else:
                position = min(target, size)
                assert outcome == ("ok", position)
            continue
        _, count, fail = op
        end = size if count is None or count < 0 else min(position + count, size)
        source.fail = fail
        fetched_before = len(source.fetches)
        if op[0] == "read":
            outcome = _outcome(lambda: reader.read(count))
        else:
            dest = bytearray(count)
            outcome = _outcome(lambda: reader.readinto(dest))
            if outcome[0] == "ok":
                assert dest[: outcome[1]] == data[position : position + outcome[1]]
                outcome = ("ok", bytes(dest[: outcome[1]]))
        if position < end:
            model.read(position, end)
        expected_fetches = model.fetches[fetched_before:]
        assert source.fetches[fetched_before:] == expected_fetches
        if fail and expected_fetches:
            assert outcome == ("raised", ConnectionError, "injected")
            if model.loaded:
                model.buf = (0, 0)  # a failed load leaves the buffer empty
            del model.fetches[fetched_before:]
            del source.fetches[fetched_before:]
        else:
            assert outcome == ("ok", data[position:end])
            position = max(position, end)
        assert reader.tell() == position
    for start, end in source.fetches:
        assert 0 <= start < end <= size


@SETTINGS
@given(data=st.binary(max_size=70), buffer_size=st.sampled_from([None, 0, 1, 7, 16]), ops=range_ops)
def test_range_buffer_twins_agree(data, buffer_size, ops):
    logs = []
    for core in _twins():
        source = FlakySource(data)
        reader = core.RangeBuffer(len(data), source, buffer_size)
        log = []
        for op in ops:
            if op[0] == "seek":
                log.append(_outcome(lambda: reader.seek(op[1], op[2])))
                continue
            source.fail = op[2]
            if op[0] == "read":
                log.append(_outcome(lambda: reader.read(op[1])))
            else:
                dest = bytearray(op[1])
                log.append(_outcome(lambda: reader.readinto(dest)) + (bytes(dest),))
            log.append(reader.tell())
        logs.append((log, source.fetches))
    assert logs[0] == logs[1]
