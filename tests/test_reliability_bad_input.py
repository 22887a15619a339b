"""Every public entry point, given wrong input, raises a precise exception that names the bad value.

One table per kind of mistake: the caller's arguments (checked before any
request), and the store's answers to requests that cannot succeed (unknown
bucket, missing key, other credentials, a path without a checkpoint).
"""
import math
import re
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3io import (
    S3AccessDenied,
    S3BucketNotFound,
    S3Client,
    S3ClientConfig,
    S3Exception,
    S3ObjectNotFound,
    S3Writer,
    parse_s3_uri,
)
from s3io.dcp import S3FileSystem, S3StorageReader, S3StorageWriter
from s3io.s3reader import S3ReaderConstructor
from s3io.testing.servers import RcloneServer

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
    pytest.mark.filterwarnings("ignore:Detected an existing checkpoint"),
]

DATA = b"0123456789"


class Ctx:
    """A client on a server holding one object ``obj``; builds readers and writers for the cases."""

    def __init__(self, server, bucket) -> None:
        self.server = server
        self.bucket = bucket
        self.config = S3ClientConfig(endpoint_url=server.endpoint_url, max_attempts=2)
        self.client = S3Client("us-east-1", s3client_config=self.config)

    def reader(self, kind="sequential"):
        constructor = {"sequential": None, "ranged": S3ReaderConstructor.range_based()}[kind]
        return self.client.get_object(self.bucket, "obj", reader_constructor=constructor)

    def closed_reader(self, kind):
        reader = self.reader(kind)
        reader.read(1)
        reader.close()
        return reader

    def closed_writer(self):
        writer = self.client.put_object(self.bucket, "written")
        writer.write(b"x")
        writer.close()
        return writer

    def path(self, name):
        return f"s3://{self.bucket}/{name}"


@pytest.fixture(scope="module")
def ctx(rclone_server):
    bucket = rclone_server.make_bucket()
    rclone_server.boto3_client().put_object(Bucket=bucket, Key="obj", Body=DATA)
    return Ctx(rclone_server, bucket)


