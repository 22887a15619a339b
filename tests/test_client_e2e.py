"""S3Client end to end over HTTP, against moto's server and ``rclone serve s3``."""
import os
import time
from functools import partial

import pytest

import s3io._http as http_module
import s3io._stream as stream_module
from s3io import S3Client, S3ClientConfig, S3Exception, S3ObjectNotFound, S3ReaderConstructor
from s3io.s3reader import SequentialS3Reader
from s3io.testing.faultproxy import FaultProxy

MIB = 1024 * 1024


@pytest.fixture
def client(s3_server):
    return S3Client(s3_server.region, endpoint=s3_server.endpoint_url)


def test_object_round_trip_and_metadata(client, bucket):
    data = os.urandom(100_000)
    with client.put_object(bucket, "dir/a") as writer:
        writer.write(data)
    client.copy_object(bucket, "dir/a", bucket, "dir/b")
    head = client.head_object(bucket, "dir/b")
    assert head.size == len(data) and head.etag.startswith('"')
    listed = {o.key: o for page in client.list_objects(bucket, "dir/") for o in page.object_info}
    assert set(listed) == {"dir/a", "dir/b"}
    assert listed["dir/a"].size == len(data)
    assert listed["dir/a"].etag == client.head_object(bucket, "dir/a").etag  # same form everywhere
    assert client.get_object(bucket, "dir/b", object_info=listed["dir/b"]).read() == data
    client.delete_object(bucket, "dir/a")
    with pytest.raises(S3ObjectNotFound):
        client.head_object(bucket, "dir/a")


