"""Injected faults end in the right bytes or a clear error, never wrong bytes.

Faults come from :class:`s3io.testing.faultproxy.FaultProxy` between the
client and a real loopback server: a connection dropped mid-body, 503s, a
short body, an object overwritten mid-read, failed uploads.
"""
import os
import time
from functools import partial

import pytest

from s3io import S3Client, S3ClientConfig, S3Exception, S3IncompleteRead, S3ObjectChanged, S3ReaderConstructor
from s3io.s3reader import SequentialS3Reader
from s3io.testing.faultproxy import FaultProxy

PART = 256 * 1024
SIZE = 3 * PART + 123
KINDS = {
    "sequential": partial(SequentialS3Reader, part_size=PART),
    "ranged": S3ReaderConstructor.range_based(buffer_size=PART),
    "ranged-unbuffered": S3ReaderConstructor.range_based(buffer_size=0),
}


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def setup(s3_server, bucket, proxy):
    data = os.urandom(SIZE)
    boto = s3_server.boto3_client()
    boto.put_object(Bucket=bucket, Key="obj", Body=data)
    client = S3Client(s3_server.region, endpoint=proxy.endpoint_url, s3client_config=S3ClientConfig(max_attempts=4))
    return client, bucket, data, boto


def _read_all(client, bucket, kind):
    reader = client.get_object(bucket, "obj", reader_constructor=KINDS[kind])
    if kind == "sequential":
        return reader.read()
    out = bytearray()
    while True:  # a pattern that crosses the buffer: 100 KiB reads
        chunk = reader.read(100 * 1024)
        if not chunk:
            return bytes(out)
        out += chunk


@pytest.mark.parametrize("kind", list(KINDS))
def test_connection_dropped_mid_body_is_resumed(setup, proxy, kind):
    client, bucket, data, _ = setup
    proxy.drop_connection(after_bytes=100_000, kind="GetObject", times=2)
    assert _read_all(client, bucket, kind) == data
    assert proxy.count(fault="drop") == 2
    resumed = [e for e in proxy.log if e.kind == "GetObject" and e.fault is None]
    # Every GET after the first response is pinned to the version first seen.
    assert all("if-match" in e.headers for e in resumed[1:] if e.headers.get("range", "").startswith("bytes="))


@pytest.mark.parametrize("kind", list(KINDS))
def test_503_slow_down_is_retried(setup, proxy, kind):
    client, bucket, data, _ = setup
    proxy.slow_down(kind="GetObject", times=2)
    assert _read_all(client, bucket, kind) == data
    assert proxy.count(fault="error_503") == 2


@pytest.mark.parametrize("kind", list(KINDS))
def test_short_body_is_resumed_not_padded(setup, proxy, kind):
    client, bucket, data, _ = setup
    proxy.truncate_body(missing_bytes=1000, kind="GetObject", times=2)
    assert _read_all(client, bucket, kind) == data
    assert proxy.count(fault="truncate") == 2


def test_stream_resumes_from_the_last_byte_with_if_match(setup, proxy):
    client, bucket, data, _ = setup
    proxy.drop_connection(after_bytes=50_000, kind="GetObject", times=1)
    stream = client.get_stream(bucket, "obj", 10, SIZE - 10)
    assert b"".join(stream) == data[10 : SIZE - 10]
    gets = [e for e in proxy.log if e.kind == "GetObject"]
    assert len(gets) == 2
    second = gets[1].headers
    first_byte = int(second["range"].split("=")[1].split("-")[0])
    assert 10 < first_byte <= 10 + 50_000 + 1
    assert second["if-match"] == stream.etag


def test_giving_up_after_max_attempts_is_a_clear_error(setup, proxy):
    client, bucket, data, _ = setup
    proxy.truncate_body(missing_bytes=10, kind="GetObject", times=None)
    started = time.monotonic()
    with pytest.raises(S3IncompleteRead, match="gave up after 4 attempts"):
        client.get_object(bucket, "obj", reader_constructor=KINDS["ranged-unbuffered"]).read()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("kind", list(KINDS))
def test_overwrite_mid_read_raises_object_changed(setup, proxy, kind):
    client, bucket, data, boto = setup
    other = os.urandom(SIZE)  # same size: only the ETag tells them apart
    overwritten = []

    def overwrite_before_second_get(req):
        # The request being decided is in the proxy's log already: >= 2 means one GET went before it.
        if req.kind == "GetObject" and not overwritten and proxy.count("GetObject") >= 2:
            boto.put_object(Bucket=bucket, Key="obj", Body=other)
            overwritten.append(True)
        return False  # never fails a request itself

    proxy.fail(500, kind="GetObject", times=None, when=overwrite_before_second_get)
    reader = client.get_object(bucket, "obj", reader_constructor=KINDS[kind])
    got = bytearray()
    with pytest.raises(S3ObjectChanged):
        while True:
            chunk = reader.read(PART)
            if not chunk:
                break
            got += chunk
    assert overwritten
    # Whatever was handed out before the error came from the first version only.
    assert bytes(got) == data[: len(got)]


def test_failed_upload_leaves_no_multipart_upload(s3_server, bucket, proxy):
    boto = s3_server.boto3_client()
    client = S3Client(
        s3_server.region,
        endpoint=proxy.endpoint_url,
        s3client_config=S3ClientConfig(part_size=5 * 1024 * 1024, max_attempts=2),
    )
    proxy.internal_error(kind="UploadPart", times=None)
    with pytest.raises(S3Exception):
        with client.put_object(bucket, "upload") as writer:
            for _ in range(3):
                writer.write(os.urandom(5 * 1024 * 1024))
    proxy.clear_faults()
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert boto.list_objects_v2(Bucket=bucket, Prefix="upload").get("KeyCount", 0) == 0


def test_upload_survives_a_reset_part(s3_server, bucket, proxy):
    boto = s3_server.boto3_client()
    client = S3Client(
        s3_server.region, endpoint=proxy.endpoint_url, s3client_config=S3ClientConfig(part_size=5 * 1024 * 1024)
    )
    data = os.urandom(11 * 1024 * 1024)
    proxy.reset_upload(after_bytes=1024 * 1024, kind="UploadPart", times=1)
    with client.put_object(bucket, "upload") as writer:
        writer.write(data)
    assert proxy.count(fault="reset_upload") == 1
    assert boto.get_object(Bucket=bucket, Key="upload")["Body"].read() == data


def test_read_timeout_mid_body_is_resumed(s3_server, bucket, proxy):
    data = os.urandom(SIZE)
    s3_server.boto3_client().put_object(Bucket=bucket, Key="obj", Body=data)
    client = S3Client(
        s3_server.region, endpoint=proxy.endpoint_url, s3client_config=S3ClientConfig(read_timeout=0.5, max_attempts=4)
    )
    proxy.stall_response(10.0, after_bytes=100_000, kind="GetObject", times=1)
    started = time.monotonic()
    assert client.get_object(bucket, "obj", reader_constructor=KINDS["ranged-unbuffered"]).read() == data
    assert time.monotonic() - started < 8
    assert proxy.count(fault="stall") == 1