# (id, call(ctx), exception type, regex the message must match: it names the bad value)
ARGUMENT_CASES = [
    # URIs
    ("uri s3:/x", lambda c: parse_s3_uri("s3:/x"), ValueError, r"'s3:/x'"),
    ("uri s3://", lambda c: parse_s3_uri("s3://"), ValueError, r"'s3://'"),
    ("uri http", lambda c: parse_s3_uri("http://bucket/key"), ValueError, r"'http://bucket/key'"),
    ("uri not str", lambda c: parse_s3_uri(b"s3://b/k"), TypeError, r"bytes"),
    ("writer path http", lambda c: S3StorageWriter("us-east-1", "http://bucket/ckpt", s3client_config=c.config),
     ValueError, r"http://bucket/ckpt"),
    ("writer path s3:/x", lambda c: S3StorageWriter("us-east-1", "s3:/x", s3client_config=c.config), ValueError, r"s3:/x"),
    ("reader path s3://", lambda c: S3StorageReader("us-east-1", "s3://", s3client_config=c.config), ValueError, r"s3://"),
    ("fs mode", lambda c: S3FileSystem("us-east-1", s3client_config=c.config).create_stream(c.path("k"), "r").__enter__(),
     ValueError, r"'r'"),
    # Object names
    ("get_object empty key", lambda c: c.client.get_object(c.bucket, ""), ValueError, r"[Kk]ey"),
    ("head_object empty key", lambda c: c.client.head_object(c.bucket, ""), ValueError, r"[Kk]ey"),
    ("put_object empty key", lambda c: c.client.put_object(c.bucket, ""), ValueError, r"[Kk]ey"),
    ("get_object empty bucket", lambda c: c.client.get_object("", "k"), ValueError, r"[Bb]ucket"),
    ("get_object key None", lambda c: c.client.get_object(c.bucket, None), TypeError, r"[Kk]ey.*None"),
    ("get_object bucket int", lambda c: c.client.get_object(5, "k"), TypeError, r"[Bb]ucket.*int"),
    # Sizes, offsets, whence
    ("get_stream start -1", lambda c: c.client.get_stream(c.bucket, "obj", -1, 5), ValueError, r"-1"),
    ("get_stream start str", lambda c: c.client.get_stream(c.bucket, "obj", "0", 5), TypeError, r"start.*str"),
    ("get_stream start > end", lambda c: c.client.get_stream(c.bucket, "obj", 5, 2), ValueError, r"5.*2"),
    ("fetch_into start -3", lambda c: c.client.fetch_into(c.bucket, "obj", -3, bytearray(2)), ValueError, r"-3"),
    ("fetch_into read-only", lambda c: c.client.fetch_into(c.bucket, "obj", 0, b"xx"), TypeError, r"bytes"),
    ("read str (sequential)", lambda c: c.reader().read("5"), TypeError, r"str"),
    ("read str (ranged)", lambda c: c.reader("ranged").read("5"), TypeError, r"str"),
    ("read float", lambda c: c.reader().read(1.5), TypeError, r"float"),
    ("seek whence 3 (sequential)", lambda c: c.reader().seek(0, 3), ValueError, r"3"),
    ("seek whence 3 (ranged)", lambda c: c.reader("ranged").seek(0, 3), ValueError, r"3"),
    ("seek whence -1", lambda c: c.reader().seek(0, -1), ValueError, r"-1"),
    ("seek whence str", lambda c: c.reader().seek(0, "0"), TypeError, r"str"),
    ("seek negative (sequential)", lambda c: c.reader().seek(-1), ValueError, r"-1"),
    ("seek negative (ranged)", lambda c: c.reader("ranged").seek(-1), ValueError, r"-1"),
    ("seek negative from end", lambda c: c.reader("ranged").seek(-11, 2), ValueError, r"-1"),
    ("seek float (sequential)", lambda c: c.reader().seek(1.5), TypeError, r"float"),
    ("seek float (ranged)", lambda c: c.reader("ranged").seek(1.5), TypeError, r"float"),
    ("readinto bytes (sequential)", lambda c: c.reader().readinto(b"xx"), TypeError, r"bytes"),
    ("readinto bytes (ranged)", lambda c: c.reader("ranged").readinto(b"xx"), TypeError, r"bytes"),
    ("range_based buffer_size -1", lambda c: S3ReaderConstructor.range_based(buffer_size=-1), ValueError, r"-1"),
    ("range_based buffer_size str", lambda c: S3ReaderConstructor.range_based(buffer_size="8"), ValueError, r"'8'"),
    ("max_gap_size -1", lambda c: S3ReaderConstructor.dcp_optimized(-1), ValueError, r"-1"),
    ("max_gap_size nan", lambda c: S3ReaderConstructor.dcp_optimized(math.nan), ValueError, r"nan"),
    ("max_gap_size -inf", lambda c: S3ReaderConstructor.dcp_optimized(-math.inf), ValueError, r"-inf"),
    ("max_gap_size str", lambda c: S3ReaderConstructor.dcp_optimized("1"), TypeError, r"str"),
    ("dcp_optimized reader without ranges",
     lambda c: c.client.get_object(c.bucket, "obj", reader_constructor=S3ReaderConstructor.dcp_optimized()),
     ValueError, r"obj"),
    ("S3Writer part_size -1", lambda c: S3Writer(c.client, c.bucket, "k", part_size=-1), ValueError, r"-1"),
    ("S3Writer part_size 1 KiB", lambda c: S3Writer(c.client, c.bucket, "k", part_size=1024), ValueError, r"1024"),
    ("S3Writer max_parts_in_flight -1", lambda c: S3Writer(c.client, c.bucket, "k", max_parts_in_flight=-1),
     ValueError, r"-1"),
    ("max_inflight_bytes -1", lambda c: S3StorageReader("us-east-1", c.path("x"), s3client_config=c.config,
                                                        max_inflight_bytes=-1), ValueError, r"-1"),
    ("write str", lambda c: c.client.put_object(c.bucket, "w").write("text"), TypeError, r"str"),
    ("write int", lambda c: c.client.put_object(c.bucket, "w").write(5), TypeError, r"int"),
    # Closed objects
    ("read after close (sequential)", lambda c: c.closed_reader("sequential").read(), ValueError, r"closed"),
    ("read after close (ranged)", lambda c: c.closed_reader("ranged").read(), ValueError, r"closed"),
    ("readinto after close", lambda c: c.closed_reader("ranged").readinto(bytearray(3)), ValueError, r"closed"),
    ("seek after close", lambda c: c.closed_reader("sequential").seek(0), ValueError, r"closed"),
    ("tell after close", lambda c: c.closed_reader("ranged").tell(), ValueError, r"closed"),
    ("write after close", lambda c: c.closed_writer().write(b"x"), ValueError, r"closed"),
    ("stream read after close", lambda c: _closed_stream(c).read(), ValueError, r"closed"),
    # S3ClientConfig
    ("config part_size -1", lambda c: S3ClientConfig(part_size=-1), ValueError, r"part_size.*-1"),
    ("config part_size 1 MiB", lambda c: S3ClientConfig(part_size=1 << 20), ValueError, r"part_size.*1048576"),
    ("config part_size str", lambda c: S3ClientConfig(part_size="8"), TypeError, r"part_size.*str"),
    ("config part_size float", lambda c: S3ClientConfig(part_size=8e6), TypeError, r"part_size.*float"),
    ("config max_attempts 0", lambda c: S3ClientConfig(max_attempts=0), ValueError, r"max_attempts.*0"),
    ("config max_attempts bool", lambda c: S3ClientConfig(max_attempts=True), TypeError, r"max_attempts.*bool"),
    ("config throughput nan", lambda c: S3ClientConfig(throughput_target_gbps=math.nan), ValueError, r"nan"),
    ("config throughput 0", lambda c: S3ClientConfig(throughput_target_gbps=0), ValueError, r"throughput.*0"),
    ("config read_timeout -1", lambda c: S3ClientConfig(read_timeout=-1), ValueError, r"read_timeout.*-1"),
    ("config connect_timeout inf", lambda c: S3ClientConfig(connect_timeout=math.inf), ValueError, r"connect_timeout.*inf"),
    ("config endpoint no scheme", lambda c: S3ClientConfig(endpoint_url="localhost:9000"), ValueError, r"localhost:9000"),
    ("config unsigned str", lambda c: S3ClientConfig(unsigned="yes"), TypeError, r"unsigned.*str"),
    ("config max_concurrency 0", lambda c: S3ClientConfig(max_concurrency=0), ValueError, r"max_concurrency.*0"),
    ("config profile int", lambda c: S3ClientConfig(profile=3), TypeError, r"profile.*int"),
    ("client config str", lambda c: S3Client("us-east-1", s3client_config="cfg"), TypeError, r"str"),
]


