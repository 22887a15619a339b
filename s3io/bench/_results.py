"""What a suite returns: measured figures (:class:`Row`), targets (:class:`Check`) and notes (:class:`SuiteResult`)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Union

__all__ = ["Row", "Check", "SuiteResult"]

Number = Union[int, float]


@dataclass
class Row:
    """One measured figure: ``impl`` on ``case``, ``value`` in ``unit`` (median), ``lo``-``hi`` its range.

    Parameters
    ----------
    case : str
        What was measured, e.g. ``"readinto 4 KiB"``.
    impl : str
        Who was measured, e.g. ``"s3io (C)"``, ``"io.BytesIO"``.
    value : float
        The median.
    unit : str
        ``"GB/s"``, ``"ns/call"``, ``"ms"``, ``"s"``, ``"MiB"``...
    lo, hi : float, optional
        Smallest and largest of the runs (in ``unit``), if there were several.
    """

    case: str
    impl: str
    value: float
    unit: str
    lo: Optional[float] = None
    hi: Optional[float] = None

    @classmethod
    def from_times(cls, case: str, impl: str, seconds: Sequence[float], unit: str = "s", per: int = 1) -> "Row":
        """Median and range of run times, in ``unit`` (``s``, ``ms``, ``us`` or ``ns``) per ``per`` operations."""
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[unit.split("/")[0]] / per
        values = [t * scale for t in seconds]
        return cls(case, impl, statistics.median(values), unit, min(values), max(values))

    @classmethod
    def throughput(cls, case: str, impl: str, nbytes: int, seconds: Sequence[float], unit: str = "GB/s") -> "Row":
        """Bytes per second from run times: ``nbytes`` moved per run (``GB/s`` = 1e9, ``GiB/s``, ``MB/s``, ``MiB/s``)."""
        scale = {"GB/s": 1e9, "GiB/s": 2.0**30, "MB/s": 1e6, "MiB/s": 2.0**20}[unit]
        rates = [nbytes / t / scale if t > 0 else math.inf for t in seconds]
        return cls(case, impl, statistics.median(rates), unit, min(rates), max(rates))


@dataclass
class Check:
    """A target from an issue: ``name``, the measured ``value``, the ``target`` it had to meet, and ``ok``.

    ``value`` and ``target`` are shown as given (numbers or short strings such
    as ``">= 4x"``). Prefer :meth:`at_least` / :meth:`at_most`, which fill in
    ``ok`` and a readable target.
    """

    name: str
    value: Any
    target: Any
    ok: bool

    @classmethod
    def at_least(cls, name: str, value: Number, minimum: Number, unit: str = "x") -> "Check":
        """``ok`` when ``value >= minimum``."""
        return cls(name, value, ">= %g%s" % (minimum, unit), bool(value >= minimum))

    @classmethod
    def at_most(cls, name: str, value: Number, maximum: Number, unit: str = "x") -> "Check":
        """``ok`` when ``value <= maximum``."""
        return cls(name, value, "<= %g%s" % (maximum, unit), bool(value <= maximum))


@dataclass
class SuiteResult:
    """What a suite's ``run(ctx)`` returns: table rows, target checks and free-text notes."""

    rows: List[Row] = field(default_factory=list)
    checks: List[Check] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
