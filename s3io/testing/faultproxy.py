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
soak runs. Every request is counted per S3 operation kind and logged with the
status the client received and the fault injected, so a test can assert that
a retry happened.

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
"""
from __future__ import annotations

import collections
import email.utils
import http
import logging
import random
import select
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape as _xml_escape

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

log = logging.getLogger(__name__)

_RECV_SIZE = 256 * 1024  # per-connection relay buffer: bodies stream through it, never whole
_MAX_HEAD = 64 * 1024  # longest request/response head accepted
_LISTEN_BACKLOG = 128

# Fault kinds that set_random_faults() can draw (names also used in the log).
RANDOM_FAULT_KINDS = ("error_500", "error_503", "error_429", "drop", "truncate", "stall", "reset_upload")

# S3 error codes and messages for injected error responses.
_S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
    # S3 itself answers 503 SlowDown; 429 is what many S3-compatible stores send.
    # botocore classifies this code as throttling.
    429: ("TooManyRequestsException", "Too many requests, please slow down."),
    502: ("BadGateway", "The upstream server did not answer."),
    504: ("GatewayTimeout", "The upstream server timed out."),
}

Matcher = Union[str, Iterable[str], None]


# --------------------------------------------------------------------------- requests


class Request:
    """What a fault's ``when`` predicate sees of one client request.

    Attributes
    ----------
    method : str
        ``GET``, ``PUT``, ...
    target : str
        The request target exactly as sent (``/bucket/key?partNumber=1&uploadId=x``).
    path : str
        Percent-decoded path, without the query.
    query : dict
        Query parameters (a key without ``=`` maps to ``""``).
    headers : dict
        Header names lower-cased; repeated headers joined with ``", "``.
    bucket, key : str
        From a path-style path (``key`` is ``""`` for bucket requests).
    kind : str
        The S3 operation: ``GetObject``, ``HeadObject``, ``PutObject``,
        ``UploadPart``, ``UploadPartCopy``, ``CopyObject``,
        ``CreateMultipartUpload``, ``CompleteMultipartUpload``,
        ``AbortMultipartUpload``, ``ListObjectsV2``, ``ListObjects``,
        ``ListMultipartUploads``, ``ListParts``, ``DeleteObject``,
        ``DeleteObjects``, ``HeadBucket``, ``CreateBucket``, ``DeleteBucket``,
        ``ListBuckets``, or ``Other``.
    body_length : int or None
        Request body length from ``Content-Length`` (0 without a body), None
        for a chunked body.
    """

    __slots__ = ("method", "target", "path", "query", "headers", "bucket", "key", "kind", "body_length")

    def __init__(self, method: str, target: str, headers: Dict[str, str], body_length: Optional[int]) -> None:
        self.method = method
        self.target = target
        raw_path, _, raw_query = target.partition("?")
        if raw_path.startswith(("http://", "https://")):  # absolute-form target
            raw_path = urlsplit(raw_path).path or "/"
        self.path = unquote(raw_path)
        self.query = dict(parse_qsl(raw_query, keep_blank_values=True))
        self.headers = headers
        self.body_length = body_length
        self.bucket, _, self.key = self.path.lstrip("/").partition("/")
        self.kind = _classify(self)

    @property
    def range(self) -> Optional[str]:
        """The ``Range`` header, or None."""
        return self.headers.get("range")

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """A request header by case-insensitive name."""
        return self.headers.get(name.lower(), default)

    def __repr__(self) -> str:
        return "<Request %s %s (%s)>" % (self.method, self.target, self.kind)


def _classify(req: Request) -> str:
    """The S3 operation a path-style request is (``Other`` if unknown)."""
    m, q, bucket, key = req.method, req.query, req.bucket, req.key
    copy = "x-amz-copy-source" in req.headers
    if not bucket:
        return "ListBuckets" if m == "GET" else "Other"
    if key:
        if m == "GET":
            if "uploadId" in q:
                return "ListParts"
            return "Other" if _subresource(q) else "GetObject"
        if m == "HEAD":
            return "HeadObject"
        if m == "PUT":
            if "partNumber" in q and "uploadId" in q:
                return "UploadPartCopy" if copy else "UploadPart"
            if _subresource(q):
                return "Other"
            return "CopyObject" if copy else "PutObject"
        if m == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
            return "Other"
        if m == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        return "Other"
    if m == "GET":
        if "uploads" in q:
            return "ListMultipartUploads"
        if q.get("list-type") == "2":
            return "ListObjectsV2"
        return "Other" if _subresource(q) else "ListObjects"
    if m == "HEAD":
        return "HeadBucket"
    if m == "PUT":
        return "Other" if _subresource(q) else "CreateBucket"
    if m == "POST" and "delete" in q:
        return "DeleteObjects"
    if m == "DELETE":
        return "Other" if _subresource(q) else "DeleteBucket"
    return "Other"


# Query parameters that turn a request on a bucket or key into another operation.
_SUBRESOURCES = frozenset(
    """accelerate acl analytics attributes cors delete encryption intelligent-tiering inventory legal-hold
    lifecycle location logging metrics notification object-lock ownershipControls policy policyStatus
    publicAccessBlock replication requestPayment restore retention select tagging torrent uploads
    versioning versions website""".split()
)


def _subresource(query: Dict[str, str]) -> bool:
    return not _SUBRESOURCES.isdisjoint(query)


def is_get_object(req: Request) -> bool:
    """True for a GetObject (ranged or not)."""
    return req.kind == "GetObject"


def is_ranged_get(req: Request) -> bool:
    """True for a GetObject with a ``Range`` header."""
    return req.kind == "GetObject" and req.range is not None


def is_upload_part(req: Request) -> bool:
    """True for an UploadPart (PUT with ``partNumber`` and ``uploadId``, not a copy)."""
    return req.kind == "UploadPart"


def is_copy_object(req: Request) -> bool:
    """True for a CopyObject or UploadPartCopy (PUT with ``x-amz-copy-source``)."""
    return req.kind in ("CopyObject", "UploadPartCopy")


def is_put_object(req: Request) -> bool:
    """True for a single-request PutObject."""
    return req.kind == "PutObject"


# --------------------------------------------------------------------------- faults and log


class Fault:
    """An armed fault: applies to the next ``times`` matching requests.

    Returned by the :class:`FaultProxy` fault methods. Thread-safe to read.

    Attributes
    ----------
    name : str
        ``error_503``, ``drop``, ``truncate``, ``stall``, ``reset_upload``, ...
        (the name written in :class:`LogEntry` ``fault``).
    times : int or None
        How many requests it applies to (None: every matching request until
        :meth:`FaultProxy.clear_faults`).
    fired : int
        How many requests it has been applied to so far.
    """

    def __init__(self, name: str, action: str, params: dict, times: Optional[int], method: Matcher, kind: Matcher,
                 when: Optional[Callable[[Request], bool]]) -> None:
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError("times must be a positive int or None, not %r" % (times,))
        self.name = name
        self.action = action
        self.params = params
        self.times = times
        self.fired = 0
        self._methods = _as_set(method, upper=True)
        self._kinds = _as_set(kind)
        self._when = when

    @property
    def remaining(self) -> Optional[int]:
        """Requests it will still apply to (None: unlimited)."""
        return None if self.times is None else self.times - self.fired

    @property
    def done(self) -> bool:
        """True once it has been applied ``times`` times."""
        return self.times is not None and self.fired >= self.times

    def matches(self, req: Request) -> bool:
        """True if ``req`` matches the method, kind and predicate (ignores ``times``)."""
        if self._methods is not None and req.method not in self._methods:
            return False
        if self._kinds is not None and req.kind not in self._kinds:
            return False
        if self.action == "reset_upload" and req.body_length == 0:
            return False  # nothing to reset during
        return self._when is None or bool(self._when(req))

    def __repr__(self) -> str:
        return "<Fault %s %s fired=%d/%s>" % (self.name, self.params, self.fired, self.times)


def _as_set(value: Matcher, upper: bool = False) -> Optional[frozenset]:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    return frozenset(v.upper() if upper else v for v in value)


@dataclass
class LogEntry:
    """One request that went through the proxy.

    Logged when the request head arrives and updated as it is served, each
    field before the client can see its effect: once a client has its
    answer, the entry is up to date.

    ``status`` is the status line sent to the client (None if the connection
    was closed or reset before a response head); ``fault`` the injected
    fault's name (None if forwarded untouched); ``request_bytes`` /
    ``response_bytes`` the body bytes forwarded each way; ``duration`` None
    while the request is in flight.
    """

    method: str
    path: str
    query: str
    kind: str
    status: Optional[int] = None
    fault: Optional[str] = None
    request_bytes: int = 0
    response_bytes: int = 0
    headers: Dict[str, str] = field(default_factory=dict, repr=False)
    started: float = field(default=0.0, repr=False)
    duration: Optional[float] = field(default=None, repr=False)

    def finish(self) -> None:
        if self.duration is None:
            self.duration = time.monotonic() - self.started


class _Injection:
    """One fault applied to one request (an armed :class:`Fault` or a random draw)."""

    __slots__ = ("name", "action", "params", "fraction")

    def __init__(self, name: str, action: str, params: dict, fraction: Optional[float] = None) -> None:
        self.name = name
        self.action = action
        self.params = params
        self.fraction = fraction  # random faults: where to cut, as a fraction of the body

    def cut_point(self, body_length: Optional[int]) -> Optional[int]:
        """Body bytes to send before the fault bites; None: before the response head.

        A cut past the body is pulled in before its last byte; a response
        without a body is cut before its head; an unknown length (chunked,
        close-delimited) is cut after ``after_bytes`` wire bytes.
        """
        if self.action == "truncate":
            if body_length == 0:
                return None
            if body_length is None:
                return 0
            if self.fraction is None:
                missing = self.params["missing_bytes"]
            else:
                missing = 1 + int(self.fraction * (body_length - 1))
            return body_length - min(max(missing, 1), body_length)
        after = self.params.get("after_bytes")
        if self.fraction is not None:
            if body_length == 0:
                return None
            return 0 if body_length is None else int(self.fraction * body_length)
        if after is None or body_length == 0:
            return None
        return after if body_length is None else min(after, body_length - 1)


# --------------------------------------------------------------------------- socket plumbing


class _EndOfStream(Exception):
    """The peer closed before the message was complete."""

    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side


class _BadMessage(Exception):
    """A head or chunk line that is not HTTP/1.1."""


class _Reader:
    """Buffered reads from one socket: heads and lines, then body pieces.

    Body pieces are memoryviews of a reused scratch buffer (or of the head's
    leftover bytes): the caller must send each one before asking for the next.
    """

    def __init__(self, sock: socket.socket, side: str) -> None:
        self.sock = sock
        self.side = side
        self._buf = b""  # bytes received but not consumed yet
        self._scratch: Optional[memoryview] = None  # allocated for the first body, kept for the connection

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _recv_more(self, limit: int) -> bool:
        if len(self._buf) > limit:
            raise _BadMessage("%s head longer than %d bytes" % (self.side, limit))
        data = self.sock.recv(65536)
        if not data:
            return False
        self._buf += data
        return True

    def read_head(self) -> Optional[bytes]:
        """The next head up to and including the blank line; None on a clean EOF."""
        while True:
            # Ignore empty lines before a request line (RFC 9112 section 2.2).
            stripped = self._buf.lstrip(b"\r\n")
            if len(stripped) != len(self._buf):
                self._buf = stripped
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                head, self._buf = self._buf[: end + 4], self._buf[end + 4 :]
                return head
            if not self._recv_more(_MAX_HEAD):
                if self._buf:
                    raise _EndOfStream(self.side)
                return None

    def read_line(self) -> bytes:
        """One CRLF-terminated line (chunk size or trailer), terminator included."""
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
                return line
            if not self._recv_more(_MAX_HEAD):
                raise _EndOfStream(self.side)

    def pieces(self, n: Optional[int]) -> Iterator[memoryview]:
        """Yield exactly ``n`` bytes (``None``: until EOF) as memoryviews."""
        remaining = n
        if self._buf:
            take = len(self._buf) if remaining is None else min(remaining, len(self._buf))
            if take:
                piece, self._buf = self._buf[:take], self._buf[take:]
                if remaining is not None:
                    remaining -= take
                yield memoryview(piece)
        if self._scratch is None:
            self._scratch = memoryview(bytearray(_RECV_SIZE))
        scratch = self._scratch
        while remaining is None or remaining > 0:
            want = len(scratch) if remaining is None else min(remaining, len(scratch))
            got = self.sock.recv_into(scratch, want)
            if got == 0:
                if remaining is None:
                    return
                raise _EndOfStream(self.side)
            if remaining is not None:
                remaining -= got
            yield scratch[:got]

    def body_pieces(self, framing: Tuple[str, Optional[int]]) -> Iterator[memoryview]:
        """Yield a whole body on the wire, framing included, as memoryviews."""
        how, length = framing
        if how == "length":
            yield from self.pieces(length)
        elif how == "close":
            yield from self.pieces(None)
        elif how == "chunked":
            while True:
                line = self.read_line()
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadMessage("bad chunk size line (%d bytes)" % len(line)) from None
                yield memoryview(line)
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = self.read_line()
                        yield memoryview(trailer)
                        if trailer == b"\r\n":
                            return
                yield from self.pieces(size + 2)  # chunk data and its CRLF


class _Head:
    """A parsed request or response head; ``raw`` is what is forwarded."""

    __slots__ = ("raw", "start", "headers")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        lines = raw[:-4].decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        if len(self.start) < 2:
            raise _BadMessage("bad start line (%d bytes)" % len(lines[0]))
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadMessage("bad header line (%d bytes)" % len(line))
            name = name.strip().lower()
            value = value.strip()
            headers[name] = value if name not in headers else headers[name] + ", " + value
        self.headers = headers

    def body_framing(self) -> Tuple[str, Optional[int]]:
        """``("chunked", None)``, ``("length", n)`` or, absent both, ``("close", None)``."""
        te = self.headers.get("transfer-encoding")
        if te is not None and te.split(",")[-1].strip().lower() == "chunked":
            return ("chunked", None)
        cl = self.headers.get("content-length")
        if cl is not None:
            try:
                n = int(cl.split(",")[0])
            except ValueError:
                raise _BadMessage("bad Content-Length %r" % cl) from None
            if n < 0:
                raise _BadMessage("bad Content-Length %r" % cl)
            return ("length", n)
        return ("close", None)

    def keep_alive(self, version: str) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if "close" in tokens:
            return False
        return version == "HTTP/1.1" or "keep-alive" in tokens


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def _shutdown(sock: Optional[socket.socket]) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock: Optional[socket.socket], reset: bool = False) -> None:
    if sock is None:
        return
    if reset:
        try:  # linger 0: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    try:
        sock.close()
    except OSError:
        pass


def _error_response(status: int, code: str, message: str, resource: str, head_only: bool, close: bool) -> bytes:
    """An S3-style error response (XML body, request id), as bytes."""
    request_id = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
        "<Resource>%s</Resource><RequestId>%s</RequestId></Error>"
        % (_xml_escape(code), _xml_escape(message), _xml_escape(resource), request_id)
    ).encode("utf-8")
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected Fault"
    lines = [
        "HTTP/1.1 %d %s" % (status, reason),
        "Content-Type: application/xml",
        "Content-Length: %d" % (0 if head_only else len(body)),
        "x-amz-request-id: %s" % request_id,
        "x-amz-id-2: s3io-faultproxy",
        "Date: %s" % email.utils.formatdate(usegmt=True),
        "Server: s3io-faultproxy",
    ]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


# --------------------------------------------------------------------------- one client connection


class _Connection:
    """One client connection and its upstream connection, served by one thread."""

    def __init__(self, proxy: "FaultProxy", sock: socket.socket, number: int) -> None:
        self.proxy = proxy
        self.client = sock
        self.client_reader = _Reader(sock, "client")
        self.upstream: Optional[socket.socket] = None
        self.upstream_reader: Optional[_Reader] = None
        self.idle = True  # waiting for a request head with nothing buffered
        self.thread = threading.Thread(target=self._run, name="faultproxy-%d-conn-%d" % (proxy.port, number),
                                       daemon=True)

    # -- lifetime

    def abort(self) -> None:
        """Wake the thread from any blocking call (it closes its own sockets)."""
        _shutdown(self.client)
        _shutdown(self.upstream)

    def _run(self) -> None:
        reset = False
        try:
            self._serve()
        except _Reset:
            reset = True
        except (OSError, _EndOfStream, _BadMessage) as exc:
            log.debug("faultproxy connection ended: %r", exc)
        except Exception:  # never let a proxy bug kill the test process quietly
            log.exception("faultproxy connection failed")
        finally:
            _close(self.client, reset=reset)
            self._close_upstream()
            self.proxy._forget(self)

    def _serve(self) -> None:
        proxy = self.proxy
        while not proxy._stopping.is_set():
            self.idle = self.client_reader.buffered == 0
            if self.idle and proxy._closing_idle() and not _readable(self.client):
                log.debug("faultproxy: %s closes while refusing", self.thread.name)
                return  # refusing connections: make the client open a new one
            raw = self.client_reader.read_head()
            self.idle = False
            if raw is None:
                log.debug("faultproxy: %s: client closed", self.thread.name)
                return
            if not self._exchange(_Head(raw)):
                log.debug("faultproxy: %s: closing after the exchange", self.thread.name)
                return

    # -- upstream

    def _open_upstream(self) -> None:
        self._close_upstream()
        sock = socket.create_connection(self.proxy._upstream_addr, timeout=self.proxy.upstream_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = sock
        self.upstream_reader = _Reader(sock, "upstream")
        if self.proxy._stopping.is_set():  # stop() may have missed this socket
            _shutdown(sock)

    def _close_upstream(self) -> None:
        sock, self.upstream, self.upstream_reader = self.upstream, None, None
        _close(sock)

    def _upstream_is_stale(self) -> bool:
        """True if the kept-alive upstream connection was closed by the server."""
        try:
            readable, _, _ = select.select([self.upstream], [], [], 0)
            return bool(readable) and self.upstream.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_head_upstream(self, raw: bytes) -> bool:
        """Send a request head upstream; returns whether the connection was reused."""
        if self.upstream is not None and not self._upstream_is_stale():
            try:
                self.upstream.sendall(raw)
                return True
            except OSError:
                pass
        self._open_upstream()
        self.upstream.sendall(raw)
        return False

    # -- one request/response exchange

    def _exchange(self, head: _Head) -> bool:
        """Serve one request; returns whether to keep the client connection."""
        proxy = self.proxy
        method, target = head.start[0].upper(), head.start[1]
        version = head.start[2] if len(head.start) > 2 else "HTTP/1.0"
        framing = head.body_framing()
        if framing[0] == "close":
            framing = ("length", 0)  # a request without length has no body
        req = Request(method, target, head.headers, framing[1])
        client_keep = head.keep_alive(version)
        expect_continue = head.headers.get("expect", "").lower() == "100-continue" and framing != ("length", 0)
        proxy._count(req)
        injection = proxy._pick(req)
        record = LogEntry(method=req.method, path=req.path, query=req.target.partition("?")[2], kind=req.kind,
                          fault=injection.name if injection is not None else None, headers=req.headers,
                          started=time.monotonic())
        proxy._append_log(record)
        try:
            return self._forward(head, req, injection, record, framing, client_keep, expect_continue)
        finally:
            record.finish()  # also when a peer went away mid-exchange

    def _forward(self, head: _Head, req: Request, injection: Optional[_Injection], record: LogEntry,
                 framing: Tuple[str, Optional[int]], client_keep: bool, expect_continue: bool) -> bool:
        """The body of :meth:`_exchange`: forward or answer one request."""
        if injection is not None and injection.action == "error":
            return self._answer_error(req, injection, record, framing, client_keep, expect_continue)

        try:
            reused = self._send_head_upstream(head.raw)
        except OSError as exc:
            log.debug("faultproxy: upstream unreachable: %r", exc)
            return self._answer_bad_gateway(req, record)

        # Request body.
        if framing != ("length", 0):
            if expect_continue:
                early = self._await_continue()
                if early is not None:  # upstream answered before the body: relay, then close
                    self._relay_response(req, early, None, record)
                    return False
            limit = None
            if injection is not None and injection.action == "reset_upload":
                limit = injection.cut_point(req.body_length)
                limit = 0 if limit is None else limit
            try:
                cut = _pump(self.client_reader, self.upstream, framing, limit, record, "request_bytes")
            except _SendFailed:
                # Upstream stopped reading (it may have answered early): relay what it said.
                early = self._read_response_head(reused=False, retry_raw=None)
                if early is None:
                    return False
                self._relay_response(req, early, None, record)
                return False
            if cut:
                raise _Reset()
            if injection is not None and injection.action == "reset_upload":
                record.fault = None  # a chunked body ended before the cut point

        resp = self._read_response_head(reused=reused and framing == ("length", 0), retry_raw=head.raw)
        if resp is None:
            return self._answer_bad_gateway(req, record)
        keep = self._relay_response(req, resp, injection, record)
        return keep and client_keep

    def _read_response_head(self, reused: bool, retry_raw: Optional[bytes]) -> Optional[_Head]:
        """The final response head from upstream, relaying any 1xx heads to the client."""
        attempt_retry = reused and retry_raw is not None
        while True:
            try:
                raw = self.upstream_reader.read_head()
            except (OSError, _EndOfStream):
                raw = None
            if raw is None:
                if attempt_retry:  # the kept-alive upstream connection died under us: once more
                    attempt_retry = False
                    try:
                        self._open_upstream()
                        self.upstream.sendall(retry_raw)
                    except OSError:
                        return None
                    continue
                return None
            resp = _Head(raw)
            status = _status_of(resp)
            if 100 <= status < 200 and status != 101:
                self.client.sendall(raw)  # e.g. a late 100 Continue; clients skip it
                continue
            return resp

    def _await_continue(self) -> Optional[_Head]:
        """With ``Expect: 100-continue``: wait for the client's body or upstream's answer.

        Relays a ``100 Continue`` and returns None when the body should be
        streamed; returns the head of a final response sent before the body.
        """
        while self.client_reader.buffered == 0:
            readable, _, _ = select.select([self.client, self.upstream], [], [], self.proxy.upstream_timeout)
            if not readable or self.client in readable:
                return None  # the client sends the body anyway (or went away: _pump sees it)
            raw = self.upstream_reader.read_head()
            if raw is None:
                raise _EndOfStream("upstream")
            resp = _Head(raw)
            status = _status_of(resp)
            if status == 100:
                self.client.sendall(raw)
                return None
            if 100 < status < 200:
                self.client.sendall(raw)
                continue
            return resp
        return None

    def _relay_response(self, req: Request, resp: _Head, injection: Optional[_Injection], record: LogEntry) -> bool:
        """Forward a response (applying a response-side fault); returns keep-alive."""
        status = _status_of(resp)
        version = resp.start[0]
        if req.method == "HEAD" or status in (204, 304):
            framing: Tuple[str, Optional[int]] = ("length", 0)
        else:
            framing = resp.body_framing()
        body_length = framing[1] if framing[0] == "length" else None
        keep = resp.keep_alive(version) and framing[0] != "close"

        action = injection.action if injection is not None else None
        if action in ("drop", "truncate", "stall"):
            cut = injection.cut_point(body_length)
            if cut is not None:
                record.status = status
                self.client.sendall(resp.raw)
                try:
                    _pump(self.upstream_reader, self.client, framing, cut, record, "response_bytes")
                except _SendFailed:
                    pass
            if action == "stall":
                self._stall(injection.params["seconds"])
            record.finish()
            if action == "drop" and injection.params.get("abort"):
                raise _Reset()
            return False

        record.status = status
        self.client.sendall(resp.raw)
        try:
            _pump(self.upstream_reader, self.client, framing, None, record, "response_bytes")
        except _SendFailed:
            record.finish()
            return False
        record.finish()
        if not keep:
            self._close_upstream()
        return keep

    def _stall(self, seconds: float) -> None:
        """Hold the connection until ``seconds`` pass, the client gives up, or stop()."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proxy._stopping.is_set():
                return
            try:
                readable, _, _ = select.select([self.client], [], [], left)
                if readable and self.client.recv(1, socket.MSG_PEEK) == b"":
                    return  # the client closed (read timeout): no one is waiting any more
                if readable:
                    time.sleep(min(left, 0.05))  # the client sent something; keep holding
            except OSError:
                return

    def _answer_error(self, req: Request, injection: _Injection, record: LogEntry,
                      framing: Tuple[str, Optional[int]], client_keep: bool, expect_continue: bool) -> bool:
        """Answer an injected error status without forwarding the request."""
        p = injection.params
        record.status = p["status"]
        if expect_continue:
            # Final answer instead of 100 Continue: the client does not send the
            # body; close afterwards since its framing is now ambiguous.
            self.client.sendall(_error_response(p["status"], p["code"], p["message"], req.path,
                                                req.method == "HEAD", close=True))
            record.finish()
            self._lingering_close()
            return False
        _pump(self.client_reader, None, framing, None, record, "request_bytes")
        self.client.sendall(_error_response(p["status"], p["code"], p["message"], req.path,
                                            req.method == "HEAD", close=not client_keep))
        record.finish()
        return client_keep

    def _answer_bad_gateway(self, req: Request, record: LogEntry) -> bool:
        """Answer 502 when the upstream server cannot be reached or hangs up without an answer."""
        code, message = _S3_ERRORS[502]
        record.status = 502
        try:
            self.client.sendall(_error_response(502, code, message, req.path, req.method == "HEAD", close=True))
        except OSError:
            pass
        record.finish()
        self._lingering_close()  # a request body may be on its way: let the client read the 502 first
        return False

    def _lingering_close(self) -> None:
        """Half-close, then drain what the client still sends (briefly), so it reads our answer, not a RST."""
        try:
            self.client.shutdown(socket.SHUT_WR)
            self.client.settimeout(1.0)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not self.proxy._stopping.is_set():
                if not self.client.recv(65536):
                    break
        except OSError:
            pass


