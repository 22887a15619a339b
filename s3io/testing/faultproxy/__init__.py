"""A fault-injecting HTTP/1.1 reverse proxy for testing S3 clients on loopback.

:class:`FaultProxy` listens on a free ``127.0.0.1`` port and forwards every
request to a real S3 server (``rclone serve s3``, moto's ``ThreadedMotoServer``,
any ``http://`` endpoint). With no fault set it is transparent: the request
head is forwarded byte for byte (so SigV4 signatures, which cover the ``Host``
header as the client sent it, stay valid), bodies stream through in both
directions without being buffered whole, ``Expect: 100-continue`` and chunked
transfer encoding pass through, and keep-alive connections are kept.

A test arms faults that apply to the next ``times`` requests matching a method,
an S3 operation kind and/or a predicate:

======================  =====================================================
``fail``                answer 500 / 503 SlowDown / 429 (S3 XML error body)
                        without forwarding the request
``drop_connection``     close the connection after N bytes of the response
                        body (or before the response head: the server did
                        execute the request)
``truncate_body``       send all but the last N bytes, keeping Content-Length
``stall_response``      hold the response (after N body bytes) until the
                        client gives up, then close
``reset_upload``        reset the connection (RST) after N bytes of the
                        request body, e.g. during an UploadPart
``refuse_connections``  refuse new connections for a while (connection
                        refused, accept-then-close, or accept-then-reset)
======================  =====================================================

plus random faults at a seeded rate (:meth:`FaultProxy.set_random_faults`) for
soak runs, and two modes that make the loopback server behave like a remote
store under load:

======================  =====================================================
``set_latency``         hold every response a fixed time before its first
                        byte (each request on its own: they overlap)
``set_throttle``        answer 503 SlowDown to requests that arrive while K
                        requests are being forwarded
======================  =====================================================

Every request is counted per S3 operation kind and logged with the status
the client received and the fault injected, so a test can assert that a retry
happened; :attr:`FaultProxy.requests_forwarded`,
:attr:`FaultProxy.requests_rejected` and :attr:`FaultProxy.peak_in_flight`
report what the throttle did.

Public names: :class:`FaultProxy`, :class:`Fault` (an armed fault),
:class:`Request` (what a ``when`` predicate sees), :class:`LogEntry`,
:data:`RANDOM_FAULT_KINDS`, and the predicates :func:`is_get_object`,
:func:`is_ranged_get`, :func:`is_upload_part`, :func:`is_copy_object`,
:func:`is_put_object`. The submodules are private.

Examples
--------
>>> with RcloneServer(etag=True) as server, FaultProxy(server.endpoint_url) as proxy:  # doctest: +SKIP
...     client = boto3.client("s3", endpoint_url=proxy.endpoint_url, ...)
...     proxy.slow_down(times=2, kind="GetObject")
...     client.get_object(Bucket=b, Key=k)["Body"].read()    # two 503s, retried
...     assert proxy.count("GetObject") == 3
...     assert proxy.count(fault="error_503") == 2

Notes
-----
One thread per client connection, each with its own upstream connection;
:meth:`FaultProxy.stop` closes every socket and joins every thread.
Operation kinds assume path-style addressing (``/bucket/key``), the only
style a loopback endpoint supports. Body byte counts of chunked or
close-delimited bodies are counted on the wire (chunk framing included).
Log records go to the ``s3io.testing.faultproxy`` logger and its children.
"""
from s3io.testing.faultproxy._faults import Fault
from s3io.testing.faultproxy._proxy import FaultProxy
from s3io.testing.faultproxy._random import RANDOM_FAULT_KINDS
from s3io.testing.faultproxy._request import (
    Request,
    is_copy_object,
    is_get_object,
    is_put_object,
    is_ranged_get,
    is_upload_part,
)
from s3io.testing.faultproxy._stats import LogEntry

__all__ = [
    "FaultProxy",
    "Fault",
    "Request",
    "LogEntry",
    "RANDOM_FAULT_KINDS",
    "is_ranged_get",
    "is_get_object",
    "is_upload_part",
    "is_copy_object",
    "is_put_object",
]
