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

import sys
import traceback
from typing import Any, Dict, List, Optional, Sequence, TextIO

from s3io.bench import _cli
from s3io.bench._context import BenchContext
from s3io.bench._endpoint import ExternalServer
from s3io.bench._memory import PeakRSS
from s3io.bench._plot import write_plot
from s3io.bench._report import format_table, new_report, result_dict, write_json
from s3io.bench._results import Check, Row, SuiteResult
from s3io.bench._suites import available_suites, register_suite, suite_doc, suite_runner, unregister_suite
from s3io.bench._timing import interleave

# The harness API in one place: suites, s3io.bench and the tests import it from here.
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


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """Run the harness; returns the exit status (0 ok, 1 a suite crashed or --strict and a target missed, 2 usage)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = _cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    names = available_suites()
    if args.list:
        for name in names:
            doc = suite_doc(name)
            print(("%-10s %s" % (name, doc)).rstrip(), file=out)
        return 0
    problem = _cli.usage_error(args, names)
    if problem is not None:
        print("s3io.bench: %s" % problem, file=err)
        return 2
    selected = _cli.selected_suites(args, names)
    repeat = _cli.repeat(args)

    results: Dict[str, SuiteResult] = {}
    report = new_report(argv if argv is not None else sys.argv[1:], {
        "repeat": repeat, "quick": args.quick, "minutes": args.minutes, "endpoint": args.endpoint or "embedded rclone"})
    crashed: List[str] = []
    ctx = BenchContext(repeat=repeat, quick=args.quick, endpoint=args.endpoint, bucket=args.bucket, region=args.region,
                       stderr=err, minutes=args.minutes)
    try:
        for name in selected:
            ctx.start_suite(name)
            ctx.progress("starting")
            entry: Dict[str, Any] = {"error": None}
            try:
                result = suite_runner(name)(ctx)
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
            entry["seconds"] = round(ctx.suite_seconds, 3)
            ctx.progress("done in %.1f s" % entry["seconds"])
            entry.update(result_dict(result))
            results[name] = result
            report["suites"][name] = entry
            print(format_table(name, result), file=out, flush=True)
            if args.json:  # written after every suite: a later crash keeps earlier figures
                write_json(args.json, report)
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
        write_json(args.json, report)
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