class _Reset(Exception):
    """Close the client connection with a RST."""


class _SendFailed(Exception):
    """The destination of a body stopped accepting bytes."""


def _status_of(head: _Head) -> int:
    try:
        return int(head.start[1])
    except ValueError:
        raise _BadMessage("bad status line") from None


def _pump(reader: _Reader, dest: Optional[socket.socket], framing: Tuple[str, Optional[int]],
          limit: Optional[int], record: LogEntry, counter: str) -> bool:
    """Forward a body from ``reader`` to ``dest`` (None: discard); returns whether it was cut.

    Stops after ``limit`` bytes if more would follow. Adds each piece to
    ``record.<counter>`` before sending it. Raises :class:`_EndOfStream` if
    the source ends early and :class:`_SendFailed` if the destination fails.
    """
    sent = 0
    for piece in reader.body_pieces(framing):
        cut = limit is not None and sent + len(piece) > limit
        if cut:
            piece = piece[: limit - sent]
        sent += len(piece)
        setattr(record, counter, sent)
        if dest is not None and len(piece):
            try:
                dest.sendall(piece)
            except OSError as exc:
                raise _SendFailed() from exc
        if cut:
            return True
    return False


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """A fault-injecting HTTP/1.1 reverse proxy in front of one S3 endpoint.

    Parameters
    ----------
    upstream_url : str
        ``http://host:port`` of the real server.
    host : str
        Address to listen on (default ``127.0.0.1``); the port is a free one.
    upstream_timeout : float
        Seconds to wait on the upstream server (connect, and each read).
    idle_timeout : float
        Seconds an idle client connection is kept open.
    log_limit : int or None
        Most recent requests kept in :attr:`log` (None: all). Keeps memory
        flat in long soak runs; :attr:`counts` and :attr:`faults_injected`
        always cover every request.

    Attributes
    ----------
    endpoint_url : str
        ``http://127.0.0.1:PORT``: point the client here.
    connections_accepted : int
        Client connections served (refused ones not included).
    connections_refused : int
        Client connections refused by :meth:`refuse_connections`.

    Examples
    --------
    >>> with FaultProxy(server.endpoint_url) as proxy:          # doctest: +SKIP
    ...     proxy.drop_connection(after_bytes=1000, kind="GetObject")
    ...     proxy.slow_down(times=2, method="PUT")
    ...     proxy.reset_upload(after_bytes=65536, when=is_upload_part)
    """

    def __init__(self, upstream_url: str, *, host: str = "127.0.0.1", upstream_timeout: float = 60.0,
                 idle_timeout: float = 300.0, log_limit: Optional[int] = 10_000) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError("upstream_url must be http://host:port, not %r" % (upstream_url,))
        self.upstream_url = upstream_url
        self._upstream_addr = (parts.hostname, parts.port)
        self.host = host
        self.port: Optional[int] = None
        self.upstream_timeout = upstream_timeout
        self.idle_timeout = idle_timeout

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # refusal state changes, stop
        self._stopping = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._listening = False
        self._accept_thread: Optional[threading.Thread] = None
        self._conns: set = set()
        self._conn_number = 0

        self._faults: List[Fault] = []
        self._random_rate = 0.0
        self._random_kinds: Tuple[str, ...] = ()
        self._random_rng = random.Random(0)
        self._random_params: dict = {}
        self._random_match: Optional[Fault] = None
        self._refuse_until = 0.0
        self._refuse_how = "unlisten"
        self._refuse_close_idle = False

        self._counts: collections.Counter = collections.Counter()
        self._faults_injected: collections.Counter = collections.Counter()
        self._log: Deque[LogEntry] = collections.deque(maxlen=log_limit)
        self.connections_accepted = 0
        self.connections_refused = 0

    # ------------------------------------------------------------------ lifetime

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running proxy."""
        if self.port is None:
            raise RuntimeError("FaultProxy is not running")
        return "http://%s:%d" % (self.host, self.port)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "FaultProxy":
        """Listen on a free port and start accepting connections."""
        if self._listener is not None:
            return self
        self._stopping.clear()
        self._listener = self._bind()
        self.port = self._listener.getsockname()[1]
        self._listener.listen(_LISTEN_BACKLOG)
        self._listening = True
        self._accept_thread = threading.Thread(target=self._accept_loop, name="faultproxy-%d-accept" % self.port,
                                               daemon=True)
        self._accept_thread.start()
        return self

    def _bind(self) -> socket.socket:
        # Bound to an explicit port (not 0) so that the port stays ours while
        # refuse_connections() stops listening: Linux releases an
        # auto-assigned port when a listening socket is shut down.
        last_error: Optional[OSError] = None
        for _ in range(20):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self.host, 0))
                port = probe.getsockname()[1]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, port))
                return sock
            except OSError as exc:  # taken in between: try another
                sock.close()
                last_error = exc
        raise RuntimeError("FaultProxy could not bind a port on %s: %s" % (self.host, last_error))

    def stop(self) -> None:
        """Close every socket and join every thread. Idempotent."""
        if self._listener is None:
            return
        with self._wake:
            self._stopping.set()
            self._wake.notify_all()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        if self._accept_thread is not None:
            self._accept_thread.join()
            self._accept_thread = None
        _close(self._listener)
        self._listener = None
        self._listening = False
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.abort()
        for conn in conns:
            conn.thread.join(10.0)
            if conn.thread.is_alive():  # pragma: no cover - a bug, but do not hang the tests
                log.error("faultproxy: %s did not stop", conn.thread.name)
        self.port = None

    @property
    def open_connections(self) -> int:
        """Client connections being served right now."""
        with self._lock:
            return len(self._conns)

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._stopping.is_set():
            with self._wake:
                if self._refuse_how == "unlisten" and time.monotonic() < self._refuse_until:
                    self._set_listening(False)
                    self._wake.wait(self._refuse_until - time.monotonic())
                    continue
                if not self._set_listening(True):  # pragma: no cover
                    self._wake.wait(0.1)
                    continue
            try:
                sock, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                with self._wake:  # woken by refuse_connections(); loop re-reads the state
                    if self._listening and not (self._refuse_how == "unlisten"
                                                and time.monotonic() < self._refuse_until):
                        self._wake.wait(0.01)
                continue
            self._serve_connection(sock)

    def _set_listening(self, on: bool) -> bool:
        """Start or stop listening (caller holds the lock); returns whether it is in that state.

        Shut down a listening socket exactly once per listen(): on Linux a
        shutdown() of a socket that is not listening marks it for good, and
        every connection it accepts later reads EOF at once.
        """
        if self._listener is None or self._stopping.is_set():
            return False
        if on and not self._listening:
            try:
                self._listener.listen(_LISTEN_BACKLOG)
            except OSError as exc:  # pragma: no cover
                log.error("faultproxy %d: cannot listen again: %r", self.port, exc)
                return False
            self._listening = True
            log.debug("faultproxy %d: listening again", self.port)
        elif not on and self._listening:
            self._listening = False
            try:  # connects now get "connection refused"; accept() wakes with EINVAL
                self._listener.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            log.debug("faultproxy %d: not listening", self.port)
        return True

    def _serve_connection(self, sock: socket.socket) -> None:
        with self._lock:
            refusing = time.monotonic() < self._refuse_until
            how = self._refuse_how
            if refusing or self._stopping.is_set():
                self.connections_refused += 1
            else:
                self.connections_accepted += 1
                self._conn_number += 1
                number = self._conn_number
        if refusing or self._stopping.is_set():
            log.debug("faultproxy %d: refused a connection (%s)", self.port, how)
            _close(sock, reset=(how == "reset"))
            return
        log.debug("faultproxy %d: accepted connection %d", self.port, number)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.idle_timeout)
        conn = _Connection(self, sock, number)
        with self._lock:
            self._conns.add(conn)
        conn.thread.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _closing_idle(self) -> bool:
        with self._lock:
            return self._refuse_close_idle and time.monotonic() < self._refuse_until

    # ------------------------------------------------------------------ faults

    def _arm(self, name: str, action: str, params: dict, times: Optional[int], method: Matcher, kind: Matcher,
             when: Optional[Callable[[Request], bool]]) -> Fault:
        fault = Fault(name, action, params, times, method, kind, when)
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(self, status: int = 503, code: Optional[str] = None, message: Optional[str] = None, *,
             times: Optional[int] = 1, method: Matcher = None, kind: Matcher = None,
             when: Optional[Callable[[Request], bool]] = None) -> Fault:
        """Answer the next matching requests with an S3 error, without forwarding them.

        Parameters
        ----------
        status : int
            HTTP status (500, 503, 429, ...).
        code, message : str, optional
            S3 error code and message; default by status (503: ``SlowDown``,
            500: ``InternalError``, 429: ``TooManyRequestsException``).
        times : int or None
            Number of matching requests to fail (None: all, until cleared).
        method, kind : str or iterable of str, optional
            Only requests with this HTTP method / S3 operation kind (see :class:`Request`).
        when : callable, optional
            Only requests for which ``when(request)`` is true.

        Returns
        -------
        Fault
        """
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code, not %r" % (status,))
        default_code, default_message = _S3_ERRORS.get(status, ("InjectedFault", "Injected by FaultProxy."))
        params = dict(status=status, code=code or default_code, message=message or default_message)
        return self._arm("error_%d" % status, "error", params, times, method, kind, when)

    def internal_error(self, **match) -> Fault:
        """``fail(500)``: ``InternalError`` for the next matching requests (see :meth:`fail`)."""
        return self.fail(500, **match)

    def slow_down(self, **match) -> Fault:
        """``fail(503)``: ``SlowDown`` for the next matching requests (see :meth:`fail`)."""
        return self.fail(503, **match)

    def too_many_requests(self, **match) -> Fault:
        """``fail(429)`` for the next matching requests (see :meth:`fail`)."""
        return self.fail(429, **match)

    def drop_connection(self, after_bytes: Optional[int] = 0, *, abort: bool = False, times: Optional[int] = 1,
                        method: Matcher = None, kind: Matcher = None,
                        when: Optional[Callable[[Request], bool]] = None) -> Fault:
        """Forward the request, then close the connection after ``after_bytes`` of the response body.

        Parameters
        ----------
        after_bytes : int or None
            Body bytes the client receives before the close; pulled in before
            the last byte if the body is shorter. None (or a response without
            body): close before the response head, so the client gets no
            answer although the server executed the request.
        abort : bool
            Close with a RST (connection reset) instead of a FIN.
        times, method, kind, when
            Which requests, as in :meth:`fail`.
        """
        _check_bytes("after_bytes", after_bytes, allow_none=True)
        return self._arm("drop", "drop", dict(after_bytes=after_bytes, abort=bool(abort)), times, method, kind,
                         when)

    def truncate_body(self, missing_bytes: int = 1, *, times: Optional[int] = 1, method: Matcher = None,
                      kind: Matcher = None, when: Optional[Callable[[Request], bool]] = None) -> Fault:
        """Send the response head (its Content-Length intact) and all but the last ``missing_bytes``, then close.

        ``missing_bytes`` is clamped to the body length; a response without a
        body is cut before its head.
        """
        _check_bytes("missing_bytes", missing_bytes, minimum=1)
        return self._arm("truncate", "truncate", dict(missing_bytes=missing_bytes), times, method, kind, when)

    def stall_response(self, seconds: float = 30.0, *, after_bytes: Optional[int] = 0, times: Optional[int] = 1,
                       method: Matcher = None, kind: Matcher = None,
                       when: Optional[Callable[[Request], bool]] = None) -> Fault:
        """Hold the response after ``after_bytes`` of its body, then close the connection.

        The stall ends after ``seconds``, when the client closes the
        connection (its read timeout fired), or at :meth:`stop`. ``after_bytes``
        is pulled in before the last body byte; None (or a response without
        body) holds the response head itself.
        """
        if not seconds >= 0:
            raise ValueError("seconds must be >= 0, not %r" % (seconds,))
        _check_bytes("after_bytes", after_bytes, allow_none=True)
        return self._arm("stall", "stall", dict(seconds=float(seconds), after_bytes=after_bytes), times, method,
                         kind, when)

    def reset_upload(self, after_bytes: int = 0, *, times: Optional[int] = 1, method: Matcher = None,
                     kind: Matcher = None, when: Optional[Callable[[Request], bool]] = None) -> Fault:
        """Reset the client connection (RST) after ``after_bytes`` of a request body.

        Applies only to requests with a body (``after_bytes`` is pulled in
        before its last byte); the request never completes upstream.
        """
        _check_bytes("after_bytes", after_bytes)
        return self._arm("reset_upload", "reset_upload", dict(after_bytes=after_bytes), times, method, kind, when)

    def refuse_connections(self, seconds: float, *, how: str = "unlisten", close_idle: bool = True) -> None:
        """Refuse new client connections for ``seconds`` (0 ends a refusal now).

        Parameters
        ----------
        how : {"unlisten", "close", "reset"}
            ``unlisten``: stop listening, so connects fail with "connection
            refused"; ``close``: accept and close at once; ``reset``: accept
            and reset.
        close_idle : bool
            Also close kept-alive connections while they are idle, so that a
            client's next request needs a new connection.
        """
        if how not in ("unlisten", "close", "reset"):
            raise ValueError("how must be 'unlisten', 'close' or 'reset', not %r" % (how,))
        if not seconds >= 0:
            raise ValueError("seconds must be >= 0, not %r" % (seconds,))
        with self._wake:
            self._refuse_until = time.monotonic() + seconds if seconds > 0 else 0.0
            self._refuse_how = how
            self._refuse_close_idle = bool(close_idle)
            # Switch listening here, not in the accept thread, so that the new
            # state holds when this returns.
            if how == "unlisten" and seconds > 0:
                self._set_listening(False)
            elif seconds == 0 or how != "unlisten":
                self._set_listening(True)
            self._wake.notify_all()
            idle = [c for c in self._conns if c.idle] if close_idle and seconds > 0 else []
        for conn in idle:
            _shutdown(conn.client)

    def set_random_faults(self, rate: float, kinds: Optional[Iterable[str]] = None, seed: Optional[int] = 0, *,
                          stall_seconds: float = 30.0, method: Matcher = None, kind: Matcher = None,
                          when: Optional[Callable[[Request], bool]] = None) -> None:
        """Inject a random fault into each matching request with probability ``rate``.

        Armed faults take precedence. Cut points (bytes before a drop,
        truncation or reset) are drawn uniformly over the body.

        Parameters
        ----------
        rate : float
            Probability per request, 0 (off) to 1.
        kinds : iterable of str, optional
            Drawn uniformly from these (default: all of :data:`RANDOM_FAULT_KINDS`).
            ``reset_upload`` is only drawn for requests with a body.
        seed : int or None
            Seed of the generator (None: from the OS). With concurrent
            requests the order in which requests draw depends on scheduling.
        stall_seconds : float
            Longest stall (a stall also ends when the client gives up).
        method, kind, when
            Only requests matching these, as in :meth:`fail`.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1, not %r" % (rate,))
        kinds = RANDOM_FAULT_KINDS if kinds is None else (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = set(kinds) - set(RANDOM_FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError("kinds must be a non-empty subset of %s, not %r" % (RANDOM_FAULT_KINDS, kinds))
        with self._lock:
            self._random_rate = float(rate)
            self._random_kinds = kinds
            self._random_rng = random.Random(seed)
            self._random_params = dict(seconds=float(stall_seconds))
            self._random_match = Fault("random", "random", {}, None, method, kind, when)

    def clear_faults(self) -> None:
        """Disarm every fault, random faults and any connection refusal."""
        with self._wake:
            self._faults.clear()
            self._random_rate = 0.0
            self._refuse_until = 0.0
            self._set_listening(True)
            self._wake.notify_all()

    @property
    def faults(self) -> List[Fault]:
        """Armed faults that have not run out."""
        with self._lock:
            return [f for f in self._faults if not f.done]

    def _pick(self, req: Request) -> Optional[_Injection]:
        """The fault for this request, if any (armed faults first, in arming order).

        Predicates run outside the lock: they are user code and may do I/O or
        call back into the proxy (``proxy.count(...)``).
        """
        with self._lock:
            armed = [f for f in self._faults if not f.done]
            random_match = self._random_match if self._random_rate > 0 else None
        for fault in armed:
            if fault.matches(req):
                with self._lock:
                    if fault.done:  # another connection took the last one meanwhile
                        continue
                    fault.fired += 1
                    self._faults_injected[fault.name] += 1
                    self._faults = [f for f in self._faults if not f.done]
                return _Injection(fault.name, fault.action, fault.params)
        if random_match is None or not random_match.matches(req):
            return None
        with self._lock:
            rng = self._random_rng
            if self._random_rate <= 0 or rng.random() >= self._random_rate:
                return None
            kinds = [k for k in self._random_kinds if k != "reset_upload" or req.body_length != 0]
            if not kinds:
                return None
            name = rng.choice(kinds)
            fraction = rng.random()
            abort = rng.random() < 0.5
            self._faults_injected[name] += 1
        if name.startswith("error_"):
            status = int(name[6:])
            code, message = _S3_ERRORS[status]
            return _Injection(name, "error", dict(status=status, code=code, message=message))
        if name == "stall":
            return _Injection(name, "stall", dict(self._random_params), fraction)
        return _Injection(name, name, dict(abort=abort), fraction)

    # ------------------------------------------------------------------ observation

    def _count(self, req: Request) -> None:
        with self._lock:
            self._counts[req.kind] += 1
            self._counts[req.method] += 1

    def _append_log(self, entry: LogEntry) -> None:
        with self._lock:
            self._log.append(entry)

    @property
    def counts(self) -> collections.Counter:
        """Requests seen so far, by S3 operation kind and by HTTP method (a copy)."""
        with self._lock:
            return collections.Counter(self._counts)

    @property
    def faults_injected(self) -> collections.Counter:
        """Faults injected so far, by name (a copy)."""
        with self._lock:
            return collections.Counter(self._faults_injected)

    @property
    def log(self) -> List[LogEntry]:
        """Requests in arrival order, those in flight included (a copy of the list)."""
        with self._lock:
            return list(self._log)

    def count(self, kind: Optional[str] = None, *, method: Optional[str] = None, fault: Optional[str] = None,
              status: Optional[int] = None) -> int:
        """Logged requests (in flight included) matching every given filter.

        ``fault="any"`` counts requests that got any fault; ``fault=""`` those
        forwarded untouched.
        """
        n = 0
        for e in self.log:
            if kind is not None and e.kind != kind:
                continue
            if method is not None and e.method != method.upper():
                continue
            if fault is not None:
                if fault == "any":
                    if e.fault is None:
                        continue
                elif fault == "":
                    if e.fault is not None:
                        continue
                elif e.fault != fault:
                    continue
            if status is not None and e.status != status:
                continue
            n += 1
        return n

    def reset_stats(self) -> None:
        """Forget counts, the log and the fault tallies (armed faults stay)."""
        with self._lock:
            self._counts.clear()
            self._faults_injected.clear()
            self._log.clear()
            self.connections_accepted = 0
            self.connections_refused = 0

    def __repr__(self) -> str:
        where = self.endpoint_url if self.port is not None else "stopped"
        return "<FaultProxy %s -> %s>" % (where, self.upstream_url)


def _check_bytes(name: str, value, allow_none: bool = False, minimum: int = 0) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError("%s must be an int >= %d%s, not %r"
                         % (name, minimum, " or None" if allow_none else "", value))