def _closed_stream(c):
    stream = c.client.get_stream(c.bucket, "obj")
    stream.close()
    return stream


@pytest.mark.parametrize("call, exc_type, pattern", [case[1:] for case in ARGUMENT_CASES],
                         ids=[case[0] for case in ARGUMENT_CASES])
def test_wrong_argument(ctx, call, exc_type, pattern):
    with pytest.raises(Exception) as excinfo:
        call(ctx)
    error = excinfo.value
    assert type(error) is exc_type or (isinstance(error, exc_type) and not isinstance(error, S3Exception)), (
        f"expected {exc_type.__name__}, got {type(error).__name__}: {error}"
    )
    assert re.search(pattern, str(error)), f"message does not name the bad value ({pattern!r}): {error}"


def test_wrong_argument_sends_no_request(ctx):
    # An argument error is found before any request: nothing reaches the store.
    from s3io.testing.faultproxy import FaultProxy

    with FaultProxy(ctx.server.endpoint_url) as proxy:
        client = S3Client("us-east-1", s3client_config=S3ClientConfig(endpoint_url=proxy.endpoint_url))
        for call in (lambda: client.get_object(ctx.bucket, "obj").read("5"),
                     lambda: client.get_object(ctx.bucket, "obj").seek(0, 3),
                     lambda: client.put_object(ctx.bucket, "w").write("text")):
            with pytest.raises((TypeError, ValueError)):
                call()
        assert proxy.count() == 0, [(e.method, e.kind) for e in proxy.log]


# -- what the store answers ---------------------------------------------------------------------

# (id, call(ctx), exception type, regex naming the object)
STORE_CASES = [
    ("unknown bucket: head", lambda c: c.client.head_object("s3io-no-such-bucket", "k"), S3BucketNotFound,
     r"s3io-no-such-bucket"),
    ("unknown bucket: get", lambda c: c.client.get_object("s3io-no-such-bucket", "k").read(), S3BucketNotFound,
     r"s3io-no-such-bucket"),
    ("unknown bucket: ranged get",
     lambda c: c.client.get_object("s3io-no-such-bucket", "k", reader_constructor=S3ReaderConstructor.range_based()).read(),
     S3BucketNotFound, r"s3io-no-such-bucket"),
    ("unknown bucket: put", lambda c: c.client.put_object("s3io-no-such-bucket", "k").close(), S3BucketNotFound,
     r"s3io-no-such-bucket"),
    ("unknown bucket: list", lambda c: list(c.client.list_objects("s3io-no-such-bucket")), S3BucketNotFound,
     r"s3io-no-such-bucket"),
    ("missing key: head", lambda c: c.client.head_object(c.bucket, "no/such key"), S3ObjectNotFound, r"no/such key"),
    ("missing key: get", lambda c: c.client.get_object(c.bucket, "no/such key").read(), S3ObjectNotFound, r"no/such key"),
    ("missing key: ranged get",
     lambda c: c.client.get_object(c.bucket, "no/such key", reader_constructor=S3ReaderConstructor.range_based()).read(),
     S3ObjectNotFound, r"no/such key"),
    ("missing key: stream", lambda c: c.client.get_stream(c.bucket, "no/such key").read(), S3ObjectNotFound,
     r"no/such key"),
    ("missing key: copy", lambda c: c.client.copy_object(c.bucket, "no/such key", c.bucket, "dst"), S3ObjectNotFound,
     r"no/such key"),
    ("missing key: fs read", lambda c: _fs_read(c, "no/such key"), S3ObjectNotFound, r"no/such key"),
]


