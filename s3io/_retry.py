"""s3io's one retry policy, and the adaptive limit on requests in flight.

Every request of a client (reads, writes, listing, multipart, copy) is retried
by :class:`RetryPolicy`: exponential backoff with full jitter, at most
``max_attempts`` attempts, and a per-client budget of retries that refills over
time.  botocore's standard mode takes retry tokens and gives them back only on
success, so a long burst of faults empties its quota and every later request
fails on its first fault; here an empty budget makes a retry *wait* for the
next token instead, so a burst slows retries down but never takes them away.

:class:`ConcurrencyLimit` is what the parallel paths (DCP load and save, a
sequential reader's parts, dataset prefetch) acquire before each request.  A
``503 SlowDown`` or ``429`` halves the limit; successes raise it again, quickly
until the first throttle (slow start), then one step at a time.
"""
from __future__ import annotations

import http.client
import random
import threading
import time
from typing import Callable, Optional

import botocore.exceptions
import urllib3.exceptions

from ._exceptions import S3Exception

__all__ = ["ConcurrencyLimit", "RetryBudget", "RetryPolicy", "TRANSIENT_ERRORS", "is_retryable", "is_throttle"]

_BACKOFF_BASE = 0.05  # seconds: full jitter over base * 2**retry
_BACKOFF_CAP = 5.0
_BUDGET_CAPACITY = 100.0  # retries that can be spent at once
_BUDGET_REFILL_PER_S = 10.0  # retries per second the budget regains
_MAX_BUDGET_WAIT = 10.0  # seconds a retry waits at most for a token
_RETRYABLE_STATUS = frozenset((500, 502, 503, 504, 429))
# botocore's standard mode retries these too (its transient and throttling codes).
_THROTTLE_CODES = frozenset((
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled",
))
_RETRYABLE_CODES = _THROTTLE_CODES | frozenset((
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "BadDigest",
))
# Failures below HTTP: the request may not have reached the store, or its answer was lost.
TRANSIENT_ERRORS = (
    OSError,  # connection refused or reset, timeouts
    http.client.HTTPException,  # a malformed or cut answer
    urllib3.exceptions.HTTPError,
    botocore.exceptions.ConnectionError,  # refused, reset, read timeouts
    botocore.exceptions.HTTPClientError,  # a connection closed before the answer
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
)


def is_throttle(exc: BaseException) -> bool:
    """True for the store asking to slow down (503 SlowDown, 429)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        meta = exc.response.get("ResponseMetadata") or {}
        code = (exc.response.get("Error") or {}).get("Code")
        return meta.get("HTTPStatusCode") == 429 or code in _THROTTLE_CODES
    return isinstance(exc, S3Exception) and (exc.status == 429 or exc.code in _THROTTLE_CODES)


def is_retryable(exc: BaseException) -> bool:
    """True for faults another attempt may cure: connection errors, timeouts, 5xx, throttling.

    ``exc`` is an answer from the store (an :class:`S3Exception` with a status)
    or the raw error of a request that got no answer.
    """
    if isinstance(exc, S3Exception):
        return exc.status in _RETRYABLE_STATUS or exc.code in _RETRYABLE_CODES
    if isinstance(exc, botocore.exceptions.ClientError):
        meta = exc.response.get("ResponseMetadata") or {}
        code = (exc.response.get("Error") or {}).get("Code")
        return meta.get("HTTPStatusCode") in _RETRYABLE_STATUS or code in _RETRYABLE_CODES
    return isinstance(exc, TRANSIENT_ERRORS)


class RetryBudget:
    """Tokens for retries: ``capacity`` at most, regained at ``refill_per_s``.

    Thread-safe.  :meth:`take` waits for a token rather than failing, up to
    ``max_wait`` seconds, so a burst of faults slows retries down instead of
    leaving later requests with a single attempt.
    """

    def __init__(self, capacity: float = _BUDGET_CAPACITY, refill_per_s: float = _BUDGET_REFILL_PER_S, max_wait: float = _MAX_BUDGET_WAIT) -> None:
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self.max_wait = max_wait
        self._tokens = capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        with self._lock:
            self._refill(time.monotonic())
            return self._tokens

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.refill_per_s)
        self._stamp = now

    def take(self) -> bool:
        """Spend one token, waiting for it if the budget is empty; False if none came within ``max_wait``."""
        deadline = time.monotonic() + self.max_wait
        while True:
            with self._lock:
                now = time.monotonic()
                self._refill(now)
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return True
                wait = (1.0 - self._tokens) / self.refill_per_s
            if now + wait > deadline:
                return False
            time.sleep(wait)


class RetryPolicy:
    """Attempts, backoff and budget for every request of one client.

    Parameters
    ----------
    max_attempts : int
        Attempts per request, the first included.
    budget : RetryBudget, optional
        Shared by the client's requests; a fresh one by default.
    """

    def __init__(self, max_attempts: int, budget: Optional[RetryBudget] = None) -> None:
        self.max_attempts = max_attempts
        self.budget = budget or RetryBudget()
        self.retries = 0  # retries granted so far (for tests and benchmarks)

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): full jitter."""
        return random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (retry - 1)))

    def may_resume(self, failures: int) -> bool:
        """After ``failures`` failures in a row of one body (cut, reset, timed out): sleep and return True to resume.

        A body failure is transient by nature; only the attempts and the budget limit it.
        """
        if failures >= self.max_attempts or not self.budget.take():
            return False
        self.retries += 1
        time.sleep(self.backoff(failures))
        return True

    def may_retry(self, attempt: int, exc: BaseException, sleep: Callable[[float], None] = time.sleep) -> bool:
        """After ``attempt`` (1-based) failed with ``exc``: back off (``sleep``) and return True to try again.

        False when ``exc`` is not retryable, the attempts are used up, or the
        budget gave no token in time.
        """
        if attempt >= self.max_attempts or not is_retryable(exc):
            return False
        if not self.budget.take():
            return False
        self.retries += 1
        sleep(self.backoff(attempt))
        return True


