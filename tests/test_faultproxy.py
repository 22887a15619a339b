"""The fault-injecting proxy: transparent without faults, and each fault seen by boto3
as the error a real network or a throttling store would give.

Runs plain boto3 (one attempt, short timeouts) against moto and rclone behind a
:class:`FaultProxy`, plus a scripted ``http.server`` upstream for the HTTP
corners S3 clients rarely hit (chunked bodies, close-delimited bodies,
an early final answer to ``Expect: 100-continue``) and for 256 MiB streams.
"""
import hashlib
import http.client
import http.server
import io
import os
import socket
import threading
import time
import uuid

import boto3
import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from s3io.testing.faultproxy import (
    RANDOM_FAULT_KINDS,
    FaultProxy,
    Request,
    is_copy_object,
    is_ranged_get,
    is_upload_part,
)
from s3io.testing.servers import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY, free_port

MiB = 1024 * 1024
SIZE = 300 * 1024  # object size for the fault tests: several socket reads long


# One session for every client: a new session reloads the S3 model (~0.2 s each).
_SESSION = boto3.session.Session()


def _client(endpoint, **overrides):
    """Plain boto3: one attempt, short timeouts, path-style, checksums only when required."""
    options = dict(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"total_max_attempts": 1, "mode": "standard"},  # max_attempts counts retries only
        connect_timeout=2,
        read_timeout=10,
    )
    options.update(overrides)
    return _SESSION.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
        region_name=TEST_REGION,
        config=Config(**options),
    )


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy
    assert proxy.open_connections == 0


@pytest.fixture
def client(proxy):
    return _client(proxy.endpoint_url)


@pytest.fixture
def direct(s3_server):
    """A client straight to the server, not through the proxy."""
    return _client(s3_server.endpoint_url, retries={"total_max_attempts": 3, "mode": "standard"})


@pytest.fixture
def bucket(direct):
    """A fresh bucket (this module's own: conftest's makes a new boto3 session per call)."""
    name = "s3io-fp-%s" % uuid.uuid4().hex[:12]
    direct.create_bucket(Bucket=name)
    yield name
    try:
        uploads = direct.list_multipart_uploads(Bucket=name).get("Uploads", [])
    except ClientError:  # rclone answers NoSuchUpload when there are none
        uploads = []
    for upload in uploads:
        direct.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for item in direct.list_objects_v2(Bucket=name).get("Contents", []):
        direct.delete_object(Bucket=name, Key=item["Key"])
    direct.delete_bucket(Bucket=name)


@pytest.fixture
def obj(direct, bucket):
    """An object put straight to the server (not through the proxy): (key, data)."""
    data = os.urandom(SIZE)
    direct.put_object(Bucket=bucket, Key="obj", Body=data)
    return "obj", data


def _rclone_bucket(server):
    # rclone keeps buckets as directories of its temporary root: removed with the server.
    name = "s3io-fp-%s" % uuid.uuid4().hex[:12]
    _client(server.endpoint_url).create_bucket(Bucket=name)
    return name


def _status(error):
    return error.response["ResponseMetadata"]["HTTPStatusCode"]


# --------------------------------------------------------------------------- transparent


def test_transparent_s3_operations(s3_server, bucket, proxy, client):
    small = b"hello"
    medium = os.urandom(2 * MiB + 17)
    part = os.urandom(5 * MiB)

    client.put_object(Bucket=bucket, Key="small", Body=small)
    client.put_object(Bucket=bucket, Key="medium", Body=io.BytesIO(medium))  # Expect: 100-continue
    assert client.get_object(Bucket=bucket, Key="medium")["Body"].read() == medium
    ranged = client.get_object(Bucket=bucket, Key="medium", Range="bytes=1000-1999")
    assert ranged["Body"].read() == medium[1000:2000]
    assert client.head_object(Bucket=bucket, Key="medium")["ContentLength"] == len(medium)
    assert client.get_object(Bucket=bucket, Key="small")["Body"].read() == small  # after a HEAD: no stray body
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["medium", "small"]
    client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "medium"})
    assert client.get_object(Bucket=bucket, Key="copy")["Body"].read() == medium

    upload = client.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    etags = [
        client.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=n, Body=io.BytesIO(body))["ETag"]
        for n, body in ((1, part), (2, small))
    ]
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="multi",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags)]},
    )
    assert client.get_object(Bucket=bucket, Key="multi")["Body"].read() == part + small
    client.delete_object(Bucket=bucket, Key="copy")

    counts = proxy.counts
    assert counts["PutObject"] == 2 and counts["UploadPart"] == 2 and counts["CopyObject"] == 1
    assert counts["GetObject"] == 5 and counts["HeadObject"] == 1 and counts["ListObjectsV2"] == 1
    assert counts["CreateMultipartUpload"] == counts["CompleteMultipartUpload"] == counts["DeleteObject"] == 1
    log = proxy.log
    assert all(e.fault is None and 200 <= e.status < 300 for e in log), log
    assert proxy.count(fault="any") == 0
    puts = [e for e in log if e.kind == "PutObject"]
    assert [e.request_bytes for e in puts] == [len(small), len(medium)]
    assert puts[1].headers.get("expect") == "100-continue"  # the 100-continue path was exercised
    assert [e.request_bytes for e in log if e.kind == "UploadPart"] == [len(part), len(small)]
    assert [e.response_bytes for e in log if e.kind == "HeadObject"] == [0]
    assert [e for e in log if e.headers.get("range")][0].response_bytes == 1000


