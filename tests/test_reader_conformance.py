"""Every s3io reader kind against a model of the documented file semantics, over real HTTP.

The model is ``io.BytesIO`` with the documented differences: seeking past the
end clamps to the size.  Objects of size 0, 1 and part/buffer-size boundaries
+-1 live on both loopback servers; hypothesis draws operation sequences.
"""
import os
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3io import S3Client, S3ClientConfig, S3ReaderConstructor
from s3io.s3reader import SequentialS3Reader

P = 64 * 1024  # small part / buffer size, so boundaries are cheap to cross
SIZES = [0, 1, P - 1, P, P + 1, 2 * P + 1]

KINDS = {
    "sequential": partial(SequentialS3Reader, part_size=P),
    "ranged": S3ReaderConstructor.range_based(buffer_size=P),
    "ranged-unbuffered": S3ReaderConstructor.range_based(buffer_size=0),
}


class Model:
    """What the docs promise: BytesIO, except that a seek past the end stays at the end."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def read(self, size):
        if size is None or size < 0:
            out = self.data[self.pos :]
        else:
            out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out

    def readinto(self, n):
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def seek(self, offset, whence):
        base = {0: 0, 1: self.pos, 2: len(self.data)}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek value {target}")
        self.pos = min(target, len(self.data))
        return self.pos


@pytest.fixture(scope="module")
def objects(s3_server):
    bucket = s3_server.make_bucket()
    boto = s3_server.boto3_client()
    data = {}
    for size in SIZES:
        body = os.urandom(size)
        boto.put_object(Bucket=bucket, Key=f"obj-{size}", Body=body)
        data[size] = body
    client = S3Client(s3_server.region, endpoint=s3_server.endpoint_url)
    return client, bucket, data


sizes_arg = st.sampled_from([None, -1, 0, 1, 2, P - 1, P, P + 1, 3 * P])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("read"), sizes_arg),
        st.tuples(st.just("readinto"), st.sampled_from([0, 1, 7, P - 1, P, P + 1, 3 * P])),
        st.tuples(
            st.just("seek"),
            st.integers(min_value=-3 * P, max_value=3 * P) | st.sampled_from([0, 1, -1, P, -P, P + 1]),
            st.sampled_from([0, 1, 2]),
        ),
        st.tuples(st.just("tell")),
    ),
    max_size=12,
)


def _run(reader, model, ops):
    for op in ops:
        name = op[0]
        if name == "read":
            got = reader.read(op[1])
            assert type(got) is bytes
            assert got == model.read(op[1]), op
        elif name == "readinto":
            buf = bytearray(op[1])
            n = reader.readinto(buf)
            expected = model.readinto(op[1])
            assert n == len(expected) and bytes(buf[:n]) == expected, op
        elif name == "seek":
            try:
                expected = model.seek(op[1], op[2])
            except ValueError:
                before = reader.tell()
                with pytest.raises(ValueError):
                    reader.seek(op[1], op[2])
                assert reader.tell() == before == model.pos
            else:
                assert reader.seek(op[1], op[2]) == expected, op
        else:
            assert reader.tell() == model.pos
    assert reader.tell() == model.pos


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.sampled_from(SIZES), ops=operations)
def test_reader_matches_the_model(objects, kind, size, ops):
    client, bucket, data = objects
    reader = client.get_object(bucket, f"obj-{size}", reader_constructor=KINDS[kind])
    _run(reader, Model(data[size]), ops)
    reader.close()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("size", SIZES)
def test_whole_read_then_eof_semantics(objects, kind, size):
    client, bucket, data = objects
    reader = client.get_object(bucket, f"obj-{size}", reader_constructor=KINDS[kind])
    assert reader.readable() and reader.seekable() and not reader.writable()
    assert reader.read(0) == b""
    assert reader.read() == data[size]
    assert reader.read() == b"" and reader.read(5) == b""
    assert reader.readinto(bytearray(4)) == 0
    assert reader.seek(size + 100) == size  # past the end clamps
    if size:
        assert reader.seek(-1, 1) == size - 1
    reader.close()
    reader.close()
    assert reader.closed
    for call in (lambda: reader.read(), lambda: reader.readinto(bytearray(1)), lambda: reader.seek(0), reader.tell):
        with pytest.raises(ValueError, match="closed file"):
            call()


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_arguments(objects, kind):
    client, bucket, data = objects
    reader = client.get_object(bucket, f"obj-{P}", reader_constructor=KINDS[kind])
    with pytest.raises(ValueError):
        reader.seek(0, 3)
    with pytest.raises(TypeError):
        reader.seek("1")
    with pytest.raises(TypeError):
        reader.seek(1.5)
    with pytest.raises(TypeError):
        reader.read("3")
    with pytest.raises(TypeError):
        reader.readinto(b"read-only")
    assert reader.tell() == 0


DEFAULT_PART = S3ClientConfig().part_size


@pytest.fixture(scope="module")
def default_part_objects(s3_server):
    bucket = s3_server.make_bucket()
    boto = s3_server.boto3_client()
    base = os.urandom(DEFAULT_PART + 1)
    for delta in (-1, 0, 1):
        boto.put_object(Bucket=bucket, Key=f"d{delta}", Body=base[: DEFAULT_PART + delta])
    return S3Client(s3_server.region, endpoint=s3_server.endpoint_url), bucket, base


@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("kind", ["sequential", "ranged"])
def test_default_part_size_boundaries(default_part_objects, kind, delta):
    client, bucket, base = default_part_objects
    data = base[: DEFAULT_PART + delta]
    constructor = S3ReaderConstructor.sequential() if kind == "sequential" else S3ReaderConstructor.range_based()
    reader = client.get_object(bucket, f"d{delta}", reader_constructor=constructor)
    model = Model(data)
    ops = [
        ("seek", DEFAULT_PART - 2, 0),
        ("read", 4),
        ("seek", -3, 2),
        ("read", None),
        ("seek", 0, 0),
        ("readinto", DEFAULT_PART),
        ("read", -1),
        ("seek", DEFAULT_PART - 1, 0),
        ("readinto", 3),
    ]
    _run(reader, model, ops)
    reader.seek(0)
    assert reader.read() == data
