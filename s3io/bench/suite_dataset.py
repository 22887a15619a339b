"""dataset: S3IterableDataset and S3MapDataset through a DataLoader, s3io vs s3torchconnector 1.5.0 vs plain boto3.

Workload (issue 10): ~1,000 objects of 50-150 KiB (``--quick``: 200) read
through a ``torch.utils.data.DataLoader`` with 2 workers (fork), batches of 32:

- iterable: ``S3IterableDataset.from_objects(..., enable_sharding=True)`` by
  s3io and by s3torchconnector 1.5.0;
- map: ``S3MapDataset.from_objects(...)`` with ``shuffle=True`` by s3io and by
  s3torchconnector, and a plain map-style dataset calling boto3's
  ``get_object`` per item (the baseline a new user writes).

The transform reads each object whole and returns its length; every epoch's
total is checked.  Objects are named by URI for every implementation:
s3torchconnector cannot list a prefix on rclone (its XML parser rejects
rclone's listing).  Each epoch builds new workers, as a DataLoader without
``persistent_workers`` does, so the clients' set-up is part of the time.

Two runs: the embedded server as it is, and through a
:class:`~s3io.testing.faultproxy.FaultProxy` holding every response 20 ms
before its first byte (a remote store's latency; 3 rounds at most there).
Figures: objects/s per implementation and mode (median of interleaved
epochs, min-max), and the DataLoader workers' peak RSS growth during one more
plain epoch (each worker sampled from the parent every 10 ms with psutil).

Targets: with 20 ms added, s3io >= 5x s3torchconnector's objects/s in both
modes; on plain loopback, s3io no slower than s3torchconnector (>= 1.0x);
s3io's peak RSS growth per worker <= its bytes-in-flight cap
(``prefetch_bytes``) + 64 MiB.
"""
from __future__ import annotations

import random
import statistics
import threading
from typing import Callable, Dict, List, Optional

from s3io.bench._harness import Check, Row, SuiteResult, interleave

KiB, MiB = 1024, 1024 * 1024
S3IO, S3TC, BOTO3 = "s3io", "s3torchconnector 1.5.0", "boto3 map dataset"
ITERABLE, MAP = "iterable", "map"
WORKERS, BATCH = 2, 32
LATENCY = 0.02  # seconds before each response's first byte, in the second run
LATENCY_ROUNDS = 3  # epochs per implementation through the proxy (each one is slow for the baselines)
RSS_SLACK = 64 * MiB  # per worker, on top of the bytes in flight: batches queued, the client, allocator slack


def object_sizes(count: int, seed: int = 10) -> List[int]:
    """``count`` sizes drawn uniformly from 50-150 KiB (the same for a given seed)."""
    rng = random.Random(seed)
    return [rng.randint(50 * KiB, 150 * KiB) for _ in range(count)]


def read_length(reader) -> int:
    """The transform: read the whole object, return its length."""
    return len(reader.read())


def sum_batch(batch) -> int:
    """The collate function: a batch's bytes (keeps what workers send back small)."""
    return sum(batch)


def objects_per_second(case: str, impl: str, count: int, seconds: List[float]) -> Row:
    """Median and range of ``count`` objects over each run's seconds, as a Row in objects/s."""
    rates = [count / t for t in seconds]
    return Row(case, impl, statistics.median(rates), "objects/s", min(rates), max(rates))


class Boto3MapDataset:
    """A map-style dataset of S3 objects read with boto3's ``get_object``: what a new user writes first.

    One boto3 client per process, made on first use (workers rebuild theirs
    after pickling or fork).  Items are ``transform(body bytes)``.
    """

    def __init__(self, bucket: str, keys: List[str], endpoint: str, region: str, transform: Callable = len) -> None:
        self.bucket = bucket
        self.keys = list(keys)
        self.endpoint = endpoint
        self.region = region
        self.transform = transform
        self._client = None
        self._pid = None

    def _s3(self):
        import os

        if self._client is None or self._pid != os.getpid():
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint, region_name=self.region,
                config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                              response_checksum_validation="when_required"),
            )
            self._pid = os.getpid()
        return self._client

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        body = self._s3().get_object(Bucket=self.bucket, Key=self.keys[index])["Body"].read()
        return self.transform(body)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = None
        return state