def test_keep_alive_connections_are_reused(rclone_server):
    # moto's werkzeug answers "Connection: close" to everything; rclone keeps connections.
    bucket = _rclone_bucket(rclone_server)
    with FaultProxy(rclone_server.endpoint_url) as proxy:
        client = _client(proxy.endpoint_url)
        client.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
        for _ in range(10):
            assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x" * 1000
            client.head_object(Bucket=bucket, Key="k")
        assert proxy.count() == 21
        assert proxy.connections_accepted == 1


# --------------------------------------------------------------------------- HTTP corners, scripted upstream


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers by path: /zeros?N (N zero bytes), /echo (the request head), /chunked, /close,
    /reject (final answer to Expect); PUT answers with the body's length and MD5."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_expect_100(self):
        if self.path.startswith("/reject"):
            self.send_response_only(403)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"denied")
            self.close_connection = True
            return False
        return super().handle_expect_100()

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "12345")
        self.end_headers()

    def do_GET(self):
        if self.path.startswith("/zeros"):
            n = int(self.path.partition("?")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = bytes(MiB)
            while n:
                k = min(n, len(block))
                self.wfile.write(block[:k])
                n -= k
        elif self.path.startswith("/echo"):
            body = ("%s\n%s" % (self.requestline, self.headers)).encode("latin-1")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Check")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Check: done\r\n\r\n")
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the server closes")
            self.close_connection = True
        else:
            self.send_error(404)

    def do_PUT(self):
        digest = hashlib.md5()
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.read(2)
                digest.update(data)
                n += size
        else:
            left = int(self.headers.get("Content-Length", 0))
            while left:
                data = self.rfile.read(min(left, MiB))
                digest.update(data)
                left -= len(data)
                n += len(data)
        body = b"%d %s" % (n, digest.hexdigest().encode())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def scripted():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_request_head_is_forwarded_byte_for_byte(scripted):
    # SigV4 signs the Host header and the path as the client sent them: nothing may be normalised.
    with FaultProxy(scripted) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(b"GET /echo/a%2Fb/../c//d?x=1&x=2&empty HTTP/1.1\r\nHost: bucket.example.test:1234\r\n"
                     b"X-Amz-Date: 20260101T000000Z\r\nx-amz-meta-MixedCase:  spaced  value\r\n"
                     b"Connection: close\r\n\r\n")
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        sock.close()
        body = answer.partition(b"\r\n\r\n")[2].decode("latin-1")
        assert body.startswith("GET /echo/a%2Fb/../c//d?x=1&x=2&empty HTTP/1.1\n")
        assert "Host: bucket.example.test:1234\n" in body
        assert "x-amz-meta-MixedCase:  spaced  value\n" in body or "x-amz-meta-MixedCase: spaced  value\n" in body
        (entry,) = proxy.log
        assert (entry.path, entry.query, entry.kind) == ("/echo/a/b/../c//d", "x=1&x=2&empty", "GetObject")


