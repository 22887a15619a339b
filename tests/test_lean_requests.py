"""The lean request path over real HTTP: what goes on the wire, credentials, retries, throttling.

Every case runs on both loopback servers (rclone verifies SigV4 signatures,
moto enforces If-Match) through a FaultProxy that records each request's
headers.
"""
import os
import stat
import sys
import textwrap

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3io import S3Client, S3ClientConfig, S3ReaderConstructor
from s3io.dcp import S3StorageReader, S3StorageWriter
from s3io.testing.faultproxy import FaultProxy
from s3io.testing.servers import TEST_ACCESS_KEY, TEST_SECRET_KEY

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

MiB = 1024 * 1024
LEAN_KINDS = ("GetObject", "HeadObject", "PutObject", "UploadPart")


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


def _client(proxy, **config):
    return S3Client("us-east-1", s3client_config=S3ClientConfig(endpoint_url=proxy.endpoint_url, **config))


def test_hot_operations_bypass_botocore_and_the_rest_use_it(proxy, bucket):
    client = _client(proxy, part_size=5 * MiB)
    data = os.urandom(11 * MiB)
    with client.put_object(bucket, "multi part/ü+=.bin") as writer:  # CreateMultipartUpload, 3 parts, Complete
        writer.write(data)
    with client.put_object(bucket, "small") as writer:
        writer.write(b"x")
    assert client.head_object(bucket, "multi part/ü+=.bin").size == len(data)
    assert client.get_object(bucket, "multi part/ü+=.bin").read() == data
    reader = client.get_object(bucket, "multi part/ü+=.bin", reader_constructor=S3ReaderConstructor.range_based())
    reader.seek(7 * MiB)
    assert reader.read(100) == data[7 * MiB : 7 * MiB + 100]
    assert [o.key for page in client.list_objects(bucket) for o in page.object_info] == ["multi part/ü+=.bin", "small"]
    agents = {}
    for entry in proxy.log:
        agents.setdefault(entry.kind, set()).add("Botocore/" in entry.headers.get("user-agent", ""))
    assert set(LEAN_KINDS) <= set(agents)
    for kind in LEAN_KINDS:
        assert agents[kind] == {False}, kind  # signed and sent by s3io itself
    for kind in ("CreateMultipartUpload", "CompleteMultipartUpload", "ListObjectsV2"):
        assert agents[kind] == {True}, kind


