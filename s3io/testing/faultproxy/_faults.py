"""Fault specifications and the order in which they apply.

A :class:`Fault` is what a test arms: an action with its parameters, for the
next ``times`` requests that match. An :class:`Injection` is one fault applied
to one request, and knows where in the body it bites. :class:`FaultRules`
keeps the armed faults and the random schedule and picks the fault, if any,
for each request.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Iterable, List, Optional, Union

from s3io.testing.faultproxy._request import Request

if TYPE_CHECKING:  # pragma: no cover
    from s3io.testing.faultproxy._random import RandomFaults


Matcher = Union[str, Iterable[str], None]
Predicate = Optional[Callable[[Request], bool]]


class Fault:
    """An armed fault: applies to the next ``times`` matching requests.

    Returned by the :class:`~s3io.testing.faultproxy.FaultProxy` fault methods
    (``fail``, ``drop_connection``, ...). Thread-safe to read.

    Attributes
    ----------
    name : str
        ``error_503``, ``drop``, ``truncate``, ``stall``, ``reset_upload``, ...
        (the name written in :class:`~s3io.testing.faultproxy.LogEntry` ``fault``).
    action : str
        What the proxy does: ``error``, ``drop``, ``truncate``, ``stall`` or ``reset_upload``.
    params : dict
        The action's parameters (``status``, ``after_bytes``, ``seconds``, ...).
    times : int or None
        How many requests it applies to (None: every matching request until
        :meth:`~s3io.testing.faultproxy.FaultProxy.clear_faults`).
    fired : int
        How many requests it has been applied to so far.
    """

    def __init__(self, name: str, action: str, params: dict, times: Optional[int], method: Matcher, kind: Matcher,
                 when: Predicate) -> None:
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
        """True if ``req`` matches the method, kind and predicate (ignores ``times``).

        Parameters
        ----------
        req : Request

        Returns
        -------
        bool
        """
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


def check_bytes(name: str, value, allow_none: bool = False, minimum: int = 0) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int >= ``minimum`` (or None if allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError("%s must be an int >= %d%s, not %r"
                         % (name, minimum, " or None" if allow_none else "", value))


class Injection:
    """One fault applied to one request (an armed :class:`Fault`, a random draw or a throttle answer)."""

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


class FaultRules:
    """Armed faults, in arming order, then the random schedule: which fault a request gets. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: List[Fault] = []
        self._random: Optional["RandomFaults"] = None

    def arm(self, fault: Fault) -> Fault:
        """Add ``fault`` after those already armed."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def set_random(self, schedule: Optional["RandomFaults"]) -> None:
        """Replace the random schedule (None: no random faults)."""
        with self._lock:
            self._random = schedule

    def clear(self) -> None:
        """Disarm every fault and the random schedule."""
        with self._lock:
            self._faults.clear()
            self._random = None

    def armed(self) -> List[Fault]:
        """Armed faults that have not run out."""
        with self._lock:
            return [f for f in self._faults if not f.done]

    def pick(self, req: Request) -> Optional[Injection]:
        """The fault for this request, if any (armed faults first, in arming order).

        Predicates run outside the lock: they are user code and may do I/O or
        call back into the proxy (``proxy.count(...)``); the request being
        decided is already in the log and counts.
        """
        with self._lock:
            armed = [f for f in self._faults if not f.done]
            schedule = self._random
        for fault in armed:
            if fault.matches(req):
                with self._lock:
                    if fault.done:  # another connection took the last one meanwhile
                        continue
                    fault.fired += 1
                    self._faults = [f for f in self._faults if not f.done]
                return Injection(fault.name, fault.action, fault.params)
        if schedule is None or not schedule.matches(req):
            return None
        with self._lock:  # draws in a seeded order: one at a time
            schedule = self._random
            return schedule.draw(req) if schedule is not None else None
