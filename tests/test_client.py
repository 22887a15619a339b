"""S3Client unit tests on moto's in-process ``mock_aws`` (no HTTP server)."""
import os
import pickle
import threading

import boto3
import pytest
from moto import mock_aws

from s3io import (
    HeadObjectResult,
    ObjectInfo,
    S3AccessDenied,
    S3BucketNotFound,
    S3Client,
    S3ClientConfig,
    S3Exception,
    S3InvalidRange,
    S3ObjectChanged,
    S3ObjectNotFound,
    S3ReaderConstructor,
    parse_s3_uri,
)
from s3io._errors import translate
from s3io._multipart import copy_in_parts
from s3io._pin import normalize_etag

BUCKET = "unit-bucket"
REGION = "us-east-1"


@pytest.fixture
def aws():
    with mock_aws():
        boto = boto3.client("s3", region_name=REGION)
        boto.create_bucket(Bucket=BUCKET)
        yield boto


@pytest.fixture
def client(aws):
    return S3Client(REGION)


def test_head_object(aws, client):
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"hello")
    head = client.head_object(BUCKET, "k")
    assert isinstance(head, HeadObjectResult)
    assert head.size == 5
    assert head.etag == aws.head_object(Bucket=BUCKET, Key="k")["ETag"]
    assert head.last_modified > 1_600_000_000


def test_list_objects_is_paginated_and_lazy(aws, client):
    for i in range(7):
        aws.put_object(Bucket=BUCKET, Key=f"p/{i}", Body=b"x" * i)
    aws.put_object(Bucket=BUCKET, Key="other", Body=b"")
    listing = client.list_objects(BUCKET, "p/", max_keys=2)
    assert listing.continuation_token is None and not listing.complete  # nothing fetched yet
    pages = list(listing)
    assert [len(page.object_info) for page in pages] == [2, 2, 2, 1] and listing.complete
    infos = [o for page in pages for o in page.object_info]
    assert [o.key for o in infos] == [f"p/{i}" for i in range(7)]
    assert [o.size for o in infos] == list(range(7))
    assert all(isinstance(o, ObjectInfo) and o.etag.startswith('"') for o in infos)
    assert _keys(client.list_objects(BUCKET)) == ["other"] + [f"p/{i}" for i in range(7)]  # key order


def test_list_objects_with_a_delimiter_rolls_up_common_prefixes(aws, client):
    for key in ("top.bin", "a/1", "a/2", "b/c/3"):
        aws.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    (page,) = client.list_objects(BUCKET, delimiter="/")
    assert [o.key for o in page.object_info] == ["top.bin"]
    assert page.common_prefixes == ["a/", "b/"]
    (page,) = client.list_objects(BUCKET, prefix="b/", delimiter="/")
    assert page.object_info == [] and page.common_prefixes == ["b/c/"]


@pytest.mark.parametrize("max_keys", [0, 1001, -1, True, 2.0])
def test_list_objects_rejects_bad_max_keys(client, max_keys):
    with pytest.raises(ValueError, match=f"max_keys must be an int between 1 and 1000, not {max_keys!r}"):
        client.list_objects(BUCKET, max_keys=max_keys)


def _keys(listing):
    return [o.key for page in listing for o in page.object_info]


def test_put_get_delete_copy(aws, client):
    with client.put_object(BUCKET, "a") as writer:
        assert writer.write(b"abc") == 3
    assert client.get_object(BUCKET, "a").read() == b"abc"
    client.copy_object(BUCKET, "a", BUCKET, "b")
    assert aws.get_object(Bucket=BUCKET, Key="b")["Body"].read() == b"abc"
    client.delete_object(BUCKET, "a")
    with pytest.raises(S3ObjectNotFound):
        client.head_object(BUCKET, "a")
    client.delete_object(BUCKET, "a")  # deleting a missing key is not an error


def test_missing_key_and_missing_bucket_are_told_apart_by_type_and_code(aws, client):
    with pytest.raises(S3ObjectNotFound) as key_error:
        client.get_object(BUCKET, "nope").read()
    assert key_error.value.status == 404 and key_error.value.code == "NoSuchKey"
    assert key_error.value.bucket == BUCKET and key_error.value.key == "nope"
    with pytest.raises(S3BucketNotFound) as bucket_error:
        client.get_object("no-such-bucket-s3io", "k").read()
    assert bucket_error.value.code == "NoSuchBucket"
    # HEAD responses have no body: the client asks whether the bucket exists.
    with pytest.raises(S3ObjectNotFound):
        client.head_object(BUCKET, "nope")
    with pytest.raises(S3BucketNotFound):
        client.head_object("no-such-bucket-s3io", "k")
    assert not isinstance(key_error.value, S3BucketNotFound)


