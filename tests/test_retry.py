"""s3io's retry policy, its budget, and the adaptive concurrency limit (no server)."""
import threading
import time

import botocore.exceptions
import pytest

from s3io import S3Exception, S3ObjectNotFound
from s3io._retry import ConcurrencyLimit, RetryBudget, RetryPolicy, is_retryable, is_throttle

SLOW_DOWN = S3Exception("slow down", status=503, code="SlowDown")


@pytest.mark.parametrize(
    "exc, retryable",
    [
        (S3Exception("x", status=500, code="InternalError"), True),
        (SLOW_DOWN, True),
        (S3Exception("x", status=429, code="TooManyRequests"), True),
        (S3Exception("x", status=400, code="RequestTimeout"), True),
        (S3ObjectNotFound("x", status=404, code="NoSuchKey"), False),
        (S3Exception("x", status=403, code="AccessDenied"), False),
        (S3Exception("x", status=412, code="PreconditionFailed"), False),
        (ConnectionResetError("reset"), True),
        (TimeoutError("timed out"), True),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), True),
        (botocore.exceptions.NoCredentialsError(), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_is_retried(exc, retryable):
    assert is_retryable(exc) is retryable


def test_throttles_are_503_slowdown_and_429():
    assert is_throttle(SLOW_DOWN)
    assert is_throttle(S3Exception("x", status=429, code="TooManyRequests"))
    assert not is_throttle(S3Exception("x", status=503, code="ServiceUnavailable"))
    client_error = botocore.exceptions.ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"
    )
    assert is_throttle(client_error) and is_retryable(client_error)


def test_policy_stops_at_max_attempts_and_on_permanent_errors(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    policy = RetryPolicy(3)
    assert policy.may_retry(1, SLOW_DOWN) and policy.may_retry(2, SLOW_DOWN)
    assert not policy.may_retry(3, SLOW_DOWN)
    assert not policy.may_retry(1, S3ObjectNotFound("x", status=404, code="NoSuchKey"))
    assert policy.retries == 2


def test_backoff_is_full_jitter_and_capped():
    policy = RetryPolicy(10)
    for retry in range(1, 12):
        bounds = min(5.0, 0.05 * 2 ** (retry - 1))
        samples = [policy.backoff(retry) for _ in range(200)]
        assert all(0 <= s <= bounds for s in samples)
        assert max(samples) > bounds / 2  # spread over the whole range, not a fixed delay


def test_an_empty_budget_slows_retries_down_but_never_takes_them_away():
    budget = RetryBudget(capacity=5, refill_per_s=200.0, max_wait=1.0)
    start = time.monotonic()
    assert all(budget.take() for _ in range(5))  # the burst capacity
    assert time.monotonic() - start < 0.05
    # Empty now: each further retry waits for the refill (5 ms each) instead of failing.
    start = time.monotonic()
    assert all(budget.take() for _ in range(20))
    elapsed = time.monotonic() - start
    assert 0.07 < elapsed < 0.6


def test_a_budget_that_cannot_refill_in_time_refuses():
    budget = RetryBudget(capacity=1, refill_per_s=0.5, max_wait=0.05)
    assert budget.take()
    start = time.monotonic()
    assert not budget.take()  # the next token is 2 s away: more than max_wait
    assert time.monotonic() - start < 0.05


def test_budget_refills_over_time():
    budget = RetryBudget(capacity=10, refill_per_s=100.0)
    for _ in range(10):
        budget.take()
    assert budget.tokens < 1
    time.sleep(0.05)
    assert 3 < budget.tokens <= 10


def _observe(limit, throttled, level=None):
    limit.observe(throttled, time.monotonic(), limit.in_flight if level is None else level)


def test_slow_start_grows_by_one_per_success_up_to_the_maximum():
    limit = ConcurrencyLimit(13)
    assert limit.limit == 2
    _observe(limit, False, level=1)
    assert limit.limit == 2  # the limit was not used up: nothing learned about the next level
    for expected in range(3, 14):
        _observe(limit, False, level=limit.limit)
        assert limit.limit == expected
    _observe(limit, False, level=13)
    assert limit.limit == 13


def test_a_throttle_lowers_the_limit_below_the_level_it_came_at_once_per_round():
    limit = ConcurrencyLimit(16, initial=16)
    sent = time.monotonic()
    limit.observe(True, sent, 9)  # rejected while 9 were in flight
    assert limit.limit == 8
    # Throttles of requests sent before that decrease are the same event.
    limit.observe(True, sent, 12)
    limit.observe(True, sent, 3)
    assert limit.limit == 8 and limit.throttles == 3
    time.sleep(0.001)
    limit.observe(True, time.monotonic(), 8)  # sent after it: a new event
    assert limit.limit == 6  # three quarters, since 6 < 8 - 1


def test_after_a_throttle_growth_is_slow_and_the_throttled_level_is_probed_rarely():
    limit = ConcurrencyLimit(13, initial=13)
    limit.observe(True, time.monotonic(), 3)  # the store allows 2
    assert limit.limit == 2
    for _ in range(63):
        _observe(limit, False)
    assert limit.limit == 2  # level 3 was throttled: a 64-success window before probing it
    _observe(limit, False)
    assert limit.limit == 3
    time.sleep(0.001)
    limit.observe(True, time.monotonic(), 3)  # throttled again at 3
    assert limit.limit == 2
    for _ in range(127):
        _observe(limit, False)
    assert limit.limit == 2  # the window doubled
    _observe(limit, False)
    assert limit.limit == 3


def test_slots_block_above_the_limit_and_wake_when_one_is_freed():
    limit = ConcurrencyLimit(2, initial=2)
    entered = []
    with limit, limit:
        thread = threading.Thread(target=lambda: entered.append(limit.__enter__() is limit))
        thread.start()
        time.sleep(0.05)
        assert entered == [] and limit.in_flight == 2
    thread.join(5)
    assert entered == [True] and limit.in_flight == 1
    limit.__exit__(None, None, None)
    assert limit.in_flight == 0


def test_a_store_allowing_two_requests_rejects_few_of_many():
    """Thirteen workers against a store that answers SlowDown above 2 in flight, retrying with the policy's backoff."""
    allowed, workers, jobs = 2, 13, 600
    limit = ConcurrencyLimit(13)
    policy = RetryPolicy(10)
    lock = threading.Lock()
    state = {"in_flight": 0, "sent": 0, "rejected": 0, "left": jobs}

    def worker():
        while True:
            with lock:
                if not state["left"]:
                    return
                state["left"] -= 1
            with limit:
                for attempt in range(1, 100):
                    started, level = time.monotonic(), limit.in_flight
                    with lock:
                        state["sent"] += 1
                        accepted = state["in_flight"] < allowed
                        state["in_flight"] += accepted
                        state["rejected"] += not accepted
                    if accepted:
                        time.sleep(0.0005)
                        with lock:
                            state["in_flight"] -= 1
                        limit.observe(False, started, level)
                        break
                    limit.observe(True, started, level)
                    time.sleep(policy.backoff(attempt))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state["rejected"] / state["sent"] <= 0.05, state
