"""Interleaved timing: each implementation once per round, the order rotating, so noise hits all alike."""
from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from s3io.bench._report import format_seconds

if TYPE_CHECKING:  # pragma: no cover
    from s3io.bench._context import BenchContext

__all__ = ["interleave"]


def interleave(
    ctx: "BenchContext",
    impls: Dict[str, Callable[[], Any]],
    repeat: Optional[int] = None,
    warmup: int = 0,
    label: str = "",
) -> Dict[str, List[float]]:
    """Run each callable once per round, ``repeat`` rounds, and return the seconds of every run.

    The order inside a round rotates from round to round, so no implementation
    always runs right after the same neighbour (caches, GC, CPU frequency, the
    other tenants of a shared machine). A progress line is printed per run.

    Parameters
    ----------
    ctx : BenchContext
    impls : dict of str to callable
        Name -> zero-argument callable doing one complete run.
    repeat : int, optional
        Rounds; default ``ctx.repeat``.
    warmup : int
        Untimed rounds first.
    label : str
        Prefix for the progress lines (e.g. the case).

    Returns
    -------
    dict of str to list of float
        Name -> run times in seconds, in run order.
    """
    repeat = ctx.repeat if repeat is None else repeat
    if repeat < 1:
        raise ValueError("repeat must be >= 1, not %r" % (repeat,))
    names = list(impls)
    times: Dict[str, List[float]] = {name: [] for name in names}
    prefix = (label + ": ") if label else ""
    for w in range(warmup):
        for name in names:
            ctx.progress("%swarm-up %s" % (prefix, name))
            impls[name]()
    for r in range(repeat):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            gc.collect()
            start = time.perf_counter()
            impls[name]()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            ctx.progress("%s%s run %d/%d: %s" % (prefix, name, r + 1, repeat, format_seconds(elapsed)))
    return times