def test_s3_operation_kinds():
    def kind(method, target, **headers):
        return Request(method, target, {k.replace("_", "-"): v for k, v in headers.items()}, 0).kind

    assert kind("GET", "/b/k") == kind("GET", "/b/k?versionId=3") == "GetObject"
    assert kind("GET", "/b/k?uploadId=u") == "ListParts"
    assert kind("GET", "/b/k?tagging") == "Other"
    assert kind("HEAD", "/b/k") == "HeadObject" and kind("HEAD", "/b") == "HeadBucket"
    assert kind("PUT", "/b/k") == "PutObject"
    assert kind("PUT", "/b/k", x_amz_copy_source="b/o") == "CopyObject"
    assert kind("PUT", "/b/k?partNumber=2&uploadId=u") == "UploadPart"
    assert kind("PUT", "/b/k?partNumber=2&uploadId=u", x_amz_copy_source="b/o") == "UploadPartCopy"
    assert kind("POST", "/b/k?uploads") == "CreateMultipartUpload"
    assert kind("POST", "/b/k?uploadId=u") == "CompleteMultipartUpload"
    assert kind("DELETE", "/b/k?uploadId=u") == "AbortMultipartUpload"
    assert kind("DELETE", "/b/k") == "DeleteObject" and kind("POST", "/b?delete") == "DeleteObjects"
    assert kind("GET", "/b?list-type=2&prefix=p") == "ListObjectsV2" and kind("GET", "/b") == "ListObjects"
    assert kind("GET", "/b?uploads") == "ListMultipartUploads" and kind("GET", "/") == "ListBuckets"
    assert kind("PUT", "/b") == "CreateBucket" and kind("DELETE", "/b") == "DeleteBucket"
    assert kind("GET", "/b/dir%2Fkey%20x") == "GetObject"


def test_chunked_close_delimited_and_head_bodies(scripted):
    with FaultProxy(scripted) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        pieces = [os.urandom(n) for n in (1, 1000, 70_000, 300_000)]
        conn.request("PUT", "/upload", body=iter(pieces), encode_chunked=True)
        joined = b"".join(pieces)
        assert conn.getresponse().read() == b"%d %s" % (len(joined), hashlib.md5(joined).hexdigest().encode())

        conn.request("HEAD", "/anything")
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") == "12345" and resp.read() == b""

        conn.request("GET", "/chunked")  # same connection: the HEAD left no stray bytes
        resp = conn.getresponse()
        assert resp.read() == b"hello chunked world"
        conn.request("GET", "/close")
        resp = conn.getresponse()
        assert resp.read() == b"until the server closes" and resp.will_close
        conn.close()

        log = proxy.log
        assert [e.status for e in log] == [200, 200, 200, 200]
        assert log[0].headers["transfer-encoding"] == "chunked"
        assert proxy.connections_accepted == 1


def test_log_keeps_the_latest_requests_and_counts_all(scripted):
    with FaultProxy(scripted, log_limit=3) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        for n in range(5):
            conn.request("GET", "/zeros?%d" % n)
            assert conn.getresponse().read() == bytes(n)
        conn.close()
        assert [e.response_bytes for e in proxy.log] == [2, 3, 4]
        assert proxy.counts["GET"] == 5


def test_a_request_held_by_a_predicate_is_logged_unfinished(scripted):
    # A caller waiting for "nothing in flight" must see a request a predicate holds.
    entered, release = threading.Event(), threading.Event()

    def hold(req):
        entered.set()
        release.wait(10)
        return False

    with FaultProxy(scripted) as proxy:
        proxy.fail(500, times=None, when=hold)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        answers = []
        sender = threading.Thread(target=lambda: (conn.request("GET", "/zeros?4"), answers.append(conn.getresponse().read())))
        sender.start()
        try:
            assert entered.wait(10)
            (entry,) = proxy.log
            assert entry.duration is None and proxy.in_flight == 1
        finally:
            release.set()
            sender.join(10)
            conn.close()
        assert answers == [bytes(4)]
        (entry,) = proxy.log
        assert entry.duration is not None and entry.fault is None