def _fs_read(c, key):
    with S3FileSystem("us-east-1", s3client_config=c.config).create_stream(c.path(key), "rb") as stream:
        return stream.read()


@pytest.mark.parametrize("call, exc_type, pattern", [case[1:] for case in STORE_CASES],
                         ids=[case[0] for case in STORE_CASES])
def test_store_refuses(s3_server, bucket, call, exc_type, pattern):
    c = Ctx(s3_server, bucket)
    with pytest.raises(exc_type) as excinfo:
        call(c)
    assert re.search(pattern, str(excinfo.value)), str(excinfo.value)
    assert excinfo.value.status == 404


@pytest.fixture(scope="module")
def other_credentials_server():
    """rclone that accepts a key pair the tests' environment does not hold."""
    server = RcloneServer()
    server.access_key, server.secret_key = "s3io-other-access-key", "s3io-other-secret-key"
    with server:
        bucket = server.make_bucket()
        server.boto3_client().put_object(Bucket=bucket, Key="obj", Body=DATA)
        yield server, bucket


@pytest.mark.parametrize("operation", ["head", "get", "ranged get", "put", "multipart put", "list", "copy", "delete",
                                       "dcp save", "dcp load"])
def test_access_denied(other_credentials_server, operation):
    server, bucket = other_credentials_server
    config = S3ClientConfig(endpoint_url=server.endpoint_url, max_attempts=2, part_size=5 << 20)
    client = S3Client("us-east-1", s3client_config=config)
    path = f"s3://{bucket}/ckpt"
    calls = {
        "head": lambda: client.head_object(bucket, "obj"),
        "get": lambda: client.get_object(bucket, "obj").read(),
        "ranged get": lambda: client.get_object(bucket, "obj", reader_constructor=S3ReaderConstructor.range_based()).read(),
        "put": lambda: client.put_object(bucket, "new").close(),
        "multipart put": lambda: _write(client.put_object(bucket, "new"), bytes(6 << 20)),
        "list": lambda: list(client.list_objects(bucket)),
        "copy": lambda: client.copy_object(bucket, "obj", bucket, "copy"),
        "delete": lambda: client.delete_object(bucket, "obj"),
        "dcp save": lambda: dcp.save({"w": torch.ones(3)}, storage_writer=S3StorageWriter("us-east-1", path, s3client_config=config)),
        "dcp load": lambda: dcp.load({"w": torch.ones(3)}, storage_reader=S3StorageReader("us-east-1", path, s3client_config=config)),
    }
    with pytest.raises((S3Exception, CheckpointException)) as excinfo:
        calls[operation]()
    error = _root(excinfo.value)
    if operation == "dcp load":
        # torch reads .metadata itself and folds the reader's errors into an AssertionError's
        # text: the type is lost, the message keeps the status and the object.
        assert "(HTTP 403)" in str(error) and f"s3://{bucket}/ckpt/.metadata" in str(error), str(error)
    else:
        assert isinstance(error, S3AccessDenied), f"{type(error).__name__}: {error}"
        assert error.status == 403 and bucket in str(error)
    assert server.boto3_client().get_object(Bucket=bucket, Key="obj")["Body"].read() == DATA


def _write(writer, data):
    with writer:
        writer.write(data)


def _root(error):
    """The S3Exception behind a torch CheckpointException (or the error itself)."""
    if isinstance(error, CheckpointException):
        failure = next(iter(error.failures.values()))
        return failure[0] if isinstance(failure, tuple) else failure
    return error


def test_path_without_checkpoint(ctx):
    with pytest.raises(CheckpointException) as excinfo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load({"w": torch.zeros(1)}, storage_reader=S3StorageReader("us-east-1", ctx.path("none"), s3client_config=ctx.config))
    text = str(excinfo.value)
    assert f"s3://{ctx.bucket}/none/.metadata" in text and "NoSuchKey" in text
