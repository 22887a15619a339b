"""S3Writer: single PUT, parallel multipart with bounded memory, abort on error."""
import gc
import os
import threading
import time

import boto3
import numpy as np
import pytest
from moto import mock_aws

from s3io import S3Client, S3ClientConfig, S3Exception
from s3io.s3writer import S3Writer

MIB = 1024 * 1024
BUCKET = "writer-bucket"
REGION = "us-east-1"
PART = 5 * MIB


@pytest.fixture
def aws():
    with mock_aws():
        boto = boto3.client("s3", region_name=REGION)
        boto.create_bucket(Bucket=BUCKET)
        yield boto


class Spy:
    """Records the S3 operations a client sends; can fail or slow one of them."""

    def __init__(self, client, fail=None, delay=0.0):
        self.calls = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._real = client.transport.call
        self._fail = fail
        self._delay = delay
        client.transport.call = self

    def __call__(self, operation, bucket, key, **kwargs):
        with self._lock:
            self.calls.append(operation)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if operation == "upload_part" and self._delay:
                time.sleep(self._delay)
            if self._fail is not None and self._fail(operation, kwargs):
                raise S3Exception(f"injected failure in {operation}", status=500, code="InternalError")
            return self._real(operation, bucket, key, **kwargs)
        finally:
            with self._lock:
                self.active -= 1


def _client(**config):
    return S3Client(REGION, s3client_config=S3ClientConfig(part_size=PART, **config))


def _uploads(aws):
    return aws.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def _exists(aws, key):
    return aws.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0) > 0


def test_small_object_is_one_put_at_close(aws):
    client = _client()
    spy = Spy(client)
    writer = client.put_object(BUCKET, "small")
    assert isinstance(writer, S3Writer) and writer.writable() and not writer.readable()
    assert writer.write(b"hello ") == 6
    assert writer.write(bytearray(b"world")) == 5
    assert writer.tell() == 11
    writer.flush()
    assert not _exists(aws, "small")  # visible only after close
    writer.close()
    assert spy.calls == ["put_object"]
    assert aws.get_object(Bucket=BUCKET, Key="small")["Body"].read() == b"hello world"


def test_empty_object(aws):
    client = _client()
    with client.put_object(BUCKET, "empty"):
        pass
    assert aws.get_object(Bucket=BUCKET, Key="empty")["Body"].read() == b""


def test_multipart_upload_in_parallel_with_odd_write_sizes(aws):
    client = _client(max_concurrency=4)
    spy = Spy(client, delay=0.05)
    data = os.urandom(2 * PART + 12345)
    with client.put_object(BUCKET, "big") as writer:
        for start in range(0, len(data), 777_777):
            writer.write(memoryview(data)[start : start + 777_777])
        assert writer.tell() == len(data)
    assert aws.get_object(Bucket=BUCKET, Key="big")["Body"].read() == data
    assert spy.calls.count("create_multipart_upload") == 1
    assert spy.calls.count("upload_part") == 3
    assert spy.calls[-1] == "complete_multipart_upload"
    assert spy.max_active >= 2  # parts overlapped
    assert _uploads(aws) == []


def test_exact_multiple_of_the_part_size(aws):
    client = _client()
    data = os.urandom(2 * PART)
    with client.put_object(BUCKET, "exact") as writer:
        writer.write(data)
    assert aws.get_object(Bucket=BUCKET, Key="exact")["Body"].read() == data


def test_parts_in_flight_are_bounded(aws):
    client = _client(max_concurrency=8)
    spy = Spy(client, delay=0.1)
    writer = S3Writer(client.transport, BUCKET, "bounded", part_size=PART, max_parts_in_flight=2)
    chunk = b"x" * MIB
    for _ in range(6 * 5):
        writer.write(chunk)
    writer.close()
    assert spy.calls.count("upload_part") == 6
    # upload_part calls running at once (complete/create never overlap them)
    assert spy.max_active <= 2


