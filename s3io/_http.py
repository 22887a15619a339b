"""A small HTTP/1.1 client for s3io's hot requests: keep-alive pools, bodies read into caller memory.

``http.client`` parses every response head with the ``email`` package, and
urllib3 adds its own layers on top: together about half of the client CPU of a
small GET.  S3 answers are plain HTTP/1.1 with a short head, so this module
sends each request head in one write and parses the answer's head with
``bytes`` operations; a body is read from the socket straight into the
caller's memory (``recv_into``), never through an intermediate buffer beyond
what arrived with the head.

Only direct connections live here (TLS through :mod:`ssl` with the CA bundle
botocore would use); requests through an HTTP proxy take botocore's urllib3
session instead (see ``_transport``).
"""
from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections import deque
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

__all__ = ["ConnectionPool", "Headers", "Origin", "Response", "ResponseError"]

_MAX_HEAD = 64 * 1024  # S3 response heads are well under 2 KiB
_RECV_CHUNK = 64 * 1024
_MAX_IDLE_PER_ORIGIN = 64


class ResponseError(http.client.HTTPException):
    """The server's answer is not HTTP/1.x as expected (a transient, retryable failure)."""


class Origin:
    """Where connections go: scheme, host and port of one endpoint (or one virtual-hosted bucket).

    Attributes
    ----------
    scheme : str
        ``"http"`` or ``"https"``.
    host : str
    port : int
    host_header : str
        What the ``Host`` header says (and what is signed): ``host`` or ``host:port``.
    """

    __slots__ = ("scheme", "host", "port", "host_header")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"endpoint URL must be http:// or https://, not {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        default = 443 if self.scheme == "https" else 80
        self.port = parts.port or default
        shown = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literals keep their brackets
        self.host_header = shown if self.port == default else f"{shown}:{self.port}"

    def key(self) -> Tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    def __repr__(self) -> str:
        return f"Origin({self.scheme}://{self.host_header})"


