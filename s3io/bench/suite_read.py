"""read: whole-object and random ranged reads, s3io vs plain boto3 vs s3torchconnector 1.5.0.

Cases (issue 5):

- whole-object read of a 256 MiB object (``--quick``: 32 MiB): s3io's default
  (sequential) reader ``read()``, boto3 ``get_object()["Body"].read()`` and
  s3torchconnector's default reader ``read()`` (if installed: ``pip install
  s3io[compare]``), interleaved; plus each one's peak RSS during one read.
- the same read into one reused, preallocated buffer: s3io ``readinto``
  (parts land straight in it) and boto3 ``StreamingBody.readinto`` in a loop;
  this shows the cost of faulting in fresh pages, which ``read()`` pays.
- 1,000 random ranged reads of 4 KiB-1 MiB (``--quick``: 100) from the same
  object, one after the other: s3io's range-based reader (buffering off) with
  seek + read, boto3 ``get_object(Range=...)``, s3torchconnector's
  range-based reader (buffering off).

Targets: whole-object s3io >= 2.5x boto3 and >= 1.5x s3torchconnector; s3io's
peak RSS growth during the whole read <= 1.1x object size + 32 MiB.
"""
from __future__ import annotations

import os
import random
import statistics
from typing import Callable, Dict, List, Tuple

from s3io.bench._harness import Check, PeakRSS, Row, SuiteResult, interleave

MIB = 1024 * 1024
S3IO, BOTO3, S3TC = "s3io", "boto3", "s3torchconnector 1.5.0"


def _s3tc_client(region: str, endpoint: str):
    """s3torchconnector's client pointed at ``endpoint``, or None if it is not installed."""
    try:
        from s3torchconnector import S3ClientConfig as RefConfig
        from s3torchconnector._s3client import S3Client as RefClient
    except Exception:  # optional extra (s3io[compare])
        return None
    return RefClient(region, endpoint=endpoint, s3client_config=RefConfig(force_path_style=True))