def test_requester_pays_and_session_token_go_out_signed(proxy, bucket, monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-for-the-test")
    client = _client(proxy, requester_pays=True)
    with client.put_object(bucket, "k") as writer:
        writer.write(b"payload")
    assert client.get_object(bucket, "k").read() == b"payload"
    lean = [entry for entry in proxy.log if entry.kind in LEAN_KINDS]
    assert lean
    for entry in lean:
        assert entry.headers["x-amz-request-payer"] == "requester"
        assert entry.headers["x-amz-security-token"] == "session-token-for-the-test"
        signed = entry.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert {"x-amz-request-payer", "x-amz-security-token", "host", "x-amz-date"} <= set(signed)


def test_unsigned_clients_send_no_authorization(moto_server):
    bucket = moto_server.make_bucket()
    moto_server.boto3_client().put_object(Bucket=bucket, Key="public", Body=b"open", ACL="public-read")
    with FaultProxy(moto_server.endpoint_url) as proxy:
        client = _client(proxy, unsigned=True)
        assert client.get_object(bucket, "public").read() == b"open"
        gets = [entry for entry in proxy.log if entry.kind == "GetObject"]
        assert gets and all("authorization" not in entry.headers for entry in gets)


def _rotating_credentials(tmp_path, monkeypatch):
    """A profile whose credential_process hands out a new session token on every call, expiring soon.

    botocore refreshes credentials that expire within 10 minutes before each
    request: every request then signs with the next token.
    """
    counter = tmp_path / "calls"
    script = tmp_path / "credentials.py"
    script.write_text(textwrap.dedent(f"""
        import datetime, json, pathlib
        counter = pathlib.Path({str(counter)!r})
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
        print(json.dumps({{"Version": 1, "AccessKeyId": {TEST_ACCESS_KEY!r}, "SecretAccessKey": {TEST_SECRET_KEY!r},
                          "SessionToken": "rotated-token-%d" % n, "Expiration": expires.isoformat()}}))
    """))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "config"
    config.write_text(f"[profile rotating]\ncredential_process = {sys.executable} {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    return counter


def test_credentials_that_expire_mid_load_are_refreshed(proxy, bucket, tmp_path, monkeypatch):
    writer_config = S3ClientConfig(endpoint_url=proxy.endpoint_url)
    state = {f"t{i}": torch.randn(200_000, generator=torch.Generator().manual_seed(i)) for i in range(6)}
    dcp.save(state, storage_writer=S3StorageWriter("us-east-1", f"s3://{bucket}/ckpt", s3client_config=writer_config))
    calls = _rotating_credentials(tmp_path, monkeypatch)
    proxy.reset_stats()
    config = S3ClientConfig(endpoint_url=proxy.endpoint_url, profile="rotating", part_size=5 * MiB)
    out = {name: torch.zeros_like(value) for name, value in state.items()}
    reader = S3StorageReader("us-east-1", f"s3://{bucket}/ckpt", s3client_config=config, max_concurrency=2)
    dcp.load(out, storage_reader=reader)
    assert all(torch.equal(out[name], state[name]) for name in state)
    tokens = [entry.headers.get("x-amz-security-token") for entry in proxy.log if entry.kind == "GetObject"]
    assert len(set(tokens)) >= 2 and None not in tokens  # the load signed with fresh credentials as they expired
    assert int(calls.read_text()) >= 2


def test_a_burst_of_faults_never_leaves_later_requests_with_one_attempt(proxy, bucket):
    client = _client(proxy, max_attempts=3)
    with client.put_object(bucket, "k") as writer:
        writer.write(b"payload")
    # 150 retries in a burst (each GET fails twice, then succeeds): botocore's quota (500
    # tokens, 5 per retry) would be empty after 100, and every later fault would fail its
    # request at once.
    gets = iter(range(10**6))
    proxy.fail(503, times=150, kind="GetObject", when=lambda request: next(gets) % 3 != 2)
    for _ in range(75):
        assert client.get_object(bucket, "k").read() == b"payload"
    assert client.transport.retry.retries >= 150
    proxy.fail(503, times=2, kind="GetObject")
    assert client.get_object(bucket, "k").read() == b"payload"


def test_dcp_save_and_load_adapt_to_a_store_that_allows_two_requests_at_once(proxy, bucket):
    config = S3ClientConfig(endpoint_url=proxy.endpoint_url, part_size=5 * MiB, max_concurrency=8)
    gen = torch.Generator().manual_seed(3)
    state = {f"w{i}": torch.randn(700_000 + i, generator=gen) for i in range(24)}
    path = f"s3://{bucket}/throttled"
    proxy.set_throttle(2)
    writer = S3StorageWriter("us-east-1", path, s3client_config=config, thread_count=4)
    dcp.save(state, storage_writer=writer)
    out = {name: torch.zeros_like(value) for name, value in state.items()}
    reader = S3StorageReader("us-east-1", path, s3client_config=config, max_inflight_bytes=16 * MiB)
    dcp.load(out, storage_reader=reader)
    assert all(torch.equal(out[name], state[name]) for name in state)
    # The store pushed back a few times only; the writer's and the reader's clients share what they learned.
    assert 1 <= proxy.requests_rejected <= 10, (proxy.requests_forwarded, proxy.requests_rejected)
    limit = writer.fs.client.transport.limit
    assert reader.fs.client.transport.limit is limit
    assert limit.throttles == proxy.requests_rejected and limit.limit <= 2
