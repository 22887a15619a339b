"""small: the cost of one small request, and a DCP save and load against a throttling store.

Cases (issue 9), one thread, each implementation in turn (interleaved rounds):

- 64 KiB whole objects: ``get_object(bucket, key).read()`` on s3io's default
  reader, s3torchconnector 1.5.0's default reader and boto3
  ``get_object()["Body"].read()``, one object after another (200 objects,
  ``--quick``: 50).
- 4 KiB ranged reads at random offsets of a 1 MiB object: one range-based
  reader (buffering off) per implementation with ``seek`` + ``read``, and boto3
  ``get_object(Range=...)``.

  Per request: wall time, and the client's CPU time (this process: for
  s3torchconnector that includes its native threads; the server runs in
  another process).
- A DCP save and load of 256 MiB in 64 tensors (``--quick``: 32 MiB in 16)
  through a :class:`~s3io.testing.faultproxy.FaultProxy` that answers
  ``503 SlowDown`` while 2 or more requests are in flight: time, and the share
  of requests rejected; the same save and load without throttling for
  comparison.

Targets: s3io <= 0.7x s3torchconnector's time per request in both cases;
s3io's client CPU <= 0.3 ms per small GET; <= 5% of the throttled save and
load's requests rejected.
"""
from __future__ import annotations

import os
import random
import statistics
import time
import warnings
from typing import Callable, Dict, List

from s3io.bench._harness import Check, Row, SuiteResult, interleave

KiB, MIB = 1024, 1024 * 1024
S3IO, BOTO3, S3TC = "s3io", "boto3", "s3torchconnector 1.5.0"
ALLOWED_IN_FLIGHT = 2


def _s3tc_client(region: str, endpoint: str):
    try:
        from s3torchconnector import S3ClientConfig as RefConfig
        from s3torchconnector._s3client import S3Client as RefClient
    except Exception:  # optional extra (s3io[compare])
        return None
    return RefClient(region, endpoint=endpoint, s3client_config=RefConfig(force_path_style=True))


def _with_cpu(fn: Callable[[], None], cpu: List[float]) -> Callable[[], None]:
    """``fn``, recording the process CPU seconds of each call into ``cpu``."""

    def run() -> None:
        start = time.process_time()
        fn()
        cpu.append(time.process_time() - start)

    return run


def _per_request(ctx, result, case: str, impls: Dict[str, Callable[[], None]], count: int):
    """Interleave ``impls`` (each doing ``count`` requests); rows of wall and CPU ms per request."""
    cpu: Dict[str, List[float]] = {name: [] for name in impls}
    wrapped = {name: _with_cpu(fn, cpu[name]) for name, fn in impls.items()}
    walls = interleave(ctx, wrapped, warmup=1, label=case)
    for name in impls:
        cpu[name] = cpu[name][1:]  # the warm-up round
        result.rows.append(Row.from_times(case + " (wall per request)", name, walls[name], unit="ms", per=count))
        result.rows.append(Row.from_times(case + " (client CPU per request)", name, cpu[name], unit="ms", per=count))
    return walls, cpu


def _ratio(times: Dict[str, List[float]], a: str, b: str) -> float:
    return round(statistics.median(times[a]) / statistics.median(times[b]), 2)


