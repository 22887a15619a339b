"""The command line of ``python -m s3io.bench``: its options, and the usage errors caught before any suite runs."""
from __future__ import annotations

import argparse
from typing import List, Optional

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m s3io.bench``."""
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


def usage_error(args: argparse.Namespace, names: List[str]) -> Optional[str]:
    """What is wrong with the options, or None; ``names`` are the available suites."""
    unknown = [s for s in args.suites if s not in names]
    if unknown:
        return "unknown suite(s): %s (available: %s)" % (", ".join(unknown), ", ".join(names) or "none")
    if args.bucket and not args.endpoint:
        return "--bucket needs --endpoint"
    if args.repeat is not None and args.repeat < 1:
        return "--repeat must be >= 1"
    if args.minutes is not None and not args.minutes > 0:
        return "--minutes must be > 0, not %s" % args.minutes
    if not selected_suites(args, names):
        return "no suites found"
    if args.plot:  # fail before an hour of benchmarks, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return "--plot needs matplotlib; install it with: pip install 's3io[bench]'"
    return None


def selected_suites(args: argparse.Namespace, names: List[str]) -> List[str]:
    """The suites to run, in the order given, each once (none given: all of ``names``)."""
    return list(dict.fromkeys(args.suites)) or names


def repeat(args: argparse.Namespace) -> int:
    """Rounds per measurement: ``--repeat``, else 2 with ``--quick``, else 5."""
    return args.repeat if args.repeat is not None else (2 if args.quick else 5)