def test_final_answer_to_expect_100_continue_is_relayed(scripted):
    with FaultProxy(scripted) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(b"PUT /reject HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
        answer = b""
        while not answer.endswith(b"denied"):
            data = sock.recv(65536)
            assert data, answer
            answer += data
        assert answer.startswith(b"HTTP/1.1 403")  # no body was sent, no 100 Continue either
        assert sock.recv(10) == b""  # then the proxy closes: the body framing is ambiguous now
        sock.close()


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_streams_256_mib_without_buffering_it(scripted, direction):
    size = 256 * MiB
    process = psutil.Process()
    with FaultProxy(scripted) as proxy:
        peak = [process.memory_info().rss]
        done = threading.Event()

        def sample():
            while not done.wait(0.01):
                peak.append(process.memory_info().rss)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            if direction == "download":
                conn.request("GET", "/zeros?%d" % size)
                resp = conn.getresponse()
                buf = bytearray(MiB)
                got = 0
                while True:
                    n = resp.readinto(buf)
                    if not n:
                        break
                    got += n
                assert got == size
            else:
                block = bytes(MiB)
                conn.request("PUT", "/upload", body=(block for _ in range(size // MiB)),
                             headers={"Content-Length": str(size)})
                assert conn.getresponse().read().split()[0] == b"%d" % size
            conn.close()
        finally:
            done.set()
            sampler.join()
    # The proxy's relay buffers are a few hundred KiB; a buffered body would add 256 MiB.
    assert max(peak) - peak[0] < 64 * MiB
    (entry,) = proxy.log
    assert (entry.request_bytes if direction == "upload" else entry.response_bytes) == size


# --------------------------------------------------------------------------- faults


def test_drop_connection_mid_body_is_an_incomplete_read(proxy, client, bucket, obj):
    key, data = obj
    fault = proxy.drop_connection(after_bytes=1000, kind="GetObject")
    resp = client.get_object(Bucket=bucket, Key=key)
    assert resp["ContentLength"] == SIZE
    with pytest.raises(ResponseStreamingError):
        resp["Body"].read()
    assert fault.done and fault.fired == 1
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data  # one time only
    first, second = [e for e in proxy.log if e.kind == "GetObject"]
    assert (first.status, first.fault, first.response_bytes) == (200, "drop", 1000)
    assert (second.status, second.fault, second.response_bytes) == (200, None, SIZE)


def test_drop_with_reset_mid_body(proxy, client, bucket, obj):
    key, _ = obj
    proxy.drop_connection(after_bytes=50_000, abort=True)
    resp = client.get_object(Bucket=bucket, Key=key)
    with pytest.raises(ResponseStreamingError, match="reset|Connection broken"):
        resp["Body"].read()


def test_drop_before_response_after_the_server_executed_it(proxy, client, bucket):
    proxy.drop_connection(after_bytes=None, kind="PutObject")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="done-anyway", Body=b"data")
    # The client saw no answer, yet the upload happened: what a retry must cope with.
    assert client.get_object(Bucket=bucket, Key="done-anyway")["Body"].read() == b"data"
    assert [(e.kind, e.status, e.fault) for e in proxy.log][0] == ("PutObject", None, "drop")


def test_truncated_body_keeps_its_content_length(proxy, client, bucket, obj):
    key, data = obj
    proxy.truncate_body(missing_bytes=10, kind="GetObject")
    resp = client.get_object(Bucket=bucket, Key=key)
    assert resp["ContentLength"] == SIZE
    with pytest.raises(ResponseStreamingError, match="IncompleteRead"):
        resp["Body"].read()
    entry = proxy.log[0]
    assert (entry.fault, entry.response_bytes) == ("truncate", SIZE - 10)


def test_truncate_a_ranged_get_only(proxy, client, bucket, obj):
    key, data = obj
    proxy.truncate_body(missing_bytes=1, when=is_ranged_get)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    resp = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-99")
    with pytest.raises(ResponseStreamingError):
        resp["Body"].read()
    assert [e.fault for e in proxy.log] == [None, "truncate"]
    assert proxy.log[1].response_bytes == 99


def test_stalled_body_is_a_read_timeout(proxy, bucket, obj):
    key, _ = obj
    client = _client(proxy.endpoint_url, read_timeout=0.5)
    proxy.stall_response(30, after_bytes=1000, kind="GetObject")
    resp = client.get_object(Bucket=bucket, Key=key)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        resp["Body"].read()
    assert time.monotonic() - started < 5
    # stop() ends the stall at once (the fixture asserts nothing is left open).


def test_stalled_response_head_is_a_read_timeout(proxy, bucket, obj):
    key, data = obj
    client = _client(proxy.endpoint_url, read_timeout=0.5)
    proxy.stall_response(30, after_bytes=None, kind="HeadObject")
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        client.head_object(Bucket=bucket, Key=key)
    assert time.monotonic() - started < 5
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert [(e.kind, e.status, e.fault) for e in proxy.log] == [("HeadObject", None, "stall"), ("GetObject", 200, None)]
    # The client closed its side on the time-out, which ends the stall long before 30 s.
    deadline = time.monotonic() + 5
    while proxy.log[0].duration is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.log[0].duration < 5


@pytest.mark.parametrize(
    "arm, status, code",
    [
        (lambda p, **kw: p.slow_down(**kw), 503, "SlowDown"),
        (lambda p, **kw: p.internal_error(**kw), 500, "InternalError"),
        (lambda p, **kw: p.too_many_requests(**kw), 429, "TooManyRequestsException"),
        (lambda p, **kw: p.fail(400, "InvalidRequest", "nope", **kw), 400, "InvalidRequest"),
    ],
    ids=["503", "500", "429", "400"],
)
def test_error_status_answered_without_forwarding(proxy, client, bucket, obj, arm, status, code):
    key, data = obj
    arm(proxy, kind="GetObject", times=2)
    for _ in range(2):
        with pytest.raises(ClientError) as info:
            client.get_object(Bucket=bucket, Key=key)
        assert (_status(info.value), info.value.response["Error"]["Code"]) == (status, code)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert proxy.count("GetObject", fault="error_%d" % status, status=status) == 2


def test_error_on_head_has_no_body(proxy, client, bucket, obj):
    key, _ = obj
    proxy.slow_down(method="HEAD")
    with pytest.raises(ClientError) as info:
        client.head_object(Bucket=bucket, Key=key)
    assert _status(info.value) == 503
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == SIZE


def test_error_on_an_upload_is_answered_before_the_body(proxy, client, bucket):
    body = os.urandom(2 * MiB)
    proxy.slow_down(kind="PutObject")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key="up", Body=io.BytesIO(body))  # Expect: 100-continue
    assert info.value.response["Error"]["Code"] == "SlowDown"
    client.put_object(Bucket=bucket, Key="up", Body=body)  # no Expect: body read and discarded on error
    assert client.get_object(Bucket=bucket, Key="up")["Body"].read() == body
    first, second = [e for e in proxy.log if e.kind == "PutObject"]
    assert (first.status, first.request_bytes) == (503, 0)
    assert (second.status, second.request_bytes) == (200, len(body))


def test_retries_are_visible_in_the_log(proxy, bucket, obj):
    key, data = obj
    client = _client(proxy.endpoint_url, retries={"total_max_attempts": 3, "mode": "standard"})
    fault = proxy.slow_down(kind="GetObject", times=2)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert fault.done and fault.remaining == 0 and proxy.faults == []
    assert proxy.count("GetObject") == 3
    assert [e.status for e in proxy.log] == [503, 503, 200]


def test_faults_only_hit_matching_requests(proxy, client, bucket, obj):
    key, data = obj
    copy_fault = proxy.internal_error(when=is_copy_object, times=None)
    get_fault = proxy.slow_down(method="GET", kind="ListObjectsV2")
    client.put_object(Bucket=bucket, Key="other", Body=b"x")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    for _ in range(2):
        with pytest.raises(ClientError):
            client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": key})
    with pytest.raises(ClientError):
        client.list_objects_v2(Bucket=bucket)
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 2
    assert copy_fault.fired == 2 and not copy_fault.done and get_fault.done
    proxy.clear_faults()
    client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": key})
    assert [e.fault for e in proxy.log] == [None, None, "error_500", "error_500", "error_503", None, None]


def test_reset_during_an_upload_part(proxy, client, bucket):
    proxy.reset_upload(after_bytes=MiB, when=is_upload_part)
    part = os.urandom(5 * MiB)
    upload = client.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    with pytest.raises(ConnectionClosedError):
        client.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=1, Body=io.BytesIO(part))
    # A retry with the same bytes succeeds (rclone refuses a part number re-sent with other bytes).
    etag = client.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=1, Body=io.BytesIO(part))
    client.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag["ETag"]}]})
    assert client.get_object(Bucket=bucket, Key="multi")["Body"].read() == part
    reset = [e for e in proxy.log if e.fault == "reset_upload"]
    assert [(e.kind, e.status, e.request_bytes) for e in reset] == [("UploadPart", None, MiB)]


