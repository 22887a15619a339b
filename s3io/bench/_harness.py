"""The benchmark harness behind ``python -m s3io.bench``.

A suite is a module ``s3io/bench/suite_<name>.py`` with a function
``run(ctx: BenchContext) -> SuiteResult``. The harness finds the suites, runs
the ones asked for, prints one table per suite on stdout (progress goes to
stderr), and optionally writes ``--json`` and ``--plot`` files.

Figures on a shared 2-core machine are noisy, so suites time the
implementations they compare *interleaved* (:func:`interleave`: one run of
each in turn, ``repeat`` rounds) and report the median with the min-max
range (:meth:`Row.from_times`, :meth:`Row.throughput`).

Network suites call ``ctx.server()``: without ``--endpoint`` that is an
embedded ``rclone serve s3`` (ETag hashing off) on a free loopback port,
started on first use and stopped when the harness exits; with ``--endpoint``
it is that S3 endpoint, with credentials from the standard AWS environment
variables or profile.
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import gc
import importlib
import json
import math
import os
import pkgutil
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO, Tuple, Union

__all__ = [
    "BenchContext",
    "Check",
    "Row",
    "SuiteResult",
    "ExternalServer",
    "PeakRSS",
    "interleave",
    "main",
    "register_suite",
    "unregister_suite",
    "available_suites",
]

Number = Union[int, float]


# ---------------------------------------------------------------- results


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


# ---------------------------------------------------------------- helpers for suites


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
            ctx.progress("%s%s run %d/%d: %s" % (prefix, name, r + 1, repeat, _fmt_seconds(elapsed)))
    return times


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


# ---------------------------------------------------------------- servers


class ExternalServer:
    """An S3 endpoint given with ``--endpoint``, shaped like :class:`s3io.testing.servers.RcloneServer`.

    Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID``...,
    ``AWS_PROFILE``). ``make_bucket()`` returns ``--bucket`` when given, else
    creates a fresh bucket which the harness empties and deletes at exit.
    """

    kind = "external"

    def __init__(self, endpoint_url: str, region: Optional[str] = None, bucket: Optional[str] = None) -> None:
        import boto3

        session = boto3.session.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise RuntimeError(
                "--endpoint %s: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
                % endpoint_url
            )
        frozen = credentials.get_frozen_credentials()
        self.endpoint_url = endpoint_url
        self.access_key = frozen.access_key
        self.secret_key = frozen.secret_key
        self.session_token = frozen.token
        self.region = region or session.region_name or "us-east-1"
        self.bucket = bucket
        self._created: List[str] = []

    def __repr__(self) -> str:  # no credentials in a repr
        return "<ExternalServer %s>" % self.endpoint_url

    def env(self) -> Dict[str, str]:
        """Environment variables that point boto3 (and s3io) at this endpoint."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    def boto3_client(self, **config_kwargs):
        """A plain boto3 client for the endpoint (path-style, checksums only when required)."""
        import boto3
        from botocore.config import Config

        options = dict(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        options.update(config_kwargs)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
            region_name=self.region,
            config=Config(**options),
        )

    def make_bucket(self, name: Optional[str] = None) -> str:
        """``--bucket`` if given (it must exist), else a fresh bucket deleted at exit."""
        client = self.boto3_client()
        if name is None and self.bucket is not None:
            client.head_bucket(Bucket=self.bucket)
            return self.bucket
        name = name or "s3io-bench-%s" % uuid.uuid4().hex[:12]
        kwargs: Dict[str, Any] = {}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        client.create_bucket(Bucket=name, **kwargs)
        self._created.append(name)
        return name

    def stop(self) -> None:
        """Empty and delete the buckets this run created (never ``--bucket``)."""
        created, self._created = self._created, []
        if not created:
            return
        client = self.boto3_client()
        for name in created:
            try:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
                client.delete_bucket(Bucket=name)
            except Exception as error:  # leave it, but say so
                print("s3io.bench: could not delete bucket %s: %s" % (name, error), file=sys.stderr)


# ---------------------------------------------------------------- context


