"""Resource sampling for suites: the peak resident memory of a block of code."""
from __future__ import annotations

import gc
import importlib
import multiprocessing
import re
from typing import Callable, Optional, Sequence

__all__ = ["PeakRSS", "peak_rss_growth_in_child"]


def _read_status_kib(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"^%s:\s+(\d+) kB" % field_name, f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs.

    On Linux the kernel's high-water mark is reset on entry (``/proc/self/clear_refs``)
    and read on exit, so the figure covers exactly the block. Elsewhere it falls
    back to ``ru_maxrss`` (the peak since the process started).

    Attributes
    ----------
    start_bytes : int
        RSS on entry.
    peak_bytes : int
        Highest RSS during the block.
    exact : bool
        True when the peak covers only the block (Linux), False for ``ru_maxrss``.
    """

    def __init__(self) -> None:
        self.start_bytes = 0
        self.peak_bytes = 0
        self.exact = False

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
            self.exact = True
        except OSError:
            self.exact = False
        self.start_bytes = _read_status_kib("VmRSS") or 0
        return self

    def __exit__(self, *exc) -> None:
        peak = _read_status_kib("VmHWM") if self.exact else None
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = peak

    @property
    def growth_bytes(self) -> int:
        """Peak minus RSS on entry."""
        return max(0, self.peak_bytes - self.start_bytes)


def _measure_in_child(conn, preload: Sequence[str], fn: Callable, args: tuple) -> None:
    try:
        for name in preload:
            importlib.import_module(name)
        with PeakRSS() as rss:
            fn(*args)
        conn.send((rss.growth_bytes, None))
    except BaseException as exc:  # reported to the parent, which raises
        conn.send((None, "%s: %s" % (type(exc).__name__, exc)))
    finally:
        conn.close()


def peak_rss_growth_in_child(fn: Callable, *args, preload: Sequence[str] = (), timeout: float = 600.0) -> int:
    """Peak RSS growth, in bytes, of ``fn(*args)`` run once in a fresh interpreter (spawn).

    In a process that has already run the workload, freed memory that the
    allocator keeps (glibc raises its mmap threshold after large frees) hides
    a second run's growth; a fresh process shows what one run needs.  The
    modules in ``preload`` are imported before the baseline is taken, so
    their import is not counted.  ``fn`` must be picklable (a module-level
    function); what it returns is dropped in the child.  The child's
    environment is this process's ``os.environ`` at the call.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_measure_in_child, args=(child, tuple(preload), fn, args), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError("the RSS child did not answer within %.0f s" % timeout)
        growth, error = parent.recv()
    except EOFError:
        raise RuntimeError("the RSS child died (exit code %s)" % process.exitcode) from None
    finally:
        process.kill()
        process.join()
        parent.close()
    if error is not None:
        raise RuntimeError("the RSS child failed: " + error)
    return growth