def test_reset_upload_skips_requests_without_body(proxy, client, bucket, obj):
    key, _ = obj
    fault = proxy.reset_upload(after_bytes=0)
    client.head_object(Bucket=bucket, Key=key)  # no body: not a candidate
    assert fault.fired == 0
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        client.put_object(Bucket=bucket, Key="reset", Body=b"12345")
    assert fault.done
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="reset")  # never reached the server whole


def _connect_outcome(port):
    """What a new connection sees: 'refused', 'closed', 'reset' or 'served'."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=0.2)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:  # the RST can beat connect()'s completion check
        return "reset"
    try:
        try:  # first listen only: sending into a closed socket would turn a FIN into a RST
            if sock.recv(100) == b"":
                return "closed"
        except socket.timeout:
            pass
        sock.settimeout(5)
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        return "served" if sock.recv(100).startswith(b"HTTP/1.1") else "closed"
    except ConnectionResetError:
        return "reset"
    finally:
        sock.close()


@pytest.mark.parametrize("how, seen", [("unlisten", "refused"), ("close", "closed"), ("reset", "reset")])
def test_refuse_new_connections_for_a_while(rclone_server, how, seen):
    with FaultProxy(rclone_server.endpoint_url) as proxy:
        assert _connect_outcome(proxy.port) == "served"
        proxy.refuse_connections(0.5, how=how)
        started = time.monotonic()
        assert _connect_outcome(proxy.port) == seen
        time.sleep(max(0.0, started + 0.6 - time.monotonic()))
        assert _connect_outcome(proxy.port) == "served"
        assert proxy.connections_refused == (0 if how == "unlisten" else 1)


def test_refusal_closes_idle_kept_alive_connections(rclone_server):
    bucket = _rclone_bucket(rclone_server)
    with FaultProxy(rclone_server.endpoint_url) as proxy:
        client = _client(proxy.endpoint_url)
        client.head_bucket(Bucket=bucket)  # leaves a kept-alive connection in boto3's pool
        proxy.refuse_connections(30)
        deadline = time.monotonic() + 5
        while proxy.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)  # the connection may have been busy finishing the HEAD
        with pytest.raises(EndpointConnectionError):
            client.head_bucket(Bucket=bucket)
        proxy.refuse_connections(0)
        client.head_bucket(Bucket=bucket)
        assert proxy.connections_accepted == 2


def test_random_faults_are_seeded(proxy, client, bucket, obj):
    key, _ = obj

    def run(seed):
        proxy.reset_stats()
        proxy.set_random_faults(0.5, kinds=("error_503", "error_500"), seed=seed)
        outcomes = []
        for _ in range(30):
            try:
                client.head_object(Bucket=bucket, Key=key)
                outcomes.append(200)
            except ClientError as exc:
                outcomes.append(_status(exc))
        return outcomes

    first = run(7)
    assert run(7) == first
    assert 5 <= sum(s != 200 for s in first) <= 25
    assert set(first) == {200, 500, 503}
    assert sum(proxy.faults_injected.values()) == sum(s != 200 for s in first)
    proxy.set_random_faults(0.0)
    for _ in range(5):
        client.head_object(Bucket=bucket, Key=key)
    assert proxy.count(fault="any") == sum(s != 200 for s in first)


def test_random_faults_of_every_kind_leave_the_proxy_working(proxy, bucket, obj):
    key, data = obj
    client = _client(proxy.endpoint_url, read_timeout=0.5)
    proxy.set_random_faults(1.0, seed=3, stall_seconds=5)
    failures = 0
    for i in range(12):
        try:
            if i % 2:
                client.put_object(Bucket=bucket, Key="w%d" % i, Body=os.urandom(100_000))
            else:
                client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError,
                ResponseStreamingError):
            failures += 1
    assert failures == 12
    assert set(proxy.faults_injected) <= set(RANDOM_FAULT_KINDS) and len(proxy.faults_injected) >= 3
    proxy.set_random_faults(0)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_concurrent_clients_under_random_faults_get_right_bytes_or_errors(rclone_server, caplog):
    bucket = _rclone_bucket(rclone_server)
    data = os.urandom(2 * MiB)
    _client(rclone_server.endpoint_url).put_object(Bucket=bucket, Key="k", Body=data)
    threads_before = threading.active_count()
    outcomes = []
    with FaultProxy(rclone_server.endpoint_url) as proxy:
        proxy.set_random_faults(0.3, seed=11, stall_seconds=3)

        def work(n):
            client = _client(proxy.endpoint_url, read_timeout=0.5, max_pool_connections=2)
            for i in range(8):
                try:
                    if i % 3 == 2:
                        client.put_object(Bucket=bucket, Key="w%d-%d" % (n, i), Body=data[: 100_000 * (i + 1)])
                        outcomes.append("ok")
                        continue
                    start = 1000 * n * i
                    got = client.get_object(Bucket=bucket, Key="k", Range="bytes=%d-%d" % (start, start + 300_000))
                    outcomes.append("ok" if got["Body"].read() == data[start : start + 300_001] else "WRONG")
                except (ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError,
                        ResponseStreamingError):
                    outcomes.append("error")

        with caplog.at_level("ERROR", logger="s3io.testing.faultproxy"):
            workers = [threading.Thread(target=work, args=(n,)) for n in range(6)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        assert len(outcomes) == 48 and "WRONG" not in outcomes
        assert outcomes.count("error") >= sum(proxy.faults_injected.values()) // 2 > 0
        assert not caplog.records  # no internal proxy error
    assert threading.active_count() == threads_before


def test_upstream_down_is_a_502(bucket):
    with FaultProxy("http://127.0.0.1:%d" % free_port()) as proxy:
        with pytest.raises(ClientError) as info:
            _client(proxy.endpoint_url).head_bucket(Bucket=bucket)
        assert _status(info.value) == 502


def test_garbage_request_closes_only_that_connection(proxy, client, bucket, obj):
    key, data = obj
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(b"GARBAGE\r\n\r\n")  # no request line: the proxy closes, forwards nothing
    assert sock.recv(100) == b""
    sock.close()
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_bad_arguments_name_the_value(proxy):
    with pytest.raises(ValueError, match="upstream_url"):
        FaultProxy("https://example.com")
    with pytest.raises(ValueError, match="after_bytes must be an int >= 0 or None, not -1"):
        proxy.drop_connection(after_bytes=-1)
    with pytest.raises(ValueError, match="times must be a positive int or None, not 0"):
        proxy.slow_down(times=0)
    with pytest.raises(ValueError, match="how must be"):
        proxy.refuse_connections(1, how="later")
    with pytest.raises(ValueError, match="rate must be between 0 and 1, not 2"):
        proxy.set_random_faults(2)
    with pytest.raises(ValueError, match="kinds must be"):
        proxy.set_random_faults(0.1, kinds=["explode"])
    with pytest.raises(ValueError, match="seconds must be a number >= 0, not -0.02"):
        proxy.set_latency(-0.02)
    with pytest.raises(ValueError, match="max_in_flight must be an int >= 1 or None, not 0"):
        proxy.set_throttle(0)


# --------------------------------------------------------------------------- latency and throttling


def _timed_gets(port, n, path="/zeros?1000"):
    """``n`` GETs on ``n`` connections, sent at once: (seconds for all, [(status, body, headers)])."""
    barrier = threading.Barrier(n + 1)
    answers = [None] * n

    def get(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()  # connected before the barrier: only the requests race
        barrier.wait()
        conn.request("GET", path)
        resp = conn.getresponse()
        answers[i] = (resp.status, resp.read(), dict(resp.getheaders()))
        conn.close()

    threads = [threading.Thread(target=get, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join()
    return time.monotonic() - started, answers


def _wait_in_flight(proxy, n):
    # A slot is taken when the request head arrives and given back just after
    # the client has its answer: both a moment after what the client sees.
    deadline = time.monotonic() + 5
    while proxy.in_flight != n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.in_flight == n


def test_latency_holds_each_response_on_its_own(scripted):
    delay = 0.3  # long enough to tell overlapping holds from serial ones on a loaded machine
    with FaultProxy(scripted) as proxy:
        proxy.set_latency(delay)
        elapsed, answers = _timed_gets(proxy.port, 1)
        assert answers == [(200, bytes(1000), answers[0][2])]
        assert delay <= elapsed < delay + 1.0
        assert proxy.log[0].duration >= delay

        # 16 requests at once wait at the same time: about one delay in all, not 16.
        elapsed, answers = _timed_gets(proxy.port, 16)
        assert [a[:2] for a in answers] == [(200, bytes(1000))] * 16
        assert delay <= elapsed < 16 * delay / 3
        assert proxy.peak_in_flight == 16 and proxy.requests_forwarded == 17

        proxy.clear_faults()  # latency is not a fault: it stays
        assert proxy.latency == delay
        proxy.set_latency(0)
        elapsed, _ = _timed_gets(proxy.port, 1)
        assert elapsed < delay
        _wait_in_flight(proxy, 0)


def test_latency_hold_ends_at_stop_and_leaves_nothing_behind(rclone_server):
    # rclone, not the scripted upstream: its server threads and sockets are not in this process.
    bucket = _rclone_bucket(rclone_server)
    threads, fds = threading.active_count(), _open_fds()
    proxy = FaultProxy(rclone_server.endpoint_url).start()
    proxy.set_latency(60)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(b"HEAD /%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % bucket.encode())
    _wait_in_flight(proxy, 1)
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 2
    assert sock.recv(100) == b""  # never answered
    sock.close()
    assert threading.active_count() == threads and _open_fds() == fds


def test_throttle_rejects_requests_above_the_limit_with_slow_down(scripted):
    with FaultProxy(scripted) as proxy:
        proxy.set_latency(0.5)  # keeps the first four in flight while the others arrive
        proxy.set_throttle(4)
        _, answers = _timed_gets(proxy.port, 10)
        assert sorted(a[0] for a in answers) == [200] * 4 + [503] * 6
        assert (proxy.requests_forwarded, proxy.requests_rejected, proxy.peak_in_flight) == (4, 6, 4)
        assert proxy.count(fault="throttle", status=503) == 6 and proxy.faults_injected == {"throttle": 6}

        status, body, headers = next(a for a in answers if a[0] == 503)
        request_id = headers["x-amz-request-id"]
        assert b"<Code>SlowDown</Code>" in body and b"<RequestId>%s</RequestId>" % request_id.encode() in body
        assert len({a[2]["x-amz-request-id"] for a in answers if a[0] == 503}) == 6  # one id per answer

        _wait_in_flight(proxy, 0)
        proxy.set_latency(0)
        _, answers = _timed_gets(proxy.port, 4)  # at the limit, not above it: all forwarded
        assert [a[0] for a in answers] == [200] * 4 and proxy.requests_rejected == 6

        proxy.reset_stats()
        proxy.clear_faults()  # ends throttling
        assert proxy.max_in_flight is None
        _, answers = _timed_gets(proxy.port, 8)
        assert [a[0] for a in answers] == [200] * 8
        assert (proxy.requests_forwarded, proxy.requests_rejected) == (8, 0)


def test_throttled_client_sees_slow_down_and_gets_through_once_the_store_is_free(proxy, client, bucket, obj):
    key, data = obj
    proxy.set_throttle(1)
    proxy.stall_response(30, after_bytes=None, kind="GetObject")
    holder = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    holder.sendall(b"GET /%s/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (bucket.encode(), key.encode()))
    _wait_in_flight(proxy, 1)  # the stalled request holds the only slot
    with pytest.raises(ClientError) as info:
        client.get_object(Bucket=bucket, Key=key)
    assert (_status(info.value), info.value.response["Error"]["Code"]) == (503, "SlowDown")
    assert info.value.response["ResponseMetadata"]["RequestId"]
    holder.close()  # ends the stall: the slot is free again
    _wait_in_flight(proxy, 0)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert [(e.fault, e.status) for e in proxy.log] == [("stall", None), ("throttle", 503), (None, 200)]
    assert (proxy.requests_forwarded, proxy.requests_rejected) == (2, 1)


# --------------------------------------------------------------------------- no leaks


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_stop_closes_every_socket_and_joins_every_thread(rclone_server):
    bucket = _rclone_bucket(rclone_server)
    _client(rclone_server.endpoint_url).put_object(Bucket=bucket, Key="k", Body=os.urandom(SIZE))
    threads, fds = threading.active_count(), _open_fds()
    proxy = FaultProxy(rclone_server.endpoint_url).start()
    port = proxy.port
    # An idle kept-alive connection, a stalled download and an upload stopped half-way.
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    idle.request("HEAD", "/%s/k" % bucket)
    idle.getresponse().read()
    proxy.stall_response(60, after_bytes=1000, method="GET")
    stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
    stalled.sendall(b"GET /%s/k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % bucket.encode())
    uploading = socket.create_connection(("127.0.0.1", port), timeout=5)
    uploading.sendall(b"PUT /%s/u HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n" % bucket.encode()
                      + bytes(1000))
    deadline = time.monotonic() + 5
    while proxy.open_connections < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.open_connections == 3 and threading.active_count() == threads + 4
    time.sleep(0.2)  # let the stall and the upload reach their blocking calls

    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 2
    assert threading.active_count() == threads
    assert proxy.open_connections == 0
    for sock in (idle, stalled, uploading):
        sock.close()
    assert _open_fds() == fds
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