def test_ranged_gets_read_from_the_socket_into_the_callers_memory(client, bucket, monkeypatch):
    data = os.urandom(3 * MIB + 7)
    with client.put_object(bucket, "k") as writer:
        writer.write(data)
    targets = []
    real_readinto = http_module.Response.readinto

    def spy(self, view):
        targets.append(view.obj)  # the object whose memory the socket writes into
        return real_readinto(self, view)

    monkeypatch.setattr(http_module.Response, "readinto", spy)
    dest = bytearray(MIB)
    client.fetch_into(bucket, "k", 5, dest)
    assert dest == data[5 : 5 + MIB]
    assert targets and all(target is dest for target in targets)
    targets.clear()
    backing = bytearray(2 * MIB)
    view = memoryview(backing)[MIB // 2 :]  # a view into the middle of a buffer
    client.fetch_into(bucket, "k", MIB, view[:MIB])
    assert view[:MIB] == data[MIB : 2 * MIB]
    assert targets and all(target is backing for target in targets)


def test_stream_chunks_are_fresh_objects(client, bucket):
    data = os.urandom(9 * MIB)
    with client.put_object(bucket, "k") as writer:
        writer.write(data)
    stream = client.get_stream(bucket, "k", 1, len(data) - 1)
    assert stream.etag is None and stream.object_size is None  # lazy
    chunks = list(stream)
    assert len(chunks) > 1
    assert len({id(c) for c in chunks}) == len(chunks)
    assert all(type(c) is bytes for c in chunks)
    assert b"".join(chunks) == data[1:-1]
    assert stream.object_size == len(data) and stream.etag == client.head_object(bucket, "k").etag


def test_stream_edge_ranges(client, bucket):
    with client.put_object(bucket, "k") as writer:
        writer.write(b"0123456789")
    with client.put_object(bucket, "empty"):
        pass
    assert b"".join(client.get_stream(bucket, "k", 3)) == b"3456789"
    assert b"".join(client.get_stream(bucket, "k", None, 4)) == b"0123"
    assert b"".join(client.get_stream(bucket, "k", 8, 100)) == b"89"
    assert b"".join(client.get_stream(bucket, "k", 10)) == b""  # at the end: 416 is an empty stream
    assert b"".join(client.get_stream(bucket, "k", 5, 5)) == b""
    assert b"".join(client.get_stream(bucket, "empty")) == b""
    assert b"".join(client.get_stream(bucket, "empty", 0)) == b""  # 416 or 200 depending on the server
    buf = bytearray(4)
    stream = client.get_stream(bucket, "k", 2, 8)
    assert stream.readinto(buf) == 4 and buf == b"2345"
    assert stream.readinto(buf) == 2 and buf[:2] == b"67"
    assert stream.readinto(buf) == 0
    stream.close()


def test_half_read_stream_close_does_not_poison_the_pool(client, bucket):
    data = os.urandom(4 * MIB)
    with client.put_object(bucket, "k") as writer:
        writer.write(data)
    for _ in range(5):
        stream = client.get_stream(bucket, "k")
        next(stream)
        stream.close()  # unread bytes on the wire: this connection must not be reused
    assert client.get_object(bucket, "k").read() == data


def test_sequential_whole_read_is_the_buffer_itself(client, bucket):
    data = os.urandom(5 * MIB + 3)
    with client.put_object(bucket, "k") as writer:
        writer.write(data)
    reader = client.get_object(bucket, "k", reader_constructor=partial(SequentialS3Reader, part_size=MIB))
    first = reader.read()
    assert first == data
    reader.seek(0)
    assert reader.read() is first  # no copy of the whole object, ever
    reader.seek(10)
    assert reader.read(5) == data[10:15]


def test_sequential_reader_serves_the_prefix_before_the_rest_arrives(s3_server, bucket):
    data = os.urandom(4 * MIB)
    s3_server.boto3_client().put_object(Bucket=bucket, Key="k", Body=data)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        client = S3Client(s3_server.region, endpoint=proxy.endpoint_url)
        # Every part but the first is held back for 3 s.
        proxy.stall_response(
            3.0, after_bytes=0, times=None, kind="GetObject", when=lambda r: not (r.range or "").startswith("bytes=0-")
        )
        reader = client.get_object(bucket, "k", reader_constructor=partial(SequentialS3Reader, part_size=MIB))
        started = time.monotonic()
        assert reader.read(1000) == data[:1000]
        assert time.monotonic() - started < 2.0
        reader.close()
        proxy.clear_faults()


def test_multipart_upload_and_abort_on_both_servers(s3_server, bucket):
    client = S3Client(
        s3_server.region, endpoint=s3_server.endpoint_url, s3client_config=S3ClientConfig(part_size=5 * MIB)
    )
    boto = s3_server.boto3_client()
    data = os.urandom(11 * MIB)
    with client.put_object(bucket, "mp") as writer:
        writer.write(data[: 3 * MIB])
        writer.write(data[3 * MIB :])
    assert client.get_object(bucket, "mp", reader_constructor=S3ReaderConstructor.range_based()).read() == data
    with pytest.raises(KeyError):
        with client.put_object(bucket, "aborted") as writer:
            writer.write(data)
            raise KeyError("stop")
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert [o.key for page in client.list_objects(bucket) for o in page.object_info] == ["mp"]


def test_sequential_whole_object_readinto_goes_straight_into_the_callers_buffer(client, bucket):
    data = os.urandom(3 * MIB + 5)
    with client.put_object(bucket, "k") as writer:
        writer.write(data)
    reader = client.get_object(bucket, "k", reader_constructor=partial(SequentialS3Reader, part_size=MIB))
    buf = bytearray(len(data) + 10)
    assert reader.readinto(buf) == len(data)
    assert buf[: len(data)] == data
    assert reader.readinto(buf) == 0 and reader.read() == b""
    buf[:] = bytes(len(buf))  # the caller owns that memory: the reader must not serve from it
    reader.seek(5)
    assert reader.read(10) == data[5:15]
    reader.seek(0)
    assert reader.read() == data


def test_full_object_crc32_is_verified_when_the_server_sends_one(rclone_server, monkeypatch):
    # rclone returns the whole object's CRC32 even on ranged GETs.
    import s3io.s3reader.sequential as sequential_module

    bucket = rclone_server.make_bucket()
    data = os.urandom(3 * MIB + 1)
    rclone_server.boto3_client().put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm="CRC32")
    client = S3Client(rclone_server.region, endpoint=rclone_server.endpoint_url)
    constructor = partial(SequentialS3Reader, part_size=MIB)
    verified = []
    real_verify = sequential_module._Download._verify

    def spy(self):
        real_verify(self)
        verified.append((self._crc_done, self._bad_checksum))

    monkeypatch.setattr(sequential_module._Download, "_verify", spy)
    assert client.get_object(bucket, "k", reader_constructor=constructor).read() == data
    assert verified == [(len(data), None)]
    # A server CRC that does not match the bytes received is an error, never silent.
    monkeypatch.setattr(stream_module, "_full_object_crc32", lambda response: 12345)
    reader = client.get_object(bucket, "k", reader_constructor=constructor)
    assert reader.read(10) == data[:10]  # bytes before the end are served as they arrive
    with pytest.raises(S3Exception) as info:
        reader.read()
    assert info.value.code == "ChecksumMismatch"
    with pytest.raises(S3Exception):
        reader.read()