def test_get_object_is_lazy(aws, client):
    # No request at all until read: a missing key is only reported then.
    reader = client.get_object(BUCKET, "missing")
    assert reader.bucket == BUCKET and reader.key == "missing"
    assert reader.read(0) == b""
    with pytest.raises(S3ObjectNotFound):
        reader.read()


def test_fetch_into_and_get_stream_without_the_fast_path(aws, client):
    # mock_aws answers with an in-memory body: the stream falls back to read() + copy.
    data = bytes(range(256)) * 100
    aws.put_object(Bucket=BUCKET, Key="k", Body=data)
    dest = bytearray(1000)
    etag = client.fetch_into(BUCKET, "k", 300, dest)
    assert dest == data[300:1300]
    assert etag == aws.head_object(Bucket=BUCKET, Key="k")["ETag"]
    assert b"".join(client.get_stream(BUCKET, "k", 10, 20)) == data[10:20]
    assert b"".join(client.get_stream(BUCKET, "k")) == data
    assert client.fetch_into(BUCKET, "k", 0, bytearray(0)) == ""
    with pytest.raises(S3InvalidRange):
        client.fetch_into(BUCKET, "k", len(data) - 10, bytearray(20))
    with pytest.raises(TypeError):
        client.fetch_into(BUCKET, "k", 0, b"read-only")


def test_if_match_with_a_stale_etag_raises_object_changed(aws, client):
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"one")
    old = client.head_object(BUCKET, "k").etag
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"two!")
    with pytest.raises(S3ObjectChanged) as info:
        client.fetch_into(BUCKET, "k", 0, bytearray(3), etag=old)
    assert info.value.status == 412


def test_reader_pins_the_listed_version(aws, client):
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"one")
    ((info,),) = [page.object_info for page in client.list_objects(BUCKET)]
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"two")  # same size, new ETag
    for constructor in (S3ReaderConstructor.sequential(), S3ReaderConstructor.range_based()):
        with pytest.raises(S3ObjectChanged):
            client.get_object(BUCKET, "k", object_info=info, reader_constructor=constructor).read()


def test_client_pickles_without_its_connections(aws, client):
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"data")
    client.head_object(BUCKET, "k")  # builds the boto3 client
    config = S3ClientConfig(part_size=16 * 1024 * 1024)
    for original in (client, S3Client(REGION, s3client_config=config, user_agent="app/1")):
        copy = pickle.loads(pickle.dumps(original))
        assert copy.region == original.region and copy.s3client_config == original.s3client_config
        assert copy.user_agent_prefix == original.user_agent_prefix
        assert copy.get_object(BUCKET, "k").read() == b"data"


def test_reader_constructors_pickle():
    for constructor in (
        S3ReaderConstructor.sequential(),
        S3ReaderConstructor.range_based(1024),
        S3ReaderConstructor.dcp_optimized(7),
        S3ReaderConstructor.default(),
    ):
        copy = pickle.loads(pickle.dumps(constructor))
        assert S3ReaderConstructor.get_reader_type_string(copy) == S3ReaderConstructor.get_reader_type_string(
            constructor
        )


def test_reader_type_strings():
    assert S3ReaderConstructor.get_reader_type_string(None) == "sequential"
    assert S3ReaderConstructor.get_reader_type_string(S3ReaderConstructor.sequential()) == "sequential"
    assert S3ReaderConstructor.get_reader_type_string(S3ReaderConstructor.range_based()) == "range_based"
    assert S3ReaderConstructor.get_reader_type_string(S3ReaderConstructor.dcp_optimized()) == "dcp_optimized"
    assert S3ReaderConstructor.get_reader_type_string(lambda *a: None) == "unknown"
    with pytest.raises(ValueError, match="buffer_size"):
        S3ReaderConstructor.range_based(-1)


def test_threads_share_one_client(aws, client):
    for i in range(8):
        aws.put_object(Bucket=BUCKET, Key=f"k{i}", Body=bytes([i]) * (1000 + i))
    errors, results = [], {}

    def work(i):
        try:
            for _ in range(5):
                results[i] = client.get_object(BUCKET, f"k{i}").read()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[i] == bytes([i]) * (1000 + i) for i in range(8))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_rebuilds_its_client_and_parent_keeps_its_own(aws, client):
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"forked")
    assert client.get_object(BUCKET, "k").read() == b"forked"
    parent_boto = client.transport.boto3_client
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's boto3 client or pool
        status = 1
        try:
            ok = client.transport.boto3_client is not parent_boto and client.get_object(BUCKET, "k").read() == b"forked"
            os.write(write_fd, b"ok" if ok else b"bad")
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_fd, 16)
    os.close(read_fd)
    assert status == 0 and answer == b"ok"
    assert client.transport.boto3_client is parent_boto
    assert client.get_object(BUCKET, "k").read() == b"forked"