class ConcurrencyLimit:
    """An adaptive cap on requests in flight, shared by a client's parallel paths.

    The parallel paths hold a slot (``with limit:``) around each request they
    run on a worker: a part of a DCP load or save, of a sequential read or a
    multipart upload, a dataset prefetch.  The transport reports the outcome of
    every attempt (:meth:`observe`), so throttles that retries hide still lower
    the limit.

    Parameters
    ----------
    maximum : int
        The cap never exceeds this (the client's ``max_concurrency``).
    initial : int, optional
        Where slow start begins (default ``min(2, maximum)``: a store that
        throttles from the start sees at most one request too many).

    Notes
    -----
    Slow start: each success of a request sent while the limit was used up
    raises the limit by one (about doubling it per round of requests) until
    the first throttle; a store that allows K requests at once sees at most
    one request over K.  A throttle of a request sent while n
    were in flight lowers the limit below n (and to at most three quarters of
    it), once per round: throttles of requests sent before the last decrease
    are the same event.  After that, ``4 * limit`` successes in a row raise the
    limit by one; going back to a level that was throttled takes a window of
    successes that doubles with each throttle there (64, 128, ... 4096), so a
    store that allows K requests at once is rarely probed above K.
    """

    _FIRST_PROBE_WINDOW = 64
    _MAX_PROBE_WINDOW = 4096

    def __init__(self, maximum: int, initial: Optional[int] = None) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be at least 1, not {maximum}")
        self.maximum = maximum
        self._limit = min(maximum, initial if initial is not None else 2)
        self._in_flight = 0
        self._slow_start = True
        self._streak = 0  # successes since the last throttle or raise
        self._last_decrease = float("-inf")  # monotonic time of the last decrease
        self._ceiling = maximum + 1  # the lowest level throttled lately
        self._probe_window = self._FIRST_PROBE_WINDOW
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # threads waiting for a slot
        self._held = threading.local()  # slots held by the current thread
        self.throttles = 0  # throttle answers seen (for tests and benchmarks)

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Slots held now."""
        return self._in_flight

    def __enter__(self) -> "ConcurrencyLimit":
        self._acquire()
        self._held.count = getattr(self._held, "count", 0) + 1
        return self

    def __exit__(self, *exc) -> None:
        self._held.count -= 1
        self._release()

    def _acquire(self) -> None:
        with self._lock:
            while self._in_flight >= self._limit:
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            self._in_flight += 1

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._waiting:
                self._cond.notify()

    def back_off(self, seconds: float) -> None:
        """Sleep before retrying a throttled request, without the current thread's slot.

        The retry waits for a slot again, so the requests in flight fall to
        the lowered limit at once instead of when the operations holding
        slots finish.
        """
        if not getattr(self._held, "count", 0):
            time.sleep(seconds)
            return
        self._release()
        try:
            time.sleep(seconds)
        finally:
            self._acquire()

    def observe(self, throttled: bool, started: float, level: int) -> None:
        """One attempt's outcome: ``throttled`` or a success; sent at ``started`` (monotonic) with ``level`` in flight."""
        if not throttled and self._limit >= self.maximum and self._ceiling > self.maximum:
            return  # at the maximum with nothing to probe: a success changes nothing
        with self._lock:
            if throttled:
                self.throttles += 1
                self._streak = 0
                if started < self._last_decrease:
                    return  # sent before the last decrease: the same event
                self._slow_start = False
                level = max(1, level)
                if level >= self._ceiling:
                    self._probe_window = min(self._MAX_PROBE_WINDOW, self._probe_window * 2)
                self._ceiling = min(self._ceiling, level)
                self._limit = max(1, min(level - 1, (self._limit * 3) // 4))
                self._last_decrease = time.monotonic()
                return
            self._streak += 1
            if self._limit < self.maximum:
                if self._slow_start:
                    if level >= self._limit:  # only a success at the top level shows the next one may work
                        self._limit += 1
                    if self._waiting:
                        self._cond.notify_all()
                else:
                    window = self._probe_window if self._limit + 1 >= self._ceiling else 4 * self._limit
                    if self._streak >= window:
                        self._streak = 0
                        self._limit += 1
                        if self._waiting:
                            self._cond.notify_all()
            if self._limit >= self._ceiling and self._streak >= self._probe_window:
                # A whole window at the throttled level without a throttle: the store allows it now.
                self._ceiling = self.maximum + 1
                self._probe_window = self._FIRST_PROBE_WINDOW

    def __repr__(self) -> str:
        return f"ConcurrencyLimit(limit={self._limit}, in_flight={self._in_flight}, maximum={self.maximum})"