def run(ctx) -> SuiteResult:
    """Run the small-request suite (see the module docstring)."""
    from s3io import S3Client, S3ReaderConstructor

    result = SuiteResult()
    server = ctx.server()
    bucket = ctx.bucket()
    region = getattr(server, "region", None) or "us-east-1"
    count = 50 if ctx.quick else 200
    prefix = "%s/small" % ctx.run_id
    boto = server.boto3_client()

    ctx.progress("uploading %d objects of 64 KiB and one of 1 MiB" % count)
    body = os.urandom(64 * KiB)
    keys = ["%s/obj-%05d" % (prefix, i) for i in range(count)]
    for key in keys:
        boto.put_object(Bucket=bucket, Key=key, Body=body)
    big_key = prefix + "/one-mib"
    big = os.urandom(MIB)
    boto.put_object(Bucket=bucket, Key=big_key, Body=big)

    client = S3Client(region, endpoint=server.endpoint_url)
    s3tc = _s3tc_client(region, server.endpoint_url)
    if s3tc is None:
        result.notes.append("s3torchconnector not installed (pip install s3io[compare]): its columns are missing")

    def check(data, expected) -> None:
        if len(data) != len(expected):
            raise AssertionError("read %d bytes, expected %d" % (len(data), len(expected)))

    # -- 64 KiB whole objects ---------------------------------------------------------------
    def s3io_whole() -> None:
        for key in keys:
            check(client.get_object(bucket, key).read(), body)

    def boto3_whole() -> None:
        for key in keys:
            check(boto.get_object(Bucket=bucket, Key=key)["Body"].read(), body)

    whole: Dict[str, Callable[[], None]] = {S3IO: s3io_whole, BOTO3: boto3_whole}
    if s3tc is not None:
        def s3tc_whole() -> None:
            for key in keys:
                check(s3tc.get_object(bucket, key).read(), body)

        whole[S3TC] = s3tc_whole
    whole_wall, whole_cpu = _per_request(ctx, result, "64 KiB whole object", whole, count)

    # -- 4 KiB ranged reads -------------------------------------------------------------------
    rng = random.Random(7)
    offsets = [rng.randrange(0, MIB - 4 * KiB) for _ in range(count)]

    def ranged_reader(reader) -> Callable[[], None]:
        def read_all() -> None:
            for offset in offsets:
                reader.seek(offset)
                if reader.read(4 * KiB) != big[offset : offset + 4 * KiB]:
                    raise AssertionError("wrong bytes at %d" % offset)

        return read_all

    readers = {S3IO: client.get_object(bucket, big_key, reader_constructor=S3ReaderConstructor.range_based(buffer_size=0))}

    def boto3_ranged() -> None:
        for offset in offsets:
            data = boto.get_object(Bucket=bucket, Key=big_key, Range="bytes=%d-%d" % (offset, offset + 4 * KiB - 1))
            if data["Body"].read() != big[offset : offset + 4 * KiB]:
                raise AssertionError("wrong bytes at %d" % offset)

    ranged: Dict[str, Callable[[], None]] = {S3IO: ranged_reader(readers[S3IO]), BOTO3: boto3_ranged}
    if s3tc is not None:
        from s3torchconnector import S3ReaderConstructor as RefConstructor

        readers[S3TC] = s3tc.get_object(bucket, big_key, reader_constructor=RefConstructor.range_based(buffer_size=0))
        ranged[S3TC] = ranged_reader(readers[S3TC])
    ranged_wall, ranged_cpu = _per_request(ctx, result, "4 KiB ranged read", ranged, count)

    # -- checks ---------------------------------------------------------------------------------
    if s3tc is not None:
        result.checks.append(Check.at_most("64 KiB GET: s3io time / s3torchconnector's", _ratio(whole_wall, S3IO, S3TC), 0.7))
        result.checks.append(Check.at_most("4 KiB ranged GET: s3io time / s3torchconnector's", _ratio(ranged_wall, S3IO, S3TC), 0.7))
    result.checks.append(Check("64 KiB GET: s3io time / boto3's (x)", _ratio(whole_wall, S3IO, BOTO3), "report", True))
    cpu_ms = round(statistics.median(whole_cpu[S3IO]) / count * 1e3, 3)
    result.checks.append(Check.at_most("s3io client CPU per 64 KiB GET (ms)", cpu_ms, 0.3, " ms"))

    _throttled_dcp(ctx, result, server, bucket, region, prefix)
    result.notes.append(
        "server: %s; %d requests per run, one thread; CPU is this process's (s3torchconnector's native threads "
        "included), not the server's" % (getattr(server, "kind", "?"), count)
    )
    return result


def _throttled_dcp(ctx, result, server, bucket, region, prefix) -> None:
    """A DCP save and load, plain and through a proxy that throttles above ALLOWED_IN_FLIGHT requests."""
    import torch
    import torch.distributed.checkpoint as dcp

    from s3io import S3ClientConfig
    from s3io.dcp import S3StorageReader, S3StorageWriter
    from s3io.testing.faultproxy import FaultProxy

    tensors, total = (16, 32 * MIB) if ctx.quick else (64, 256 * MIB)
    numel = total // tensors // 4
    gen = torch.Generator().manual_seed(11)
    state = {"t%03d" % i: torch.randn(numel, generator=gen) for i in range(tensors)}
    outcome: Dict[str, List[float]] = {}
    shares: Dict[str, float] = {}
    for label, throttle in (("throttled", ALLOWED_IN_FLIGHT), ("plain", None)):
        # The throttled run first, through a proxy (an endpoint) of its own: it meets the store
        # fresh, with nothing learned before (clients share what they learn per endpoint).
        with FaultProxy(server.endpoint_url) as proxy:
            proxy.set_throttle(throttle)
            config = S3ClientConfig(endpoint_url=proxy.endpoint_url, max_concurrency=12)
            path = "s3://%s/%s/dcp-%s" % (bucket, prefix, label)
            for phase in ("save", "load"):
                proxy.reset_stats()
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if phase == "save":
                        dcp.save(state, storage_writer=S3StorageWriter(region, path, s3client_config=config, thread_count=4))
                    else:
                        out = {name: torch.empty_like(value) for name, value in state.items()}
                        dcp.load(out, storage_reader=S3StorageReader(region, path, s3client_config=config))
                        if not all(torch.equal(out[name], state[name]) for name in state):
                            raise AssertionError("the %s load returned other tensors" % label)
                seconds = time.perf_counter() - start
                sent = proxy.requests_forwarded + proxy.requests_rejected
                name = "%s %s" % (label, phase)
                outcome[name] = [seconds]
                shares[name] = proxy.requests_rejected / sent if sent else 0.0
                result.rows.append(Row("DCP %s, %d MiB / %d tensors" % (phase, total // MIB, tensors), "s3io " + label,
                                       round(seconds, 3), "s"))
                result.rows.append(Row("DCP %s requests rejected" % phase, "s3io " + label,
                                       round(100 * shares[name], 1), "%"))
                result.notes.append("%s: %d requests, %d rejected with 503 SlowDown" % (name, sent, proxy.requests_rejected))
    result.checks.append(Check.at_most("throttled DCP load: share of requests rejected (%)",
                                       round(100 * shares["throttled load"], 1), 5.0, "%"))
    result.checks.append(Check.at_most("throttled DCP save: share of requests rejected (%)",
                                       round(100 * shares["throttled save"], 1), 5.0, "%"))
    result.checks.append(Check("throttled DCP load time / plain (x)",
                               round(outcome["throttled load"][0] / outcome["plain load"][0], 2), "report", True))
