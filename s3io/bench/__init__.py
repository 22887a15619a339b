"""Benchmarks for s3io: ``python -m s3io.bench [SUITE ...]``.

Each suite is a module ``suite_<name>.py`` here with ``run(ctx) -> SuiteResult``;
the harness (:mod:`s3io.bench._harness`) runs them, prints tables and writes
``--json`` / ``--plot`` output. ``python -m s3io.bench --list`` names them.
"""
from s3io.bench._harness import BenchContext, Check, PeakRSS, Row, SuiteResult, interleave

__all__ = ["BenchContext", "Check", "PeakRSS", "Row", "SuiteResult", "interleave"]
