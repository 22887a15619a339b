"""copy_into, the core's copy between two raw buffers: examples, exact errors, and a property test, on both twins."""
import array
import importlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s3io._core
import s3io._core_py

MiB = 1024 * 1024
from conftest import NO_EXTENSIONS




def test_selector_exports_copy_into():
    expected = s3io._core_py if NO_EXTENSIONS else importlib.import_module("s3io._core_c")
    assert s3io._core.copy_into is expected.copy_into


def test_copies_to_the_start_and_returns_the_count(core):
    dest = bytearray(b"..........")
    assert core.copy_into(dest, b"abc") == 3
    assert dest == bytearray(b"abc.......")
    assert core.copy_into(dest, b"") == 0
    assert core.copy_into(bytearray(), b"") == 0
    assert core.copy_into(dest=memoryview(dest)[5:], src=bytearray(b"xyz")) == 3
    assert dest == bytearray(b"abc..xyz..")


def test_counts_bytes_not_items(core):
    src = array.array("i", [1, 2, 3])
    dest = array.array("i", [0, 0, 0, 0])
    assert core.copy_into(dest, src) == 3 * src.itemsize
    assert dest.tolist() == [1, 2, 3, 0]
    dest = bytearray(3 * src.itemsize)
    assert core.copy_into(dest, src) == len(dest)
    assert bytes(dest) == src.tobytes()
    grid = memoryview(bytearray(b"abcdef")).cast("B", (2, 3))  # 2-D, C-contiguous
    dest = bytearray(6)
    assert core.copy_into(dest, grid) == 6 and dest == b"abcdef"


def test_overlapping_buffers_copy_like_memmove(core):
    data = bytearray(b"0123456789")
    view = memoryview(data)
    assert core.copy_into(view[2:], view[:6]) == 6
    assert data == bytearray(b"0101234589")
    assert core.copy_into(view, view[4:]) == 6
    assert data == bytearray(b"2345894589")


def test_large_copies_from_two_threads_into_one_buffer(core):
    # From 1 MiB the compiled twin copies without the GIL, so these run at the same time.
    half = 4 * MiB
    sources = [bytes([1]) * half, bytes(range(256)) * (half // 256)]
    dest = bytearray(2 * half)

    def copy(index):
        return sum(core.copy_into(memoryview(dest)[index * half :], sources[index]) for _ in range(5))

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(copy, range(2))) == [5 * half, 5 * half]
    assert dest[:half] == sources[0] and dest[half:] == sources[1]


@pytest.mark.parametrize(
    "dest, message",
    [
        (b"abcd", "copy_into() needs a writable bytes-like object, not bytes"),
        (memoryview(bytearray(4)).toreadonly(), "copy_into() needs a writable bytes-like object, not memoryview"),
        ("text", "copy_into() needs a writable bytes-like object, not str"),
        (4, "copy_into() needs a writable bytes-like object, not int"),
        (memoryview(bytearray(8))[::2], "copy_into() needs a C-contiguous writable buffer, not a non-contiguous memoryview"),
    ],
    ids=["bytes", "readonly", "str", "int", "strided"],
)
def test_bad_destination(core, dest, message):
    with pytest.raises(TypeError) as excinfo:
        core.copy_into(dest, b"ab")
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    "src, message",
    [
        ("text", "copy_into() source must be a bytes-like object, not str"),
        (None, "copy_into() source must be a bytes-like object, not NoneType"),
        (memoryview(b"abcdef")[::2], "copy_into() source must be a C-contiguous bytes-like object, not a non-contiguous memoryview"),
    ],
    ids=["str", "none", "strided"],
)
def test_bad_source(core, src, message):
    dest = bytearray(8)
    with pytest.raises(TypeError) as excinfo:
        core.copy_into(dest, src)
    assert str(excinfo.value) == message
    assert dest == bytearray(8)


def test_short_destination_copies_nothing(core):
    dest = bytearray(b"xyz")
    with pytest.raises(ValueError) as excinfo:
        core.copy_into(dest, b"abcd")
    assert str(excinfo.value) == "copy_into() destination is 3 bytes, shorter than the 4 source bytes"
    assert dest == bytearray(b"xyz")


def test_wrong_arity(core):
    with pytest.raises(TypeError):
        core.copy_into(bytearray(1))
    with pytest.raises(TypeError):
        core.copy_into(bytearray(1), b"a", b"b")


# --------------------------------------------------------------------------------------------
# Property: the compiled twin does what the pure one does, and both what slice assignment does


def _outcome(copy_into, dest, src):
    try:
        return ("ok", copy_into(dest, src), bytes(dest))
    except Exception as exc:  # compared, not swallowed
        return ("raised", type(exc), str(exc), bytes(dest))


# Sizes 0, 1 and around the 1 MiB line where the compiled twin lets go of the GIL.
sizes = st.one_of(st.integers(0, 64), st.sampled_from([MiB - 1, MiB, MiB + 1]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(src_size=sizes, slack=st.integers(-3, 5), offset=st.integers(0, 8), seed=st.integers(0, 255))
def test_copy_matches_the_pure_twin_and_slice_assignment(src_size, slack, offset, seed):
    src = bytes((seed + i) % 256 for i in range(min(src_size, 64))) * (src_size // 64 + 1)
    src = src[:src_size]
    dest_size = max(src_size + slack, 0)
    twins = [s3io._core_py.copy_into]
    if not NO_EXTENSIONS:
        twins.append(importlib.import_module("s3io._core_c").copy_into)
    outcomes = []
    for copy_into in twins:
        backing = bytearray(b"\xee" * (dest_size + offset))
        outcomes.append(_outcome(copy_into, memoryview(backing)[offset:], src))
    expected = bytearray(b"\xee" * dest_size)
    if src_size <= dest_size:
        expected[:src_size] = src
        assert outcomes[0] == ("ok", src_size, bytes(expected))
    else:
        assert outcomes[0][:2] == ("raised", ValueError) and outcomes[0][3] == bytes(expected)
    assert all(outcome == outcomes[0] for outcome in outcomes)
