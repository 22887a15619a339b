"""Presenting results: numbers for people, the text table, and the ``--json`` report."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import time
from typing import Any, Dict, Sequence

from s3io.bench._results import SuiteResult

__all__ = ["format_table"]


def format_value(value: Any) -> str:
    """A number as a table shows it: about three significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1000:
        return "%.0f" % value
    if magnitude >= 100:
        return "%.1f" % value
    if magnitude >= 1:
        return "%.2f" % value
    if magnitude >= 0.01:
        return "%.3f" % value
    return "%.3g" % value


def format_seconds(seconds: float) -> str:
    """A duration in s, ms or us."""
    if seconds >= 1:
        return "%.2f s" % seconds
    if seconds >= 1e-3:
        return "%.1f ms" % (seconds * 1e3)
    return "%.1f us" % (seconds * 1e6)


def format_table(name: str, result: SuiteResult) -> str:
    """The suite's rows, checks and notes as plain text."""
    lines = ["", "== %s ==" % name]
    if result.rows:
        header = ("case", "impl", "median", "unit", "min-max")
        body = [
            (
                r.case,
                r.impl,
                format_value(r.value),
                r.unit,
                "%s-%s" % (format_value(r.lo), format_value(r.hi)) if r.lo is not None and r.hi is not None else "",
            )
            for r in result.rows
        ]
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
        align = ["<", "<", ">", "<", ">"]

        def line(cells):
            return "  ".join("%s" % format(c, "%s%d" % (a, w)) for c, a, w in zip(cells, align, widths)).rstrip()

        lines.append(line(header))
        lines.append("  ".join("-" * w for w in widths))
        previous_case = None
        for row in body:
            # The case name once per block keeps the comparison readable.
            shown = row if row[0] != previous_case else ("",) + row[1:]
            previous_case = row[0]
            lines.append(line(shown))
    if result.checks:
        lines.append("")
        lines.append("targets:")
        for c in result.checks:
            lines.append("  %-6s %s: %s (target %s)" % ("ok" if c.ok else "MISSED", c.name, format_value(c.value), format_value(c.target)))
    for note in result.notes:
        lines.append("note: %s" % note)
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return value


def result_dict(result: SuiteResult) -> Dict[str, Any]:
    """A suite's rows, checks and notes as JSON-ready dicts (NaN and infinity as strings)."""
    return {
        "rows": [{k: _jsonable(v) for k, v in dataclasses.asdict(r).items()} for r in result.rows],
        "checks": [{k: _jsonable(v) for k, v in dataclasses.asdict(c).items()} for c in result.checks],
        "notes": list(result.notes),
    }


def machine() -> Dict[str, Any]:
    """Python, platform, CPU model and count: what a figure was measured on."""
    info: Dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if match:
            info["cpu"] = match.group(1).strip()
    except OSError:
        pass
    return info


def new_report(argv: Sequence[str], options: Dict[str, Any]) -> Dict[str, Any]:
    """The ``--json`` report before any suite ran: command, start time, machine, options."""
    return {
        "command": "python -m s3io.bench " + " ".join(argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "options": options,
        "suites": {},
    }


def write_json(path: str, report: Dict[str, Any]) -> None:
    """Write ``report`` to ``path`` whole or not at all (through a temporary file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
