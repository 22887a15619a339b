"""One client connection, served by one thread: forward each request upstream or answer it, applying its fault.

The connection knows nothing of how faults are chosen: for each request it
asks the proxy for a :class:`RequestPlan` through the narrow
:class:`ConnectionHooks` it was handed, and carries the plan out.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from s3io.testing.faultproxy import _http
from s3io.testing.faultproxy._faults import Injection
from s3io.testing.faultproxy._http import BadMessage, EndOfStream, Framing, Head, Reader, SendFailed, pump
from s3io.testing.faultproxy._request import Request
from s3io.testing.faultproxy._s3_errors import S3_ERRORS, error_response
from s3io.testing.faultproxy._stats import LogEntry

log = logging.getLogger(__name__)


@dataclass
class RequestPlan:
    """What the proxy decided for one request, and its log entry."""

    injection: Optional[Injection]  # the fault to apply; None: forward untouched
    record: LogEntry
    delay: float  # seconds to hold the final response before its first byte
    forwarded: bool  # holds an in-flight slot until the exchange ends


@dataclass(frozen=True)
class ConnectionHooks:
    """What a client connection needs from the proxy that serves it."""

    upstream_addr: Tuple[str, int]
    upstream_timeout: float
    stopping: threading.Event  # set by stop(): end every wait
    closing_idle: Callable[[], bool]  # refusing connections: close when idle
    plan: Callable[[Request], RequestPlan]  # count, log and decide a request's fate
    finished: Callable[[RequestPlan], None]  # the exchange ended (its in-flight slot is free)
    forget: Callable[["Connection"], None]  # the thread is about to end


class _Reset(Exception):
    """Close the client connection with a RST."""


class _Stopped(Exception):
    """stop() ended a first-byte hold: close without answering."""


class Connection:
    """One client connection and its upstream connection, served by one thread."""

    def __init__(self, hooks: ConnectionHooks, sock: socket.socket, name: str) -> None:
        self.hooks = hooks
        self.client = sock
        self.client_reader = Reader(sock, "client")
        self.upstream: Optional[socket.socket] = None
        self.upstream_reader: Optional[Reader] = None
        self.idle = True  # waiting for a request head with nothing buffered
        self._delay = 0.0  # first-byte delay still to apply in this exchange
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- lifetime

    def abort(self) -> None:
        """Wake the thread from any blocking call (it closes its own sockets)."""
        _http.shutdown(self.client)
        _http.shutdown(self.upstream)

    def _run(self) -> None:
        reset = False
        try:
            self._serve()
        except _Reset:
            reset = True
        except (OSError, EndOfStream, BadMessage, _Stopped) as exc:
            log.debug("faultproxy connection ended: %r", exc)
        except Exception:  # never let a proxy bug kill the test process quietly
            log.exception("faultproxy connection failed")
        finally:
            _http.close(self.client, reset=reset)
            self._close_upstream()
            self.hooks.forget(self)

    def _serve(self) -> None:
        hooks = self.hooks
        while not hooks.stopping.is_set():
            self.idle = self.client_reader.buffered == 0
            if self.idle and hooks.closing_idle() and not _http.readable(self.client):
                log.debug("faultproxy: %s closes while refusing", self.thread.name)
                return  # refusing connections: make the client open a new one
            raw = self.client_reader.read_head()
            self.idle = False
            if raw is None:
                log.debug("faultproxy: %s: client closed", self.thread.name)
                return
            if not self._exchange(Head(raw)):
                log.debug("faultproxy: %s: closing after the exchange", self.thread.name)
                return

    # -- upstream

    def _open_upstream(self) -> None:
        self._close_upstream()
        sock = socket.create_connection(self.hooks.upstream_addr, timeout=self.hooks.upstream_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = sock
        self.upstream_reader = Reader(sock, "upstream")
        if self.hooks.stopping.is_set():  # stop() may have missed this socket
            _http.shutdown(sock)

    def _close_upstream(self) -> None:
        sock, self.upstream, self.upstream_reader = self.upstream, None, None
        _http.close(sock)

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

    def _exchange(self, head: Head) -> bool:
        """Serve one request; returns whether to keep the client connection."""
        method, target = head.start[0].upper(), head.start[1]
        version = head.start[2] if len(head.start) > 2 else "HTTP/1.0"
        framing = head.body_framing()
        if framing[0] == "close":
            framing = ("length", 0)  # a request without length has no body
        req = Request(method, target, head.headers, framing[1])
        client_keep = head.keep_alive(version)
        expect_continue = head.headers.get("expect", "").lower() == "100-continue" and framing != ("length", 0)
        plan = self.hooks.plan(req)
        self._delay = plan.delay
        try:
            return self._forward(head, req, plan.injection, plan.record, framing, client_keep, expect_continue)
        finally:
            plan.record.finish()  # also when a peer went away mid-exchange
            self.hooks.finished(plan)

    def _forward(self, head: Head, req: Request, injection: Optional[Injection], record: LogEntry,
                 framing: Framing, client_keep: bool, expect_continue: bool) -> bool:
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
                cut = pump(self.client_reader, self.upstream, framing, limit, record, "request_bytes")
            except SendFailed:
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

    def _read_response_head(self, reused: bool, retry_raw: Optional[bytes]) -> Optional[Head]:
        """The final response head from upstream, relaying any 1xx heads to the client."""
        attempt_retry = reused and retry_raw is not None
        while True:
            try:
                raw = self.upstream_reader.read_head()
            except (OSError, EndOfStream):
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
            resp = Head(raw)
            status = resp.status()
            if 100 <= status < 200 and status != 101:
                self.client.sendall(raw)  # e.g. a late 100 Continue; clients skip it
                continue
            return resp

    def _await_continue(self) -> Optional[Head]:
        """With ``Expect: 100-continue``: wait for the client's body or upstream's answer.

        Relays a ``100 Continue`` and returns None when the body should be
        streamed; returns the head of a final response sent before the body.
        """
        while self.client_reader.buffered == 0:
            readable, _, _ = select.select([self.client, self.upstream], [], [], self.hooks.upstream_timeout)
            if not readable or self.client in readable:
                return None  # the client sends the body anyway (or went away: pump sees it)
            raw = self.upstream_reader.read_head()
            if raw is None:
                raise EndOfStream("upstream")
            resp = Head(raw)
            status = resp.status()
            if status == 100:
                self.client.sendall(raw)
                return None
            if 100 < status < 200:
                self.client.sendall(raw)
                continue
            return resp
        return None

    def _send_final_head(self, data: bytes) -> None:
        """Send a final response head (or a whole proxy-made response), after the first-byte delay.

        Interim 1xx heads are not held: a client waiting for ``100 Continue``
        would otherwise wait twice.
        """
        delay, self._delay = self._delay, 0.0
        if delay > 0 and self.hooks.stopping.wait(delay):  # stop() ends the hold at once
            raise _Stopped()
        self.client.sendall(data)

    def _relay_response(self, req: Request, resp: Head, injection: Optional[Injection], record: LogEntry) -> bool:
        """Forward a response (applying a response-side fault); returns keep-alive."""
        status = resp.status()
        version = resp.start[0]
        if req.method == "HEAD" or status in (204, 304):
            framing: Framing = ("length", 0)
        else:
            framing = resp.body_framing()
        body_length = framing[1] if framing[0] == "length" else None
        keep = resp.keep_alive(version) and framing[0] != "close"

        action = injection.action if injection is not None else None
        if action in ("drop", "truncate", "stall"):
            cut = injection.cut_point(body_length)
            if cut is not None:
                record.status = status
                self._send_final_head(resp.raw)
                try:
                    pump(self.upstream_reader, self.client, framing, cut, record, "response_bytes")
                except SendFailed:
                    pass
            if action == "stall":
                self._stall(injection.params["seconds"])
            record.finish()
            if action == "drop" and injection.params.get("abort"):
                raise _Reset()
            return False

        record.status = status
        self._send_final_head(resp.raw)
        try:
            pump(self.upstream_reader, self.client, framing, None, record, "response_bytes")
        except SendFailed:
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
            if left <= 0 or self.hooks.stopping.is_set():
                return
            try:
                readable, _, _ = select.select([self.client], [], [], left)
                if readable and self.client.recv(1, socket.MSG_PEEK) == b"":
                    return  # the client closed (read timeout): no one is waiting any more
                if readable:
                    time.sleep(min(left, 0.05))  # the client sent something; keep holding
            except OSError:
                return

    def _answer_error(self, req: Request, injection: Injection, record: LogEntry, framing: Framing,
                      client_keep: bool, expect_continue: bool) -> bool:
        """Answer an injected error status without forwarding the request."""
        p = injection.params
        record.status = p["status"]
        if expect_continue:
            # Final answer instead of 100 Continue: the client does not send the
            # body; close afterwards since its framing is now ambiguous.
            self._send_final_head(error_response(p["status"], p["code"], p["message"], req.path,
                                                 req.method == "HEAD", close=True))
            record.finish()
            self._lingering_close()
            return False
        pump(self.client_reader, None, framing, None, record, "request_bytes")
        self._send_final_head(error_response(p["status"], p["code"], p["message"], req.path,
                                             req.method == "HEAD", close=not client_keep))
        record.finish()
        return client_keep

    def _answer_bad_gateway(self, req: Request, record: LogEntry) -> bool:
        """Answer 502 when the upstream server cannot be reached or hangs up without an answer."""
        code, message = S3_ERRORS[502]
        record.status = 502
        try:
            self._send_final_head(error_response(502, code, message, req.path, req.method == "HEAD", close=True))
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
            while time.monotonic() < deadline and not self.hooks.stopping.is_set():
                if not self.client.recv(65536):
                    break
        except OSError:
            pass