def test_endpoint_resolution(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert S3Client(REGION).endpoint is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert S3Client(REGION).endpoint == "http://generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    assert S3Client(REGION).endpoint == "http://s3-specific:2"
    config = S3ClientConfig(endpoint_url="http://from-config:3")
    assert S3Client(REGION, s3client_config=config).endpoint == "http://from-config:3"
    assert S3Client(REGION, "http://argument:4", s3client_config=config).endpoint == "http://argument:4"


def test_custom_endpoint_uses_path_style_and_aws_does_not():
    custom = S3Client(REGION, endpoint="http://127.0.0.1:9").transport.boto3_client
    assert custom.meta.config.s3["addressing_style"] == "path"
    assert custom.meta.config.request_checksum_calculation == "when_required"
    assert custom.meta.config.response_checksum_validation == "when_required"
    assert custom.meta.config.retries["mode"] == "standard"
    aws = S3Client(REGION).transport.boto3_client
    assert aws.meta.config.s3["addressing_style"] == "auto"
    forced = S3Client(REGION, s3client_config=S3ClientConfig(force_path_style=True)).transport.boto3_client
    assert forced.meta.config.s3["addressing_style"] == "path"
    assert forced.meta.config.retries["total_max_attempts"] == 1  # s3io's RetryPolicy retries every call


def test_no_credentials_in_repr_or_errors(aws, monkeypatch):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    client = S3Client(REGION)
    assert secret not in repr(client)
    assert secret not in repr(client.s3client_config)
    with pytest.raises(S3Exception) as info:
        client.head_object(BUCKET, "nope")
    assert secret not in str(info.value) and secret not in repr(info.value)


def test_exceptions_pickle_with_their_attributes():
    exc = S3ObjectNotFound("gone", status=404, code="NoSuchKey", bucket="b", key="k", request_id="r1")
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is S3ObjectNotFound and str(copy) == "gone"
    assert (copy.status, copy.code, copy.bucket, copy.key, copy.request_id) == (404, "NoSuchKey", "b", "k", "r1")


@pytest.mark.parametrize(
    "status, code, expected",
    [
        (404, "NoSuchKey", S3ObjectNotFound),
        (404, "NoSuchBucket", S3BucketNotFound),
        (403, "AccessDenied", S3AccessDenied),
        (412, "PreconditionFailed", S3ObjectChanged),
        (416, "InvalidRange", S3InvalidRange),
        (503, "SlowDown", S3Exception),
    ],
)
def test_errors_map_by_status_and_code(status, code, expected):
    from botocore.exceptions import ClientError

    response = {
        "Error": {"Code": code, "Message": "The specified bucket does not exist"},  # text must not matter
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "req-1"},
    }
    exc = translate(ClientError(response, "GetObject"), "GetObject", "b", "k")
    assert type(exc) is expected
    assert (exc.status, exc.code, exc.request_id) == (status, code, "req-1")


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/a/b.bin") == ("bucket", "a/b.bin")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="s3://"):
        parse_s3_uri("https://bucket/key")
    with pytest.raises(ValueError, match="Bucket"):
        parse_s3_uri("s3:///key")


def test_normalize_etag():
    assert normalize_etag("abc") == '"abc"'
    assert normalize_etag('"abc"') == '"abc"'
    assert normalize_etag("") is None


def test_unsigned_and_requester_pays_configs(aws):
    import botocore

    unsigned = S3Client(REGION, s3client_config=S3ClientConfig(unsigned=True))
    assert unsigned.transport.boto3_client.meta.config.signature_version is botocore.UNSIGNED
    payer = S3Client(REGION, s3client_config=S3ClientConfig(requester_pays=True))
    sent = []
    payer.transport.boto3_client.meta.events.register("before-send.s3", lambda request, **kw: sent.append(dict(request.headers)))
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"x")
    payer.head_object(BUCKET, "k")
    assert payer.get_object(BUCKET, "k").read() == b"x"
    assert len(sent) == 2 and all(h.get("x-amz-request-payer") in ("requester", b"requester") for h in sent)


def test_unknown_profile_is_an_s3_exception_without_secrets():
    client = S3Client(REGION, s3client_config=S3ClientConfig(profile="no-such-profile-s3io"))
    with pytest.raises(S3Exception, match="no-such-profile-s3io"):
        client.head_object(BUCKET, "k")