class _Connection:
    """One keep-alive socket, with what arrived after the last response head."""

    __slots__ = ("sock", "pending", "reused")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""  # bytes received past the head: the start of the body
        self.reused = False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Response:
    """An HTTP response: status, lower-case headers, and a body read on demand.

    Attributes
    ----------
    status : int
    headers : Headers
        ``headers.get("content-length")``: lower-case names.
    """

    __slots__ = ("status", "headers", "_pool", "_conn", "_remaining", "_chunked", "_chunk_left", "_keep_alive")

    def __init__(self, pool: "ConnectionPool", conn: _Connection, status: int, headers: "Headers", head_only: bool) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._conn: Optional[_Connection] = conn
        self._keep_alive = True  # until the end of the body, where "Connection: close" is looked for
        self._chunked = False
        self._chunk_left = 0
        length = headers.get("content-length")
        if head_only or status in (204, 304) or 100 <= status < 200:
            self._remaining: Optional[int] = 0
        elif length is not None:  # a length and chunked together are not allowed (RFC 9112)
            try:
                self._remaining = int(length)
            except ValueError:
                raise ResponseError(f"bad Content-Length {length!r}") from None
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
            self._remaining = None
        else:  # the body ends when the server closes the connection
            self._remaining = None
            self._keep_alive = False
        if self._remaining == 0:
            self._release()

    @property
    def content_length(self) -> Optional[int]:
        """The announced body length (None: chunked or until close)."""
        value = self.headers.get("content-length")
        return int(value) if value is not None and not self._chunked else None

    @property
    def complete(self) -> bool:
        """True once the whole body was read (the connection went back to the pool)."""
        return self._conn is None and (self._remaining == 0 or self._remaining is None)

    def _recv_into(self, view: memoryview) -> int:
        conn = self._conn
        pending = conn.pending
        if pending:
            n = min(len(pending), len(view))
            view[:n] = pending[:n]
            conn.pending = pending[n:]
            return n
        return conn.sock.recv_into(view)

    def readinto(self, view: memoryview) -> int:
        """Read up to ``len(view)`` body bytes into ``view``; 0 at the end of the body.

        Raises
        ------
        http.client.IncompleteRead
            The connection closed before the announced length arrived.
        OSError
            A socket error or timeout.
        """
        if self._conn is None or not len(view):
            return 0
        if self._chunked:
            return self._readinto_chunked(view)
        remaining = self._remaining
        if remaining is not None and len(view) > remaining:
            view = view[:remaining]
        n = self._recv_into(view)
        if n == 0:
            if remaining is None:  # close-delimited body: this is its end
                self._discard()
                return 0
            self._discard()
            raise http.client.IncompleteRead(b"", remaining)
        if remaining is not None:
            self._remaining = remaining - n
            if self._remaining == 0:
                self._release()
        return n

    def _readinto_chunked(self, view: memoryview) -> int:
        if self._chunk_left == 0:
            size = self._read_chunk_size()
            if size == 0:
                self._read_line()  # trailers are not used by S3: read up to the empty line
                while self._read_line():
                    pass
                self._remaining = 0
                self._release()
                return 0
            self._chunk_left = size
        want = min(len(view), self._chunk_left)
        n = self._recv_into(view[:want])
        if n == 0:
            self._discard()
            raise http.client.IncompleteRead(b"", self._chunk_left)
        self._chunk_left -= n
        if self._chunk_left == 0:
            self._read_line()  # the CRLF after the chunk
        return n

    def _read_line(self) -> bytes:
        conn = self._conn
        while b"\r\n" not in conn.pending:
            more = conn.sock.recv(_RECV_CHUNK)
            if not more:
                self._discard()
                raise http.client.IncompleteRead(conn.pending)
            conn.pending += more
            if len(conn.pending) > _MAX_HEAD:
                self._discard()
                raise ResponseError("chunked body line too long")
        line, _, conn.pending = conn.pending.partition(b"\r\n")
        return line

    def _read_chunk_size(self) -> int:
        line = self._read_line()
        try:
            return int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            self._discard()
            raise ResponseError(f"bad chunk size line {line[:40]!r}") from None

    def read(self, limit: int = 1 << 20) -> bytes:
        """The rest of the body (error answers: small XML), at most ``limit`` bytes kept."""
        out = bytearray()
        chunk = memoryview(bytearray(_RECV_CHUNK))
        while True:
            n = self.readinto(chunk)
            if n == 0:
                return bytes(out)
            if len(out) < limit:
                out += chunk[:n]

    def close(self, complete: bool = False) -> None:
        """Close the connection unless the body was read to its end (then it is back in the pool already).

        ``complete`` is accepted for symmetry with botocore-backed bodies; a
        response knows whether it was read to its end.
        """
        if self._conn is not None:
            self._discard()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._keep_alive and self.headers.get("connection", "").lower() != "close":
                self._pool.put(conn)
            else:
                conn.close()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()


