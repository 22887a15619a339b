"""A CompleteMultipartUpload whose answer is lost: the retry is told NoSuchUpload, the upload did complete.

Found by the soak bench: 5% of saves failed cleanly although every file had been
written (botocore reports a 200 whose body was cut off as a 500, s3io retries,
the store no longer knows the upload).  On both servers: moto sends S3's
multipart ETag (checked exactly); the fixture's rclone sends no ETags (size and time).
"""
import hashlib
import os
import time

import pytest

from s3io import S3Client, S3ClientConfig, S3Exception
from s3io._multipart import MultipartUpload, _multipart_etag
from s3io.testing.faultproxy import FaultProxy

MiB = 1024 * 1024


def _client(endpoint):
    return S3Client(s3client_config=S3ClientConfig(endpoint_url=endpoint, part_size=5 * MiB))


@pytest.mark.parametrize("loss", ["no answer", "body dropped after the head", "body truncated"])
def test_a_lost_complete_answer_still_completes_the_write(s3_server, bucket, loss):
    data = os.urandom(2 * 5 * MiB + 7)
    key = "lost-complete"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        if loss == "no answer":
            proxy.drop_connection(after_bytes=None, kind="CompleteMultipartUpload")
        elif loss == "body dropped after the head":
            proxy.drop_connection(after_bytes=10, kind="CompleteMultipartUpload")
        else:
            proxy.truncate_body(5, kind="CompleteMultipartUpload")
        with _client(proxy.endpoint_url).put_object(bucket, key) as writer:
            writer.write(data)
        assert proxy.count("CompleteMultipartUpload") == 2  # the first went through, unanswered
    assert s3_server.boto3_client().get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_complete_of_an_upload_aborted_by_someone_else_still_fails(s3_server, bucket):
    client = _client(s3_server.endpoint_url)
    s3_server.boto3_client().put_object(Bucket=bucket, Key="k", Body=b"x" * (5 * MiB))  # an older object, same size
    # Stores without multipart ETags (rclone here) tell the older object apart by its time, to the second.
    time.sleep(1.1)
    upload = MultipartUpload.start(client.transport, bucket, "k")
    upload.upload_part(1, os.urandom(5 * MiB))
    s3_server.boto3_client().abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload.upload_id)
    # rclone answers NoSuchUpload, and the object found is not this upload's; moto answers a 500.
    with pytest.raises(S3Exception, match="NoSuchUpload|InternalError|HTTP 500"):
        upload.complete()


def test_multipart_etag_is_s3s():
    # Two parts of known MD5s; S3's rule: md5 of the concatenated binary digests, then "-" and the count.
    a, b = '"' + "0" * 32 + '"', "f" * 32
    assert _multipart_etag([a, b]) == "%s-2" % hashlib.md5(bytes(16) + b"\xff" * 16).hexdigest()
    assert _multipart_etag(['"not-an-md5"']) is None
