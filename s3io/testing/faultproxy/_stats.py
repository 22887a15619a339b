"""What went through the proxy: the request log, counts, fault tallies, connections and requests in flight."""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional

from s3io.testing.faultproxy._request import Request


@dataclass
class LogEntry:
    """One request that went through the proxy.

    Logged when the request head arrives and updated as it is served, each
    field before the client can see its effect: once a client has its
    answer, the entry is up to date.

    Attributes
    ----------
    method, path, query, kind : str
        The request, as in :class:`~s3io.testing.faultproxy.Request` (``query`` undecoded).
    status : int or None
        The status line sent to the client (None if the connection was closed
        or reset before a response head).
    fault : str or None
        The injected fault's name (None if forwarded untouched, and while the
        ``when`` predicates decide); ``throttle`` for a request rejected by
        :meth:`~s3io.testing.faultproxy.FaultProxy.set_throttle`.
    request_bytes, response_bytes : int
        Body bytes forwarded each way.
    headers : dict
        The request headers, names lower-cased.
    started : float
        ``time.monotonic()`` when the request head arrived.
    duration : float or None
        Seconds until the exchange ended; None while the request is in flight.
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
        """Set ``duration`` (once: later calls keep the first)."""
        if self.duration is None:
            self.duration = time.monotonic() - self.started


class ProxyStats:
    """Counters and the bounded request log behind the :class:`FaultProxy` observation API. Thread-safe.

    ``in_flight`` counts requests being forwarded: a slot is taken by
    :meth:`take_slot` when a request arrives (before its fault is picked, so
    that the check against a throttle limit and the count are one step) and
    given back by :meth:`give_back_slot` when the proxy answers the request
    itself or its exchange ends.
    """

    def __init__(self, log_limit: Optional[int]) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()
        self._faults_injected: collections.Counter = collections.Counter()
        self._log: Deque[LogEntry] = collections.deque(maxlen=log_limit)
        self.connections_accepted = 0
        self.connections_refused = 0
        self.requests_forwarded = 0
        self.requests_rejected = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    # -- updates

    def count_request(self, req: Request) -> None:
        with self._lock:
            self._counts[req.kind] += 1
            self._counts[req.method] += 1

    def count_fault(self, name: str) -> None:
        with self._lock:
            self._faults_injected[name] += 1

    def append(self, entry: LogEntry) -> None:
        with self._lock:
            self._log.append(entry)

    def count_connection(self, accepted: bool) -> None:
        with self._lock:
            if accepted:
                self.connections_accepted += 1
            else:
                self.connections_refused += 1

    def take_slot(self, limit: Optional[int]) -> bool:
        """Count a request in flight, unless ``limit`` or more already are: then count it rejected."""
        with self._lock:
            if limit is not None and self.in_flight >= limit:
                self.requests_rejected += 1
                return False
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return True

    def count_forwarded(self) -> None:
        with self._lock:
            self.requests_forwarded += 1

    def give_back_slot(self) -> None:
        """A request is no longer in flight: answered by the proxy itself, or its exchange ended."""
        with self._lock:
            self.in_flight -= 1

    # -- reading

    def counts(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(self._counts)

    def faults_injected(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(self._faults_injected)

    def log(self) -> List[LogEntry]:
        with self._lock:
            return list(self._log)

    def count(self, kind: Optional[str], method: Optional[str], fault: Optional[str], status: Optional[int]) -> int:
        """Logged requests matching every filter that is not None (see ``FaultProxy.count``)."""
        n = 0
        for e in self.log():
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

    def reset(self) -> None:
        """Forget counts, the log and the tallies; requests in flight stay in flight."""
        with self._lock:
            self._counts.clear()
            self._faults_injected.clear()
            self._log.clear()
            self.connections_accepted = 0
            self.connections_refused = 0
            self.requests_forwarded = 0
            self.requests_rejected = 0
            self.peak_in_flight = self.in_flight