class ConnectionPool:
    """Idle keep-alive connections to one origin, shared by threads.

    Parameters
    ----------
    origin : Origin
    connect_timeout, read_timeout : float
        Seconds.
    ssl_context : ssl.SSLContext, optional
        Required for ``https`` origins.
    """

    def __init__(self, origin: Origin, connect_timeout: float, read_timeout: float, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self.origin = origin
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = ssl_context
        self._idle: deque = deque()
        self._lock = threading.Lock()

    def _connect(self) -> _Connection:
        origin = self.origin
        sock = socket.create_connection((origin.host, origin.port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if origin.scheme == "https":
                sock = self._ssl.wrap_socket(sock, server_hostname=origin.host)
            sock.settimeout(self._read_timeout)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def put(self, conn: _Connection) -> None:
        conn.reused = True
        with self._lock:
            if len(self._idle) < _MAX_IDLE_PER_ORIGIN:
                self._idle.append(conn)
                return
        conn.close()

    def _take(self) -> Optional[_Connection]:
        with self._lock:
            return self._idle.pop() if self._idle else None  # most recent first: least likely timed out

    def request(self, method: str, target: str, headers: Dict[str, str], body=None) -> Response:
        """Send one request and read the answer's head.

        A request sent on a reused connection that the server had already
        closed is sent once more on a new connection (nothing of it was
        processed: no byte of an answer came back).
        """
        head = _request_head(method, target, self.origin.host_header, headers, body)
        conn = self._take()
        if conn is not None:
            try:
                return self._exchange(conn, method, head, body)
            except (ConnectionError, _StaleConnection):
                pass  # fall through to a fresh connection
        return self._exchange(self._connect(), method, head, body, fresh=True)

    def _exchange(self, conn: _Connection, method: str, head: bytes, body, fresh: bool = False) -> Response:
        try:
            if body is not None and len(body) <= _RECV_CHUNK:
                conn.sock.sendall(head + bytes(body))
            else:
                conn.sock.sendall(head)
                if body is not None:
                    conn.sock.sendall(body)
            status, headers = _read_head(conn, stale_ok=not fresh)
        except BaseException:
            conn.close()
            raise
        return Response(self, conn, status, headers, head_only=(method == "HEAD"))

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, deque()
        for conn in idle:
            conn.close()


class _StaleConnection(Exception):
    """A reused connection was closed by the server before answering."""


def _request_head(method: str, target: str, host: str, headers: Dict[str, str], body) -> bytes:
    lines = ["%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host)]
    for name, value in headers.items():
        lines.append("%s: %s\r\n" % (name, value))
    if body is not None:
        lines.append("Content-Length: %d\r\n" % len(body))
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _read_head(conn: _Connection, stale_ok: bool) -> Tuple[int, "Headers"]:
    data = conn.pending
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(data) > _MAX_HEAD:
            raise ResponseError("response head too long")
        more = conn.sock.recv(_RECV_CHUNK)
        if not more:
            if not data and stale_ok:
                raise _StaleConnection()
            raise http.client.RemoteDisconnected("the server closed the connection without an answer")
        data += more
        if data.startswith(b"HTTP/1.1 100") or data.startswith(b"HTTP/1.0 100"):
            cut = data.find(b"\r\n\r\n")  # an interim 100 Continue: skip it
            if cut >= 0:
                data = data[cut + 4 :]
    conn.pending = data[end + 4 :]
    text = data[: end + 2].decode("latin-1")  # keep the last line's CRLF: every header line ends in one
    first = text.find("\r\n")
    status_line = text[:first].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
        raise ResponseError(f"bad status line {text[:first][:80]!r}")
    headers = Headers(text, first)
    if status_line[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers.set("connection", "close")
    return int(status_line[1]), headers


class Headers:
    """The header lines of one response, looked up by lower-case name.

    An answer carries some fifteen headers of which s3io reads a handful:
    each lookup is one search of the lower-cased head (no dictionary of every
    line is built).  A repeated header gives its first value.
    """

    __slots__ = ("_text", "_lower", "_start", "_extra")

    def __init__(self, text: str, start: int) -> None:
        self._text = text  # the head from the CRLF ending the status line, each line ending in CRLF
        self._lower = text.lower()
        self._start = start
        self._extra: Optional[Dict[str, str]] = None

    def get(self, name: str, default=None):
        """The value of header ``name`` (lower case), blanks stripped; ``default`` if absent."""
        if self._extra is not None and name in self._extra:
            return self._extra[name]
        at = self._lower.find("\r\n" + name + ":", self._start)
        if at < 0:
            return default
        begin = at + len(name) + 3
        return self._text[begin : self._text.index("\r\n", begin)].strip()

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def set(self, name: str, value: str) -> None:
        """Override header ``name`` (lower case)."""
        if self._extra is None:
            self._extra = {}
        self._extra[name] = value

    def items(self):
        """Every header as (lower-case name, value), in order."""
        for line in self._text[self._start + 2 :].split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                yield name.strip().lower(), value.strip()

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"
