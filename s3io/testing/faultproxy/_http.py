"""HTTP/1.1 on a socket: read message heads, stream bodies through in pieces, close or reset a socket.

Nothing here knows about S3 or faults. Bodies are never held whole: a
:class:`Reader` yields them as memoryviews of one reused buffer, and
:func:`pump` sends each piece on before reading the next.
"""
from __future__ import annotations

import select
import socket
import struct
from typing import Any, Dict, Iterator, Optional, Tuple

RECV_SIZE = 256 * 1024  # per-connection relay buffer: bodies stream through it, never whole
MAX_HEAD = 64 * 1024  # longest request/response head accepted

Framing = Tuple[str, Optional[int]]  # ("length", n), ("chunked", None) or ("close", None)


class EndOfStream(Exception):
    """The peer closed before the message was complete."""

    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side


class BadMessage(Exception):
    """A head or chunk line that is not HTTP/1.1."""


class SendFailed(Exception):
    """The destination of a body stopped accepting bytes."""


class Reader:
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
            raise BadMessage("%s head longer than %d bytes" % (self.side, limit))
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
            if not self._recv_more(MAX_HEAD):
                if self._buf:
                    raise EndOfStream(self.side)
                return None

    def read_line(self) -> bytes:
        """One CRLF-terminated line (chunk size or trailer), terminator included."""
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
                return line
            if not self._recv_more(MAX_HEAD):
                raise EndOfStream(self.side)

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
            self._scratch = memoryview(bytearray(RECV_SIZE))
        scratch = self._scratch
        while remaining is None or remaining > 0:
            want = len(scratch) if remaining is None else min(remaining, len(scratch))
            got = self.sock.recv_into(scratch, want)
            if got == 0:
                if remaining is None:
                    return
                raise EndOfStream(self.side)
            if remaining is not None:
                remaining -= got
            yield scratch[:got]

    def body_pieces(self, framing: Framing) -> Iterator[memoryview]:
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
                    raise BadMessage("bad chunk size line (%d bytes)" % len(line)) from None
                yield memoryview(line)
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = self.read_line()
                        yield memoryview(trailer)
                        if trailer == b"\r\n":
                            return
                yield from self.pieces(size + 2)  # chunk data and its CRLF


class Head:
    """A parsed request or response head; ``raw`` is what is forwarded."""

    __slots__ = ("raw", "start", "headers")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        lines = raw[:-4].decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        if len(self.start) < 2:
            raise BadMessage("bad start line (%d bytes)" % len(lines[0]))
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadMessage("bad header line (%d bytes)" % len(line))
            name = name.strip().lower()
            value = value.strip()
            headers[name] = value if name not in headers else headers[name] + ", " + value
        self.headers = headers

    def body_framing(self) -> Framing:
        """``("chunked", None)``, ``("length", n)`` or, absent both, ``("close", None)``."""
        te = self.headers.get("transfer-encoding")
        if te is not None and te.split(",")[-1].strip().lower() == "chunked":
            return ("chunked", None)
        cl = self.headers.get("content-length")
        if cl is not None:
            try:
                n = int(cl.split(",")[0])
            except ValueError:
                raise BadMessage("bad Content-Length %r" % cl) from None
            if n < 0:
                raise BadMessage("bad Content-Length %r" % cl)
            return ("length", n)
        return ("close", None)

    def keep_alive(self, version: str) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if "close" in tokens:
            return False
        return version == "HTTP/1.1" or "keep-alive" in tokens

    def status(self) -> int:
        """The status code of a response head."""
        try:
            return int(self.start[1])
        except ValueError:
            raise BadMessage("bad status line") from None


def pump(reader: Reader, dest: Optional[socket.socket], framing: Framing, limit: Optional[int], record: Any,
         counter: str) -> bool:
    """Forward a body from ``reader`` to ``dest`` (None: discard); returns whether it was cut.

    Stops after ``limit`` bytes if more would follow. Sets ``record.<counter>``
    to the bytes forwarded so far before sending each piece. Raises
    :class:`EndOfStream` if the source ends early and :class:`SendFailed` if
    the destination fails.
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
                raise SendFailed() from exc
        if cut:
            return True
    return False


def readable(sock: socket.socket) -> bool:
    """True if ``sock`` has bytes (or an EOF) to read right now."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def shutdown(sock: Optional[socket.socket]) -> None:
    """Wake any thread blocked on ``sock``; the owner closes it."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def close(sock: Optional[socket.socket], reset: bool = False) -> None:
    """Close ``sock`` with a FIN, or with a RST when ``reset``."""
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
