"""The seeded random-fault schedule of soak runs: a fault per matching request with a given probability."""
from __future__ import annotations

import random
from typing import Iterable, Optional

from s3io.testing.faultproxy._faults import Fault, Injection, Matcher, Predicate
from s3io.testing.faultproxy._request import Request
from s3io.testing.faultproxy._s3_errors import S3_ERRORS


# Fault kinds that set_random_faults() can draw (names also used in the log).
RANDOM_FAULT_KINDS = ("error_500", "error_503", "error_429", "drop", "truncate", "stall", "reset_upload")


class RandomFaults:
    """Draws a fault for each matching request with probability ``rate``, from a seeded generator.

    Parameters are those of :meth:`~s3io.testing.faultproxy.FaultProxy.set_random_faults`.
    :meth:`draw` is not thread-safe: the caller serialises draws, and their
    order decides which request gets which fault.
    """

    def __init__(self, rate: float, kinds: Optional[Iterable[str]], seed: Optional[int], stall_seconds: float,
                 method: Matcher, kind: Matcher, when: Predicate) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1, not %r" % (rate,))
        kinds = RANDOM_FAULT_KINDS if kinds is None else (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = set(kinds) - set(RANDOM_FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError("kinds must be a non-empty subset of %s, not %r" % (RANDOM_FAULT_KINDS, kinds))
        self.rate = float(rate)
        self.kinds = kinds
        self._rng = random.Random(seed)
        self._stall_params = dict(seconds=float(stall_seconds))
        self._match = Fault("random", "random", {}, None, method, kind, when)

    def matches(self, req: Request) -> bool:
        """True if the schedule is on and ``req`` matches its method, kind and predicate."""
        return self.rate > 0 and self._match.matches(req)

    def draw(self, req: Request) -> Optional[Injection]:
        """The fault for ``req``, or None (the caller holds the lock)."""
        rng = self._rng
        if self.rate <= 0 or rng.random() >= self.rate:
            return None
        kinds = [k for k in self.kinds if k != "reset_upload" or req.body_length != 0]
        if not kinds:
            return None
        name = rng.choice(kinds)
        fraction = rng.random()
        abort = rng.random() < 0.5
        if name.startswith("error_"):
            status = int(name[6:])
            code, message = S3_ERRORS[status]
            return Injection(name, "error", dict(status=status, code=code, message=message))
        if name == "stall":
            return Injection(name, "stall", dict(self._stall_params), fraction)
        return Injection(name, name, dict(abort=abort), fraction)