class WorkerPeakRSS:
    """Peak RSS growth of the child processes started while the ``with`` block runs (DataLoader workers).

    A thread samples each new child's RSS every ``interval`` seconds with
    psutil; a child's growth is its highest sample minus its first.  Children
    that existed before the block (a server) are left out.

    Attributes
    ----------
    growth_bytes : int
        The largest growth of one child (0 if none was seen).
    peak_bytes : int
        The largest RSS of one child.
    children : int
        How many children were sampled.
    """

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._psutil = psutil
        self._interval = interval
        self._first: Dict[int, int] = {}
        self._peak: Dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._before: set = set()

    def __enter__(self) -> "WorkerPeakRSS":
        me = self._psutil.Process()
        self._before = {child.pid for child in me.children(recursive=True)}
        self._thread = threading.Thread(target=self._sample, args=(me,), name="worker-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self, me) -> None:
        while True:
            for child in me.children(recursive=True):
                if child.pid in self._before:
                    continue
                try:
                    rss = child.memory_info().rss
                except self._psutil.Error:  # it exited meanwhile
                    continue
                self._first.setdefault(child.pid, rss)
                self._peak[child.pid] = max(self._peak.get(child.pid, 0), rss)
            if self._stop.wait(self._interval):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_bytes(self) -> int:
        return max((self._peak[pid] - self._first[pid] for pid in self._peak), default=0)

    @property
    def peak_bytes(self) -> int:
        return max(self._peak.values(), default=0)

    @property
    def children(self) -> int:
        return len(self._peak)


def make_dataset(impl: str, mode: str, bucket: str, keys: List[str], endpoint: str, region: str):
    """The dataset of ``impl`` (S3IO, S3TC, BOTO3) in ``mode`` (ITERABLE, MAP) over ``keys``; the transform is :func:`read_length`."""
    if impl == BOTO3 and mode == MAP:
        return Boto3MapDataset(bucket, keys, endpoint, region)
    if impl == S3IO:
        import s3io as library

        options = dict(region=region, endpoint=endpoint, transform=read_length)  # path style for custom endpoints
    elif impl == S3TC:
        import s3torchconnector as library

        options = dict(region=region, endpoint=endpoint, transform=read_length,
                       s3client_config=library.S3ClientConfig(force_path_style=True))
    else:
        raise ValueError("no %s dataset for %s" % (mode, impl))
    uris = ["s3://%s/%s" % (bucket, key) for key in keys]
    if mode == ITERABLE:
        return library.S3IterableDataset.from_objects(uris, enable_sharding=True, **options)
    return library.S3MapDataset.from_objects(uris, **options)


def make_loader(dataset, mode: str, workers: int = WORKERS):
    """A DataLoader over ``dataset``: batches of 32 (shuffled in map mode), ``workers`` forked workers."""
    import torch.utils.data

    kwargs = dict(batch_size=BATCH, num_workers=workers, collate_fn=sum_batch, shuffle=mode == MAP)
    if workers:
        kwargs["multiprocessing_context"] = "fork"
    return torch.utils.data.DataLoader(dataset, **kwargs)


def epoch(impl: str, mode: str, bucket: str, keys: List[str], endpoint: str, region: str, expected: int,
          workers: int = WORKERS) -> Callable[[], None]:
    """One epoch of a fresh loader, checking that every byte arrived."""

    def run() -> None:
        total = sum(make_loader(make_dataset(impl, mode, bucket, keys, endpoint, region), mode, workers))
        if total != expected:
            raise AssertionError("%s %s: %d bytes, expected %d" % (impl, mode, total, expected))

    return run


def run(ctx) -> SuiteResult:
    """Run the dataset suite (see the module docstring)."""
    from s3io._prefetch import DEFAULT_PREFETCH_BYTES
    from s3io.testing.faultproxy import FaultProxy

    result = SuiteResult()
    server = ctx.server()
    bucket = ctx.bucket()
    region = getattr(server, "region", None) or "us-east-1"
    count = 200 if ctx.quick else 1000
    sizes = object_sizes(count)
    keys = ["%s/dataset/obj-%05d" % (ctx.run_id, i) for i in range(count)]
    expected = sum(sizes)

    ctx.progress("uploading %d objects of 50-150 KiB (%.0f MiB)" % (count, expected / MiB))
    boto = server.boto3_client()
    rng = random.Random(3)
    for key, size in zip(keys, sizes):
        boto.put_object(Bucket=bucket, Key=key, Body=rng.randbytes(size))

    try:
        import s3torchconnector  # noqa: F401

        impls = {ITERABLE: [S3IO, S3TC], MAP: [S3IO, S3TC, BOTO3]}
    except ImportError:  # optional extra (s3io[compare])
        impls = {ITERABLE: [S3IO], MAP: [S3IO, BOTO3]}
        result.notes.append("s3torchconnector not installed (pip install s3io[compare]): its columns and targets are missing")
    cases = {ITERABLE: "iterable, sharded, batch %d" % BATCH, MAP: "map, batch %d, shuffle" % BATCH}

    def measure(endpoint: str, label: str, repeat: int, warmup: int) -> Dict[str, Dict[str, float]]:
        """Objects/s (median) by mode and implementation; a row for each."""
        rates: Dict[str, Dict[str, float]] = {}
        for mode, names in impls.items():
            runs = {name: epoch(name, mode, bucket, keys, endpoint, region, expected) for name in names}
            times = interleave(ctx, runs, repeat=repeat, warmup=warmup, label="%s %s" % (mode, label))
            rows = [objects_per_second("%s, %s (objects/s)" % (cases[mode], label), name, count, times[name]) for name in names]
            result.rows.extend(rows)
            rates[mode] = {row.impl: row.value for row in rows}
        return rates

    plain = measure(server.endpoint_url, "loopback", ctx.repeat, 1)
    with FaultProxy(server.endpoint_url) as proxy:
        proxy.set_latency(LATENCY)
        slow = measure(proxy.endpoint_url, "+%d ms" % (LATENCY * 1000), min(ctx.repeat, LATENCY_ROUNDS), 0)

    rss = _worker_rss(ctx, result, impls, bucket, keys, server.endpoint_url, region, expected, cases)

    # -- checks ------------------------------------------------------------------------------------
    def speedup(rates: Dict[str, float], other: str) -> float:
        return round(rates[S3IO] / rates[other], 2)

    for mode in (ITERABLE, MAP):
        if S3TC in impls[mode]:
            result.checks.append(Check.at_least("%s +20 ms: s3io vs s3torchconnector objects/s" % mode,
                                                speedup(slow[mode], S3TC), 5.0))
            result.checks.append(Check.at_least("%s loopback: s3io vs s3torchconnector objects/s" % mode,
                                                speedup(plain[mode], S3TC), 1.0))
    for rates, label in ((plain, "loopback"), (slow, "+20 ms")):
        result.checks.append(Check("map %s: s3io vs boto3 objects/s (x)" % label, speedup(rates[MAP], BOTO3), "report", True))
    if rss is not None:
        budget = (DEFAULT_PREFETCH_BYTES + RSS_SLACK) / MiB
        result.checks.append(Check.at_most("s3io peak RSS growth per worker (MiB)", round(rss / MiB, 1), round(budget, 1), " MiB"))
    result.notes.append(
        "server: %s; %d objects, %.1f MiB; DataLoader: %d workers (fork), batch %d, a fresh loader per epoch; "
        "objects named by URI (from_objects) for every implementation" % (
            getattr(server, "kind", "?"), count, expected / MiB, WORKERS, BATCH)
    )
    return result


def _worker_rss(ctx, result, impls, bucket, keys, endpoint, region, expected, cases) -> Optional[int]:
    """Rows of each implementation's peak worker RSS growth in one plain epoch; s3io's growth (None: no psutil)."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        result.notes.append("psutil not installed (pip install s3io[bench]): no RSS figures")
        return None
    worst = 0
    for mode, names in impls.items():
        for name in names:
            ctx.progress("%s %s: worker RSS" % (mode, name))
            with WorkerPeakRSS() as peak:
                epoch(name, mode, bucket, keys, endpoint, region, expected)()
            result.rows.append(Row("peak RSS growth per worker, %s" % cases[mode], name, round(peak.growth_bytes / MiB, 1), "MiB"))
            result.notes.append("%s %s: %d workers sampled, peak RSS %.0f MiB" % (mode, name, peak.children, peak.peak_bytes / MiB))
            if name == S3IO:
                worst = max(worst, peak.growth_bytes)
    return worst