def test_exception_inside_with_aborts_and_leaves_nothing(aws):
    client = _client()
    with pytest.raises(RuntimeError, match="boom"):
        with client.put_object(BUCKET, "aborted") as writer:
            writer.write(os.urandom(PART + 1))  # a multipart upload is under way
            assert _uploads(aws)
            raise RuntimeError("boom")
    assert writer.closed
    assert _uploads(aws) == []
    assert not _exists(aws, "aborted")


def test_failed_part_upload_aborts_the_upload(aws):
    client = _client()
    Spy(client, fail=lambda op, kw: op == "upload_part" and kw["PartNumber"] == 2)
    writer = client.put_object(BUCKET, "failed")
    with pytest.raises(S3Exception, match="injected"):
        for _ in range(4):
            writer.write(os.urandom(PART))  # the failure surfaces in a later write
        writer.close()
    writer.close()  # idempotent after the failure
    assert writer.closed
    assert _uploads(aws) == []
    assert not _exists(aws, "failed")


def test_failed_complete_aborts_the_upload(aws):
    client = _client()
    Spy(client, fail=lambda op, kw: op == "complete_multipart_upload")
    writer = client.put_object(BUCKET, "failed-complete")
    writer.write(os.urandom(PART + 10))
    with pytest.raises(S3Exception):
        writer.close()
    assert _uploads(aws) == []


def test_write_after_close_and_idempotent_close(aws):
    client = _client()
    spy = Spy(client)
    writer = client.put_object(BUCKET, "closed")
    writer.write(b"x")
    writer.close()
    writer.close()
    assert spy.calls == ["put_object"]
    assert writer.closed and not writer.writable()
    with pytest.raises(ValueError, match=r"^I/O operation on closed file\.$"):
        writer.write(b"y")


def test_accepts_read_only_views_of_array_memory(aws):
    client = _client()
    array = np.arange(1000, dtype=np.float32)
    view = memoryview(array.tobytes())  # read-only
    strided = memoryview(np.arange(20, dtype=np.uint8))[::2]  # not contiguous
    with client.put_object(BUCKET, "arrays") as writer:
        assert writer.write(view) == 4000
        assert writer.write(memoryview(array)) == 4000  # format "f": counted in bytes
        assert writer.write(strided) == 10
    body = aws.get_object(Bucket=BUCKET, Key="arrays")["Body"].read()
    assert body == array.tobytes() * 2 + bytes(range(0, 20, 2))


def test_write_copies_so_the_caller_may_reuse_its_buffer(aws):
    client = _client()
    buf = bytearray(b"a" * 100)
    with client.put_object(BUCKET, "reuse") as writer:
        writer.write(buf)
        buf[:] = b"b" * 100
        writer.write(buf)
    assert aws.get_object(Bucket=BUCKET, Key="reuse")["Body"].read() == b"a" * 100 + b"b" * 100


def test_unclosed_writer_collected_discards_its_upload(aws):
    client = _client()
    writer = client.put_object(BUCKET, "dropped")
    writer.write(os.urandom(PART + 1))
    assert _uploads(aws)
    del writer
    deadline = time.monotonic() + 10  # the in-flight part holds the writer until it is sent
    while _uploads(aws) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert _uploads(aws) == []
    assert not _exists(aws, "dropped")


def test_write_rejects_str(aws):
    writer = _client().put_object(BUCKET, "s")
    with pytest.raises(TypeError):
        writer.write("text")
    writer.close()


def test_uploads_send_no_checksum_headers(aws):
    client = _client()
    sent = []
    client.transport.boto3_client.meta.events.register("before-send.s3", lambda request, **kw: sent.append(dict(request.headers)))
    with client.put_object(BUCKET, "small") as writer:
        writer.write(b"x" * 100)
    with client.put_object(BUCKET, "multi") as writer:
        writer.write(os.urandom(PART + 1))
    assert len(sent) >= 5
    for headers in sent:
        names = {name.lower() for name in headers}
        assert not any(name.startswith("x-amz-checksum") or name == "x-amz-sdk-checksum-algorithm" for name in names)
        assert "content-md5" not in names