def _ranges(size: int, count: int, seed: int = 1234) -> List[Tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        length = rng.randint(4 * 1024, MIB)
        start = rng.randrange(0, size - length)
        out.append((start, length))
    return out


def _median(values: List[float]) -> float:
    return statistics.median(values)


def run(ctx) -> SuiteResult:
    """Run the read suite (see the module docstring)."""
    from s3io import S3Client, S3ReaderConstructor

    result = SuiteResult()
    server = ctx.server()
    bucket = ctx.bucket()
    region = getattr(server, "region", None) or "us-east-1"
    size = (32 if ctx.quick else 256) * MIB
    count = 100 if ctx.quick else 1000
    key = "%s/read/object-%d" % (ctx.run_id, size)

    ctx.progress("uploading a %d MiB object" % (size // MIB))
    boto = server.boto3_client()
    payload = os.urandom(size)
    boto.put_object(Bucket=bucket, Key=key, Body=payload)
    del payload

    client = S3Client(region, endpoint=server.endpoint_url)
    info = next(o for page in client.list_objects(bucket, key) for o in page.object_info if o.key == key)
    s3tc = _s3tc_client(region, server.endpoint_url)
    if s3tc is None:
        result.notes.append("s3torchconnector not installed (pip install s3io[compare]): its columns are missing")

    # -- whole-object read ---------------------------------------------------------------
    def check_size(data) -> None:
        if len(data) != size:
            raise AssertionError("read %d bytes, expected %d" % (len(data), size))

    whole: Dict[str, Callable[[], None]] = {
        S3IO: lambda: check_size(client.get_object(bucket, key).read()),
        BOTO3: lambda: check_size(boto.get_object(Bucket=bucket, Key=key)["Body"].read()),
    }
    if s3tc is not None:
        whole[S3TC] = lambda: check_size(s3tc.get_object(bucket, key).read())
    case = "whole-object read, %d MiB" % (size // MIB)
    times = interleave(ctx, whole, warmup=1, label="whole")
    for name, seconds in times.items():
        result.rows.append(Row.throughput(case, name, size, seconds))

    # The same read into one reused, preallocated buffer (no fresh pages to fault in).
    buffers = {"target": bytearray(size)}

    def s3io_readinto() -> None:
        if client.get_object(bucket, key).readinto(buffers["target"]) != size:
            raise AssertionError("short readinto")

    def boto3_readinto() -> None:
        body = boto.get_object(Bucket=bucket, Key=key)["Body"]
        view = memoryview(buffers["target"])
        offset = 0
        while offset < size:
            n = body.readinto(view[offset:])
            if not n:
                raise AssertionError("short readinto")
            offset += n

    into = {S3IO: s3io_readinto, BOTO3: boto3_readinto}
    case_into = "whole-object readinto a reused buffer, %d MiB" % (size // MIB)
    times_into = interleave(ctx, into, label="readinto")
    for name, seconds in times_into.items():
        result.rows.append(Row.throughput(case_into, name, size, seconds))
    buffers.clear()  # free the 256 MiB before the RSS measurements

    # Peak RSS: each implementation twice, keeping the larger growth (conservative).
    rss: Dict[str, PeakRSS] = {}
    for name, fn in whole.items():
        for _ in range(2):
            with PeakRSS() as peak:
                fn()
            if name not in rss or peak.growth_bytes > rss[name].growth_bytes:
                rss[name] = peak
        peak = rss[name]
        result.rows.append(Row("peak RSS growth during %s" % case, name, peak.growth_bytes / MIB, "MiB"))
        result.notes.append(
            "%s: RSS %.0f MiB at the start of the read, peak %.0f MiB"
            % (name, peak.start_bytes / MIB, peak.peak_bytes / MIB)
        )

    # -- random ranged reads -------------------------------------------------------------
    ranges = _ranges(size, count)
    total = sum(length for _, length in ranges)

    def s3io_ranged() -> None:
        reader = client.get_object(
            bucket, key, object_info=info, reader_constructor=S3ReaderConstructor.range_based(buffer_size=0)
        )
        for start, length in ranges:
            reader.seek(start)
            if len(reader.read(length)) != length:
                raise AssertionError("short ranged read")

    def boto3_ranged() -> None:
        for start, length in ranges:
            body = boto.get_object(Bucket=bucket, Key=key, Range="bytes=%d-%d" % (start, start + length - 1))["Body"]
            if len(body.read()) != length:
                raise AssertionError("short ranged read")

    ranged: Dict[str, Callable[[], None]] = {S3IO: s3io_ranged, BOTO3: boto3_ranged}
    if s3tc is not None:
        from s3torchconnector import S3ReaderConstructor as RefConstructor

        def s3tc_ranged() -> None:
            reader = s3tc.get_object(bucket, key, reader_constructor=RefConstructor.range_based(buffer_size=0))
            for start, length in ranges:
                reader.seek(start)
                if len(reader.read(length)) != length:
                    raise AssertionError("short ranged read")

        ranged[S3TC] = s3tc_ranged
    case_r = "%d random ranged reads, 4 KiB-1 MiB" % count
    times_r = interleave(ctx, ranged, label="ranged")
    for name, seconds in times_r.items():
        result.rows.append(Row.from_times(case_r + " (per read)", name, seconds, unit="ms", per=count))
        result.rows.append(Row.throughput(case_r, name, total, seconds))

    # -- checks ----------------------------------------------------------------------
    def ratio(a: str, b: str, t: Dict[str, List[float]]) -> float:
        return round(_median(t[b]) / _median(t[a]), 2)

    result.checks.append(Check.at_least("whole-object read: s3io vs boto3", ratio(S3IO, BOTO3, times), 2.5))
    if s3tc is not None:
        result.checks.append(Check.at_least("whole-object read: s3io vs s3torchconnector", ratio(S3IO, S3TC, times), 1.5))
    budget = 1.1 * size + 32 * MIB
    result.checks.append(
        Check.at_most(
            "s3io peak RSS growth, whole read (MiB)", round(rss[S3IO].growth_bytes / MIB, 1), round(budget / MIB, 1), " MiB"
        )
    )
    result.checks.append(
        Check("readinto a reused buffer: s3io vs boto3 (x)", ratio(S3IO, BOTO3, times_into), "report", True)
    )
    result.checks.append(Check("ranged reads: s3io vs boto3 (x)", ratio(S3IO, BOTO3, times_r), "report", True))
    if s3tc is not None:
        result.checks.append(Check("ranged reads: s3io vs s3torchconnector (x)", ratio(S3IO, S3TC, times_r), "report", True))
    config = client.s3client_config
    result.notes.append(
        "server: %s; s3io part_size %d MiB, max_concurrency %d; object uploaded once, read %d times per impl"
        % (getattr(server, "kind", "?"), config.part_size // MIB, config.max_concurrency, ctx.repeat)
    )
    try:
        boto.delete_object(Bucket=bucket, Key=key)
    except Exception:
        pass
    return result