class BenchContext:
    """What a suite gets: options, progress output, a scratch directory and an S3 server.

    Attributes
    ----------
    repeat : int
        Rounds per interleaved measurement (``--repeat``).
    quick : bool
        ``--quick``: smaller sizes, for smoke runs and tests.
    tmpdir : str
        Scratch directory for this run, removed at exit.
    suite : str
        Name of the suite running now.
    run_id : str
        Short unique id of this run, for key prefixes on shared buckets.
    """

    def __init__(
        self,
        repeat: int = 5,
        quick: bool = False,
        endpoint: Optional[str] = None,
        bucket: Optional[str] = None,
        region: Optional[str] = None,
        stderr: Optional[TextIO] = None,
        minutes: Optional[float] = None,
    ) -> None:
        self.repeat = repeat
        self.quick = quick
        self.minutes = minutes  # soak: run time (None: the suite's default)
        self.endpoint = endpoint
        self.region = region
        self.suite = ""
        self.run_id = uuid.uuid4().hex[:8]
        self._bucket_name = bucket
        self._bucket: Optional[str] = None
        self._stderr = stderr
        self._server: Any = None
        self._saved_env: Dict[str, Optional[str]] = {}
        self._t0 = time.monotonic()
        self._suite_t0 = self._t0
        self.tmpdir = tempfile.mkdtemp(prefix="s3io-bench-")
        atexit.register(self.close)

    def progress(self, msg: str) -> None:
        """Print one progress line on stderr: ``[suite +12.3s] msg``."""
        stream = self._stderr if self._stderr is not None else sys.stderr
        print("[%s +%.1fs] %s" % (self.suite or "bench", time.monotonic() - self._suite_t0, msg), file=stream, flush=True)

    def server(self):
        """The S3 server for network suites (started on first call, stopped at exit).

        Embedded rclone (ETag hashing off) unless ``--endpoint`` was given. The
        process environment gets the server's credentials and region (not its
        endpoint), so libraries using the standard chain authenticate; pass
        ``server.endpoint_url`` explicitly, or use ``server.env()``.
        """
        if self._server is None:
            if self.endpoint:
                self.progress("using S3 endpoint %s" % self.endpoint)
                self._server = ExternalServer(self.endpoint, region=self.region, bucket=self._bucket_name)
            else:
                from s3io.testing.servers import RcloneServer

                self.progress("starting embedded rclone serve s3")
                self._server = RcloneServer(root_dir=os.path.join(self.tmpdir, "s3"), etag=False).start()
                self.progress("embedded S3 server at %s" % self._server.endpoint_url)
            env = self._server.env()
            env.pop("AWS_ENDPOINT_URL_S3", None)
            for name, value in env.items():
                self._saved_env.setdefault(name, os.environ.get(name))
                os.environ[name] = value
        return self._server

    def bucket(self) -> str:
        """One bucket for the whole run (``--bucket``, or created once on the server)."""
        if self._bucket is None:
            self._bucket = self.server().make_bucket()
        return self._bucket

    def close(self) -> None:
        """Stop the server, restore the environment, remove ``tmpdir``. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.stop()
            finally:
                for name, value in self._saved_env.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                self._saved_env.clear()
        if self.tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        try:
            atexit.unregister(self.close)
        except Exception:
            pass

    def __enter__(self) -> "BenchContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- suites

_REGISTERED: Dict[str, Callable[[BenchContext], SuiteResult]] = {}


def register_suite(name: str, run: Callable[[BenchContext], SuiteResult]) -> None:
    """Add a suite that is not a ``suite_<name>.py`` module (tests use this)."""
    _REGISTERED[name] = run


def unregister_suite(name: str) -> None:
    """Remove a suite added with :func:`register_suite`."""
    _REGISTERED.pop(name, None)


def _module_suites() -> List[str]:
    import s3io.bench as package

    return sorted(m.name[len("suite_") :] for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("suite_"))


def available_suites() -> List[str]:
    """Names of all suites: the ``suite_*.py`` modules, then registered ones."""
    names = _module_suites()
    return names + [n for n in _REGISTERED if n not in names]


def _suite_runner(name: str) -> Callable[[BenchContext], SuiteResult]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    module = importlib.import_module("s3io.bench.suite_%s" % name)
    return module.run


def _suite_doc(name: str) -> str:
    if name in _REGISTERED:
        doc = _REGISTERED[name].__doc__ or ""
    else:
        try:
            import importlib.util

            spec = importlib.util.find_spec("s3io.bench.suite_%s" % name)
            doc = _module_docstring(spec.origin) if spec and spec.origin else ""
        except Exception:
            doc = ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _module_docstring(path: str) -> str:
    # Read the docstring without importing the suite (imports can be slow: torch).
    import ast

    try:
        with open(path, encoding="utf-8") as f:
            return ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError):
        return ""


# ---------------------------------------------------------------- output


def _fmt(value: Any) -> str:
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


def _fmt_seconds(seconds: float) -> str:
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
                _fmt(r.value),
                r.unit,
                "%s-%s" % (_fmt(r.lo), _fmt(r.hi)) if r.lo is not None and r.hi is not None else "",
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
            lines.append("  %-6s %s: %s (target %s)" % ("ok" if c.ok else "MISSED", c.name, _fmt(c.value), _fmt(c.target)))
    for note in result.notes:
        lines.append("note: %s" % note)
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return value


def _result_dict(result: SuiteResult) -> Dict[str, Any]:
    return {
        "rows": [{k: _jsonable(v) for k, v in dataclasses.asdict(r).items()} for r in result.rows],
        "checks": [{k: _jsonable(v) for k, v in dataclasses.asdict(c).items()} for c in result.checks],
        "notes": list(result.notes),
    }


def _machine() -> Dict[str, Any]:
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
            ax.text(x, y, " " + _fmt(v), va="center", fontsize=7)  # right of the whisker
        ax.set_xlim(0, max(right) * 1.18 if max(right) > 0 else 1)
    fig.suptitle("s3io benchmarks (median, whiskers min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m s3io.bench",
        description="Run s3io benchmark suites and print their figures. No SUITE runs them all.",
    )
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (see --list); default: all")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON to PATH")
    parser.add_argument("--plot", metavar="PATH", help="draw results as a PNG chart to PATH (needs matplotlib)")
    parser.add_argument("--endpoint", metavar="URL", help="S3 endpoint for network suites (default: embedded rclone)")
    parser.add_argument("--bucket", metavar="NAME", help="with --endpoint: an existing bucket to use")
    parser.add_argument("--region", metavar="REGION", help="with --endpoint: region (default: from AWS config, else us-east-1)")
    parser.add_argument("--repeat", type=int, metavar="N", help="interleaved rounds per measurement (default 5, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds: a smoke run")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--minutes", type=float, metavar="N", help="soak: run for N minutes (default 2; --quick 0.25)")
    return parser


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """Run the harness; returns the exit status (0 ok, 1 a suite crashed or --strict and a target missed, 2 usage)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    names = available_suites()
    if args.list:
        for name in names:
            doc = _suite_doc(name)
            print(("%-10s %s" % (name, doc)).rstrip(), file=out)
        return 0
    unknown = [s for s in args.suites if s not in names]
    if unknown:
        print("s3io.bench: unknown suite(s): %s (available: %s)" % (", ".join(unknown), ", ".join(names) or "none"), file=err)
        return 2
    if args.bucket and not args.endpoint:
        print("s3io.bench: --bucket needs --endpoint", file=err)
        return 2
    if args.repeat is not None and args.repeat < 1:
        print("s3io.bench: --repeat must be >= 1", file=err)
        return 2
    if args.minutes is not None and not args.minutes > 0:
        print("s3io.bench: --minutes must be > 0, not %s" % args.minutes, file=err)
        return 2
    selected = list(dict.fromkeys(args.suites)) or names
    if not selected:
        print("s3io.bench: no suites found", file=err)
        return 2
    if args.plot:  # fail before an hour of benchmarks, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("s3io.bench: --plot needs matplotlib; install it with: pip install 's3io[bench]'", file=err)
            return 2
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else 5)

    results: Dict[str, SuiteResult] = {}
    report: Dict[str, Any] = {
        "command": "python -m s3io.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "options": {"repeat": repeat, "quick": args.quick, "minutes": args.minutes, "endpoint": args.endpoint or "embedded rclone"},
        "suites": {},
    }
    crashed: List[str] = []
    ctx = BenchContext(repeat=repeat, quick=args.quick, endpoint=args.endpoint, bucket=args.bucket, region=args.region,
                       stderr=err, minutes=args.minutes)
    try:
        for name in selected:
            ctx.suite = name
            ctx._suite_t0 = time.monotonic()
            ctx.progress("starting")
            entry: Dict[str, Any] = {"error": None}
            try:
                result = _suite_runner(name)(ctx)
                if not isinstance(result, SuiteResult):
                    raise TypeError("suite %s returned %s, not SuiteResult" % (name, type(result).__name__))
            except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: stop (the finally below cleans up)
                raise
            except BaseException as error:  # a crashing suite must not hide the others' figures
                crashed.append(name)
                detail = traceback.format_exc()
                ctx.progress("CRASHED: %s: %s" % (type(error).__name__, error))
                print(detail, file=err)
                entry["error"] = "%s: %s" % (type(error).__name__, error)
                entry["traceback"] = detail
                result = SuiteResult(notes=["CRASHED: %s" % entry["error"]])
            entry["seconds"] = round(time.monotonic() - ctx._suite_t0, 3)
            ctx.progress("done in %.1f s" % entry["seconds"])
            entry.update(_result_dict(result))
            results[name] = result
            report["suites"][name] = entry
            print(format_table(name, result), file=out, flush=True)
            if args.json:  # written after every suite: a later crash keeps earlier figures
                _write_json(args.json, report)
    finally:
        ctx.suite = ""
        ctx.close()

    missed = ["%s: %s" % (name, c.name) for name, r in results.items() for c in r.checks if not c.ok]
    print("", file=out)
    if missed:
        print("MISSED %d target(s): %s" % (len(missed), "; ".join(missed)), file=out)
    if crashed:
        print("CRASHED suite(s): %s" % ", ".join(crashed), file=out)
    if not missed and not crashed:
        checks = sum(len(r.checks) for r in results.values())
        print("all %d target(s) met" % checks, file=out)
    if args.json:
        _write_json(args.json, report)
        print("wrote %s" % args.json, file=err)
    if args.plot:
        try:
            write_plot(args.plot, results)
            print("wrote %s" % args.plot, file=err)
        except Exception as error:
            print("s3io.bench: could not draw %s: %s" % (args.plot, error), file=err)
            return 1
    out.flush()
    if crashed:
        return 1
    if missed and args.strict:
        return 1
    return 0


def _write_json(path: str, report: Dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
