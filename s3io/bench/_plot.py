"""``--plot``: the results as a PNG of bar charts (needs matplotlib, the ``bench`` extra)."""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

from s3io.bench._report import format_value
from s3io.bench._results import Row, SuiteResult

__all__ = ["write_plot"]


def write_plot(path: str, results: Dict[str, SuiteResult]) -> None:
    """Draw one horizontal bar chart per (suite, case, unit): medians with min-max whiskers, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError(
            "--plot needs matplotlib, which is not installed (%s); install the bench extra: pip install 's3io[bench]'"
            % error
        ) from None
    panels: List[Tuple[str, str, List[Row]]] = []
    for suite, result in results.items():
        # One panel per case and unit: GB/s and ns/call of one case need their own axes.
        by_case: Dict[Tuple[str, str], List[Row]] = {}
        for row in result.rows:
            by_case.setdefault((row.case, row.unit), []).append(row)
        units_per_case: Dict[str, int] = {}
        for case, _unit in by_case:
            units_per_case[case] = units_per_case.get(case, 0) + 1
        panels.extend(
            (suite, "%s (%s)" % (case, unit) if units_per_case[case] > 1 else case, rows)
            for (case, unit), rows in by_case.items()
        )
    if not panels:
        panels = [("", "no results", [])]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 0.6 + 2.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (suite, case, rows) in zip(axes.flat, panels):
        ax.set_title(("%s: %s" % (suite, case)) if suite else case, fontsize=9)
        if not rows:
            continue
        ypos = list(range(len(rows)))
        values = [r.value for r in rows]
        err_lo = [max(0.0, r.value - r.lo) if r.lo is not None else 0.0 for r in rows]
        err_hi = [max(0.0, r.hi - r.value) if r.hi is not None else 0.0 for r in rows]
        ax.barh(ypos, values, xerr=[err_lo, err_hi], color="#4c72b0", ecolor="#333333", capsize=3)
        ax.set_yticks(ypos)
        ax.set_yticklabels([r.impl for r in rows], fontsize=8)
        ax.invert_yaxis()
        units = sorted({r.unit for r in rows})
        ax.set_xlabel(", ".join(units), fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        right = [max(r.value, r.hi if r.hi is not None else r.value) for r in rows]
        for y, v, x in zip(ypos, values, right):
            ax.text(x, y, " " + format_value(v), va="center", fontsize=7)  # right of the whisker
        ax.set_xlim(0, max(right) * 1.18 if max(right) > 0 else 1)
    fig.suptitle("s3io benchmarks (median, whiskers min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
