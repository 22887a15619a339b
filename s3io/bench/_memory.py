"""Resource sampling for suites: the peak resident memory of a block of code."""
from __future__ import annotations

import gc
import re
from typing import Optional

__all__ = ["PeakRSS"]


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