def test_sequential_reader_over_a_plain_get_stream_callable():
    """Readers also work over any ``get_stream`` (no s3io fast path), as in the protocol."""
    from types import SimpleNamespace

    from s3io.s3reader import RangedS3Reader, SequentialS3Reader

    data = bytes(range(256)) * 40

    def get_stream(start=None, end=None):
        part = data[start or 0 : len(data) if end is None else end]
        return iter([part[i : i + 1000] for i in range(0, len(part), 1000)])

    info = lambda: SimpleNamespace(size=len(data), etag="e")  # noqa: E731
    sequential = SequentialS3Reader("b", "k", info, get_stream)
    assert sequential.read(10) == data[:10]
    assert sequential.seek(-5, 2) == len(data) - 5
    assert sequential.read() == data[-5:]
    sequential.seek(0)
    assert sequential.read() == data
    ranged = RangedS3Reader("b", "k", info, get_stream, buffer_size=100)
    ranged.seek(1234)
    assert ranged.read(3000) == data[1234:4234]
    assert ranged.read(5) == data[4234:4239]
    with pytest.raises(ValueError, match="Bucket"):
        SequentialS3Reader("", "k", info, get_stream)


@pytest.mark.parametrize(
    "value",
    ["Sun, 22 Nov 2026 02:27:47 GMT", "2026-11-22T02:27:47.000Z", "2026-11-22T02:27:47+02:00", "1700000000", 1700000000],
)
def test_fast_timestamp_parser_agrees_with_botocore(value):
    import botocore.parsers

    from s3io._boto import _parse_timestamp

    assert _parse_timestamp(value) == botocore.parsers.DEFAULT_TIMESTAMP_PARSER(value)


def test_last_modified_comes_through_the_fast_parser(aws, client):
    import datetime

    aws.put_object(Bucket=BUCKET, Key="k", Body=b"x")
    expected = aws.head_object(Bucket=BUCKET, Key="k")["LastModified"]
    assert client.head_object(BUCKET, "k").last_modified == int(expected.timestamp())
    ((info,),) = [page.object_info for page in client.list_objects(BUCKET)]
    assert abs(info.last_modified - int(expected.timestamp())) <= 1
    assert isinstance(expected, datetime.datetime)


def test_multipart_copy_for_objects_above_the_copy_limit(aws, client, monkeypatch):
    data = os.urandom(11 * 1024 * 1024)
    aws.put_object(Bucket=BUCKET, Key="src", Body=data)
    head = client.head_object(BUCKET, "src")
    copy_in_parts(client.transport, BUCKET, "src", BUCKET, "dst", head.size, head.etag, part_size=5 * 1024 * 1024)
    assert aws.get_object(Bucket=BUCKET, Key="dst")["Body"].read() == data
    assert aws.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    # copy_object falls back to it when CopyObject refuses the size.
    import s3io._client as client_module

    calls = []
    monkeypatch.setattr(client_module, "MAX_SINGLE_COPY", 1024)
    real_call = client.transport.call

    def refuse_copy(operation, bucket, key, **kwargs):
        if operation == "copy_object":
            raise S3Exception("too large", status=400, code="InvalidRequest")
        return real_call(operation, bucket, key, **kwargs)

    monkeypatch.setattr(client.transport, "call", refuse_copy)
    monkeypatch.setattr(
        client_module,
        "copy_in_parts",
        lambda *a, **kw: calls.append(a) or copy_in_parts(*a, part_size=5 * 1024 * 1024),
    )
    client.copy_object(BUCKET, "src", BUCKET, "dst2")
    assert calls and aws.get_object(Bucket=BUCKET, Key="dst2")["Body"].read() == data


def test_failed_multipart_copy_leaves_no_upload(aws, client):
    data = os.urandom(11 * 1024 * 1024)
    aws.put_object(Bucket=BUCKET, Key="src", Body=data)
    aws.delete_object(Bucket=BUCKET, Key="src")  # the parts cannot be copied
    with pytest.raises(S3Exception):
        copy_in_parts(client.transport, BUCKET, "src", BUCKET, "dst", len(data), "", part_size=5 * 1024 * 1024)
    assert aws.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_botocore_debug_logs_are_redacted(aws, monkeypatch, caplog):
    import logging

    token = "s3ioTESTSESSIONTOKEN0123456789abcdef"
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    client = S3Client(REGION)
    aws.put_object(Bucket=BUCKET, Key="k", Body=b"x")
    with caplog.at_level(logging.DEBUG):
        client.head_object(BUCKET, "k")
        assert client.get_object(BUCKET, "k").read() == b"x"
    text = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("botocore"))
    assert "x-amz-security-token" in text.lower() or "redacted" in text  # the records were there
    for needle in (os.environ["AWS_SECRET_ACCESS_KEY"], token, "Signature="):
        assert needle not in text
