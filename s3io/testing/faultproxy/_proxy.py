"""FaultProxy: the public class that listens, serves connections, and arms faults and modes."""
from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from typing import Iterable, List, Optional
from urllib.parse import urlsplit

from s3io.testing.faultproxy import _http
from s3io.testing.faultproxy._connection import Connection, ConnectionHooks, RequestPlan
from s3io.testing.faultproxy._faults import Fault, FaultRules, Injection, Matcher, Predicate, check_bytes
from s3io.testing.faultproxy._listener import REFUSAL_MODES, Listener
from s3io.testing.faultproxy._random import RandomFaults
from s3io.testing.faultproxy._request import Request
from s3io.testing.faultproxy._s3_errors import S3_ERRORS
from s3io.testing.faultproxy._stats import LogEntry, ProxyStats

log = logging.getLogger(__name__)

# The answer to a request over the throttle limit: what S3 sends when it sheds load.
_THROTTLE = Injection("throttle", "error", dict(status=503, code=S3_ERRORS[503][0], message=S3_ERRORS[503][1]))


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
    port : int or None
        The port it listens on (None when stopped).
    connections_accepted : int
        Client connections served (refused ones not included).
    connections_refused : int
        Client connections refused by :meth:`refuse_connections`.
    requests_forwarded : int
        Requests passed on to the upstream server, rather than answered by
        the proxy itself (an injected error, a throttle 503). With
        :attr:`requests_rejected`, the share rejected is
        ``rejected / (forwarded + rejected)``.
    requests_rejected : int
        Requests answered ``503 SlowDown`` by :meth:`set_throttle`.
    in_flight : int
        Requests being forwarded right now.
    peak_in_flight : int
        Most requests forwarded at once since start or :meth:`reset_stats`.

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
        self.upstream_timeout = upstream_timeout
        self.idle_timeout = idle_timeout

        self._lock = threading.Lock()
        self._listener = Listener(host, on_accept=self._serve_connection, on_refused=self._count_refused)
        self._hooks: Optional[ConnectionHooks] = None
        self._conns: set = set()
        self._conn_number = 0
        self._rules = FaultRules()
        self._stats = ProxyStats(log_limit)
        self._latency = 0.0
        self._max_in_flight: Optional[int] = None

    # ------------------------------------------------------------------ lifetime

    @property
    def port(self) -> Optional[int]:
        """The port it listens on (None when stopped)."""
        return self._listener.port

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
        """Listen on a free port and start accepting connections.

        Returns
        -------
        FaultProxy
            ``self``, so that ``proxy = FaultProxy(url).start()`` works.
        """
        if self._listener.running:
            return self
        self._hooks = ConnectionHooks(
            upstream_addr=self._upstream_addr,
            upstream_timeout=self.upstream_timeout,
            stopping=self._listener.stopping,
            closing_idle=self._listener.closing_idle,
            plan=self._plan,
            finished=self._finished,
            forget=self._forget,
        )
        self._listener.start()
        return self

    def stop(self) -> None:
        """Close every socket and join every thread. Idempotent."""
        if not self._listener.running:
            return
        self._listener.stop()  # after this no connection is added
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.abort()
        for conn in conns:
            conn.thread.join(10.0)
            if conn.thread.is_alive():  # pragma: no cover - a bug, but do not hang the tests
                log.error("faultproxy: %s did not stop", conn.thread.name)

    @property
    def open_connections(self) -> int:
        """Client connections being served right now."""
        with self._lock:
            return len(self._conns)

    def _serve_connection(self, sock: socket.socket) -> None:
        self._stats.count_connection(accepted=True)
        with self._lock:
            self._conn_number += 1
            number = self._conn_number
        log.debug("faultproxy %d: accepted connection %d", self.port, number)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.idle_timeout)
        conn = Connection(self._hooks, sock, "faultproxy-%d-conn-%d" % (self.port, number))
        with self._lock:
            self._conns.add(conn)
        conn.thread.start()

    def _count_refused(self) -> None:
        self._stats.count_connection(accepted=False)

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    # ------------------------------------------------------------------ each request

    def _plan(self, req: Request) -> RequestPlan:
        """Count and log a request and decide what happens to it (called by its connection)."""
        self._stats.count_request(req)
        # Logged on arrival: a request a ``when`` predicate holds shows in the log as unfinished.
        record = LogEntry(method=req.method, path=req.path, query=req.target.partition("?")[2], kind=req.kind,
                          headers=req.headers, started=time.monotonic())
        self._stats.append(record)
        # Check and count in one step: concurrent arrivals cannot all slip under the limit.
        if not self._stats.take_slot(self._max_in_flight):
            injection: Optional[Injection] = _THROTTLE
            forwarded = False
        else:
            injection = self._rules.pick(req)
            forwarded = injection is None or injection.action != "error"
            if forwarded:
                self._stats.count_forwarded()
            else:
                self._stats.give_back_slot()  # answered here: not in flight upstream
        if injection is not None:
            self._stats.count_fault(injection.name)
            record.fault = injection.name
        return RequestPlan(injection, record, self._latency, forwarded)

    def _finished(self, plan: RequestPlan) -> None:
        if plan.forwarded:
            self._stats.give_back_slot()

    # ------------------------------------------------------------------ faults

    def _arm(self, name: str, action: str, params: dict, times: Optional[int], method: Matcher, kind: Matcher,
             when: Predicate) -> Fault:
        return self._rules.arm(Fault(name, action, params, times, method, kind, when))

    def fail(self, status: int = 503, code: Optional[str] = None, message: Optional[str] = None, *,
             times: Optional[int] = 1, method: Matcher = None, kind: Matcher = None,
             when: Predicate = None) -> Fault:
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
        default_code, default_message = S3_ERRORS.get(status, ("InjectedFault", "Injected by FaultProxy."))
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
                        method: Matcher = None, kind: Matcher = None, when: Predicate = None) -> Fault:
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

        Returns
        -------
        Fault
        """
        check_bytes("after_bytes", after_bytes, allow_none=True)
        return self._arm("drop", "drop", dict(after_bytes=after_bytes, abort=bool(abort)), times, method, kind,
                         when)

    def truncate_body(self, missing_bytes: int = 1, *, times: Optional[int] = 1, method: Matcher = None,
                      kind: Matcher = None, when: Predicate = None) -> Fault:
        """Send the response head (its Content-Length intact) and all but the last ``missing_bytes``, then close.

        ``missing_bytes`` is clamped to the body length; a response without a
        body is cut before its head. ``times``, ``method``, ``kind`` and
        ``when`` choose the requests, as in :meth:`fail`.

        Returns
        -------
        Fault
        """
        check_bytes("missing_bytes", missing_bytes, minimum=1)
        return self._arm("truncate", "truncate", dict(missing_bytes=missing_bytes), times, method, kind, when)

    def stall_response(self, seconds: float = 30.0, *, after_bytes: Optional[int] = 0, times: Optional[int] = 1,
                       method: Matcher = None, kind: Matcher = None, when: Predicate = None) -> Fault:
        """Hold the response after ``after_bytes`` of its body, then close the connection.

        The stall ends after ``seconds``, when the client closes the
        connection (its read timeout fired), or at :meth:`stop`. ``after_bytes``
        is pulled in before the last body byte; None (or a response without
        body) holds the response head itself. ``times``, ``method``, ``kind``
        and ``when`` choose the requests, as in :meth:`fail`.

        Returns
        -------
        Fault
        """
        if not seconds >= 0:
            raise ValueError("seconds must be >= 0, not %r" % (seconds,))
        check_bytes("after_bytes", after_bytes, allow_none=True)
        return self._arm("stall", "stall", dict(seconds=float(seconds), after_bytes=after_bytes), times, method,
                         kind, when)

    def reset_upload(self, after_bytes: int = 0, *, times: Optional[int] = 1, method: Matcher = None,
                     kind: Matcher = None, when: Predicate = None) -> Fault:
        """Reset the client connection (RST) after ``after_bytes`` of a request body.

        Applies only to requests with a body (``after_bytes`` is pulled in
        before its last byte); the request never completes upstream.
        ``times``, ``method``, ``kind`` and ``when`` choose the requests, as
        in :meth:`fail`.

        Returns
        -------
        Fault
        """
        check_bytes("after_bytes", after_bytes)
        return self._arm("reset_upload", "reset_upload", dict(after_bytes=after_bytes), times, method, kind, when)

    def refuse_connections(self, seconds: float, *, how: str = "unlisten", close_idle: bool = True) -> None:
        """Refuse new client connections for ``seconds`` (0 ends a refusal now).

        Parameters
        ----------
        seconds : float
            How long; 0 ends a refusal now.
        how : {"unlisten", "close", "reset"}
            ``unlisten``: stop listening, so connects fail with "connection
            refused"; ``close``: accept and close at once; ``reset``: accept
            and reset.
        close_idle : bool
            Also close kept-alive connections while they are idle, so that a
            client's next request needs a new connection.
        """
        if how not in REFUSAL_MODES:
            raise ValueError("how must be 'unlisten', 'close' or 'reset', not %r" % (how,))
        if not seconds >= 0:
            raise ValueError("seconds must be >= 0, not %r" % (seconds,))
        self._listener.refuse(seconds, how, close_idle)
        if close_idle and seconds > 0:
            with self._lock:
                idle = [c for c in self._conns if c.idle]
            for conn in idle:
                _http.shutdown(conn.client)

    def set_random_faults(self, rate: float, kinds: Optional[Iterable[str]] = None, seed: Optional[int] = 0, *,
                          stall_seconds: float = 30.0, method: Matcher = None, kind: Matcher = None,
                          when: Predicate = None) -> None:
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
        self._rules.set_random(RandomFaults(rate, kinds, seed, stall_seconds, method, kind, when))

    def set_latency(self, seconds: float) -> None:
        """Hold every response ``seconds`` before its first byte, like a store's first-byte latency.

        Each request is held on its own: concurrent requests wait at the same
        time, so 16 requests in parallel with 20 ms each take about 20 ms. The
        hold starts when the proxy has the answer (upstream's response head,
        or its own error answer) and applies to requests that arrive from now
        on. Interim ``100 Continue`` heads are not held. :meth:`clear_faults`
        keeps it: latency is how the store behaves, not a fault.

        Parameters
        ----------
        seconds : float
            The delay; 0 turns it off.
        """
        if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0):
            raise ValueError("seconds must be a number >= 0, not %r" % (seconds,))
        self._latency = float(seconds)

    @property
    def latency(self) -> float:
        """The first-byte delay set by :meth:`set_latency`, in seconds."""
        return self._latency

    def set_throttle(self, max_in_flight: Optional[int]) -> None:
        """Answer ``503 SlowDown`` to requests that arrive while ``max_in_flight`` requests are being forwarded.

        A rejected request is answered at once, without being forwarded, with
        an S3 XML error body (``Code`` ``SlowDown``, a ``RequestId``); it is
        logged with ``fault="throttle"`` and counted in
        :attr:`requests_rejected` and :attr:`faults_injected`. A request that
        gets through counts in :attr:`in_flight` until its response has been
        relayed, and in :attr:`requests_forwarded`. Armed and random faults
        apply only to requests that get through. :meth:`clear_faults` ends
        throttling.

        Parameters
        ----------
        max_in_flight : int or None
            The limit K (>= 1); None turns throttling off.
        """
        if max_in_flight is not None:
            if not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or max_in_flight < 1:
                raise ValueError("max_in_flight must be an int >= 1 or None, not %r" % (max_in_flight,))
        self._max_in_flight = max_in_flight

    @property
    def max_in_flight(self) -> Optional[int]:
        """The throttle limit set by :meth:`set_throttle` (None: not throttling)."""
        return self._max_in_flight

    def clear_faults(self) -> None:
        """Disarm every fault, random faults, throttling and any connection refusal (latency stays)."""
        self._rules.clear()
        self._max_in_flight = None
        self._listener.end_refusal()

    @property
    def faults(self) -> List[Fault]:
        """Armed faults that have not run out."""
        return self._rules.armed()

    # ------------------------------------------------------------------ observation

    @property
    def counts(self) -> collections.Counter:
        """Requests seen so far, by S3 operation kind and by HTTP method (a copy)."""
        return self._stats.counts()

    @property
    def faults_injected(self) -> collections.Counter:
        """Faults injected so far, by name (a copy); throttle rejections count as ``throttle``."""
        return self._stats.faults_injected()

    @property
    def log(self) -> List[LogEntry]:
        """Requests in arrival order, those in flight included (a copy of the list)."""
        return self._stats.log()

    @property
    def connections_accepted(self) -> int:
        """Client connections served (refused ones not included)."""
        return self._stats.connections_accepted

    @property
    def connections_refused(self) -> int:
        """Client connections refused by :meth:`refuse_connections`."""
        return self._stats.connections_refused

    @property
    def requests_forwarded(self) -> int:
        """Requests passed on to the upstream server, rather than answered by the proxy itself."""
        return self._stats.requests_forwarded

    @property
    def requests_rejected(self) -> int:
        """Requests answered ``503 SlowDown`` by :meth:`set_throttle`."""
        return self._stats.requests_rejected

    @property
    def in_flight(self) -> int:
        """Requests being forwarded right now."""
        return self._stats.in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most requests forwarded at once since start or :meth:`reset_stats`."""
        return self._stats.peak_in_flight

    def count(self, kind: Optional[str] = None, *, method: Optional[str] = None, fault: Optional[str] = None,
              status: Optional[int] = None) -> int:
        """Logged requests (in flight included) matching every given filter.

        Parameters
        ----------
        kind : str, optional
            S3 operation kind (see :class:`Request`).
        method : str, optional
            HTTP method.
        fault : str, optional
            Fault name; ``"any"`` counts requests that got any fault, ``""``
            those forwarded untouched.
        status : int, optional
            Status sent to the client.

        Returns
        -------
        int
        """
        return self._stats.count(kind, method, fault, status)

    def reset_stats(self) -> None:
        """Forget counts, the log and the tallies (armed faults and modes stay)."""
        self._stats.reset()

    def __repr__(self) -> str:
        where = self.endpoint_url if self.port is not None else "stopped"
        return "<FaultProxy %s -> %s>" % (where, self.upstream_url)
